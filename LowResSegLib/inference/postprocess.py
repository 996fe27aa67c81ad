"""Dropping weak connected components from a mask: the false positives a raw head invites.

A tumour is one or a few solid regions the model is sure about; what it marks on scalp, skull
base or a bright vessel is usually small or hesitant. ``drop_weak_components`` removes every 3-D
component (face-connected) that is smaller than ``min_ml`` or whose highest probability stays
below ``min_peak``. The two numbers are tuned per model on phantoms that neither training nor
the benchmarks use (``lowresseg tune-postprocess``) and stored in the model card, so the CLI,
Slicer and remote runs all apply the same rule.
"""

import numpy as np

METHOD = "weak-components-v1"

__all__ = ["METHOD", "component_stats", "drop_weak_components", "postprocessing_card"]


def postprocessing_card(min_ml, min_peak, tuned_on):
    """The card's ``postprocessing`` entry."""
    return {"method": METHOD, "min_component_ml": float(min_ml), "min_component_peak": float(min_peak),
            "description": "3-D face-connected components of the thresholded mask are dropped when smaller than "
                           "min_component_ml or when their highest probability is below min_component_peak",
            "tuned_on": tuned_on}


def component_stats(labels, prob):
    """(component ids [k,j,i] int32 with 0 = background, voxel counts [n], peak probabilities [n]) of ``labels``."""
    import SimpleITK as sitk

    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(labels.astype(np.uint8)), False)
    ids = sitk.GetArrayFromImage(cc).astype(np.int32)
    n = int(ids.max())
    counts = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    peaks = np.zeros(n, np.float32)
    if n:
        flat = ids.ravel()
        sel = flat > 0
        np.maximum.at(peaks, flat[sel] - 1, prob.ravel()[sel])
    return ids, counts, peaks


def drop_weak_components(labels, prob, voxel_ml, min_ml, min_peak, threshold=0.5):
    """``labels`` without the components smaller than ``min_ml`` or less sure than ``min_peak``.

    Only the bounding box of the labels is searched (no component reaches beyond it). ``threshold``:
    the one that made ``labels`` (every labelled voxel is above it, so a ``min_peak`` at or below it
    drops nothing).
    """
    if not labels.any() or (min_ml <= 0 and min_peak <= threshold):
        return labels
    box = tuple(slice(int(np.argmax(a)), len(a) - int(np.argmax(a[::-1])))
                for a in (labels.any(axis=(1, 2)), labels.any(axis=(0, 2)), labels.any(axis=(0, 1))))
    ids, counts, peaks = component_stats(labels[box], prob[box])
    keep = np.concatenate([[False], (counts * voxel_ml >= min_ml) & (peaks >= min_peak)])
    out = np.zeros_like(labels)
    out[box] = np.where(keep[ids], labels[box], 0)
    return out
