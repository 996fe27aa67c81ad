"""BackgroundRuns: the child process the Slicer module drives from a QTimer (real onnxruntime models).

In Slicer the child is the ``PythonSlicer`` launcher, which starts the interpreter as a child of its own
and forwards no signal; the tests marked so run through the stand-in launcher (Testing/Slicer/bin/PythonSlicer)
and check every process of the tree by PID."""

import ctypes
import json
import os
import sys
import time

import numpy as np
import pytest

from LowResSegLib.frontends.background import BackgroundProbe, BackgroundRuns, RunEvent, event_line, parse_event_line
from LowResSegLib.inference.engines import LocalEngine
from LowResSegLib.images.geometry import Volume
from LowResSegLib.inference.pipeline import segment

from helpers import cube_phantom
from model_factory import add_threshold_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.append(os.path.join(ROOT, "Testing", "Slicer"))  # appended: the stand-in never shadows a real module
from launcher import SilentServer, alive, descendants, install_launcher, wait_for  # noqa: E402

LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
SHAPE = (12, 40, 48)
BRAIN = (slice(1, 11), slice(4, 36), slice(4, 44))
CUBE = (slice(4, 9), slice(10, 22), slice(26, 38))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("bg-models"))
    add_threshold_model(root, "low-16to64", r=16, big_r=64, threshold=2.5)
    add_threshold_model(root, "high-32to64", r=32, big_r=64, threshold=2.5)
    return root


@pytest.fixture(scope="module")
def volume():
    img, _ = cube_phantom(SHAPE, BRAIN, CUBE)
    return Volume(img.astype(np.float32), np.diag([0.9, 0.8, 3.0, 1.0]), {"source": "FLAIR"})


def runs_of(volume, repo, *names, **kwargs):
    return BackgroundRuns(volume, list(names), {"kind": "local", "repository": repo, "threads": 1},
                          pythonpath=[ROOT], **kwargs)


def process_gone(process):
    return process.poll() is not None


def test_results_arrive_in_order_with_progress_and_match_a_direct_run(repo, volume):
    runs = runs_of(volume, repo, "low-16to64", "high-32to64", chunk=4).start()
    folder = runs.folder
    assert oct(os.stat(folder).st_mode & 0o777) == "0o700"  # the request (and any token) is private
    events = runs.wait(120)
    kinds = [e.kind for e in events]
    assert kinds[-1] == "finished" and kinds.count("result") == 2 and "error" not in kinds, events
    fractions = [e.fraction for e in events if e.kind == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0) and len(fractions) == 6
    results = [e for e in events if e.kind == "result"]
    assert [e.model for e in results] == ["low-16to64", "high-32to64"]
    direct = segment(volume, LocalEngine("low-16to64", repo, threads=1))
    np.testing.assert_array_equal(results[0].segmentation.labels, direct.labels)
    assert results[0].segmentation.card["name"] == "low-16to64" and results[0].segmentation.reference is volume
    assert results[0].segmentation.timings["total_s"] > 0
    assert not runs.running and runs.finished and process_gone(runs.process)
    assert not os.path.exists(folder)  # the request, the volume and the result files are gone


def test_cancel_kills_the_worker_and_leaves_no_file(repo):
    """The break this catches: a Cancel that leaves the worker running. A worker that dies before its first
    progress ends the wait below with a failure (bounded: 120 s) instead of hanging the suite (issue 32)."""
    img, _ = cube_phantom((600, 40, 48), (slice(1, 599), slice(4, 36), slice(4, 44)), CUBE)
    big = Volume(img.astype(np.float32), np.diag([0.9, 0.8, 3.0, 1.0]))
    runs = runs_of(big, repo, "high-32to64", chunk=1).start()  # 600 requests: still running at Cancel
    folder, seen = runs.folder, []
    deadline = time.monotonic() + 120
    # the worker is segmenting; a worker that dies first ends the loop (and fails below) instead of hanging it
    while not any(e.kind in ("progress", "finished") for e in seen):
        assert time.monotonic() < deadline, "no progress within 120 s: %s" % seen
        seen += runs.wait(0.01)
    assert [e.kind for e in seen if e.kind != "progress"] == [], "ended before it could be cancelled: %s" % seen
    runs.cancel()
    assert process_gone(runs.process)
    assert [e.kind for e in runs.poll()] == ["cancelled", "finished"]
    assert not os.path.exists(folder) and runs.poll() == []


def test_cancel_before_the_worker_started_anything(repo, volume):
    runs = runs_of(volume, repo, "low-16to64").start()
    runs.cancel()
    assert [e.kind for e in runs.poll()] == ["cancelled", "finished"]
    assert process_gone(runs.process) and not os.path.exists(runs.folder)


def test_a_failing_model_reports_one_line_and_stops(repo, volume):
    runs = runs_of(volume, repo, "no-such-model", "low-16to64").start()
    events = runs.wait(120)
    assert [e.kind for e in events] == ["error", "finished"], events
    assert events[0].message.startswith("no-such-model: ") and "\n" not in events[0].message


def test_a_worker_that_dies_is_an_error_with_what_it_printed(repo, volume, tmp_path):
    broken = tmp_path / "LowResSegLib" / "frontends"
    broken.mkdir(parents=True)
    (broken.parent / "__init__.py").write_text("")
    (broken / "__init__.py").write_text("")
    (broken / "worker.py").write_text("import sys\nsys.stderr.write('ImportError: no module named onnxruntime\\n')\n"
                                      "sys.exit(3)\n")
    runs = BackgroundRuns(volume, ["low-16to64"], {"kind": "local", "repository": repo},
                          pythonpath=[str(tmp_path)]).start()
    events = runs.wait(60)
    assert [e.kind for e in events] == ["error", "finished"]
    assert events[0].message == ("the segmentation process stopped unexpectedly (exit code 3): ImportError: no "
                                 "module named onnxruntime")
    assert not os.path.exists(runs.folder)


@pytest.mark.skipif(os.name != "posix", reason="holds the GIL through libc's waitpid")
def test_the_worker_runs_while_the_ui_thread_holds_the_gil(repo, volume):
    """Slicer's idle main loop keeps the GIL (PythonQt never releases it). A call through ctypes.PyDLL
    keeps the GIL too: the parent blocks in waitpid holding it, and the child still does every run."""
    runs = runs_of(volume, repo, "low-16to64", "high-32to64", chunk=4).start()
    libc = ctypes.PyDLL(None)
    status = ctypes.c_int()
    assert libc.waitpid(runs.process.pid, ctypes.byref(status), 0) == runs.process.pid  # GIL held throughout
    assert os.WIFEXITED(status.value) and os.WEXITSTATUS(status.value) == 0
    events = runs.poll()
    assert [e.kind for e in events if e.kind != "progress"] == ["result", "result", "finished"]


def test_event_lines_round_trip_and_reject_anything_else():
    event = RunEvent("result", "m", path="/tmp/x.npy", card={"name": "m"}, timings={"total_s": 1.5})
    back = parse_event_line(event_line(event))
    assert (back.kind, back.model, back.path, back.card, back.timings) == ("result", "m", "/tmp/x.npy",
                                                                          {"name": "m"}, {"total_s": 1.5})
    for junk in ('{"event": "explode"}', "[1, 2]", "progress 50%"):
        with pytest.raises(ValueError):
            parse_event_line(junk)
    with pytest.raises(ValueError):
        RunEvent("explode")


def test_slicer_ras_matrices_round_trip(volume):
    ras = volume.ijk_to_ras
    np.testing.assert_allclose(ras[:3, 0], [-0.9, 0, 0])  # i runs L in LPS = -x in RAS
    back = Volume.from_ras(volume.array, ras)
    np.testing.assert_allclose(back.affine, volume.affine)


# --------------------------------------------------------------------------- through the PythonSlicer launcher


@pytest.fixture
def launcher(tmp_path):
    return install_launcher(str(tmp_path / "bin"))


@pytest.fixture
def silent():
    server = SilentServer()
    yield server
    server.close()


def busy(child, silent):
    """``child`` started; once its interpreter talks to the silent server, the PIDs of its whole tree."""
    child.start()
    tree = wait_for(lambda: silent.accepted and [child.process.pid] + descendants(child.process.pid))
    assert tree and len(tree) == 2, "expected the launcher and the interpreter it started: %s" % tree
    assert child.process.args[0].endswith("PythonSlicer")
    return tree


def all_dead(tree):
    return wait_for(lambda: not [p for p in tree if alive(p)], timeout=10)


@LINUX
def test_cancel_through_the_pythonslicer_launcher_kills_the_whole_tree(volume, silent, launcher):
    """Killing the launcher alone leaves the interpreter it started running (here: waiting on a server)."""
    runs = BackgroundRuns(volume, ["m"], {"kind": "remote", "url": silent.url, "token": None}, python=launcher,
                          pythonpath=[ROOT])
    tree = busy(runs, silent)
    folder = runs.folder
    runs.cancel()
    assert [e.kind for e in runs.poll()] == ["cancelled", "finished"]
    assert all_dead(tree), "still running after Cancel: %s" % [p for p in tree if alive(p)]
    assert not os.path.exists(folder)


@LINUX
def test_a_probe_through_the_launcher_is_cancelled_as_a_whole(silent, launcher):
    probe = BackgroundProbe(silent.url, python=launcher, pythonpath=[ROOT])
    tree = busy(probe, silent)
    probe.cancel()
    assert [e.kind for e in probe.poll()] == ["cancelled", "finished"]
    assert all_dead(tree) and not os.path.exists(probe.folder)


@LINUX
def test_a_normal_end_through_the_launcher_is_waited_for_not_killed(volume, repo, tmp_path, launcher):
    """The worker says "finished" and then takes a moment to exit (as onnxruntime's teardown does): the
    parent reports "finished" only once the whole tree has exited on its own, then removes the folder."""
    lingering = tmp_path / "lib" / "LowResSegLib" / "frontends"
    lingering.mkdir(parents=True)
    (lingering.parent / "__init__.py").write_text("")
    (lingering / "__init__.py").write_text("")
    (lingering / "worker.py").write_text("import sys, time\nsys.stdout.write(%r + '\\n')\nsys.stdout.flush()\n"
                                         "time.sleep(1.0)\n" % json.dumps({"event": "finished"}))
    runs = BackgroundRuns(volume, ["low-16to64"], {"kind": "local", "repository": repo}, python=launcher,
                          pythonpath=[str(tmp_path / "lib")]).start()
    tree = wait_for(lambda: [runs.process.pid] + descendants(runs.process.pid) if descendants(runs.process.pid)
                    else None)
    assert tree and len(tree) == 2
    folder, seen = runs.folder, []
    deadline = time.monotonic() + 60
    while not runs.finished:
        assert time.monotonic() < deadline, "the run did not finish within 60 s: %s" % seen
        events = runs.poll()
        if any(e.kind == "finished" for e in events):
            assert [p for p in tree if alive(p)] == [], "finished reported while the tree still runs"
        seen += events
        wait_for(lambda: False, timeout=0.01)
    assert [e.kind for e in seen] == ["finished"]
    assert runs.process.returncode == 0  # it exited; it was not killed (-9)
    assert all_dead(tree) and not os.path.exists(folder)


@LINUX
def test_a_segmentation_through_the_launcher_leaves_no_process_and_no_file(volume, repo, launcher):
    runs = runs_of(volume, repo, "low-16to64", python=launcher).start()
    tree = wait_for(lambda: [runs.process.pid] + descendants(runs.process.pid) if descendants(runs.process.pid)
                    else None)
    events = runs.wait(120)
    assert [e.kind for e in events if e.kind != "progress"] == ["result", "finished"], events
    assert runs.process.returncode == 0 and all_dead(tree) and not os.path.exists(runs.folder)


def test_a_probe_says_why_it_could_not_connect(silent):
    import socket

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    probe = BackgroundProbe("http://127.0.0.1:%d" % port, pythonpath=[ROOT]).start()
    events = probe.wait(60)
    assert [e.kind for e in events] == ["error", "finished"], events
    assert events[0].message and "\n" not in events[0].message
    assert not os.path.exists(probe.folder)


@LINUX
def test_when_the_parent_quits_the_tree_goes_with_it(silent, launcher, tmp_path):
    """Slicer quitting with a run in progress (no Cancel): Python's exit stops the whole tree and removes
    the folder."""
    import subprocess

    script = (
        "import json, sys, time\n"
        "sys.path[:0] = [%r, %r]\n"
        "from launcher import descendants, wait_for\n"
        "from LowResSegLib.frontends.background import BackgroundProbe\n"
        "probe = BackgroundProbe(%r, python=%r, pythonpath=[%r]).start()\n"
        "tree = wait_for(lambda: descendants(probe.process.pid))\n"
        "print(json.dumps({'tree': [probe.process.pid] + tree, 'folder': probe.folder}))\n"
        % (ROOT, os.path.join(ROOT, "Testing", "Slicer"), silent.url, launcher, ROOT))
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, universal_newlines=True,
                         timeout=120)
    assert out.returncode == 0
    said = json.loads(out.stdout)
    assert len(said["tree"]) == 2
    assert all_dead(said["tree"]), [p for p in said["tree"] if alive(p)]
    assert not os.path.exists(said["folder"])
