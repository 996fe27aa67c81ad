"""``--model auto``: the best shipped model whose time on *this* engine fits a time budget.

* **Quality** is the number in each model card: ``metrics.real_patients_dice`` where the card has it (the
  mean Dice on ``lgg:val`` and ``real:val`` measured by ``bench/quality.py``: patients the model never saw),
  else ``metrics.val_dice_at_output_size`` (the training split's validation Dice). A card with the
  first ranks above every card without it, since the two are measured on different cases.
* **Time** is measured, not assumed: a short calibration runs :func:`LowResSegLib.inference.pipeline.segment`
  on a synthetic 240×240 head slab with the engine, so it holds pre- and post-processing and, for a
  remote engine, the server's time plus the transfer. It gives seconds per axial slice; a volume's
  estimate is that times its slices.
* Calibrations are **cached** per engine and model (``calibration.json`` in the LowResSeg cache
  folder). The key holds what the engine is (onnxruntime version, providers, threads, CPU; or
  the server's URL, name and version), the model's sha256 and the LowResSeg version, so a change
  of either is a new calibration.

The CLI (``segment``, ``batch``, ``compare``) and the Slicer module call :func:`choose_model`.
A budget is seconds per volume (``"1.5s"``, ``"800ms"``, ``1.5``) or a preset: ``fastest``,
``balanced`` (the best model within twice the fastest's time) or ``best``. Python 3.9+.
"""

import hashlib
import json
import math
import os
import platform
import re
import time

import numpy as np

__all__ = ["cpu_name", "ModelChoice", "CalibrationCache", "PRESETS", "parse_budget", "quality_of", "quality_dice", "engine_identity",
           "calibrate", "choose_model", "axial_slices", "CALIBRATION_SLICES", "BRATS_SLICES"]

CALIBRATION_SLICES = 24  # one slab of a 240×240 head: long enough to time, ~1-2 s for the slowest model
BRATS_SLICES = 155  # the volume a budget refers to when none is at hand (a batch): 240×240×155
PRESETS = {"fastest": 0.0, "balanced": "balanced", "best": math.inf}
_BALANCED = 2.0  # "balanced": the best model that takes at most this many times the fastest's time


def parse_budget(text):
    """Seconds (float; inf for ``best``) or ``"balanced"`` from ``"1.5s"``, ``"800ms"``, ``"2"`` or a preset."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        word = str(text).strip().lower()
        if word in PRESETS:
            return PRESETS[word]
        m = re.match(r"^([0-9]*\.?[0-9]+)\s*(ms|s|sec|seconds?)?$", word)
        if not m:
            raise ValueError("cannot read the budget %r: give seconds per volume (1.5s, 800ms) or one of %s"
                             % (text, ", ".join(PRESETS)))
        seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    if seconds < 0 or math.isnan(seconds):
        raise ValueError("the budget must be a time of at least 0 s, got %r" % (text,))
    return seconds


def _number(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return -math.inf
    return value if not math.isnan(value) else -math.inf


def quality_of(card):
    """The card's quality number (see the module docstring); -inf when it has none.

    A real-patient Dice is lifted by 1.0 so that it ranks above any training-split Dice (both lie in
    [0, 1]); the number reported to the user is :func:`quality_dice`.
    """
    metrics = card.get("metrics") or {}
    real = _number(metrics.get("real_patients_dice"))
    if real > -math.inf:
        return 1.0 + real
    return _number(metrics.get("val_dice_at_output_size"))


def quality_dice(card):
    """The Dice behind :func:`quality_of`, and what it was measured on."""
    metrics = card.get("metrics") or {}
    real = _number(metrics.get("real_patients_dice"))
    if real > -math.inf:
        return real, "real patients never trained on"
    return _number(metrics.get("val_dice_at_output_size")), "the training split's validation"


def recommended_model(repository):
    """The model a front end preselects: of the single low-resolution models (input below output size; not an
    ensemble, not the full-resolution reference), the one whose card measures best (:func:`quality_of`: a Dice on
    real patients never trained on outranks a training-split Dice), the smaller input on a tie.

    Why not a fixed name: issue 28 retrains the models on real patients and ships only those that pass the
    ship rule, so which one is best is a measurement, not a choice made once. None when no such card carries a
    quality."""
    from LowResSegLib.repository.modelstore import is_ensemble

    cards = [repository.card(n) for n in repository.names()]
    low = [c for c in cards if not is_ensemble(c) and c.get("input_size", 0) < c.get("output_size", 0)
           and quality_of(c) > -math.inf]
    if not low:  # nothing measured: no recommendation (the front end keeps its first entry)
        return None
    return max(low, key=lambda c: (quality_of(c), -c["input_size"]))["name"]


def cpu_name():
    """The processor's model name (Linux), else what the platform says: part of an engine's identity."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def engine_identity(engine):
    """What makes this engine's times what they are (without the model): the calibration cache key part."""
    own = getattr(engine, "calibration_identity", None)
    if callable(own):
        return own()
    from LowResSegLib.inference.engines import LocalEngine, RemoteEngine

    if isinstance(engine, LocalEngine):
        import onnxruntime as ort

        return "local onnxruntime %s %s threads=%s optimised=%s; %s x%d; python %s" % (
            ort.__version__, ",".join(engine.session.get_providers()), getattr(engine, "threads", 0),
            getattr(engine, "optimised", False), cpu_name(), os.cpu_count() or 0, platform.python_version())
    if isinstance(engine, RemoteEngine):
        try:
            meta = engine.server.get_json("/v2")
        except Exception:  # an old server without metadata: the URL alone
            meta = {}
        return "remote %s %s %s; client %s x%d" % (engine.url, meta.get("name"), meta.get("version"),
                                                   cpu_name(), os.cpu_count() or 0)
    return "%s.%s" % (type(engine).__module__, type(engine).__name__)


def _default_cache_path():
    root = os.environ.get("LOWRESSEG_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lowresseg"))
    return os.path.join(root, "calibration.json")


class CalibrationCache(object):
    """Seconds per slice by (engine, model), in one JSON file, written atomically."""

    def __init__(self, path=None):
        self.path = path or _default_cache_path()

    @staticmethod
    def key(engine):
        from LowResSegLib import __version__

        card = engine.card
        text = "%s|%s|%s|lowresseg %s" % (engine_identity(engine), card["name"], card.get("sha256"), __version__)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def _load(self):
        try:
            with open(self.path) as f:
                data = json.load(f)
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: calibrate again

    def get(self, engine):
        entry = self._load().get(self.key(engine))
        return float(entry["seconds_per_slice"]) if entry else None

    def put(self, engine, seconds_per_slice):
        data = self._load()
        data[self.key(engine)] = {"model": engine.card["name"], "seconds_per_slice": float(seconds_per_slice),
                                  "identity": engine_identity(engine), "measured": time.strftime("%Y-%m-%d %H:%M")}
        try:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path + ".part", "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(self.path + ".part", self.path)
        except OSError:
            pass  # a read-only home: the choice still works, it is only measured again next time


def calibration_volume(slices=CALIBRATION_SLICES):
    """A synthetic 240×240 head slab at 1 mm: an ellipsoid of tissue with a bright blob, noisy background."""
    from LowResSegLib.images.geometry import Volume

    rng = np.random.default_rng(0)
    kk, jj, ii = np.ogrid[:slices, :240, :240]
    head = ((jj - 120) / 95.0) ** 2 + ((ii - 120) / 80.0) ** 2 + ((kk - slices / 2.0) / 90.0) ** 2 < 1
    blob = ((jj - 90) / 20.0) ** 2 + ((ii - 140) / 20.0) ** 2 < 1
    image = np.where(head, 600.0, 20.0) + np.where(head & blob, 500.0, 0.0) + rng.normal(0, 15, head.shape)
    return Volume(np.abs(image).astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))


def calibrate(engine, slices=CALIBRATION_SLICES, repeats=2, clock=time.perf_counter):
    """Seconds per axial slice of ``segment`` with ``engine``: the best of ``repeats`` after a warm-up."""
    from LowResSegLib.inference.pipeline import segment

    volume = calibration_volume(slices)
    segment(calibration_volume(min(4, slices)), engine, keep_probabilities=False)  # warm-up, connection set up
    best = math.inf
    for _ in range(max(1, repeats)):
        t = clock()
        segment(volume, engine, keep_probabilities=False)
        best = min(best, clock() - t)
    return best / slices


class ModelChoice(object):
    """``name`` chosen, ``engine`` (ready to run), ``reason`` (one line for the user), ``estimates``
    {name: (seconds for the volume, card quality)}."""

    def __init__(self, name, engine, reason, estimates):
        self.name, self.engine, self.reason, self.estimates = name, engine, reason, estimates


def axial_slices(volume):
    """Axial slices the pipeline will cut from a :class:`Volume` (its canonical k extent)."""
    from LowResSegLib.images.geometry import canonical_transform

    world, _ = canonical_transform(volume.affine)
    return int(volume.array.shape[::-1][list(world).index(2)])


def _fmt(seconds):
    return "%.0f ms" % (1000 * seconds) if seconds < 1 else "%.1f s" % seconds


def choose_model(names, budget, engine_for, slices=BRATS_SLICES, cache=None, clock=time.perf_counter, log=None,
                 calibration_slices=CALIBRATION_SLICES):
    """The highest card quality among ``names`` whose estimated time for ``slices`` fits ``budget``.

    ``engine_for(name)`` makes the engine a model would run on (local or remote); ``budget`` as
    :func:`parse_budget` reads it. ``cache``: a :class:`CalibrationCache` (default file), or False
    to measure every time. ``log(text)`` hears about each calibration. When no model fits, the
    fastest is chosen and the reason says so.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("no models to choose from; see `lowresseg models`")
    budget = parse_budget(budget)
    cache = CalibrationCache() if cache is None else cache
    engines, estimates, cards = {}, {}, {}
    for name in names:
        engine = engines[name] = engine_for(name)
        per_slice = cache.get(engine) if cache else None
        if per_slice is None:
            if log:
                log("calibrating %s on this engine (once; cached)" % name)
            per_slice = calibrate(engine, calibration_slices, clock=clock)
            if cache:
                cache.put(engine, per_slice)
        estimates[name] = (per_slice * slices, quality_of(engine.card))
        cards[name] = engine.card
    dice = lambda n: "Dice %.3f on %s" % quality_dice(cards[n])  # noqa: E731
    fastest = min(names, key=lambda n: (estimates[n][0], -estimates[n][1]))
    if budget == "balanced":
        limit, what = _BALANCED * estimates[fastest][0], "balanced (at most %gx the fastest)" % _BALANCED
    else:
        limit, what = budget, ("best quality" if budget == math.inf else "a budget of %s" % _fmt(budget))
    fits = [n for n in names if estimates[n][0] <= limit]
    if limit == 0:
        name = fastest
        reason = "chose %s: the fastest on this engine, estimated %s for %d slices (card %s)" % (
            name, _fmt(estimates[name][0]), slices, dice(name))
    elif fits:
        name = max(fits, key=lambda n: (estimates[n][1], -estimates[n][0]))
        better = [n for n in names if estimates[n][1] > estimates[name][1]]
        if budget == math.inf:
            reason = ("chose %s: the best card quality (%s) of the %d models (--budget best), estimated %s for %d "
                      "slices on this engine" % (name, dice(name), len(names), _fmt(estimates[name][0]), slices))
        else:
            reason = ("chose %s: the best card quality (%s) among the models that fit %s, estimated %s for "
                      "%d slices on this engine" % (name, dice(name), what, _fmt(estimates[name][0]), slices))
        if better:
            top = max(better, key=lambda n: estimates[n][1])
            reason += "; %s (%s) would take %s" % (top, dice(top), _fmt(estimates[top][0]))
    else:
        name = fastest
        reason = ("chose %s, the fastest: no model fits %s on this engine (it takes an estimated %s for %d slices)"
                  % (name, what, _fmt(estimates[name][0]), slices))
    for other, engine in engines.items():
        if other != name and hasattr(engine, "close"):
            engine.close()
    return ModelChoice(name, engines[name], reason, estimates)
