"""Segmentation runs in a child process, for a user interface that must stay responsive.

Inside 3D Slicer the main thread keeps Python's GIL while the Qt event loop idles (PythonQt
never releases it), so a worker thread would run only while the UI runs Python. The runs
therefore go to a child process (:mod:`LowResSegLib.frontends.worker`), as peer extensions do;
so does the edge server's connection test (:class:`BackgroundProbe`), which may wait 15 s.

The parent side here starts no thread either: the child's stdout (one JSON line per
:class:`RunEvent`) goes to a file in a private temporary folder, and :meth:`BackgroundRuns.poll`,
called from the UI's timer, reads the lines that have arrived. Results come back as
``.npy`` files in the same folder.

In Slicer the child is the ``PythonSlicer`` launcher, which runs the interpreter as a child of its
own and forwards no signal (:mod:`LowResSegLib.frontends.processtree`). The child therefore leads
its own process tree: Cancel kills the whole tree at once; a normal end is waited for (the
``finished`` event is held back until the child has exited). Only then is the folder removed, so
nothing is left behind; a cancelled or failed run delivers no result, so the caller has nothing
half-made to clean up.

Python 3.9+ (Slicer 5.8); numpy only.
"""

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from LowResSegLib.frontends import processtree
from LowResSegLib.frontends.childprotocol import REQUEST, VOLUME, RunEvent, event_line, parse_event_line

__all__ = ["RunEvent", "BackgroundRuns", "BackgroundProbe", "event_line", "parse_event_line", "FINISH_GRACE_S"]

# how long a child that said "finished" may take to exit before its tree is killed
FINISH_GRACE_S = 30.0
EVENTS, STDERR = "events.jsonl", "stderr.txt"
_LIVE = set()  # children started and not yet ended (held here, so an abandoned one is still stopped)


@atexit.register
def _stop_all():
    """When the parent's Python ends (Slicer quits) with a child still running, its tree goes too."""
    for child in list(_LIVE):
        try:
            child.cancel()
            child.poll()
        except Exception:
            pass


class _Child(object):
    """One request to the worker in a private folder, and the process tree that answers it."""

    def __init__(self, python=None, pythonpath=()):
        self.python, self.pythonpath = python or sys.executable, list(pythonpath)
        self.folder = self.process = None
        self.finished = False
        self._offset, self._out, self._err = 0, None, None
        self._cancelled = self._ended = False
        self._finish_deadline = None

    # ------------------------------------------------------------------ control

    def _launch(self, request, write_inputs=None):
        if self.folder is not None:
            raise RuntimeError("this child was already started")
        self.folder = tempfile.mkdtemp(prefix="LowResSeg-run-")  # mode 0700: a token stays private
        try:
            if write_inputs is not None:
                write_inputs(self.folder)
            fd = os.open(os.path.join(self.folder, REQUEST), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(request, f)
            self._out = open(os.path.join(self.folder, EVENTS), "wb")
            self._err = open(os.path.join(self.folder, STDERR), "wb")
            env = dict(os.environ)
            paths = self.pythonpath + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            if paths:
                env["PYTHONPATH"] = os.pathsep.join(paths)
            self.process = processtree.start([self.python, "-m", "LowResSegLib.frontends.worker", self.folder],
                                             stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                             env=env, cwd=self.folder)
            _LIVE.add(self)
        except BaseException:
            self._cleanup()
            raise
        return self

    def cancel(self):
        """Stop now: the child's whole process tree is killed; the next :meth:`poll` reports ``cancelled``."""
        if self.process is not None and not self._ended:
            self._cancelled = True
            processtree.stop(self.process)

    @property
    def running(self):
        return self.process is not None and not self.finished

    def wait(self, timeout=None):
        """Block until the child ends (for scripts and tests); returns all events not yet polled."""
        if self.process is not None and not self.finished:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.poll()

    # ------------------------------------------------------------------ events

    def poll(self):
        """Every event reported since the last call (never blocks)."""
        if self.process is None or self.finished:
            return []
        if self._cancelled:
            return self._end([RunEvent("cancelled"), RunEvent("finished")])
        exited = processtree.exited(self.process)  # read after this: every line of an exited child is there
        events, said_finished = [], self._finish_deadline is not None
        for event in self._new_events():
            if event.kind == "finished":
                said_finished = True
                continue
            try:
                self._receive(event)
            except Exception as exc:  # a missing or damaged result file: the run failed
                events.append(RunEvent("error", event.model, message="%s: the result could not be read (%s)"
                                       % (event.model, exc)))
                return self._end(events + [RunEvent("finished")])
            events.append(event)
        if said_finished:  # wait for the child (and what it started) to exit before the folder goes
            if self._finish_deadline is None:
                self._finish_deadline = time.monotonic() + FINISH_GRACE_S
            if exited or time.monotonic() > self._finish_deadline:
                return self._end(events + [RunEvent("finished")])
            return events
        if exited:  # ended without saying so: a crash, or a missing package; say what it printed
            message = "the segmentation process stopped unexpectedly (exit code %s): %s" % (
                self.process.returncode, self._last_error_line())
            return self._end(events + [RunEvent("error", message=message), RunEvent("finished")])
        return events

    def _receive(self, event):
        """Complete an event from the wire (e.g. load a result's file); raise if it cannot be."""

    # ------------------------------------------------------------------ internals

    def _new_events(self):
        with open(os.path.join(self.folder, EVENTS), "rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a line still being written waits for the next poll
        self._offset += len(complete)
        events = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                events.append(parse_event_line(line))
            except ValueError:
                continue  # something a library printed to stdout: not ours
        return events

    def _last_error_line(self):
        try:
            with open(os.path.join(self.folder, STDERR), "rb") as f:
                lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else "no message"

    def _end(self, events):
        self._ended = self.finished = True
        _LIVE.discard(self)
        processtree.stop(self.process)  # after a normal exit: nothing is left, only the reaping
        self._cleanup()
        return events

    def _cleanup(self):
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        if self.folder is not None:
            _remove_folder(self.folder)


def _remove_folder(folder, attempts=50):
    """Remove the folder; a just-killed process may still be dying (or, on Windows, hold a file) for a moment."""
    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        if not os.path.exists(folder):
            return
        time.sleep(0.05)


class BackgroundRuns(_Child):
    """Segment one volume with several models, one after another, in a child process.

    ``engine``: ``{"kind": "local", "repository": PATH, "threads": N}`` or ``{"kind": "remote",
    "url": URL, "token": TOKEN}``. A model named ``auto`` is chosen by the worker to fit ``budget``
    (``fastest``, ``balanced``, ``best`` or seconds per volume). ``python``: the interpreter that
    runs the worker (in Slicer: ``PythonSlicer``), by default this one. ``pythonpath``: folders the
    child must import from (where ``LowResSegLib`` is), put before the inherited ``PYTHONPATH``.
    """

    def __init__(self, volume, models, engine, chunk=32, python=None, pythonpath=(), budget=None):
        if not models:
            raise ValueError("no model to run")
        _Child.__init__(self, python, pythonpath)
        self.volume, self.models, self.engine, self.chunk = volume, list(models), dict(engine), int(chunk)
        self.budget = budget

    def start(self):
        """Write the request into a private folder and start the worker; returns self."""
        import numpy as np

        def write_volume(folder):
            np.save(os.path.join(folder, VOLUME), np.ascontiguousarray(self.volume.array))

        request = {"models": self.models, "engine": self.engine, "chunk": self.chunk, "budget": self.budget,
                   "affine": [[float(v) for v in row] for row in self.volume.affine],
                   "name": str(self.volume.meta.get("source") or "")}
        return self._launch(request, write_volume)

    def _receive(self, event):
        if event.kind == "result":
            event.segmentation = self._segmentation(event)

    def _segmentation(self, event):
        import numpy as np

        from LowResSegLib.inference.pipeline import Segmentation

        labels = np.load(event.path)
        if labels.shape != tuple(self.volume.shape):
            raise ValueError("labels of shape %s for a volume of %s" % (labels.shape, self.volume.shape))
        timings = dict(event.timings or {})
        seg = Segmentation(labels, None, event.card, timings, self.volume)
        if event.review:  # an ensemble: its "members disagree" mask and review flag (slicersupport shows them)
            disagree = np.load(event.review["path"])
            if disagree.shape != labels.shape:
                raise ValueError("a disagreement mask of shape %s for labels of %s" % (disagree.shape, labels.shape))
            seg.disagree, seg.review_info = disagree, dict(event.review)
        return seg


class BackgroundProbe(_Child):
    """Ask an edge server who it is and what it serves, in a child process (it may wait ~15 s).

    :meth:`poll` reports ``connected`` (``card``: the server's name, version, models and round trip
    in ms) or ``error`` (``message``: why not), then ``finished``.
    """

    def __init__(self, url, token=None, python=None, pythonpath=()):
        _Child.__init__(self, python, pythonpath)
        self.url, self.token = url, token

    def start(self):
        return self._launch({"probe": {"url": self.url, "token": self.token}})
