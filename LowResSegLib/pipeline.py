"""One volume in, a tumour mask on the source grid out.

canonical axial orientation -> normalisation -> per slice: square FOV, area-resample
to r -> engine -> probabilities at R -> bilinear back to the square slice -> crop ->
threshold -> undo orientation. Pre- and post-processing run here, on the client,
for every engine (local or remote), so both give identical labels.
"""

import time

import numpy as np

from LowResSegLib.geometry import (Volume, area_resample, bilinear_resample, crop_from_square, from_canonical,
                                   pad_to_square, to_canonical)
from LowResSegLib.intensity import normalize_volume


class Segmentation(object):
    """Labels on the source grid (uint8, (k, j, i)), optional tumour probability, card, timings."""

    def __init__(self, labels, probabilities, card, timings, reference):
        self.labels, self.probabilities, self.card = labels, probabilities, card
        self.timings, self.reference = timings, reference

    @property
    def voxel_ml(self):
        return float(np.prod(self.reference.spacing)) / 1000.0

    def volume_ml(self):
        """Tumour volume in mL (all foreground classes)."""
        return float(np.count_nonzero(self.labels)) * self.voxel_ml

    def as_volume(self):
        return self.reference.with_array(self.labels, model=self.card["name"])


def prepare_slices(volume, card):
    """Canonical, normalised, square-padded slices ``[K, S, S]`` and what is needed to undo it."""
    canon, _ = to_canonical(np.asarray(volume.array), volume.affine)
    norm = normalize_volume(canon, card["normalization"]["method"])
    return pad_to_square(norm), norm.shape


def low_res_inputs(slices, card):
    """The model input exactly as the engine receives it: ``[N, 1, r, r]`` float32."""
    r = card["input_size"]
    return area_resample(slices, r)[:, None].astype(np.float32)


def segment(volume, engine, chunk=32, progress=None, cancel=None, keep_probabilities=True):
    """Segment ``volume`` (a :class:`Volume`) with ``engine``; None if cancelled.

    ``progress(done, total)`` is called after each chunk of slices; ``cancel()`` is
    polled between chunks, and a cancelled run returns None having written nothing.
    """
    if not isinstance(volume, Volume):
        raise TypeError("segment() needs a LowResSegLib.geometry.Volume")
    card = engine.card
    arr = volume.array
    if not np.all(np.isfinite(arr)):
        raise ValueError("the volume has NaN/Inf voxels; read it with LowResSegLib.io.read_volume, "
                         "which replaces them by 0 and says so")
    t0 = time.perf_counter()
    slices, (nk, h, w) = prepare_slices(volume, card)
    t_pre = time.perf_counter() - t0
    t_inf = t_post = 0.0
    prob = np.zeros((nk, h, w), np.float32)
    size = slices.shape[-1]
    for start in range(0, nk, chunk):
        if cancel is not None and cancel():
            return None
        t = time.perf_counter()
        x = low_res_inputs(slices[start:start + chunk], card)
        t1 = time.perf_counter()
        _, p = engine.infer(x)
        t2 = time.perf_counter()
        prob[start:start + chunk] = crop_from_square(bilinear_resample(p[:, 0], size), h, w)
        t3 = time.perf_counter()
        t_pre += t1 - t
        t_inf += t2 - t1
        t_post += t3 - t2
        if progress is not None:
            progress(min(nk, start + chunk), nk)
    if cancel is not None and cancel():
        return None
    t = time.perf_counter()
    prob = from_canonical(prob, volume.affine)
    labels = (prob > 0.5).astype(np.uint8)
    t_post += time.perf_counter() - t
    total = t_pre + t_inf + t_post
    timings = {
        "slices": int(nk),
        "preprocess_ms": 1000 * t_pre, "infer_ms": 1000 * t_inf, "postprocess_ms": 1000 * t_post,
        "total_s": total, "ms_per_slice": 1000 * total / max(1, nk),
        "volumes_per_s": 1.0 / total if total > 0 else float("inf"),
    }
    return Segmentation(labels, prob if keep_probabilities else None, card, timings, volume)


def segment_array(image, affine, engine, chunk=32, progress=None):
    """Array-level convenience: (labels, probability) on the grid of ``image``."""
    seg = segment(Volume(image, affine), engine, chunk=chunk, progress=progress)
    return seg.labels, seg.probabilities
