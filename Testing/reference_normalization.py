"""The head mask and tissue mode as ``head-mode-ratio-v1`` computed them before the fast path (issue 22).

Kept verbatim as the reference that ``test_intensity_fast_path.py`` compares the shipped
(faster) implementation against: a 2 mm block mean, SimpleITK's discrete Gaussian, Otsu,
largest component, 3-D and per-slice hole filling, and a distance map on the 2 mm grid.
"""

import numpy as np

from LowResSegLib.images.intensity import histogram_mode

_WORK_MM, _SMOOTH_MM, _CORE_MM = 2.0, 2.0, 10.0


def _block_mean(v, factors):
    pads = [(0, (-n) % f) for n, f in zip(v.shape, factors)]
    if any(p for _, p in pads):
        v = np.pad(v, pads, mode="edge")
    k, j, i = v.shape
    fk, fj, fi = factors
    return v.reshape(k // fk, fk, j // fj, fj, i // fi, fi).mean(axis=(1, 3, 5), dtype=np.float32)


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
    scale = histogram_mode(small[core])
    mask = m_small
    for axis, f in enumerate(factors):
        if f > 1:
            mask = np.repeat(mask, f, axis=axis)
    return mask[:v.shape[0], :v.shape[1], :v.shape[2]], scale
