"""Real cases by reference: the manifest, the sha256-checked fetch, and reading them as training data."""

import hashlib
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.training import realdata
from LowResSegLib.training.slices import SliceCache, parse_data_specs


def test_manifest_is_complete_and_keeps_the_reserved_case_out():
    m = realdata.load_manifest()
    cases = m["cases"]
    assert len({c["case"] for c in cases}) == len(cases)
    assert sum(c["split"] == "val" for c in cases) >= 4  # the real validation set
    for c in cases:
        assert c["split"] in ("train", "val")
        assert len(c["commit"]) == 40 and all(ch in "0123456789abcdef" for ch in c["commit"])
        assert len(c["sha256_image"]) == len(c["sha256_label"]) == 64
        assert c["repository"].count("/") == 1 and c["image_path"] and c["label_path"]
        assert c["origin"] and c["terms"]
    # deepvoxnet2 case_8 (Brats18_CBICA_AQN_1) is reserved for independent evaluation
    assert not any("case_8" in c["image_path"] or "AQN" in c["origin"] for c in cases)
    assert "case_8" in m["reserved"]


def fake_source(tmp_path, n_cases=2):
    """A local stand-in for GitHub: tiny NIfTI pairs, and a manifest that points at them."""
    files, entries = {}, []
    for i in range(n_cases):
        img = np.zeros((6, 40, 40), np.float32)
        img[1:5, 8:32, 8:32] = 100
        img[2:4, 12:20, 14:22] = 180
        lab = np.zeros(img.shape, np.uint8)
        lab[2:4, 12:20, 14:22] = 4  # BraTS-style label value: whole tumour is label > 0
        blobs = []
        for name, arr in (("img", img), ("lab", lab)):
            p = str(tmp_path / ("%s%d.nii.gz" % (name, i)))
            sitk.WriteImage(sitk.GetImageFromArray(arr), p, True)
            blobs.append(open(p, "rb").read())
        files["img/%d" % i], files["lab/%d" % i] = blobs
        entries.append({"case": "c%d" % i, "split": "val" if i == 0 else "train", "repository": "o/r",
                        "commit": "0" * 40, "image_path": "img/%d" % i, "label_path": "lab/%d" % i,
                        "sha256_image": hashlib.sha256(blobs[0]).hexdigest(),
                        "sha256_label": hashlib.sha256(blobs[1]).hexdigest(), "origin": "test", "terms": "test"})
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"cases": entries, "reserved": "", "version": 1}))
    calls = []

    def read(repo, commit, path):
        calls.append(path)
        return files[path]

    return str(manifest), read, calls, files


@pytest.fixture
def fake(tmp_path, monkeypatch):
    manifest, read, calls, files = fake_source(tmp_path)
    monkeypatch.setattr(realdata, "MANIFEST_PATH", manifest)
    monkeypatch.setenv("LOWRESSEG_REAL_DATA", str(tmp_path / "real"))
    return read, calls, files


def test_fetch_writes_verified_files_once(fake, tmp_path):
    read, calls, _ = fake
    assert realdata.fetch("all", read=read, progress=False) == 4
    assert realdata.fetch("all", read=read, progress=False) == 0  # verified, not downloaded again
    assert len(calls) == 4
    assert sorted(os.listdir(str(tmp_path / "real"))) == ["c0", "c1"]
    assert sorted(os.listdir(str(tmp_path / "real" / "c0"))) == ["image.nii.gz", "label.nii.gz"]


def test_fetch_refuses_a_changed_file_and_writes_nothing_for_it(fake, tmp_path):
    read, _, files = fake
    files["img/0"] = files["img/0"][:-1] + b"x"
    with pytest.raises(ValueError, match="sha256"):
        realdata.fetch("val", read=read, progress=False)
    assert not os.path.exists(str(tmp_path / "real" / "c0" / "image.nii.gz"))
    assert not any(f.endswith(".part") for _, _, fs in os.walk(str(tmp_path)) for f in fs)


def test_unfetched_cases_say_how_to_fetch(fake):
    with pytest.raises(FileNotFoundError, match="lowresseg fetch-real"):
        list(realdata.iter_real_cases("train"))


def test_real_spec_reads_whole_tumour_and_repeats_keep_val_clean(fake, tmp_path):
    read, _, _ = fake
    realdata.fetch("all", read=read, progress=False)
    cases = list(realdata.iter_real_cases("all"))
    assert [c.case_id for c in cases] == ["c0", "c1"]
    assert set(np.unique(cases[0].label).tolist()) == {0, 1}  # label 4 -> 1
    assert parse_data_specs("real:train*3+real:val") == [("real:train", 3), ("real:val", 1)]
    for bad in ("real:test", "real:train*0", "real:train*x"):
        with pytest.raises(ValueError):
            parse_data_specs(bad)
    cache = SliceCache.build("real:all*2", str(tmp_path / "cache"), progress=False)
    assert cache.case_ids == ["c0", "c1", "c0#1", "c1#1"]
    train, val = cache.split(0.5, seed=0)
    assert len(val.case_ids) == 1 and "#" not in val.case_ids[0]
    assert not any(c.split("#")[0] == val.case_ids[0] for c in train.case_ids)  # no copy of a val case trains
