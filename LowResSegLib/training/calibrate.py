"""Volume calibration: the probability threshold that gets a model's tumour volumes right.

Why: radiologists follow gliomas by volume, and a model can overlap a tumour well (Dice 0.8-0.9) while
calling 20-30 % too much of it. The threshold is chosen on the training side's validation split (the
run's own ``--val-fraction`` cases, never ``lgg:val`` or ``real:val``), as the one whose median signed
volume error over the split's tumour cases is closest to 0 (ties: the one nearest 0.5), and written
into the model card (``calibration``), where inference reads it (``modelstore.card_threshold``).

Volumes are compared at the model's output size R on the cached slices: a case's predicted volume
is its voxels above the threshold, its true volume the sum of its label area-resampled to R.
"""

import numpy as np
import torch

from LowResSegLib.training.cache import default_cache_dir
from LowResSegLib.training.slices import SliceCache, make_batch

METHOD = "median-volume-v1"
GRID = tuple(np.round(np.arange(0.10, 0.91, 0.01), 2))

__all__ = ["METHOD", "GRID", "case_volumes", "choose_threshold", "calibrate_run"]


@torch.no_grad()
def case_volumes(model, cache, thresholds=GRID, batch_size=64):
    """{case id: (true volume, [predicted volume per threshold])} in pixels at R, for every case with a tumour."""
    model.eval()
    r = model.config["input_size"]
    scales = model.scales()
    out = {}
    for c, case_id in enumerate(cache.case_ids):
        n = len(cache.images[c])
        truth, pred = 0.0, np.zeros(len(thresholds))
        for start in range(0, n, batch_size):
            rows = [(c, k, 0) for k in range(start, min(n, start + batch_size))]
            x, ys = make_batch(cache, rows, r, scales)
            prob = np.sort(torch.sigmoid(model(torch.from_numpy(x))[-1]).numpy().ravel().astype(np.float64))
            truth += float(ys[-1].sum())
            pred += len(prob) - np.searchsorted(prob, thresholds, side="right")  # voxels above each threshold
        if truth > 0:
            out[case_id] = (truth, pred)
    return out


def choose_threshold(volumes, thresholds=GRID):
    """(threshold, {"median_signed_error_at_0.5", "median_signed_error", "median_abs_error", "cases"})."""
    if not volumes:
        raise ValueError("the validation split has no tumour case: no volume calibration is possible; "
                         "train with a larger --val-fraction")
    truth = np.array([v[0] for v in volumes.values()])
    pred = np.stack([v[1] for v in volumes.values()])  # [cases, thresholds]
    err = (pred - truth[:, None]) / truth[:, None]
    med = np.median(err, axis=0)
    thresholds = np.asarray(thresholds, float)
    best = min(range(len(thresholds)), key=lambda i: (round(abs(med[i]), 4), abs(thresholds[i] - 0.5)))
    half = int(np.argmin(np.abs(thresholds - 0.5)))
    return float(thresholds[best]), {
        "median_signed_error_at_0.5": round(float(med[half]), 4),
        "median_signed_error": round(float(med[best]), 4),
        "median_abs_error": round(float(np.median(np.abs(err[:, best]))), 4),
        "cases": int(len(truth)),
    }


def calibrate_run(model, train_cfg, progress=False):
    """The card's ``calibration`` entry for a trained model, from its run's validation split."""
    cache = SliceCache.build(train_cfg["data"], train_cfg.get("cache_dir") or default_cache_dir(),
                             train_cfg.get("modality", "FLAIR"), train_cfg.get("label", "wt"), progress)
    _, val_set = cache.split(train_cfg["val_fraction"], seed=train_cfg["seed"])
    threshold, stats = choose_threshold(case_volumes(model, val_set))
    if threshold in (GRID[0], GRID[-1]):  # the median error wants a threshold beyond the grid: say so
        stats["at_grid_edge"] = True
    return dict({"method": METHOD, "threshold": threshold,
                 "chosen_on": "the run's validation split (%d tumour cases of %s, --val-fraction %g, seed %d): "
                              "the threshold in 0.10..0.90 whose median signed volume error there is nearest 0"
                              % (stats["cases"], train_cfg["data"], train_cfg["val_fraction"], train_cfg["seed"])},
                **stats)
