"""Tests for LowResSegLib.training.sources (MSD + images/labels folder readers).

Fixtures are written with nibabel so the 4-D layout (channels on the last NIfTI
axis) is exactly the Medical Segmentation Decathlon's.
"""

import json

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
sitk = pytest.importorskip("SimpleITK")

from LowResSegLib.training import sources  # noqa: E402
from LowResSegLib.training.sources import (  # noqa: E402
    Case,
    folder_case_ids,
    iter_folder_cases,
    iter_msd_cases,
    make_label_mapper,
    msd_case_ids,
    msd_task_info,
    read_folder,
    read_msd,
)

SHAPE = (12, 10, 8)  # nibabel (i, j, k)
N_CHANNELS = 4
MODALITIES = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}

# RAS affine as nibabel stores it: spacing (1.0, 1.2, 2.0), i axis flipped, a translation.
RAS_AFFINE = np.array(
    [
        [-1.0, 0.0, 0.0, 30.0],
        [0.0, 1.2, 0.0, -40.0],
        [0.0, 0.0, 2.0, 15.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
LPS_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0]) @ RAS_AFFINE


def _channel_data(c, seed=0):
    """(i, j, k) float32: constant 1000*(c+1) plus a gradient that distinguishes every axis."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    return (1000.0 * (c + 1) + i + 20.0 * j + 400.0 * k / 10.0 + seed).astype(np.float32)


def _label_data(seed=0):
    rng = np.random.RandomState(seed)
    return rng.randint(0, 4, size=SHAPE).astype(np.uint8)


def _save(array, path, affine=RAS_AFFINE):
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _kji(ijk):
    """nibabel (i, j, k) array -> project (k, j, i) order."""
    return np.transpose(ijk, (2, 1, 0))


def make_msd_task(root, case_ids=("BRATS_001", "BRATS_002"), *, misspell_release=False, with_training=True,
                  channels=N_CHANNELS, modalities=MODALITIES):
    task = root / "Task01_BrainTumour"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    (task / "imagesTs").mkdir()
    for n, cid in enumerate(case_ids):
        if channels == 1:
            image = _channel_data(0, seed=n)
        else:
            image = np.stack([_channel_data(c, seed=n) for c in range(channels)], axis=-1)
        _save(image, task / "imagesTr" / (cid + ".nii.gz"))
        _save(_label_data(seed=n), task / "labelsTr" / (cid + ".nii.gz"))
    # macOS AppleDouble junk, as shipped in the MSD tarballs: must be ignored.
    (task / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    (task / "labelsTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07junk")
    meta = {
        "name": "BRATS",
        "tensorImageSize": "4D",
        "modality": modalities,
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
        "numTraining": len(case_ids),
    }
    meta["relase" if misspell_release else "release"] = "2.0 04/05/2018"
    if with_training:
        meta["training"] = [
            {"image": "./imagesTr/%s.nii.gz" % cid, "label": "./labelsTr/%s.nii.gz" % cid} for cid in case_ids
        ]
        meta["test"] = []
    (task / "dataset.json").write_text(json.dumps(meta, indent=4))
    return task


@pytest.fixture
def msd_task(tmp_path):
    return make_msd_task(tmp_path)


# --------------------------------------------------------------------------- MSD


@pytest.mark.parametrize(
    "modality, channel",
    [("FLAIR", 0), ("flair", 0), ("T1w", 1), ("T1GD", 2), ("t2w", 3), (0, 0), (2, 2), (3, 3), ("1", 1)],
)
def test_msd_modality_picks_right_channel(msd_task, modality, channel):
    cases = read_msd(msd_task, modality=modality, label="wt")
    assert [c.case_id for c in cases] == ["BRATS_001", "BRATS_002"]
    for n, case in enumerate(cases):
        assert isinstance(case, Case)
        assert case.image.dtype == np.float32
        assert case.image.shape == SHAPE[::-1]
        np.testing.assert_array_equal(case.image, _kji(_channel_data(channel, seed=n)))


def test_msd_affine_is_ijk_to_lps_and_axes_are_kji(msd_task):
    case = next(iter(iter_msd_cases(msd_task, modality="T2w", label="wt", limit=1)))
    assert case.affine.shape == (4, 4) and case.affine.dtype == np.float64
    np.testing.assert_allclose(case.affine, LPS_AFFINE, atol=1e-5)  # 1.2 is stored as float32
    # array axis order: image[k, j, i] is the value nibabel holds at [i, j, k]
    nib_data = _channel_data(3)
    i, j, k = 11, 3, 6
    assert case.image[k, j, i] == nib_data[i, j, k]
    # ... and that voxel lies where nibabel's RAS affine says, once converted to LPS.
    lps = case.affine @ np.array([i, j, k, 1.0])
    ras = RAS_AFFINE @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(lps[:3], ras[:3] * [-1, -1, 1], atol=1e-4)
    # and agrees with SimpleITK's own index -> physical mapping of the label file
    lab = sitk.ReadImage(str(msd_task / "labelsTr" / "BRATS_001.nii.gz"))
    np.testing.assert_allclose(lps[:3], lab.TransformIndexToPhysicalPoint((i, j, k)), atol=1e-4)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("wt", lambda l: l > 0),
        ("WT", lambda l: l > 0),
        ("gt0", lambda l: l > 0),
        ("tc", lambda l: (l == 2) | (l == 3)),
        ("et", lambda l: l == 3),
        ("eq:1", lambda l: l == 1),
        ("in:1,2", lambda l: (l == 1) | (l == 2)),
        ("gt:1", lambda l: l > 1),
    ],
)
def test_msd_label_specs(msd_task, spec, expected):
    cases = read_msd(msd_task, modality="FLAIR", label=spec)
    for n, case in enumerate(cases):
        assert case.label.dtype == np.uint8
        assert case.label.shape == SHAPE[::-1]
        np.testing.assert_array_equal(case.label, _kji(expected(_label_data(seed=n))).astype(np.uint8))
    assert set(np.unique(cases[0].label)) == {0, 1}


def test_unknown_modality_lists_available(msd_task):
    with pytest.raises(ValueError) as err:
        iter_msd_cases(msd_task, modality="DWI")  # raised at call time, not on next()
    msg = str(err.value)
    for name in MODALITIES.values():
        assert name in msg
    with pytest.raises(ValueError, match="not available"):
        iter_msd_cases(msd_task, modality=7)


@pytest.mark.parametrize("bad", ["whole", "eq:", "eq:x", "in:", "eq:1,2", ""])
def test_unknown_label_spec(msd_task, bad):
    with pytest.raises(ValueError) as err:
        iter_msd_cases(msd_task, modality=0, label=bad)
    assert "wt" in str(err.value) or "in:" in str(err.value)


def test_make_label_mapper_float_labels():
    lab = np.array([0.0, 1.0, 2.0000001, 2.9999, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(make_label_mapper("tc")(lab), [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(make_label_mapper("et")(lab), [0, 0, 0, 1, 1])


def test_relase_misspelling_and_no_training_list_fall_back_to_imagesTr(tmp_path):
    task = make_msd_task(tmp_path, case_ids=("prostate_02", "prostate_00"), misspell_release=True,
                         with_training=False)
    info = msd_task_info(task)
    assert info.release == "2.0 04/05/2018"
    assert info.modalities == {0: "FLAIR", 1: "T1w", 2: "t1gd", 3: "T2w"}
    # listed from imagesTr/, sorted, AppleDouble file skipped
    assert msd_case_ids(task) == ["prostate_00", "prostate_02"]
    cases = read_msd(task, modality="t1gd", label="wt")
    assert [c.case_id for c in cases] == ["prostate_00", "prostate_02"]
    np.testing.assert_array_equal(cases[1].image, _kji(_channel_data(2, seed=0)))


def test_minimal_dataset_json(tmp_path):
    """Only a 'training' list: no name/release/modality keys."""
    task = make_msd_task(tmp_path)
    (task / "dataset.json").write_text(json.dumps({"training": [
        {"image": "./imagesTr/BRATS_002.nii.gz", "label": "./labelsTr/BRATS_002.nii.gz"}]}))
    assert msd_case_ids(task) == ["BRATS_002"]
    (case,) = read_msd(task, modality=1)
    np.testing.assert_array_equal(case.image, _kji(_channel_data(1, seed=1)))
    with pytest.raises(ValueError, match="modality"):
        iter_msd_cases(task, modality="FLAIR")


def test_msd_limit_and_ids(msd_task):
    assert msd_case_ids(msd_task) == ["BRATS_001", "BRATS_002"]
    assert msd_case_ids(msd_task, limit=1) == ["BRATS_001"]
    assert [c.case_id for c in iter_msd_cases(msd_task, limit=1)] == ["BRATS_001"]
    assert list(iter_msd_cases(msd_task, limit=0)) == []


def test_three_d_single_modality_task(tmp_path):
    task = make_msd_task(tmp_path, case_ids=("la_003",), channels=1, modalities={"0": "MRI"})
    (case,) = read_msd(task, modality="mri", label="eq:1")
    np.testing.assert_array_equal(case.image, _kji(_channel_data(0)))
    np.testing.assert_array_equal(case.label, _kji(_label_data() == 1).astype(np.uint8))
    np.testing.assert_allclose(case.affine, LPS_AFFINE, atol=1e-5)
    with pytest.raises(ValueError, match="MRI"):
        iter_msd_cases(task, modality="FLAIR")


def test_missing_dataset_json(tmp_path):
    task = make_msd_task(tmp_path)
    (task / "dataset.json").unlink()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        iter_msd_cases(task)
    with pytest.raises(FileNotFoundError, match="not found"):
        msd_case_ids(tmp_path / "nope")


def test_msd_missing_label_file(msd_task):
    (msd_task / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="BRATS_002.nii.gz"):
        iter_msd_cases(msd_task)


def test_msd_shape_mismatch(msd_task):
    _save(np.zeros((12, 10, 7), np.uint8), msd_task / "labelsTr" / "BRATS_002.nii.gz")
    it = iter_msd_cases(msd_task)
    next(it)
    with pytest.raises(ValueError, match="BRATS_002"):
        next(it)


# --------------------------------------------------------------------------- folders


def make_folder(root, names=("a.nii.gz", "b.nii", "c.mha")):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for n, name in enumerate(names):
        image = _channel_data(0, seed=n)
        label = _label_data(seed=n)
        if name.endswith(".mha"):
            img = sitk.GetImageFromArray(_kji(image).copy())
            lab = sitk.GetImageFromArray(_kji(label).copy())
            for im in (img, lab):
                im.SetSpacing((1.0, 1.2, 2.0))
                im.SetOrigin((-30.0, 40.0, 15.0))
                im.SetDirection((1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))  # LPS of RAS_AFFINE
            sitk.WriteImage(img, str(root / "images" / name))
            sitk.WriteImage(lab, str(root / "labels" / name))
        else:
            _save(image, root / "images" / name)
            _save(label, root / "labels" / name)
    (root / "images" / "._a.nii.gz").write_bytes(b"junk")
    (root / "images" / "notes.txt").write_text("not a volume")
    return root


def test_folder_reader(tmp_path):
    root = make_folder(tmp_path / "data")
    assert folder_case_ids(root) == ["a", "b", "c"]
    cases = list(iter_folder_cases(root))
    assert [c.case_id for c in cases] == ["a", "b", "c"]
    for n, case in enumerate(cases):
        assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
        np.testing.assert_array_equal(case.image, _kji(_channel_data(0, seed=n)))
        np.testing.assert_array_equal(case.label, _kji(_label_data(seed=n) > 0).astype(np.uint8))
        # the .mha case was written in LPS directly; all three must agree
        np.testing.assert_allclose(case.affine, LPS_AFFINE, atol=1e-5)
    assert [c.case_id for c in read_folder(root, limit=2)] == ["a", "b"]


def test_folder_missing_label_names_file(tmp_path):
    root = make_folder(tmp_path / "data")
    (root / "labels" / "b.nii").unlink()
    with pytest.raises(FileNotFoundError) as err:
        iter_folder_cases(root)
    assert "b.nii" in str(err.value) and "labels" in str(err.value)


def test_folder_empty_and_missing(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "images" / "._x.nii.gz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no volumes"):
        iter_folder_cases(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="images/"):
        iter_folder_cases(tmp_path / "nothing_here")


def test_folder_geometry_mismatch_names_case(tmp_path):
    root = make_folder(tmp_path / "data", names=("a.nii.gz", "b.nii.gz"))
    shifted = RAS_AFFINE.copy()
    shifted[0, 3] += 5.0
    _save(_label_data(seed=1), root / "labels" / "b.nii.gz", affine=shifted)
    it = iter_folder_cases(root)
    assert next(it).case_id == "a"
    with pytest.raises(ValueError, match="'b'.*geometry"):
        next(it)


def test_folder_multichannel_needs_channel(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    _save(np.stack([_channel_data(c) for c in range(3)], -1), root / "images" / "m.nii.gz")
    _save(_label_data(), root / "labels" / "m.nii.gz")
    with pytest.raises(ValueError, match="3 channels"):
        read_folder(root)
    (case,) = read_folder(root, channel=2)
    np.testing.assert_array_equal(case.image, _kji(_channel_data(2)))


def test_module_import_is_light():
    assert hasattr(sources, "Case")
