"""Real scanner DICOM (Testing/data/dicom, see its README): enhanced multi-frame and classic
exports of one Canon diffusion acquisition, checked against dcm2niix's conversion."""

import json
import os

import numpy as np
import pytest

from LowResSegLib.images.io import VolumeReadError, read_volume
from helpers import snapshot

pytest.importorskip("pydicom")
CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "dicom")
ENHANCED = os.path.join(CORPUS, "canon_enhanced_dti")
CLASSIC = os.path.join(CORPUS, "canon_classic_dti")


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(CORPUS, "corpus.json")) as f:
        return json.load(f)["reference"]


@pytest.mark.parametrize("path,n", [(ENHANCED, 3), (os.path.join(ENHANCED, "8000_3vol_crop16.dcm"), 3), (CLASSIC, 2)])
def test_several_volumes_are_refused_with_their_list(path, n):
    before = snapshot(CORPUS)
    with pytest.raises(VolumeReadError) as err:
        read_volume(path)
    msg = str(err.value)
    assert "holds %d volumes at the same slice positions" % n in msg
    assert "volume 0: b = 0" in msg and "volume 1: b = 1500" in msg and "--channel N with N in 0..%d" % (n - 1) in msg
    assert snapshot(CORPUS) == before


def test_enhanced_volume_has_the_true_geometry(reference):
    """Every slice's first pixel where dcm2niix puts it (the old reader had 480 of 520 frames up to 1.4 m off)."""
    vol = read_volume(ENHANCED, channel=1)
    ref = np.array(reference["affine_lps"])
    rows = reference["size_ijk"][1]
    assert vol.shape == (reference["size_ijk"][2], 16, 16) and vol.meta["multiframe"]
    ours = np.array([(vol.affine @ [0, 0, k, 1])[:3] for k in range(vol.shape[0])])
    theirs = np.array([(ref @ [0, rows - 1, k, 1])[:3] for k in range(reference["size_ijk"][2])])
    np.testing.assert_allclose(ours, theirs, atol=1e-3)  # same slice order too
    np.testing.assert_allclose(vol.affine[:3, 0], ref[:3, 0], atol=1e-4)  # along a row
    np.testing.assert_allclose(vol.affine[:3, 1], -ref[:3, 1], atol=1e-4)  # down a column (NIfTI runs up)
    assert vol.meta["frames"] == list(range(40, 80)) and vol.meta["contrast"] == "DWI"


def test_classic_export_gives_the_same_volume_voxel_for_voxel():
    enhanced, classic = read_volume(ENHANCED, channel=1), read_volume(CLASSIC, channel=1)
    np.testing.assert_allclose(classic.affine, enhanced.affine, atol=1e-4)
    np.testing.assert_array_equal(classic.array, enhanced.array)
    assert classic.meta["frames"] == [None] * 40 and len(set(classic.meta["files"])) == 40
