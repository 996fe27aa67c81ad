"""DICOM folders in: find the image series, pick one, split it into volumes, check its geometry.

What a scanner or PACS writes is rarely one clean series: a study folder holds a FLAIR
next to a T2, a diffusion series repeats every position once per b-value, an enhanced
multi-frame file packs a whole 4-D acquisition into one file. Reading any of these as
"the largest series, slices in file order" gives a volume with the wrong contrast or
slices metres from where they belong. So every folder goes through four explicit steps:

1. :func:`scan_folder`: every file is accounted for (an unreadable slice is refused, a
   non-image object such as a SEG or SR is listed and ignored); image frames are grouped
   into :class:`Series` by SeriesInstanceUID.
2. :func:`choose_series`: ``--series UID`` wins; else the only series; else the one that
   looks like the model's modality (:func:`guess_contrast`); else a refusal that lists them.
3. :func:`split_volumes`: frames sharing one position are several volumes (b-values,
   echoes, time points). More than one is refused unless a volume is chosen.
4. :func:`stack_geometry`: one orientation (within :data:`ORIENTATION_TOL`), real
   positions and pixel spacing, no duplicate positions, evenly spaced slices; anything
   else is refused or warned about with one line saying what to do.

The rules and the real series they were tried on are in docs/dicom.md. Headers come from
pydicom (the ``[dicom]`` extra, bundled with Slicer); pixels from SimpleITK (GDCM), which
decodes the compressed transfer syntaxes. Python 3.9+.
"""

import os
import re
import struct

import numpy as np

__all__ = ["DICOM_EXTENSIONS", "DicomReadError", "Frame", "Series", "scan_folder", "scan_files", "group_series", "describe_volume", "contrast_of_files", "guess_contrast", "choose_series",
           "split_volumes", "contrast_refusal", "stack_geometry", "read_series_pixels", "ORIENTATION_TOL", "SPACING_TOL"]

ORIENTATION_TOL = 1e-3  # max difference of direction cosines treated as one orientation (~0.06 degrees)
POSITION_TOL_MM = 0.01  # positions closer than this along the slice normal are the same slice
SPACING_TOL = 0.01  # relative spread of slice steps accepted silently
SPACING_WARN = 0.1  # up to this spread: warned (the mean step is used); beyond: refused as a gap
FLAIR_MIN_TI_MS = 1200.0  # an inversion-recovery series with a longer TI nulls fluid: FLAIR
_INSTALL_HINT = 'reading DICOM needs the optional extra: pip install "LowResSegLib[dicom]"'
_NON_IMAGE_CLASSES = {  # SOP classes that sit in study folders but are not images to segment
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation", "1.2.840.10008.5.1.4.1.1.11.1": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR", "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR", "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data", "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
}
DICOM_EXTENSIONS = (".dcm", ".dicom", ".ima")
_UNCOMPRESSED = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


class DicomReadError(ValueError):
    """The folder cannot be read as one volume; the message says why and what to do."""


def _pydicom():
    try:
        import pydicom
    except ImportError as exc:
        raise DicomReadError("%s (%s)" % (_INSTALL_HINT, exc))
    return pydicom


# --------------------------------------------------------------------------- frames and series


class Frame(object):
    """One 2-D image: a classic single-frame file, or one frame of a multi-frame file."""

    __slots__ = ("path", "index", "position", "orientation", "pixel_spacing", "size", "order",
                 "b_value", "echo_time", "temporal", "sop_uid", "rescale")

    def __init__(self, path, index, position, orientation, pixel_spacing, size, order, b_value=None,
                 echo_time=None, temporal=None, sop_uid=None, rescale=(1.0, 0.0)):
        self.path, self.index = path, index  # index: frame number in a multi-frame file, else None
        self.position, self.orientation, self.pixel_spacing = position, orientation, pixel_spacing
        self.size, self.order = size, order  # (rows, columns); sort key within one position
        self.b_value, self.echo_time, self.temporal = b_value, echo_time, temporal
        self.sop_uid, self.rescale = sop_uid, rescale


class Series(object):
    """The frames of one SeriesInstanceUID, with the header facts that choose and describe it."""

    def __init__(self, uid, header):
        self.uid, self.frames = uid, []
        get = lambda key: _text(header.get(key))
        self.description = get("SeriesDescription") or ""
        self.protocol = get("ProtocolName") or ""
        self.sequence_name = get("SequenceName") or get("PulseSequenceName") or ""
        self.image_type = [v.upper() for v in _list(header.get("ImageType"))]
        self.inversion_time = _float(header.get("InversionTime"))
        self.modality = get("Modality")
        self.study_uid = get("StudyInstanceUID")
        self.frame_of_reference_uid = get("FrameOfReferenceUID")
        self.patient_id = get("PatientID")
        self.number = get("SeriesNumber")
        self.multiframe = False
        if self.inversion_time is None:  # enhanced MR: in the shared MR timing functional group
            timing = _shared(header, "MRTimingAndRelatedParametersSequence")
            self.inversion_time = _float(timing.get("InversionTimes")) if timing is not None else None

    @property
    def label(self):
        """How a user recognises the series in a list."""
        name = self.description or self.protocol or "(no description)"
        return "%s '%s' (%d %s%s)" % (self.uid, name, len(self.frames), "frames" if self.multiframe else "files",
                                     ", series %s" % self.number if self.number else "")


def _text(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    return str(value).strip(" \x00") or None


def _list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("\\") if v]
    try:
        return [str(v) for v in value]
    except TypeError:
        return [str(value)]


def _float(value):
    try:
        if value is None or value == "":
            return None
        if not isinstance(value, (int, float, str)):
            value = list(value)[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _floats(value, n):
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return np.array(out) if len(out) == n and np.all(np.isfinite(out)) else None


def _shared(ds, keyword):
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and keyword in shared[0] and len(shared[0][keyword].value):
        return shared[0][keyword][0]
    return None


def _group(ds, per_frame, keyword):
    """A functional-group item: per-frame if the frame has it, else the shared one."""
    if per_frame is not None and keyword in per_frame and len(per_frame[keyword].value):
        return per_frame[keyword][0]
    return _shared(ds, keyword)


def _b_value(ds):
    value = _float(ds.get("DiffusionBValue"))
    if value is None and "MRDiffusionSequence" in ds and len(ds.MRDiffusionSequence):
        value = _float(ds.MRDiffusionSequence[0].get("DiffusionBValue"))
    return value


def _frames_of(path, ds):
    """Frames of one image file, in file order."""
    size = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    n = int(_float(ds.get("NumberOfFrames")) or 1)
    rescale = (_float(ds.get("RescaleSlope")) or 1.0, _float(ds.get("RescaleIntercept")) or 0.0)
    if n == 1 and "PerFrameFunctionalGroupsSequence" not in ds:
        order = (_float(ds.get("TemporalPositionIdentifier")) or 0, _float(ds.get("AcquisitionNumber")) or 0,
                 _float(ds.get("InstanceNumber")) or 0, path)
        return [Frame(path, None, _floats(ds.get("ImagePositionPatient"), 3),
                      _floats(ds.get("ImageOrientationPatient"), 6), _floats(ds.get("PixelSpacing"), 2), size, order,
                      _b_value(ds), _float(ds.get("EchoTime")), _float(ds.get("TemporalPositionIdentifier")),
                      _text(ds.get("SOPInstanceUID")), rescale)]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = []
    for f in range(n):
        item = per_frame[f] if f < len(per_frame) else None
        plane = _group(ds, item, "PlanePositionSequence")
        orient = _group(ds, item, "PlaneOrientationSequence")
        measures = _group(ds, item, "PixelMeasuresSequence")
        content = _group(ds, item, "FrameContentSequence")
        echo = _group(ds, item, "MREchoSequence")
        diffusion = _group(ds, item, "MRDiffusionSequence")
        transform = _group(ds, item, "PixelValueTransformationSequence")
        temporal = _float(content.get("TemporalPositionIndex")) if content is not None else None
        frame_rescale = rescale
        if transform is not None:
            frame_rescale = (_float(transform.get("RescaleSlope")) or 1.0, _float(transform.get("RescaleIntercept")) or 0.0)
        frames.append(Frame(
            path, f,
            _floats(plane.get("ImagePositionPatient"), 3) if plane is not None else None,
            _floats(orient.get("ImageOrientationPatient"), 6) if orient is not None else None,
            _floats(measures.get("PixelSpacing"), 2) if measures is not None else None,
            size, (temporal or 0, 0, f, path),
            _float(diffusion.get("DiffusionBValue")) if diffusion is not None else None,
            _float(echo.get("EffectiveEchoTime")) if echo is not None else None,
            temporal, _text(ds.get("SOPInstanceUID")), frame_rescale))
    return frames


def _truncated(path, ds):
    """True when an uncompressed file is shorter than its own pixel data."""
    ts = str(getattr(getattr(ds, "file_meta", None), "get", lambda k: None)("TransferSyntaxUID") or "")
    if ts not in _UNCOMPRESSED:
        return False
    need = (int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * int(_float(ds.get("NumberOfFrames")) or 1)
            * int(ds.get("SamplesPerPixel") or 1) * ((int(ds.get("BitsAllocated") or 16) + 7) // 8))
    return os.path.getsize(path) < need


def _unreadable(path, reason):
    return DicomReadError("%s looks like a DICOM slice but could not be read (%s); reading the rest would silently "
                          "drop a slice, so re-export the series or remove the file" % (path, reason))


def scan_folder(folder):
    """(series by UID, ignored-file notes) for the files directly in ``folder``.

    A file that looks like a slice but cannot be read is refused: reading the rest would
    silently drop a slice and shift the geometry.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise DicomReadError("cannot list %s: %s; check the folder's permissions" % (folder, exc.strerror or exc))
    return scan_files([os.path.join(folder, n) for n in names if not n.startswith(".") and n.upper() != "DICOMDIR"
                       and os.path.isfile(os.path.join(folder, n))])


def scan_files(paths):
    """:func:`scan_folder` for a list of files (e.g. one enhanced multi-frame file)."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    headers, ignored = [], []
    for path in paths:
        name = os.path.basename(path)
        with open(path, "rb") as f:
            head = f.read(132)
        preamble = head[128:132] == b"DICM"
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=not preamble and name.lower().endswith(
                DICOM_EXTENSIONS))
            if not preamble and "SOPClassUID" not in ds and "Rows" not in ds:
                raise InvalidDicomError("no DICOM header")
        except (InvalidDicomError, EOFError, ValueError, OSError, struct.error, IndexError, TypeError, KeyError,
                AttributeError, NotImplementedError) as exc:
            if preamble or name.lower().endswith(DICOM_EXTENSIONS):
                reason = ("not a DICOM file: no DICOM header" if isinstance(exc, InvalidDicomError) else
                          "its header is damaged: %s" % (str(exc).splitlines()[0][:120] if str(exc) else
                                                         type(exc).__name__))
                raise _unreadable(path, reason)
            ignored.append(name)
            continue
        if _is_image(ds) and _truncated(path, ds):
            raise _unreadable(path, "the file is shorter than its own pixel data")
        headers.append((path, ds))
    series, more = group_series(headers)
    return series, ignored + more


def _sop_class(ds):
    meta = getattr(ds, "file_meta", None)
    return _text(ds.get("SOPClassUID")) or (_text(meta.get("MediaStorageSOPClassUID")) if meta else None)


def _is_image(ds):
    return _sop_class(ds) not in _NON_IMAGE_CLASSES and "Rows" in ds and bool(ds.get("SeriesInstanceUID"))


def group_series(headers):
    """(series by UID, ignored notes) from ``(path, dataset)`` pairs: headers read from files, or a
    DICOMweb server's metadata (then ``path`` only names the instance). Non-image objects are noted."""
    series, ignored = {}, []
    for path, ds in headers:
        if not _is_image(ds):
            sop_class = _sop_class(ds)
            what = _NON_IMAGE_CLASSES.get(sop_class) or ("SOP class %s" % sop_class if sop_class else "no image")
            ignored.append("%s (%s)" % (os.path.basename(path), what))
            continue
        uid = str(ds.SeriesInstanceUID)
        if uid not in series:
            series[uid] = Series(uid, ds)
        s = series[uid]
        frames = _frames_of(path, ds)
        s.multiframe = s.multiframe or len(frames) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        s.frames.extend(frames)
        if "MOSAIC" in [v.upper() for v in _list(ds.get("ImageType"))]:
            s.image_type = sorted(set(s.image_type) | {"MOSAIC"})
    return series, ignored


# --------------------------------------------------------------------------- series choice

_FLAIR_WORDS = re.compile(r"flair|dark[\s_-]*fluid|\btirm|fluid[\s_-]*att", re.I)
_T1_WORDS = re.compile(r"\bt1|mprage|mp[\s_-]*rage|spgr|bravo|tfe3d|\bt1w|vibe|flash", re.I)
_T2_WORDS = re.compile(r"\bt2|tse|fse|\bt2w", re.I)
_DWI_WORDS = re.compile(r"dwi|dti|diff|\badc\b|trace|\bb0\b", re.I)
_EPI_WORDS = re.compile(r"\bepi|fmri|bold|resting|\brs[\s_-]", re.I)


def guess_contrast(series):
    """'FLAIR', 'T1', 'T2', 'DWI', 'EPI' (fMRI) or None, from the headers a scanner writes (docs/dicom.md).

    FLAIR: the name says so (FLAIR, dark fluid, TIRM), or an inversion-recovery series with
    an inversion time of at least 1200 ms (T1-weighted IR uses well under 1200 ms). Names win
    over timing, and an explicit T1 / T2 / diffusion name rules FLAIR out.
    """
    text = " ".join((series.description, series.protocol, series.sequence_name))
    b_values = set(f.b_value for f in series.frames if f.b_value is not None)
    if _FLAIR_WORDS.search(text):
        return "FLAIR"
    if _DWI_WORDS.search(text) or len(b_values) > 1 or any(b > 0 for b in b_values):
        return "DWI"
    if _EPI_WORDS.search(text):
        return "EPI"
    ti = series.inversion_time
    if ti is not None and ti >= FLAIR_MIN_TI_MS and not _T1_WORDS.search(text):
        return "FLAIR"
    if _T1_WORDS.search(text):
        return "T1"
    if _T2_WORDS.search(text):
        return "T2"
    return None


def contrast_refusal(series, wanted, accept_unknown=False):
    """Why an unattended run (``pacs``, ``batch``) must not read ``series`` with a ``wanted``-contrast model, or None.

    The one rule for runs nobody watches (docs/dicom.md, "Contrast in unattended runs"): a series whose
    headers name another contrast (T1, T2, DWI, ...) is refused, also when it is the study's only series;
    one whose headers name no contrast is refused unless ``accept_unknown``. A person who picks the
    series (``--series UID``, or ``segment`` on a folder) gets a warning instead (workflow.run).
    """
    wanted = (wanted or "").upper()
    if not wanted:
        return None
    seen = guess_contrast(series)
    if seen == wanted:
        return None
    if seen:
        return ("%s looks like %s by its headers, not %s: a %s model's segmentation of it would be meaningless; "
                "pass --series UID to segment it all the same" % (series.label, seen, wanted, wanted))
    if accept_unknown:
        return None
    return ("%s names no contrast in its headers (description, protocol, sequence, inversion time), so it may not be "
            "%s; pass --accept-unknown-contrast to segment such series, or --series UID for this one"
            % (series.label, wanted))


def choose_series(series, modality=None, series_uid=None, where="the folder"):
    """The series to read, by the documented rule; a refusal lists the candidates."""
    if not series:
        raise DicomReadError("no DICOM image series found in %s; point to the folder that directly holds the "
                             "series' files, or pass a NIfTI, NRRD or MetaImage file" % where)
    guesses = {uid: guess_contrast(s) for uid, s in series.items()}
    listing = "; ".join("%s%s" % (s.label, " [%s]" % guesses[uid] if guesses[uid] else "")
                        for uid, s in series.items())
    if series_uid:
        if series_uid not in series:
            raise DicomReadError("series %s is not in %s; it holds: %s" % (series_uid, where, listing))
        return series[series_uid]
    if len(series) == 1:
        return next(iter(series.values()))
    wanted = (modality or "").upper()
    matches = [s for uid, s in series.items() if wanted and guesses[uid] == wanted]
    if len(matches) == 1:
        return matches[0]
    why = ("%d of them look like %s" % (len(matches), wanted) if matches else
           "none looks like %s by its description or sequence" % wanted if wanted else "no modality to prefer")
    raise DicomReadError("%s holds %d image series and %s: %s; pass --series UID to pick one"
                         % (where, len(series), why, listing))


# --------------------------------------------------------------------------- volumes and geometry


def _normal(orientation):
    row, col = orientation[:3], orientation[3:]
    n = np.cross(row, col)
    return n / (np.linalg.norm(n) or 1.0)


def split_volumes(series):
    """Lists of frames, one per volume: frames sharing a position belong to different volumes.

    Within one position, frames are ordered by temporal index, acquisition, instance or
    frame number, so the n-th frame at every position is volume n. Positions repeated an
    uneven number of times are duplicates, not volumes, and are refused.
    """
    frames = series.frames
    if any(f.position is None or f.orientation is None for f in frames):
        return [frames]  # no geometry: stack_geometry refuses with the reason
    normal = _normal(frames[0].orientation)
    depth = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(depth, kind="stable")
    groups, current = [], [order[0]]
    for a, b in zip(order[:-1], order[1:]):
        if abs(depth[b] - depth[a]) <= POSITION_TOL_MM and np.linalg.norm(frames[b].position - frames[a].position) \
                <= POSITION_TOL_MM * 10:
            current.append(b)
        else:
            groups.append(current)
            current = [b]
    groups.append(current)
    counts = sorted(set(len(g) for g in groups))
    if len(counts) > 1:
        dup = [g for g in groups if len(g) != counts[0]][0]
        names = sorted(set(os.path.basename(frames[i].path) + ("" if frames[i].index is None else
                                                                  " frame %d" % (frames[i].index + 1)) for i in dup))
        raise DicomReadError("series %s has %d images at one slice position (%.2f mm) but %d at others: duplicate "
                             "slices (%s); remove the duplicates or re-export the series"
                             % (series.uid, len(dup), depth[dup[0]], counts[0], ", ".join(names[:4])))
    n = counts[0]
    groups = [sorted(g, key=lambda i: frames[i].order) for g in groups]
    return [[frames[g[v]] for g in groups] for v in range(n)]


def describe_volume(frames, number):
    """'volume 2: b = 1000' etc.: what tells this volume apart."""
    facts = []
    for attr, fmt in (("b_value", "b = %g"), ("echo_time", "TE = %g ms"), ("temporal", "time point %g")):
        values = sorted(set(getattr(f, attr) for f in frames if getattr(f, attr) is not None))
        if values:
            facts.append(fmt % values[0] if len(values) == 1 else (fmt % values[0]) + "..")
    return "volume %d%s" % (number, (": " + ", ".join(facts)) if facts else "")


def stack_geometry(frames, what):
    """(frames sorted along the slice normal, 4x4 IJK->LPS affine, warnings); refusals raise.

    Checks, in order: geometry present, one pixel grid, one orientation (ORIENTATION_TOL),
    no two slices at one position, evenly spaced slices (SPACING_TOL warns, SPACING_WARN refuses).
    """
    warnings = []
    missing = [k for k in ("position", "orientation", "pixel_spacing") if any(getattr(f, k) is None for f in frames)]
    if missing:
        tags = {"position": "ImagePositionPatient", "orientation": "ImageOrientationPatient",
                "pixel_spacing": "PixelSpacing"}
        raise DicomReadError("%s lacks %s, so its slices cannot be placed in space and no volume in mL can be "
                             "given; export it with its geometry (not as secondary capture or screenshots)"
                             % (what, " and ".join(tags[k] for k in missing)))
    sizes = sorted(set(f.size for f in frames))
    if len(sizes) > 1:
        raise DicomReadError("%s mixes image sizes %s; pass a folder holding one series of one size"
                             % (what, ", ".join("%dx%d" % s for s in sizes)))
    o0 = frames[0].orientation
    worst = max(float(np.abs(f.orientation - o0).max()) for f in frames)
    if worst > ORIENTATION_TOL:
        raise DicomReadError("%s mixes slice orientations (direction cosines differ by up to %.3g, more than %g): "
                             "a localizer or a reformatted series is mixed in; pass a folder holding one series"
                             % (what, worst, ORIENTATION_TOL))
    spacing0 = frames[0].pixel_spacing
    if any(np.abs(f.pixel_spacing - spacing0).max() > 1e-3 * spacing0.max() for f in frames):
        raise DicomReadError("%s mixes pixel spacings; pass a folder holding one series" % what)
    row, col = np.array(o0[:3]), np.array(o0[3:])
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    depth = np.array([float(f.position @ normal) for f in frames])
    order = np.argsort(depth, kind="stable")
    frames = [frames[i] for i in order]
    depth = depth[order]
    if len(frames) > 1:
        steps = np.diff(depth)
        if steps.min() <= POSITION_TOL_MM:
            k = int(np.argmin(steps))
            raise DicomReadError("%s has two images at one slice position (%.2f mm: %s and %s); remove the duplicate "
                                 "or re-export the series" % (what, depth[k], os.path.basename(frames[k].path),
                                                              os.path.basename(frames[k + 1].path)))
        step = float(np.median(steps))
        spread = float(np.ptp(steps)) / step
        if spread > SPACING_WARN:
            big = int(np.argmax(steps))
            raise DicomReadError("%s has uneven slice positions (steps from %.3g to %.3g mm, largest after slice %d): "
                                 "a slice is missing or the series mixes stacks; re-export the complete series"
                                 % (what, steps.min(), steps.max(), big + 1))
        if spread > SPACING_TOL:
            warnings.append("slice steps in %s vary from %.3g to %.3g mm; the volume uses their mean, so positions "
                            "are off by up to %.2g mm" % (what, steps.min(), steps.max(),
                                                           float(np.abs(depth - depth[0] - np.arange(len(depth))
                                                                        * np.mean(steps)).max())))
        step = float(np.mean(steps))
    else:
        step = 1.0
        warnings.append("%s is a single slice; its thickness is taken as 1 mm" % what)
    affine = np.eye(4)
    # (i, j, k): i runs along a row (column index), j down the columns (row index), k along the normal
    affine[:3, 0] = row * float(spacing0[1])
    affine[:3, 1] = col * float(spacing0[0])
    affine[:3, 2] = normal * step
    affine[:3, 3] = frames[0].position
    return frames, affine, warnings


def read_series_pixels(frames):
    """The (k, j, i) float32 array of ``frames`` (already in slice order), decoded by SimpleITK."""
    import SimpleITK as sitk

    from LowResSegLib.images.itkmessages import quiet_itk

    by_file = {}
    for k, f in enumerate(frames):
        by_file.setdefault(f.path, []).append((k, f.index))
    out = np.zeros((len(frames),) + frames[0].size, np.float32)
    with quiet_itk():
        if all(f.index is None for f in frames):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([f.path for f in frames])
            try:
                out[:] = sitk.GetArrayFromImage(reader.Execute()).reshape(out.shape)
                return out
            except RuntimeError:
                pass  # find the file at fault below, so the message can name it
        for path, items in by_file.items():
            try:
                data = sitk.GetArrayFromImage(sitk.ReadImage(path))
            except RuntimeError as exc:
                from LowResSegLib.images.itkmessages import itk_reason

                raise _unreadable(path, "its pixel data: %s" % itk_reason(exc))
            data = data.reshape((-1,) + frames[0].size)
            for k, index in items:
                out[k] = data[index or 0]
    return out


def contrast_of_files(files):
    """The contrast the headers of ``files`` (one series) say, or None (for a viewer's loaded series)."""
    series, _ = scan_files(list(files))
    guesses = set(guess_contrast(s) for s in series.values())
    return guesses.pop() if len(guesses) == 1 else None

