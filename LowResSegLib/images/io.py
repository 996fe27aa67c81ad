"""Volumes in, labels out: NIfTI / NRRD / MetaImage / DICOM series, and Slicer ``.seg.nrrd``.

Everything read leaves as a :class:`~LowResSegLib.images.geometry.Volume`: ``array`` in (k, j, i)
order (SimpleITK's ``GetArrayFromImage`` order) and ``affine`` mapping (i, j, k, 1) to
LPS mm. ITK's physical space is LPS, so NIfTI's RAS is converted by ITK itself and the
affine is simply ``direction @ diag(spacing)`` plus the origin.

Reading refuses anything that would silently give a wrong result (a truncated file, a
DICOM folder with an unreadable slice, a 4-D image without a chosen channel) with a
:class:`VolumeReadError` whose one line says what is wrong and what to do next.
Writing is atomic and verified (a temporary file in the same folder, flushed to disk, read back and
compared with what was meant, then ``os.replace``) and never replaces an existing file unless asked,
so a failed, short (full disk) or refused write loses nothing and leaves nothing.

Runs on Python 3.9+; needs only numpy and SimpleITK. ``.seg.nrrd`` output needs
slicerio (the ``[dicom]`` extra), imported only when used.
"""

import contextlib
import gzip
import os
import re
import secrets
import struct
import sys
import time
import zlib

import numpy as np
import SimpleITK as sitk

from LowResSegLib.images.dicomread import DICOM_EXTENSIONS
from LowResSegLib.images.geometry import Volume
from LowResSegLib.images.itkmessages import itk_reason, quiet_itk

__all__ = [
    "VolumeReadError",
    "detect_format",
    "is_supported_path",
    "read_volume",
    "write_labels",
    "write_seg_nrrd",
    "write_bytes",
    "write_text",
    "atomic_write",
    "WriteError",
    "remove_stale_temps",
    "temp_tag",
]

FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "mha": "MetaImage", "dicom": "DICOM"}
_READ_EXTENSIONS = (
    (".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".nhdr", "nrrd"),
    (".mha", "mha"), (".mhd", "mha"),
)
# Single-file formats only: a detached header (.nhdr/.mhd) names its data file, which an
# atomic rename of the temporary header would break.
_WRITE_EXTENSIONS = ((".nii.gz", "nifti"), (".nii", "nifti"), (".nrrd", "nrrd"), (".mha", "mha"))
_IMAGE_IO = {"nifti": "NiftiImageIO", "nrrd": "NrrdImageIO", "mha": "MetaImageIO"}
_SUPPORTED = "a .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd file, or a folder holding one DICOM series"
_INSTALL_HINT = 'pip install "LowResSegLib[dicom]"'
_SLICER_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


class VolumeReadError(ValueError):
    """A volume could not be read; the message says what is wrong and what to do next."""


# --------------------------------------------------------------------------- formats


def _match_extension(path, table):
    name = os.path.basename(os.fspath(path)).lower()
    for ext, fmt in table:
        if name.endswith(ext):
            return ext, fmt
    return None, None


def detect_format(path):
    """``"nifti" | "nrrd" | "mha" | "dicom"`` (a folder), or None: how :func:`read_volume` would read it."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "dicom"
    return _match_extension(path, _READ_EXTENSIONS)[1]


def is_supported_path(path):
    """True when :func:`read_volume` knows how to read ``path`` (it may still be corrupt)."""
    return detect_format(path) is not None


# --------------------------------------------------------------------------- reading


def read_volume(path, channel=None, series=None, contrast=None):
    """Read a 3-D volume as float32 with its IJK->LPS affine and reader facts in ``meta``.

    ``channel`` picks one channel of a 4-D image (or of a vector-pixel 3-D image), or one
    volume of a DICOM series that holds several (b-values, echoes, time points); such an
    input is refused without it, because guessing would segment the wrong sequence.
    DICOM only: ``series`` (a SeriesInstanceUID) picks one of several series in a folder;
    without it the one that looks like ``contrast`` (e.g. "FLAIR") is read (docs/dicom.md).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeReadError("%s does not exist; check the path (expected %s)" % (path, _SUPPORTED))
    fmt = detect_format(path)
    if fmt is None and (_has_dicom_preamble(path) or path.lower().endswith(DICOM_EXTENSIONS)):
        fmt = "dicom"  # one file: an enhanced multi-frame series, or a slice whose folder is wanted
    if fmt is None:
        raise VolumeReadError("%s is not a supported volume format; convert it or pass %s" % (path, _SUPPORTED))
    if series and fmt != "dicom":
        raise VolumeReadError("--series picks a DICOM series, but %s is a %s file" % (path, FORMAT_NAMES[fmt]))
    meta = {"source": path, "format": fmt, "modality": None, "warnings": []}
    if fmt == "dicom":
        from LowResSegLib.images.dicomread import DicomReadError

        try:
            array, affine = _read_dicom(path, meta, channel, series, contrast)
        except DicomReadError as exc:
            raise VolumeReadError(str(exc))
        return _finish_volume(array, affine, meta)
    return _to_volume(_read_file(path, fmt, meta), path, channel, meta)


def _corrupt(path, fmt, reason):
    return VolumeReadError("%s is not a readable %s file (truncated or corrupt): %s; check the file or re-export it"
                           % (path, FORMAT_NAMES[fmt], reason))


def _read_file(path, fmt, meta):
    if fmt == "nifti":
        meta["_nonfinite_in_file"] = _check_nifti_payload(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    reader.SetImageIO(_IMAGE_IO[fmt])
    try:
        with quiet_itk():
            return reader.Execute()
    except RuntimeError as exc:
        raise _corrupt(path, fmt, itk_reason(exc))


def _check_nifti_payload(path):
    """Bytes present vs promised (ITK reads a truncated NIfTI without complaint), and the
    number of NaN/Inf voxels in a float NIfTI (ITK silently turns them into 0).
    """
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            head = f.read(540)
            layout = _nifti_layout(head)
            if layout is None:
                return 0  # not a NIfTI header: ITK says so
            offset, n_voxels, bitpix, float_dtype = layout
            expected = offset + n_voxels * bitpix // 8
            if float_dtype is not None:
                f.seek(offset)
                data = f.read(n_voxels * bitpix // 8)
                total = offset + len(data)
            elif compressed:
                total = len(head)
                chunk = f.read(1 << 22)
                while chunk:
                    total += len(chunk)
                    chunk = f.read(1 << 22)
            else:
                total = os.path.getsize(path)
    except (OSError, EOFError, zlib.error) as exc:
        raise _corrupt(path, "nifti", str(exc) or type(exc).__name__)
    if total < expected:
        raise _corrupt(path, "nifti", "the header promises %d bytes but the file holds %d" % (expected, total))
    if float_dtype is None:
        return 0
    return int(np.count_nonzero(~np.isfinite(np.frombuffer(data, dtype=float_dtype))))


def _nifti_layout(head):
    """(vox_offset, voxel count, bitpix, numpy float dtype or None) of a NIfTI-1/2 header, or None."""
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            dims = struct.unpack(endian + "8h", head[40:56])
            bitpix = struct.unpack(endian + "h", head[72:74])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
            break
        if len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            bitpix = struct.unpack(endian + "h", head[14:16])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
            break
    else:
        return None
    if not 1 <= dims[0] <= 7 or bitpix <= 0:
        return None
    n = 1
    for d in dims[1:dims[0] + 1]:
        n *= max(int(d), 1)
    floats = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64
    float_dtype = np.dtype(endian + floats[datatype]) if datatype in floats else None
    return max(offset, 0), n, bitpix, float_dtype


def _to_volume(image, path, channel, meta):
    dim, comps = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    size = "x".join(str(s) for s in image.GetSize())
    if dim == 2:
        raise VolumeReadError("%s is 2-D (%s pixels); LowResSeg needs a 3-D volume (a stack of slices)" % (path, size))
    if dim > 4 or (dim == 4 and comps > 1):
        raise VolumeReadError("%s has %d dimensions%s (%s); LowResSeg needs a 3-D volume, so extract one first"
                              % (path, dim, " with vector pixels" if comps > 1 else "", size))
    n_channels = image.GetSize()[3] if dim == 4 else comps
    array = sitk.GetArrayFromImage(image)  # (k, j, i), (c, k, j, i) or (k, j, i, c)
    if n_channels > 1 and channel is None:
        raise VolumeReadError("%s has %d channels (several sequences or time points in one file); "
                              "pass --channel N with N in 0..%d to pick one" % (path, n_channels, n_channels - 1))
    if channel is not None:
        if not 0 <= int(channel) < n_channels:
            raise VolumeReadError("channel %s is out of range: %s has %d channel%s; pass --channel N with N in 0..%d"
                                  % (channel, path, n_channels, "s" if n_channels > 1 else "", n_channels - 1))
    c = int(channel or 0)
    if dim == 4:
        array = array[c]
    elif comps > 1:
        array = array[..., c]
    return _finish_volume(array, _affine_of(image), meta)


def _finish_volume(array, affine, meta):
    """Checks every reader's array gets: non-finite voxels, an empty image, a single slice."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array)
    n_bad = max(int(bad.sum()), meta.pop("_nonfinite_in_file", 0))
    if n_bad:
        array[bad] = 0.0
        meta["warnings"].append("%d voxel(s) were NaN or Inf (or too large for float32) and were replaced by 0"
                                % n_bad)
    if not array.any():
        meta["warnings"].append("all voxels are 0 (an empty image?); the segmentation will be empty")
    if min(array.shape) == 1:
        meta["warnings"].append("the volume has a single slice along one axis (shape %s)" % (array.shape,))
    return Volume(array, affine, meta)


def _affine_of(image):
    """IJK->LPS 4x4 from ITK geometry (spatial part of a 4-D image)."""
    d = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(d, d)[:3, :3]
    affine = np.eye(4)
    affine[:3, :3] = direction * np.array(image.GetSpacing()[:3], dtype=np.float64)
    affine[:3, 3] = image.GetOrigin()[:3]
    return affine


# --------------------------------------------------------------------------- DICOM


def _read_head(path, n=1024):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _has_dicom_preamble(path):
    return os.path.isfile(path) and _read_head(path, 132)[128:132] == b"DICM"


def _read_dicom(path, meta, channel, series_uid, contrast):
    """A DICOM folder (or one multi-frame file) as (array, affine), by the rules of dicomread."""
    from LowResSegLib.images import dicomread as dr

    if os.path.isdir(path):
        series, ignored = dr.scan_folder(path)
    else:
        series, ignored = dr.scan_files([path])
        if series and not any(s.multiframe for s in series.values()):
            raise VolumeReadError("%s is a single DICOM file; pass the folder that holds the whole series (%s)"
                                  % (path, os.path.dirname(os.path.abspath(path))))
    if not series and os.path.isdir(path):
        names = os.listdir(path)
        subdirs = [n for n in names if os.path.isdir(os.path.join(path, n))]
        raise VolumeReadError("no DICOM image series found in %s (%d files, %d sub-folders); point to the folder that "
                              "directly holds the series' files, or pass a NIfTI, NRRD or MetaImage file"
                              % (path, len(names) - len(subdirs), len(subdirs)))
    chosen = dr.choose_series(series, contrast, series_uid, where=path)
    if ignored:
        meta["warnings"].append("ignored %d file%s in %s that %s not part of a DICOM image series: %s"
                                % (len(ignored), "s" if len(ignored) > 1 else "", path,
                                   "are" if len(ignored) > 1 else "is", ", ".join(ignored[:5])))
    if len(series) > 1:
        meta["warnings"].append("%s holds %d image series; read %s%s and ignored the others"
                                % (path, len(series), chosen.label, " (picked by --series)" if series_uid else
                                   " (the one that looks like %s)" % contrast))
    what = "series %s" % chosen.label
    if "MOSAIC" in chosen.image_type:
        raise VolumeReadError("%s is a Siemens MOSAIC (many slices tiled in one image); LowResSeg cannot untile it, "
                              "so convert it first (e.g. dcm2niix) and pass the NIfTI" % what)
    volumes = dr.split_volumes(chosen)
    if len(volumes) > 1 and channel is None:
        raise VolumeReadError("%s holds %d volumes at the same slice positions (%s); pass --channel N with N in "
                              "0..%d to pick one" % (what, len(volumes), "; ".join(
                                  dr.describe_volume(v, n) for n, v in enumerate(volumes[:6])) +
                                  ("; ..." if len(volumes) > 6 else ""), len(volumes) - 1))
    if channel is not None and not 0 <= int(channel) < len(volumes):
        raise VolumeReadError("channel %s is out of range: %s has %d volume%s; pass --channel N with N in 0..%d"
                              % (channel, what, len(volumes), "s" if len(volumes) > 1 else "", len(volumes) - 1))
    frames, affine, warnings = dr.stack_geometry(volumes[int(channel or 0)], what)
    meta["warnings"].extend(warnings)
    rescales = set(f.rescale for f in frames if f.index is not None)
    if len(rescales) > 1:
        raise VolumeReadError("%s scales its frames differently (per-frame rescale); convert it first (e.g. dcm2niix)"
                              % what)
    try:
        array = dr.read_series_pixels(frames)
    except RuntimeError as exc:
        raise VolumeReadError("the pixel data of %s could not be decoded: %s; check the files or re-export the "
                              "series uncompressed" % (what, itk_reason(exc)))
    guessed = dr.guess_contrast(chosen)
    meta.update({
        "modality": chosen.modality,
        "contrast": guessed,
        "series_description": chosen.description or chosen.protocol,
        "series_instance_uid": chosen.uid,
        "study_instance_uid": chosen.study_uid,
        "frame_of_reference_uid": chosen.frame_of_reference_uid,
        "sop_instance_uids": [f.sop_uid for f in frames],
        "files": [f.path for f in frames],
        "frames": [f.index for f in frames],  # frame number in a multi-frame file, else None
        "multiframe": chosen.multiframe,
    })
    if chosen.patient_id:
        meta["patient_id"] = chosen.patient_id
    if chosen.modality and chosen.modality.upper() != "MR":
        meta["warnings"].append("modality is %s, not MR: LowResSeg models are trained on MRI, so results on this "
                                "image are not meaningful" % chosen.modality)
    return array, affine


# --------------------------------------------------------------------------- writing


def _check_labels(labels, reference):
    labels = np.asarray(labels)
    if labels.shape != tuple(reference.shape):
        raise ValueError("labels have shape %s but the reference volume has %s (k, j, i); they must match"
                         % (labels.shape, tuple(reference.shape)))
    if labels.dtype != np.uint8 and labels.size:
        if labels.dtype.kind not in "biuf":
            raise ValueError("labels must be integers 0..255, got dtype %s" % labels.dtype)
        lo, hi = labels.min(), labels.max()
        if lo < 0 or hi > 255 or (labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels))):
            raise ValueError("labels must be integers 0..255, got values from %s to %s" % (lo, hi))
    return np.ascontiguousarray(labels, dtype=np.uint8)


def _geometry_image(labels, affine):
    image = sitk.GetImageFromArray(labels)
    m = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (m[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in m[:3, 3]])
    return image


_TEMP_RX = re.compile(r"^\.(?:lowresseg-|.+\.tmp-)(\d+)x[0-9a-f]{8}")  # ours: the writing process's PID inside
_OLD_TEMP_RX = re.compile(r"^\.(?:lowresseg-[0-9a-f]{8}-.+|.+\.tmp-[0-9a-f]{8}\..+)$")  # before the PID was in them
_OLD_TEMP_AGE_S = 24 * 3600


def temp_tag():
    """The part of our temporary names that says which process made them: ``<pid>x<random>``."""
    return "%dx%s" % (os.getpid(), secrets.token_hex(4))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder):
    """Remove our hidden temporary files in ``folder`` whose writing process is gone; their names.

    A process killed mid-write (SIGKILL, power loss) cannot clean up; the next run does. Files of a
    process still running on this machine are left alone; names of the older form, without a PID,
    once they are a day old.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        m = _TEMP_RX.match(name)
        if m:
            if _pid_alive(int(m.group(1))):
                continue
        elif _OLD_TEMP_RX.match(name):  # no PID to ask: a day old is long dead
            try:
                if now - os.path.getmtime(os.path.join(folder, name)) < _OLD_TEMP_AGE_S:
                    continue
            except OSError:
                continue
        else:
            continue
        try:
            os.remove(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


@contextlib.contextmanager
def _quiet_stderr():
    """Keep what C++ libraries print straight to stderr (MetaIO's ``M_WriteElementsData``, NIfTI's ``NWAD``) off
    the terminal while a file is written: every write is verified, and a failure is said in one line of ours."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
        finally:
            os.close(null)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def fsync_folder(folder):
    """Make a rename in ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # a delayed-allocation or network file system reports ENOSPC here, not at write()
    finally:
        os.close(fd)


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


class WriteError(OSError):
    """A file could not be written whole; the message names the target and the cause, and nothing was left."""


def _free_space_note(folder):
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= 64 << 20:
        return ""
    return "; the disk has %s free" % ("%d KB" % (free // 1024) if free < 10 << 20 else "%d MB" % (free >> 20))


def _write_failure(target, exc, tmp=None, reading_back=False):
    if isinstance(exc, OSError) and exc.errno is not None:
        reason = exc.strerror or str(exc)
    elif isinstance(exc, RuntimeError):
        reason = itk_reason(exc)
    else:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if tmp:
        reason = reason.replace(tmp, os.path.basename(target))
    reason = reason[:200]
    if reading_back:
        reason = "the file written does not read back whole (%s), so it was cut short" % reason
    err = WriteError("could not write %s: %s%s; free some space or choose another folder (nothing was written)"
                     % (target, reason, _free_space_note(os.path.dirname(os.path.abspath(target)))))
    err.errno = getattr(exc, "errno", None)
    return err


def atomic_write(path, overwrite, write, verify=None, target=None):
    """Call ``write(tmp)`` on a temporary file beside ``path`` (same extension), check it, then rename it into place.

    After ``write`` the file is flushed to disk (fsync) and ``verify(tmp)``, when given, reads it back and
    raises ValueError unless it holds what was meant: a writer that returns normally after a short write
    (SimpleITK on a full disk) is caught here. Any failure raises :class:`WriteError`, one line that names
    ``target`` (default ``path``; the file the user asked for when ``path`` is itself a staging name) and
    the cause, and leaves no file.
    """
    path = os.fspath(path)
    target = os.fspath(target) if target else path
    if os.path.isdir(path):
        raise IsADirectoryError("%s is a folder; pass a file name to write to" % path)
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError("%s already exists; pass --overwrite to replace it" % path)
    folder, name = os.path.split(os.path.abspath(path))
    ext = next((e for e in (".seg.nrrd", ".nii.gz") if name.lower().endswith(e)), os.path.splitext(name)[1])
    stem = name[:len(name) - len(ext)] if ext else name
    tmp, fd = None, None
    for _ in range(20):
        tmp = os.path.join(folder, ".%s.tmp-%s%s" % (stem[-80:], temp_tag(), ext))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies, as for any new file
            break
        except FileExistsError:
            continue
        except OSError as exc:
            hint = ("create it first or choose another output folder" if isinstance(exc, FileNotFoundError)
                    else "choose a writable output folder")
            raise type(exc)(exc.errno, "cannot write %s: %s (folder %s); %s"
                            % (target, exc.strerror or exc, folder, hint))
    else:
        raise FileExistsError("cannot create a temporary file in %s; clean up its .*.tmp-* files" % folder)
    os.close(fd)
    try:
        failures = (OSError, RuntimeError, ValueError, EOFError, zlib.error)
        try:
            with _quiet_stderr(), quiet_itk():
                write(tmp)
            _fsync_file(tmp)
        except failures as exc:
            _remove_quietly(tmp)
            raise _write_failure(target, exc, tmp)
        if verify is not None:
            try:
                with _quiet_stderr(), quiet_itk():
                    verify(tmp)
            except failures as exc:
                _remove_quietly(tmp)
                raise _write_failure(target, exc, tmp, reading_back=True)
        if os.path.lexists(path) and not overwrite:
            raise FileExistsError("%s already exists; pass --overwrite to replace it" % path)
        os.replace(tmp, path)
        fsync_folder(folder)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def write_bytes(path, data, overwrite=False, target=None):
    """Write ``data`` (bytes) atomically: every byte checked written, flushed, read back and compared."""
    data = bytes(data)

    def write(tmp):
        with open(tmp, "wb") as f:
            view = memoryview(data)
            while view:
                n = f.write(view)
                if not n:
                    raise OSError(28, "No space left on device")
                view = view[n:]

    def verify(tmp):
        size = os.path.getsize(tmp)
        if size != len(data):
            raise ValueError("wrote %d of %d bytes" % (size, len(data)))
        with open(tmp, "rb") as f:
            if f.read() != data:
                raise ValueError("the file read back differs from what was written")

    atomic_write(path, overwrite, write, verify, target)


def write_text(path, text, overwrite=True, target=None):
    """:func:`write_bytes` of UTF-8 text (reports, CSV files)."""
    write_bytes(path, text.encode("utf-8"), overwrite, target)


def _verify_image(fmt, labels, image):
    """A check that the file written holds ``labels`` on ``image``'s grid (read back by ITK)."""

    def verify(tmp):
        if fmt == "nifti":
            try:
                _check_nifti_payload(tmp)  # raises on fewer bytes than the header promises
            except VolumeReadError as exc:
                raise ValueError(str(exc).split("(truncated or corrupt): ", 1)[-1].split("; check the file")[0])
        reader = sitk.ImageFileReader()
        reader.SetFileName(tmp)
        reader.SetImageIO(_IMAGE_IO[fmt])
        back = reader.Execute()
        if back.GetSize() != image.GetSize():
            raise ValueError("the file read back has size %s, not %s" % (back.GetSize(), image.GetSize()))
        if not np.array_equal(sitk.GetArrayViewFromImage(back), labels):
            raise ValueError("the voxels read back differ from those written (a short write?)")
        if not np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-4) or \
                not np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3):
            raise ValueError("the geometry read back differs from what was written")

    return verify


def write_labels(labels, reference, path, overwrite=False, target=None):
    """Write a uint8 label volume (k, j, i) on ``reference``'s grid as NIfTI, NRRD or MetaImage.

    The format follows the extension (.nii, .nii.gz, .nrrd, .mha). The write is atomic and
    refuses an existing file unless ``overwrite``, so a failure never leaves a half file.
    """
    path = os.fspath(path)
    ext, fmt = _match_extension(path, _WRITE_EXTENSIONS)
    if fmt is None:
        raise ValueError("cannot write labels to %s: use a .nii, .nii.gz, .nrrd or .mha file name "
                         "(.seg.nrrd: use write_seg_nrrd)" % path)
    labels = _check_labels(labels, reference)
    image = _geometry_image(labels, reference.affine)
    # NIfTI compression follows the .gz extension; NRRD and MetaImage compress on request.
    atomic_write(path, overwrite, lambda tmp: sitk.WriteImage(image, tmp, fmt != "nifti"),
                 _verify_image(fmt, labels, image), target)


def _code(value, what):
    """``[scheme, value, meaning]`` from a model-card code dict (or an already-made triple)."""
    if isinstance(value, dict):
        try:
            return [str(value["scheme"]), str(value["value"]), str(value["meaning"])]
        except KeyError as exc:
            raise ValueError("segment %s code needs scheme, value and meaning, missing %s" % (what, exc))
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return [str(v) for v in value]
    raise ValueError("segment %s must be {scheme, value, meaning}, got %r" % (what, value))


def _slicer_segment(segment):
    """A model-card class entry as a slicerio segment (colour 0-255 -> 0-1, SNOMED terminology)."""
    index = int(segment["index"])
    if not 1 <= index <= 255:
        raise ValueError("segment index must be 1..255, got %d" % index)
    color = [float(c) for c in segment.get("color", (128, 128, 128))]
    if len(color) != 3 or not all(0 <= c <= 255 for c in color):
        raise ValueError("segment colour must be 3 values 0..255, got %r" % (segment.get("color"),))
    out = {
        "id": "Segment_%d" % index,
        "name": str(segment.get("name") or "Segment_%d" % index),
        "labelValue": index,
        "layer": 0,
        "color": [round(c / 255.0, 6) for c in color],
        "colorAutoGenerated": False,
        "nameAutoGenerated": False,
    }
    if segment.get("category") and segment.get("type"):
        out["terminology"] = {
            "contextName": _SLICER_CONTEXT,
            "category": _code(segment["category"], "category"),
            "type": _code(segment["type"], "type"),
            "anatomicContextName": _ANATOMIC_CONTEXT,
        }
    return out


def write_seg_nrrd(labels, reference, path, segments, overwrite=False, target=None):
    """Write a Slicer ``.seg.nrrd`` (binary labelmap) with segment names, colours and terminology.

    ``segments`` are model-card ``classes`` entries (index, name, 0-255 colour, SNOMED
    category/type). Every non-zero label must have a segment, so nothing in the file is
    unnamed. Atomic and no-clobber like :func:`write_labels`.
    """
    path = os.fspath(path)
    if not path.lower().endswith(".seg.nrrd"):
        raise ValueError("a Slicer segmentation file name must end in .seg.nrrd, got %s" % path)
    try:
        import slicerio
    except ImportError:
        raise ImportError("writing .seg.nrrd needs slicerio; install it with: %s" % _INSTALL_HINT)
    if not hasattr(slicerio, "write_segmentation"):
        raise ImportError("this slicerio (%s) cannot write segmentations; upgrade it: pip install -U slicerio"
                          % getattr(slicerio, "__version__", "old"))
    labels = _check_labels(labels, reference)
    segs = [_slicer_segment(s) for s in segments]
    known = set(s["labelValue"] for s in segs)
    if len(known) != len(segs):
        raise ValueError("segment indices must be unique, got %s" % sorted(s["labelValue"] for s in segs))
    unnamed = sorted(set(int(v) for v in np.unique(labels)) - known - {0})
    if unnamed:
        raise ValueError("label value(s) %s have no segment; add them to segments" % unnamed)
    segmentation = {
        "voxels": labels.transpose(2, 1, 0),  # slicerio's default index order is (i, j, k)
        "ijkToLPS": np.asarray(reference.affine, dtype=np.float64),
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
        "segments": segs,
    }

    def verify(tmp):
        import nrrd  # pynrrd: slicerio's own reader and writer

        try:
            back, _ = nrrd.read(tmp)
        except Exception as exc:  # pynrrd raises its own NRRDError, or zlib/EOF errors on a cut file
            raise ValueError("the file cannot be read back (%s)" % (str(exc).splitlines()[0][:120] if str(exc)
                                                                     else type(exc).__name__))
        if back.shape != segmentation["voxels"].shape or not np.array_equal(back, segmentation["voxels"]):
            raise ValueError("the voxels read back differ from those written (a short write?)")

    atomic_write(path, overwrite, lambda tmp: slicerio.write_segmentation(tmp, segmentation), verify, target)
