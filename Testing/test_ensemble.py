"""Issue 31: the multi-resolution ensemble, its disagreement map and its review flag.

Members are real ONNX graphs run by onnxruntime (model_factory's threshold models at 16², 32² and 64² with
different thresholds, so they disagree on the rim of a graded blob); the ensemble is a card in a real
repository folder. No mocks: the only wrapper below counts calls of the real ``prepare_slices``.
"""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.images.geometry import Volume
from LowResSegLib.inference import pipeline
from LowResSegLib.inference.engines import LocalEngine, RemoteEngine
from LowResSegLib.inference.ensemble import (Ensemble, EnsembleSegmentation, disagreement_map, open_engine,
                                             review_score, review_threshold)
from LowResSegLib.inference.pipeline import segment
from LowResSegLib.repository.modelstore import (EnsembleHasNoGraphError, ModelCardError, ModelRepository,
                                                UnknownModelError, default_repository)

from model_factory import TUMOUR, add_ensemble, add_threshold_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMBERS = ["t16", "t32", "t64"]
ENS = "ens"


def build_repo(root):
    add_threshold_model(root, "t16", r=16, big_r=64, threshold=1.2)
    add_threshold_model(root, "t32", r=32, big_r=64, threshold=1.5)
    add_threshold_model(root, "t64", r=64, big_r=64, threshold=1.8)
    add_ensemble(root, ENS, MEMBERS, ensemble={"members": MEMBERS, "rule": "mean-probability-v1",
                                               "review": {"threshold": 0.4}})
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repo(str(tmp_path_factory.mktemp("ens-models")))


@pytest.fixture()
def repo_copy(repo, tmp_path):
    dst = str(tmp_path / "models")
    shutil.copytree(repo, dst)
    return dst


def graded_volume(amplitude=1.2):
    """A head box with a smooth bright blob: the members' thresholds cut it at different radii."""
    kk, jj, ii = np.mgrid[:10, :64, :64]
    head = (abs(jj - 32) < 28) & (abs(ii - 32) < 28) & (kk > 0) & (kk < 9)
    blob = np.exp(-(((jj - 30) / 8.0) ** 2 + ((ii - 36) / 8.0) ** 2))
    img = np.where(head, 100.0, 0.0) * (1 + amplitude * blob)
    return Volume(img.astype(np.float32), np.diag([-1.0, -1.0, 2.0, 1.0]))


def write_nifti(volume, path):
    image = sitk.GetImageFromArray(volume.array)
    m = volume.affine
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (m[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(v) for v in m[:3, 3]])
    sitk.WriteImage(image, path)
    return path


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli"] + list(args), cwd=cwd or ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)


# ---------------------------------------------------------------- the card in the repository


def test_the_repository_lists_validates_and_completes_an_ensemble(repo):
    r = ModelRepository(repo)
    assert ENS in r.names() and ENS in r.usable_names() and r.check(ENS) == (True, "ok")
    assert r.is_ensemble(ENS) and not r.is_ensemble("t16") and r.members(ENS) == MEMBERS
    card = r.card(ENS)
    assert card["member_input_sizes"] == [16, 32, 64] and card["input_size"] == 64 and card["output_size"] == 64
    assert card["normalization"] == r.card("t16")["normalization"] and len(card["sha256"]) == 64
    with pytest.raises(EnsembleHasNoGraphError, match="ensemble of t16, t32, t64; it has no ONNX of its own"):
        r.onnx_path(ENS)


@pytest.mark.parametrize("change, error, message", [
    (dict(members=["t16", "nope"]), UnknownModelError, "names member 'nope', which is not in"),
    (dict(members=["t16"]), ModelCardError, "at least two model names"),
    (dict(members=["t16", "t16"]), ModelCardError, "names a model twice"),
    (dict(members=["t16", "inner"]), ModelCardError, "'inner', itself an ensemble"),
    (dict(rule="median"), ModelCardError, "ensemble.rule 'median' is not one this LowResSeg knows"),
    (dict(classes=[dict(TUMOUR, name="Edema")]), ModelCardError, "member 't16' segments .*'Tumour'.*'Edema'"),
    (dict(review={"threshold": 1.5}), ModelCardError, "review.threshold must be a number between 0 and 1"),
])
def test_a_bad_ensemble_card_is_one_clear_error_and_not_usable(repo_copy, change, error, message):
    add_ensemble(repo_copy, "inner", ["t16", "t32"])
    ens = {"members": change.get("members", MEMBERS), "rule": change.get("rule", "mean-probability-v1")}
    if "review" in change:
        ens["review"] = change["review"]
    extra = {"classes": change["classes"]} if "classes" in change else {}
    add_ensemble(repo_copy, "bad", ens["members"], ensemble=ens, **extra)
    r = ModelRepository(repo_copy)
    with pytest.raises(error, match=message):
        r.card("bad")
    ok, why = r.check("bad")
    assert not ok and why.count("\n") == 0 and "bad" in why
    assert "bad" not in r.usable_names() and ENS in r.usable_names()


def test_a_damaged_member_makes_the_ensemble_unusable_and_says_which(repo_copy):
    with open(os.path.join(repo_copy, "t32", "1", "model.onnx"), "ab") as f:
        f.write(b"x")
    ok, why = ModelRepository(repo_copy).check(ENS)
    assert not ok and why.startswith("ensemble 'ens' cannot run: model 't32' failed its integrity check")
    assert ENS not in ModelRepository(repo_copy).usable_names()


def test_the_ensemble_module_and_modelstore_stay_python36_for_the_edge_server():
    vermin = shutil.which("vermin") or os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.exists(vermin):
        pytest.skip("vermin is not installed")
    out = subprocess.run([vermin, "-t=3.6-", "--no-tips", "--violations",
                          os.path.join(ROOT, "LowResSegLib", "repository", "modelstore.py")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert out.returncode == 0, out.stdout


# ---------------------------------------------------------------- the rule, the map, the score


def test_ensemble_labels_are_the_thresholded_mean_of_the_members_on_one_prepared_volume(repo, monkeypatch):
    volume = graded_volume()
    calls = []
    real = pipeline.prepare_slices
    monkeypatch.setattr(pipeline, "prepare_slices", lambda *a, **k: calls.append(1) or real(*a, **k))
    engine = open_engine(ENS, repo)
    assert isinstance(engine, Ensemble) and [m.card["name"] for m in engine.members] == MEMBERS
    seg = segment(volume, engine)
    assert isinstance(seg, EnsembleSegmentation) and len(calls) == 1  # normalised once for three members
    members = [segment(volume, LocalEngine(n, repo)) for n in MEMBERS]
    mean = sum(m.probabilities for m in members) / 3.0
    np.testing.assert_allclose(seg.probabilities, mean, atol=1e-6)
    np.testing.assert_array_equal(seg.labels, (mean > 0.5).astype(np.uint8))
    votes = sum((m.labels > 0).astype(np.uint8) for m in members)
    np.testing.assert_array_equal(seg.votes, votes)
    vols = [m.volume_ml() for m in members]
    assert seg.member_volumes_ml == vols and vols[0] > vols[1] > vols[2] > 0  # they do disagree here
    np.testing.assert_allclose(np.unique(seg.disagreement), [0.0, 1 / 3.0, 2 / 3.0], atol=1e-6)
    union, agree = np.count_nonzero(votes), np.count_nonzero(votes == 3)
    assert seg.review_score == pytest.approx((union - agree) / union) and 0.3 < seg.review_score < 1
    assert seg.review_threshold == 0.4 and seg.review is True and "REVIEW" in seg.review_line()
    # the fast path of a run that keeps no probabilities gives the same labels
    np.testing.assert_array_equal(segment(volume, engine, keep_probabilities=False).labels, seg.labels)


def test_members_that_agree_give_no_disagreement_and_no_flag(repo_copy):
    add_threshold_model(repo_copy, "u32", r=32, big_r=64, threshold=1.5)
    add_ensemble(repo_copy, "same", ["t32", "u32"])
    seg = segment(graded_volume(), open_engine("same", repo_copy))
    assert seg.labels.any() and not seg.disagreement.any()
    assert seg.review_score == 0.0 and seg.review is False and review_threshold(seg.card) == 0.5


def test_review_score_and_map_by_hand():
    votes = np.array([0, 0, 1, 2, 3, 3, 3, 3])
    assert review_score(votes, 3) == pytest.approx(2 / 6.0)
    assert review_score(np.zeros(5, np.uint8), 3) == 0.0  # no member finds anything: nothing to review
    assert review_score(np.array([0, 1, 1]), 3) == 1.0  # no voxel that all members share
    np.testing.assert_allclose(disagreement_map(votes, 3), [0, 0, 1 / 3.0, 2 / 3.0, 0, 0, 0, 0])


def test_a_cancelled_ensemble_run_returns_none(repo):
    assert segment(graded_volume(), open_engine(ENS, repo), cancel=lambda: True) is None


def test_an_ensemble_has_no_graph_to_infer_with(repo):
    with pytest.raises(TypeError, match="ensemble ens has no graph of its own"):
        open_engine(ENS, repo).infer(np.zeros((1, 1, 16, 16), np.float32))


# ---------------------------------------------------------------- the shipped ensemble


def test_the_shipped_ensemble_names_the_shipped_jhead_models():
    r = ModelRepository(default_repository())
    name = "elunet-ensemble-16-32-interp32"
    assert name in r.usable_names()
    assert r.members(name) == ["elunet-jhead-16to256-member", "elunet-jhead-32to256-member", "elunet-interp-32to256"]
    assert 0 < review_threshold(r.card(name)) < 1


# ---------------------------------------------------------------- the command line


def test_cli_segment_writes_labels_and_the_disagreement_map_and_prints_the_review_line(repo, tmp_path):
    src = write_nifti(graded_volume(), str(tmp_path / "case_flair.nii.gz"))
    out, unc = str(tmp_path / "labels.nii.gz"), str(tmp_path / "disagree.nrrd")
    res = cli("segment", src, "--model", ENS, "--repository", repo, "--output", out, "--uncertainty", unc)
    assert res.returncode == 0, res.stderr
    assert "review score" in res.stdout and "REVIEW this case" in res.stdout
    assert "warning: members disagree" in res.stderr
    m = sitk.GetArrayFromImage(sitk.ReadImage(unc))
    assert set(np.unique(m)) == {0, 33, 67}
    labels = sitk.GetArrayFromImage(sitk.ReadImage(out))
    assert labels.shape == m.shape and labels.any()


@pytest.mark.parametrize("model, unc, message", [
    ("t32", "u.nii.gz", "--uncertainty needs an ensemble model"),
    (ENS, "u.seg.nrrd", "the disagreement map is an image"),
    (ENS, "labels.nii.gz", "name the same file"),
])
def test_cli_segment_refuses_a_wrong_uncertainty_request_and_writes_nothing(repo, tmp_path, model, unc, message):
    src = write_nifti(graded_volume(), str(tmp_path / "case.nii.gz"))
    res = cli("segment", src, "--model", model, "--repository", repo, "--output", str(tmp_path / "labels.nii.gz"),
              "--uncertainty", str(tmp_path / unc))
    assert res.returncode != 0 and message in res.stderr
    assert len([l for l in res.stderr.splitlines() if l.strip()]) == 1, res.stderr
    assert sorted(os.listdir(str(tmp_path))) == ["case.nii.gz"]


def test_cli_batch_has_review_columns_and_writes_disagreement_maps(repo, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_nifti(graded_volume(1.2), str(data / "a.nii.gz"))
    write_nifti(graded_volume(3.0), str(data / "b.nii.gz"))
    out = str(tmp_path / "out")
    res = cli("batch", str(data), "--model", ENS, "--repository", repo, "--out", out, "--uncertainty")
    assert res.returncode == 0, res.stderr
    with open(os.path.join(out, "batch.csv")) as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"a", "b"}
    for r in rows.values():
        assert 0.0 <= float(r["review_score"]) <= 1.0 and r["review"] in ("yes", "no")
        assert os.path.exists(os.path.join(out, r["case"] + ".disagreement.nii.gz"))
    assert rows["a"]["review"] == "yes" and "review: 1 case(s) flagged" in res.stdout or \
        rows["b"]["review"] == "yes"
    assert float(rows["a"]["review_score"]) > float(rows["b"]["review_score"])
    single = cli("batch", str(data), "--model", "t32", "--repository", repo, "--out", str(tmp_path / "o2"),
                 "--uncertainty")
    assert single.returncode != 0 and "--uncertainty needs an ensemble model" in single.stderr
    assert not os.path.exists(str(tmp_path / "o2"))


def test_cli_models_shows_the_members_inputs(repo):
    res = cli("models", "--repository", repo)
    assert res.returncode == 0, res.stdout
    line = [l for l in res.stdout.splitlines() if l.startswith(ENS + " ")][0]
    assert "16/32/64²" in line and line.rstrip().endswith("ok")


def test_model_auto_can_choose_the_ensemble(repo_copy, tmp_path):
    from LowResSegLib.inference.modelchoice import CalibrationCache, choose_model

    add_ensemble(repo_copy, "good", MEMBERS, metrics={"val_dice_at_output_size": 0.99})
    names = ModelRepository(repo_copy).usable_names()
    assert ENS in names and "good" in names
    cache = CalibrationCache(str(tmp_path / "cal.json"))
    choice = choose_model(names, "best", lambda n: open_engine(n, repo_copy), slices=10, cache=cache,
                          calibration_slices=4)
    assert choice.name == "good" and isinstance(choice.engine, Ensemble)  # timed like any model, chosen by quality
    assert cache.get(open_engine("good", repo_copy)) == pytest.approx(choice.estimates["good"][0] / 10)


# ---------------------------------------------------------------- local = remote


def test_the_ensemble_runs_its_members_on_an_edge_server_with_the_same_result(repo):
    from test_server import start_server

    server = start_server(repo)
    try:
        assert any('"model-skipped"' in l and "ensemble" in l for l in server.log)  # the server need not know
        remote = open_engine(ENS, repo, engine_for=lambda m: RemoteEngine(server.url, m))
        assert all(isinstance(m, RemoteEngine) for m in remote.members)
        a = segment(graded_volume(), remote)
        b = segment(graded_volume(), open_engine(ENS, repo))
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.disagreement, b.disagreement)
        assert a.review_score == b.review_score
        remote.close()
    finally:
        server.stop()


# ---------------------------------------------------------------- compare


def yellow_pixels(png):
    import matplotlib.image as mpimg

    rgb = (mpimg.imread(png)[..., :3] * 255).astype(int)
    return int(np.count_nonzero((rgb[..., 0] > 200) & (rgb[..., 1] > 200) & (rgb[..., 2] < 80)))


def test_cli_compare_shows_where_the_ensemble_members_disagree(repo, tmp_path):
    src = write_nifti(graded_volume(), str(tmp_path / "case.nii.gz"))
    res = cli("compare", src, "--models", "t16,%s" % ENS, "--repository", repo, "--out", str(tmp_path / "a"))
    assert res.returncode == 0, res.stderr
    assert "%s: members disagree on" % ENS in res.stdout and "review score" in res.stdout
    with open(str(tmp_path / "a" / "comparison.json")) as f:
        rows = {r["model"]: r for r in json.load(f)["runs"]}
    assert set(rows) == {"t16", ENS}
    plain = cli("compare", src, "--models", "t16,t32", "--repository", repo, "--out", str(tmp_path / "b"))
    assert plain.returncode == 0, plain.stderr
    assert yellow_pixels(str(tmp_path / "a" / "comparison.png")) > 50  # the disagreement overlay
    assert yellow_pixels(str(tmp_path / "b" / "comparison.png")) == 0


# ---------------------------------------------------------------- DICOM-SEG


def test_an_ensemble_dicom_seg_holds_the_disagreement_segment_and_passes_dciodvfy(repo, tmp_path):
    import pydicom

    from LowResSegLib.images.dicomsynth import write_mr_series
    from LowResSegLib.results.dicomseg import read_dicom_seg, seg_errors_by_origin
    from LowResSegLib.workflow.run import SegmentationRun

    vol = graded_volume()
    files = write_mr_series(Volume(vol.array, vol.affine, {"modality": "MR"}), str(tmp_path / "mr"),
                            series_description="AX FLAIR", seed=3)
    out = str(tmp_path / "seg.dcm")
    run = SegmentationRun(str(tmp_path / "mr"), ENS, dicom_seg_out=out, repository=repo)
    seg = run.run()
    assert seg.review and seg.disagreement.any()
    ds = pydicom.dcmread(out)
    items = list(ds.SegmentSequence)
    assert [str(i.SegmentLabel) for i in items] == ["Tumour", "members disagree"]
    assert str(items[1].SegmentDescription).startswith("LowResSeg extra: members disagree (review score")
    ours, _inherited = seg_errors_by_origin(out, files[0])
    assert ours == [], ours
    back = read_dicom_seg(out, run.volume.meta["files"])  # the classes only: the extra segment is no label
    np.testing.assert_array_equal(back, seg.labels)
    import highdicom as hd

    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in run.volume.meta["files"]]
    frames = hd.seg.segread(out).get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[2],
                                                               assert_missing_frames_are_empty=True)[..., 0]
    np.testing.assert_array_equal(frames > 0, seg.disagreement > 0)
    np.testing.assert_array_equal(back, seg.labels)
    assert run.summary()["review"] == "yes" and run.summary()["review_score"] == round(seg.review_score, 3)


# ---------------------------------------------------------------- measurement (bench/ensemble.py)


def test_auroc_and_threshold_helpers_by_hand():
    sys.path.insert(0, ROOT)
    from bench.ensemble import auroc, leave_one_out, sens_spec, youden_threshold

    assert auroc([0.9, 0.8, 0.1, 0.2], [True, True, False, False]) == 1.0
    assert auroc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert auroc([0.5, 0.5], [True, False]) == 0.5 and auroc([0.3], [True]) != auroc([0.3], [True])  # nan
    t = youden_threshold([0.9, 0.8, 0.1, 0.2], [True, True, False, False])
    assert 0.2 < t < 0.8 and sens_spec([0.9, 0.8, 0.1, 0.2], [True, True, False, False], t) == (1.0, 1.0)
    assert leave_one_out([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], [True] * 3 + [False] * 3) == (1.0, 1.0)


def test_the_ensemble_bench_writes_its_section_and_the_card_threshold(repo_copy, tmp_path):
    data = tmp_path / "data"
    for sub in ("images", "labels"):
        (data / sub).mkdir(parents=True)
    for i, amp in enumerate((0.8, 1.2, 2.0, 3.0)):
        vol = graded_volume(amp)
        write_nifti(vol, str(data / "images" / ("c%d.nii.gz" % i)))
        truth = Volume((vol.array > 100 * (1 + 0.6 * amp)).astype(np.uint8), vol.affine)
        write_nifti(truth, str(data / "labels" / ("c%d.nii.gz" % i)))
    out = tmp_path / "docs"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--ensemble", ENS, "--data",
                          "folder:%s" % data, "--repository", repo_copy, "--out", str(out)], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode == 0, res.stdout[-3000:]
    md = (out / "BENCHMARKS.md").read_text()
    assert "<!-- ensemble:begin -->" in md and "ensemble − best member, Dice" in md and "95 % CI" in md
    assert "AUROC, Dice < 0.5" in md and "leave-one-out" in md
    rows = list(csv.DictReader(open(str(out / "ensemble_cases.csv"))))
    assert len(rows) == 4 and all(0 <= float(r["review_score"]) <= 1 for r in rows)
    assert (out / "ensemble-review.png").stat().st_size > 1000
    table = md[md.index("| score |"):]
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "ensemble.py"), "--ensemble", ENS,
                          "--from-cases", str(out / "ensemble_cases.csv"), "--repository", repo_copy, "--out",
                          str(out), "--write-card"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode == 0, res.stdout[-3000:]
    md2 = (out / "BENCHMARKS.md").read_text()
    assert md2[md2.index("| score |"):] == table  # the same numbers from the per-case file, no inference
    review = ModelRepository(repo_copy).card(ENS)["ensemble"]["review"]
    assert 0 < review["threshold"] < 1 and "Youden" in review["chosen_on"]


def test_the_speed_bench_times_the_ensemble_in_the_same_rounds(repo, tmp_path):
    out = tmp_path / "docs"
    sample = str(tmp_path / "vol.nii.gz")
    write_nifti(graded_volume(), sample)
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "speed.py"), "--repeats", "1", "--repository",
                          repo, "--out", str(out), "--volume", sample, "--models", "t16,%s" % ENS], cwd=ROOT,
                         stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode == 0, res.stdout[-3000:]
    md = (out / "BENCHMARKS.md").read_text()
    assert "| ensemble | members | end-to-end s / volume |" in md and "| ens | t16, t32, t64 |" in md
    med = json.loads((out / "speed.json").read_text())["median"]
    assert sorted(med) == sorted(["t16", ENS]) and med[ENS]["total_s"] > 0  # --models: these only


def test_a_probability_floor_of_zero_gives_the_full_paths_probabilities_exactly(repo):
    volume = graded_volume()
    engine = LocalEngine("t32", repo)
    full = segment(volume, engine)
    fast = segment(volume, engine, probability_floor=0.0)
    np.testing.assert_array_equal(fast.probabilities, full.probabilities)
    np.testing.assert_array_equal(fast.labels, full.labels)
    high = segment(volume, engine, probability_floor=0.3)  # exact above the floor, at most the floor elsewhere
    above = full.probabilities > 0.3
    np.testing.assert_array_equal(high.probabilities[above], full.probabilities[above])
    assert (high.probabilities[~above] <= 0.3).all() and (high.probabilities[~above] == 0).any()
    np.testing.assert_array_equal(high.labels, full.labels)


def test_the_ensemble_timings_add_up(repo):
    t = segment(graded_volume(), open_engine(ENS, repo)).timings
    parts = t["preprocess_ms"] + t["infer_ms"] + t["postprocess_ms"]
    assert 0 < parts <= 1000 * t["total_s"] * 1.01 + 1 and set(t["members"]) == set(MEMBERS)
