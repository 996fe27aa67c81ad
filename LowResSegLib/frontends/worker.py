"""The child process that segments for a user interface: ``python -m LowResSegLib.frontends.worker FOLDER``.

Inside 3D Slicer the main thread holds Python's GIL while its Qt event loop idles, so a
worker *thread* would run only while the UI runs Python. Peer extensions (TotalSegmentator,
MONAIAuto3DSeg, SlicerNNUnet) therefore segment in a separate process, and so does LowResSeg.

``FOLDER`` is a private temporary folder made by :class:`LowResSegLib.frontends.background.BackgroundRuns`:

- ``request.json``: ``{"models": [...], "engine": {"kind": "local", "repository": PATH, "threads": N}
  | {"kind": "remote", "url": URL, "token": TOKEN or null}, "chunk": 32, "affine": 4x4, "name": str,
  "budget": "fastest" | "balanced" | "best" | seconds}``; a model named ``auto`` is chosen here by
  :func:`LowResSegLib.inference.modelchoice.choose_model` (calibrated on this engine, cached), reported as a
  ``chosen`` event with its reason, then run;
  (the folder is readable by its owner only, so a token never appears on a command line);
- ``volume.npy``: the voxels, (k, j, i).

A request ``{"probe": {"url": URL, "token": TOKEN or null}}`` (no volume) asks the edge server who it is
instead, and is answered by a ``connected`` event (or an ``error``).

The worker writes one JSON line per event to stdout (:func:`LowResSegLib.frontends.childprotocol.event_line`)
and each run's labels to ``<n>.labels.npy`` in ``FOLDER`` before it reports the result. It
stops at the first failing model. Cancel is the parent killing this process (and, in Slicer, the
``PythonSlicer`` launcher that started it: :mod:`LowResSegLib.frontends.processtree`).
Python 3.9+; numpy + onnxruntime.
"""

import json
import os
import sys
import time

from LowResSegLib.frontends.childprotocol import REQUEST, VOLUME

__all__ = ["main", "REQUEST", "VOLUME", "labels_file"]


def labels_file(folder, n):
    """Where the ``n``-th run's labels are written (uint8, the volume's (k, j, i) grid)."""
    return os.path.join(folder, "%d.labels.npy" % n)


def disagree_file(folder, n):
    """Where the ``n``-th run's "members disagree" mask is written (an ensemble's; uint8 0/1, like the labels)."""
    return os.path.join(folder, "%d.disagree.npy" % n)


def _engine(spec, name):
    from LowResSegLib.inference.engines import RemoteEngine, RemoteServer
    from LowResSegLib.inference.ensemble import open_engine

    if spec.get("kind") == "remote":  # an ensemble of the local repository runs its members on the server
        server = RemoteServer(spec["url"], spec.get("token"))
        return open_engine(name, spec.get("repository"),
                           engine_for=lambda member: RemoteEngine(spec["url"], member, server=server))
    return open_engine(name, spec.get("repository"), threads=int(spec.get("threads") or 0))


def _engine_models(spec):
    """The models the engine can run: the repository's usable ones, or the server's."""
    if spec.get("kind") == "remote":
        from LowResSegLib.inference.engines import RemoteServer
        from LowResSegLib.repository.modelstore import ModelRepository, ModelStoreError

        served = list(RemoteServer(spec["url"], spec.get("token")).probe()["models"])
        repo = ModelRepository(spec.get("repository"))  # its ensembles whose members the server serves run too
        for name in repo.names():
            try:
                if repo.is_ensemble(name) and all(m in served for m in repo.members(name)):
                    served.append(name)
            except ModelStoreError:
                pass
        return served
    from LowResSegLib.repository.modelstore import ModelRepository

    return ModelRepository(spec.get("repository")).usable_names()


def _resolve_auto(models, request, volume, emit):
    """``models`` with ``auto`` replaced by the chosen model (a chosen model already listed runs once)."""
    from LowResSegLib.frontends.childprotocol import RunEvent
    from LowResSegLib.inference.modelchoice import axial_slices, choose_model
    from LowResSegLib.workflow.run import AUTO

    if AUTO not in models:
        return models, {}
    spec = request["engine"]
    choice = choose_model(_engine_models(spec), request.get("budget") or "balanced",
                          lambda n: _engine(spec, n), slices=axial_slices(volume))
    emit(RunEvent("chosen", choice.name, message=choice.reason))
    resolved = [choice.name if m == AUTO else m for m in models]
    return list(dict.fromkeys(resolved)), {choice.name: choice.engine}


def _save_atomic(path, array):
    import numpy as np

    staged = path + ".part.npy"
    np.save(staged, array)
    os.replace(staged, path)  # the parent never sees half a file


def _one_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def probe_server(spec, emit):
    """One ``connected`` event with what the edge server said, or an ``error`` with why not."""
    from LowResSegLib.frontends.childprotocol import RunEvent
    from LowResSegLib.inference.engines import RemoteServer

    try:
        info = RemoteServer(spec["url"], spec.get("token"), read_timeout=10.0).probe()
    except Exception as exc:  # RemoteError, a bad URL, ...: one line for the user
        emit(RunEvent("error", message=_one_line(exc)))
        return
    emit(RunEvent("connected", card={"name": info["name"], "version": info["version"],
                                     "models": list(info["models"]), "ms": float(info["ms"])}))


def run_request(folder, emit):
    """Every model of the request in turn; ``emit(event)`` for each :class:`RunEvent`."""
    with open(os.path.join(folder, REQUEST)) as f:
        request = json.load(f)
    if "probe" in request:
        probe_server(request["probe"], emit)
        return
    import numpy as np

    from LowResSegLib.frontends.childprotocol import RunEvent
    from LowResSegLib.images.geometry import Volume
    from LowResSegLib.workflow.run import AUTO, SegmentationRun

    volume = Volume(np.load(os.path.join(folder, VOLUME)), request["affine"], {"source": request.get("name", "")})
    try:
        models, engines = _resolve_auto(list(request["models"]), request, volume, emit)
    except Exception as exc:
        emit(RunEvent("error", AUTO, message="%s: %s" % (AUTO, _one_line(exc))))
        return
    n = len(models)
    for i, name in enumerate(models):
        try:
            def progress(done, total, i=i, name=name):
                emit(RunEvent("progress", name, fraction=(i + done / float(max(1, total))) / n))

            t0 = time.perf_counter()
            engine = engines.get(name) or _engine(request["engine"], name)
            run = SegmentationRun(request.get("name") or "volume", engine=engine, volume=volume)
            seg = run.execute(progress=progress, chunk=int(request.get("chunk") or 32))
            seg.timings.setdefault("wall_s", time.perf_counter() - t0)
            path = labels_file(folder, i)
            _save_atomic(path, seg.labels.astype(np.uint8))
            review = None
            if hasattr(seg, "disagreement"):  # an ensemble: where its members disagree, and whether to review
                review = {"score": seg.review_score, "threshold": seg.review_threshold, "flag": bool(seg.review),
                          "line": seg.review_line(), "path": disagree_file(folder, i)}
                _save_atomic(review["path"], (seg.disagreement > 0).astype(np.uint8))
        except Exception as exc:  # one line for the user; the parent shows it
            emit(RunEvent("error", name, message="%s: %s" % (name, _one_line(exc))))
            return
        emit(RunEvent("result", name, path=path, card=seg.card, timings=seg.timings, review=review))


def main(argv=None):
    from LowResSegLib.frontends.childprotocol import RunEvent, event_line

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isdir(argv[0]):
        sys.stderr.write("usage: python -m LowResSegLib.frontends.worker FOLDER (a folder made by BackgroundRuns)\n")
        return 2

    def emit(event):
        sys.stdout.write(event_line(event) + "\n")
        sys.stdout.flush()

    try:
        run_request(argv[0], emit)
    except Exception as exc:  # a broken request: still one line, never a traceback for the user
        emit(RunEvent("error", message="the worker could not start: %s" % _one_line(exc)))
    emit(RunEvent("finished"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
