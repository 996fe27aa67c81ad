"""What the Slicer module's child process and its parent exchange: two request files and event lines.

The parent (:mod:`LowResSegLib.frontends.background`) writes ``request.json`` and ``volume.npy`` (or, to test
an edge server's connection, ``request.json`` alone) into a private folder; the child (:mod:`LowResSegLib.frontends.worker`) answers with one JSON line per
:class:`RunEvent` on stdout. Both sides import the names from here, so neither imports the other.

Python 3.9+ (Slicer 5.8); standard library only.
"""

import json

__all__ = ["REQUEST", "VOLUME", "RunEvent", "event_line", "parse_event_line"]

REQUEST, VOLUME = "request.json", "volume.npy"

_KINDS = ("chosen", "progress", "result", "connected", "error", "cancelled", "finished")


class RunEvent(object):
    """What the worker reports: ``kind`` is one of

    - ``"chosen"``: ``model`` picked for ``auto``, ``message`` why (LowResSegLib.inference.modelchoice);
    - ``"progress"``: ``model``, ``fraction`` (0..1 over all runs);
    - ``"result"``: ``model``, ``segmentation`` (a :class:`LowResSegLib.inference.pipeline.Segmentation`);
      on the wire: ``path`` (the labels' ``.npy``), ``card`` and ``timings``; for an ensemble also ``review``:
      ``score``, ``threshold``, ``flag``, ``line`` and ``path`` (the "members disagree" mask's ``.npy``);
    - ``"connected"``: an edge server answered a connection test; ``card``: its ``name``, ``version``,
      ``models`` and the round trip ``ms``;
    - ``"error"``: ``model``, ``message`` (one line for the user); the remaining runs are skipped;
    - ``"cancelled"``: the user cancelled; no further results;
    - ``"finished"``: always the last event.
    """

    __slots__ = ("kind", "model", "fraction", "segmentation", "message", "path", "card", "timings", "review")

    def __init__(self, kind, model=None, fraction=None, segmentation=None, message=None, path=None, card=None,
                 timings=None, review=None):
        if kind not in _KINDS:
            raise ValueError("unknown run event %r" % (kind,))
        self.kind, self.model, self.fraction = kind, model, fraction
        self.segmentation, self.message = segmentation, message
        self.path, self.card, self.timings, self.review = path, card, timings, review

    def __repr__(self):
        return "RunEvent(%s, %s)" % (self.kind, self.model)


def event_line(event):
    """One JSON line for the wire (no newline); the segmentation itself travels as a file."""
    body = {"event": event.kind}
    for key in ("model", "fraction", "message", "path", "card", "timings", "review"):
        value = getattr(event, key)
        if value is not None:
            body[key] = value
    return json.dumps(body, sort_keys=True)


def parse_event_line(line):
    """The :class:`RunEvent` of one line; ValueError for anything else (a stray print, half a line)."""
    body = json.loads(line)
    if not isinstance(body, dict) or body.get("event") not in _KINDS:
        raise ValueError("not a run event: %r" % (line[:80],))
    return RunEvent(body["event"], model=body.get("model"), fraction=body.get("fraction"),
                    message=body.get("message"), path=body.get("path"), card=body.get("card"),
                    timings=body.get("timings"), review=body.get("review"))
