"""Tests for LowResSegLib.training.phantom (MNI152-based brain-tumour FLAIR phantoms).

make_phantom costs ~5 s a case, so this module generates four: (seed 0, index 0),
stripped on the 1 mm grid, in memory; the same case through the CLI; and its thick-slice
and raw-head twins.
"""

import os

import numpy as np
import pytest

pytest.importorskip("nilearn")
pytest.importorskip("scipy")
sitk = pytest.importorskip("SimpleITK")

from LowResSegLib.training import phantom  # noqa: E402
from LowResSegLib.training.phantom import BRATS_SHAPE_KJI, MNI_NOTICE, make_phantom  # noqa: E402

SEED = 0


@pytest.fixture(scope="module")
def case():
    return make_phantom(SEED, 0, style="stripped", grid="iso")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The CLI's phantom command, in process: it calls write_phantoms(OUT, 1, seed=0)."""
    from LowResSegLib.frontends import cli

    out = tmp_path_factory.mktemp("phantoms") / "out"  # not there yet: the command creates it
    rc = cli.main(["phantom", str(out), "--n", "1", "--seed", str(SEED), "--style", "stripped", "--grid", "iso"])
    return out, rc


def test_shapes_and_types(case):
    assert case.params["slice_thickness_mm"] == 1.0  # this (seed, index) is a 1 mm case
    assert case.image.shape == BRATS_SHAPE_KJI == (155, 240, 240)
    assert case.image.dtype == np.float32
    assert case.label.shape == case.image.shape
    assert case.label.dtype == np.uint8
    assert set(np.unique(case.label).tolist()) == {0, 1}
    assert case.case_id == "phantom_s0_0000"
    assert np.isfinite(case.image).all()
    assert case.image.min() >= 0
    a = case.affine
    assert a.shape == (4, 4)
    np.testing.assert_array_equal(a[:3, :3], np.eye(3))
    np.testing.assert_array_equal(a[3], [0, 0, 0, 1])


def test_label_inside_brain(case):
    lab = case.label > 0
    assert lab.sum() > 1000
    inside = case.image[lab] > 0
    assert inside.mean() >= 0.99
    # background is skull-stripped (exactly zero) and the brain is a sizeable part of the grid
    brain_frac = (case.image > 0).mean()
    assert 0.1 < brain_frac < 0.6


def test_tumour_brighter_than_brain(case):
    # edema is drawn at max(gm, wm) + U(0.08, 0.7) while the rest of the brain also holds darker
    # CSF. Not a hard guarantee for every case (core and necrosis intensities are free, and bias,
    # gamma and noise follow), but for this edema-dominated case (seed 0, edema_mm ~23, no
    # necrosis) the whole tumour is clearly brighter on average
    assert case.params["edema_mm"] > 0
    lab = case.label > 0
    brain = (case.image > 0) & ~lab
    assert case.image[lab].mean() > 1.1 * case.image[brain].mean()
    # and the tumour is a local mass: its bounding box is smaller than the grid
    kji = np.argwhere(lab)
    extent = kji.max(0) - kji.min(0) + 1
    assert (extent < np.array(BRATS_SHAPE_KJI)).all()


def test_faint_twin_has_the_same_tumour_fainter(case):
    """lesions="faint" keeps anatomy, tumour and acquisition and only lowers the lesion's signal."""
    faint = make_phantom(SEED, 0, style="stripped", grid="iso", lesions="faint")
    np.testing.assert_array_equal(faint.label, case.label)
    assert faint.case_id == case.case_id + "_faint"
    assert faint.params["contrast_sd"] < case.params["contrast_sd"]
    lab = faint.label > 0
    brain = (case.image > 0) & ~lab
    # the same healthy brain (the noise and the intensity scale follow the image, so not bit for bit) ...
    assert np.corrcoef(faint.image[brain], case.image[brain])[0, 1] > 0.95
    # ... with a lesion that stands out less
    ratio = lambda c: c.image[lab].mean() / c.image[brain].mean()
    assert ratio(faint) < ratio(case) - 0.1
    with pytest.raises(ValueError, match="lesions"):
        make_phantom(SEED, 0, lesions="invisible")


def test_faint_lesions_are_lifted_to_a_visible_floor():
    """Case (3, 8) draws a small faint lesion that soft borders, blur and noise leave at ~0.3 SD: the faint
    series re-acquires it with a stronger paint, so that no label sits on normal-looking tissue."""
    from LowResSegLib.training.phantom import LESIONS, shown_contrast_sd

    floor = LESIONS["faint"]["floor_sd"]
    faint = make_phantom(3, 8, style="stripped", grid="iso", lesions="faint")
    lab = faint.label > 0
    assert lab.any() and faint.params["paint_gain"] > 1.5
    assert shown_contrast_sd(faint.image, lab, faint.image > 0) >= floor
    assert faint.params["shown_sd"] >= floor


def test_capped_series_grows_an_oversized_tumour_less_far():
    """Case (3, 12) draws a 925 mL whole tumour; the capped series keeps its shape, grown to at most 250 mL."""
    from LowResSegLib.training.phantom import LESIONS

    cap = LESIONS["capped"]["max_ml"]
    drawn = make_phantom(3, 12, style="stripped", grid="iso")
    capped = make_phantom(3, 12, style="stripped", grid="iso", lesions="capped")
    drawn_ml, capped_ml = drawn.label.sum() / 1000.0, capped.label.sum() / 1000.0  # 1 mm voxels
    assert drawn_ml > 2 * cap and 0.3 * cap < capped_ml <= cap
    assert not (capped.label.astype(bool) & ~drawn.label.astype(bool)).any()  # inside the drawn tumour
    assert capped.case_id == drawn.case_id + "_capped"


def test_healthy_series_is_the_tumour_free_twin(case):
    healthy = make_phantom(SEED, 0, style="stripped", grid="iso", lesions="healthy")
    twin = make_phantom(SEED, 0, style="stripped", grid="iso", tumour=False)
    assert not healthy.label.any() and healthy.case_id == case.case_id + "_healthy"
    np.testing.assert_array_equal(healthy.image, twin.image)


def test_tumour_centre_is_in_the_brain_not_at_the_edge(case):
    kji = np.argwhere(case.label > 0).mean(0)
    assert (kji > 10).all() and (kji < np.array(BRATS_SHAPE_KJI) - 10).all()


def test_params_recorded(case):
    for key in ("core_radius_mm", "edema_mm", "necrosis", "mass_effect", "slice_thickness_mm"):
        assert key in case.params


def test_thick_slice_twin_is_the_slab_average(case):
    thick = make_phantom(SEED, 0, style="stripped", grid="thick")
    t = thick.params["slice_thickness_mm"]
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[thick.params["orientation"]]  # array axis (k, j, i)
    assert t in (3.0, 4.0, 5.0, 6.0)
    n = BRATS_SHAPE_KJI[axis] // int(t)
    expect = list(BRATS_SHAPE_KJI)
    expect[axis] = n
    assert thick.image.shape == thick.label.shape == tuple(expect)
    assert thick.image.dtype == np.float32 and thick.label.dtype == np.uint8
    spacing = [1.0, 1.0, 1.0]
    spacing[2 - axis] = t
    np.testing.assert_array_equal(np.diag(thick.affine)[:3], spacing)
    # the same anatomy, tumour and contrast: exactly the slab average of the 1 mm twin
    iso = np.moveaxis(case.image, axis, 0)[: n * int(t)]
    slab = iso.reshape((n, int(t)) + iso.shape[1:]).mean(1)
    np.testing.assert_allclose(thick.image, np.moveaxis(slab, 0, axis), rtol=1e-5, atol=1e-3)
    # the origin sits at the centre of the first slab
    shift = thick.affine[:3, 3] - case.affine[:3, 3]
    np.testing.assert_allclose(shift, np.eye(3)[2 - axis] * (t - 1) / 2.0, atol=1e-9)


def test_raw_twin_has_a_head_and_a_noisy_background(case):
    from LowResSegLib.images.intensity import head_mask

    from LowResSegLib.images.intensity import head_mask_and_scale

    raw = make_phantom(SEED, 0, style="raw", grid="iso")
    assert raw.params["style"] == "raw" and case.params["style"] == "stripped"
    assert {k: v for k, v in raw.params.items() if k != "style"} == \
        {k: v for k, v in case.params.items() if k != "style"}  # exact twins
    np.testing.assert_array_equal(raw.label, case.label)
    # skull, scalp and noise do not move the normalisation's tissue scale
    s_raw, s_case = head_mask_and_scale(raw.image, (1, 1, 1))[1], head_mask_and_scale(case.image, (1, 1, 1))[1]
    assert abs(s_raw / s_case - 1) < 0.1, (s_raw, s_case)
    brain = case.image > 0
    assert (raw.image[~brain] > 0).mean() > 0.99  # noise everywhere: no exact zeros outside the brain
    from scipy import ndimage

    shell = ndimage.binary_dilation(brain, iterations=12) & ~ndimage.binary_dilation(brain, iterations=3)
    assert np.percentile(raw.image[shell], 95) > 0.5 * np.median(raw.image[brain])  # scalp and neck: bright fat
    assert np.percentile(raw.image[shell], 5) < 0.3 * np.median(raw.image[brain])  # skull: dark
    head = head_mask(raw.image)  # the normalisation's mask keeps the brain and drops the noise
    assert (head & brain).sum() > 0.9 * brain.sum()  # what it drops is dark surface CSF
    assert (head & (raw.label > 0)).sum() > 0.99 * (raw.label > 0).sum()  # never the tumour
    assert head[raw.label > 0].mean() > 0.99  # never the tumour
    assert not head[:, :5, :5].any()
    # far from the head, only noise: much darker than the brain
    assert np.median(raw.image[:, :5, :5]) < 0.2 * np.median(raw.image[brain])


def test_cli_and_write_phantoms_round_trip(case, written):
    out, rc = written
    assert rc == 0
    cid = case.case_id
    assert sorted(os.listdir(out)) == ["NOTICE-MNI152.txt", "images", "labels"]
    assert os.listdir(out / "images") == [cid + ".nii.gz"]
    assert os.listdir(out / "labels") == [cid + ".nii.gz"]

    img = sitk.ReadImage(str(out / "images" / (cid + ".nii.gz")))
    lab = sitk.ReadImage(str(out / "labels" / (cid + ".nii.gz")))
    for im in (img, lab):
        np.testing.assert_allclose(im.GetSpacing(), np.diag(case.affine)[:3], atol=1e-5)
        np.testing.assert_allclose(im.GetOrigin(), case.affine[:3, 3], atol=1e-4)
        np.testing.assert_allclose(np.reshape(im.GetDirection(), (3, 3)), np.eye(3), atol=1e-6)
    # the label geometry equals the image geometry
    assert lab.GetSize() == img.GetSize() == (240, 240, 155)
    assert lab.GetSpacing() == img.GetSpacing()
    assert lab.GetOrigin() == img.GetOrigin()
    assert lab.GetDirection() == img.GetDirection()

    # arrays identical to make_phantom's output: the generator is deterministic and the
    # NIfTI round trip is lossless
    a_img = sitk.GetArrayFromImage(img)
    a_lab = sitk.GetArrayFromImage(lab)
    assert a_img.dtype == np.float32 and a_lab.dtype == np.uint8
    np.testing.assert_array_equal(a_img, case.image)
    np.testing.assert_array_equal(a_lab, case.label)

    # the project's reader sees the same geometry as the case affine
    from LowResSegLib.training.sources import image_affine

    np.testing.assert_allclose(image_affine(img), case.affine, atol=1e-4)


def test_write_phantoms_direct_no_cases(tmp_path):
    from LowResSegLib.training.phantom import write_phantoms

    out = tmp_path / "empty"
    assert write_phantoms(str(out), 0, seed=5, progress=False) == []
    assert sorted(os.listdir(out)) == ["NOTICE-MNI152.txt", "images", "labels"]
    assert os.listdir(out / "images") == [] and os.listdir(out / "labels") == []
    assert MNI_NOTICE in (out / "NOTICE-MNI152.txt").read_text()


def test_mni_notice(written):
    out, _ = written
    assert MNI_NOTICE.startswith("Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre")
    assert "It is provided 'as is' without express or implied warranty." in MNI_NOTICE
    assert "\n" not in MNI_NOTICE and "  " not in MNI_NOTICE
    assert "McGill University" in MNI_NOTICE
    assert "MNI notice" in phantom.__doc__
    text = (out / "NOTICE-MNI152.txt").read_text()
    assert MNI_NOTICE in text
    assert "MNI152" in text


def test_mni_notice_has_no_stray_quote():
    assert MNI_NOTICE.endswith("without express or implied warranty.")
    assert '"' not in MNI_NOTICE


def test_lesion_is_a_visible_hyperintensity():
    """Case (1001, 5) once drew a faint lesion in a wide-contrast brain: label on tissue that
    looked like the rest of the brain. The lesion is now set in SDs of the healthy brain."""
    faint = make_phantom(1001, 5, style="stripped", grid="iso")
    lesion = faint.label > 0
    brain = (faint.image > 0) & ~lesion
    rest = faint.image[brain]
    assert lesion.sum() > 1000 and 1.0 < faint.params["contrast_sd"]
    assert (faint.image[lesion].mean() - rest.mean()) / rest.std() > 1.0
