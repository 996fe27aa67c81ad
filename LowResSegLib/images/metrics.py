"""Overlap and surface metrics for binary segmentation masks (2-D or 3-D).

Masks may be bool or integer arrays; any non-zero voxel is foreground.
``spacing`` is a per-axis voxel size in mm, in the same axis order as the
array (default 1.0 on every axis).

HD95 follows the medpy definition (``medpy.metric.binary.hd95``): the 95th
percentile (numpy linear interpolation) of the *pooled* surface-to-surface
distances in both directions, pred->ref and ref->pred. A mask's surface is
the mask minus its binary erosion by ``generate_binary_structure(ndim, 1)``
(face connectivity; voxels on the array border count as surface), and
distances come from a Euclidean distance transform with ``sampling=spacing``.
This is *not* max(P95(pred->ref), P95(ref->pred)), which some toolkits use.

Empty-mask conventions follow the BraTS evaluation, so that scores are always
finite and averageable:

* both masks empty:    Dice 1, IoU 1, HD95 0 mm;
* exactly one empty:   Dice 0, IoU 0, HD95 = ``diagonal_mm(shape, spacing)``
  (the worst possible distance, e.g. 373.13 mm for 240x240x155 at 1 mm).

Only numpy is needed to import this module; SimpleITK (a runtime dependency) is imported by ``hd95``.
"""

import math
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["dice", "iou", "hd95", "volume_ml", "diagonal_mm"]


def _as_bool(mask, name: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim < 1:
        raise ValueError(f"{name} must be an array with at least one axis, got a scalar")
    return arr != 0 if arr.dtype != np.bool_ else arr


def _pair(pred, ref) -> Tuple[np.ndarray, np.ndarray]:
    p = _as_bool(pred, "pred")
    r = _as_bool(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref shapes differ: {p.shape} vs {r.shape}")
    return p, r


def _spacing(spacing: Optional[Sequence[float]], ndim: int) -> Tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(sp) != ndim:
        raise ValueError(
            f"spacing has {len(sp)} values but the mask has {ndim} axes; "
            "give one voxel size (mm) per array axis, in array order"
        )
    if not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing values must be positive and finite, got {sp}")
    return sp


def dice(pred, ref) -> float:
    p, r = _pair(pred, ref)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(r))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & r)) / total


def iou(pred, ref) -> float:
    p, r = _pair(pred, ref)
    union = int(np.count_nonzero(p | r))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & r)) / union


def diagonal_mm(shape: Sequence[int], spacing: Optional[Sequence[float]] = None) -> float:
    """Largest distance possible inside the volume: the HD95 penalty for a missed/spurious mask."""
    shape = tuple(int(n) for n in shape)
    sp = _spacing(spacing, len(shape))
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def volume_ml(mask, spacing: Optional[Sequence[float]] = None) -> float:
    m = _as_bool(mask, "mask")
    sp = _spacing(spacing, m.ndim)
    return int(np.count_nonzero(m)) * float(np.prod(sp)) / 1000.0


def hd95(pred, ref, spacing: Optional[Sequence[float]] = None) -> float:
    """95th-percentile symmetric Hausdorff distance in mm (medpy definition, see module doc)."""
    p, r = _pair(pred, ref)
    sp = _spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if not (p_any and r_any):
        return diagonal_mm(p.shape, sp)

    import SimpleITK as sitk

    # Crop to the union's bounding box: all surface voxels lie inside it, and
    # because the box is tight, erosion with a zero border marks the same
    # voxels as surface, so the result is identical to the full-volume one.
    idx = np.nonzero(p | r)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    p, r = p[box], r[box]

    def image(mask):
        img = sitk.GetImageFromArray(np.pad(mask, 1).astype(np.uint8))  # pad: erosion sees a zero border
        img.SetSpacing([float(s) for s in sp[::-1]])
        return img

    def surface(img):  # the voxels that a face-connected erosion removes
        return img - sitk.BinaryErode(img, [1] * p.ndim, sitk.sitkCross, 0, 1)

    def distance_to(surf):  # exact Euclidean distance (mm) to the nearest voxel of ``surf``
        return sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(surf, insideIsPositive=False,
                                                                   squaredDistance=False, useImageSpacing=True))

    p_surf, r_surf = surface(image(p)), surface(image(r))
    ps, rs = sitk.GetArrayFromImage(p_surf).astype(bool), sitk.GetArrayFromImage(r_surf).astype(bool)
    d_pr = np.maximum(distance_to(r_surf), 0.0)[ps]
    d_rp = np.maximum(distance_to(p_surf), 0.0)[rs]
    return float(np.percentile(np.concatenate((d_pr, d_rp)), 95))
