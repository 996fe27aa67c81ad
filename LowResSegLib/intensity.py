"""Per-volume intensity normalisation, recorded by name in the model card.

MR intensities have no physical unit, so every volume is standardised the same way
in training and at inference: robust z-score over the non-zero (brain) voxels.
"""

import numpy as np

ZSCORE_NONZERO = "zscore-nonzero-p0.5-99.5-clip5"


def normalization_card() -> dict:
    return {
        "method": ZSCORE_NONZERO,
        "description": "clip to the 0.5-99.5 percentiles of the non-zero voxels, z-score over them, "
                       "clip to [-5, 5]; zero (background) voxels stay 0",
    }


def normalize_volume(volume: np.ndarray, method: str = ZSCORE_NONZERO) -> np.ndarray:
    """Return a float32 copy normalised with ``method`` (an all-zero volume stays zero)."""
    if method != ZSCORE_NONZERO:
        raise ValueError("unknown normalisation %r (this version knows %r)" % (method, ZSCORE_NONZERO))
    v = np.asarray(volume, dtype=np.float32)
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
