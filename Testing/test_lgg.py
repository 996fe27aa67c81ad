"""The LGG kaggle_3m source: layout reader, its errors, the normalisation on it, restore from a local source,
the recorded split, and the reserved TCGA_CS_* patients kept out of everything."""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from LowResSegLib.images.intensity import normalize_volume
from LowResSegLib.training import kaggle3m, lggdata, realdata
from LowResSegLib.training.slices import SliceCache, cache_path, parse_data_spec, volume_to_slices

PATIENTS = {"TCGA_DU_0001_19990101": 12, "TCGA_HT_A0B1_20000202": 9}
RESERVED = "TCGA_CS_" + "XTEST_19000101"  # a made-up patient of the reserved institution (no real ID)


def head_slice(n, size, tumour):
    """A skull-on axial FLAIR slice: noisy background, bright scalp, dark skull, parenchyma ~100, tumour ~170."""
    rng = np.random.default_rng(n)
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((yy - size / 2) / (0.42 * size), (xx - size / 2) / (0.36 * size))
    flair = rng.normal(4, 2, (size, size))
    flair[r < 1.0] = 190  # scalp
    flair[r < 0.93] = 25  # skull
    flair[r < 0.87] = 100 + rng.normal(0, 5, (r < 0.87).sum())
    mask = np.zeros((size, size), np.uint8)
    if tumour:
        mask[np.hypot(yy - 0.4 * size, xx - 0.55 * size) < 0.12 * size] = 255
        flair[mask > 0] = 170 + rng.normal(0, 5, (mask > 0).sum())
    flair[0, 0] = n  # the slice number, to check the order
    flair = np.clip(flair, 0, 255).astype(np.uint8)
    rgb = np.stack([flair // 2, flair, 255 - flair], -1)  # pre-contrast, FLAIR, post-contrast stand-ins
    return rgb, mask


def write_patient(root, patient, n_slices, size=96):
    folder = os.path.join(str(root), patient)
    os.makedirs(folder)
    for n in range(1, n_slices + 1):
        rgb, mask = head_slice(n, size, tumour=3 <= n <= n_slices - 3)
        Image.fromarray(rgb).save(os.path.join(folder, "%s_%d.tif" % (patient, n)))
        Image.fromarray(mask).save(os.path.join(folder, "%s_%d_mask.tif" % (patient, n)))
    return folder


def write_reserved(root):
    """A reserved patient whose files would fail any read or layout check: proof that nothing opens them."""
    folder = os.path.join(str(root), RESERVED)
    os.makedirs(folder)
    with open(os.path.join(folder, "not-a-tiff.tif"), "wb") as f:
        f.write(b"reserved: never read")


@pytest.fixture
def kaggle(tmp_path):
    root = tmp_path / "kaggle_3m"
    for patient, n in PATIENTS.items():
        write_patient(root, patient, n)
    write_reserved(root)
    (root / "data.csv").write_text("Patient\n")  # top-level files of the download are ignored
    return root


def test_reads_flair_in_slice_order_with_the_nominal_geometry_and_skips_reserved(kaggle):
    cases = list(kaggle3m.iter_kaggle3m_cases(str(kaggle)))
    assert [c.case_id for c in cases] == sorted(PATIENTS)
    case = cases[0]
    assert case.image.shape == (12, 96, 96) and case.image.dtype == np.float32
    assert case.image[:, 0, 0].tolist() == list(range(1, 13))  # 1, 2, ..., 10, 11, 12: numeric, not by name
    rgb, mask = head_slice(5, 96, tumour=True)
    np.testing.assert_array_equal(case.image[4], rgb[..., 1])  # channel 1 is the FLAIR
    np.testing.assert_array_equal(case.label[4], mask > 0)
    assert set(np.unique(case.label).tolist()) == {0, 1}
    assert np.allclose(np.linalg.norm(case.affine[:3, :3], axis=0), kaggle3m.NOMINAL_SPACING_MM)
    assert np.all(np.diag(case.affine)[:3] > 0)  # columns -> left, rows -> posterior, slices -> superior (LPS)


def test_head_mode_normalisation_behaves_on_the_nominal_geometry(kaggle):
    case = kaggle3m.read_patient(str(kaggle / "TCGA_DU_0001_19990101"))
    norm = normalize_volume(case.image, spacing_kji=kaggle3m.NOMINAL_SPACING_MM[::-1])
    rgb, mask = head_slice(6, 96, tumour=True)
    yy, xx = np.mgrid[:96, :96]
    r = np.hypot((yy - 48) / (0.42 * 96), (xx - 48) / (0.36 * 96))
    brain, outside = (r < 0.8) & (mask == 0), r > 1.1
    assert abs(np.median(norm[5][brain]) - 1.0) < 0.1  # parenchyma is the tissue mode
    assert np.median(norm[5][mask > 0]) > 1.5  # the FLAIR-bright tumour stands above it
    assert np.all(norm[5][outside] == 0)  # the noisy scanner background is outside the head
    slices, labels = volume_to_slices(case.image, case.label, case.affine)  # what training caches
    assert slices.shape[1:] == (96, 96) and labels.max() == 255


def _message(exc_info):
    return str(exc_info.value)


@pytest.mark.parametrize("damage,named", [
    ("missing mask", "TCGA_DU_0001_19990101_4.tif"),
    ("extra mask", "TCGA_DU_0001_19990101_13_mask.tif"),
    ("gap", "TCGA_DU_0001_19990101_7.tif"),
    ("slice size", "TCGA_DU_0001_19990101_8.tif"),
    ("mask size", "TCGA_DU_0001_19990101_8_mask.tif"),
    ("grey image", "TCGA_DU_0001_19990101_2.tif"),
    ("stray file", "notes.txt"),
])
def test_layout_errors_name_the_file(kaggle, damage, named):
    folder = kaggle / "TCGA_DU_0001_19990101"
    stem = str(folder / "TCGA_DU_0001_19990101_")
    if damage == "missing mask":
        os.remove(stem + "4_mask.tif")
    elif damage == "extra mask":
        Image.fromarray(np.zeros((96, 96), np.uint8)).save(stem + "13_mask.tif")
    elif damage == "gap":
        os.remove(stem + "7.tif")
        os.remove(stem + "7_mask.tif")
    elif damage == "slice size":
        rgb, mask = head_slice(8, 80, tumour=True)
        Image.fromarray(rgb).save(stem + "8.tif")
        Image.fromarray(mask).save(stem + "8_mask.tif")
    elif damage == "mask size":
        Image.fromarray(np.zeros((80, 96), np.uint8)).save(stem + "8_mask.tif")
    elif damage == "grey image":
        Image.fromarray(head_slice(2, 96, False)[0][..., 1]).save(stem + "2.tif")
    else:
        (folder / "notes.txt").write_text("x")
    with pytest.raises(kaggle3m.LayoutError) as exc:
        list(kaggle3m.iter_kaggle3m_cases(str(kaggle)))
    assert named in _message(exc)


def test_a_folder_not_in_the_layout_says_what_is_expected(tmp_path, kaggle):
    with pytest.raises(kaggle3m.LayoutError, match="did you mean .*kaggle_3m"):
        kaggle3m.patient_folders(str(tmp_path))  # the folder above kaggle_3m
    (tmp_path / "empty").mkdir()
    with pytest.raises(kaggle3m.LayoutError, match="no patient folder.*_mask.tif"):
        kaggle3m.patient_folders(str(tmp_path / "empty"))
    with pytest.raises(kaggle3m.LayoutError, match="only reserved"):
        only = tmp_path / "only"
        write_reserved(only)
        kaggle3m.patient_folders(str(only))
    with pytest.raises(kaggle3m.LayoutError, match="reserved"):
        kaggle3m.read_patient(str(kaggle / RESERVED))
    with pytest.raises(FileNotFoundError, match="LGG folder not found"):
        parse_data_spec("lgg:%s" % (tmp_path / "nowhere"))


def test_lgg_path_spec_caches_without_the_reserved_patients(kaggle, tmp_path):
    d = parse_data_spec("lgg:%s" % kaggle)
    assert d == {"kind": "lgg", "path": str(kaggle)}
    assert parse_data_spec("lgg:val") == {"kind": "lgg", "split": "val"}
    key = cache_path(d, str(tmp_path / "cache"), "FLAIR", "wt")
    with open(os.path.join(str(kaggle), RESERVED, "not-a-tiff.tif"), "ab") as f:
        f.write(b"changed")
    assert cache_path(d, str(tmp_path / "cache"), "FLAIR", "wt") == key  # the reserved files are not in the key
    cache = SliceCache.build("lgg:%s" % kaggle, str(tmp_path / "cache"), progress=False)
    assert cache.case_ids == sorted(PATIENTS)


# --------------------------------------------------------------------------- the recorded set and its restore


def test_the_manifest_records_the_set_and_a_patient_level_split_without_reserved_patients():
    entry = lggdata.lgg_manifest()
    assert entry["repository"] == "hua2980/brain-tumor-segmentation"
    assert entry["commit"] == "383f3c2187d85f390e7b747ab02ab83dc15616b1" and entry["folder"] == "kaggle_3m"
    assert entry["reserved_prefix"] == kaggle3m.RESERVED_PREFIX == "TCGA_CS_"
    patients = entry["patients"]
    names = [p["patient"] for p in patients]
    assert len(names) == len(set(names)) == 94
    val = lggdata.lgg_patients("val")
    train = lggdata.lgg_patients("train")
    assert len(val) >= 24 and len(val) + len(train) == 94
    assert not {p["patient"] for p in val} & {p["patient"] for p in train}
    institutions = {p["institution"] for p in patients}
    for inst in institutions:
        n = sum(p["institution"] == inst for p in patients)
        assert n == 1 or any(p["institution"] == inst for p in val), inst
    for p in patients:
        assert p["institution"] == kaggle3m.institution(p["patient"]) and len(p["sha256"]) == 64
        assert p["slices"] > 0 and 0 <= p["tumour_slices"] <= p["slices"]


def test_no_reserved_patient_in_any_split_cache_key_or_report(tmp_path):
    text = open(realdata.MANIFEST_PATH).read()
    m = json.loads(text)
    # the prefix is recorded as reserved (twice: the rule and its text), and no patient carries it
    assert text.count("TCGA_CS_") == 2 and m["lgg"]["reserved_prefix"] == "TCGA_CS_"
    assert "TCGA_CS_" in m["lgg"]["reserved"]
    for split in realdata.SPLITS:
        assert not any(kaggle3m.is_reserved(p["patient"]) for p in lggdata.lgg_patients(split))
        assert "TCGA_CS_" not in json.dumps(lggdata.lgg_patients(split))  # what the cache key hashes
        assert "TCGA_CS_" not in cache_path(parse_data_spec("lgg:" + split), str(tmp_path), "FLAIR", "wt")
    for case in realdata.manifest_cases("all"):
        assert "TCGA_CS_" not in json.dumps(case)


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"] + list(args),
                   cwd=str(cwd), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.fixture
def local_set(tmp_path, monkeypatch):
    """A git repository holding a kaggle_3m folder (with a reserved patient), and a manifest recording it."""
    repo = tmp_path / "repo"
    for patient, n in PATIENTS.items():
        write_patient(repo / "kaggle_3m", patient, n, size=32)
    write_reserved(repo / "kaggle_3m")
    _git("init", "-q", cwd=repo)
    _git("add", "-A", cwd=repo)
    _git("commit", "-qm", "set", cwd=repo)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(repo), check=True,
                            stdout=subprocess.PIPE).stdout.decode().strip()
    patients = []
    for i, (patient, n) in enumerate(sorted(PATIENTS.items())):
        folder = str(repo / "kaggle_3m" / patient)
        patients.append({"patient": patient, "institution": kaggle3m.institution(patient), "slices": n,
                         "tumour_slices": 0, "split": "val" if i == 0 else "train",
                         "sha256": kaggle3m.folder_digest(folder, kaggle3m.slice_file_names(patient, n))})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"cases": [], "lgg": {
        "repository": "o/r", "commit": commit, "folder": "kaggle_3m", "reserved_prefix": "TCGA_CS_",
        "patients": patients}}))
    monkeypatch.setattr(realdata, "MANIFEST_PATH", str(manifest))
    monkeypatch.setenv("LOWRESSEG_LGG_DATA", str(tmp_path / "restored"))
    return repo, commit


def test_restore_from_a_git_clone_verifies_and_skips_what_is_there(local_set, tmp_path):
    repo, commit = local_set
    source = lggdata.open_source(str(repo), lggdata.lgg_manifest())
    assert isinstance(source, lggdata.GitSource)
    try:
        assert lggdata.fetch_lgg("all", source=source, progress=False) == 2
        assert lggdata.fetch_lgg("all", source=source, progress=False) == 0  # verified, not restored again
        os.remove(str(tmp_path / "restored" / "TCGA_HT_A0B1_20000202" / "TCGA_HT_A0B1_20000202_3_mask.tif"))
        assert lggdata.fetch_lgg("train", source=source, progress=False) == 1  # a damaged patient is restored
    finally:
        source.close()
    assert sorted(os.listdir(str(tmp_path / "restored"))) == sorted(PATIENTS)  # the reserved one is not there
    cases = list(lggdata.iter_lgg_cases("val"))
    assert [c.case_id for c in cases] == ["TCGA_DU_0001_19990101"] and cases[0].image.shape == (12, 32, 32)


def test_restore_refuses_a_changed_or_missing_file_and_writes_nothing(local_set, tmp_path):
    repo, _ = local_set
    entry = lggdata.lgg_manifest()
    changed = repo / "kaggle_3m" / "TCGA_DU_0001_19990101" / "TCGA_DU_0001_19990101_5.tif"
    changed.write_bytes(changed.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError, match="TCGA_DU_0001_19990101.*sha256.*nothing was written"):
        lggdata.fetch_lgg("val", source=lggdata.open_source(str(repo / "kaggle_3m"), entry), progress=False)
    os.remove(str(repo / "kaggle_3m" / "TCGA_HT_A0B1_20000202" / "TCGA_HT_A0B1_20000202_2.tif"))
    with pytest.raises(FileNotFoundError, match="TCGA_HT_A0B1_20000202_2.tif is missing"):
        lggdata.fetch_lgg("train", source=lggdata.open_source(str(repo / "kaggle_3m"), entry), progress=False)
    with pytest.raises(FileNotFoundError, match="does not hold commit"):
        lggdata.open_source(str(repo), dict(entry, commit="f" * 40))
    assert not os.path.exists(str(tmp_path / "restored")) or not os.listdir(str(tmp_path / "restored"))
    with pytest.raises(FileNotFoundError, match="fetch-real --source lgg"):
        list(lggdata.iter_lgg_cases("all"))


def test_fetch_real_command_restores_from_a_local_clone(local_set, tmp_path, capsys):
    from LowResSegLib.frontends.cli import main

    repo, _ = local_set
    dest = str(tmp_path / "elsewhere")
    assert main(["fetch-real", "--source", "lgg", "--from", str(repo), "--dest", dest]) == 0
    assert "2 restored" in capsys.readouterr().out
    assert sorted(os.listdir(dest)) == sorted(PATIENTS)
    assert main(["fetch-real", "--source", "lgg", "--from", str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- mixed in-plane sizes


def write_folder_source(root, size=40, n_cases=2):
    """A folder: source of 6 x size x size volumes (1 mm), a bright disc labelled in the middle slices."""
    import SimpleITK as sitk

    yy, xx = np.mgrid[:size, :size]
    for c in range(n_cases):
        img = np.where(np.hypot(yy - size / 2, xx - size / 2) < 0.4 * size, 100.0, 0.0)[None].repeat(6, 0)
        lab = np.zeros(img.shape, np.uint8)
        lab[2:5] = np.hypot(yy - size / 2 - 3 * c, xx - size / 2) < 0.12 * size
        img[lab > 0] = 180.0
        for sub, arr in (("images", img.astype(np.float32)), ("labels", lab)):
            os.makedirs(str(root / sub), exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(root / sub / ("case%d.nii.gz" % c)))
    return root


def test_mixed_in_plane_sizes_train_and_nothing_reserved_reaches_the_run(kaggle, tmp_path, capsys):
    """96² LGG slices next to 40² folder slices train together (numpy once refused to stack them), and the
    reserved patient is in no case id, cache file or run report."""
    from LowResSegLib.frontends.cli import main

    folder = write_folder_source(tmp_path / "small")
    out, cache = tmp_path / "run", tmp_path / "cache"
    argv = ["train", "--backbone", "elunet", "--head", "jhead", "--input-size", "32", "--output-size", "64",
            "--width", "2", "--data", "lgg:%s+folder:%s*2" % (kaggle, folder), "--val-fraction", "0.25",
            "--epochs", "1", "--batch-size", "8", "--neg-ratio", "0.5", "--threads", "1", "--device", "cpu",
            "--cache-dir", str(cache), "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["train_cases"] >= 3 and run["val_cases"] >= 1
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1
    sizes = set()
    for path in sorted(cache.iterdir()):
        with np.load(str(path)) as z:
            assert not any(kaggle3m.is_reserved(c) for c in z["case_ids"])
            sizes |= {z[k].shape[1:] for k in z.files if k.startswith("img_")}
    assert sizes == {(96, 96), (40, 40)}
    for path in list(out.iterdir()) + list(cache.iterdir()):
        assert "TCGA_CS_" not in path.name
        if path.suffix in (".json", ".csv"):
            assert "TCGA_CS_" not in path.read_text()


def test_a_card_records_each_lgg_patient_with_its_source(kaggle):
    from LowResSegLib.training.export import data_notice, real_cases_of

    val = real_cases_of("phantom:4:1+lgg:val*2")
    assert [c["case"] for c in val] == [p["patient"] for p in lggdata.lgg_patients("val")]
    assert all(c["repository"] == "hua2980/brain-tumor-segmentation" and c["repeat"] == 2 and len(c["sha256"]) == 64
               for c in val)
    assert "Buda" in data_notice("lgg:val")
    assert [c["case"] for c in real_cases_of("lgg:%s" % kaggle)] == sorted(PATIENTS)  # reserved: not listed
