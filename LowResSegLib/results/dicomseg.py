"""DICOM-SEG output (highdicom) and an independent validator hook (dciodvfy).

:func:`write_dicom_seg` writes a BINARY Segmentation that references the source series
and shares its Frame of Reference, one segment per model-card class present in the mask:

* segment numbers run from 1 in ascending class-index order; the class index is also
  written into each item's SegmentDescription (0062,0006) as ``"LowResSeg class <index>"``
  so :func:`read_dicom_seg` can restore the label values without the card;
* SegmentLabel = class name, SegmentAlgorithmType AUTOMATIC, AlgorithmIdentification
  (name = card ``name``, version = card ``version``, family DCM 123110 "Artificial
  Intelligence"), segmented property category/type from the card's SNOMED codes with
  the designator "SCT" (a legacy "SRT" with a numeric code is rewritten to "SCT", a
  legacy non-numeric SRT code is refused), and the card RGB colour as
  RecommendedDisplayCIELabValue;
* empty frames are left out (highdicom's default). An all-empty mask still gives a valid
  SEG: it then describes every card class (segment numbers in card-index order) and
  highdicom keeps all frames (it cannot omit all of them). A radiologist gets an explicit
  "model ran, found nothing" object instead of an error.

:func:`read_dicom_seg` maps frames back to the source slices by their referenced SOP
instance UIDs (highdicom ``get_pixels_by_source_instance``) and, when a SEG does not
reference the instances frame by frame, by plane position; frames absent from the SEG
are empty.

highdicom and pydicom are an optional extra: they are imported inside the functions.
"""

import io
import logging
import os
import re
import shutil
import subprocess

import numpy as np

from LowResSegLib.images.io import write_bytes
from LowResSegLib.results.outputs import check_output_path

__all__ = ["check_seg_sources", "SegSources", "write_dicom_seg", "software_versions", "read_dicom_seg", "run_dciodvfy",
           "seg_errors_by_origin", "labels_for_source_files"]

_INSTALL_HINT = 'DICOM-SEG support needs the optional extra: pip install "LowResSegLib[dicom]"'
_CLASS_TAG = "LowResSeg class %d"
_CLASS_RE = re.compile(r"LowResSeg class (\d+)")
_EXTRA_TAG = "LowResSeg extra: "  # SegmentDescription of a segment that is no class (read_dicom_seg skips it)
_POSITION_TOL_MM = 1e-3


def _import_dicom():
    try:
        import highdicom as hd
        import pydicom
    except ImportError as exc:
        raise ImportError("%s (%s)" % (_INSTALL_HINT, exc))
    return hd, pydicom


# --------------------------------------------------------------------------- inputs


_DA = re.compile(r"^\d{8}$")
_TM = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_AS = re.compile(r"^\d{3}[DWMY]$")
_TYPE2_RULES = {  # type-2 attributes highdicom copies from the source; an invalid value is left empty
    "PatientSex": lambda v: v in ("M", "F", "O"),
    "PatientBirthDate": lambda v: bool(_DA.match(v)),
    "PatientAge": lambda v: bool(_AS.match(v)),
    "StudyDate": lambda v: bool(_DA.match(v)),
    "StudyTime": lambda v: bool(_TM.match(v)),
    "AccessionNumber": lambda v: len(v) <= 16,
    "StudyID": lambda v: len(v) <= 16,
}


class SegSources(object):
    """The source series of a SEG, checked from its headers alone (before any inference).

    ``datasets``: one header per source file (a multi-frame source is one file);
    ``frames``: per label slice k, the source frame it lies on (multi-frame) or None;
    ``notes``: what was tolerated or left empty, in words for the user.
    """

    def __init__(self, datasets, files, frames, notes):
        self.datasets, self.files, self.frames, self.notes = datasets, files, frames, notes

    @property
    def multiframe(self):
        return self.frames[0] is not None

    @property
    def shape(self):
        return (len(self.frames), int(self.datasets[0].Rows), int(self.datasets[0].Columns))


def _sanitise(ds, notes):
    """Leave invalid type-2 patient/study values empty (common in anonymised data) and say so."""
    for key, valid in _TYPE2_RULES.items():
        value = ds.get(key)
        if value is None or str(value).strip() == "":
            continue
        if not valid(str(value).strip()):
            note = "%s %r of the source is not valid DICOM; left empty in the SEG" % (key, str(value))
            if note not in notes:
                notes.append(note)
            setattr(ds, key, "")


def check_seg_sources(source_files, source_frames=None):
    """Check that a SEG can be written on ``source_files`` (k order) and return :class:`SegSources`.

    ``source_frames`` (a reader's ``meta["frames"]``) names, for a multi-frame source, the
    frame of each slice. Orientation cosines that differ by no more than
    ``dicomread.ORIENTATION_TOL`` (a GE 3-D series: ~6e-8) are one orientation; the SEG uses
    the first slice's. Raises ValueError when the series cannot carry a SEG.
    """
    from LowResSegLib.images.dicomread import ORIENTATION_TOL

    hd, pydicom = _import_dicom()
    if isinstance(source_files, (str, bytes)) or not hasattr(source_files, "__len__"):
        raise ValueError("source_files must be a list of the source series' file paths in k order")
    if len(source_files) == 0:
        raise ValueError("source_files is empty")
    frames = list(source_frames) if source_frames is not None else [None] * len(source_files)
    if len(frames) != len(source_files):
        raise ValueError("source_frames must give one frame (or None) per source file entry")
    files = list(dict.fromkeys(str(p) for p in source_files))
    datasets = []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path, stop_before_pixels=True))
        except FileNotFoundError:
            raise
        except Exception as exc:
            raise ValueError("cannot read source DICOM file %s: %s" % (path, exc))
    multiframe = frames[0] is not None
    if multiframe != all(f is not None for f in frames) or (multiframe and len(files) != 1):
        raise ValueError("a SEG references one multi-frame source file or single-frame files, not a mix")
    if not multiframe and len(files) != len(source_files):
        raise ValueError("source_files lists the same file more than once")
    keys = ["SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID", "Rows", "Columns"]
    if not multiframe:
        keys += ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"]
    for key in keys:
        missing = [p for p, ds in zip(files, datasets) if key not in ds]
        if missing:
            raise ValueError("the source series lacks %s (%s), so no DICOM-SEG can reference it; export the "
                             "labels as NIfTI or .seg.nrrd instead" % (key, ", ".join(missing[:3])))
    if multiframe:
        ds = datasets[0]
        n = int(ds.get("NumberOfFrames") or 1)
        if "PerFrameFunctionalGroupsSequence" not in ds:
            raise ValueError("the multi-frame source %s has no per-frame functional groups (not an enhanced image); "
                             "no DICOM-SEG can reference its frames" % files[0])
        if any(not 0 <= f < n for f in frames) or len(set(frames)) != len(frames):
            raise ValueError("source_frames must be distinct frame indices in 0..%d" % (n - 1))
    for key, what in (("SeriesInstanceUID", "series"), ("StudyInstanceUID", "study"),
                      ("FrameOfReferenceUID", "frame of reference")):
        values = sorted(set(str(ds.get(key)) for ds in datasets))
        if len(values) > 1:
            raise ValueError("source files must share one %s; found %d different %s values: %s"
                             % (what, len(values), key, ", ".join(values[:4])))
    shapes = sorted(set((int(ds.Rows), int(ds.Columns)) for ds in datasets))
    if len(shapes) > 1:
        raise ValueError("source images differ in size (rows, columns): %s" % (shapes,))
    if not multiframe:
        if any(int(ds.get("NumberOfFrames", 1) or 1) != 1 for ds in datasets):
            raise ValueError("source images must be single-frame files, or one enhanced multi-frame file")
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        if len(set(uids)) != len(uids):
            raise ValueError("source_files lists the same SOP instance more than once")
    notes = []
    if not multiframe:
        first = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
        worst = max(float(np.abs(np.array([float(v) for v in ds.ImageOrientationPatient]) - first).max())
                    for ds in datasets)
        if worst > ORIENTATION_TOL:
            raise ValueError("the source slices differ in orientation by up to %.3g (more than %g); a SEG needs one "
                             "orientation" % (worst, ORIENTATION_TOL))
        if worst > 0:
            for ds in datasets:
                ds.ImageOrientationPatient = datasets[0].ImageOrientationPatient
            notes.append("slice orientations differing by up to %.2g were taken as one (tolerance %g)"
                         % (worst, ORIENTATION_TOL))
    for ds in datasets:
        _sanitise(ds, notes)
    return SegSources(datasets, files, frames, notes)


# --------------------------------------------------------------------------- card


def _code(entry, what, cls_name, hd):
    if not isinstance(entry, dict) or not all(entry.get(k) for k in ("scheme", "value", "meaning")):
        raise ValueError("card class %r: %s must be {scheme, value, meaning}" % (cls_name, what))
    scheme, value, meaning = str(entry["scheme"]).strip(), str(entry["value"]).strip(), str(entry["meaning"])
    if scheme.upper() in ("SRT", "SNM3", "SNOMED", "SNOMED-CT", "SCT"):
        if not value.isdigit():
            raise ValueError("card class %r: %s %s^%s is a legacy SNOMED-RT code; use the SNOMED CT "
                             "concept id with scheme SCT" % (cls_name, what, scheme, value))
        scheme = "SCT"
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def _card_classes(card):
    if not isinstance(card, dict):
        raise ValueError("card must be a model card dict with name, version and classes")
    for key in ("name", "version", "classes"):
        if not card.get(key):
            raise ValueError("model card lacks %r" % key)
    classes = {}
    for cls in card["classes"]:
        try:
            index = int(cls["index"])
        except (KeyError, TypeError, ValueError):
            raise ValueError("card class without an integer 'index': %r" % (cls,))
        if not 1 <= index <= 255:
            raise ValueError("card class index must be in 1..255, got %d" % index)
        if index in classes:
            raise ValueError("card lists class index %d twice" % index)
        if not cls.get("name"):
            raise ValueError("card class %d has no name" % index)
        classes[index] = cls
    if not classes:
        raise ValueError("model card has no classes")
    return classes


def _segment_description(number, cls, card, hd, codes):
    import inspect

    name = str(cls["name"])
    algo = hd.AlgorithmIdentificationSequence(
        name=str(card["name"])[:64], family=codes.cid7162.ArtificialIntelligence,
        version=str(card["version"])[:64])
    kwargs = dict(
        segment_number=number, segment_label=name[:64],
        segmented_property_category=_code(cls.get("category"), "category", name, hd),
        segmented_property_type=_code(cls.get("type"), "type", name, hd),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algo,
    )
    color = cls.get("color")
    color_supported = (hasattr(hd, "color") and hasattr(hd.color, "CIELabColor")
                       and "display_color" in inspect.signature(hd.seg.SegmentDescription.__init__).parameters)
    if color is not None and color_supported:
        rgb = [float(c) for c in color]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError("card class %r colour must be [r, g, b] in 0..255, got %r" % (name, color))
        kwargs["display_color"] = hd.color.CIELabColor.from_rgb(*rgb)
    desc = hd.seg.SegmentDescription(**kwargs)
    # Type 3 free text; also how read_dicom_seg recovers the label value without the card.
    text = _CLASS_TAG % int(cls["index"])
    if cls.get("label"):
        text += ": " + str(cls["label"])
    desc.SegmentDescription = text[:64]
    return desc


# --------------------------------------------------------------------------- write


def software_versions(card):
    """SoftwareVersions of a SEG made by this model version: how a PACS rerun recognises its own SEGs."""
    return ("LowResSeg %s %s" % (card["name"], card["version"]))[:64]


def write_dicom_seg(labels, source_files, card, out_path, overwrite=False, series_description=None,
                    source_frames=None, sources=None, target=None, extra_segments=None):
    """Write ``labels`` (uint8, (k, j, i) on the source grid) as a BINARY DICOM-SEG; return ``out_path``.

    ``source_files`` are the source series' files in k order (as a reader gives them);
    ``labels[k]`` is the mask of ``source_files[k]`` (of frame ``source_frames[k]`` for an
    enhanced multi-frame source). ``card`` is the model card dict (``name``, ``version``,
    ``classes``). ``sources`` may pass an earlier :func:`check_seg_sources` result.
    Written atomically and verified (encoded in memory, written to a temporary file in the same folder,
    read back and compared, then renamed; :class:`~LowResSegLib.images.io.WriteError` names ``target``
    or ``out_path`` on a full disk); an existing
    ``out_path`` is refused unless ``overwrite``. What was tolerated or left empty is in
    the ``notes`` of the :class:`SegSources` (pass ``sources`` to see them).

    Raises ValueError for a labels shape other than the source's (slices, rows, columns),
    label values that are not card class indices, or source files that cannot carry a SEG;
    FileExistsError for an existing ``out_path``.

    ``extra_segments``: further segments that are no class of the card and may overlap the labels (an
    ensemble's "members disagree" region), each a dict with ``name``, ``color``, ``category``, ``type``
    (SNOMED codes as in a card class), ``description`` and ``mask`` (bool, the labels' shape). An empty
    one is left out. They follow the class segments; :func:`read_dicom_seg` reads the classes only.
    """
    import warnings

    hd, pydicom = _import_dicom()
    from pydicom.sr.codedict import codes

    out_path = os.fspath(out_path)
    check_output_path(out_path, overwrite)
    classes = _card_classes(card)
    if sources is None:
        sources = check_seg_sources(source_files, source_frames)

    labels = np.asarray(labels)
    if labels.shape != sources.shape:
        raise ValueError("labels shape %s does not match the source series (slices, rows, columns) = %s"
                         % (labels.shape, sources.shape))
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(labels == np.round(labels)):
            raise ValueError("labels must hold integer class indices, got dtype %s" % labels.dtype)
    present = [int(v) for v in np.unique(labels) if v != 0]
    unknown = [v for v in present if v not in classes]
    if unknown:
        raise ValueError("labels contain values %s that are not class indices of model %r (%s)"
                         % (unknown, card["name"], sorted(classes)))
    indices = present if present else sorted(classes)

    descriptions = [_segment_description(n + 1, classes[idx], card, hd, codes)
                    for n, idx in enumerate(indices)]
    planes = [labels == idx for idx in indices]
    for extra in extra_segments or ():
        mask = np.asarray(extra["mask"]).astype(bool)
        if mask.shape != labels.shape:
            raise ValueError("extra segment %r has shape %s, the labels %s" % (extra.get("name"), mask.shape,
                                                                               labels.shape))
        if not mask.any():
            continue
        desc = _segment_description(len(descriptions) + 1, dict(extra, index=1), card, hd, codes)
        desc.SegmentDescription = (_EXTRA_TAG + str(extra.get("description") or extra["name"]))[:64]
        descriptions.append(desc)
        planes.append(mask)
    stacked = np.stack(planes, axis=-1).astype(np.uint8)
    source_images = sources.datasets
    if sources.multiframe:
        # highdicom refuses a source whose frames repeat positions (a 4-D file), so it gets a header
        # holding only this volume's frames, in k order; its frame numbers are mapped back below.
        import copy

        header = copy.deepcopy(sources.datasets[0])
        header.PerFrameFunctionalGroupsSequence = pydicom.Sequence(
            [header.PerFrameFunctionalGroupsSequence[f] for f in sources.frames])
        header.NumberOfFrames = len(sources.frames)
        source_images = [header]

    src0 = sources.datasets[0]
    try:
        series_number = int(src0.get("SeriesNumber") or 0) + 1000
    except (TypeError, ValueError):
        series_number = 1000
    name, version = str(card["name"]), str(card["version"])
    quiet = logging.getLogger("highdicom")
    level = quiet.level
    with warnings.catch_warnings():
        # highdicom's warnings and log lines speak to a Python caller ("Reverting to encoding all
        # frames ..."); what matters to a user is checked above and said in our words
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            seg = hd.seg.Segmentation(
                source_images=source_images,
                pixel_array=stacked,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=hd.UID(),
                series_number=series_number,
                sop_instance_uid=hd.UID(),
                instance_number=1,
                manufacturer="LowResSeg",
                manufacturer_model_name=name[:64],
                software_versions=software_versions(card),
                device_serial_number="none",
                content_label="LOWRESSEG",
                content_description=("%s %s automatic segmentation" % (name, version))[:64],
                content_creator_name="LowResSeg^%s" % re.sub(r"[\^=\\]", "_", name)[:50],
            )
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError("a DICOM-SEG cannot be built on this source series (%s); export the labels as NIfTI "
                             "or .seg.nrrd instead" % str(exc).splitlines()[0][:200])
        finally:
            quiet.setLevel(level)
    seg.SeriesDescription = (series_description or "%s segmentation (AI)" % name)[:64]
    if sources.multiframe:
        for item in seg.PerFrameFunctionalGroupsSequence:
            for derivation in item.get("DerivationImageSequence", []):
                for source in derivation.get("SourceImageSequence", []):
                    source.ReferencedFrameNumber = sources.frames[int(source.ReferencedFrameNumber) - 1] + 1

    # encoded in memory first: the file is then written, read back and compared byte for byte (a full disk
    # gives one line naming the file, not pydicom's traceback of the tag it was writing)
    buffer = io.BytesIO()
    seg.save_as(buffer)
    write_bytes(out_path, buffer.getvalue(), overwrite, target)
    return out_path


# --------------------------------------------------------------------------- read


def _segment_values(seg, card):
    """{segment number: label value} from the card, our SegmentDescription tag, or the number."""
    by_name = {}
    if card is not None:
        for index, cls in _card_classes(card).items():
            by_name[str(cls["name"]).strip().lower()] = index
    values = {}
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        if str(item.get("SegmentDescription", "")).startswith(_EXTRA_TAG):
            continue  # not a class (e.g. where an ensemble's members disagree): no label value
        value = None
        label = str(item.get("SegmentLabel", "")).strip().lower()
        if card is not None:
            value = by_name.get(label)
        if value is None:
            m = _CLASS_RE.search(str(item.get("SegmentDescription", "")))
            if m:
                value = int(m.group(1))
        if value is None:
            value = number
        if not 1 <= value <= 255:
            raise ValueError("segment %d maps to label value %d, outside uint8" % (number, value))
        values[number] = value
    return values


def _masks_by_position(seg, datasets, numbers):
    """Fallback: place each stored frame on the source slice with the same position."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    out = np.zeros((len(datasets), rows, cols, len(numbers)), np.uint8)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    column = {n: c for c, n in enumerate(numbers)}
    frames = seg.pixel_array
    if frames.ndim == 2:
        frames = frames[None]
    shared = seg.get("SharedFunctionalGroupsSequence", [None])[0]
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        seg_id = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        number = int(seg_id[0].ReferencedSegmentNumber)
        pos_seq = item.get("PlanePositionSequence") or shared.PlanePositionSequence
        pos = np.array([float(v) for v in pos_seq[0].ImagePositionPatient])
        dist = np.linalg.norm(positions - pos, axis=1)
        k = int(np.argmin(dist))
        if dist[k] > _POSITION_TOL_MM:
            raise ValueError("SEG frame %d at %s lies on no source slice" % (f + 1, pos.tolist()))
        if frames.shape[1:] != (rows, cols):
            raise ValueError("SEG frames are %s, the source images %s" % (frames.shape[1:], (rows, cols)))
        if number in column:
            out[k, :, :, column[number]] |= (frames[f] > 0).astype(np.uint8)
    return out


def read_dicom_seg(path, source_files, card=None, source_frames=None):
    """Read a DICOM-SEG back to a uint8 (k, j, i) label array on the source series grid.

    ``source_files`` are the source series' files in k order. Frames the SEG left out
    (empty) are zero. Label values: by ``card`` class name when a card is given, else the
    ``"LowResSeg class <index>"`` tag :func:`write_dicom_seg` writes, else the segment
    number. Where segments overlap, the later segment wins. FRACTIONAL segments are
    thresholded at 0.5.
    """
    hd, pydicom = _import_dicom()
    sources = check_seg_sources(source_files, source_frames)
    datasets = sources.datasets
    seg = hd.seg.segread(os.fspath(path))
    if str(seg.get("Modality", "")) != "SEG":
        raise ValueError("%s is not a DICOM Segmentation (Modality %r)" % (path, seg.get("Modality")))
    src_for = str(datasets[0].FrameOfReferenceUID)
    if str(seg.get("FrameOfReferenceUID", "")) != src_for:
        raise ValueError("the SEG's frame of reference %s differs from the source series' %s"
                         % (seg.get("FrameOfReferenceUID"), src_for))
    values = _segment_values(seg, card)
    numbers = sorted(values)
    uids = [str(ds.SOPInstanceUID) for ds in datasets]
    if sources.multiframe:
        masks = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uids[0], source_frame_numbers=[f + 1 for f in sources.frames],
            segment_numbers=numbers, assert_missing_frames_are_empty=True, dtype=np.float32)
        masks = (masks >= 0.5).astype(np.uint8)
    else:
        try:
            masks = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=uids, segment_numbers=numbers,
                assert_missing_frames_are_empty=True, dtype=np.float32)
            masks = (masks >= 0.5).astype(np.uint8)
        except (KeyError, ValueError, AttributeError, RuntimeError):
            # e.g. a SEG that references its source by plane position only
            masks = _masks_by_position(seg, datasets, numbers)
    expected = sources.shape
    if masks.shape[:3] != expected:
        raise ValueError("SEG pixels %s do not match the source series %s" % (masks.shape[:3], expected))
    out = np.zeros(expected, np.uint8)
    for c, number in enumerate(numbers):
        out[masks[..., c] > 0] = values[number]
    return out


# --------------------------------------------------------------------------- validate


def run_dciodvfy(path, full_output=False):
    """Run ``dciodvfy`` (Debian dicom3tools) on ``path``; return ``(errors, warnings)``.

    Each is a list of the message lines (``Error - ...`` / ``Warning - ...``, prefix
    removed). With ``full_output=True`` the raw output is returned as a third element.
    Raises FileNotFoundError when dciodvfy is not installed.
    """
    exe = shutil.which("dciodvfy")
    if exe is None:
        raise FileNotFoundError("dciodvfy not found: install Debian's dicom3tools "
                                "(sudo apt-get install dicom3tools, or run scripts/setup.sh)")
    if not os.path.isfile(path):
        raise FileNotFoundError("no such DICOM file: %s" % path)
    proc = subprocess.run([exe, os.fspath(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          universal_newlines=True, timeout=300)
    output = proc.stdout or ""
    errors, warnings = [], []
    for line in output.splitlines():
        m = re.match(r"\s*(Error|Warning)\s+-\s*(.*)$", line)
        if m:
            (errors if m.group(1) == "Error" else warnings).append(m.group(2).strip())
    if proc.returncode not in (0, 1) and not (errors or warnings):
        raise RuntimeError("dciodvfy failed (exit %d) on %s: %s" % (proc.returncode, path, output.strip()))
    if full_output:
        return errors, warnings, output
    return errors, warnings


def _error_key(message):
    """A dciodvfy error without the parts that differ between two files (element paths, counts)."""
    return re.sub(r"\s+", " ", re.sub(r"\[[0-9]+\]|Sequence|<[^>]*>", "", message)).strip()


def seg_errors_by_origin(seg_path, source_path):
    """dciodvfy errors of a SEG split into (ours, inherited from the source file).

    An error is inherited when the source file has the same error: the SEG copies the patient and
    study attributes of its source, so a source with e.g. an over-long PatientID passes it on.
    """
    seg_errors, _ = run_dciodvfy(seg_path)
    source_keys = set(_error_key(e) for e in run_dciodvfy(source_path)[0])
    ours = [e for e in seg_errors if _error_key(e) not in source_keys]
    inherited = [e for e in seg_errors if _error_key(e) in source_keys]
    return ours, inherited


def labels_for_source_files(labels, affine, files):
    """``labels`` (k, j, i) of a volume with IJK->LPS ``affine``, put in the order of ``files``.

    A viewer (Slicer) holds the slices sorted its own way; a SEG needs one mask per source
    file. Each file's ImagePositionPatient must fall on a slice's first voxel (within 0.01 of
    a voxel), else the volume was resampled and no SEG can reference the files: refused.
    """
    hd, pydicom = _import_dicom()
    labels = np.asarray(labels)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    out = np.zeros((len(files),) + labels.shape[1:], labels.dtype)
    for n, path in enumerate(files):
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError("%s is a multi-frame file; export its SEG with `lowresseg segment --dicom-seg`" % path)
        if (int(ds.Rows), int(ds.Columns)) != labels.shape[1:]:
            raise ValueError("%s has %dx%d pixels but the volume's slices are %dx%d: the volume was resampled, so no "
                             "DICOM-SEG can reference these files" % ((path, ds.Rows, ds.Columns) + labels.shape[1:]))
        ijk = inv @ np.append([float(v) for v in ds.ImagePositionPatient], 1.0)
        k = int(round(ijk[2]))
        if np.abs(ijk[:2]).max() > 0.01 or abs(ijk[2] - k) > 0.01 or not 0 <= k < labels.shape[0]:
            raise ValueError("%s does not lie on a slice of the volume (voxel %s): the volume was resampled or "
                             "cropped, so no DICOM-SEG can reference these files" % (path, np.round(ijk[:3], 2)))
        out[n] = labels[k]
    return out

