"""Post-processing without full-resolution work on slices that cannot hold tumour (issue 22).

``segment`` now resamples back only the slices whose model output can reach the threshold,
thresholds before reorienting, and reorients the probabilities only when they are needed.
The labels must be IDENTICAL to those of the plain path, written out here as it was: every
slice resampled, probabilities reoriented, then thresholded and filtered.
"""

import numpy as np
import pytest

from LowResSegLib.inference import postprocess
from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.images.geometry import Volume, from_canonical
from LowResSegLib.inference.pipeline import low_res_inputs, prepare_slices, segment
from LowResSegLib.repository.modelstore import card_threshold

pytest.importorskip("nilearn")


def plain_path(volume, engine, chunk=32):
    """(labels, probabilities) on the source grid, the straightforward way."""
    prepared = prepare_slices(volume, engine.card)
    prob = np.zeros(prepared.shape, np.float32)
    for start in range(0, prepared.shape[0], chunk):
        p = engine.infer(low_res_inputs(prepared.slices[start:start + chunk], engine.card))
        prob[start:start + chunk] = prepared.to_slice_grid(p[:, 0])
    prob = from_canonical(prob, volume.affine)
    threshold = card_threshold(engine.card)  # the card's volume calibration (issue 28), else 0.5
    labels = (prob > threshold).astype(np.uint8)
    post = engine.card.get("postprocessing")
    if post:
        labels = postprocess.drop_weak_components(labels, prob, volume.voxel_ml, post["min_component_ml"],
                                                  post["min_component_peak"], threshold)
    return labels, prob


@pytest.fixture(scope="module")
def volumes():
    from LowResSegLib.training.phantom import cached_phantom

    # with a tumour (iso and a thick-slice grid, whose pixels are resampled back by area), and without one
    return {v: cached_phantom(1001, 0, v) for v in ("raw", "raw-thick", "healthy-raw")}


def test_labels_identical_to_the_plain_path(volumes):
    model = "elunet-jhead-32to256"
    engine = LocalEngine(model, threads=1)
    strict = LocalEngine(model, threads=1)  # the same model, with a weak-component filter that bites
    strict.card = dict(strict.card, postprocessing=postprocess.postprocessing_card(2.0, 0.9, "test"))
    found = 0
    for name, case in volumes.items():
        vol = Volume(case.image, case.affine)
        for eng in (engine, strict) if name == "raw" else (engine,):
            labels, prob = plain_path(vol, eng)
            fast = segment(vol, eng, keep_probabilities=False)
            assert fast.probabilities is None
            np.testing.assert_array_equal(fast.labels, labels, err_msg="%s %s" % (model, name))
            assert fast.labels.dtype == np.uint8 and fast.labels.shape == case.image.shape
            kept = segment(vol, eng)
            np.testing.assert_array_equal(kept.labels, labels)
            # the same numbers, up to the float32 rounding of a matrix product over fewer slices
            np.testing.assert_allclose(kept.probabilities, prob, rtol=0, atol=1e-6)
        found += int(labels.any())
        if name != "healthy-raw":
            assert labels.sum() * vol.voxel_ml > 5, name  # a real tumour is found, so the test compares something
    assert found >= 2


def test_only_what_can_hold_a_label_is_resampled(volumes, monkeypatch):
    """The saving is real: only the slices, and in them the box, that can hold a label go back to full resolution."""
    from LowResSegLib.inference import pipeline

    seen = []
    original = pipeline.PreparedSlices.window_above
    monkeypatch.setattr(pipeline.PreparedSlices, "to_slice_grid", None)  # the whole-slice path is not taken

    def spy(self, batch, floor):
        found = original(self, batch, floor)
        if found is not None:
            y0, y1, x0, x1 = found[1]
            seen.append((len(batch), (y1 - y0) * (x1 - x0)))
        return found

    monkeypatch.setattr(pipeline.PreparedSlices, "window_above", spy)
    case = volumes["raw"]
    seg = segment(Volume(case.image, case.affine), LocalEngine("elunet-jhead-32to256", threads=1),
                  keep_probabilities=False)
    tumour_slices = int(np.count_nonzero(seg.labels.any(axis=(1, 2))))
    assert 0 < tumour_slices <= sum(n for n, _ in seen) < seg.timings["slices"]
    assert max(area for _, area in seen) < 0.5 * case.image.shape[1] * case.image.shape[2]


def test_fp16_maps_are_compared_exactly_on_their_bits():
    """Every FP16 value, compared on its bits, gives the FP32 answer (negatives count as above: only wider)."""
    from LowResSegLib.inference.pipeline import NO_LABEL_BELOW, THRESHOLD, exceeds, slices_above

    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite_non_negative = np.isfinite(every) & ~np.signbit(every)
    for floor in (NO_LABEL_BELOW, THRESHOLD, 0.0, 1.0 / 3.0):
        want = every.astype(np.float32) > floor
        got = exceeds(every, floor)
        np.testing.assert_array_equal(got[finite_non_negative], want[finite_non_negative])
        assert got[np.signbit(every) & np.isfinite(every)].all()  # negative: a wider window, never a lost label
        values = np.random.default_rng(0).permutation(every[finite_non_negative])[:31700]
        maps = np.sort(values.reshape(3170, 10), axis=1).reshape(317, 10, 10)  # some slices above, some not
        np.testing.assert_array_equal(slices_above(maps, floor),
                                      np.flatnonzero((maps.astype(np.float32) > floor).any(axis=(1, 2))))
        np.testing.assert_array_equal(slices_above(maps.astype(np.float32), floor), slices_above(maps, floor))
