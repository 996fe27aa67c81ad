"""What the Slicer module shows and names, decided here so the module stays a thin shell.

Nothing here imports Slicer: segment names, colours and terminology strings from a model
card, node names, the model summary for the UI, and the layout XML for N linked views.
Python 3.9+ (Slicer 5.8).
"""

import os
import re
import shutil
import sys

__all__ = ["terminology_tag", "segment_specs", "node_name", "card_summary", "side_by_side_layout",
           "SIDE_BY_SIDE_LAYOUT_ID", "view_name", "worker_python", "secret_file_for", "AUTO_CHOICES",
           "auto_budget", "auto_summary", "is_comparison_view", "comparison_view_lists",
           "install_failure_reason", "RUN_ATTRIBUTE", "COMPARISON_VIEW_ATTRIBUTE"]

_CONTEXT = "Segmentation category and type - DICOM master list"
_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
SIDE_BY_SIDE_LAYOUT_ID = 58410  # a custom layout number, clear of Slicer's own (< 1000)
_COLOURS = ("#E17012", "#3A9BDC", "#6DB33F", "#B05FC1", "#D9B21C", "#D94F6B")


def _code(entry):
    return "%s^%s^%s" % (entry["scheme"], entry["value"], entry["meaning"])


def terminology_tag(cls):
    """Slicer's terminology entry string for a card class: category and type, no anatomy."""
    return "%s~%s~%s~^^~%s~^^~^^" % (_CONTEXT, _code(cls["category"]), _code(cls["type"]), _ANATOMIC_CONTEXT)


def segment_specs(card):
    """Per card class: label value, name, colour (0..1) and terminology string."""
    out = []
    for cls in card["classes"]:
        out.append({
            "index": int(cls["index"]), "name": str(cls["name"]),
            "color": tuple(float(c) / 255.0 for c in cls.get("color", (128, 128, 128))),
            "terminology": terminology_tag(cls) if cls.get("category") and cls.get("type") else None,
        })
    return out


#: An ensemble's extra segment: the voxels where its members disagree (LowResSegLib.inference.ensemble).
DISAGREE_SPEC = {"index": 0, "name": "members disagree", "color": (1.0, 0.85, 0.1), "terminology": None}


def segment_masks(segmentation):
    """[(spec, uint8 mask)] to put in a run's segmentation node: one per card class, and for an ensemble
    the "members disagree" segment (a separate segment, so the user can hide or show it)."""
    out = [(spec, (segmentation.labels == spec["index"]).astype("uint8")) for spec in segment_specs(segmentation.card)]
    disagree = getattr(segmentation, "disagree", None)
    if disagree is not None:
        out.append((dict(DISAGREE_SPEC), (disagree > 0).astype("uint8")))
    return out


def review_lines(segmentation):
    """[the review line] of an ensemble run flagged for review, else []: for the results table."""
    info = getattr(segmentation, "review_info", None) or {}
    return [info["line"]] if info.get("flag") else []


def review_warning(segmentations):
    """The status line's warning for ensemble runs flagged for review ("" when none is)."""
    lines = []
    for model, seg in sorted(segmentations.items()):
        info = getattr(seg, "review_info", None) or {}
        if info.get("flag"):
            lines.append("%s: %s" % (model, info.get("line")))
    return (" ⚠ " + "; ".join(lines)) if lines else ""


# the model selector's automatic entries: the worker picks the model (LowResSegLib.inference.modelchoice)
AUTO_CHOICES = (("Auto: fastest", "fastest"), ("Auto: balanced", "balanced"), ("Auto: best quality", "best"))


def auto_budget(entry):
    """The modelchoice budget of a model-selector entry, or None for a model name."""
    return dict(AUTO_CHOICES).get(entry)


def auto_summary(entry):
    """What an automatic entry does, for the label under the selector."""
    budget = auto_budget(entry)
    what = {"fastest": "the fastest model", "best": "the model of the best card quality",
            "balanced": "the best card quality among the models that take at most twice the fastest's time"}[budget]
    return ("%s: picks %s, timed on this computer or server (measured once per model, then cached); the status "
            "line says which model and why." % (entry, what))


def node_name(volume_name, model):
    """Base name of a run's segmentation node; the scene makes it unique."""
    return "%s \u00b7 %s" % (volume_name, model)


def card_summary(card):
    """Two lines a radiologist reads before choosing a model."""
    if card.get("kind") == "ensemble":
        return ("%s: an ensemble of %s (mean of their probabilities); shows where they disagree as a separate "
                "segment and flags the case for review when they disagree much. %s" % (
                    card["name"], ", ".join(card["ensemble"]["members"]), card.get("intended_use", "")))
    metrics = card.get("metrics") or {}
    val = metrics.get("val_dice_at_output_size")
    return ("%s: %d\u00b2 input \u2192 %d\u00b2 mask, %s head (%d parameters). %s%s" % (
        card["name"], card["input_size"], card["output_size"], card.get("head", "?"),
        (card.get("params") or {}).get("head", 0), card.get("intended_use", ""),
        "; validation Dice %.2f" % val if isinstance(val, (int, float)) else ""))


def view_name(n):
    """Slice view tag of the n-th run (0-based) in the side-by-side layout."""
    return "LowResSeg%d" % (n + 1)


# node attributes (kept in the scene file): the model of a run's segmentation node, and the comparison view
# it is shown in (absent when the run is not in the side-by-side comparison)
RUN_ATTRIBUTE = "LowResSeg.model"
COMPARISON_VIEW_ATTRIBUTE = "LowResSeg.comparisonView"


def is_comparison_view(layout_name):
    """Whether a view (by its layout name) is one of the side-by-side comparison's."""
    return re.match(r"^LowResSeg[0-9]+$", layout_name or "") is not None


def comparison_view_lists(runs, views):
    """Which views each run's segmentation is shown in, once a comparison exists.

    ``runs``: ``(node id, comparison view name or None)`` for every run's segmentation node;
    ``views``: ``(view node id, layout name)`` for every slice and 3-D view in the scene.
    A run is shown in every view outside the comparison and, in the comparison, in its own view
    only; a run not in the comparison is hidden from all comparison views. Returns
    ``{node id: [view node ids]}``, or ``{}`` while there is no comparison view (nothing to restrict:
    an empty list would mean *every* view to Slicer).
    """
    ids = {name: vid for vid, name in views}
    ordinary = [vid for vid, name in views if not is_comparison_view(name)]
    if not any(is_comparison_view(name) for _vid, name in views):
        return {}
    lists = {}
    for node_id, own in runs:
        shown = ([ids[own]] if own and is_comparison_view(own) and own in ids else []) + ordinary
        if shown:
            lists[node_id] = shown
    return lists


def install_failure_reason(exc):
    """Why a package install failed, in one line. ``slicer.util.pip_install`` raises CalledProcessError, whose
    text is only the command and exit status; pip's own messages went to the Python console and the log."""
    code = getattr(exc, "returncode", None)
    if code is not None:
        return "pip stopped with exit status %s (its messages are in the Python console and the application log)" % (
            code,)
    text = str(exc).strip()
    return text.splitlines()[-1] if text else type(exc).__name__


def side_by_side_layout(n):
    """Layout XML with ``n`` axial slice views, at most 3 per row."""
    if n < 1:
        raise ValueError("a side-by-side layout needs at least one run")
    rows, items = [], []
    for i in range(n):
        items.append(
            '<item><view class="vtkMRMLSliceNode" singletontag="%s">'
            '<property name="orientation" action="default">Axial</property>'
            '<property name="viewlabel" action="default">%d</property>'
            '<property name="viewcolor" action="default">%s</property></view></item>'
            % (view_name(i), i + 1, _COLOURS[i % len(_COLOURS)]))
        if len(items) == 3 or i == n - 1:
            rows.append('<item><layout type="horizontal">%s</layout></item>' % "".join(items))
            items = []
    return '<layout type="vertical">%s</layout>' % "".join(rows)


def worker_python(executable=None, which=shutil.which):
    """The interpreter that runs :mod:`LowResSegLib.frontends.worker` beside Slicer.

    Inside Slicer ``sys.executable`` is the Slicer application, so the worker needs ``PythonSlicer``
    (on Slicer's PATH, or beside the executable), as ``slicer.util.pip_install`` does. Outside
    Slicer (tests, PythonSlicer itself) a Python executable is used as it is.
    """
    executable = executable or sys.executable
    found = which("PythonSlicer")
    if found:
        return found
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        beside = os.path.join(os.path.dirname(executable), name)
        if os.path.isfile(beside):
            return beside
    if os.path.basename(executable).lower().startswith("python"):
        return executable
    raise RuntimeError("PythonSlicer was not found next to %s or on the PATH; reinstall Slicer, or report this "
                       "with your Slicer version" % executable)


def secret_file_for(settings_file, name):
    """Where the module keeps a secret (``server-token``, ``pacs-credentials``): a private file beside
    Slicer's settings file, whose path, not content, goes into the settings."""
    return os.path.join(os.path.dirname(os.path.abspath(settings_file)), "LowResSeg", name)
