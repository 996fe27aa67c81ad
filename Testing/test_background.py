"""BackgroundRuns: the worker the Slicer module drives from a QTimer (real onnxruntime models)."""

import numpy as np
import pytest

from LowResSegLib.background import BackgroundRuns
from LowResSegLib.engines import LocalEngine
from LowResSegLib.geometry import Volume
from LowResSegLib.pipeline import segment

from helpers import cube_phantom
from model_factory import add_threshold_model

SHAPE = (12, 40, 48)
BRAIN = (slice(1, 11), slice(4, 36), slice(4, 44))
CUBE = (slice(4, 9), slice(10, 22), slice(26, 38))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bg-models"))
    add_threshold_model(root, "low-16to64", r=16, big_r=64, threshold=2.5)
    add_threshold_model(root, "high-32to64", r=32, big_r=64, threshold=2.5)
    return root


@pytest.fixture(scope="module")
def volume():
    img, _ = cube_phantom(SHAPE, BRAIN, CUBE)
    return Volume(img.astype(np.float32), np.diag([0.9, 0.8, 3.0, 1.0]))


def factories(repo, *names):
    return [(n, lambda n=n: LocalEngine(n, repo, threads=1)) for n in names]


def test_results_arrive_in_order_with_progress_and_match_a_direct_run(repo, volume):
    runs = BackgroundRuns(volume, factories(repo, "low-16to64", "high-32to64"), chunk=4).start()
    events = runs.wait(60)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "finished" and kinds.count("result") == 2 and "error" not in kinds
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(fractions) == 6
    results = [e for e in events if e.kind == "result"]
    assert [e.model for e in results] == ["low-16to64", "high-32to64"]
    direct = segment(volume, LocalEngine("low-16to64", repo, threads=1))
    np.testing.assert_array_equal(results[0].segmentation.labels, direct.labels)
    assert not runs.running and runs.finished


def test_cancel_stops_between_chunks_and_delivers_no_result(repo, volume):
    def slow_segment(vol, engine, chunk, progress, cancel):
        def progress_then_cancel(done, total):
            progress(done, total)
            runs.cancel()  # the user clicks Cancel after the first chunk
        return segment(vol, engine, chunk=chunk, progress=progress_then_cancel, cancel=cancel)

    runs = BackgroundRuns(volume, factories(repo, "low-16to64", "high-32to64"), chunk=4, segment=slow_segment)
    events = runs.start().wait(60)
    kinds = [e.kind for e in events]
    assert kinds == ["progress", "cancelled", "finished"], kinds


def test_a_failing_model_reports_one_line_and_stops(repo, volume):
    runs = BackgroundRuns(volume, factories(repo, "no-such-model", "low-16to64")).start()
    events = runs.wait(60)
    assert [e.kind for e in events] == ["error", "finished"]
    assert events[0].message.startswith("no-such-model: ") and "\n" not in events[0].message


def test_slicer_ras_matrices_round_trip(volume):
    ras = volume.ijk_to_ras
    np.testing.assert_allclose(ras[:3, 0], [-0.9, 0, 0])  # i runs L in LPS = -x in RAS
    back = Volume.from_ras(volume.array, ras)
    np.testing.assert_allclose(back.affine, volume.affine)
