"""One volume in, a tumour mask on the source grid out.

canonical axial orientation -> normalisation -> square pixels -> per slice: square FOV,
area-resample to r -> engine -> probabilities at R -> bilinear back to the square slice ->
crop -> (area back to the source pixels) -> undo orientation -> threshold -> drop weak components
(when the model card asks for it, :mod:`LowResSegLib.inference.postprocess`). Pre- and post-processing run
here, on the client, for every engine (local or remote), so both give identical labels.
"""

import time

import numpy as np

from LowResSegLib.images.geometry import (Volume, apply_separable, area_resample, bilinear_matrix, bilinear_resample,
                                   crop_from_square, from_canonical, pad_to_square, square_pad_widths, to_canonical)
from LowResSegLib.inference import postprocess
from LowResSegLib.images.intensity import normalize_volume
from LowResSegLib.repository.modelstore import DEFAULT_THRESHOLD, card_threshold


class Segmentation(object):
    """Labels on the source grid (uint8, (k, j, i)), optional tumour probability, card, timings."""

    def __init__(self, labels, probabilities, card, timings, reference):
        self.labels, self.probabilities, self.card = labels, probabilities, card
        self.timings, self.reference = timings, reference

    @property
    def voxel_ml(self):
        return self.reference.voxel_ml

    def volume_ml(self):
        """Tumour volume in mL (all foreground classes)."""
        return float(np.count_nonzero(self.labels)) * self.voxel_ml

    def as_volume(self):
        return self.reference.with_array(self.labels, model=self.card["name"])


THRESHOLD = DEFAULT_THRESHOLD  # tumour where the resampled probability exceeds the card's threshold (this by default)
#: A slice whose model output peaks at or below ``threshold - NO_LABEL_MARGIN`` cannot reach the threshold after
#: resampling (a convex combination, up to float32 rounding); the 8-bit outputs step by 1/255.
NO_LABEL_MARGIN = 1e-3
NO_LABEL_BELOW = THRESHOLD - NO_LABEL_MARGIN

_ANISO_TOL = 1.5  # in-plane spacings further apart than this (a reformatted thick-slice scan) get square pixels
_MAX_INPLANE = 1024


class PreparedSlices(object):
    """What the model input is cut from, and how to bring a mask back to the source grid.

    ``slices``: ``[K, S, S]`` normalised, square-padded canonical axial slices with square pixels.
    ``shape``: the canonical volume's ``(K, H, W)``; ``grid``: the in-plane ``(h, w)`` that the
    slices were resampled to (equal to ``(H, W)`` unless the pixels were not square).
    """

    def __init__(self, slices, shape, grid):
        self.slices, self.shape, self.grid = slices, shape, grid

    def to_slice_grid(self, batch):
        """``[N, S', S']`` maps on the model's square FOV (any S') -> ``[N, H, W]`` canonical slices."""
        h, w = self.grid
        out = crop_from_square(bilinear_resample(batch, self.slices.shape[-1]), h, w)
        if (h, w) != tuple(self.shape[1:]):
            out = area_resample(out, self.shape[1:])
        return out

    def window_above(self, batch, floor):
        """``(maps, (y0, y1, x0, x1))``: :meth:`to_slice_grid` of ``batch`` inside the box of the canonical
        slices where it can exceed ``floor``, or None where it cannot anywhere.

        A resampled pixel is a non-negative average of source pixels, so where it reads none above
        ``floor`` it stays at or below it. The box is the bilinear matrices' reach of the source rows and
        columns above ``floor``; inside it the numbers are those of :meth:`to_slice_grid`.
        """
        h, w = self.grid
        big_h, big_w = self.shape[1:]
        above = exceeds(batch, floor).any(axis=0)
        if not above.any():
            return None
        if (h, w) != (big_h, big_w):  # non-square source pixels: the area step needs whole slices
            return self.to_slice_grid(batch), (0, big_h, 0, big_w)
        s = self.slices.shape[-1]
        (top, _), (left, _) = square_pad_widths(h, w)
        mr, mc = bilinear_matrix(batch.shape[-2], s), bilinear_matrix(batch.shape[-1], s)
        box_r = _reach(mr, np.flatnonzero(above.any(axis=1)), top, top + h)
        box_c = _reach(mc, np.flatnonzero(above.any(axis=0)), left, left + w)
        if box_r is None or box_c is None:
            return None
        (o0, o1, r0, r1), (q0, q1, c0, c1) = box_r, box_c
        maps = apply_separable(batch[:, r0:r1, c0:c1], mr[o0:o1, r0:r1], mc[q0:q1, c0:c1])
        return maps, (o0 - top, o1 - top, q0 - left, q1 - left)


def exceeds(probabilities, floor):
    """``probabilities > floor`` for FP32 or FP16 maps; FP16 is compared on its bits, which is exact
    for values >= 0 and far cheaper than converting (a negative value counts as above: harmless)."""
    if probabilities.dtype == np.float16:
        bound = np.float16(floor)
        if float(bound) > floor:  # the largest FP16 at or below floor
            bound = np.nextafter(bound, np.float16(0))
        return probabilities.view(np.uint16) > bound.view(np.uint16)
    return probabilities > floor


def slices_above(probabilities, floor):
    """Indices of the ``[N, ...]`` maps with any value above ``floor``."""
    flat = probabilities.reshape(len(probabilities), -1)
    if flat.dtype == np.float16:  # the largest bits hold the largest value >= 0 (see exceeds)
        peaks = flat.view(np.uint16).max(axis=1).view(np.float16)
    else:
        peaks = flat.max(axis=1)
    return np.flatnonzero(exceeds(peaks, floor))


def _reach(m, sources, keep0, keep1):
    """(o0, o1, c0, c1): the outputs of ``m`` in [keep0, keep1) that read any of ``sources``, and every
    input they read; None if there are none."""
    reads = np.flatnonzero((m[:, sources] != 0).any(axis=1))
    reads = reads[(reads >= keep0) & (reads < keep1)]
    if not len(reads):
        return None
    o0, o1 = int(reads[0]), int(reads[-1]) + 1
    used = np.flatnonzero((m[o0:o1] != 0).any(axis=0))
    return o0, o1, int(used[0]), int(used[-1]) + 1


def square_pixel_grid(h, w, row_mm, col_mm):
    """In-plane ``(h, w)`` with square pixels at the finer of the two spacings (capped at 1024)."""
    if max(row_mm, col_mm) <= _ANISO_TOL * min(row_mm, col_mm):
        return h, w
    fine = min(row_mm, col_mm)
    hh, ww = h * row_mm / fine, w * col_mm / fine
    f = min(1.0, _MAX_INPLANE / max(hh, ww))
    return max(1, int(round(hh * f))), max(1, int(round(ww * f)))


def prepare_array(array, affine, method, label=None):
    """Canonical axial orientation, normalisation, square pixels, square FOV: training and inference.

    Returns :class:`PreparedSlices`, and with ``label`` also the label prepared the same way
    (float32 in [0, 1]: soft where the pixels were resampled).
    """
    canon, c_aff = to_canonical(np.asarray(array), affine)
    spacing_kji = tuple(float(v) for v in np.linalg.norm(c_aff[:3, :3], axis=0))[::-1]
    norm = normalize_volume(canon, method, spacing_kji)
    nk, h, w = norm.shape
    grid = square_pixel_grid(h, w, spacing_kji[1], spacing_kji[2])
    if grid != (h, w):
        norm = bilinear_resample(norm, grid).astype(np.float32)
    prepared = PreparedSlices(pad_to_square(norm), norm.shape[:1] + (h, w), grid)
    if label is None:
        return prepared
    lab = (to_canonical(np.asarray(label), affine)[0] > 0).astype(np.float32)
    if grid != (h, w):
        lab = np.clip(bilinear_resample(lab, grid), 0.0, 1.0).astype(np.float32)
    return prepared, pad_to_square(lab)


def prepare_slices(volume, card):
    """:func:`prepare_array` for a :class:`Volume` and a model card."""
    return prepare_array(volume.array, volume.affine, card["normalization"]["method"])


def low_res_inputs(slices, card):
    """The model input exactly as the engine receives it: ``[N, 1, r, r]`` float32."""
    r = card["input_size"]
    return area_resample(slices, r)[:, None].astype(np.float32)


def postprocessing_of(card):
    """The card's ``postprocessing`` entry (None without one); refused up front when its method is unknown."""
    post = card.get("postprocessing")
    if post and post.get("method") != postprocess.METHOD:
        raise ValueError("model %s asks for post-processing %r, which this LowResSeg does not know; update LowResSeg"
                         % (card["name"], post.get("method")))
    return post or None


def segment(volume, engine, chunk=32, progress=None, cancel=None, keep_probabilities=True, prepared=None,
            probability_floor=None):
    """Segment ``volume`` (a :class:`Volume`) with ``engine``; None if cancelled.

    ``progress(done, total)`` is called after each chunk of slices; ``cancel()`` is
    polled between chunks, and a cancelled run returns None having written nothing.
    ``prepared``: :func:`prepare_slices` of ``volume`` for this card's normalisation, when the caller has it
    (an ensemble prepares once for all its members). ``probability_floor`` (with ``keep_probabilities``): the
    probabilities are brought back to full resolution only in the slices and boxes where the model output
    exceeds it, and are 0 elsewhere (where the true value is at most the floor); with 0 they equal those of the
    full path exactly (the probabilities are never negative), at a fraction of its cost where most of the
    8-bit output is 0. An engine with its own ``segment_volume`` (an
    ensemble, :mod:`LowResSegLib.inference.ensemble`) segments the volume itself, with the same arguments.
    """
    if not isinstance(volume, Volume):
        raise TypeError("segment() needs a LowResSegLib.images.geometry.Volume")
    own = getattr(engine, "segment_volume", None)
    if own is not None:
        return own(volume, chunk=chunk, progress=progress, cancel=cancel, keep_probabilities=keep_probabilities)
    card = engine.card
    post = postprocessing_of(card)
    threshold = card_threshold(card)
    no_label_below = threshold - NO_LABEL_MARGIN
    windowed = not keep_probabilities or probability_floor is not None
    floor = no_label_below if probability_floor is None else min(float(probability_floor), no_label_below)
    t0 = time.perf_counter()
    if not np.all(np.isfinite(volume.array)):
        raise ValueError("the volume has NaN/Inf voxels; read it with LowResSegLib.images.io.read_volume, "
                         "which replaces them by 0 and says so")
    if prepared is None:
        prepared = prepare_slices(volume, card)
    slices, nk = prepared.slices, prepared.shape[0]
    t_pre = time.perf_counter() - t0
    t_inf = t_post = 0.0
    prob = np.zeros(prepared.shape, np.float32)  # slices left at 0 hold no label (see below)
    written = _Box()
    for start in range(0, nk, chunk):
        if cancel is not None and cancel():
            return None
        t = time.perf_counter()
        x = low_res_inputs(slices[start:start + chunk], card)
        t1 = time.perf_counter()
        p = engine.infer(x)[:, 0]  # FP16 stays FP16 until resampled
        t2 = time.perf_counter()
        # resampling averages with non-negative weights: unless the probabilities are kept whole, only the slices,
        # and in them the box, where the model output exceeds the floor go back to full resolution
        if not windowed:
            prob[start:start + len(p)] = prepared.to_slice_grid(p)
            written.add(start, start + len(p), (0, prob.shape[1], 0, prob.shape[2]))
        else:
            busy = slices_above(p, floor)
            found = prepared.window_above(p[busy], floor) if len(busy) else None
            if found is not None:
                maps, (y0, y1, x0, x1) = found
                prob[start + busy, y0:y1, x0:x1] = maps
                written.add(start + int(busy[0]), start + int(busy[-1]) + 1, (y0, y1, x0, x1))
        t3 = time.perf_counter()
        t_pre += t1 - t
        t_inf += t2 - t1
        t_post += t3 - t2
        if progress is not None:
            progress(min(nk, start + chunk), nk)
    if cancel is not None and cancel():
        return None
    t = time.perf_counter()
    labels = np.zeros(prob.shape, np.uint8)  # outside the box written above, prob is 0
    box = written.slices()
    if box is not None:
        labels[box] = prob[box] > threshold
        if post:  # on the canonical grid: a permutation and flips of the axes keep every component as it is
            labels[box] = postprocess.drop_weak_components(labels[box], prob[box], volume.voxel_ml,
                                                           post["min_component_ml"], post["min_component_peak"],
                                                           threshold)
    labels = from_canonical(labels, volume.affine)
    if keep_probabilities:
        prob = from_canonical(prob, volume.affine)
    t_post += time.perf_counter() - t
    total = t_pre + t_inf + t_post
    timings = {
        "slices": int(nk),
        "preprocess_ms": 1000 * t_pre, "infer_ms": 1000 * t_inf, "postprocess_ms": 1000 * t_post,
        "total_s": total, "ms_per_slice": 1000 * total / max(1, nk),
        "volumes_per_s": 1.0 / total if total > 0 else float("inf"),
    }
    return Segmentation(labels, prob if keep_probabilities else None, card, timings, volume)


class _Box(object):
    """The union of the (k, y, x) boxes written so far."""

    def __init__(self):
        self.lo = self.hi = None

    def add(self, k0, k1, yx):
        y0, y1, x0, x1 = yx
        lo, hi = (k0, y0, x0), (k1, y1, x1)
        self.lo = lo if self.lo is None else tuple(min(a, b) for a, b in zip(self.lo, lo))
        self.hi = hi if self.hi is None else tuple(max(a, b) for a, b in zip(self.hi, hi))

    def slices(self):
        return None if self.lo is None else tuple(slice(a, b) for a, b in zip(self.lo, self.hi))


def segment_array(image, affine, engine, chunk=32, progress=None):
    """Array-level convenience: (labels, probability) on the grid of ``image``."""
    seg = segment(Volume(image, affine), engine, chunk=chunk, progress=progress)
    return seg.labels, seg.probabilities
