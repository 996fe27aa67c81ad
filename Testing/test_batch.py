"""``lowresseg batch``: a study tree with NIfTI files, a two-series DICOM study (the FLAIR is
picked), a study it cannot decide on, and a corrupt file; reruns skip what is done."""

import csv
import os
import shutil

import numpy as np
import pytest

from LowResSegLib.frontends.cli import main

from model_factory import add_threshold_model
from test_cli_segment import MODEL, phantom, write_dicom, write_nifti
from helpers import snapshot

pydicom = pytest.importorskip("pydicom")


def _describe(folder, text, series_uid=None, study_uid=None):
    for name in os.listdir(str(folder)):
        ds = pydicom.dcmread(str(folder / name))
        ds.SeriesDescription = text
        if series_uid:
            ds.SeriesInstanceUID = series_uid
        if study_uid:
            ds.StudyInstanceUID = study_uid
        ds.save_as(str(folder / name))


def _same_study(folder, like):
    study = pydicom.dcmread(os.path.join(str(like), sorted(os.listdir(str(like)))[0])).StudyInstanceUID
    for name in os.listdir(str(folder)):
        ds = pydicom.dcmread(str(folder / name))
        ds.StudyInstanceUID = study
        ds.save_as(str(folder / name))


@pytest.fixture
def tree(tmp_path):
    from pydicom.uid import generate_uid

    root = tmp_path / "studies"
    img, _ = phantom()
    (root / "brats").mkdir(parents=True)
    write_nifti(root / "brats" / "case1_flair.nii.gz", img)
    # patient A: a FLAIR and a T2 of one study, one folder each (a PACS export)
    flair, t2 = root / "patA" / "s1" / "flair", root / "patA" / "s1" / "t2"
    write_dicom(flair, img)
    _describe(flair, "Ax T2 FLAIR", study_uid=generate_uid())
    write_dicom(t2, img[:, :, ::-1])
    _describe(t2, "Ax T2 TSE", series_uid=generate_uid())
    _same_study(t2, flair)
    # patient B: two series, neither says what it is
    b1, b2 = root / "patB" / "a", root / "patB" / "b"
    write_dicom(b1, img)
    write_dicom(b2, img)
    _describe(b1, "series 1", series_uid=generate_uid(), study_uid=generate_uid())
    _describe(b2, "series 2", series_uid=generate_uid())
    _same_study(b2, b1)
    (root / "broken").mkdir()
    (root / "broken" / "scan.nii.gz").write_bytes(b"not a nifti at all")
    return root


def test_batch_segments_every_case_records_failures_and_skips_on_rerun(tmp_path, tree, capsys):
    repo = str(tmp_path / "models")
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    out = tmp_path / "out"
    argv = ["batch", str(tree), "--model", MODEL, "--repository", repo, "--out", str(out), "--dicom-seg",
            "--threads", "1"]
    inputs_before = snapshot(tree)
    assert main(argv) == 1  # some cases failed
    captured = capsys.readouterr()
    with open(str(out / "batch.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"brats__case1_flair", "broken__scan", "patA__s1", "patB"}
    assert rows["brats__case1_flair"]["status"] == "done" and float(rows["brats__case1_flair"]["volume_ml"]) > 0
    a = rows["patA__s1"]
    assert a["status"] == "done" and a["series_description"] == "Ax T2 FLAIR" and a["message"] == ""
    assert "looks like FLAIR" in a["warnings"]
    assert rows["broken__scan"]["status"] == "failed" and "not a readable NIfTI" in rows["broken__scan"]["message"]
    assert rows["patB"]["status"] == "failed" and "pass --series UID" in rows["patB"]["message"]
    assert sorted(os.listdir(str(out))) == ["batch.csv", "brats__case1_flair.nii.gz", "patA__s1.nii.gz",
                                            "patA__s1.seg.dcm"]
    assert "2 case(s) done, 0 skipped (done before), 2 failed" in captured.out and "failed: patB:" in captured.err
    assert snapshot(tree) == inputs_before

    done = snapshot(out)
    assert main(argv) == 1  # rerun: the done cases are skipped, their files untouched
    after = snapshot(out)
    assert {k: v for k, v in after.items() if k != "batch.csv"} == {k: v for k, v in done.items() if k != "batch.csv"}


def test_batch_refuses_series_and_files_of_another_contrast_and_unnamed_series_unless_accepted(tmp_path, capsys):
    """Issue 30: the contrast rule of unattended runs (dicomread.contrast_refusal) holds in batch too.

    Break: without the check a T1-only study, a *_t1.nii.gz file and an unnamed series are all segmented.
    """
    from pydicom.uid import generate_uid

    repo = str(tmp_path / "models")
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    img, _ = phantom()
    root = tmp_path / "studies"
    write_dicom(root / "t1", img)
    _describe(root / "t1", "Sag 3D T1 MPRAGE", study_uid=generate_uid())
    write_dicom(root / "unnamed", img)
    _describe(root / "unnamed", "series 1", series_uid=generate_uid(), study_uid=generate_uid())
    write_nifti(root / "case_t1.nii.gz", img)
    out = tmp_path / "out"
    argv = ["batch", str(root), "--model", MODEL, "--repository", repo, "--out", str(out), "--threads", "1"]
    assert main(argv) == 1
    with open(str(out / "batch.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["t1"]["status"] == "failed" and "looks like T1 by its headers, not FLAIR" in rows["t1"]["message"]
    assert rows["case_t1"]["status"] == "failed" and "looks like T1 by its file name" in rows["case_t1"]["message"]
    assert rows["unnamed"]["status"] == "failed" and "--accept-unknown-contrast" in rows["unnamed"]["message"]
    assert sorted(os.listdir(str(out))) == ["batch.csv"]
    capsys.readouterr()
    assert main(argv + ["--accept-unknown-contrast"]) == 1
    with open(str(out / "batch.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["unnamed"]["status"] == "done" and rows["t1"]["status"] == "failed"
