"""The weak-component filter: the rule itself, its tuning arithmetic, and the card that switches it on."""

import json
import os

import numpy as np
import pytest

from LowResSegLib.inference.engines import LocalEngine, RemoteEngine
from LowResSegLib.images.geometry import Volume
from LowResSegLib.repository.modelstore import ModelRepository
from LowResSegLib.inference.pipeline import segment
from LowResSegLib.inference.postprocess import component_stats, drop_weak_components, postprocessing_card
from LowResSegLib.training.tune_postprocess import best_setting, case_score, grid_scores, write_tuned

from model_factory import add_threshold_model

MODEL = "threshold-16to64"


def _blobs():
    """A 1 mm grid with a big sure blob (27 voxels, p 0.95), a small sure one (1 voxel) and a big unsure one."""
    labels = np.zeros((10, 10, 10), np.uint8)
    prob = np.zeros(labels.shape, np.float32)
    labels[1:4, 1:4, 1:4], prob[1:4, 1:4, 1:4] = 1, 0.95
    labels[6, 6, 6], prob[6, 6, 6] = 1, 0.99
    labels[6:9, 1:4, 6:9], prob[6:9, 1:4, 6:9] = 1, 0.6
    return labels, prob


def test_component_stats_sizes_and_peaks():
    labels, prob = _blobs()
    ids, counts, peaks = component_stats(labels, prob)
    assert sorted(counts.tolist()) == [1, 27, 27]
    by_size = sorted(zip(counts.tolist(), peaks.tolist()))
    assert by_size == [(1, pytest.approx(0.99)), (27, pytest.approx(0.6)), (27, pytest.approx(0.95))]
    assert ids[labels == 0].max() == 0


@pytest.mark.parametrize("min_ml,min_peak,left", [
    (0.0, 0.5, 55),      # no filter
    (0.002, 0.5, 54),    # the 1-voxel blob (0.001 mL) goes
    (0.0, 0.9, 28),      # the unsure blob goes
    (0.002, 0.9, 27),    # only the big sure blob is left
    (1.0, 0.5, 0),       # everything is smaller than 1 mL
])
def test_drop_weak_components(min_ml, min_peak, left):
    labels, prob = _blobs()
    out = drop_weak_components(labels, prob, 0.001, min_ml, min_peak)
    assert int(out.sum()) == left and out.dtype == labels.dtype
    assert not (out & (labels == 0)).any()  # it only removes


def test_case_score_and_tie_break():
    tumour = {"ml": np.array([10.0, 0.5]), "peak": np.array([0.99, 0.7]), "inside_ml": np.array([8.0, 0.0]),
              "truth_ml": 10.0}
    healthy = {"ml": np.array([3.0, 4.0]), "peak": np.array([0.6, 0.97]), "inside_ml": np.zeros(2), "truth_ml": 0.0}
    assert case_score(tumour, 0.0, 0.5) == pytest.approx(2 * 8 / 20.5)
    assert case_score(tumour, 1.0, 0.5) == pytest.approx(2 * 8 / 20.0)
    assert case_score(healthy, 0.0, 0.5) == 0.0  # 7 mL left
    assert case_score(healthy, 0.0, 0.7) == 1.0  # 4 mL left
    scores = grid_scores([tumour, healthy])
    assert scores[(0.0, 0.8)] == pytest.approx((2 * 8 / 20 + 1) / 2) and scores[(0.0, 0.5)] < scores[(0.0, 0.8)]
    assert best_setting(scores) == (0.0, 0.8)  # of the settings that drop both weak components, the mildest
    assert best_setting({(0.0, 0.5): 0.5, (1.0, 0.5): 0.5}) == (0.0, 0.5)  # a tie keeps the milder filter
    assert best_setting({(0.0, 0.5): 0.5, (1.0, 0.5): 0.504}) == (0.0, 0.5)  # so does a gain within the noise
    assert best_setting({(0.0, 0.5): 0.5, (1.0, 0.5): 0.51, (2.0, 0.5): 0.512}) == (1.0, 0.5)


def _volume_with_a_speck():
    """A dim box with a bright 3x12x12 cube (the tumour) and a bright 1x6x6 speck far from it."""
    img = np.zeros((8, 40, 48), np.float32)
    img[1:7, 4:36, 4:44] = 100
    img[3:6, 10:22, 26:38] = 400
    img[4, 28:34, 6:12] = 400
    return Volume(img, np.diag([0.9, 0.8, 3.0, 1.0]))


def test_the_card_entry_switches_the_filter_on_for_local_and_remote(tmp_path):
    from test_server import start_server

    repo = str(tmp_path)
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    vol = _volume_with_a_speck()
    before = segment(vol, LocalEngine(MODEL, repo)).labels
    _, counts, _ = component_stats(before, before.astype(np.float32))
    assert len(counts) == 2  # the cube and the speck

    big = max(counts) * vol.voxel_ml
    card = write_tuned(MODEL, repo, postprocessing_card(big / 2, 0.5, "test"))
    assert ModelRepository(repo).card(MODEL)["postprocessing"]["min_component_ml"] == big / 2
    assert not [d for d in os.listdir(repo) if d.startswith(".")]  # the folder was swapped whole
    after = segment(vol, LocalEngine(MODEL, repo)).labels
    assert after.sum() == max(counts) and not (after & (before == 0)).any()

    server = start_server(repo)
    try:
        remote = RemoteEngine(server.url, MODEL)
        assert remote.card == card
        np.testing.assert_array_equal(segment(vol, remote).labels, after)
    finally:
        server.stop()


def test_an_unknown_postprocessing_method_is_refused(tmp_path):
    repo = str(tmp_path)
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    write_tuned(MODEL, repo, dict(postprocessing_card(1.0, 0.5, "test"), method="magic-v9"))
    with pytest.raises(ValueError, match="post-processing 'magic-v9'.*update LowResSeg"):
        segment(_volume_with_a_speck(), LocalEngine(MODEL, repo))
    card = json.load(open(os.path.join(repo, MODEL, "lowresseg.json")))
    assert card["postprocessing"]["method"] == "magic-v9"
