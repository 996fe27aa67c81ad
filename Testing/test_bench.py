"""The benchmark scripts run end to end (tiny settings, a factory repository) and write their sections.

They measure; these tests only make sure they keep working and keep their report format.
"""

import json
import os
import subprocess
import sys

import pytest

from model_factory import add_threshold_model, add_untrained_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("models"))
    add_threshold_model(d, "threshold-16to64", r=16, big_r=64, threshold=1.0)
    add_untrained_model(d, "elunet", "jhead", 16, 64, width=2)
    return d


def run(script, *args, env=None):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", script)] + list(args), cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)
    assert res.returncode == 0, res.stdout[-3000:]
    return res.stdout


def sample_folder(tmp_path):
    """The bundled sample as an images/ + labels/ dataset (fast, no phantom generation)."""
    import shutil

    d = tmp_path / "sample"
    for sub, name in (("images", "sample-flair.nii.gz"), ("labels", "sample-label.nii.gz")):
        (d / sub).mkdir(parents=True)
        shutil.copy(os.path.join(ROOT, "Resources", "SampleData", name), str(d / sub / "case.nii.gz"))
    return "folder:%s" % d


def test_quality_bench_writes_its_section(repo, tmp_path):
    env = dict(os.environ, LOWRESSEG_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "docs"
    data = sample_folder(tmp_path)
    run("quality.py", "--data", data, "--tune-data", data, "--repository", repo, "--out", str(out), env=env)
    md = (out / "BENCHMARKS.md").read_text()
    assert "<!-- quality-folder:begin -->" in md and "<!-- quality-folder:end -->" in md
    assert "| threshold (k=" in md and "| threshold-16to64 |" in md and "| elunet-jhead-16to64 |" in md
    assert "python bench/quality.py" in md
    assert "volume error, median (signed)" in md and "volume error, median (absolute)" in md
    assert "elunet-jhead-16to64 vs the floor: mean ΔDice" in md and "95 % CI" in md
    assert (out / "quality-folder.png").stat().st_size > 1000
    rows = (out / "quality-folder_cases.csv").read_text().splitlines()
    assert rows[0] == "case,variant,model,dice,hd95_mm,truth_ml,pred_ml,lesion_sd" and len(rows) == 1 + 3  # floor + 2 models
    # quality.json keeps one entry per data spec, as BENCHMARKS.md keeps one section: a later run on
    # other data adds its entry and leaves this one
    import json

    results = json.loads((out / "quality.json").read_text())["by_data"]
    assert list(results) == [data] and "python bench/quality.py" in results[data]["command"]
    sys.path.insert(0, ROOT)
    from bench.quality import write_results

    write_results(str(out / "quality.json"), {"real:val": {"k": 1.0, "command": "x", "summary": {}}})
    assert sorted(json.loads((out / "quality.json").read_text())["by_data"]) == sorted([data, "real:val"])


def test_quality_bench_refuses_training_seed_as_held_out(repo, tmp_path):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--data", "phantom:2:1",
                          "--repository", repo, "--out", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True)
    assert res.returncode != 0 and "seed other than the training seed" in res.stdout


def test_speed_bench_writes_its_section_and_keeps_others(repo, tmp_path):
    out = tmp_path / "docs"
    out.mkdir()
    (out / "BENCHMARKS.md").write_text("# Benchmarks\n\n<!-- quality:begin -->\nQ\n<!-- quality:end -->\n")
    sample = os.path.join(ROOT, "Resources", "SampleData", "sample-flair.nii.gz")
    run("speed.py", "--repeats", "1", "--repository", repo, "--out", str(out), "--volume", sample)
    md = (out / "BENCHMARKS.md").read_text()
    assert "<!-- quality:begin -->\nQ\n<!-- quality:end -->" in md  # the other section is untouched
    assert "<!-- speed:begin -->" in md and "| elunet-jhead-16to64 | 16² |" in md
    assert md.count("<!-- speed:begin -->") == 1
    run("speed.py", "--repeats", "1", "--repository", repo, "--out", str(out), "--volume", sample)
    assert (out / "BENCHMARKS.md").read_text().count("<!-- speed:begin -->") == 1  # replaced, not appended


def test_ceiling_bench_writes_its_section(tmp_path):
    out = run("ceiling.py", "--data", sample_folder(tmp_path), "--out", str(tmp_path / "docs"))
    text = (tmp_path / "docs" / "BENCHMARKS.md").read_text()
    assert "<!-- ceiling:begin -->" in text and "| `folder:" in text
    assert "32² ceiling" in out


def test_resolution_ceiling_follows_the_size_of_the_structure():
    """A large blob survives 16² almost whole; a thin bar does not, and 64² keeps more of it than 16²."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from bench.ceiling import through_resolution
    from LowResSegLib.images.metrics import dice

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    yy, xx = np.mgrid[:128, :128]
    blob = np.repeat((((yy - 64) ** 2 + (xx - 60) ** 2) < 40 ** 2)[None], 4, axis=0)
    bar = np.zeros((4, 128, 128), bool)
    bar[:, 60:63, 20:100] = True
    image = (1.0 + blob + bar).astype(np.float32)  # any image: the round trip moves the mask only
    assert dice(*through_resolution(image, blob, affine, 16)) > 0.95
    assert dice(*through_resolution(image, bar, affine, 16)) < 0.5
    assert dice(*through_resolution(image, bar, affine, 64)) > dice(*through_resolution(image, bar, affine, 16))


def test_paired_interval_says_whether_a_difference_is_clear():
    """The bootstrap interval of paired Dice differences excludes 0 for a consistent gain, includes it
    for a gain that one case makes, and holds the mean."""
    sys.path.insert(0, ROOT)
    from bench.quality import bootstrap_ci, paired

    consistent = [0.04, 0.06, 0.05, 0.03, 0.07, 0.05, 0.04, 0.06]
    lo, hi = bootstrap_ci(consistent)
    assert 0 < lo < sum(consistent) / len(consistent) < hi
    one_case = [0.4, -0.01, 0.0, -0.02, 0.01, -0.01, 0.0, -0.02]
    lo, hi = bootstrap_ci(one_case)
    assert lo <= 0 < hi
    assert bootstrap_ci(one_case) == (lo, hi)  # seeded: a rerun prints the same interval
    assert bootstrap_ci([0.1, 0.1, 0.1]) == pytest.approx((0.1, 0.1))
    rows = [{"variant": "as is", "case": c, "model": m, "dice": d, "truth_ml": t}
            for c, t, da, db in (("a", 50.0, 0.8, 0.7), ("b", 80.0, 0.6, 0.65), ("h", 0.0, 1.0, 0.0))
            for m, d in (("A", da), ("B", db))]
    p = paired(rows, "A", "B", "as is")  # the healthy case (no tumour) is left out
    assert p["n"] == 2 and p["wins"] == 1 and p["losses"] == 1 and p["mean"] == pytest.approx(0.025)
    assert p["ci95"][0] == pytest.approx(-0.05) and p["ci95"][1] == pytest.approx(0.1)


def test_context_probe_edits_and_report(repo, tmp_path):
    """The probe's edits do what they say, and the script reports every edit for every model."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from bench.context_probe import EDITS, edit_slice

    yy, xx = np.mgrid[:96, :96]
    brain = ((yy - 48) ** 2 + (xx - 48) ** 2 < 30 ** 2)
    lab = (((yy - 44) ** 2 + (xx - 52) ** 2) < 8 ** 2).astype(np.float32)
    im = (brain * (1.0 + lab)).astype(np.float32)
    rim, rl = edit_slice(im, lab, "rim 5")
    assert rl is lab and np.array_equal(rim[lab > 0], im[lab > 0]) and (rim != 0).sum() < (im != 0).sum()
    ring, _ = edit_slice(im, lab, "ring 6")
    assert (ring != 0).sum() > (im != 0).sum() and np.allclose(ring[(ring != 0) & ~brain], 1.0)
    small, sl = edit_slice(im, lab, "zoom 0.5")
    assert abs((sl >= 0.5).sum() / (lab >= 0.5).sum() - 0.25) < 0.05 and (small != 0).sum() < (im != 0).sum()
    with pytest.raises(ValueError, match="unknown edit"):
        edit_slice(im, lab, "blur 2")

    env = dict(os.environ, LOWRESSEG_CACHE=str(tmp_path / "cache"))
    out = run("context_probe.py", "--data", sample_folder(tmp_path), "--case", "case", "--repository", repo,
              "--models", "threshold-16to64,elunet-jhead-16to64", env=env)
    assert "| edit | threshold-16to64 | elunet-jhead-16to64 |" in out
    for edit in EDITS:
        assert "| %s | " % edit in out


def test_train_speed_bench_measures_before_and_after_side_by_side(tmp_path):
    """bench/train_speed.py runs the trainer's own step in every arm and writes its section."""
    env = dict(os.environ, LOWRESSEG_CACHE=str(tmp_path / "cache"))
    out = run("train_speed.py", "--data", sample_folder(tmp_path), "--rounds", "1", "--batches", "1",
              "--batch-size", "4", "--threads", "1", "--json", str(tmp_path / "ts.json"), "--no-write", env=env)
    assert "| before | " in out and "| after | " in out and "speed-up vs before" in out
    result = json.load(open(str(tmp_path / "ts.json"))) if os.path.exists(str(tmp_path / "ts.json")) else None
    assert result is None  # --no-write leaves every file alone


def test_volume_error_is_signed_and_relative():
    sys.path.insert(0, ROOT)
    from bench.quality import summarise, volume_error

    assert volume_error({"pred_ml": 12.0, "truth_ml": 10.0}) == pytest.approx(0.2)
    rows = [{"variant": "stripped", "model": "m", "dice": 0.8, "hd95_mm": 1.0, "truth_ml": t, "pred_ml": p}
            for t, p in ((10.0, 8.0), (20.0, 26.0), (40.0, 40.0))]
    s = summarise(rows, ["m"])[("stripped", "m")]
    assert s["vol_err_median"] == pytest.approx(0.0) and s["abs_vol_err_median"] == pytest.approx(0.2)


def _cases_csv(folder, name, rows):
    import csv

    os.makedirs(str(folder), exist_ok=True)
    with open(os.path.join(str(folder), name), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "variant", "model", "dice", "hd95_mm", "truth_ml", "pred_ml",
                                          "lesion_sd"])
        w.writeheader()
        for r in rows:
            w.writerow(dict({"hd95_mm": 1.0, "lesion_sd": 1.0}, **r))


def test_ship_rule_pairs_cases_and_applies_every_condition(tmp_path):
    sys.path.insert(0, ROOT)
    from bench.ship_rule import verdict

    m = "elunet-jhead-32to256"
    old, new = tmp_path / "shipped", tmp_path / "new"
    lgg = lambda d: [{"case": "p%d" % i, "variant": "as is", "model": m, "dice": d + 0.01 * (i % 3), "truth_ml": 30,
                      "pred_ml": 30} for i in range(20)]  # noqa: E731
    _cases_csv(old, "quality-lgg_cases.csv", lgg(0.35))
    _cases_csv(new, "quality-lgg_cases.csv", lgg(0.70))
    real = lambda d: [{"case": "r%d" % i, "variant": "as is", "model": m, "dice": d, "truth_ml": 50, "pred_ml": 50}
                      for i in range(8)]  # noqa: E731
    _cases_csv(old, "quality-real_cases.csv", real(0.70))
    _cases_csv(new, "quality-real_cases.csv", real(0.69))
    ph = lambda d, healthy: [{"case": "h%d" % i, "variant": v, "model": m, "dice": d if v != "healthy-raw" else 1.0,
                              "truth_ml": 20 if v != "healthy-raw" else 0,
                              "pred_ml": healthy if v == "healthy-raw" else 20}
                             for i in range(6) for v in ("stripped", "raw", "raw-thick", "healthy-raw")]  # noqa: E731
    _cases_csv(old, "quality-phantoms_cases.csv", ph(0.50, 9.0))
    _cases_csv(new, "quality-phantoms_cases.csv", ph(0.47, 4.0))
    ships, checks = verdict(m, str(old), str(new))
    assert ships, checks
    _cases_csv(new, "quality-phantoms_cases.csv", ph(0.40, 22.5))  # phantoms -0.10, healthy 22.5 mL
    ships, checks = verdict(m, str(old), str(new))
    failed = [c[0] for c in checks if c[1] is False]
    assert not ships and "healthy raw heads ≤ 10 mL on average" in failed
    assert "phantoms raw down by at most 0.05" in failed and len(failed) == 4
    _cases_csv(new, "quality-lgg_cases.csv", lgg(0.35))  # level on lgg:val: the interval does not exclude 0
    assert verdict(m, str(old), str(new))[1][0][1] is False


def test_seeds_pairs_cases_over_seeds_and_says_when_a_difference_is_noise(tmp_path):
    sys.path.insert(0, ROOT)
    from bench.seeds import compare, table

    folders = []
    for seed, (da, db) in enumerate(((0.72, 0.70), (0.69, 0.71), (0.71, 0.70))):
        rows = [{"case": "p%d" % i, "variant": "as is", "model": m,
                 "dice": d + 0.05 * ((i * 7) % 5 - 2) + (0.04 * ((i * 5) % 3 - 1) if m == "A" else 0.0),
                 "truth_ml": 20.0, "pred_ml": 22.0} for i in range(12) for m, d in (("A", da), ("B", db))]
        _cases_csv(tmp_path / str(seed), "quality-lgg_cases.csv", rows)
        folders.append(str(tmp_path / str(seed)))
    (row,) = compare(folders, "A", "B")
    assert row["cases"] == 12 and row["seeds"] == 3
    assert abs(row["mean_diff"] - (0.02 - 0.02 + 0.01) / 3) < 0.01
    assert row["vol_a"] == [pytest.approx(0.1)] * 3
    assert table([row], "A", "B")[-1].endswith("| yes |")  # +0.003 with this spread: within noise


def test_quality_results_go_into_the_card_and_auto_ranks_by_them(repo, tmp_path):
    import shutil

    sys.path.insert(0, ROOT)
    from bench.quality import card_metrics, write_card_metrics
    from LowResSegLib.inference.modelchoice import quality_dice, quality_of
    from LowResSegLib.repository.modelstore import ModelRepository

    name = "elunet-jhead-16to64"
    summary = lambda d: {"summary": {"as is|%s" % name: {"dice": d, "vol_err_median": 0.05,  # noqa: E731
                                                          "abs_vol_err_median": 0.2, "n_tumour": 11}}}
    assert card_metrics({"lgg:val": summary(0.70)}, name) == {}  # both sets, or nothing
    metrics = card_metrics({"lgg:val": summary(0.70), "real:val": summary(0.74)}, name)
    assert metrics["real_patients_dice"] == 0.72 and metrics["lgg_val_volume_error_median"] == 0.05
    copy = str(tmp_path / "repo")
    shutil.copytree(repo, copy)
    before = ModelRepository(copy).card(name)
    write_card_metrics(ModelRepository(copy), name, metrics)
    after = ModelRepository(copy).card(name)
    assert after["sha256"] == before["sha256"] and after["metrics"]["real_patients_dice"] == 0.72
    assert ModelRepository(copy).onnx_path(name)  # the graph still checks against the card
    assert quality_dice(after) == (0.72, "real patients never trained on") and quality_of(after) > 1.0


def test_no_real_patient_image_is_committed_or_written_for_the_real_sets():
    """Issue 30, item 10: real cases are published as numbers; images only of phantoms or the shipped sample.

    Break: plotting the worst case of real:/lgg: sets again (bench/quality.py) or committing such a figure."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import quality

    assert quality._patient_set("real:val") and quality._patient_set("lgg:val")
    assert not quality._patient_set("phantom:12:7") and not quality._patient_set("folder:/data/x")
    docs = os.listdir(os.path.join(ROOT, "docs"))
    assert not [n for n in docs if n.startswith(("quality-real", "quality-lgg")) and n.endswith(".png")]
