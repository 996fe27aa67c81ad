"""``--model auto --budget``: the choice among engines of known speed (a clock that only the engine moves,
so nothing here asserts wall-clock time), the calibration cache, and the CLI on real models."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.images.geometry import Volume
from LowResSegLib.inference.modelchoice import (BRATS_SLICES, CalibrationCache, axial_slices, choose_model, parse_budget,
                                      quality_of)
from LowResSegLib.repository.modelstore import ModelRepository

# seconds per slice of each shipped model on the pretend engines (the card qualities are the real ones)
PACE = {"elunet-full-256": 0.060, "elunet-jhead-64to256": 0.008, "elunet-jhead-32to256": 0.004,
        "elunet-interp-32to256": 0.0035, "elunet-jhead-16to256": 0.003}


class Clock(object):
    """Time that passes only when an engine says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class PacedEngine(object):
    """A real shipped model on onnxruntime whose time is ``pace`` seconds per slice on ``clock``."""

    def __init__(self, name, pace, clock, counts):
        self.inner, self.pace, self.clock, self.counts = LocalEngine(name, threads=1), pace, clock, counts
        self.card, self.output = self.inner.card, self.inner.output

    def infer(self, batch):
        self.counts[self.card["name"]] = self.counts.get(self.card["name"], 0) + len(batch)
        self.clock.now += self.pace * len(batch)
        return self.inner.infer(batch)

    def calibration_identity(self):
        return "paced engine, %g s per slice" % self.pace


def _choose(budget, pace=PACE, cache=False, clock=None, counts=None, names=None, slices=BRATS_SLICES):
    clock = clock or Clock()
    counts = {} if counts is None else counts
    return choose_model(names or sorted(pace), budget, lambda n: PacedEngine(n, pace[n], clock, counts),
                        slices=slices, cache=cache, clock=clock, calibration_slices=2)


def test_budgets_are_read_in_seconds_or_as_presets():
    assert parse_budget("1.5s") == 1.5 and parse_budget("800ms") == 0.8 and parse_budget("2") == 2.0
    assert parse_budget(0.25) == 0.25 and parse_budget("best") == math.inf and parse_budget("Fastest") == 0.0
    assert parse_budget("balanced") == "balanced"
    for bad in ("soon", "-1s", "1.5 h"):
        with pytest.raises(ValueError, match="budget"):
            parse_budget(bad)


def _expected(limit, pace=PACE, slices=BRATS_SLICES):
    """What the rule should choose, worked out here from the shipped cards' qualities and the paces."""
    quality = {n: quality_of(ModelRepository().card(n)) for n in pace}
    fits = [n for n in pace if pace[n] * slices <= limit]
    return max(fits, key=lambda n: (quality[n], -pace[n])) if fits else min(pace, key=pace.get)


def test_the_best_card_quality_that_fits_the_budget_is_chosen():
    from LowResSegLib.inference.modelchoice import quality_dice

    repo = ModelRepository()
    quality = {n: quality_of(repo.card(n)) for n in PACE}
    assert len(set(quality.values())) == len(PACE)  # distinct, so each budget below has one right answer
    by_quality = sorted(PACE, key=quality.get, reverse=True)
    # 155 slices: full 9.3 s, jhead-64 1.24 s, jhead-32 0.62 s, interp 0.54 s, jhead-16 0.47 s
    for budget, limit in (("1.5s", 1.5), ("0.6s", 0.6), ("500ms", 0.5), ("best", math.inf)):
        choice = _choose(budget)
        assert choice.name == _expected(limit) and choice.engine.card["name"] == choice.name, budget
        assert "Dice %.3f" % quality_dice(repo.card(choice.name))[0] in choice.reason
        assert choice.estimates[choice.name][0] == pytest.approx(PACE[choice.name] * 155)
        if choice.name != by_quality[0]:  # the reason names the better model that did not fit
            better = [n for n in by_quality if quality[n] > quality[choice.name]]
            assert better[0] in choice.reason
    assert _choose("best").name == by_quality[0]
    fastest = _choose("fastest")
    assert fastest.name == "elunet-jhead-16to256" and "no model fits" not in fastest.reason
    assert _choose("balanced").name == _expected(2 * 0.003 * 155)  # within 2 x 0.47 s
    slow = _choose("100ms")
    assert slow.name == "elunet-jhead-16to256" and "no model fits" in slow.reason
    # a faster engine (a GPU, say) fits every model in the same budget: the best card wins
    assert _choose("1.5s", pace={n: p / 10 for n, p in PACE.items()}).name == by_quality[0]
    # a budget is per volume: a thin slab fits more
    assert _choose("1.5s", slices=20).name == _expected(1.5, slices=20)


def test_a_real_patient_dice_ranks_above_any_training_split_dice():
    """The rule of issue 28: the card's real-patient Dice (bench/quality.py) outranks a validation-split Dice."""
    measured = {"metrics": {"real_patients_dice": 0.40, "val_dice_at_output_size": 0.40}}
    split_only = {"metrics": {"val_dice_at_output_size": 0.95}}
    assert quality_of(measured) > quality_of(split_only) > quality_of({})


def test_calibrations_are_cached_per_engine_and_model(tmp_path):
    cache = CalibrationCache(str(tmp_path / "calibration.json"))
    names = ["elunet-jhead-16to256", "elunet-interp-32to256"]
    counts = {}
    first = _choose("best", cache=cache, counts=counts, names=names)
    assert first.name == "elunet-interp-32to256" and set(counts) == set(names)
    assert len(json.load(open(cache.path))) == 2
    counts.clear()
    again = _choose("best", cache=cache, counts=counts, names=names)
    assert counts == {} and again.estimates == first.estimates  # nothing ran: both came from the cache
    # another engine (here: another speed) is measured anew, and so is a changed model
    faster = dict(PACE, **{"elunet-jhead-16to256": 0.001})
    _choose("best", pace=faster, cache=cache, counts=counts, names=names)
    assert set(counts) == {"elunet-jhead-16to256"}
    counts.clear()
    engine = PacedEngine("elunet-interp-32to256", 0.0035, Clock(), counts)
    assert cache.get(engine) == pytest.approx(0.0035)
    engine.card = dict(engine.card, sha256="0" * 64)  # a re-exported model
    assert cache.get(engine) is None


def test_axial_slices_follow_the_canonical_orientation():
    from LowResSegLib.images.geometry import to_canonical

    arr = np.zeros((7, 20, 30), np.float32)  # (k, j, i)
    assert axial_slices(Volume(arr, np.eye(4))) == 7
    i_runs_s = np.array([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    assert axial_slices(Volume(arr, i_runs_s)) == 30
    for perm in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 2, 1]):
        aff = np.eye(4)
        aff[:3, :3] = np.eye(3)[perm] * [1, -1, 1]
        assert axial_slices(Volume(arr, aff)) == to_canonical(arr, aff)[0].shape[0]


def test_cli_segment_with_model_auto(tmp_path, monkeypatch, capsys):
    from LowResSegLib.frontends.cli import main

    repo = tmp_path / "models"
    for name in ("elunet-jhead-16to256", "elunet-interp-32to256"):
        shutil.copytree(os.path.join(ModelRepository().root, name), str(repo / name))
    monkeypatch.setenv("LOWRESSEG_CACHE", str(tmp_path / "cache"))
    sample = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Resources", "SampleData",
                          "sample-flair.nii.gz")
    out = tmp_path / "auto.nii.gz"
    assert main(["segment", sample, "--model", "auto", "--budget", "best", "--output", str(out),
                 "--repository", str(repo), "--threads", "1"]) == 0
    text = capsys.readouterr()
    assert "model auto: chose elunet-interp-32to256" in text.out and out.exists()
    assert "calibrating" in text.err and os.path.exists(str(tmp_path / "cache" / "calibration.json"))
    assert main(["segment", sample, "--model", "auto", "--budget", "best", "--repository", str(repo),
                 "--threads", "1"]) == 0
    assert "calibrating" not in capsys.readouterr().err  # the second run reads the cache
    assert main(["segment", sample, "--model", "auto", "--repository", str(repo)]) == 2
    assert "--model auto needs --budget" in capsys.readouterr().err
    assert main(["segment", sample, "--model", "elunet-jhead-16to256", "--budget", "1s",
                 "--repository", str(repo)]) == 2


def test_cli_compare_and_batch_with_model_auto(tmp_path, monkeypatch, capsys):
    from LowResSegLib.frontends.cli import main

    repo = tmp_path / "models"
    for name in ("elunet-jhead-16to256", "elunet-interp-32to256"):
        shutil.copytree(os.path.join(ModelRepository().root, name), str(repo / name))
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LOWRESSEG_CACHE", str(cache))
    # engines of known speed for the CLI: the cache holds their calibrations, so nothing is timed here
    for name, pace in (("elunet-jhead-16to256", 0.5), ("elunet-interp-32to256", 0.01)):
        CalibrationCache().put(LocalEngine(name, str(repo), threads=1), pace)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sample = os.path.join(root, "Resources", "SampleData", "sample-flair.nii.gz")
    assert main(["compare", sample, "--models", "auto,elunet-jhead-16to256", "--budget", "fastest",
                 "--out", str(tmp_path / "cmp"), "--repository", str(repo), "--threads", "1"]) == 0
    text = capsys.readouterr()
    assert "model auto: chose elunet-interp-32to256: the fastest" in text.out and "calibrating" not in text.err
    rows = json.load(open(str(tmp_path / "cmp" / "comparison.json")))
    models = [r["model"] for r in rows["runs"]]
    assert models == ["elunet-interp-32to256", "elunet-jhead-16to256"]
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(sample, str(cases / "a.nii.gz"))
    assert main(["batch", str(cases), "--model", "auto", "--budget", "2s", "--out", str(tmp_path / "batch"),
                 "--repository", str(repo), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "model auto: chose elunet-interp-32to256" in out and "155 slices" in out
    assert (tmp_path / "batch" / "a.nii.gz").exists()


def test_real_patient_dice_outranks_a_training_split_dice():
    """Issue 28: the card's bench Dice on unseen real patients ranks models; the training split's
    validation Dice only where a card has nothing better, and below any card that has."""
    from LowResSegLib.inference.modelchoice import quality_dice

    bench_card = {"metrics": {"real_patients_dice": 0.70, "val_dice_at_output_size": 0.60}}
    split_only = {"metrics": {"val_dice_at_output_size": 0.95}}
    assert quality_of(bench_card) > quality_of(split_only) > quality_of({"metrics": {}})
    assert quality_of({"metrics": {"real_patients_dice": 0.72}}) > quality_of(bench_card)
    assert quality_dice(bench_card) == (0.70, "real patients never trained on")
    assert quality_dice(split_only)[0] == 0.95


def test_the_recommended_model_is_the_best_measured_low_resolution_model(tmp_path):
    """What Slicer preselects follows the cards' measurements (issue 28), not a fixed name: re-measuring a model
    higher makes it the recommendation; the full-resolution reference and ensembles are never recommended."""
    from LowResSegLib.inference.modelchoice import recommended_model
    from LowResSegLib.training.export import replace_card

    shipped = ModelRepository()
    lows = [n for n in shipped.names() if not shipped.is_ensemble(n)
            and shipped.card(n)["input_size"] < shipped.card(n)["output_size"]]
    best = max(lows, key=lambda n: quality_of(shipped.card(n)))
    assert recommended_model(shipped) == best
    repo = tmp_path / "models"
    for name in shipped.names():
        shutil.copytree(os.path.join(shipped.root, name), str(repo / name))
    other = next(n for n in lows if n != best)
    card = json.load(open(str(repo / other / "lowresseg.json")))
    card["metrics"] = dict(card["metrics"], real_patients_dice=0.99)
    replace_card(str(repo / other), card)
    full = json.load(open(str(repo / "elunet-full-256" / "lowresseg.json")))
    full["metrics"] = dict(full["metrics"], real_patients_dice=0.999)
    replace_card(str(repo / "elunet-full-256"), full)
    assert recommended_model(ModelRepository(str(repo))) == other


def test_a_repository_with_no_measured_card_recommends_nothing(tmp_path):
    from LowResSegLib.inference.modelchoice import recommended_model
    from LowResSegLib.training.export import replace_card

    repo = tmp_path / "models"
    shutil.copytree(os.path.join(ModelRepository().root, "elunet-jhead-16to256"), str(repo / "elunet-jhead-16to256"))
    card = json.load(open(str(repo / "elunet-jhead-16to256" / "lowresseg.json")))
    card["metrics"] = {}
    replace_card(str(repo / "elunet-jhead-16to256"), card)
    assert recommended_model(ModelRepository(str(repo))) is None
