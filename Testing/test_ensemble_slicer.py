"""Issue 31 in the Slicer module (the real LowResSeg.py against the documented stand-in, real worker process and
real onnxruntime members): an ensemble run adds a separate "members disagree" segment and, when flagged, a
warning in the status line and the results table."""

import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytest.importorskip("vtk")

from test_ensemble import ENS, MEMBERS, build_repo, graded_volume  # noqa: E402
from test_slicer_flow import make_widget, module, pump, seg_nodes  # noqa: E402,F401  (module: the fixture)

import slicer  # noqa: E402  (the stand-in, put on the path by test_slicer_flow)

from LowResSegLib.frontends import slicersupport  # noqa: E402
from LowResSegLib.inference.ensemble import open_engine  # noqa: E402
from LowResSegLib.inference.pipeline import segment  # noqa: E402
from LowResSegLib.images.geometry import Volume  # noqa: E402


@pytest.fixture
def repo(tmp_path_factory):  # the module fixture of test_slicer_flow points LOWRESSEG_MODELS here
    return build_repo(str(tmp_path_factory.mktemp("slicer-ens-models")))


def test_an_ensemble_run_adds_a_members_disagree_segment_and_a_review_warning(module, repo):
    vol = graded_volume()
    ijk_to_ras = np.diag([1.0, 1.0, 2.0, 1.0])  # LPS diag(-1, -1, 2) as RAS
    node = slicer.util.addVolumeFromArray(vol.array, ijk_to_ras, name="FLAIR")
    widget = make_widget(module, node, ENS)
    assert widget.ui.modelSelector.currentText == ENS
    assert "an ensemble of " + ", ".join(MEMBERS) in widget.logic.cardSummary(ENS)
    widget.ui.segmentButton.click()
    pump(widget)
    new = seg_nodes()
    assert len(new) == 1
    segmentation = new[0].GetSegmentation()
    assert [s.name for s in segmentation.segments.values()] == ["Tumour", "members disagree"]  # the stand-in's list
    direct = segment(Volume.from_ras(vol.array, ijk_to_ras), open_engine(ENS, repo))
    tumour, disagree = (segmentation.GetSegment(segmentation.GetNthSegmentID(i)).labelmap for i in (0, 1))
    np.testing.assert_array_equal(tumour, direct.labels)
    np.testing.assert_array_equal(disagree, (direct.disagreement > 0).astype(np.uint8))
    assert disagree.any() and direct.review
    status = widget.ui.statusLabel.text
    assert status.startswith("Done: 1 segmentation(s) added") and "REVIEW this case" in status and ENS in status
    assert "REVIEW this case" in widget.ui.resultsTable.cells[(0, 5)]
    widget.cleanup()


def test_a_single_model_gets_no_extra_segment_and_no_warning():
    from LowResSegLib.inference.pipeline import Segmentation

    card = {"name": "m", "classes": [{"index": 1, "name": "Tumour", "color": [1, 2, 3]}]}
    seg = Segmentation(np.ones((2, 2, 2), np.uint8), None, card, {}, None)
    assert [s["name"] for s, _ in slicersupport.segment_masks(seg)] == ["Tumour"]
    assert slicersupport.review_warning({"m": seg}) == "" and slicersupport.review_lines(seg) == []
