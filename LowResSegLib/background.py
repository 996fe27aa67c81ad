"""Segmentation runs in a worker thread, for a user interface that must stay responsive.

The worker touches only numpy arrays and the engines: no Qt, no scene. It reports through
a queue that the UI drains on its own thread (in Slicer: a ``qt.QTimer`` calling
:meth:`BackgroundRuns.poll`), so nodes and widgets change only on the main thread.
Cancel is honoured between chunks of slices; a cancelled or failed run delivers no result,
so the caller has nothing half-made to clean up.

Python 3.9+ (Slicer 5.8); numpy only.
"""

import queue
import threading
import time

__all__ = ["RunEvent", "BackgroundRuns"]


class RunEvent(object):
    """What the worker reports: ``kind`` is one of

    - ``"progress"``: ``model``, ``fraction`` (0..1 over all runs);
    - ``"result"``: ``model``, ``segmentation`` (a :class:`LowResSegLib.pipeline.Segmentation`);
    - ``"error"``: ``model``, ``message`` (one line for the user); the remaining runs are skipped;
    - ``"cancelled"``: the user cancelled; no further results;
    - ``"finished"``: always the last event.
    """

    __slots__ = ("kind", "model", "fraction", "segmentation", "message")

    def __init__(self, kind, model=None, fraction=None, segmentation=None, message=None):
        self.kind, self.model, self.fraction = kind, model, fraction
        self.segmentation, self.message = segmentation, message

    def __repr__(self):
        return "RunEvent(%s, %s)" % (self.kind, self.model)


class BackgroundRuns(object):
    """Segment one volume with several models, one after another, off the calling thread.

    ``engine_factories``: ``[(model name, callable returning an Engine)]``; engines are made in
    the worker (loading a model takes time). ``segment`` is the pipeline function (injected so
    a caller may wrap it; by default :func:`LowResSegLib.pipeline.segment`).
    """

    def __init__(self, volume, engine_factories, chunk=32, segment=None):
        if segment is None:
            from LowResSegLib.pipeline import segment
        self.volume, self.factories, self.chunk, self._segment = volume, list(engine_factories), chunk, segment
        self._events = queue.Queue()
        self._cancel = threading.Event()
        self._thread = None
        self.finished = False

    def start(self):
        if self._thread is not None:
            raise RuntimeError("these runs were already started")
        self._thread = threading.Thread(target=self._work, name="LowResSeg runs", daemon=True)
        self._thread.start()
        return self

    def cancel(self):
        """Ask the worker to stop at the next chunk boundary."""
        self._cancel.set()

    @property
    def running(self):
        return self._thread is not None and not self.finished

    def poll(self):
        """Every event reported since the last call (never blocks)."""
        events = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            if event.kind == "finished":
                self.finished = True
        return events

    def wait(self, timeout=None):
        """Block until the worker ends (for scripts and tests); returns all events not yet polled."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.poll()

    def _work(self):
        n = len(self.factories)
        try:
            for i, (name, factory) in enumerate(self.factories):
                if self._cancel.is_set():
                    self._events.put(RunEvent("cancelled", name))
                    return
                try:
                    engine = factory()

                    def progress(done, total, i=i, name=name):
                        self._events.put(RunEvent("progress", name, fraction=(i + done / float(max(1, total))) / n))

                    t0 = time.perf_counter()
                    seg = self._segment(self.volume, engine, chunk=self.chunk, progress=progress,
                                        cancel=self._cancel.is_set)
                except Exception as exc:  # one line for the user; the UI stays up
                    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    self._events.put(RunEvent("error", name, message="%s: %s" % (name, text)))
                    return
                if seg is None:
                    self._events.put(RunEvent("cancelled", name))
                    return
                seg.timings.setdefault("wall_s", time.perf_counter() - t0)
                self._events.put(RunEvent("result", name, segmentation=seg))
        finally:
            self._events.put(RunEvent("finished"))
