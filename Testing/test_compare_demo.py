"""``lowresseg compare`` and ``lowresseg demo`` end to end, with real model repositories.

compare: two threshold models (16 -> 64 and 32 -> 64, real ONNX graphs in onnxruntime)
on an asymmetric phantom, with and without a ground-truth label. demo: the bundled
sample through a factory repository holding ``elunet-jhead-32to256`` (a real exported
network with random weights, which the demo uses for its DICOM-SEG) and a threshold
model. Refusals exit with status 2, one ``lowresseg <command>: error:`` line on stderr,
and change nothing on disk.
"""

import contextlib
import csv
import io
import json
import os

import numpy as np
import pytest

from LowResSegLib.frontends.cli import main
from LowResSegLib.images.io import read_volume

from model_factory import add_threshold_model, add_untrained_model
from helpers import cube_phantom, snapshot

SHAPE = (8, 56, 64)  # (k, j, i)
BRAIN = (slice(1, 7), slice(4, 52), slice(6, 58))
CUBE = (slice(3, 7), slice(8, 24), slice(32, 44))
RAS = np.diag([-0.9, 0.8, -3.0, 1.0])
LOW, HIGH = "threshold-16to64", "threshold-32to64"
COLUMNS = ("model", "input_size", "time_s", "volume_ml", "dice", "hd95_mm", "reference")
DICOM_MODEL = "elunet-jhead-32to256"


def phantom():
    return cube_phantom(SHAPE, BRAIN, CUBE)


def write_nifti(path, data_kji, ras=RAS):
    nib = pytest.importorskip("nibabel")
    img = nib.Nifti1Image(np.asarray(data_kji).transpose(2, 1, 0), ras)
    img.set_sform(ras, code=1)
    img.set_qform(ras, code=1)
    nib.save(img, str(path))
    return str(path)


def leftovers(folder):
    return [n for n in snapshot(folder) if ".part" in n or ".tmp" in n]


def cli(*argv):
    """Run ``lowresseg`` in-process; (status, stdout, stderr)."""
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:
            rc = exc.code
    return rc, so.getvalue(), se.getvalue()


def assert_refused(command, rc, out, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err + out
    assert len(lines) == 1, "expected ONE error line, got:\n%s" % err
    assert lines[0].startswith("lowresseg %s: error: " % command), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --------------------------------------------------------------------------- compare


@pytest.fixture(scope="module")
def compare_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    repo = str(root / "models")
    add_threshold_model(repo, LOW, r=16, big_r=64, threshold=2.5)
    add_threshold_model(repo, HIGH, r=32, big_r=64, threshold=2.5)
    img, truth = phantom()
    return {"root": root, "repo": repo, "image": write_nifti(root / "flair.nii.gz", img),
            "label": write_nifti(root / "label.nii.gz", truth), "truth_ml": truth.sum() * 0.9 * 0.8 * 3.0 / 1000.0}


def compare_args(s, out, *extra):
    return ("compare", s["image"], "--models", "%s,%s" % (LOW, HIGH), "--out", out, "--repository", s["repo"],
            "--threads", "1") + extra


def read_table(out):
    with open(os.path.join(str(out), "comparison.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(str(out), "comparison.json")) as f:
        js = json.load(f)
    return rows, js


def check_outputs(out):
    for name in ("comparison.csv", "comparison.json", "comparison.png"):
        assert os.path.isfile(os.path.join(str(out), name)), name
    with open(os.path.join(str(out), "comparison.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(os.path.join(str(out), "comparison.png")) > 5000
    assert leftovers(out) == []
    rows, js = read_table(out)
    assert sorted(r["model"] for r in rows) == sorted([LOW, HIGH])  # one row per model
    for col in COLUMNS:
        assert col in rows[0], col
    assert [r["model"] for r in js["runs"]] == [r["model"] for r in rows]
    for r, j in zip(rows, js["runs"]):
        assert int(r["input_size"]) == j["input_size"] == {LOW: 16, HIGH: 32}[r["model"]]
        assert float(r["time_s"]) == pytest.approx(j["time_s"]) and j["time_s"] > 0
        assert float(r["dice"]) == pytest.approx(j["dice"]) and float(r["hd95_mm"]) == pytest.approx(j["hd95_mm"])
        assert r["reference"] == j["reference"]
    return {r["model"]: r for r in rows}, js


def test_compare_with_reference_label(compare_setup):
    s = compare_setup
    out = s["root"] / "with-ref"
    rc, stdout, err = cli(*compare_args(s, out, "--reference-label", s["label"]))
    assert rc == 0, err
    rows, js = check_outputs(out)
    for name, r in rows.items():
        assert r["reference"] == "ground truth"
        assert float(r["dice"]) > 0.9, r
        assert float(r["hd95_mm"]) < 5.0, r
        assert float(r["volume_ml"]) == pytest.approx(s["truth_ml"], rel=0.15)
        assert name in stdout
    assert js["reference_volume_ml"] == pytest.approx(s["truth_ml"], abs=0.01)
    assert "Traceback" not in err


def test_compare_without_reference_uses_highest_resolution(compare_setup):
    s = compare_setup
    out = s["root"] / "no-ref"
    rc, stdout, err = cli(*compare_args(s, out))
    assert rc == 0, err
    rows, js = check_outputs(out)
    assert {r["reference"] for r in rows.values()} == {HIGH}
    assert float(rows[HIGH]["dice"]) == 1.0 and float(rows[HIGH]["hd95_mm"]) == 0.0
    assert float(rows[LOW]["dice"]) > 0.8
    assert js["reference_volume_ml"] is None


def test_compare_refuses_to_overwrite_without_flag(compare_setup):
    s = compare_setup
    out = s["root"] / "overwrite"
    rc, _, err = cli(*compare_args(s, out))
    assert rc == 0, err
    before = snapshot(out)
    rc, stdout, err = cli(*compare_args(s, out, "--reference-label", s["label"]))
    assert_refused("compare", rc, stdout, err, "already exists", "--overwrite")
    assert snapshot(out) == before
    rc, stdout, err = cli(*compare_args(s, out, "--reference-label", s["label"], "--overwrite"))
    assert rc == 0, err
    rows, _ = check_outputs(out)
    assert {r["reference"] for r in rows.values()} == {"ground truth"}  # replaced by the new run
    assert set(snapshot(out)) == set(before)


def test_compare_unknown_model_writes_nothing(compare_setup):
    s = compare_setup
    out = s["root"] / "unknown"
    rc, stdout, err = cli("compare", s["image"], "--models", "%s,no-such-model" % LOW, "--out", out,
                          "--repository", s["repo"], "--threads", "1")
    assert_refused("compare", rc, stdout, err, "unknown model 'no-such-model'")
    assert not os.path.exists(str(out))


def test_compare_failing_at_the_figure_writes_no_table_either(compare_setup, monkeypatch):
    """The three files appear together or not at all (the old command left the tables behind)."""
    import LowResSegLib.frontends.compare as compare

    def broken_figure(*args, **kwargs):
        raise OSError("could not write the figure: No space left on device")

    s = compare_setup
    out = s["root"] / "all-or-nothing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    monkeypatch.setattr(compare, "comparison_figure", broken_figure)
    rc, stdout, err = cli(*compare_args(s, out))
    assert rc == 2 and "No space left on device" in err
    assert snapshot(out) == before and sorted(os.listdir(str(out))) == ["notes.txt"]


def test_compare_out_is_a_file(compare_setup):
    s = compare_setup
    out = s["root"] / "a-file"
    out.write_text("mine")
    rc, stdout, err = cli(*compare_args(s, out))
    assert_refused("compare", rc, stdout, err, "is a file")
    assert out.read_text() == "mine"


def test_compare_reference_label_in_another_layout(compare_setup):
    s = compare_setup
    _, truth = phantom()
    ras = RAS.copy()
    ras[:3, 0] *= -1.0  # i runs the other way ...
    ras[:3, 3] = RAS[:3, 3] + RAS[:3, 0] * (SHAPE[2] - 1)  # ... from the other end: same world voxels
    label = write_nifti(s["root"] / "label-flipped.nii.gz", truth[:, :, ::-1], ras)
    out = s["root"] / "flipped-ref"
    rc, stdout, err = cli(*compare_args(s, out, "--reference-label", label))
    if rc == 2:  # a clear refusal is fine too
        assert_refused("compare", rc, stdout, err)
        assert not os.path.exists(str(os.path.join(str(out), "comparison.csv")))
    else:
        assert rc == 0, err
        rows, _ = check_outputs(out)
        assert all(float(r["dice"]) > 0.9 for r in rows.values()), rows


# --------------------------------------------------------------------------- demo


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    repo = str(root / "models")
    path = add_untrained_model(repo, backbone="elunet", head="jhead", r=32, big_r=256, width=2)
    assert os.path.basename(path) == DICOM_MODEL
    add_threshold_model(repo, LOW, r=16, big_r=64, threshold=2.5)
    out = root / "demo-out"
    rc, stdout, err = cli("demo", "--out", out, "--repository", repo, "--threads", "1")
    return {"root": root, "repo": repo, "out": out, "rc": rc, "stdout": stdout, "stderr": err}


def check_demo_folder(out):
    from LowResSegLib.frontends.demo import SAMPLE_IMAGE

    sample = read_volume(SAMPLE_IMAGE)
    for model in (LOW, DICOM_MODEL):
        lab = read_volume(str(out / "labels" / (model + ".nii.gz")))
        assert lab.shape == sample.shape
        np.testing.assert_allclose(lab.affine, sample.affine, atol=1e-4)
        slicerio = pytest.importorskip("slicerio")
        seg = slicerio.read_segmentation(str(out / "labels" / (model + ".seg.nrrd")))
        assert [s["name"] for s in seg["segments"]] == ["Tumour"]
    for name in ("comparison.csv", "comparison.json", "comparison.png"):
        assert (out / name).is_file(), name
    rows, _ = read_table(out)
    assert sorted(r["model"] for r in rows) == sorted([LOW, DICOM_MODEL])
    assert {r["reference"] for r in rows} == {"ground truth"}
    series = sorted(os.listdir(str(out / "sample-dicom")))
    assert len(series) == sample.shape[0] and all(n.endswith(".dcm") for n in series)
    dicom = read_volume(str(out / "sample-dicom"))
    assert dicom.shape == sample.shape and dicom.meta["modality"] == "MR"

    from LowResSegLib.results.dicomseg import read_dicom_seg, run_dciodvfy

    seg_path = out / ("%s.seg.dcm" % DICOM_MODEL)
    assert seg_path.is_file()
    try:
        errors, _ = run_dciodvfy(str(seg_path))
    except FileNotFoundError as exc:
        pytest.fail("dciodvfy is missing (%s); scripts/setup.sh installs dicom3tools" % exc)
    assert errors == [], errors
    assert read_dicom_seg(str(seg_path), dicom.meta["files"]).shape == sample.shape
    assert leftovers(out) == []
    parent = os.path.dirname(str(out))
    assert not [d for d in os.listdir(parent) if ".part" in d]  # no staging folder left beside it


def test_demo_writes_every_promised_file(demo_run):
    assert demo_run["rc"] == 0, demo_run["stderr"]
    check_demo_folder(demo_run["out"])
    assert "Traceback" not in demo_run["stderr"]


def test_demo_stdout_ends_with_summary_and_names_the_figure(demo_run):
    stdout = demo_run["stdout"]
    figure = os.path.join(str(demo_run["out"]), "comparison.png")
    assert "summary:" in stdout
    summary = stdout[stdout.rindex("summary:"):]
    assert figure in summary  # where to look
    assert stdout.rstrip().splitlines()[-1] in summary  # nothing follows the summary
    for model in (LOW, DICOM_MODEL):
        assert model in stdout
    assert "dciodvfy: 0 errors" in summary


def test_demo_second_run_refused_then_overwritten(demo_run):
    out = demo_run["out"]
    before = snapshot(out)
    rc, stdout, err = cli("demo", "--out", out, "--repository", demo_run["repo"], "--threads", "1")
    assert_refused("demo", rc, stdout, err, "--overwrite")
    assert snapshot(out) == before

    rc, stdout, err = cli("demo", "--out", out, "--repository", demo_run["repo"], "--threads", "1", "--overwrite")
    assert rc == 0, err
    check_demo_folder(out)
    assert set(snapshot(out)) == set(before)
    assert sorted(os.listdir(str(demo_run["root"]))) == ["demo-out", "models"]  # no staging folder left


def test_demo_out_is_a_file_refused_up_front(tmp_path):
    repo = str(tmp_path / "models")
    add_threshold_model(repo, LOW, r=16, big_r=64, threshold=2.5)  # no DICOM model: the cheap path
    target = tmp_path / "results"
    target.write_text("mine")
    rc, stdout, err = cli("demo", "--out", target, "--repository", repo, "--threads", "1")
    assert target.read_text() == "mine"
    assert sorted(os.listdir(str(tmp_path))) == ["models", "results"], "leftovers: %s" % os.listdir(str(tmp_path))
    assert_refused("demo", rc, stdout, err, str(target))
    assert "sample:" not in stdout  # refused before any work


def test_demo_never_replaces_a_folder_it_did_not_make(tmp_path):
    """--overwrite replaces an earlier demo folder, never a user's folder."""
    repo = str(tmp_path / "models")
    add_threshold_model(repo, LOW, r=16, big_r=64, threshold=2.5)
    target = tmp_path / "my-results"
    target.mkdir()
    (target / "precious.txt").write_text("mine")
    rc, stdout, err = cli("demo", "--out", target, "--repository", repo, "--overwrite", "--threads", "1")
    assert (target / "precious.txt").read_text() == "mine"
    assert os.listdir(str(target)) == ["precious.txt"]
    assert_refused("demo", rc, stdout, err, "not made by `lowresseg demo`")


def test_demo_dicom_series_says_it_is_flair(demo_run):
    """The demo's MR series names its contrast as a scanner does, so `pacs` and `batch` (which refuse a series
    that names none) take it without --accept-unknown-contrast (docs/pacs.md's recipe)."""
    from LowResSegLib.images.dicomread import contrast_of_files

    folder = os.path.join(str(demo_run["out"]), "sample-dicom")
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    assert files and contrast_of_files(files) == "FLAIR"
