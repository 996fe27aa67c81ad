"""The model repository: Triton layout plus a versioned model card, sha256-verified.

Layout (one folder per model)::

    <repo>/<name>/config.pbtxt     Triton config; the card JSON in parameters["lowresseg"]
    <repo>/<name>/lowresseg.json   the same card, readable
    <repo>/<name>/1/model.onnx     the graph; its sha256 is in the card

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

    def model_dir(self, name):
        if name not in self.names():
            known = ", ".join(self.names()) or "none"
            raise UnknownModelError("unknown model %r in %s (available: %s); run `lowresseg models` to list them"
                                    % (name, self.root, known))
        return os.path.join(self.root, name)

    def card(self, name):
        """The validated card; the config.pbtxt copy must agree with lowresseg.json."""
        d = self.model_dir(name)
        path = os.path.join(d, CARD_FILE)
        try:
            with open(path) as f:
                card = json.load(f)
        except ValueError as e:
            raise ModelCardError("model card %s is not valid JSON: %s" % (path, e))
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
            self.onnx_path(name)
            return True, "ok"
        except ModelStoreError as e:
            return False, str(e)
