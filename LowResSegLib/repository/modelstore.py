"""The model repository: Triton layout plus a versioned model card, sha256-verified.

Layout (one folder per model)::

    <repo>/<name>/config.pbtxt     Triton config; the card JSON in parameters["lowresseg"]
    <repo>/<name>/lowresseg.json   the same card, readable
    <repo>/<name>/1/model.onnx     the graph; its sha256 is in the card

An **ensemble** is a folder with ``lowresseg.json`` only: ``"kind": "ensemble"`` and
``"ensemble": {"members": [...], "rule": "mean-probability-v1"}`` name other models of the same
repository, whose probabilities are averaged on the source grid and thresholded at the ensemble card's
threshold (:mod:`LowResSegLib.inference.ensemble`). It has no ONNX and no config.pbtxt of its own; an edge
server skips it (its members are what it serves) and a client runs its members on the server.

Python 3.6-compatible: the Jetson edge server imports this module (no dataclasses,
no f-strings with '=', no postponed annotations).
"""

import hashlib
import json
import os
import re

CARD_FILE = "lowresseg.json"
CONFIG_FILE = "config.pbtxt"
ONNX_RELPATH = os.path.join("1", "model.onnx")
CARD_FORMAT_VERSION = 1
REQUIRED_FIELDS = (
    "format_version", "name", "version", "task", "modality", "orientation", "input_size", "output_size",
    "classes", "normalization", "backbone", "head", "params", "macs", "training", "metrics", "sha256",
    "intended_use",
)
REQUIRED_CLASS_FIELDS = ("index", "name", "color", "category", "type")


class ModelStoreError(ValueError):
    """A model cannot be used; the message says which and what to do."""


class UnknownModelError(ModelStoreError):
    pass


class ModelCardError(ModelStoreError):
    pass


class ModelIntegrityError(ModelStoreError):
    pass


class EnsembleHasNoGraphError(ModelStoreError):
    """An ensemble is asked for its ONNX: it has none, its members have."""


def default_repository():
    """``$LOWRESSEG_MODELS`` or the ``Resources/Models`` folder shipped beside the package."""
    env = os.environ.get("LOWRESSEG_MODELS")
    if env:
        return env
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # LowResSegLib/
    return os.path.join(os.path.dirname(package), "Resources", "Models")


def sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def validate_card(card, where="model card"):
    """Raise ModelCardError naming every missing or malformed field."""
    if not isinstance(card, dict):
        raise ModelCardError("%s is not a JSON object" % where)
    missing = [k for k in REQUIRED_FIELDS if k not in card]
    if missing:
        raise ModelCardError("%s is missing required field(s): %s" % (where, ", ".join(missing)))
    if card["format_version"] != CARD_FORMAT_VERSION:
        raise ModelCardError("%s has format_version %r; this LowResSeg reads version %d"
                             % (where, card["format_version"], CARD_FORMAT_VERSION))
    for key in ("input_size", "output_size"):
        if not isinstance(card[key], int) or card[key] < 1:
            raise ModelCardError("%s: %s must be a positive integer, got %r" % (where, key, card[key]))
    if card["output_size"] % card["input_size"]:
        raise ModelCardError("%s: output_size %d is not a multiple of input_size %d"
                             % (where, card["output_size"], card["input_size"]))
    if not isinstance(card["classes"], list) or not card["classes"]:
        raise ModelCardError("%s: classes must be a non-empty list" % where)
    for c in card["classes"]:
        miss = [k for k in REQUIRED_CLASS_FIELDS if k not in c]
        if miss:
            raise ModelCardError("%s: class %r is missing %s" % (where, c.get("name"), ", ".join(miss)))
    if not re.match(r"^[0-9a-f]{64}$", str(card["sha256"])):
        raise ModelCardError("%s: sha256 must be 64 lower-case hex digits" % where)
    if "calibration" in card:
        t = (card["calibration"] or {}).get("threshold") if isinstance(card["calibration"], dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < float(t) < 1.0:
            raise ModelCardError("%s: calibration.threshold must be a number between 0 and 1, got %r" % (where, t))
    return card


DEFAULT_THRESHOLD = 0.5

ENSEMBLE_KIND = "ensemble"
#: mean of the members' tumour probabilities on the source grid, then the ensemble card's threshold
ENSEMBLE_RULE = "mean-probability-v1"
ENSEMBLE_REQUIRED_FIELDS = ("format_version", "kind", "name", "version", "task", "modality", "orientation",
                            "classes", "ensemble", "intended_use")


def is_ensemble(card):
    """True for an ensemble card (``"kind": "ensemble"``)."""
    return isinstance(card, dict) and card.get("kind") == ENSEMBLE_KIND


def validate_ensemble_card(card, where="ensemble card"):
    """Raise ModelCardError for the first thing wrong with an ensemble card (its members are checked by the
    repository, which can read them)."""
    if not isinstance(card, dict):
        raise ModelCardError("%s is not a JSON object" % where)
    missing = [k for k in ENSEMBLE_REQUIRED_FIELDS if k not in card]
    if missing:
        raise ModelCardError("%s is missing required field(s): %s" % (where, ", ".join(missing)))
    if card["format_version"] != CARD_FORMAT_VERSION:
        raise ModelCardError("%s has format_version %r; this LowResSeg reads version %d"
                             % (where, card["format_version"], CARD_FORMAT_VERSION))
    ens = card["ensemble"]
    if not isinstance(ens, dict):
        raise ModelCardError("%s: ensemble must be an object with members and rule" % where)
    members = ens.get("members")
    if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, str) and m for m in members):
        raise ModelCardError("%s: ensemble.members must list at least two model names, got %r" % (where, members))
    if len(set(members)) != len(members):
        raise ModelCardError("%s: ensemble.members names a model twice: %s" % (where, ", ".join(members)))
    if card["name"] in members:
        raise ModelCardError("%s: the ensemble names itself as a member" % where)
    if ens.get("rule") != ENSEMBLE_RULE:
        raise ModelCardError("%s: ensemble.rule %r is not one this LowResSeg knows (%s); update LowResSeg"
                             % (where, ens.get("rule"), ENSEMBLE_RULE))
    if not isinstance(card["classes"], list) or len(card["classes"]) != 1:
        raise ModelCardError("%s: an ensemble has exactly one class (tumour); got %r" % (where, card["classes"]))
    for c in card["classes"]:
        miss = [k for k in REQUIRED_CLASS_FIELDS if k not in c]
        if miss:
            raise ModelCardError("%s: class %r is missing %s" % (where, c.get("name"), ", ".join(miss)))
    review = ens.get("review")
    if review is not None:
        t = review.get("threshold") if isinstance(review, dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < float(t) < 1.0:
            raise ModelCardError("%s: ensemble.review.threshold must be a number between 0 and 1, got %r" % (where, t))
    if "calibration" in card:
        t = (card["calibration"] or {}).get("threshold") if isinstance(card["calibration"], dict) else None
        if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.0 < float(t) < 1.0:
            raise ModelCardError("%s: calibration.threshold must be a number between 0 and 1, got %r" % (where, t))
    if "postprocessing" in card and not isinstance(card["postprocessing"], dict):
        raise ModelCardError("%s: postprocessing must be an object" % where)
    return card


def _semantics(card):
    """What must agree between an ensemble and its members: the classes (index and name)."""
    return [(c.get("index"), c.get("name")) for c in card["classes"]]


def card_threshold(card):
    """The probability above which a voxel is tumour: the card's calibrated threshold, else 0.5.

    Why per model: a threshold chosen on the training side's validation split so that the median
    tumour volume is right (issue 28); radiologists follow gliomas by volume.
    """
    calibration = card.get("calibration") or {}
    return float(calibration.get("threshold", DEFAULT_THRESHOLD))


def pbtxt_escape(text):
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _pbtxt_unescape(text):
    return re.sub(r'\\(.)', lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), text)


def card_from_config(config_text):
    """The card JSON stored in config.pbtxt's ``parameters { key: "lowresseg" ... }``."""
    m = re.search(r'key:\s*"lowresseg"\s*value:\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"', config_text)
    if not m:
        return None
    return json.loads(_pbtxt_unescape(m.group(1)))


#: The tensors a LowResSeg graph returns, in this order. ``labels``: the thresholded mask (BOOL for one
#: class, INT32 class indices otherwise; TensorRT 8.2 has no UINT8). ``probabilities``: FP32 sigmoid.
#: ``probabilities_8bit``: the same rounded to multiples of 1/255, as FP16: what every engine reads,
#: because it compresses ~30x with gzip on the wire (docs/jetson.md) and agrees with FP32 on the
#: final labels within the tolerance measured in docs/BENCHMARKS.md.
LABELS, PROBABILITIES, PROBABILITIES_8BIT = "labels", "probabilities", "probabilities_8bit"
#: The probability outputs an engine may read, preferred first (older exports lack the 8-bit one).
PROBABILITY_OUTPUTS = (PROBABILITIES_8BIT, PROBABILITIES)


def graph_outputs(card):
    """[(name, KServe datatype, dims without the batch axis)] of a graph exported for ``card``."""
    big_r, k = card["output_size"], len(card["classes"])
    return [(LABELS, "BOOL" if k == 1 else "INT32", [big_r, big_r]),
            (PROBABILITIES, "FP32", [k, big_r, big_r]),
            (PROBABILITIES_8BIT, "FP16", [k, big_r, big_r])]


def triton_config(card, max_batch_size=64):
    """config.pbtxt text for a card (Triton's onnxruntime backend reads it as is)."""
    r = card["input_size"]
    outputs = ",\n".join('  { name: "%s" data_type: TYPE_%s dims: [ %s ] }' % (name, dtype, ", ".join(map(str, dims)))
                         for name, dtype, dims in graph_outputs(card))
    return (
        'name: "%s"\nplatform: "onnxruntime_onnx"\nmax_batch_size: %d\n'
        'input [\n  { name: "image" data_type: TYPE_FP32 dims: [ 1, %d, %d ] }\n]\n'
        'output [\n%s\n]\n'
        'parameters {\n  key: "lowresseg"\n  value: { string_value: "%s" }\n}\n'
    ) % (card["name"], max_batch_size, r, r, outputs, pbtxt_escape(json.dumps(card, sort_keys=True)))


class ModelRepository(object):
    """Read-only view of a model repository folder."""

    def __init__(self, root=None):
        self.root = os.path.abspath(root or default_repository())

    def names(self):
        if not os.path.isdir(self.root):
            return []
        return sorted(d for d in os.listdir(self.root)
                      if not d.startswith(".") and os.path.isfile(os.path.join(self.root, d, CARD_FILE)))

    def graph_names(self):
        """The models with a graph of their own: every name but the ensembles (a broken card counts as one)."""
        out = []
        for n in self.names():
            try:
                if self.is_ensemble(n):
                    continue
            except ModelStoreError:
                pass
            out.append(n)
        return out

    def model_dir(self, name):
        if name not in self.names():
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError("unknown model %r in %s (available: %s); run `lowresseg models` to list them"
                                    % (name, self.root, known))
        return os.path.join(self.root, name)

    def _raw_card(self, name):
        path = os.path.join(self.model_dir(name), CARD_FILE)
        try:
            with open(path) as f:
                return json.load(f)
        except ValueError as e:
            raise ModelCardError("model card %s is not valid JSON: %s" % (path, e))

    def is_ensemble(self, name):
        """True when ``name`` is an ensemble (a card naming member models, no graph of its own)."""
        return is_ensemble(self._raw_card(name))

    def members(self, name):
        """The member model names of an ensemble, in card order (the card is validated first)."""
        card = self.card(name)
        if not is_ensemble(card):
            raise ModelCardError("model %r is not an ensemble" % name)
        return list(card["ensemble"]["members"])

    def _ensemble_card(self, name, card):
        """The validated ensemble card, with what generic code reads from a card derived from its members:
        ``input_size`` (the largest member's), ``output_size``, ``normalization`` (shared, or the first
        member's when they differ: each member is still prepared by its own method), ``params`` and ``macs``
        (sums), ``head`` "ensemble", and ``sha256``: a digest of the card and the members' sha256."""
        where = "ensemble card of %r" % name
        validate_ensemble_card(card, where)
        if card["name"] != name:
            raise ModelCardError("model card of %r names itself %r; rename the folder or fix the card"
                                 % (name, card["name"]))
        member_cards = []
        for m in card["ensemble"]["members"]:
            if m not in self.names():
                raise UnknownModelError("ensemble %r names member %r, which is not in %s (available: %s)"
                                        % (name, m, self.root, ", ".join(n for n in self.names() if n != name)))
            if is_ensemble(self._raw_card(m)):
                raise ModelCardError("ensemble %r names %r, itself an ensemble; name its members instead" % (name, m))
            mc = self.card(m)
            if _semantics(mc) != _semantics(card):
                raise ModelCardError("ensemble %r: member %r segments %s, the ensemble %s; members must give the "
                                     "same classes" % (name, m, _semantics(mc), _semantics(card)))
            member_cards.append(mc)
        sizes = [mc["output_size"] for mc in member_cards]
        digest = hashlib.sha256(json.dumps(card, sort_keys=True).encode("utf-8"))
        for mc in member_cards:
            digest.update(mc["sha256"].encode("ascii"))
        methods = [mc["normalization"].get("method") for mc in member_cards]
        derived = {
            "input_size": max(mc["input_size"] for mc in member_cards),
            "output_size": max(sizes),
            "normalization": dict(member_cards[0]["normalization"]) if len(set(methods)) == 1 else
            {"method": "per-member", "members": methods},
            "params": {"backbone": sum(mc["params"]["backbone"] for mc in member_cards),
                       "head": sum(mc["params"]["head"] for mc in member_cards)},
            "macs": {"backbone": sum(mc["macs"]["backbone"] for mc in member_cards),
                     "head": sum(mc["macs"]["head"] for mc in member_cards)},
            "head": ENSEMBLE_KIND, "backbone": {"name": ENSEMBLE_KIND}, "metrics": {},
            "sha256": digest.hexdigest(),
            "member_input_sizes": [mc["input_size"] for mc in member_cards],
        }
        out = dict(card)
        for key, value in derived.items():
            out.setdefault(key, value)
        return out

    def card(self, name):
        """The validated card; the config.pbtxt copy must agree with lowresseg.json.

        An ensemble's card is checked against its members (they exist, are not ensembles, and give the
        same classes) and completed from them (see ``_ensemble_card``)."""
        d = self.model_dir(name)
        card = self._raw_card(name)
        if is_ensemble(card):
            return self._ensemble_card(name, card)
        validate_card(card, "model card of %r" % name)
        if card["name"] != name:
            raise ModelCardError("model card of %r names itself %r; rename the folder or fix the card"
                                 % (name, card["name"]))
        cfg_path = os.path.join(d, CONFIG_FILE)
        if not os.path.isfile(cfg_path):
            raise ModelCardError("model %r has no %s" % (name, CONFIG_FILE))
        with open(cfg_path) as f:
            cfg_card = card_from_config(f.read())
        if cfg_card != card:
            raise ModelCardError("model %r: the card in %s differs from %s; re-export the model"
                                 % (name, CONFIG_FILE, CARD_FILE))
        return card

    def onnx_path(self, name, verify=True):
        """Path of model.onnx, after checking its sha256 against the card."""
        card = self.card(name)
        if is_ensemble(card):
            raise EnsembleHasNoGraphError("model %r is an ensemble of %s; it has no ONNX of its own (LowResSeg runs "
                                          "its members)" % (name, ", ".join(card["ensemble"]["members"])))
        path = os.path.join(self.model_dir(name), ONNX_RELPATH)
        if not os.path.isfile(path):
            raise ModelIntegrityError("model %r has no %s" % (name, ONNX_RELPATH))
        if verify:
            actual = sha256_file(path)
            if actual != card["sha256"]:
                raise ModelIntegrityError(
                    "model %r failed its integrity check: %s has sha256 %s… but its card expects %s…; "
                    "the file was changed or damaged, restore it or re-export the model"
                    % (name, path, actual[:12], card["sha256"][:12]))
        return path

    def usable_names(self):
        """The models that load (their sha256 matches), for a choice among them."""
        return [n for n in self.names() if self.check(n)[0]]

    def check(self, name):
        """(ok, message) for listings: never raises for a broken model."""
        try:
            if self.is_ensemble(name):
                for member in self.members(name):
                    try:
                        self.onnx_path(member)
                    except ModelStoreError as e:
                        return False, "ensemble %r cannot run: %s" % (name, e)
            else:
                self.onnx_path(name)
            return True, "ok"
        except ModelStoreError as e:
            return False, str(e)
