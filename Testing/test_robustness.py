"""Input that does not depend on pre-processing, on the shipped models.

* training and inference cut exactly the same normalised slices from a volume;
* a noisy scanner background (instead of exact zeros) leaves the mask of a shipped model
  essentially unchanged;
* a large tumour does not move the intensity scale (it did with the old z-score).
"""

import numpy as np
import pytest

from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.images.geometry import Volume
from LowResSegLib.images.intensity import DEFAULT_METHOD, ZSCORE_NONZERO, head_mask_and_scale, normalize_volume
from LowResSegLib.images.metrics import dice
from LowResSegLib.repository.modelstore import ModelRepository
from LowResSegLib.inference.pipeline import prepare_slices, segment

pytest.importorskip("nilearn")
MODEL = "elunet-jhead-32to256"


@pytest.fixture(scope="module")
def stripped():
    from LowResSegLib.training.phantom import make_phantom

    return make_phantom(1001, 3, style="stripped", grid="thick")  # held-out seed, zero background


@pytest.fixture(scope="module")
def engine():
    return LocalEngine(MODEL, threads=1)


def test_shipped_models_use_a_head_mode_normalisation():
    """Shipped models use the current method, or v1 until their retraining lands (issue 28): never the
    z-score of older models, which fails on raw heads."""
    from LowResSegLib.images.intensity import HEAD_MODE_RATIO

    repo = ModelRepository()
    for name in repo.names():
        assert repo.card(name)["normalization"]["method"] in (DEFAULT_METHOD, HEAD_MODE_RATIO), name


def test_a_v1_card_is_normalised_with_v1_and_a_v2_card_with_v2(stripped):
    """The card names its method, and inference follows it: the two give different inputs."""
    from LowResSegLib.images.intensity import HEAD_MODE_RATIO, HEAD_MODE_RATIO_V2
    vol = Volume(stripped.image, stripped.affine)
    card = dict(LocalEngine(MODEL, threads=1).card)
    got = {}
    for method in (HEAD_MODE_RATIO, HEAD_MODE_RATIO_V2):
        card["normalization"] = {"method": method}
        got[method] = prepare_slices(vol, card).slices
    assert not np.array_equal(got[HEAD_MODE_RATIO], got[HEAD_MODE_RATIO_V2])
    for slices in got.values():
        assert 0.0 <= float(slices.min()) and float(slices.max()) <= 5.0 and float(slices.max()) > 1.0


def test_training_and_inference_cut_the_same_slices(stripped, engine):
    from LowResSegLib.training.slices import volume_to_slices

    vol = Volume(stripped.image, stripped.affine)
    infer = prepare_slices(vol, engine.card).slices
    train_img, train_lab = volume_to_slices(stripped.image, stripped.label, stripped.affine,
                                            engine.card["normalization"]["method"])
    keep = (infer != 0).mean(axis=(1, 2)) > 0.01
    assert train_img.shape == infer[keep].shape
    np.testing.assert_allclose(train_img.astype(np.float32), infer[keep], rtol=1e-3, atol=1e-3)  # float16 cache
    assert train_lab.max() == 255 and train_lab.shape == train_img.shape


def with_noise_background(image, rel=0.03, seed=0):
    """Rician scanner noise where the volume is exactly 0 (what skull stripping had removed)."""
    rng = np.random.default_rng(seed)
    sd = rel * float(np.percentile(image[image > 0], 95))
    bg = image == 0
    noisy = image.copy()
    noisy[bg] = np.hypot(rng.normal(0, sd, bg.sum()), rng.normal(0, sd, bg.sum()))
    return noisy


def test_noise_background_gives_the_same_mask(stripped, engine):
    """The bundled sample (a raw head, 106 mL tumour) as scanned, and with its background set to exact 0."""
    import os

    from LowResSegLib.images.intensity import head_mask
    from LowResSegLib.images.io import read_volume

    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "SampleData")
    noisy_vol, truth = read_volume(os.path.join(root, "sample-flair.nii.gz")), read_volume(
        os.path.join(root, "sample-label.nii.gz")).array > 0
    spacing = noisy_vol.spacing_kji
    zero = np.where(head_mask(noisy_vol.array, spacing), noisy_vol.array, 0).astype(np.float32)
    assert (noisy_vol.array > 0).mean() > 0.99 and (zero == 0).mean() > 0.3
    a = segment(Volume(zero, noisy_vol.affine), engine).labels
    b = segment(noisy_vol, engine).labels
    ml = lambda m: float(m.sum() * np.prod(spacing)) / 1000  # noqa: E731
    assert ml(truth) > 5 and ml(a) > 5 and dice(a, truth) > 0.5  # a real tumour, really found
    assert dice(a, b) >= 0.95, (dice(a, b), ml(a), ml(b))
    assert abs(ml(a) - ml(b)) <= 0.05 * ml(a) + 1.0
    noisy = with_noise_background(stripped.image)
    spacing = Volume(stripped.image, stripped.affine).spacing_kji
    # the old z-score over non-zero voxels is what this replaced: it is thrown off by the noise
    old_a, old_b = normalize_volume(stripped.image, ZSCORE_NONZERO), normalize_volume(noisy, ZSCORE_NONZERO)
    brain = stripped.image > 0
    assert np.abs(old_a[brain] - old_b[brain]).mean() > 0.2
    new_a, new_b = normalize_volume(stripped.image, spacing_kji=spacing), normalize_volume(noisy, spacing_kji=spacing)
    assert np.abs(new_a[brain] - new_b[brain]).mean() < 0.02


def test_a_large_tumour_does_not_move_the_scale(stripped):
    spacing = Volume(stripped.image, stripped.affine).spacing_kji
    brain = stripped.image > 0
    _, scale = head_mask_and_scale(stripped.image, spacing)
    big = stripped.image.copy()
    rng = np.random.default_rng(1)
    centre = np.argwhere(brain).mean(0)
    kk, jj, ii = np.indices(big.shape)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((kk, jj, ii), centre, spacing))
    lesion = brain & (d2 < 36.0 ** 2)  # ~200 mL, moderately hyperintense
    assert 150 < lesion.sum() * np.prod(spacing) / 1000 < 250
    big[lesion] = big[lesion] * rng.uniform(1.3, 1.6, lesion.sum())
    _, scale_big = head_mask_and_scale(big, spacing)
    assert abs(scale_big / scale - 1) < 0.05
    z0, z1 = normalize_volume(stripped.image, ZSCORE_NONZERO), normalize_volume(big, ZSCORE_NONZERO)
    # the z-score, by contrast, pulls the normal brain down by the tumour's weight
    assert abs(np.median(z1[brain & ~lesion]) - np.median(z0[brain & ~lesion])) > 0.1


def test_slice_hole_filling_in_one_call_equals_one_fill_per_slice():
    """The mosaic fill of the head mask gives exactly what one SimpleITK fill per axial slice gives,
    holes that touch a slice's edge (an open FOV) included."""
    import SimpleITK as sitk

    from LowResSegLib.images.intensity import _fill_slice_holes

    rng = np.random.default_rng(0)
    for _ in range(20):
        arr = (rng.random(tuple(rng.integers(1, 30, 3))) < rng.uniform(0.3, 0.8)).astype(np.uint8)
        ring = np.zeros((3, 12, 12), np.uint8)
        ring[:, 2:10, 2:10] = 1
        ring[:, 4:8, 4:8] = 0  # a closed hole in every slice
        ring[1, 4:8, 0:5] = 0  # ... opened to the edge in the middle slice: not a hole there
        for a in (arr, ring):
            one_by_one = np.stack([sitk.GetArrayFromImage(sitk.BinaryFillhole(sitk.GetImageFromArray(s), False, 1))
                                   for s in a])
            np.testing.assert_array_equal(_fill_slice_holes(a), one_by_one)
    filled = _fill_slice_holes(ring)
    assert filled[0, 5, 5] == 1 and filled[1, 5, 5] == 0
