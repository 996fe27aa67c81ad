"""Tests for LowResSegLib.images.geometry: separable resampling, square FOV, canonical orientation.

Conventions under test: slices are ``[N, H, W]`` (rows, columns); volumes are
``(k, j, i)`` arrays with a 4x4 IJK->LPS affine (``affine @ [i, j, k, 1]`` = LPS mm).
Asymmetric phantoms make any flipped or swapped axis visible.
"""

import numpy as np
import pytest

from LowResSegLib.images import geometry
from LowResSegLib.images.geometry import (
    apply_separable,
    area_matrix,
    area_resample,
    bilinear_matrix,
    bilinear_resample,
    canonical_transform,
    crop_from_square,
    from_canonical,
    pad_to_square,
    square_pad_widths,
    to_canonical,
)


# --------------------------------------------------------------------------- area resampling


@pytest.mark.parametrize(
    "shape_in, size",
    [
        ((240, 240), 32),  # integer ratio down
        ((240, 240), 256),  # non-integer up
        ((240, 240), 100),  # non-integer down
        ((7, 7), 3),
        ((3, 3), 7),
        ((7, 5), (3, 9)),  # non-square in and out
        ((40, 48), (48, 40)),
        ((1, 1), (4, 5)),
        ((5, 6), (1, 1)),
    ],
)
def test_area_constant_stays_constant(shape_in, size):
    x = np.full((2,) + shape_in, 3.25, np.float32)
    y = area_resample(x, size)
    h, w = (size, size) if np.isscalar(size) else size
    assert y.shape == (2, h, w)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 3.25, rtol=1e-6, atol=0)


@pytest.mark.parametrize("n_in, n_out", [(240, 32), (240, 256), (7, 3), (3, 7), (3, 2), (10, 10), (5, 1), (1, 5)])
def test_area_matrix_rows_and_columns(n_in, n_out):
    m = area_matrix(n_in, n_out, dtype=np.float64)
    assert m.shape == (n_out, n_in)
    assert (m >= 0).all()
    # rows sum to 1: every output is a weighted mean (constants stay constant)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # the output intervals tile the input exactly, so every input pixel contributes a total
    # weight of n_out / n_in: the image mean is preserved for ANY ratio, integer or not
    np.testing.assert_allclose(m.sum(axis=0), n_out / n_in, rtol=0, atol=1e-12)


def test_area_matrix_identity_for_same_size():
    np.testing.assert_array_equal(area_matrix(9, 9, dtype=np.float64), np.eye(9))


@pytest.mark.parametrize("shape_in, size", [((240, 240), 32), ((48, 40), (12, 8)), ((240, 240), 100),
                                            ((7, 11), (3, 4)), ((40, 48), (48, 56)), ((3, 5), (7, 2))])
def test_area_preserves_mean(shape_in, size):
    # Exact in float64 at the matrix level (test_area_matrix_rows_and_columns); area_resample
    # itself always uses float32 weights (area_matrix's default dtype), even for float64 data,
    # so the resampled mean agrees to float32 precision.
    rng = np.random.default_rng(0)
    x = rng.random((3,) + shape_in)
    y = area_resample(x, size)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-6)
    h, w = (size, size) if np.isscalar(size) else size
    exact = area_matrix(shape_in[0], h, np.float64) @ x @ area_matrix(shape_in[1], w, np.float64).T
    np.testing.assert_allclose(exact.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-12)


def test_area_exact_block_means():
    x = np.arange(16, dtype=np.float64).reshape(4, 4)
    y = area_resample(x, 2)
    expected = np.array([[np.mean([0, 1, 4, 5]), np.mean([2, 3, 6, 7])],
                         [np.mean([8, 9, 12, 13]), np.mean([10, 11, 14, 15])]])
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)


def test_area_exact_three_to_two():
    m = area_matrix(3, 2, dtype=np.float64)
    np.testing.assert_allclose(m, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], rtol=0, atol=1e-12)
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    a = np.array([[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]])
    np.testing.assert_allclose(area_resample(x, 2), a @ x @ a.T, rtol=0, atol=1e-5)  # float32 weights
    # one hand-computed value: top-left output = sum_ij a0i a0j x_ij
    tl = (4 / 9) * 1 + (2 / 9) * 2 + (2 / 9) * 4 + (1 / 9) * 5
    assert area_resample(x, 2)[0, 0] == pytest.approx(tl, abs=1e-6)


def test_area_upsample_integer_is_replication():
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y = area_resample(x, (4, 9))
    np.testing.assert_allclose(y, np.repeat(np.repeat(x, 2, axis=0), 3, axis=1), rtol=0, atol=1e-6)


def test_area_no_flip_no_swap_non_square():
    # 24 rows x 36 columns; a bright block in rows 0-1, columns 4-5 (top, left of centre)
    x = np.zeros((24, 36), np.float32)
    x[0:2, 4:6] = 1.0
    down = area_resample(x, (12, 18))  # factor 2 on both axes
    assert down.shape == (12, 18)
    assert np.unravel_index(np.argmax(down), down.shape) == (0, 2)
    expected = np.zeros((12, 18), np.float32)
    expected[0, 2] = 1.0
    np.testing.assert_allclose(down, expected, atol=1e-6)
    up = area_resample(down, (24, 36))
    np.testing.assert_allclose(up, x, atol=1e-6)

    # different factors per axis (rows /3, columns /4): the row and column scalings must not mix
    x = np.zeros((24, 36), np.float32)
    x[3:6, 8:12] = 1.0  # exactly one output pixel (row 1, column 2)
    down = area_resample(x, (8, 9))
    expected = np.zeros((8, 9), np.float32)
    expected[1, 2] = 1.0
    np.testing.assert_allclose(down, expected, atol=1e-6)
    np.testing.assert_allclose(area_resample(down, (24, 36)), x, atol=1e-6)

    # non-integer ratio: the mass stays in the top-left area, on the correct side of each axis
    x = np.zeros((30, 50), np.float32)
    x[0:2, 40:46] = 1.0  # top rows, right-hand columns
    y = area_resample(x, (7, 11))
    r, c = np.unravel_index(np.argmax(y), y.shape)
    assert r == 0
    assert c == int(43 * 11 / 50)  # centre column 43 maps to column 9
    assert y[:, :5].sum() == 0 and y[2:].sum() == 0
    assert y.sum() * (30 * 50) / (7 * 11) == pytest.approx(x.sum(), rel=1e-5)


def test_area_batch_and_leading_dims():
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 10, 14)).astype(np.float32)
    y = area_resample(x, (5, 7))
    assert y.shape == (2, 3, 5, 7)
    for a in range(2):
        for b in range(3):
            np.testing.assert_allclose(y[a, b], area_resample(x[a, b], (5, 7)), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------- bilinear


@pytest.mark.parametrize(
    "shape_in, size",
    [((17, 23), (40, 31)), ((40, 31), (9, 13)), ((240, 240), 32), ((32, 32), 256), ((5, 8), (8, 5)), ((1, 4), (3, 2))],
)
def test_bilinear_matches_torch(shape_in, size):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    x = rng.standard_normal((3,) + shape_in).astype(np.float32)
    hw = (size, size) if np.isscalar(size) else tuple(size)
    ref = F.interpolate(torch.from_numpy(x)[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0].numpy()
    y = bilinear_resample(x, size)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5)


def test_bilinear_matrix_rows_sum_to_one():
    for n_in, n_out in [(5, 12), (12, 5), (1, 3), (3, 1)]:
        np.testing.assert_allclose(bilinear_matrix(n_in, n_out, np.float64).sum(axis=1), 1.0, atol=1e-12)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("n_in, n_out", [(0, 3), (3, 0), (-1, 3), (3, -2)])
def test_non_positive_sizes_raise(n_in, n_out):
    with pytest.raises(ValueError):
        area_matrix(n_in, n_out)
    with pytest.raises(ValueError):
        bilinear_matrix(n_in, n_out)


@pytest.mark.parametrize("size", [0, -4, (0, 4), (4, 0), (-1, -1)])
def test_resample_non_positive_target_raises(size):
    x = np.ones((6, 6), np.float32)
    with pytest.raises(ValueError):
        area_resample(x, size)
    with pytest.raises(ValueError):
        bilinear_resample(x, size)


def test_apply_separable_shape_errors():
    with pytest.raises(ValueError):
        apply_separable(np.ones(5), area_matrix(5, 2), area_matrix(5, 2))
    with pytest.raises(ValueError):
        apply_separable(np.ones((4, 6)), area_matrix(6, 2), area_matrix(4, 2))  # rows/cols swapped


# --------------------------------------------------------------------------- square FOV


@pytest.mark.parametrize("h, w", [(7, 4), (4, 7), (40, 48), (48, 40), (5, 5), (6, 3), (3, 6)])
def test_pad_crop_round_trip_centred(h, w):
    rng = np.random.default_rng(3)
    x = rng.random((2, h, w)).astype(np.float32) + 1.0  # strictly positive so padding is visible
    sq = pad_to_square(x)
    s = max(h, w)
    assert sq.shape == (2, s, s)
    (t, b), (l, r) = square_pad_widths(h, w)
    assert t + b == s - h and l + r == s - w
    # centred: the two sides differ by at most one pixel, the extra one at the bottom/right
    assert t == (s - h) // 2 and l == (s - w) // 2
    assert 0 <= b - t <= 1 and 0 <= r - l <= 1
    nonzero = np.argwhere(sq[0] != 0)
    assert tuple(nonzero.min(0)) == (t, l)
    assert tuple(nonzero.max(0)) == (t + h - 1, l + w - 1)
    np.testing.assert_array_equal(sq[:, t:t + h, l:l + w], x)
    back = crop_from_square(sq, h, w)
    np.testing.assert_array_equal(back, x)


def test_pad_to_square_examples():
    x = np.ones((1, 4, 7))
    assert square_pad_widths(4, 7) == ((1, 2), (0, 0))
    assert square_pad_widths(7, 4) == ((0, 0), (1, 2))
    assert square_pad_widths(40, 48) == ((4, 4), (0, 0))
    sq = pad_to_square(x)
    np.testing.assert_array_equal(sq[0, :, 0], [0, 1, 1, 1, 1, 0, 0])
    y = np.ones((3, 3))
    assert pad_to_square(y) is y


# --------------------------------------------------------------------------- canonical orientation

SHAPE_KJI = (6, 9, 11)  # k, j, i
CUBE = dict(i=(1, 3), j=(5, 7), k=(0, 2))


def _volume():
    """Every voxel unique (so any misplacement shows) plus an off-centre bright cube."""
    v = np.arange(np.prod(SHAPE_KJI), dtype=np.float64).reshape(SHAPE_KJI)
    (i0, i1), (j0, j1), (k0, k1) = CUBE["i"], CUBE["j"], CUBE["k"]
    v[k0:k1, j0:j1, i0:i1] += 10000.0
    return v


def _affine(direction, spacing=(1.0, 1.0, 1.0), origin=(10.0, -20.0, 35.0)):
    a = np.eye(4)
    a[:3, :3] = np.asarray(direction, dtype=np.float64) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _rot(axis, deg):
    t = np.deg2rad(deg)
    c, s = np.cos(t), np.sin(t)
    if axis == 0:
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    if axis == 1:
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


# columns are the LPS directions of voxel axes i, j, k
CORONAL = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)  # i->L, j->I, k->P
SAGITTAL = np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], dtype=float)  # i->P, j->I, k->R
RAS = np.diag([-1.0, -1.0, 1.0])

AFFINES = {
    "identity": (_affine(np.eye(3)), False),
    "ras_nifti": (_affine(RAS), False),
    "coronal": (_affine(CORONAL, (0.8, 0.8, 3.0)), False),
    "sagittal": (_affine(SAGITTAL, (1.0, 1.2, 2.5)), False),
    "flip_k": (_affine(np.diag([1.0, 1.0, -1.0]), (1.0, 1.0, 3.0)), False),
    "anisotropic": (_affine(np.eye(3), (0.5, 0.75, 3.0)), False),
    "oblique_x20": (_affine(_rot(0, 20.0), (1.0, 1.0, 3.0)), True),
    "oblique_mixed": (_affine(_rot(2, -25.0) @ _rot(1, 15.0) @ RAS, (0.9, 1.1, 2.0)), True),
    "oblique_coronal": (_affine(_rot(0, 18.0) @ CORONAL, (1.0, 1.0, 4.0)), True),
}


def _world(affine, ijk):
    """LPS points [N, 3] of voxel indices [N, 3] (i, j, k)."""
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _all_ijk(shape_kji):
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    return np.stack([i.ravel(), j.ravel(), k.ravel()], 1).astype(np.float64)


def _cube_centroid_world(arr, affine):
    kji = np.argwhere(arr >= 10000.0)
    return _world(affine, kji[:, ::-1].astype(np.float64)).mean(0)


@pytest.mark.parametrize("name", sorted(AFFINES))
def test_canonical_round_trip_and_world_positions(name):
    affine, oblique = AFFINES[name]
    vol = _volume()
    can, can_aff = to_canonical(vol, affine)
    assert can.flags["C_CONTIGUOUS"]
    assert sorted(can.shape) == sorted(vol.shape)

    # exact inverse
    back = from_canonical(can, affine)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back, vol)

    # i->L, j->P, k->S: the new 3x3 has a positive diagonal (exactly diagonal if not oblique)
    m = can_aff[:3, :3]
    assert (np.diag(m) > 0).all()
    if not oblique:
        np.testing.assert_allclose(m, np.diag(np.diag(m)), atol=1e-12)
    else:
        for a in range(3):  # each canonical voxel axis is closest to its own LPS axis
            assert np.argmax(np.abs(m[:, a])) == a
    # voxel sizes travel with the axes
    np.testing.assert_allclose(sorted(np.linalg.norm(m, axis=0)), sorted(np.linalg.norm(affine[:3, :3], axis=0)))
    assert can_aff[3].tolist() == [0, 0, 0, 1]

    # every source voxel keeps its LPS position: the canonical voxel at the same world
    # point (through the new affine) holds the same value
    ijk = _all_ijk(vol.shape)
    world = _world(affine, ijk)
    inv = np.linalg.inv(can_aff)
    ijk_can = world @ inv[:3, :3].T + inv[:3, 3]
    idx = np.rint(ijk_can).astype(np.int64)
    np.testing.assert_allclose(ijk_can, idx, atol=1e-9)
    assert (idx >= 0).all() and (idx < np.array(can.shape[::-1])).all()
    src_vals = vol[ijk[:, 2].astype(int), ijk[:, 1].astype(int), ijk[:, 0].astype(int)]
    np.testing.assert_array_equal(can[idx[:, 2], idx[:, 1], idx[:, 0]], src_vals)

    # a few voxels spelled out: canonical voxel -> world == source voxel -> world
    for i, j, k in [(0, 0, 0), (10, 8, 5), (2, 6, 1), (7, 1, 3)]:
        v = vol[k, j, i]
        kc, jc, ic = np.argwhere(can == v)[0]
        np.testing.assert_allclose(can_aff @ [ic, jc, kc, 1], affine @ [i, j, k, 1], atol=1e-9)

    # the bright cube does not move in world space
    np.testing.assert_allclose(_cube_centroid_world(can, can_aff), _cube_centroid_world(vol, affine), atol=1e-9)


def test_canonical_identity_is_a_no_op():
    vol = _volume()
    aff = _affine(np.eye(3), (0.5, 0.75, 3.0))
    assert canonical_transform(aff) == ((0, 1, 2), (1, 1, 1))
    can, can_aff = to_canonical(vol, aff)
    np.testing.assert_array_equal(can, vol)
    np.testing.assert_array_equal(can_aff, aff)


def test_canonical_ras_flips_i_and_j():
    vol = _volume()
    aff = _affine(RAS)
    assert canonical_transform(aff) == ((0, 1, 2), (-1, -1, 1))
    can, can_aff = to_canonical(vol, aff)
    np.testing.assert_array_equal(can, vol[:, ::-1, ::-1])
    # the canonical origin is the world point of source voxel (i, j, k) = (10, 8, 0)
    np.testing.assert_allclose(can_aff[:3, 3], (aff @ [10, 8, 0, 1])[:3])
    np.testing.assert_allclose(can_aff[:3, :3], np.eye(3))


def test_canonical_coronal_shape_and_cube():
    vol = _volume()
    aff = _affine(CORONAL, (0.8, 0.8, 3.0))
    assert canonical_transform(aff) == ((0, 2, 1), (1, -1, 1))
    can, can_aff = to_canonical(vol, aff)
    # i stays i (11), k (P, 6 slices) becomes j, j (I->S after a flip, 9) becomes k
    assert can.shape == (9, 6, 11)
    np.testing.assert_allclose(np.diag(can_aff[:3, :3]), [0.8, 3.0, 0.8])
    # source cube: i in [1,3), j in [5,7), k in [0,2)  ->  canonical i [1,3), j [0,2), k = 8-j in [2,4)
    kji = np.argwhere(can >= 10000.0)
    assert set(kji[:, 2]) == {1, 2} and set(kji[:, 1]) == {0, 1} and set(kji[:, 0]) == {2, 3}


def test_from_canonical_of_a_canonical_label():
    # something made on the canonical grid (e.g. a predicted mask) goes back to the source grid
    vol = _volume()
    aff, _ = AFFINES["oblique_mixed"]
    can, _ = to_canonical(vol, aff)
    mask_can = (can >= 10000.0).astype(np.uint8)
    mask_src = from_canonical(mask_can, aff)
    assert mask_src.dtype == np.uint8
    np.testing.assert_array_equal(mask_src, (vol >= 10000.0).astype(np.uint8))


def test_geometry_all_exports_exist():
    for name in geometry.__all__:
        assert hasattr(geometry, name)


@pytest.mark.parametrize("shape_in, size", [((3, 240, 240), 32), ((2, 240, 256), (32, 64)), ((4, 155, 240), 32),
                                            ((1, 256, 256), 16), ((2, 240, 240), 256), ((2, 3, 30, 20), (10, 7)),
                                            ((2, 97, 101), 32)])
def test_area_by_repeating_block_equals_the_dense_matrix(shape_in, size):
    """Sizes that share a factor take the block path; it must give the dense matrix's numbers (float32 rounding)."""
    rng = np.random.default_rng(7)
    x = (rng.random(shape_in) * 5).astype(np.float32)
    got = area_resample(x, size)
    h, w = (size, size) if np.isscalar(size) else size
    dense = apply_separable(x, area_matrix(shape_in[-2], h), area_matrix(shape_in[-1], w))
    assert got.shape == dense.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, dense, rtol=1e-6, atol=1e-6)
    assert geometry._area_block(240, 32, "<f4").shape == (2, 15)  # 240 -> 32: 16 blocks of 15 -> 2
    assert geometry._area_block(97, 32, "<f4") is None  # nothing shared: the dense product
    np.testing.assert_allclose(area_resample(x.astype(np.float64), size), dense, rtol=1e-5, atol=1e-5)
