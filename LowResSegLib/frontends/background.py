"""Segmentation runs in a child process, for a user interface that must stay responsive.

Inside 3D Slicer the main thread keeps Python's GIL while the Qt event loop idles (PythonQt
never releases it), so a worker thread would run only while the UI runs Python. The runs
therefore go to a child process (:mod:`LowResSegLib.frontends.worker`), as peer extensions do.

The parent side here starts no thread either: the child's stdout (one JSON line per
:class:`RunEvent`) goes to a file in a private temporary folder, and :meth:`BackgroundRuns.poll`,
called from the UI's timer, reads the lines that have arrived. Results come back as
``.npy`` files in the same folder. Cancel kills the child. The folder is removed when the
runs end, fail or are cancelled, so nothing is left behind; a cancelled or failed run
delivers no result, so the caller has nothing half-made to clean up.

Python 3.9+ (Slicer 5.8); numpy only.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from LowResSegLib.frontends.childprotocol import REQUEST, VOLUME, RunEvent, event_line, parse_event_line

__all__ = ["RunEvent", "BackgroundRuns", "event_line", "parse_event_line"]

class BackgroundRuns(object):
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
        self.volume, self.models, self.engine, self.chunk = volume, list(models), dict(engine), int(chunk)
        self.budget = budget
        self.python, self.pythonpath = python or sys.executable, list(pythonpath)
        self.folder = self.process = None
        self.finished = False
        self._offset, self._out, self._err = 0, None, None
        self._cancelled = self._ended = False

    # ------------------------------------------------------------------ control

    def start(self):
        """Write the request into a private folder and start the worker; returns self."""
        import numpy as np


        if self.folder is not None:
            raise RuntimeError("these runs were already started")
        self.folder = tempfile.mkdtemp(prefix="LowResSeg-run-")  # mode 0700: the token stays private
        try:
            np.save(os.path.join(self.folder, VOLUME), np.ascontiguousarray(self.volume.array))
            request = {"models": self.models, "engine": self.engine, "chunk": self.chunk, "budget": self.budget,
                       "affine": [[float(v) for v in row] for row in self.volume.affine],
                       "name": str(self.volume.meta.get("source") or "")}
            fd = os.open(os.path.join(self.folder, REQUEST), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(request, f)
            self._out = open(os.path.join(self.folder, "events.jsonl"), "wb")
            self._err = open(os.path.join(self.folder, "stderr.txt"), "wb")
            env = dict(os.environ)
            paths = self.pythonpath + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
            if paths:
                env["PYTHONPATH"] = os.pathsep.join(paths)
            flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)  # no console window on Windows
            self.process = subprocess.Popen([self.python, "-m", "LowResSegLib.frontends.worker", self.folder],
                                            stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err,
                                            env=env, cwd=self.folder, creationflags=flags)
        except BaseException:
            self._cleanup()
            raise
        return self

    def cancel(self):
        """Stop now: the worker is killed; the next :meth:`poll` reports ``cancelled``."""
        if self.process is not None and not self._ended:
            self._cancelled = True
            self._stop_process()

    @property
    def running(self):
        return self.process is not None and not self.finished

    # ------------------------------------------------------------------ events

    def poll(self):
        """Every event reported since the last call (never blocks)."""
        if self.process is None or self.finished:
            return []
        if self._cancelled:
            return self._end([RunEvent("cancelled"), RunEvent("finished")])
        exited = self.process.poll() is not None  # read after this: every line of an exited child is there
        events = []
        for event in self._new_events():
            if event.kind == "result":
                try:
                    event.segmentation = self._segmentation(event)
                except Exception as exc:  # a missing or damaged result file: the run failed
                    events.append(RunEvent("error", event.model, message="%s: the result could not be read (%s)"
                                           % (event.model, exc)))
                    return self._end(events + [RunEvent("finished")])
            if event.kind == "finished":
                return self._end(events + [event])
            events.append(event)
        if exited:  # ended without saying so: a crash, or a missing package; say what it printed
            message = "the segmentation process stopped unexpectedly (exit code %s): %s" % (
                self.process.returncode, self._last_error_line())
            return self._end(events + [RunEvent("error", message=message), RunEvent("finished")])
        return events

    def wait(self, timeout=None):
        """Block until the worker ends (for scripts and tests); returns all events not yet polled."""
        if self.process is not None and not self.finished:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.poll()

    # ------------------------------------------------------------------ internals

    def _new_events(self):
        with open(os.path.join(self.folder, "events.jsonl"), "rb") as f:
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

    def _segmentation(self, event):
        import numpy as np

        from LowResSegLib.inference.pipeline import Segmentation

        labels = np.load(event.path)
        if labels.shape != tuple(self.volume.shape):
            raise ValueError("labels of shape %s for a volume of %s" % (labels.shape, self.volume.shape))
        timings = dict(event.timings or {})
        return Segmentation(labels, None, event.card, timings, self.volume)

    def _last_error_line(self):
        try:
            with open(os.path.join(self.folder, "stderr.txt"), "rb") as f:
                lines = [l.strip() for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
        except OSError:
            lines = []
        return lines[-1] if lines else "no message"

    def _stop_process(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def _end(self, events):
        self._ended = self.finished = True
        if self.process.poll() is None:
            self._stop_process()
        self._cleanup()
        return events

    def _cleanup(self):
        for f in (self._out, self._err):
            if f is not None:
                f.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
