"""The fast head-mode normalisation (issue 22) against the original SimpleITK pipeline.

``Testing/reference_normalization.py`` keeps the old implementation verbatim; on the bench
volume and its phantom twins (and the bundled sample) the head masks must agree at
Dice >= 0.995 and the tissue mode within 1 %. The pieces that replaced SimpleITK filters are
checked one by one, so a drift in one shows where it is.
"""

import os

import numpy as np
import pytest

from LowResSegLib.images import intensity
from LowResSegLib.images.geometry import to_canonical
from LowResSegLib.images.metrics import dice
from reference_normalization import reference_mask_and_scale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _canonical(image, affine):
    arr, aff = to_canonical(np.asarray(image, np.float32), affine)
    spacing_kji = tuple(float(v) for v in np.linalg.norm(aff[:3, :3], axis=0))[::-1]
    return arr - min(0.0, float(arr.min())), spacing_kji


def _volumes():
    pytest.importorskip("nilearn")
    from LowResSegLib.images.io import read_volume
    from LowResSegLib.training.phantom import VARIANTS, cached_phantom

    # bench/speed.py's volume is the stripped twin of (1001, 0); bench/quality.py uses these twins
    out = [("1001-0-%s" % v, cached_phantom(1001, 0, v)) for v in VARIANTS]
    sample = read_volume(os.path.join(ROOT, "Resources", "SampleData", "sample-flair.nii.gz"))
    return [(name, _canonical(c.image, c.affine)) for name, c in out] + [
        ("sample", _canonical(sample.array, sample.affine))]


@pytest.fixture(scope="module")
def volumes():
    return _volumes()


def test_fast_mask_and_mode_agree_with_the_original_pipeline(volumes):
    for name, (v, spacing) in volumes:
        ref_mask, ref_scale = reference_mask_and_scale(v, spacing)
        mask, scale = intensity.head_mask_and_scale(v, spacing, intensity.HEAD_MODE_RATIO)
        assert mask.shape == v.shape and ref_mask.any()
        assert dice(mask, ref_mask) >= 0.995, (name, dice(mask, ref_mask))
        assert abs(scale / ref_scale - 1) <= 0.01, (name, scale, ref_scale)


def test_normalised_volume_is_the_masked_ratio_on_any_shape():
    """The block-wise scaling (no full-size mask) equals the plain where-multiply, short edge blocks included."""
    rng = np.random.default_rng(0)
    for shape, spacing in [((31, 239, 241), (1, 1, 1)), ((25, 97, 101), (6, 1, 1)), ((40, 50, 33), (0.5, 0.7, 3))]:
        kk, jj, ii = np.indices(shape)
        r2 = sum(((g - n / 2.0) / n) ** 2 for g, n in zip((kk, jj, ii), shape))
        v = ((r2 < 0.15) * 100 + rng.random(shape) * 20).astype(np.float32)
        for method in (intensity.HEAD_MODE_RATIO, intensity.HEAD_MODE_RATIO_V2):
            mask, scale = intensity.head_mask_and_scale(v, spacing, method)
            expected = np.clip(np.where(mask, v * np.float32(1.0 / scale), 0), 0, 5).astype(np.float32)
            assert 0.1 < mask.mean() < 0.5
            np.testing.assert_array_equal(intensity.normalize_volume(v, method, spacing_kji=spacing), expected)


def test_numpy_gaussian_is_simpleitks_discrete_gaussian():
    import SimpleITK as sitk

    rng = np.random.default_rng(1)
    a = rng.random((9, 30, 26)).astype(np.float32) * 100
    for spacing in ((2.0, 2.0, 2.0), (6.0, 2.0, 2.0), (2.0, 3.0, 1.0)):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(spacing[::-1])
        ref = sitk.GetArrayFromImage(sitk.DiscreteGaussian(img, 4.0, 16, 0.01, True))
        ours = intensity._discrete_gaussian(a, [4.0 / (s * s) for s in spacing])
        np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


def test_block_mean_pads_short_blocks_with_the_edge():
    rng = np.random.default_rng(2)
    v = rng.random((7, 10, 9)).astype(np.float32)
    padded = np.pad(v, [(0, 1), (0, 0), (0, 1)], mode="edge")
    expected = padded.reshape(4, 2, 5, 2, 5, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(intensity._block_mean(v, (2, 2, 2)), expected, rtol=1e-6)


def _bright_scalp_head(gap=None, wider_than_fov=False):
    """A clinical-looking FLAIR: a bright scalp ring around a darker brain (below Otsu), a tumour inside."""
    k, j, i = 12, 120, 100
    yy, xx = np.mgrid[:j, :i]
    ri = 62.0 if wider_than_fov else 40.0  # 62: the ring leaves the image at the left and right edges
    r = np.sqrt(((yy - 60) / 45.0) ** 2 + ((xx - 50) / ri) ** 2)
    img = np.zeros((k, j, i), np.float32)
    img[:] = np.where(r < 0.88, 60.0, 0.0) + np.where((r >= 0.88) & (r < 1.0), 400.0, 0.0)
    if gap:
        img[:, gap[0]:gap[1], 45:55] = 0.0  # the scalp ring is broken here
    img[4:8, 50:65, 40:55] = 150.0
    return img


@pytest.mark.parametrize("case", ["gap in the scalp", "wider than the field of view"])
def test_a_broken_scalp_ring_still_gives_the_whole_head(case):
    """TCGA_FG_8189 (lgg:val) had its brain and tumour zeroed this way: the fill leaked through the ring."""
    from LowResSegLib.images.intensity import head_mask

    img = _bright_scalp_head(gap=(10, 20) if case.startswith("gap") else None,
                             wider_than_fov=case.startswith("wider"))
    mask = head_mask(img, (5.0, 0.94, 0.94))
    assert mask[4:8, 50:65, 40:55].all()  # the tumour
    assert mask[:, 60, 50].all()  # the brain
    assert not mask[:, :3, :3].any()  # not the air in the corners
    closed = head_mask(_bright_scalp_head(), (5.0, 0.94, 0.94))
    assert closed[:, 60, 50].all() and not closed[:, :3, :3].any()  # an intact ring: filled as before


def test_deep_inside_is_the_distance_maps_voxel_set():
    """The dilated-contour core equals SimpleITK's SignedMaurerDistanceMap > depth, voxel for voxel."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    for n, spacing in enumerate([(4.0, 4.0, 4.0), (4.0, 3.2, 3.3), (6.0, 2.67, 2.67), (5.0, 4.0, 4.0),
                                 (2.0, 2.0, 2.0), (3.0, 1.5, 2.5)]):
        x = rng.random((30, 50, 45))
        for _ in range(12):  # smooth blobs, some cut by the image border, with holes and specks
            for axis in range(3):
                x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
        mask = (x > np.quantile(x, 0.3 + 0.03 * n)) ^ (rng.random(x.shape) < 0.002)
        img = sitk.GetImageFromArray(mask.astype(np.uint8))
        img.SetSpacing(spacing[::-1])
        dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=True, squaredDistance=False,
                                                                   useImageSpacing=True))
        near = intensity._dilated_by_ball(intensity._contour(mask), spacing, 10.0)
        assert (dist > 10.0).any()
        np.testing.assert_array_equal(mask & ~near, dist > 10.0, err_msg=str(spacing))


def test_slab_threads_give_the_one_thread_result(monkeypatch):
    """The normalised volume is the same, bit for bit, whether its slabs run side by side or in one thread."""
    from LowResSegLib.images import slabs

    rng = np.random.default_rng(4)
    kk, jj, ii = np.indices((61, 90, 87))
    r2 = ((kk - 30) / 61.0) ** 2 + ((jj - 45) / 90.0) ** 2 + ((ii - 43) / 87.0) ** 2
    v = ((r2 < 0.12) * 100 + rng.random(r2.shape) * 20).astype(np.float32)
    monkeypatch.setattr(slabs, "MIN_VOXELS_PER_SLAB", 1000)  # many slabs even on this small volume
    monkeypatch.setattr(slabs, "worker_count", lambda: 3)
    assert len(slabs.bounds(61, 90 * 87, align=2)) == 3
    threaded = intensity.normalize_volume(v, spacing_kji=(1.0, 1.0, 1.0))
    monkeypatch.setattr(slabs, "worker_count", lambda: 1)
    np.testing.assert_array_equal(threaded, intensity.normalize_volume(v, spacing_kji=(1.0, 1.0, 1.0)))


def test_slab_bounds_cover_the_axis_on_block_boundaries():
    from LowResSegLib.images import slabs

    for n, align, parts in [(155, 2, 2), (155, 3, 4), (7, 2, 8), (1, 1, 2), (64, 4, 3)]:
        spans = slabs.bounds(n, 1, align=align, parts=parts)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(b == c for (_, b), (c, _) in zip(spans, spans[1:]))
        assert all(a % align == 0 for a, _ in spans) and len(spans) <= parts
    assert slabs.run(lambda a, b: (a, b), 0, 1) == []


def test_deep_inside_of_a_slab_thinner_than_the_ball():
    """A 2-slice slab: the ball reaches past both ends of k; still the distance map's voxels."""
    import SimpleITK as sitk

    mask = np.zeros((2, 32, 32), bool)
    mask[:, 4:28, 4:28] = True
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    img.SetSpacing((1.0, 1.0, 5.0))
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(img, insideIsPositive=True, squaredDistance=False,
                                                               useImageSpacing=True))
    near = intensity._dilated_by_ball(intensity._contour(mask), (5.0, 1.0, 1.0), 10.0)
    assert (dist > 10.0).any()
    np.testing.assert_array_equal(mask & ~near, dist > 10.0)


def test_the_box_gives_the_whole_grids_mask_and_mode(volumes, monkeypatch):
    """The steps after Otsu run on the box around the bright voxels: bit for bit the whole grid's mask and mode,
    for heads inside the image, cut by its edges, or with a broken scalp ring."""
    cases = [(name, v, spacing) for name, (v, spacing) in volumes] + [
        ("scalp gap", _bright_scalp_head(gap=(10, 20)), (5.0, 0.94, 0.94)),
        ("wider than the FOV", _bright_scalp_head(wider_than_fov=True), (5.0, 0.94, 0.94))]
    boxes = []
    original = intensity._box_around

    def spy(mask, **kw):
        box = original(mask, **kw)
        boxes.append(np.prod([b.stop - b.start for b in box]) / float(mask.size))
        return box

    monkeypatch.setattr(intensity, "_box_around", spy)
    boxed = [intensity.head_mask_and_scale(v, spacing, intensity.HEAD_MODE_RATIO) for _, v, spacing in cases]
    assert min(boxes) < 0.7  # some box is much smaller than the grid, so the comparison below means something
    monkeypatch.setattr(intensity, "_box_around",
                        lambda mask, **kw: tuple(slice(0, n) for n in mask.shape) if mask.any() else None)
    for (name, v, spacing), (mask, scale) in zip(cases, boxed):
        whole_mask, whole_scale = intensity.head_mask_and_scale(v, spacing, intensity.HEAD_MODE_RATIO)
        np.testing.assert_array_equal(mask, whole_mask, err_msg=name)
        assert scale == whole_scale, name


def test_slab_threads_work_in_a_forked_child(monkeypatch):
    """Training forks its batch workers: a child must not wait on the parent's pool threads, which it lacks.

    Two slab threads whatever the machine's cores, so the parent's pool exists before the fork. The break this
    catches: without ``slabs._forget_the_pool`` registered at fork, the child submits to the parent's pool,
    whose threads it does not have, and waits forever (here: the 20 s timeout fails the test).
    """
    import multiprocessing

    from LowResSegLib.images import slabs

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    monkeypatch.setattr(slabs, "MIN_VOXELS_PER_SLAB", 1)
    monkeypatch.setattr(slabs, "worker_count", lambda: 2)
    monkeypatch.setattr(slabs, "_pool", None)
    for _ in range(3):  # slow slabs, so that the pool starts both its threads (and both end idle)
        assert slabs.run(_slow_slab_length, 64, 1) == [32, 32]
    assert len(slabs._pool._threads) == 2  # the parent's pool threads exist now
    try:
        with multiprocessing.get_context("fork").Pool(1) as pool:
            result = pool.apply_async(slabs.run, (_slab_length, 64, 1))
            assert result.get(timeout=20) == [32, 32]
    finally:
        slabs._pool.shutdown(wait=False)


def _slab_length(a, b):
    return b - a


def _slow_slab_length(a, b):
    import time

    time.sleep(0.05)
    return b - a


def test_the_reference_mode_is_computed_independently():
    """The break this catches: a tissue mode shifted by a few per cent in the product (the reference no longer
    imports the product's ``histogram_mode``, so the comparison above would see it)."""
    import ast

    from reference_normalization import reference_histogram_mode

    tree = ast.parse(open(os.path.join(os.path.dirname(__file__), "reference_normalization.py")).read())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and
                n.module.startswith("LowResSegLib") for a in n.names}
    assert "histogram_mode" not in imported
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.05, 50000), rng.normal(1.6, 0.2, 8000), rng.uniform(0, 3, 5000)])
    assert intensity.histogram_mode(values) == pytest.approx(reference_histogram_mode(values), rel=1e-9)
    assert reference_histogram_mode(values) == pytest.approx(1.0, abs=0.02)
