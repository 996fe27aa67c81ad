"""LowResSegLib.images.metrics: analytic values, BraTS empty-mask conventions, and medpy parity."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from LowResSegLib.images import metrics as M

medpy_binary = pytest.importorskip("medpy.metric.binary")

ANISO = (3.0, 1.0, 0.8)


def _ellipsoid(shape, centre, radii_mm, spacing):
    """Physical-space ball/ellipsoid, so anisotropic spacing really changes the voxel shape."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    acc = 0.0
    for g, c, r, s in zip(grids, centre, radii_mm, spacing):
        acc = acc + ((g - c) * s / r) ** 2
    return acc <= 1.0


def _box(shape, lo, hi, dtype=bool):
    m = np.zeros(shape, dtype=dtype)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return m


def _pairs():
    """(pred, ref, spacing) cases covering 3-D anisotropic and 2-D, incl. masks on the array border."""
    s3 = (24, 40, 48)
    yield (_ellipsoid(s3, (11, 19, 22), (21, 11, 9), ANISO),
           _ellipsoid(s3, (13, 22, 26), (18, 9, 10), ANISO), ANISO)
    yield (_box(s3, (2, 5, 6), (10, 25, 30)), _box(s3, (4, 9, 6), (12, 25, 34)), ANISO)
    # Touching the array edge: medpy's erosion treats outside as background.
    yield (_box(s3, (0, 0, 0), (8, 20, 30)), _box(s3, (0, 3, 0), (10, 20, 48)), ANISO)
    yield (_ellipsoid(s3, (5, 10, 10), (9, 6, 5), ANISO),
           _ellipsoid(s3, (18, 30, 36), (9, 6, 5), ANISO), ANISO)  # disjoint
    s2 = (64, 80)
    yield (_ellipsoid(s2, (30, 40), (15, 15), (1.0, 1.0)),
           _ellipsoid(s2, (34, 37), (12, 12), (1.0, 1.0)), (1.0, 1.0))
    yield (_ellipsoid(s2, (30, 40), (20, 14), (0.7, 1.3)),
           _ellipsoid(s2, (33, 44), (18, 16), (0.7, 1.3)), (0.7, 1.3))
    rng = np.random.default_rng(0)
    from scipy import ndimage
    blob = lambda: ndimage.binary_opening(rng.random((20, 30, 30)) > 0.55, iterations=1)
    yield blob(), blob(), (2.0, 0.9, 1.1)


@pytest.mark.parametrize("case", list(_pairs()), ids=lambda c: f"{c[0].ndim}d-{c[0].shape}")
def test_matches_medpy(case):
    pred, ref, sp = case
    assert pred.any() and ref.any()
    assert M.dice(pred, ref) == pytest.approx(medpy_binary.dc(pred, ref), abs=1e-12)
    assert M.iou(pred, ref) == pytest.approx(medpy_binary.jc(pred, ref), abs=1e-12)
    assert M.hd95(pred, ref, sp) == pytest.approx(medpy_binary.hd95(pred, ref, voxelspacing=sp), rel=1e-6)  # SimpleITK distances are float32
    # Isotropic default and symmetry.
    assert M.hd95(pred, ref) == pytest.approx(medpy_binary.hd95(pred, ref), rel=1e-6)
    assert M.hd95(ref, pred, sp) == pytest.approx(M.hd95(pred, ref, sp), rel=1e-6)


def test_identical_masks():
    a = _ellipsoid((20, 30, 30), (10, 15, 15), (20, 8, 8), ANISO)
    assert M.dice(a, a) == 1.0
    assert M.iou(a, a) == 1.0
    assert M.hd95(a, a, ANISO) == 0.0


def test_cube_shifted_along_thick_axis():
    a = _box((20, 20, 20), (5, 5, 5), (13, 13, 13))
    b = np.roll(a, 2, axis=0)
    assert M.hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.dice(a, b) == pytest.approx(0.75)  # 6/8 slices overlap
    assert M.iou(a, b) == pytest.approx(6 / 10)


def test_disjoint():
    a = _box((10, 10), (0, 0), (3, 3))
    b = _box((10, 10), (6, 6), (9, 9))
    assert M.dice(a, b) == 0.0
    assert M.iou(a, b) == 0.0
    assert M.hd95(a, b) > 0


def test_integer_masks_nonzero_is_foreground():
    a = _box((12, 12, 12), (2, 2, 2), (8, 8, 8), dtype=np.uint8) * 3
    b = _box((12, 12, 12), (3, 2, 2), (9, 8, 8), dtype=np.int64) * 2
    ab, bb = a != 0, b != 0
    assert M.dice(a, b) == M.dice(ab, bb)
    assert M.iou(a, b) == M.iou(ab, bb)
    assert M.hd95(a, b, ANISO) == M.hd95(ab, bb, ANISO)
    assert M.volume_ml(a) == pytest.approx(0.216)


def test_volume_ml():
    m = _box((20, 20, 20), (0, 0, 0), (10, 10, 10))
    assert M.volume_ml(m, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert M.volume_ml(m, (2.0, 1.0, 1.0)) == pytest.approx(2.0)
    assert M.volume_ml(m) == pytest.approx(1.0)
    assert M.volume_ml(np.zeros((4, 4)), (1.0, 1.0)) == 0.0


def test_diagonal_mm():
    assert M.diagonal_mm((240, 240, 155), (1.0, 1.0, 1.0)) == pytest.approx(373.13, abs=0.01)
    assert M.diagonal_mm((240, 240, 155)) == pytest.approx(373.13, abs=0.01)
    assert M.diagonal_mm((3, 4), (1.0, 1.0)) == pytest.approx(5.0)
    assert M.diagonal_mm((10, 10, 10), (3.0, 4.0, 12.0)) == pytest.approx(130.0)


def test_empty_conventions():
    shape = (240, 240, 155)
    empty = np.zeros(shape, dtype=bool)
    full = _box(shape, (100, 100, 70), (110, 110, 80))
    assert M.dice(empty, empty) == 1.0
    assert M.iou(empty, empty) == 1.0
    assert M.hd95(empty, empty) == 0.0
    for p, r in ((empty, full), (full, empty)):
        assert M.dice(p, r) == 0.0
        assert M.iou(p, r) == 0.0
        assert M.hd95(p, r) == pytest.approx(373.13, abs=0.01)
    assert M.hd95(empty, full, (2.0, 1.0, 1.0)) == pytest.approx(
        M.diagonal_mm(shape, (2.0, 1.0, 1.0)))


@pytest.mark.parametrize("fn", [M.dice, M.iou, M.hd95])
def test_shape_mismatch_raises(fn):
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))


def test_spacing_length_raises():
    a = _box((6, 6, 6), (1, 1, 1), (4, 4, 4))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.volume_ml(a, (1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        M.diagonal_mm((6, 6), (1.0, 1.0, 1.0))
    # Even when an empty mask short-circuits the distance computation.
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(np.zeros((6, 6, 6)), a, (1.0, 1.0))


def test_imports_without_scipy():
    code = ("import sys; sys.modules['scipy'] = None; "
            "from LowResSegLib.images import metrics as M; import numpy as np; "
            "assert M.dice(np.ones((2, 2)), np.ones((2, 2))) == 1.0")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(Path(__file__).resolve().parents[1]))
