"""The head mask and tissue mode as ``head-mode-ratio-v1`` computed them before the fast path (issue 22).

Kept verbatim as the reference that ``test_intensity_fast_path.py`` compares the shipped
(faster) implementation against: a 2 mm block mean, SimpleITK's discrete Gaussian, Otsu,
largest component, 3-D and per-slice hole filling, and a distance map on the 2 mm grid.
"""

import numpy as np

_WORK_MM, _SMOOTH_MM, _CORE_MM = 2.0, 2.0, 10.0


def _block_mean(v, factors):
    pads = [(0, (-n) % f) for n, f in zip(v.shape, factors)]
    if any(p for _, p in pads):
        v = np.pad(v, pads, mode="edge")
    k, j, i = v.shape
    fk, fj, fi = factors
    return v.reshape(k // fk, fk, j // fj, fj, i // fi, fi).mean(axis=(1, 3, 5), dtype=np.float32)


def reference_histogram_mode(values, bins=256):
    """The tissue mode written out on its own (not the product's ``histogram_mode``), so that a shifted mode in
    the product fails the comparison (issue 32): the centre of the fullest of ``bins`` equal bins between the 1st
    and 99th percentiles, after smoothing the counts with a Gaussian of 2 bins (13 taps, zero beyond the ends)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return 0.0
    lo, hi = np.percentile(values, [1.0, 99.0])
    if hi <= lo:
        return float(np.median(values))
    inside = values[(values >= lo) & (values <= hi)]
    which = np.minimum(((inside - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    taps = [np.exp(-0.5 * (d / 2.0) ** 2) for d in range(-6, 7)]
    total = sum(taps)
    smooth = np.zeros(bins)
    for b in range(bins):
        for d, w in zip(range(-6, 7), taps):
            if 0 <= b + d < bins:
                smooth[b] += counts[b + d] * w / total
    width = (hi - lo) / bins
    return float(lo + (int(np.argmax(smooth)) + 0.5) * width)


def reference_mask_and_scale(v, spacing_kji):
    """(mask on the full grid, tissue mode) for a non-negative volume, the old way."""
    import SimpleITK as sitk

    v = np.asarray(v, dtype=np.float32)
    spacing = [float(s) if s > 0 else 1.0 for s in spacing_kji]
    factors = tuple(max(1, int(round(_WORK_MM / s))) for s in spacing)
    small = _block_mean(v, factors)
    img = sitk.GetImageFromArray(small)
    img.SetSpacing([s * f for s, f in zip(spacing, factors)][::-1])
    smooth = sitk.DiscreteGaussian(img, _SMOOTH_MM ** 2, 16, 0.01, True)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.SetNumberOfHistogramBins(256)
    cc = sitk.RelabelComponent(sitk.ConnectedComponent(otsu.Execute(smooth)), sortByObjectSize=True)
    fg = sitk.BinaryFillhole(sitk.Cast(cc == 1, sitk.sitkUInt8), fullyConnected=False, foregroundValue=1)
    arr = sitk.GetArrayFromImage(fg)
    arr = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(s), False, 1)) for s in arr])
    fg = sitk.GetImageFromArray(arr)
    fg.CopyInformation(img)
    m_small = arr.astype(bool)
    if not m_small.any():
        return np.zeros(v.shape, bool), 0.0
    inside = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(fg, insideIsPositive=True, squaredDistance=False,
                                                                 useImageSpacing=True))
    tissue = m_small & (sitk.GetArrayFromImage(smooth) > otsu.GetThreshold())
    core = tissue & (inside > _CORE_MM)
    if core.sum() < 0.05 * m_small.sum():
        core = tissue if tissue.any() else m_small
    scale = reference_histogram_mode(small[core])
    mask = m_small
    for axis, f in enumerate(factors):
        if f > 1:
            mask = np.repeat(mask, f, axis=axis)
    return mask[:v.shape[0], :v.shape[1], :v.shape[2]], scale
