"""Readers for on-disk training data: MSD task folders and plain images/+labels/ folders.

Project conventions (shared with the rest of LowResSeg):

* a volume is a numpy array in (k, j, i) axis order -- exactly what
  ``SimpleITK.GetArrayFromImage`` returns;
* its geometry is a 4x4 float64 ``affine`` mapping (i, j, k, 1) voxel indices to
  LPS millimetres (ITK physical space):
  ``affine[:3, :3] = direction @ diag(spacing)``, ``affine[:3, 3] = origin``.

Public API
----------
``Case``                                  -- NamedTuple(case_id, image, label, affine)
``iter_msd_cases(task_dir, modality, label, limit)``   -- lazy iterator of Case
``read_msd(...)``                         -- same, as a list
``msd_case_ids(task_dir, limit)``         -- case ids in dataset order
``msd_task_info(task_dir)``               -- parsed dataset.json (MsdTaskInfo)
``iter_folder_cases(root, limit, label, channel)`` / ``read_folder`` / ``folder_case_ids``
``make_label_mapper(spec)``               -- "wt", "tc", "et", "gt0", "eq:N", "in:1,2", "gt:N"
``image_affine(sitk_image)``              -- the IJK->LPS affine of a 3-D SimpleITK image

The ``iter_*`` functions validate their arguments (modality, label spec, folder
layout) eagerly, when called, and read volumes lazily, one case per ``next()``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

PathLike = Union[str, "os.PathLike[str]"]

#: File suffixes accepted as volumes (longest first, so ".nii.gz" wins over ".gz").
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Absolute tolerance (mm) when checking that an image and its label share an affine.
AFFINE_ATOL = 1e-3


class Case(NamedTuple):
    """One training volume: image + binary label on the same (k, j, i) grid."""

    case_id: str
    image: np.ndarray  # float32, (k, j, i)
    label: np.ndarray  # uint8 in {0, 1}, (k, j, i)
    affine: np.ndarray  # float64 4x4, (i, j, k, 1) -> LPS mm


class MsdTaskInfo(NamedTuple):
    """The parts of an MSD ``dataset.json`` that the readers use (all optional there)."""

    task_dir: Path
    name: str
    release: str  # "release", or the Prostate task's misspelt "relase"; "" if absent
    modalities: Dict[int, str]  # channel index -> name, e.g. {0: "FLAIR", 1: "T1w", ...}
    labels: Dict[int, str]  # label value -> name; may be empty
    training: List[Tuple[str, Path, Path]]  # (case_id, image path, label path)


# --------------------------------------------------------------------------- labels

_LABEL_SPECS_HELP = (
    "'wt' (whole tumour, label > 0), 'gt0' (same as wt), "
    "'tc' (BraTS-MSD tumour core, label in {2, 3}), 'et' (enhancing tumour, label == 3), "
    "'eq:N' (label == N), 'in:A,B,...' (label in {A, B, ...}), 'gt:N' (label > N)"
)


def _parse_ints(text: str, spec: str) -> List[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        values = []
    if not values:
        raise ValueError(
            "label spec %r: expected integer label value(s) after ':'; valid specs: %s"
            % (spec, _LABEL_SPECS_HELP)
        )
    return values


def make_label_mapper(spec: str) -> Callable[[np.ndarray], np.ndarray]:
    """Return a function mapping an integer label array to a uint8 {0, 1} array.

    Raises ValueError (listing the valid specs) for an unknown spec.
    """
    if not isinstance(spec, str):
        raise ValueError("label spec must be a string, got %r; valid specs: %s" % (spec, _LABEL_SPECS_HELP))
    key = spec.strip().lower()
    values = None  # type: Optional[List[int]]
    threshold = None  # type: Optional[int]
    if key in ("wt", "gt0"):
        threshold = 0
    elif key == "tc":
        values = [2, 3]
    elif key == "et":
        values = [3]
    elif key.startswith("eq:"):
        values = _parse_ints(key[3:], spec)
        if len(values) != 1:
            raise ValueError("label spec %r: 'eq:' takes one value; use 'in:A,B' for several" % spec)
    elif key.startswith("in:"):
        values = _parse_ints(key[3:], spec)
    elif key.startswith("gt:"):
        gt = _parse_ints(key[3:], spec)
        if len(gt) != 1:
            raise ValueError("label spec %r: 'gt:' takes one value" % spec)
        threshold = gt[0]
    else:
        raise ValueError("unknown label spec %r; valid specs: %s" % (spec, _LABEL_SPECS_HELP))

    if threshold is not None:
        thr = threshold

        def mapper(lab: np.ndarray) -> np.ndarray:
            return (_as_int_labels(lab) > thr).astype(np.uint8)

    else:
        vals = np.asarray(sorted(set(values or [])), dtype=np.int64)

        def mapper(lab: np.ndarray) -> np.ndarray:
            return np.isin(_as_int_labels(lab), vals).astype(np.uint8)

    return mapper


def _as_int_labels(lab: np.ndarray) -> np.ndarray:
    lab = np.asarray(lab)
    if np.issubdtype(lab.dtype, np.floating):
        # Some label files are stored as float; round so 2.9999 counts as 3.
        return np.rint(lab).astype(np.int64)
    return lab.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- geometry / IO


def _sitk():
    import SimpleITK as sitk  # local import: keeps `import LowResSegLib.training.sources` cheap

    return sitk


def image_affine(image) -> np.ndarray:
    """4x4 float64 affine (i, j, k, 1) -> LPS mm of a 3-D SimpleITK image."""
    if image.GetDimension() != 3:
        raise ValueError("image_affine needs a 3-D image, got %d-D" % image.GetDimension())
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    affine = np.eye(4, dtype=np.float64)
    affine[:3, :3] = direction @ np.diag(spacing)
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)
    return affine


def _read_image(path: Path):
    sitk = _sitk()
    if not path.is_file():
        raise FileNotFoundError("volume file not found: %s" % path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        raise ValueError("could not read %s with SimpleITK: %s" % (path, lines[-1] if lines else exc)) from exc


def _num_channels(image) -> int:
    """Channels of a volume: vector components, or the size of a 4th axis."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 4:
        return image.GetSize()[3]
    return 1


def _select_channel(image, channel: Optional[int], what: str):
    """Return the 3-D SimpleITK image of one channel, with correct 3-D geometry.

    MSD images are 4-D NIfTI with channels on the last (4th) axis; SimpleITK reads
    them as 4-D scalar images, from which ``Extract`` with a collapsed 4th axis
    gives the 3-D sub-image (3x3 direction sub-matrix, first 3 spacings/origin).
    ``channel=None`` requires a single-channel volume.
    """
    sitk = _sitk()
    n = _num_channels(image)
    if channel is None:
        if n != 1:
            raise ValueError(
                "%s has %d channels; choose one (modality=/channel= index 0..%d)" % (what, n, n - 1)
            )
        channel = 0
    if not 0 <= channel < n:
        raise ValueError("%s has %d channel(s); channel index %d is out of range" % (what, n, channel))

    if image.GetNumberOfComponentsPerPixel() > 1:
        image = sitk.VectorIndexSelectionCast(image, int(channel))
    dim = image.GetDimension()
    if dim == 4:
        size = list(image.GetSize())
        size[3] = 0  # collapse the channel axis
        image = sitk.Extract(
            image,
            size,
            [0, 0, 0, int(channel)],
            sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX,
        )
        dim = image.GetDimension()
    if dim != 3:
        raise ValueError("%s is %d-D; expected a 3-D volume (or 4-D with channels last)" % (what, dim))
    return image


def _load_pair(
    case_id: str,
    image_path: Path,
    label_path: Path,
    channel: Optional[int],
    mapper: Callable[[np.ndarray], np.ndarray],
) -> Case:
    sitk = _sitk()
    _check_files([(case_id, image_path, label_path)])
    img = _select_channel(_read_image(image_path), channel, "case %r image %s" % (case_id, image_path))
    lab = _select_channel(_read_image(label_path), None, "case %r label %s" % (case_id, label_path))

    if img.GetSize() != lab.GetSize():
        raise ValueError(
            "case %r: image and label grids differ: image %s has size (i, j, k) %s, label %s has %s"
            % (case_id, image_path.name, img.GetSize(), label_path.name, lab.GetSize())
        )
    affine = image_affine(img)
    lab_affine = image_affine(lab)
    if not np.allclose(affine, lab_affine, rtol=0.0, atol=AFFINE_ATOL):
        raise ValueError(
            "case %r: image and label geometry differ (max affine difference %.3g mm > %g); "
            "resample the label onto the image grid.\nimage affine:\n%s\nlabel affine:\n%s"
            % (case_id, float(np.max(np.abs(affine - lab_affine))), AFFINE_ATOL, affine, lab_affine)
        )
    image = sitk.GetArrayFromImage(img).astype(np.float32, copy=False)
    label = mapper(sitk.GetArrayFromImage(lab))
    return Case(case_id=case_id, image=np.ascontiguousarray(image), label=np.ascontiguousarray(label), affine=affine)


def _split_volume_name(name: str) -> Optional[Tuple[str, str]]:
    """('case', '.nii.gz') for 'case.nii.gz'; None if not a volume / a hidden or AppleDouble file."""
    if name.startswith("."):  # '._case.nii.gz' (macOS AppleDouble), '.DS_Store', ...
        return None
    lower = name.lower()
    for suffix in VOLUME_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], name[-len(suffix):]
    return None


def _list_volumes(directory: Path) -> List[Path]:
    return sorted(
        (p for p in directory.iterdir() if p.is_file() and _split_volume_name(p.name) is not None),
        key=lambda p: p.name,
    )


def _check_limit(limit: Optional[int]) -> Optional[int]:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0:
        raise ValueError("limit must be None or a non-negative integer, got %r" % (limit,))
    return int(limit)


# --------------------------------------------------------------------------- MSD


def _read_dataset_json(task_dir: Path) -> dict:
    path = task_dir / "dataset.json"
    if not task_dir.is_dir():
        raise FileNotFoundError("MSD task folder not found: %s" % task_dir)
    if not path.is_file():
        raise FileNotFoundError(
            "no dataset.json in %s: pass an MSD task folder (e.g. .../Task01_BrainTumour, holding "
            "dataset.json, imagesTr/, labelsTr/); for plain images/ + labels/ folders use "
            "iter_folder_cases()" % task_dir
        )
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            meta = json.load(fh)
    except ValueError as exc:
        raise ValueError("%s is not valid JSON: %s" % (path, exc)) from exc
    if not isinstance(meta, dict):
        raise ValueError("%s: expected a JSON object at top level, got %s" % (path, type(meta).__name__))
    return meta


def _int_keyed(mapping: object) -> Dict[int, str]:
    out = {}  # type: Dict[int, str]
    if isinstance(mapping, dict):
        for key, value in mapping.items():
            try:
                out[int(key)] = str(value)
            except (TypeError, ValueError):
                continue
    elif isinstance(mapping, list):  # some converted datasets store a list
        out = {i: str(v) for i, v in enumerate(mapping)}
    return dict(sorted(out.items()))


def _case_id_of(path_text: str) -> Optional[str]:
    split = _split_volume_name(os.path.basename(path_text.replace("\\", "/")))
    return split[0] if split else None


def msd_task_info(task_dir: PathLike) -> MsdTaskInfo:
    """Parse ``task_dir/dataset.json`` leniently (missing optional keys, 'relase' typo).

    Training pairs come from ``"training"`` (paths relative to task_dir); if that key is
    absent or empty, ``imagesTr/`` is listed and labels are ``labelsTr/<same name>``.
    AppleDouble ``._*`` files are ignored either way.
    """
    task = Path(task_dir).expanduser()
    meta = _read_dataset_json(task)
    release = meta.get("release", meta.get("relase", ""))

    training = []  # type: List[Tuple[str, Path, Path]]
    entries = meta.get("training")
    if isinstance(entries, list) and entries:
        for entry in entries:
            if not isinstance(entry, dict) or "image" not in entry:
                continue
            image_rel = str(entry["image"])
            case_id = _case_id_of(image_rel)
            if case_id is None:
                continue
            label_rel = entry.get("label")
            if label_rel is None:
                label_path = task / "labelsTr" / os.path.basename(image_rel)
            else:
                label_path = task / str(label_rel)
            training.append((case_id, task / image_rel, label_path))
    else:
        images_dir = task / "imagesTr"
        if not images_dir.is_dir():
            raise FileNotFoundError(
                "%s has no 'training' list and there is no imagesTr/ folder in %s" % (task / "dataset.json", task)
            )
        for image_path in _list_volumes(images_dir):
            case_id = _case_id_of(image_path.name)
            training.append((str(case_id), image_path, task / "labelsTr" / image_path.name))

    return MsdTaskInfo(
        task_dir=task,
        name=str(meta.get("name", task.name)),
        release=str(release),
        modalities=_int_keyed(meta.get("modality")),
        labels=_int_keyed(meta.get("labels")),
        training=training,
    )


def resolve_modality(info_or_modalities: Union[MsdTaskInfo, Dict[int, str]], modality: Union[str, int, None]) -> int:
    """Channel index for ``modality``: a name (case-insensitive), an int, or a digit string.

    ``None`` means channel 0 (for single-modality tasks).
    """
    modalities = (
        info_or_modalities.modalities if isinstance(info_or_modalities, MsdTaskInfo) else info_or_modalities
    )
    available = ", ".join("%d=%r" % (k, v) for k, v in modalities.items()) or "(dataset.json has no 'modality' map)"
    if modality is None:
        return 0
    if isinstance(modality, (int, np.integer)) and not isinstance(modality, bool):
        index = int(modality)
    elif isinstance(modality, str) and modality.strip().isdigit():
        index = int(modality.strip())
    elif isinstance(modality, str):
        wanted = modality.strip().lower()
        for key, name in modalities.items():
            if name.strip().lower() == wanted:
                return key
        raise ValueError(
            "unknown modality %r; available modalities: %s (pass a name or an integer channel index)"
            % (modality, available)
        )
    else:
        raise ValueError("modality must be a name or an integer index, got %r" % (modality,))
    if index < 0 or (modalities and index not in modalities):
        raise ValueError("modality index %d is not available; available modalities: %s" % (index, available))
    return index


def msd_case_ids(task_dir: PathLike, limit: Optional[int] = None) -> List[str]:
    """Training case ids of an MSD task, in dataset.json order (first ``limit`` only)."""
    limit = _check_limit(limit)
    ids = [case_id for case_id, _, _ in msd_task_info(task_dir).training]
    return ids if limit is None else ids[:limit]


def iter_msd_cases(
    task_dir: PathLike,
    modality: Union[str, int, None] = "FLAIR",
    label: str = "wt",
    limit: Optional[int] = None,
) -> Iterator[Case]:
    """Yield ``Case``s of an MSD task's training set, one volume pair read per step.

    ``modality`` picks the image channel by name (matched case-insensitively against
    dataset.json's "modality" values) or by integer index; ``label`` is a label spec
    (see ``make_label_mapper``). Argument errors are raised here, not on first ``next()``.
    """
    limit = _check_limit(limit)
    mapper = make_label_mapper(label)
    info = msd_task_info(task_dir)
    channel = resolve_modality(info, modality)
    if not info.training:
        raise ValueError(
            "MSD task %s has no training cases (empty 'training' list and no volumes in imagesTr/)"
            % info.task_dir
        )
    pairs = info.training if limit is None else info.training[:limit]
    _check_files(pairs)
    return _iter_pairs(pairs, channel, mapper)


def read_msd(
    task_dir: PathLike,
    modality: Union[str, int, None] = "FLAIR",
    label: str = "wt",
    limit: Optional[int] = None,
) -> List[Case]:
    """Eager ``iter_msd_cases``: all (or the first ``limit``) cases as a list."""
    return list(iter_msd_cases(task_dir, modality=modality, label=label, limit=limit))


def _check_files(pairs: Sequence[Tuple[str, Path, Path]]) -> None:
    """Fail before any reading if an image or label file is missing (cheap stat calls)."""
    for case_id, image_path, label_path in pairs:
        if not image_path.is_file():
            raise FileNotFoundError("case %r: image file not found: %s" % (case_id, image_path))
        if not label_path.is_file():
            raise FileNotFoundError(
                "case %r: label file not found: %s (every image needs a label with the same file name)"
                % (case_id, label_path)
            )


def _iter_pairs(
    pairs: Sequence[Tuple[str, Path, Path]],
    channel: Optional[int],
    mapper: Callable[[np.ndarray], np.ndarray],
) -> Iterator[Case]:
    for case_id, image_path, label_path in pairs:
        yield _load_pair(case_id, image_path, label_path, channel, mapper)


# --------------------------------------------------------------------------- plain folders


def _folder_pairs(root: PathLike) -> List[Tuple[str, Path, Path]]:
    root_path = Path(root).expanduser()
    images_dir = root_path / "images"
    labels_dir = root_path / "labels"
    if not images_dir.is_dir():
        raise FileNotFoundError(
            "no images/ folder in %s: expected %s/images/<case>.nii.gz and %s/labels/<case>.nii.gz"
            % (root_path, root_path, root_path)
        )
    images = _list_volumes(images_dir)
    if not images:
        raise ValueError(
            "%s holds no volumes (%s); put one file per case there, with a label of the same "
            "name in %s" % (images_dir, ", ".join(VOLUME_SUFFIXES), labels_dir)
        )
    pairs = []
    for image_path in images:
        case_id, _ = _split_volume_name(image_path.name)  # type: ignore[misc]
        label_path = labels_dir / image_path.name
        if not label_path.is_file() and labels_dir.is_dir():
            # Tolerate another volume format for the label (case.mha next to case.nii.gz).
            for suffix in VOLUME_SUFFIXES:
                alternative = labels_dir / (case_id + suffix)
                if alternative.is_file():
                    label_path = alternative
                    break
        pairs.append((case_id, image_path, label_path))
    return pairs


def folder_case_ids(root: PathLike, limit: Optional[int] = None) -> List[str]:
    """Case ids (image file names without suffix) under ``root/images``, sorted."""
    limit = _check_limit(limit)
    ids = [case_id for case_id, _, _ in _folder_pairs(root)]
    return ids if limit is None else ids[:limit]


def iter_folder_cases(
    root: PathLike,
    limit: Optional[int] = None,
    label: str = "wt",
    channel: Optional[int] = None,
) -> Iterator[Case]:
    """Yield ``Case``s from ``root/images/<name>`` + ``root/labels/<name>`` (sorted by name).

    Accepts .nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd. Foreground is ``label > 0`` by default
    (any label spec works). Images must be single-channel unless ``channel`` is given.
    A missing label raises FileNotFoundError naming the expected file, at call time.
    """
    limit = _check_limit(limit)
    mapper = make_label_mapper(label)
    pairs = _folder_pairs(root)
    if limit is not None:
        pairs = pairs[:limit]
    _check_files(pairs)
    return _iter_pairs(pairs, channel, mapper)


def read_folder(
    root: PathLike, limit: Optional[int] = None, label: str = "wt", channel: Optional[int] = None
) -> List[Case]:
    """Eager ``iter_folder_cases``."""
    return list(iter_folder_cases(root, limit=limit, label=label, channel=channel))


__all__ = [
    "AFFINE_ATOL",
    "Case",
    "MsdTaskInfo",
    "VOLUME_SUFFIXES",
    "folder_case_ids",
    "image_affine",
    "iter_folder_cases",
    "iter_msd_cases",
    "make_label_mapper",
    "msd_case_ids",
    "msd_task_info",
    "read_folder",
    "read_msd",
    "resolve_modality",
]
