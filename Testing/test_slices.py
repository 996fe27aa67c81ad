"""Tests for LowResSegLib.training.slices (data specs, slice cache, sampling, batches).

No phantoms here: a tiny ``folder:`` dataset is written with SimpleITK into tmp_path.
Cases are (k, j, i) = (10, 40, 48) volumes (in-plane 40 rows x 48 columns, padded to
48 x 48) with a bright off-centre disc label in some slices.
"""

import os

import numpy as np
import pytest

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("tqdm")

from LowResSegLib.images.geometry import area_resample  # noqa: E402
from LowResSegLib.training import slices  # noqa: E402
from LowResSegLib.training.slices import SliceCache, make_batch, parse_data_spec  # noqa: E402

SHAPE = (10, 40, 48)  # k, j, i
DISC_SLICES = range(3, 7)  # k with tumour
DISC_CENTRE = (12, 30)  # (j, i) in LPS/canonical voxel order: upper right of the slice
DISC_R = 5
PAD_TOP = 4  # (48 - 40) // 2


def _brain_and_disc():
    k, j, i = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    brain = ((j - 19.5) / 17.0) ** 2 + ((i - 23.5) / 21.0) ** 2 < 1.0
    disc = ((j - DISC_CENTRE[0]) ** 2 + (i - DISC_CENTRE[1]) ** 2 <= DISC_R ** 2) & np.isin(k, DISC_SLICES)
    return brain, disc & brain


def _case_arrays(seed):
    rng = np.random.default_rng(seed)
    brain, disc = _brain_and_disc()
    img = np.where(brain, 100.0 + 10.0 * rng.standard_normal(SHAPE), 0.0)
    img = np.where(disc, img + 80.0, img).astype(np.float32)
    return img, disc.astype(np.uint8)


def _write(root, case_id, img, lab, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), spacing=(1.0, 1.0, 1.0),
           origin=(0.0, 0.0, 0.0)):
    for sub, arr in (("images", img), ("labels", lab)):
        im = sitk.GetImageFromArray(arr)
        im.SetDirection([float(v) for v in direction])
        im.SetSpacing(spacing)
        im.SetOrigin(origin)
        os.makedirs(root / sub, exist_ok=True)
        sitk.WriteImage(im, str(root / sub / (case_id + ".nii.gz")))


def make_dataset(root):
    """Three cases:

    * ``a_lps``: identity direction;
    * ``b_ras``: the same anatomy stored RAS-style (direction diag(-1, -1, 1), array
      flipped in i and j, origin at the far corner) -- physically identical to ``a_lps``;
    * ``c_thick``: 3 mm slices, other noise, tumour-free end slices empty (all zero).
    """
    img, lab = _case_arrays(0)
    _write(root, "a_lps", img, lab, spacing=(1.0, 1.0, 1.0), origin=(-20.0, -10.0, 5.0))
    far = (-20.0 + (SHAPE[2] - 1), -10.0 + (SHAPE[1] - 1), 5.0)
    _write(root, "b_ras", np.ascontiguousarray(img[:, ::-1, ::-1]), np.ascontiguousarray(lab[:, ::-1, ::-1]),
           direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1), origin=far)
    img_c, lab_c = _case_arrays(1)
    img_c[[0, 9]] = 0
    _write(root, "c_thick", img_c, lab_c, spacing=(0.9, 0.9, 3.0))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data") / "ds")


@pytest.fixture(scope="module")
def cache(dataset, tmp_path_factory):
    return SliceCache.build("folder:%s" % dataset, str(tmp_path_factory.mktemp("cache")), progress=False)


# --------------------------------------------------------------------------- data specs


def test_parse_data_spec_phantom():
    assert parse_data_spec("phantom") == {"kind": "phantom", "n": 40, "seed": 0}
    assert parse_data_spec("phantom:") == {"kind": "phantom", "n": 40, "seed": 0}
    assert parse_data_spec("phantom:5") == {"kind": "phantom", "n": 5, "seed": 0}
    assert parse_data_spec("phantom:40:1") == {"kind": "phantom", "n": 40, "seed": 1}
    # the default lesions keep the key (and cache) of a spec without them; faint ones get their own
    assert parse_data_spec("phantom:40:1:default") == {"kind": "phantom", "n": 40, "seed": 1}
    assert parse_data_spec("phantom:40:3:faint") == {"kind": "phantom", "n": 40, "seed": 3, "lesions": "faint"}
    assert parse_data_spec("phantom:20:5:healthy") == {"kind": "phantom", "n": 20, "seed": 5, "lesions": "healthy"}


def test_cache_path_follows_the_lesion_series_definition(tmp_path, monkeypatch):
    """Changing how a lesion series is drawn must not reuse slices cached under the old definition."""
    from LowResSegLib.training import phantom
    from LowResSegLib.training.slices import cache_path

    faint = parse_data_spec("phantom:4:1:faint")
    before = cache_path(faint, str(tmp_path), "FLAIR", "wt")
    assert before != cache_path(parse_data_spec("phantom:4:1"), str(tmp_path), "FLAIR", "wt")
    assert before == cache_path(parse_data_spec("phantom:4:1:faint"), str(tmp_path), "FLAIR", "wt")
    monkeypatch.setitem(phantom.LESIONS, "faint", dict(phantom.LESIONS["faint"], floor_sd=0.1))
    assert cache_path(faint, str(tmp_path), "FLAIR", "wt") != before


def test_parse_data_spec_folders(dataset, tmp_path, monkeypatch):
    assert parse_data_spec("folder:%s" % dataset) == {"kind": "folder", "path": str(dataset)}
    assert parse_data_spec("msd:%s" % dataset) == {"kind": "msd", "path": str(dataset)}
    monkeypatch.chdir(dataset.parent)
    d = parse_data_spec("folder:ds")
    assert d == {"kind": "folder", "path": str(dataset)} and os.path.isabs(d["path"])


@pytest.mark.parametrize("spec", ["", "phantom:x", "phantom:4:y", "phantom:4:1:dim", "phantom:4:1:faint:x", "folder:", "msd:", "nifti:/tmp", "phantom4",
                                  "/some/folder"])
def test_parse_data_spec_bad(spec):
    with pytest.raises(ValueError):
        parse_data_spec(spec)


@pytest.mark.parametrize("kind", ["folder", "msd"])
def test_parse_data_spec_missing_folder(kind, tmp_path):
    with pytest.raises(FileNotFoundError):
        parse_data_spec("%s:%s" % (kind, tmp_path / "does-not-exist"))


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_without_reading_data(dataset, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    spec = "folder:%s" % dataset
    first = SliceCache.build(spec, str(cache_dir), progress=False)
    files = sorted(os.listdir(cache_dir))
    assert len(files) == 1 and files[0].startswith("slices-") and files[0].endswith(".npz")

    def boom(*args, **kwargs):
        raise AssertionError("the cached spec must not read the data again")

    monkeypatch.setattr(slices, "iter_cases", boom)
    second = SliceCache.build(spec, str(cache_dir), progress=False)
    assert second.case_ids == first.case_ids == ["a_lps", "b_ras", "c_thick"]
    assert len(second.images) == len(second.labels) == 3
    for a, b in zip(first.images + first.labels, second.images + second.labels):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    monkeypatch.undo()

    # another spec (another folder, or another label mapping) -> another cache file
    other = tmp_path / "copy"
    make_dataset(other)
    SliceCache.build("folder:%s" % other, str(cache_dir), progress=False)
    assert len(os.listdir(cache_dir)) == 2
    SliceCache.build(spec, str(cache_dir), label="eq:1", progress=False)
    assert len(os.listdir(cache_dir)) == 3
    assert not any(f.endswith(".part.npz") for f in os.listdir(cache_dir))


def test_slices_square_normalised_binary(cache):
    assert cache.case_ids == ["a_lps", "b_ras", "c_thick"]
    n_slices = [im.shape[0] for im in cache.images]
    assert n_slices == [10, 10, 8]  # c_thick's two empty slices are dropped
    for im, lb in zip(cache.images, cache.labels):
        assert im.shape[1:] == (48, 48) and lb.shape == im.shape
        assert im.dtype == np.float16 and lb.dtype == np.uint8
        assert set(np.unique(lb).tolist()) <= {0, 255}  # square pixels: nothing resampled, labels stay hard
        vals = im[im != 0].astype(np.float64)
        assert abs(np.median(vals[lb[im != 0] == 0]) - 1.0) < 0.1  # normal tissue at its mode, 1
        assert vals.min() > 0 and vals.max() <= 5.0
        # 40 rows padded to 48: 4 zero rows top and bottom, columns untouched
        assert not im[:, :PAD_TOP].any() and not im[:, -PAD_TOP:].any()
        assert not lb[:, :PAD_TOP].any() and not lb[:, -PAD_TOP:].any()
        # tumour voxels are brighter than the rest of the brain after normalisation
        fg = lb.astype(bool)
        assert im[fg].astype(np.float32).mean() > 1.3 * im[~fg & (im != 0)].astype(np.float32).mean()


def test_canonical_orientation(cache):
    a, b = cache.images[0], cache.images[1]
    # the RAS-style case holds the same anatomy as the LPS case, so after canonicalisation
    # its slices are identical, voxel for voxel (images up to float16 rounding: the z-score
    # statistics are summed in another order)
    np.testing.assert_array_equal(cache.labels[1], cache.labels[0])
    np.testing.assert_array_equal(b != 0, a != 0)
    np.testing.assert_allclose(b.astype(np.float32), a.astype(np.float32), rtol=0, atol=1e-2)
    # and the disc sits where it was drawn (LPS voxel (j, i) = (12, 30), shifted by the padding)
    lb = cache.labels[0]
    assert [k for k in range(lb.shape[0]) if lb[k].any()] == list(DISC_SLICES)
    rows, cols = np.nonzero(lb[4])
    assert rows.mean() == pytest.approx(DISC_CENTRE[0] + PAD_TOP)
    assert cols.mean() == pytest.approx(DISC_CENTRE[1])
    # c_thick: slice 0 was dropped, so its disc slices are 2..5
    assert [k for k in range(cache.labels[2].shape[0]) if cache.labels[2][k].any()] == [2, 3, 4, 5]


# --------------------------------------------------------------------------- split / sample


def test_split_case_level_and_deterministic(cache):
    train, val = cache.split(1 / 3, seed=0)
    assert len(val.case_ids) == 1 and len(train.case_ids) == 2
    assert sorted(train.case_ids + val.case_ids) == sorted(cache.case_ids)
    assert not set(train.case_ids) & set(val.case_ids)
    # each side carries its cases' own arrays
    for part in (train, val):
        for cid, im, lb in zip(part.case_ids, part.images, part.labels):
            c = cache.case_ids.index(cid)
            assert im is cache.images[c] and lb is cache.labels[c]
    train2, val2 = cache.split(1 / 3, seed=0)
    assert train2.case_ids == train.case_ids and val2.case_ids == val.case_ids
    # other seeds permute differently (some seed among a few must pick another val case)
    assert len({tuple(cache.split(1 / 3, seed=s)[1].case_ids) for s in range(10)}) > 1
    # no validation
    train0, val0 = cache.split(0.0)
    assert val0.case_ids == [] and sorted(train0.case_ids) == sorted(cache.case_ids)
    # a tiny fraction still gives one validation case
    assert len(cache.split(0.01)[1].case_ids) == 1


def test_index_and_sample(cache):
    idx = cache.index()
    assert idx.shape == (28, 3)
    pos = idx[idx[:, 2] == 1]
    assert len(pos) == 4 + 4 + 4
    for c, k, f in idx:
        assert bool(f) == bool(cache.labels[c][k].any())

    for ratio in (0.0, 0.5, 1.0, 1.3):
        rows = cache.sample(np.random.default_rng(7), ratio)
        n_neg = int(round(ratio * len(pos)))
        assert len(rows) == len(pos) + n_neg
        assert len({(c, k) for c, k, _ in rows}) == len(rows)  # no duplicates
        assert {(c, k) for c, k, f in rows if f} == {(c, k) for c, k, _ in pos}  # all tumour slices
        assert sum(1 for r in rows if not r[2]) == n_neg
    # more negatives asked for than exist: all of them
    rows = cache.sample(np.random.default_rng(0), 10.0)
    assert len(rows) == len(idx)
    # deterministic given the rng
    np.testing.assert_array_equal(cache.sample(np.random.default_rng(3), 0.5), cache.sample(np.random.default_rng(3), 0.5))


# --------------------------------------------------------------------------- batches


def test_make_batch_matches_area_resample(cache):
    rows = cache.sample(np.random.default_rng(0), 0.5)[:6]
    scales = [8, 16, 48]
    x, ys = make_batch(cache, rows, 16, scales)
    assert x.shape == (6, 1, 16, 16) and x.dtype == np.float32
    assert [y.shape for y in ys] == [(6, 1, s, s) for s in scales]
    for b, (c, k, f) in enumerate(rows):
        im = cache.images[c][k].astype(np.float32)
        lb = cache.labels[c][k].astype(np.float32) / 255.0
        np.testing.assert_allclose(x[b, 0], area_resample(im, 16), rtol=1e-6, atol=1e-6)
        for y, s in zip(ys, scales):
            assert y.dtype == np.float32
            assert y.min() >= 0 and y.max() <= 1 + 1e-6
            np.testing.assert_allclose(y[b, 0], area_resample(lb, s), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(ys[-1][b, 0], lb)  # at the native size the target is the label
        assert bool(ys[-1][b, 0].any()) == bool(f)
    # soft targets at coarse scales: the disc edge gives fractional values
    assert ((ys[0] > 0) & (ys[0] < 1)).any()


def test_augmentation_moves_image_and_label_together():
    from LowResSegLib.training.slices import augment_slice

    yy, xx = np.mgrid[:64, :64]
    brain = ((yy - 32) ** 2 + (xx - 30) ** 2 < 26 ** 2).astype(np.float32)
    lesion = ((yy >= 14) & (yy < 24) & (xx >= 36) & (xx < 46)).astype(np.float32)  # off-centre, asymmetric
    im = brain * (1.0 + 2.0 * lesion)
    moved = 0
    for seed in range(12):
        out, lb = augment_slice(im.copy(), lesion.copy(), np.random.default_rng(seed))
        out2, lb2 = augment_slice(im.copy(), lesion.copy(), np.random.default_rng(seed))
        assert np.array_equal(out, out2) and np.array_equal(lb, lb2)  # deterministic per rng
        assert out.shape == lb.shape == (64, 64) and 0 <= lb.min() and lb.max() <= 1
        inside, outside = lb > 0.5, (lb < 0.01) & (out != 0)
        assert inside.any()
        assert out[inside].mean() > out[outside].mean() + 0.5  # the lesion is still where the label is
        cy, cx = np.argwhere(inside).mean(0)
        moved += abs(cy - 18.5) + abs(cx - 40.5) > 1
    assert moved > 0  # geometry really is augmented


def test_context_cut_leaves_a_thin_rim_of_normal_tissue():
    """The "context" plan's cut: the tumour stays whole, the brain beyond 20 px of it goes,
    and slices it cannot cut cleanly (noisy background, no tumour) are left alone."""
    from scipy import ndimage

    from LowResSegLib.training.slices import cut_context

    yy, xx = np.mgrid[:96, :96]
    brain = ((yy - 48) ** 2 + (xx - 48) ** 2 < 44 ** 2).astype(np.float32)
    lesion = ((yy - 40) ** 2 + (xx - 56) ** 2 < 10 ** 2).astype(np.float32)
    im = brain * (1.0 + lesion)
    dist = ndimage.distance_transform_edt(lesion < 0.5)
    for seed in range(5):
        out = cut_context(im, lesion, np.random.default_rng(seed))
        np.testing.assert_array_equal(out[lesion > 0], im[lesion > 0])
        assert not out[dist > 20].any()
        kept = (out != 0) & (lesion == 0)
        assert kept.any() and dist[kept].max() <= 20 and kept.sum() < (brain * (1 - lesion)).sum()
    noisy = im + np.random.default_rng(0).normal(0, 0.01, im.shape).astype(np.float32)
    assert cut_context(noisy, lesion, np.random.default_rng(0)) is noisy
    assert cut_context(im, np.zeros_like(lesion), np.random.default_rng(0)) is im
    # "cut-bright": a tumour that does not stand out is left with its surroundings
    rough = brain * (1.0 + np.random.default_rng(1).normal(0, 0.1, im.shape)).astype(np.float32)
    faint, bright = rough * (1.0 + 0.05 * lesion), rough * (1.0 + lesion)
    assert cut_context(faint, lesion, np.random.default_rng(0), min_sd=1.0) is faint
    assert not cut_context(bright, lesion, np.random.default_rng(0), min_sd=1.0)[dist > 20].any()
    # "cut-large": a tumour filling ~5 % of the brain keeps its surroundings, one filling ~25 % is cut
    assert cut_context(bright, lesion, np.random.default_rng(0), min_sd=1.0, min_fraction=0.2) is bright
    large = ((yy - 48) ** 2 + (xx - 30) ** 2 < 22 ** 2).astype(np.float32)
    far = (ndimage.distance_transform_edt(large < 0.5) > 20) & (brain > 0)
    cut = cut_context(rough * (1.0 + large), large, np.random.default_rng(0), min_sd=1.0, min_fraction=0.2)
    assert far.sum() > 100 and not cut[far].any()


def test_augmentation_plans():
    """"standard" is the default (shipped models stay reproducible); "context" really cuts
    some slices; an unknown name is refused."""
    from LowResSegLib.training.slices import AUGMENTATIONS, augment_slice, augmentation_plan

    yy, xx = np.mgrid[:96, :96]
    brain = ((yy - 48) ** 2 + (xx - 48) ** 2 < 40 ** 2).astype(np.float32)
    lesion = ((yy - 40) ** 2 + (xx - 56) ** 2 < 8 ** 2).astype(np.float32)
    im = brain * (1.0 + lesion)
    kept = {"standard": [], "context": []}
    for seed in range(24):
        a = augment_slice(im.copy(), lesion.copy(), np.random.default_rng(seed))
        b = augment_slice(im.copy(), lesion.copy(), np.random.default_rng(seed), AUGMENTATIONS["standard"])
        assert np.array_equal(a[0], b[0])
        for name in kept:
            out, lb = augment_slice(im.copy(), lesion.copy(), np.random.default_rng(seed), AUGMENTATIONS[name])
            kept[name].append(((out != 0) & (lb < 0.5)).sum() / max(1.0, (lb >= 0.5).sum()))
    # normal tissue per tumour pixel: the cut leaves far less in some slices than any standard one
    assert min(kept["context"]) < 0.5 * min(kept["standard"])
    with pytest.raises(ValueError, match="unknown augmentation"):
        augmentation_plan("bogus")


def test_make_batch_crop_full_resolution(cache):
    rows = cache.sample(np.random.default_rng(0), 1.0)
    x_full, ys_full = make_batch(cache, rows, 48, [48])
    x, ys = make_batch(cache, rows, 48, [48], crop=16)
    assert x.shape == (len(rows), 1, 16, 16) and len(ys) == 1 and ys[0].shape == (len(rows), 1, 16, 16)
    places = set()
    for b in range(len(rows)):
        # the crop is one window of the full slice, the same window for input and target
        hits = [(y0, x0) for y0 in range(33) for x0 in range(33)
                if np.array_equal(x_full[b, 0, y0:y0 + 16, x0:x0 + 16], x[b, 0])
                and np.array_equal(ys_full[0][b, 0, y0:y0 + 16, x0:x0 + 16], ys[0][b, 0])]
        assert hits
        places.add(hits[0])
    # unbiased: windows land all over the slice, not only on the tumour
    assert len(places) >= min(5, len(rows) // 2)
    assert any(not ys[0][b, 0].any() for b in range(len(rows)) if rows[b][2])
    # with augmentation the crop size is the same
    xa, ysa = make_batch(cache, rows, 48, [48], rng=np.random.default_rng(1), crop=16)
    assert xa.shape == (len(rows), 1, 16, 16) and ysa[0].shape == (len(rows), 1, 16, 16)
    # a crop at least the input size is no crop
    xb, ysb = make_batch(cache, rows, 48, [48], crop=48)
    np.testing.assert_array_equal(xb, x_full)
    np.testing.assert_array_equal(ysb[0], ys_full[0])


def test_relative_folder_specs_in_different_dirs_do_not_share_a_cache(tmp_path, monkeypatch):
    make_dataset(tmp_path / "one" / "ds")
    two = make_dataset(tmp_path / "two" / "ds")
    for sub in ("images", "labels"):
        for cid in ("b_ras", "c_thick"):
            os.remove(two / sub / (cid + ".nii.gz"))
    cache_dir = str(tmp_path / "cache")
    monkeypatch.chdir(tmp_path / "one")
    assert SliceCache.build("folder:ds", cache_dir, progress=False).case_ids == ["a_lps", "b_ras", "c_thick"]
    monkeypatch.chdir(tmp_path / "two")
    assert SliceCache.build("folder:ds", cache_dir, progress=False).case_ids == ["a_lps"]


def test_make_batch_mixes_in_plane_sizes(cache, tmp_path):
    """Sources of different native squares (256² LGG next to 240² BraTS) share a batch: each slice is
    resampled from its own size, exactly as it would be alone."""
    other = tmp_path / "wide"
    img, lab = _case_arrays(3)
    _write(other, "wide", np.pad(img, ((0, 0), (8, 8), (0, 0))), np.pad(lab, ((0, 0), (8, 8), (0, 0))))
    wide = SliceCache.build("folder:%s" % other, str(tmp_path / "cache"), progress=False)
    mixed = SliceCache(cache.images + wide.images, cache.labels + wide.labels, cache.case_ids + wide.case_ids)
    assert {im.shape[1:] for im in mixed.images} == {(48, 48), (56, 56)}
    rows = mixed.sample(np.random.default_rng(0), 1.0)
    assert len({mixed.images[c].shape for c, _, _ in rows}) > 1
    x, ys = make_batch(mixed, rows, 16, [8, 32])
    assert x.shape == (len(rows), 1, 16, 16) and [y.shape[-1] for y in ys] == [8, 32]
    for b, (c, k, _) in enumerate(rows):
        np.testing.assert_allclose(x[b, 0], area_resample(mixed.images[c][k].astype(np.float32), 16), atol=1e-6)
    x_aug, _ = make_batch(mixed, rows, 16, [8, 32], rng=np.random.default_rng(1), augment="cut-large")
    assert x_aug.shape == x.shape


def _head_slices(n, size, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for _ in range(n):
        r = ((yy - size / 2.0) / (0.35 * size)) ** 2 + ((xx - size / 2.0) / (0.3 * size)) ** 2
        out.append(np.where(r < 1, 1 + 0.2 * rng.random((size, size)), 0).astype(np.float32))
    return out


def test_batched_warp_is_scipys_warp():
    """Issue 28: the batch is warped with grid_sample; for the same draws it gives scipy's slices."""
    from LowResSegLib.training.slices import AUGMENTATIONS, draw_geometry, warp_batch, warp_scipy

    rng = np.random.default_rng(3)
    ims = _head_slices(12, 96, 0)
    lbs = [(im > 1.1).astype(np.float32) for im in ims]
    geos = [draw_geometry(rng, AUGMENTATIONS["context"], 96) for _ in ims]
    assert sum(g[1] is not None for g in geos) >= 6 and any(g[0] for g in geos)
    got_im, got_lb = warp_batch(ims, lbs, geos)
    for im, lb, g, gi, gl in zip(ims, lbs, geos, got_im, got_lb):
        want_im, want_lb = warp_scipy(im, lb, g)
        np.testing.assert_allclose(gi, want_im, atol=2e-5)
        np.testing.assert_allclose(gl, want_lb, atol=2e-5)


def test_one_slice_and_batch_augmentation_draw_the_same_distributions():
    """The batch form changes the order of the draws, not what is drawn: over many slices the geometry
    and the acquisition change the slices alike (mean, spread and tumour share within sampling noise)."""
    from LowResSegLib.training.slices import AUGMENTATIONS, augment_batch, augment_slice

    plan = AUGMENTATIONS["standard"]
    ims = _head_slices(8, 64, 1)
    lbs = [np.pad(np.ones((10, 10), np.float32), 27) for _ in ims]
    single, batch = [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        single += [augment_slice(im, lb, rng, plan) for im, lb in zip(ims, lbs)]
        bi, bl = augment_batch(ims, lbs, np.random.default_rng(1000 + seed), plan)
        batch += list(zip(bi, bl))

    def stats(pairs):
        return (np.mean([p[0][p[0] != 0].mean() for p in pairs]), np.mean([p[0][p[0] != 0].std() for p in pairs]),
                np.mean([(p[0] != 0).mean() for p in pairs]), np.mean([p[1].sum() for p in pairs]))

    s, b = stats(single), stats(batch)
    for a, c, tol in zip(s, b, (0.03, 0.1, 0.03, 0.05)):
        assert abs(a - c) <= tol * abs(a), (s, b)


def test_deep_supervision_targets_made_at_once_equal_one_size_at_a_time():
    """Issue 28 (second session): the targets of all scales come from one stack per slice size, and a same-size
    area resample is a copy; both must give exactly the numbers of the dense area matrices."""
    from LowResSegLib.images.geometry import apply_separable, area_matrix, area_resample
    from LowResSegLib.training.slices import resample_stack, resample_stacks

    rng = np.random.default_rng(4)
    slices = [rng.random((n, n)).astype(np.float32) for n in (256, 240, 256, 240, 200)]
    sizes = [32, 64, 128, 256]
    for got, size in zip(resample_stacks(slices, sizes), sizes):
        np.testing.assert_array_equal(got, resample_stack(slices, size))
        for i, sl in enumerate(slices):
            dense = apply_separable(sl[None], area_matrix(sl.shape[0], size), area_matrix(sl.shape[1], size))[0]
            np.testing.assert_allclose(got[i], dense, rtol=0, atol=2e-6)
    same = area_resample(slices[0][None], 256)
    assert same.dtype == np.float32 and np.array_equal(same[0], slices[0]) and same.base is not slices[0]
    np.testing.assert_array_equal(same, apply_separable(slices[0][None], area_matrix(256, 256), area_matrix(256, 256)))
