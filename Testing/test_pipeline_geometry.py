"""Acceptance test for geometry: file -> read_volume -> pipeline.segment -> write_labels -> file.

An asymmetric phantom (an off-centre bright cube inside a dimmer "brain" box, in a
non-cubic volume whose axial slices are not square, so the pipeline pads them) is
defined once on a canonical grid (k, j, i) = (S, P, L). Each case stores it with a
different voxel layout and orientation (RAS NIfTI with a swap and flips, LPS NRRD, a
sagittal NRRD, a DICOM series whose slices ITK reorders, an oblique MetaImage, 3 mm
slices) together with the truth mask in the same format and geometry.

The segmenting model is a real ONNX graph run by onnxruntime (``LocalEngine``): with
r = R = the padded square size, area and bilinear resampling are identities and the
model is a pure threshold, so the mask must land on exactly the truth voxels
(array_equal), and at the truth's world (LPS) position. A 16 -> 64 model (r < R) must
still overlap the truth well, while every mirrored / transposed truth scores badly, so
a flipped or swapped axis cannot pass.
"""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.images.geometry import Volume
from LowResSegLib.images.io import read_volume, write_labels
from LowResSegLib.images.metrics import dice
from LowResSegLib.inference.pipeline import prepare_slices, segment

from model_factory import add_threshold_model, add_untrained_model
from helpers import cube_phantom as phantom, rotation

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# ---- the exact phantom: axial slices 40 (P) x 48 (L): padded to a 48 square
SHAPE = (12, 40, 48)  # canonical (k, j, i) = (S, P, L)
BRAIN = (slice(1, 11), slice(4, 36), slice(5, 43))
CUBE = (slice(6, 10), slice(8, 16), slice(28, 38))  # off-centre on every axis; its mirror never overlaps it
SQUARE = 48
SPACING = (0.9, 1.1, 2.5)  # canonical (L, P, S) voxel size in mm: all different

# ---- the r < R phantom: 64 x 64 axial slices (no padding, so a transpose keeps the shape)
SHAPE64 = (10, 64, 64)
BRAIN64 = (slice(1, 9), slice(4, 60), slice(6, 58))
CUBE64 = (slice(5, 9), slice(8, 24), slice(32, 44))  # its mirrors, transpose and anti-transpose barely overlap it


def canonical_affine(spacing, origin, rot=None):
    """Canonical (i, j, k) -> LPS: i along L, j along P, k along S (optionally rotated)."""
    a = np.eye(4)
    a[:3, :3] = (np.eye(3) if rot is None else rot) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def relayout(canon, canon_affine, axes, flips):
    """The same voxels (same world positions) stored with another voxel-axis order and direction.

    File voxel axis a (0=i, 1=j, 2=k) runs along canonical axis ``axes[a]``, reversed when
    ``flips[a]``. Returns (file array (k, j, i), file affine).
    """
    n_c = canon.shape[::-1]  # (ni, nj, nk)
    m = np.zeros((4, 4))
    m[3, 3] = 1.0
    for a in range(3):
        c = axes[a]
        if flips[a]:
            m[c, a], m[c, 3] = -1.0, n_c[c] - 1
        else:
            m[c, a] = 1.0
    n_f = [n_c[axes[a]] for a in range(3)]
    kf, jf, if_ = np.indices((n_f[2], n_f[1], n_f[0]))
    ijk_f = np.stack([if_.ravel(), jf.ravel(), kf.ravel()])
    ijk_c = (m[:3, :3] @ ijk_f + m[:3, 3:]).round().astype(int)
    arr = canon[ijk_c[2], ijk_c[1], ijk_c[0]].reshape(n_f[2], n_f[1], n_f[0])
    return arr, canon_affine @ m


def world_centroid(mask_kji, affine):
    ijk = np.argwhere(np.asarray(mask_kji) > 0).mean(axis=0)[::-1]
    return (np.asarray(affine) @ np.append(ijk, 1.0))[:3]


# --------------------------------------------------------------------------- writers (independent of io.py)


def write_nifti(path, data_kji, lps_affine):
    nib = pytest.importorskip("nibabel")
    ras = LPS_FROM_RAS @ lps_affine
    img = nib.Nifti1Image(np.asarray(data_kji).transpose(2, 1, 0), ras)  # nibabel is (i, j, k)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    nib.save(img, str(path))
    return str(path)


def write_sitk(path, data_kji, lps_affine):
    img = sitk.GetImageFromArray(np.asarray(data_kji))
    m = np.asarray(lps_affine)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    img.SetSpacing([float(s) for s in spacing])
    img.SetDirection([float(v) for v in (m[:3, :3] / spacing).ravel()])
    img.SetOrigin([float(v) for v in m[:3, 3]])
    sitk.WriteImage(img, str(path), True)
    return str(path)


def write_dicom(path, data_kji, lps_affine):
    from LowResSegLib.images.dicomsynth import write_mr_series

    write_mr_series(Volume(np.asarray(data_kji), lps_affine), str(path), seed=7)
    return str(path)


WRITERS = {"nifti": (write_nifti, ".nii.gz"), "nii": (write_nifti, ".nii"), "nrrd": (write_sitk, ".nrrd"),
           "mha": (write_sitk, ".mha"), "dicom": (write_dicom, "")}

# name: (format, file axes, flips, canonical spacing (L, P, S), rotation)
CASES = {
    # RAS NIfTI: file i runs A (canonical P reversed), j runs L, k runs inferior: a swap and two flips
    "nifti-ras-swap-flips": ("nifti", (1, 0, 2), (True, False, True), SPACING, None),
    # LPS NRRD: i runs right (reversed), the rest as canonical
    "nrrd-lps-flip": ("nrrd", (0, 1, 2), (True, False, False), SPACING, None),
    # sagittal NRRD: slices along L, rows run inferior, columns run P
    "nrrd-sagittal": ("nrrd", (1, 2, 0), (False, True, False), SPACING, None),
    # DICOM: rows run anterior, so the slice normal is inferior while k runs superior:
    # ITK reverses the slice order on reading
    "dicom-reordered": ("dicom", (0, 1, 2), (False, True, False), SPACING, None),
    # oblique: 20 degrees about L (an AC-PC-like tilt), i reversed
    "mha-oblique-20deg": ("mha", (0, 1, 2), (True, False, False), SPACING, rotation(0, 20.0)),
    # oblique DICOM with 3 mm slices: 20 degrees about S, rows and columns swapped, i reversed
    "dicom-oblique-3mm": ("dicom", (1, 0, 2), (True, False, False), (0.8, 0.8, 3.0), rotation(2, 20.0)),
    # 3 mm slices (and 1 x 1 mm in-plane), i and j swapped, uncompressed NIfTI
    "nii-3mm-slices": ("nii", (1, 0, 2), (False, False, False), (1.0, 1.0, 3.0), None),
}
ORIGIN = (-31.5, 17.25, -40.0)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("geometry-models"))
    add_threshold_model(root, "threshold-48to48", r=SQUARE, big_r=SQUARE, threshold=1.5)
    add_threshold_model(root, "threshold-16to64", r=16, big_r=64, threshold=2.5)
    return root


@pytest.fixture(scope="module")
def exact_engine(repo):
    return LocalEngine("threshold-48to48", repo, threads=1)


@pytest.fixture(scope="module")
def coarse_engine(repo):
    return LocalEngine("threshold-16to64", repo, threads=1)


def test_relayout_helper_keeps_world_positions():
    """Self-check of the test's own relayout: every voxel keeps its value at its world position."""
    img, _ = phantom(SHAPE, BRAIN, CUBE)
    img = img + np.arange(img.size, dtype=np.int16).reshape(img.shape) % 7  # every voxel distinguishable-ish
    ca = canonical_affine(SPACING, ORIGIN, rotation(0, 20.0))
    for axes, flips in [((1, 0, 2), (True, False, True)), ((1, 2, 0), (False, True, False))]:
        arr, aff = relayout(img, ca, axes, flips)
        rng = np.random.default_rng(0)
        for _ in range(50):
            kf, jf, if_ = [int(rng.integers(n)) for n in arr.shape]
            world = aff @ [if_, jf, kf, 1.0]
            i, j, k = np.round(np.linalg.solve(ca, world)[:3]).astype(int)
            assert arr[kf, jf, if_] == img[k, j, i]


def write_case(folder, name):
    fmt, axes, flips, spacing, rot = CASES[name]
    writer, ext = WRITERS[fmt]
    img, truth = phantom(SHAPE, BRAIN, CUBE)
    ca = canonical_affine(spacing, ORIGIN, rot)
    f_img, f_aff = relayout(img, ca, axes, flips)
    f_truth, _ = relayout(truth, ca, axes, flips)
    image_path = writer(os.path.join(folder, "image" + ext), f_img, f_aff)
    truth_path = writer(os.path.join(folder, "truth" + ext), f_truth, f_aff)
    cube_world = world_centroid(truth, ca)
    return image_path, truth_path, f_img, f_truth, f_aff, cube_world


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_round_trip(tmp_path, exact_engine, name):
    fmt = CASES[name][0]
    image_path, truth_path, f_img, f_truth, f_aff, cube_world = write_case(str(tmp_path), name)

    vol = read_volume(image_path)
    assert vol.meta["warnings"] == []
    np.testing.assert_allclose(vol.spacing, np.linalg.norm(f_aff[:3, :3], axis=0), atol=1e-4)
    if fmt != "dicom":  # ITK keeps the file's voxel order for these formats
        np.testing.assert_array_equal(vol.array, f_img)
        np.testing.assert_allclose(vol.affine, f_aff, atol=1e-4)

    # the model sees the same canonical (axial LPS) slices whatever the file layout
    canon_img, _ = phantom(SHAPE, BRAIN, CUBE)
    ref = prepare_slices(Volume(canon_img.astype(np.float32), canonical_affine(CASES[name][3], ORIGIN)),
                         exact_engine.card)  # normalisation works in mm: same spacing
    got = prepare_slices(vol, exact_engine.card)
    ref_slices, ref_shape, slices, shape = ref.slices, ref.shape, got.slices, got.shape
    assert shape == ref_shape == SHAPE and slices.shape == (SHAPE[0], SQUARE, SQUARE)
    np.testing.assert_array_equal(slices, ref_slices)

    seg = segment(vol, exact_engine, chunk=5)
    assert seg.labels.dtype == np.uint8 and seg.labels.shape == vol.shape
    ext = ".nii.gz" if fmt == "dicom" else WRITERS[fmt][1]  # DICOM labels go to NIfTI (DICOM-SEG: test_cli_segment)
    out = os.path.join(str(tmp_path), "labels" + ext)
    write_labels(seg.labels, vol, out)

    back, truth = read_volume(out), read_volume(truth_path)
    assert back.shape == truth.shape == vol.shape
    np.testing.assert_array_equal((back.array > 0).astype(np.uint8), (truth.array > 0).astype(np.uint8))
    np.testing.assert_array_equal(seg.labels, (truth.array > 0).astype(np.uint8))
    np.testing.assert_allclose(back.affine, truth.affine, atol=1e-4)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-4)
    # and the mask sits where the cube is in the world (catches any RAS/LPS or reader mix-up)
    np.testing.assert_allclose(world_centroid(back.array, back.affine), cube_world, atol=1e-3)
    np.testing.assert_allclose(world_centroid(truth.array, truth.affine), cube_world, atol=1e-3)
    assert int(np.count_nonzero(back.array)) == int(np.count_nonzero(f_truth))
    if name == "dicom-reordered":
        # ITK read the series slice-reversed relative to how it was written
        np.testing.assert_array_equal(seg.labels, f_truth[::-1])


def mirrors_and_transpose(truth):
    yield "flip k", truth[::-1]
    yield "flip j", truth[:, ::-1]
    yield "flip i", truth[:, :, ::-1]
    yield "transpose j/i", truth.transpose(0, 2, 1)
    yield "anti-transpose j/i", truth[:, ::-1, ::-1].transpose(0, 2, 1)


@pytest.mark.parametrize("fmt, axes, flips", [
    ("nifti", (1, 0, 2), (True, False, True)),
    ("dicom", (0, 1, 2), (False, True, False)),
])
def test_low_resolution_model_round_trip(tmp_path, coarse_engine, fmt, axes, flips):
    img, truth = phantom(SHAPE64, BRAIN64, CUBE64)
    ca = canonical_affine((0.9, 0.9, 3.0), ORIGIN)
    f_img, f_aff = relayout(img, ca, axes, flips)
    f_truth, _ = relayout(truth, ca, axes, flips)
    writer, ext = WRITERS[fmt]
    image_path = writer(os.path.join(str(tmp_path), "image" + ext), f_img, f_aff)
    truth_path = writer(os.path.join(str(tmp_path), "truth" + ext), f_truth, f_aff)

    vol = read_volume(image_path)
    seg = segment(vol, coarse_engine)
    out = os.path.join(str(tmp_path), "labels.nii.gz")
    write_labels(seg.labels, vol, out)
    back = (read_volume(out).array > 0).astype(np.uint8)
    t = (read_volume(truth_path).array > 0).astype(np.uint8)

    score = dice(back, t)
    assert score > 0.9, score
    for what, wrong in mirrors_and_transpose(t):
        assert dice(back, wrong) < 0.5 * score, "%s scores %.3f (true %.3f)" % (what, dice(back, wrong), score)
    np.testing.assert_allclose(world_centroid(back, vol.affine), world_centroid(truth, ca), atol=1.0)


def test_thick_sagittal_acquisition_gets_square_pixels(tmp_path, exact_engine):
    """5 mm sagittal slices: axial slices have 5 x 1 mm pixels, resampled to square ones and back."""
    img, truth = phantom(SHAPE, BRAIN, CUBE)
    ca = canonical_affine((5.0, 1.0, 1.0), ORIGIN)  # L (columns of an axial slice) is the 5 mm axis
    f_img, f_aff = relayout(img, ca, (1, 2, 0), (False, True, False))  # stored sagittal, as a scanner writes it
    vol = read_volume(write_sitk(os.path.join(str(tmp_path), "sag.nrrd"), f_img, f_aff))
    prepared = prepare_slices(vol, exact_engine.card)
    assert prepared.shape == SHAPE and prepared.grid == (SHAPE[1], 5 * SHAPE[2])  # 40 x 240 square pixels
    assert prepared.slices.shape == (SHAPE[0], 240, 240)
    seg = segment(vol, exact_engine)
    t = relayout(truth, ca, (1, 2, 0), (False, True, False))[0]
    assert seg.labels.shape == vol.shape and dice(seg.labels, t) > 0.6  # 240 mm FOV at 48 px: 5 mm pixels
    for what, wrong in mirrors_and_transpose(t):
        if wrong.shape == t.shape:
            assert dice(seg.labels, wrong) < 0.5, what
    np.testing.assert_allclose(world_centroid(seg.labels, vol.affine), world_centroid(truth, ca), atol=1.0)


# --------------------------------------------------------------------------- run control


def canonical_volume():
    img, truth = phantom(SHAPE, BRAIN, CUBE)
    return Volume(img.astype(np.float32), canonical_affine(SPACING, ORIGIN)), truth


def test_cancel_after_first_chunk_returns_none(exact_engine):
    vol, _ = canonical_volume()
    calls = []

    def cancel():
        return len(calls) >= 1

    result = segment(vol, exact_engine, chunk=4, progress=lambda d, t: calls.append((d, t)), cancel=cancel)
    assert result is None
    assert calls == [(4, SHAPE[0])]
    assert segment(vol, exact_engine, chunk=4, cancel=lambda: True) is None


def test_progress_timings_and_labels(exact_engine):
    vol, truth = canonical_volume()
    calls = []
    seg = segment(vol, exact_engine, chunk=5, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(5, 12), (10, 12), (12, 12)]
    done = [d for d, _ in calls]
    assert done == sorted(done) and len(set(done)) == len(done) and calls[-1] == (SHAPE[0], SHAPE[0])
    np.testing.assert_array_equal(seg.labels, truth)
    t = seg.timings
    for key in ("slices", "preprocess_ms", "infer_ms", "postprocess_ms", "total_s", "ms_per_slice", "volumes_per_s"):
        assert key in t and t[key] > 0, (key, t.get(key))
    assert t["slices"] == SHAPE[0]
    assert seg.probabilities is not None and seg.probabilities.shape == SHAPE
    assert seg.volume_ml() == pytest.approx(truth.sum() * np.prod(SPACING) / 1000.0)


@pytest.fixture(scope="module")
def network_engine(tmp_path_factory):
    """A real exported network (random weights): convolutions, not just a threshold."""
    repo = str(tmp_path_factory.mktemp("untrained"))
    name = os.path.basename(add_untrained_model(repo, "elunet", "jhead", r=16, big_r=64, width=2))
    return LocalEngine(name, repo, threads=1)


def test_local_run_is_deterministic(network_engine, coarse_engine):
    img, _ = phantom(SHAPE64, BRAIN64, CUBE64)
    vol = Volume(img.astype(np.float32), canonical_affine((0.9, 0.9, 3.0), ORIGIN))
    for eng in (network_engine, coarse_engine):
        a, b = segment(vol, eng, chunk=4), segment(vol, eng, chunk=4)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
