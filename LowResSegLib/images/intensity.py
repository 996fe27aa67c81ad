"""Per-volume intensity normalisation, recorded by name in the model card.

MR intensities have no physical unit, so every volume is standardised the same way
in training and at inference (both call :func:`normalize_volume`).

``head-mode-ratio-v2`` (the current method) and ``head-mode-ratio-v1`` assume nothing about pre-processing:

* the **head mask** comes from an Otsu threshold of a smoothed copy (largest
  component, holes filled), so a noisy scanner background, skull and scalp are
  handled like the exact zeros of a skull-stripped volume;
* the intensity scale is the **mode** of the tissue histogram: voxels of the bright
  Otsu class (not noise, CSF or bone) more than 10 mm inside the head,
  which is normal-appearing parenchyma on FLAIR. A large or bright tumour moves a
  mean and an SD, not the mode;
* output = intensity / mode inside the head (normal tissue ≈ 1), clipped to
  [0, 5], and exactly 0 outside, like the zero padding of the square FOV.

v2 finds the mask and the mode on a ~4 mm grid instead of v1's ~2 mm (issue 22 measured the mask
and mode at 34 instead of 89 ms on a 240×240×155 volume); the model input moves a little, so v2
models are trained with v2, and v1 cards keep running with v1 (the card names its method).

``zscore-nonzero-p0.5-99.5-clip5`` (models exported before it) is kept so that
their cards still run; it takes statistics over the non-zero voxels.
"""

from functools import lru_cache

import numpy as np

from LowResSegLib.images import slabs

ZSCORE_NONZERO = "zscore-nonzero-p0.5-99.5-clip5"
HEAD_MODE_RATIO = "head-mode-ratio-v1"
HEAD_MODE_RATIO_V2 = "head-mode-ratio-v2"
METHODS = (HEAD_MODE_RATIO_V2, HEAD_MODE_RATIO, ZSCORE_NONZERO)
DEFAULT_METHOD = HEAD_MODE_RATIO_V2

# the mask and the mode are found on a grid of about this voxel size, per method
_WORK_MM = {HEAD_MODE_RATIO: 2.0, HEAD_MODE_RATIO_V2: 4.0}
_SMOOTH_MM = 2.0
_CORE_MM = 10.0  # the mode is taken this far inside the head mask (past scalp and most of the skull)
_CLIP = 5.0

_DESCRIPTIONS = {
    HEAD_MODE_RATIO: "head mask = largest component of Otsu(Gaussian-smoothed volume, sigma 2 mm), holes filled "
                     "(2-D per slice and 3-D), found on a ~2 mm grid; scale = histogram mode of the voxels above the "
                     "Otsu threshold more than 10 mm inside the mask; output = intensity / mode clipped to [0, 5] inside the mask, "
                     "0 outside (negative inputs are first shifted so that the minimum is 0)",
    HEAD_MODE_RATIO_V2: "as head-mode-ratio-v1, but the mask and the mode are found on a ~4 mm grid: head mask = "
                        "largest component of Otsu(Gaussian-smoothed volume, sigma 2 mm), holes filled (2-D per slice "
                        "and 3-D), found on a ~4 mm grid; scale = histogram mode of the voxels above the Otsu threshold "
                        "more than 10 mm inside the mask; output = intensity / mode clipped to [0, 5] inside the mask, "
                        "0 outside (negative inputs are first shifted so that the minimum is 0)",
    ZSCORE_NONZERO: "clip to the 0.5-99.5 percentiles of the non-zero voxels, z-score over them, "
                    "clip to [-5, 5]; zero (background) voxels stay 0",
}


def normalization_card(method=DEFAULT_METHOD) -> dict:
    """The card entry that tells inference which normalisation a model was trained with."""
    _check_method(method)
    return {"method": method, "description": _DESCRIPTIONS[method]}


def _check_method(method):
    if method not in METHODS:
        raise ValueError("unknown normalisation %r: this version of LowResSeg knows %s; update LowResSeg "
                         "or use a model exported for this version" % (method, ", ".join(METHODS)))


def normalize_volume(volume, method=DEFAULT_METHOD, spacing_kji=(1.0, 1.0, 1.0)):
    """Return a float32 copy of a (k, j, i) volume normalised with ``method``."""
    _check_method(method)
    v = np.asarray(volume, dtype=np.float32)
    if method == ZSCORE_NONZERO:
        return _zscore_nonzero(v)
    if v.size == 0:
        return np.zeros(v.shape, np.float32)
    lo = float(v.min())
    if lo < 0:
        v = v - lo
    m_small, factors, scale, box = _mask_scale_and_box(v, spacing_kji, _WORK_MM[method])
    out = np.zeros(v.shape, np.float32)
    if scale <= 0:  # a constant volume, or one with nothing to find
        return out
    # 0 outside the head: only the head's box is scaled
    full = tuple(slice(b.start * f, min(b.stop * f, n)) for b, f, n in zip(box, factors, v.shape))
    gain = m_small[box].astype(np.float32) * np.float32(1.0 / scale)
    out[full] = _scaled_in_blocks(v[full], gain, factors, _CLIP)
    return out


def _scaled_in_blocks(v, gain_small, factors, clip):
    """``min(v * gain, clip)`` with ``gain_small`` repeated over its blocks, in one pass per slab of slices
    (no full-size mask is made); the slabs run side by side (:mod:`LowResSegLib.images.slabs`)."""
    out = np.empty(v.shape, np.float32)
    f0 = factors[0]

    def work(a, b):
        part = out[a:b]
        _scaled_slab(v[a:b], gain_small[a // f0:-(-b // f0)], factors, part)
        np.minimum(part, clip, out=part)

    slabs.run(work, v.shape[0], slabs.voxels_per_slice(v.shape), align=f0)
    return out


def _scaled_slab(v, gain_small, factors, out):
    """``out = v * gain_small`` repeated over its blocks (``v`` starts at a block boundary)."""
    whole = [n // f for n, f in zip(v.shape, factors)]
    core = tuple(slice(0, w * f) for w, f in zip(whole, factors))
    # repeated along the last (contiguous) axis only, broadcast over the other two: fastest measured
    gain_rows = np.repeat(gain_small[:whole[0], :whole[1], :whole[2]], factors[2], axis=2)
    shape5 = (whole[0], factors[0], whole[1], factors[1], whole[2] * factors[2])
    target = out[core]
    if target.flags.c_contiguous:
        np.multiply(v[core].reshape(shape5), gain_rows[:, None, :, None, :], out=target.reshape(shape5))
    else:  # a short block in j or i: the view cannot be reshaped in place
        out[core] = (v[core].reshape(shape5) * gain_rows[:, None, :, None, :]).reshape(target.shape)
    for axis in range(3):  # the short last block along an axis, if any
        if whole[axis] * factors[axis] < v.shape[axis]:
            rest = [slice(None)] * 3
            rest[axis] = slice(whole[axis] * factors[axis], None)
            rest = tuple(rest)
            last = [slice(None)] * 3
            last[axis] = slice(whole[axis], whole[axis] + 1)
            slab_factors = tuple(1 if a == axis else f for a, f in enumerate(factors))
            out[rest] = v[rest] * _upsampled(gain_small[tuple(last)], slab_factors, v[rest].shape)


def _zscore_nonzero(v):
    mask = v != 0
    out = np.zeros(v.shape, np.float32)
    if not mask.any():
        return out
    vals = v[mask]
    lo, hi = np.percentile(vals, [0.5, 99.5])
    vals = np.clip(vals, lo, hi)
    sd = float(vals.std())
    out[mask] = np.clip((vals - float(vals.mean())) / (sd if sd > 1e-6 else 1.0), -5.0, 5.0)
    return out


def _block_sum_axis(v, f, axis):
    """Sums of ``f`` (>= 2) neighbours along ``axis``; a short last block is padded with its edge value."""
    n = v.shape[axis]
    q, r = divmod(n, f)

    def part(arr, a, b, step=None):
        idx = [slice(None)] * arr.ndim
        idx[axis] = slice(a, b, step)
        return arr[tuple(idx)]

    shape = list(v.shape)
    shape[axis] = q + (1 if r else 0)
    out = np.empty(shape, np.float32)
    body = part(out, 0, q)
    np.add(part(v, 0, q * f, f), part(v, 1, q * f, f), out=body, dtype=np.float32)
    for t in range(2, f):
        body += part(v, t, q * f, f)
    if r:
        part(out, q, q + 1)[...] = part(v, q * f, n).sum(axis=axis, keepdims=True, dtype=np.float32) + \
            (f - r) * part(v, n - 1, n)
    return out


def _block_mean(v, factors):
    """Mean over ``factors`` blocks (edge blocks padded by replication), slabs of slices side by side.

    One strided sum per axis: a 6-D ``reshape(...).mean`` was ~6x slower on a 240x240x155 volume.
    """
    f0 = factors[0]
    out = np.empty(tuple(-(-n // f) for n, f in zip(v.shape, factors)), np.float32)

    def work(a, b):
        part = v[a:b]
        for axis, f in enumerate(factors):
            if f > 1:
                part = _block_sum_axis(part, f, axis)
        np.multiply(part, np.float32(1.0 / np.prod(factors)), out=out[a // f0:-(-b // f0)])

    slabs.run(work, v.shape[0], slabs.voxels_per_slice(v.shape), align=f0)
    return out


def head_mask(volume, spacing_kji=(1.0, 1.0, 1.0), method=DEFAULT_METHOD):
    """Boolean head (or brain, for a skull-stripped volume) mask on the volume's grid."""
    v = np.asarray(volume, dtype=np.float32)
    small, factors, scale = _mask_and_scale_on_work_grid(v - min(0.0, float(v.min())), spacing_kji, method)
    return _upsampled(small, factors, v.shape)


def head_mask_and_scale(v, spacing_kji, method=DEFAULT_METHOD):
    """(mask on the full grid, tissue mode) for a non-negative volume."""
    small, factors, scale = _mask_and_scale_on_work_grid(np.asarray(v, np.float32), spacing_kji, method)
    return _upsampled(small, factors, np.shape(v)), scale


def _work_factors(spacing_kji, mm):
    spacing = [float(s) if s > 0 else 1.0 for s in spacing_kji]
    return spacing, tuple(max(1, int(round(mm / s))) for s in spacing)


def _upsampled(mask_small, factors, shape):
    mask = mask_small
    for axis, f in enumerate(factors):
        if f > 1:
            mask = np.repeat(mask, f, axis=axis)
    return mask[:shape[0], :shape[1], :shape[2]]


def _mask_and_scale_on_work_grid(v, spacing_kji, method=DEFAULT_METHOD):
    """(mask on the method's work grid, block factors, tissue mode) of a non-negative volume."""
    _check_method(method)
    m_small, factors, scale, _ = _mask_scale_and_box(v, spacing_kji, _WORK_MM[method])
    return m_small, factors, scale


def _mask_scale_and_box(v, spacing_kji, work_mm_target):
    """(mask on the ~``work_mm_target`` mm work grid, block factors, tissue mode, the mask's box there as slices or None).

    Every step runs on the work grid, and the costly ones are done the cheap way with the same
    result (Testing/test_intensity_fast_path.py holds them to the original SimpleITK pipeline):
    the Gaussian is ITK's discrete kernel applied in numpy, Otsu is computed from a numpy
    histogram, the 3-D hole fill is implied by the per-slice one, and the 10 mm core comes from
    a dilated contour on a grid twice as coarse (the voxels of a distance map there). The steps
    after Otsu see only the box around the voxels above it (see :func:`_box_around`).
    """
    spacing, factors = _work_factors(spacing_kji, work_mm_target)
    small = _block_mean(v, factors)
    if float(small.max()) <= float(small.min()):  # a constant volume: no head to find
        return np.zeros(small.shape, bool), factors, 0.0, None
    work_mm = [s * f for s, f in zip(spacing, factors)]
    smooth = _discrete_gaussian(small, [_SMOOTH_MM ** 2 / (s * s) for s in work_mm])
    threshold = otsu_threshold(smooth)
    above = smooth > threshold
    box = _box_around(above)
    m_small = np.zeros(small.shape, bool)
    if box is None:
        return m_small, factors, 0.0, None
    bright = above[box]
    fg = _hull_where_the_fill_failed(_fill_slice_holes(_largest_component(_closed_at_the_edges(bright))))
    mask = fg.view(bool)
    if not mask.any():
        return m_small, factors, 0.0, None
    m_small[box] = mask
    # tissue = the bright Otsu class: parenchyma, not noise, CSF or bone (which the filled mask holds)
    tissue = mask & bright
    core = tissue & _deep_inside(mask, work_mm, _CORE_MM, small.shape)
    if np.count_nonzero(core) < 0.05 * np.count_nonzero(mask):  # a thin slab or a small FOV: all the tissue
        core = tissue if tissue.any() else mask
    return m_small, factors, histogram_mode(small[box][core]), box


def _box_around(mask, margin=2, align=2):
    """Slices of the box around ``mask``'s voxels, widened by ``margin`` and out to multiples of ``align``
    (or to the array's edges); None when the mask is empty.

    The mask steps give the same voxels on this box as on the whole grid: every component lies in it;
    where it stops short of an edge, its last ``margin`` rows are background, as the outside is, so edges,
    contours and hole fills are those of the whole grid; and its start on a multiple of ``align`` keeps
    the 2x coarser grid of :func:`_deep_inside` on the same blocks.
    """
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if not len(hit):
            return None
        n = mask.shape[axis]
        lo = max(0, (int(hit[0]) - margin) // align * align)
        hi = int(hit[-1]) + 1 + margin
        hi = n if hi >= n else min(n, -(-hi // align) * align)
        box.append(slice(lo, hi))
    return tuple(box)


@lru_cache(maxsize=32)
def _gaussian_kernel(variance, max_error=0.01, max_width=16):
    """ITK's ``GaussianOperator`` coefficients (e^-t I_n(t), cut where they hold 1 - max_error, normalised)."""
    from math import exp, factorial

    def bessel_i(n, t):  # modified Bessel function of the first kind, by its series
        return sum((t / 2.0) ** (2 * m + n) / (factorial(m) * factorial(m + n)) for m in range(40))

    et = exp(-variance)
    coeff = [et * bessel_i(0, variance), et * bessel_i(1, variance)]
    total = coeff[0] + 2 * coeff[1]
    n = 2
    while total < 1.0 - max_error:
        coeff.append(et * bessel_i(n, variance))
        total += 2 * coeff[n]
        if coeff[n] < total * np.finfo(float).eps or len(coeff) > max_width:
            break
        n += 1
    c = np.array(coeff)
    c /= c[0] + 2 * c[1:].sum()
    kernel = np.concatenate([c[:0:-1], c])
    kernel.setflags(write=False)  # cached: shared by every call
    return kernel


def _discrete_gaussian(a, variances):
    """Separable discrete Gaussian (variance per axis in voxels²), edges replicated: SimpleITK's
    ``DiscreteGaussian(img, var, 16, 0.01, useImageSpacing=True)``, about 3x faster in numpy.

    Each axis is filtered in slabs cut across another axis, side by side (:mod:`LowResSegLib.images.slabs`).
    """
    a = np.asarray(a, np.float32)
    for axis, var in enumerate(variances):
        kernel = _gaussian_kernel(var).astype(np.float32)
        if axis == a.ndim - 1:  # along the contiguous axis shifted views are slow: one banded matrix product
            n = a.shape[-1]
            a = np.dot(np.ascontiguousarray(a).reshape(-1, n), _replicated_band(n, var).T).reshape(a.shape)
            continue
        out = np.empty_like(a)
        cut = 1 if axis == 0 else 0  # (the last axis took the branch above, so a has a second axis here)

        def work(start, stop, src=a, dst=out, axis=axis, kernel=kernel, cut=cut):
            idx = [slice(None)] * src.ndim
            idx[cut] = slice(start, stop)
            _gaussian_along(src[tuple(idx)], kernel, axis, dst[tuple(idx)])

        slabs.run(work, a.shape[cut], a.size // max(1, a.shape[cut]))
        a = out
    return a


@lru_cache(maxsize=32)
def _replicated_band(n, variance):
    """``[n, n]`` matrix (rows: outputs) of the Gaussian kernel of ``variance``, edges replicated."""
    kernel = _gaussian_kernel(variance).astype(np.float32)
    r = len(kernel) // 2
    m = np.zeros((n, n), np.float32)
    rows = np.arange(n)
    for d in range(-r, r + 1):
        np.add.at(m, (rows, np.clip(rows + d, 0, n - 1)), kernel[r + d])
    m.setflags(write=False)  # cached: shared by every call
    return m


def _gaussian_along(a, kernel, axis, out):
    """``out`` = ``a`` convolved with the symmetric ``kernel`` along ``axis``, edges replicated."""
    r = len(kernel) // 2
    n = a.shape[axis]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode="edge")

    def shifted(d):
        idx = [slice(None)] * a.ndim
        idx[axis] = slice(r + d, r + d + n)
        return padded[tuple(idx)]

    np.multiply(shifted(0), kernel[r], out=out)
    pair = np.empty_like(out)
    for d in range(1, r + 1):  # symmetric taps: one multiplication per pair
        np.add(shifted(-d), shifted(d), out=pair)
        pair *= kernel[r + d]
        out += pair


def otsu_threshold(a, bins=256):
    """Otsu's threshold of ``a`` from a ``bins`` histogram over its range (the upper edge of the last lower bin)."""
    a = np.asarray(a, np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return lo
    width = (hi - lo) / bins
    edges = lo + width * np.arange(bins + 1)
    index = ((a - np.float32(lo)) * np.float32(1.0 / width)).astype(np.intp).ravel()
    counts = np.bincount(np.minimum(index, bins - 1, out=index), minlength=bins)  # np.histogram, 2-3x faster
    p = counts / float(counts.sum())
    centres = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _largest_component(fg):
    """The largest face-connected component of a boolean array, as uint8."""
    import SimpleITK as sitk

    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(fg.astype(np.uint8)), False))
    n = int(cc.max())
    if n <= 1:  # none, or one: no count needed
        return cc.astype(np.uint8)
    counts = np.bincount(cc.ravel(), minlength=n + 1)
    counts[0] = 0
    return (cc == int(np.argmax(counts))).astype(np.uint8)


def _deep_inside(mask, spacing, depth_mm, grid_shape=None):
    """Voxels of ``mask`` more than ``depth_mm`` inside it, found on a grid twice as coarse.

    "Inside by more than d" is the voxel set of SimpleITK's ``SignedMaurerDistanceMap(...) > d``
    (tested): no voxel of the mask's contour (a mask voxel with a background voxel among its 26
    neighbours) lies within d mm. That is the contour dilated by a ball: a few dozen shifted ORs
    on the coarse grid, cheaper than the distance map.
    """
    # coarse voxels at most half the depth (with slack for spacings like 2.5000000000000004 mm)
    # (grid_shape: the whole grid's, when ``mask`` is a box cut from it, so that the coarse grid is the same)
    factors = tuple(2 if n >= 8 and s * 2 <= depth_mm / 2 + 1e-6 else 1
                    for n, s in zip(grid_shape or mask.shape, spacing))
    coarse = _block_mean(mask.astype(np.float32), factors) >= 0.5
    step = [s * f for s, f in zip(spacing, factors)]
    near = _dilated_by_ball(_contour(coarse), step, depth_mm)
    return _upsampled(coarse & ~near, factors, mask.shape) & mask


def _dilated_by_ball(mask, step, radius):
    """``mask`` (k, j, i) dilated by the voxels within ``radius`` mm (spacing ``step``, k-j-i).

    The ball is cut into rows along i: each (dk, dj) takes the mask grown along i by its row's
    half-width, shifted by (dk, dj).
    """
    reach_k, reach_j = (int(np.floor(radius / s)) for s in step[:2])
    rows = {}
    for dk in range(-reach_k, reach_k + 1):
        for dj in range(-reach_j, reach_j + 1):
            left = radius ** 2 - (dk * step[0]) ** 2 - (dj * step[1]) ** 2
            if left >= 0:
                rows[(dk, dj)] = int(np.floor(np.sqrt(left) / step[2] + 1e-9))
    grown = [mask]  # grown[w]: mask grown by w voxels along i
    for w in range(1, max(rows.values()) + 1):
        g = grown[-1].copy()
        _or_shifted(g, mask, (0, 0, w))
        _or_shifted(g, mask, (0, 0, -w))
        grown.append(g)
    out = grown[rows[(0, 0)]].copy()
    for (dk, dj), w in rows.items():
        if dk or dj:
            _or_shifted(out, grown[w], (dk, dj, 0))
    return out


def _contour(mask):
    """Voxels of a boolean ``mask`` with a background voxel among their 26 neighbours in the image."""
    background = ~mask
    for axis in range(mask.ndim):  # the 3x3x3 neighbourhood is a cube: grow one axis at a time
        grown = background.copy()
        for off in (-1, 1):
            shift = [0] * mask.ndim
            shift[axis] = off
            _or_shifted(grown, background, shift)
        background = grown
    return mask & background


def _or_shifted(dst, src, offset):
    """``dst[x] |= src[x + offset]`` wherever ``x + offset`` is inside the array."""
    to, frm = [], []
    for o, n in zip(offset, src.shape):
        if abs(o) >= n:  # shifted out of the array
            return
        to.append(slice(max(0, -o), n - max(0, o)))
        frm.append(slice(max(0, o), n + min(0, o)))
    dst[tuple(to)] |= src[tuple(frm)]


def _fill_slice_holes(arr):
    """Every axial slice of a (k, j, i) 0/1 array with its 2-D holes filled, in one SimpleITK call.

    The slices are laid side by side in one 2-D image with a row and a column of background
    between them, so each slice's outside reaches the image border as it would alone; the
    background components other than that outside are the holes. The result is that of one
    ``BinaryFillhole`` per slice, and it holds the 3-D fill too (a cavity closed in 3-D is
    closed in every slice through it).
    """
    import SimpleITK as sitk

    k, j, i = arr.shape
    if k == 0:
        return arr
    cols = int(np.ceil(np.sqrt(k)))
    rows = -(-k // cols)
    tiles = [(slice(1 + r * (j + 1), 1 + r * (j + 1) + j), slice(1 + c * (i + 1), 1 + c * (i + 1) + i))
             for r, c in (divmod(n, cols) for n in range(k))]
    background = np.ones((rows * (j + 1) + 1, cols * (i + 1) + 1), np.uint8)
    for n, tile in enumerate(tiles):
        background[tile] = arr[n] == 0
    cc = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(background), False))
    filled = cc != cc[0, 0]
    return np.stack([filled[tile] for tile in tiles]).astype(arr.dtype, copy=False)


def _closed_at_the_edges(arr):
    """Each slice with its mask joined along every image edge between the first and last pixel it touches.

    A head wider than the field of view (common on clinical FLAIR) has its scalp ring cut open where
    it leaves the image; the brain inside then reaches the border and no hole fill would close it.
    Joining the ring along the edge it was cut at closes it again; a head that touches an edge in
    one stretch, or not at all, is unchanged.
    """
    out = arr.copy()
    for edge in (out[:, 0, :], out[:, -1, :], out[:, :, 0], out[:, :, -1]):  # views into out: (k, n) each
        touched = edge != 0
        any_ = touched.any(axis=1)
        if not any_.any():
            continue
        n = touched.shape[1]
        first = np.argmax(touched, axis=1)
        last = n - 1 - np.argmax(touched[:, ::-1], axis=1)
        idx = np.arange(n)
        between = any_[:, None] & (idx[None, :] >= first[:, None]) & (idx[None, :] <= last[:, None])
        edge[between] = 1
    return out


def _hull_where_the_fill_failed(mask, ring=0.5):
    """Slices whose filled mask is still a ring (less than ``ring`` of its convex hull) take the hull.

    On some clinical FLAIRs the scalp is much brighter than the brain, the brain falls below the
    Otsu threshold, and a gap in the scalp ring (or a ring cut by the field of view) lets the hole
    fill leak out: the mask would be the scalp alone, and brain and tumour would be zeroed. A head is
    close to convex in axial slices, so its hull is then the better mask. Slices whose fill worked
    (about 0.8-1 of their hull, even with nose and ears) are unchanged.
    """
    out = mask
    m = mask != 0
    area = m.sum(axis=(1, 2))
    # a cheap bound on every slice at once: the hull holds each row's span from its first to its last pixel
    n = m.shape[2]
    first = np.argmax(m, axis=2)
    last = n - 1 - np.argmax(m[:, :, ::-1], axis=2)
    spans = np.where(m.any(axis=2), last - first + 1, 0).sum(axis=1)
    for k in np.nonzero((area >= 16) & (area < ring * spans))[0]:
        jj, ii = np.nonzero(m[k])
        hull = _convex_hull_mask(jj, ii, mask.shape[1:])
        if area[k] < ring * np.count_nonzero(hull):
            if out is mask:
                out = mask.copy()
            out[k] = hull.astype(mask.dtype)
    return out


def _convex_hull_mask(jj, ii, shape):
    """The pixels of ``shape`` inside the convex hull of the points (jj, ii) (monotone chain).

    Only each row's leftmost and rightmost point can be a hull vertex, so only those are walked.
    """
    rows = np.unique(jj)
    left = np.full(shape[0], shape[1], np.int64)
    right = np.full(shape[0], -1, np.int64)
    np.minimum.at(left, jj, ii)
    np.maximum.at(right, jj, ii)
    pts = sorted(set(zip(rows.tolist(), left[rows].tolist())) | set(zip(rows.tolist(), right[rows].tolist())))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = lower[:-1] + upper[:-1]  # counter-clockwise in (j, i)
    gj, gi = np.mgrid[:shape[0], :shape[1]]
    inside = np.ones(shape, bool)
    for (aj, ai), (bj, bi) in zip(hull, hull[1:] + hull[:1]):
        inside &= (bj - aj) * (gi - ai) - (bi - ai) * (gj - aj) >= 0
    return inside


def histogram_mode(values, bins=256):
    """Peak of a lightly smoothed histogram between the 1st and 99th percentiles."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 0.0
    lo, hi = np.percentile(values, [1.0, 99.0])
    if hi <= lo:
        return float(np.median(values))
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    counts = np.convolve(counts, kernel / kernel.sum(), mode="same")
    b = int(np.argmax(counts))
    return float(0.5 * (edges[b] + edges[b + 1]))
