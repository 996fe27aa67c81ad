"""Faults tried for real (issue 32): a full disk, kills at chosen moments, two batches at once.

A full disk is a small tmpfs mounted for the test (root only: ``mount -t tmpfs -o size=...``), filled
up to the free space each case wants; where mounting is not allowed those tests skip and say so, and
``test_a_short_write_that_the_writer_does_not_report_is_caught`` injects the same short write at the
writer's call, so the check that catches it is exercised on every machine. Kills are SIGKILL/SIGTERM
of real child processes (``python -m LowResSegLib.frontends.cli``) at points chosen by a small
wrapper that stops there (``_child``). The PACS faults are in ``test_pacs_faults.py``.
"""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from LowResSegLib.frontends.cli import main

from helpers import snapshot
from model_factory import add_threshold_model
from test_cli_segment import MODEL, assert_refused, check_labels, phantom, write_dicom, write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGE = 4096


# --------------------------------------------------------------------------- a small disk


def _mount_tmpfs(folder, size):
    os.makedirs(str(folder), exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(folder)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "cannot run mount (%s)" % exc
    if proc.returncode != 0:
        return "mounting a tmpfs is not allowed here (%s); the injected short write still runs" % proc.stdout.strip()
    return None


@pytest.fixture
def disk(tmp_path):
    """A 512 KiB tmpfs; ``disk.fill(free)`` leaves ``free`` bytes (whole pages) free."""
    folder = tmp_path / "disk"
    why = _mount_tmpfs(folder, 512 * 1024)
    if why:
        pytest.skip(why)

    class Disk(object):
        path = folder
        filler = str(folder / "filler")

        def fill(self, free):
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                while True:
                    try:
                        if os.write(fd, b"\0" * PAGE) < PAGE:
                            break
                    except OSError:
                        break
            finally:
                os.close(fd)
            size = os.path.getsize(self.filler)
            os.truncate(self.filler, max(0, size - free))
            st = os.statvfs(str(folder))
            assert abs(st.f_bavail * st.f_frsize - free) <= PAGE, "could not set the free space"

        def ours(self):
            return sorted(n for n in os.listdir(str(folder)) if n != "filler")

    yield Disk()
    subprocess.run(["umount", "-l", str(folder)], timeout=20)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fault-models"))
    add_threshold_model(root, MODEL, r=16, big_r=64, threshold=2.5)
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault-inputs")
    img, _ = phantom()
    return {"nifti": write_nifti(root / "flair.nii.gz", img), "dicom": write_dicom(root / "dicom", img)}


def _one_error(rc, out, err, *needles):
    """``assert_refused`` of test_cli_segment, once tqdm's progress lines (carriage returns) are left aside."""
    err = "\n".join(line for line in err.splitlines() if "slice/s]" not in line)
    assert_refused(rc, out, err, *needles)


def _segment(capsys, *argv):
    try:
        rc = main(["segment"] + [str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


OUTPUTS = [("--output", "t.nii.gz"), ("--output", "t.nii"), ("--output", "t.nrrd"), ("--output", "t.mha"),
           ("--output", "t.seg.nrrd"), ("--dicom-seg", "t.dcm")]


@pytest.mark.parametrize("option,name", OUTPUTS, ids=[n for _, n in OUTPUTS])
def test_a_full_disk_gives_one_line_naming_the_file_and_leaves_nothing(capsys, disk, inputs, repo, tmp_path,
                                                                       option, name):
    """8 KB free, or less where the file is smaller (whole pages, at least one byte short of the file).

    Break: ``atomic_write`` without its read-back (``verify``) lets ITK's short write through with exit 0.
    """
    source = inputs["dicom"] if option == "--dicom-seg" else inputs["nifti"]
    # what the file takes when there is room: the test must really cut it short
    rc, _, err = _segment(capsys, source, option, tmp_path / name, "--model", MODEL, "--repository", repo,
                          "--threads", "1")
    assert rc == 0, err
    size = os.path.getsize(str(tmp_path / name))
    free = min(2 * PAGE, (size - 1) // PAGE * PAGE)
    assert size > free, "the output (%d bytes) fits in %d bytes: this case tests nothing" % (size, free)
    disk.fill(free)
    target = disk.path / name
    rc, out, err = _segment(capsys, source, option, target, "--model", MODEL, "--repository", repo,
                            "--threads", "1")
    _one_error(rc, out, err, "could not write %s" % target, "free some space")
    assert disk.ours() == [], "left on the full disk: %s" % disk.ours()


def test_a_short_write_that_the_writer_does_not_report_is_caught(tmp_path, monkeypatch):
    """Injected at the writer's call: SimpleITK 'writes' half the file and returns normally, as on a full disk.

    Break: renaming without reading back (``verify=None``) leaves a truncated mask and no error.
    """
    from LowResSegLib.images.geometry import Volume
    from LowResSegLib.images import io as lio

    real = sitk.WriteImage

    def short(image, path, *a):
        real(image, path, *a)
        with open(path, "rb+") as f:
            f.truncate(os.path.getsize(path) // 2)

    monkeypatch.setattr(lio.sitk, "WriteImage", short)
    labels = np.zeros((6, 40, 40), np.uint8)
    labels[2:4, 10:30, 10:30] = 1
    ref = Volume(labels.astype(np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    for name in ("a.nii", "a.nii.gz", "a.nrrd", "a.mha"):
        target = tmp_path / name
        with pytest.raises(lio.WriteError) as info:
            lio.write_labels(labels, ref, str(target))
        assert str(target) in str(info.value) and "cut short" in str(info.value) and ".tmp-" not in str(info.value)
    assert os.listdir(str(tmp_path)) == []


def test_the_report_writer_verifies_and_names_the_report(disk):
    """Break: writing batch.csv with a plain open()/write() leaves a cut or 0-byte report and no error."""
    from LowResSegLib.workflow.batch import CSV_FIELDS, write_report

    rows = {"c%d" % i: {"case": "c%d" % i, "status": "done", "message": "x" * 200} for i in range(60)}
    report = str(disk.path / "batch.csv")
    write_report(report, {"c0": rows["c0"]})
    before = open(report).read()
    disk.fill(0)
    with pytest.raises(OSError) as info:
        write_report(report, rows)
    assert str(info.value).startswith("could not write %s: No space left on device" % report)
    assert open(report).read() == before  # the earlier report, whole
    assert disk.ours() == ["batch.csv"]
    assert CSV_FIELDS[0] == "case"


# --------------------------------------------------------------------------- batch: kills and two at once


def _tree(root):
    root.mkdir(parents=True, exist_ok=True)
    img, _ = phantom()
    for n in range(3):
        write_nifti(root / ("case%d.nii.gz" % n), img if n != 1 else img[:, :, ::-1])
    return root


_CHILD = r"""
import os, signal, sys, time
sys.path.insert(0, %(root)r)
from LowResSegLib.workflow import run as wr
mode, flag = os.environ["FAULT_MODE"], os.environ.get("FAULT_FLAG")
real = wr.commit_files
calls = []
def commit_files(pairs, overwrite=False):
    if mode == "hold-before-commit":
        open(flag, "w").close()  # the case's outputs are staged (hidden files) but not yet in place
        while True:
            time.sleep(0.05)
    real(pairs, overwrite)
    calls.append(pairs)
    if mode == "kill-after-first-commit":
        os.kill(os.getpid(), signal.SIGKILL)  # outputs in place, the row not yet 'done'
    if mode == "hold" and len(calls) == 1:
        open(flag, "w").close()
        while os.path.exists(flag):
            time.sleep(0.05)
wr.commit_files = commit_files
from LowResSegLib.frontends.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _child(argv, mode, flag=None):
    env = dict(os.environ, FAULT_MODE=mode, FAULT_FLAG=str(flag or ""), PYTHONPATH=ROOT)
    return subprocess.Popen([sys.executable, "-c", _CHILD % {"root": ROOT}] + [str(a) for a in argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env)


def _rows(out):
    with open(str(out / "batch.csv"), newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _check_outputs(out, cases):
    for case in cases:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / (case + ".nii.gz"))))
        assert lab.shape == phantom()[0].shape and lab.sum() > 0


def test_a_batch_killed_between_outputs_and_row_completes_on_a_plain_rerun(tmp_path, repo, capsys):
    """Break: without the 'running' row (or without redoing such a case), the rerun says 'case0.nii.gz already
    exists; pass --overwrite' for ever."""
    root, out = _tree(tmp_path / "studies"), tmp_path / "out"
    argv = ["batch", root, "--model", MODEL, "--repository", repo, "--out", out, "--threads", "1"]
    proc = _child(argv, "kill-after-first-commit")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (out / "case0.nii.gz").exists() and _rows(out)["case0"]["status"] == "running"
    # a temporary file a killed writer left (its PID is gone) is removed by the rerun
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out / (".lowresseg-%dx0badcafe-case1.nii.gz" % dead.pid)
    stale.write_bytes(b"half a file")
    assert main([str(a) for a in argv]) == 0
    text = capsys.readouterr().out
    assert "3 case(s) done, 0 skipped (done before), 0 failed" in text
    rows = _rows(out)
    assert [rows[c]["status"] for c in ("case0", "case1", "case2")] == ["done"] * 3
    _check_outputs(out, ["case0", "case1", "case2"])
    assert sorted(os.listdir(str(out))) == ["batch.csv", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]
    before = snapshot(out)
    assert main([str(a) for a in argv]) == 0  # and once more: all skipped, and said so
    assert "0 case(s) done, 3 skipped (done before), 0 failed" in capsys.readouterr().out
    assert {k: v for k, v in snapshot(out).items() if k != "batch.csv"} == \
        {k: v for k, v in before.items() if k != "batch.csv"}


def test_two_batches_on_one_folder_one_runs_the_other_is_told_the_folder_is_in_use(tmp_path, repo):
    """Break: without the lock both run, and the second one's cases fail with 'already exists'."""
    root, out = _tree(tmp_path / "studies"), tmp_path / "out"
    argv = ["batch", root, "--model", MODEL, "--repository", repo, "--out", out, "--threads", "1"]
    flag = tmp_path / "holding"
    first = _child(argv, "hold", flag)
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline, "the first batch never reached its first case"
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli"] + [str(a) for a in argv],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                                cwd=ROOT)
    finally:
        if flag.exists():
            flag.unlink()
    out1, err1 = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lowresseg batch: error: the output folder %s is in use by "
                                                   "another batch (PID %d on " % (out, first.pid)), second.stderr
    assert first.returncode == 0, err1
    assert [r["status"] for r in _rows(out).values()] == ["done"] * 3
    _check_outputs(out, ["case0", "case1", "case2"])
    assert sorted(os.listdir(str(out))) == ["batch.csv", "case0.nii.gz", "case1.nii.gz", "case2.nii.gz"]


def test_a_lock_left_by_a_killed_batch_does_not_block_the_next(tmp_path, repo):
    """Break: a lock taken with O_EXCL and no owner check would keep the folder locked after a SIGKILL."""
    root, out = _tree(tmp_path / "studies"), tmp_path / "out"
    argv = ["batch", root, "--model", MODEL, "--repository", repo, "--out", out, "--threads", "1"]
    flag = tmp_path / "holding"
    first = _child(argv, "hold", flag)
    deadline = time.time() + 60
    while not flag.exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    first.kill()
    first.communicate(timeout=30)
    assert (out / ".lowresseg-batch.lock").exists()
    assert main([str(a) for a in argv]) == 0
    assert [r["status"] for r in _rows(out).values()] == ["done"] * 3


def test_a_full_disk_for_batch_csv_does_not_abort_the_batch(tmp_path, disk, repo, capsys):
    """Every case is tried, each says why it failed, and the exit status is not 0.

    Break: letting write_report's OSError out of the loop ends the batch after the first case.
    """
    root = _tree(tmp_path / "studies")
    out = disk.path / "out"
    out.mkdir()
    disk.fill(0)
    rc = main(["batch", str(root), "--model", MODEL, "--repository", repo, "--out", str(out), "--threads", "1"])
    out_text, err = capsys.readouterr()
    assert rc == 1
    assert "0 case(s) done, 0 skipped (done before), 3 failed" in out_text
    assert err.count("failed: case") == 3 and "No space left on device" in err and "Traceback" not in err
    assert [n for n in os.listdir(str(out)) if not n.startswith(".lowresseg-batch")] == []


def test_batch_on_a_phantom_folder_takes_images_not_labels_and_never_its_own_output(tmp_path, repo, capsys):
    """Break: walking labels/ beside images/ segments each label map as a case (issue 30, item 4)."""
    root = tmp_path / "phantoms"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    img, truth = phantom()
    write_nifti(root / "images" / "p0.nii.gz", img)
    write_nifti(root / "labels" / "p0.nii.gz", truth)
    out = root / "results"  # inside the tree
    argv = ["batch", str(root), "--model", MODEL, "--repository", repo, "--out", str(out), "--threads", "1"]
    assert main(argv) == 0
    assert set(_rows(out)) == {"images__p0"}
    assert main(argv) == 0  # the rerun does not take results/images__p0.nii.gz as a case
    assert set(_rows(out)) == {"images__p0"}
    assert "0 case(s) done, 1 skipped" in capsys.readouterr().out


def test_the_suite_has_a_per_test_timeout(tmp_path):
    """A hanging test fails instead of holding CI for ever (pytest-timeout, set in pyproject.toml).

    Break: removing ``timeout`` from [tool.pytest.ini_options] (the hang below then runs its full 600 s and this
    test's own subprocess limit fails it)."""
    import re

    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        section = f.read().split("[tool.pytest.ini_options]", 1)[-1].split("\n[", 1)[0]
    m = re.search(r"^timeout = (\d+)", section, re.M)
    assert m and 0 < int(m.group(1)) <= 3600
    hang = tmp_path / "test_hang.py"
    hang.write_text("import time\n\ndef test_hangs():\n    time.sleep(600)\n")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "pytest", str(hang), "-q", "-c", os.path.join(ROOT, "pyproject.toml"),
                           "--rootdir", str(tmp_path), "-o", "timeout=%d" % min(3, int(m.group(1)))],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert proc.returncode != 0 and "Timeout" in proc.stdout, proc.stdout[-2000:]
    assert time.time() - t0 < 60


def test_stale_temporaries_are_removed_and_live_ones_kept(tmp_path):
    """Ours whose process is gone go; a running process's stay; the PID-less older form goes after a day;
    anything not of our naming stays. Break: matching on the prefix alone deletes a running batch's files."""
    from LowResSegLib.images.io import remove_stale_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = {
        ".lowresseg-%dx0badcafe-case.nii.gz" % dead.pid: False,
        ".t.tmp-%dx0badcafe.nii.gz" % dead.pid: False,
        ".lowresseg-%dx0badcafe-live.nii.gz" % os.getpid(): True,
        ".lowresseg-0badcafe-old.nii.gz": False,
        ".lowresseg-cafebabe-new.nii.gz": True,
        ".hidden-of-the-user": True,
        "case.nii.gz": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(str(tmp_path / ".lowresseg-0badcafe-old.nii.gz"), (day_ago, day_ago))
    removed = remove_stale_temps(str(tmp_path))
    assert sorted(removed) == sorted(n for n, keep in names.items() if not keep)
    assert sorted(os.listdir(str(tmp_path))) == sorted(n for n, keep in names.items() if keep)


def test_sigterm_ends_a_batch_cleanly_and_a_rerun_completes_it(tmp_path, repo):
    """SIGTERM (a service stop) while a case's outputs are staged: exit 143, one line, no staged file left,
    batch.csv whole; the rerun completes. Break: without the SIGTERM handler the process dies at once and its
    staged files stay."""
    root, out = _tree(tmp_path / "studies"), tmp_path / "out"
    argv = ["batch", root, "--model", MODEL, "--repository", repo, "--out", out, "--threads", "1"]
    flag = tmp_path / "holding"
    child = _child(argv, "hold-before-commit", flag)
    deadline = time.time() + 60
    while not flag.exists():
        assert child.poll() is None and time.time() < deadline
        time.sleep(0.05)
    assert [n for n in os.listdir(str(out)) if n.startswith(".lowresseg-%dx" % child.pid)], "nothing staged yet"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert err.strip().splitlines()[-1] == "lowresseg batch: terminated (SIGTERM); nothing partial was left"
    assert [n for n in os.listdir(str(out)) if n.startswith(".") and n != ".lowresseg-batch.lock"] == []
    assert _rows(out)["case0"]["status"] == "running"
    assert main([str(a) for a in argv]) == 0
    assert [r["status"] for r in _rows(out).values()] == ["done"] * 3
    _check_outputs(out, ["case0", "case1", "case2"])
