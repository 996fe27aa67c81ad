"""PACS faults tried for real (issue 32): SIGTERM mid-study, servers that trickle or never answer, a PACS
killed and restarted between a store and its check, a full disk for the report, a corrupt instance.

The Orthanc is the real one of test_pacs.py (Testing/orthanc_server.py); the trickling and silent servers
are real sockets on 127.0.0.1; SIGTERM goes to a real ``lowresseg pacs`` child process.
"""

import csv
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("requests")

from LowResSegLib.frontends.cli import main  # noqa: E402

from orthanc_server import PASSWORD, USER, relay  # noqa: E402
from test_cli_segment import MODEL  # noqa: E402
from test_faults import disk  # noqa: E402,F401  (the small tmpfs fixture)
from test_pacs import (_auth_file, _ours, _segs, _series, _server, needs_orthanc, orthanc_installed,  # noqa: E402,F401
                       repo, studies)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUTH_VAR = "LRS_TEST_PACS_AUTH"


def _env(tmp_path, **extra):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(work), PYTHONPATH=ROOT, **extra)
    env[AUTH_VAR] = "%s:%s" % (USER, PASSWORD)
    return env, work


_SLOW_CHILD = r"""
import os, sys, time
sys.path.insert(0, %(root)r)
from LowResSegLib.workflow import run as wr
real = wr.SegmentationRun.execute
def execute(self, *a, **k):
    open(os.environ["FAULT_FLAG"], "w").close()  # the series is retrieved: patient data sits in $TMPDIR now
    time.sleep(60)
    return real(self, *a, **k)
wr.SegmentationRun.execute = execute
from LowResSegLib.frontends.cli import main
sys.exit(main(sys.argv[1:]))
"""


@needs_orthanc
def test_sigterm_mid_study_removes_the_retrieved_series(tmp_path, studies, repo):
    """Break: without the SIGTERM handler (cli._end_cleanly_on_sigterm) the series stays in $TMPDIR."""
    server = _server(tmp_path, studies, ["A"])
    flag = tmp_path / "retrieved"
    env, work = _env(tmp_path, FAULT_FLAG=str(tmp_path / "retrieved"))
    try:
        child = subprocess.Popen([sys.executable, "-c", _SLOW_CHILD % {"root": ROOT}, "pacs", server.url, "--model",
                                  MODEL, "--repository", repo, "--threads", "1", "--auth-env", AUTH_VAR, "--report",
                                  str(tmp_path / "pacs.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, env=env)
        deadline = time.time() + 60
        while not flag.exists():
            assert child.poll() is None, child.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        held = [n for n in _ours(work)]
        assert held and os.listdir(str(work / held[0] / "series")), "the series should be on disk by now"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        server.stop()
    assert child.returncode == 143, err
    assert _ours(work) == [], "patient data left in $TMPDIR"
    assert err.strip().splitlines()[-1] == "lowresseg pacs: terminated (SIGTERM); nothing partial was left"
    assert "Traceback" not in err


class _Trickler(object):
    """A server on 127.0.0.1 that answers every request one byte every ``every`` s (headers, or body)."""

    def __init__(self, where="body", every=0.3, answer=True):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d/dicom-web" % self.sock.getsockname()[1]
        self.where, self.every, self.answer, self.stopped = where, every, answer, False
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.requests += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        body = b"[]" + b" " * 4000
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: %d\r\n\r\n"
                % len(body))
        try:
            conn.recv(65536)
            if not self.answer:
                while not self.stopped:
                    conn.recv(65536)  # take the whole upload, answer nothing
                    time.sleep(0.05)
                return
            if self.where == "body":
                conn.sendall(head)
            for byte in (head + body if self.where == "headers" else body):
                if self.stopped:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.sock.close()


@pytest.mark.parametrize("where", ["body", "headers"])
def test_a_trickling_server_cannot_hang_a_get(tmp_path, repo, where):
    """2 tries of at most 2 s each: the run ends in well under 20 s, with one line giving the total time.

    Break: requests' timeout alone (per socket read) waits as long as the server trickles: about 20 min here.
    """
    server = _Trickler(where)
    env, work = _env(tmp_path)
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli", "pacs", server.url, "--model",
                               MODEL, "--repository", repo, "--timeout", "2", "--retries", "1", "--report",
                               str(tmp_path / "pacs.csv")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, env=env, timeout=60, cwd=ROOT)
    finally:
        server.stop()
    took = time.time() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("lowresseg pacs: error: searching studies: 127.0.0.1:") and \
        "did not send its whole answer within 2 s (2 tries in " in lines[0], lines[0]
    assert took < 20, "took %.1f s" % took
    assert server.requests == 2


def test_a_store_that_is_never_answered_ends_at_its_deadline(tmp_path):
    """Break: the old store (read timeout None) waits for ever; here the test's own 60 s would end it."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from LowResSegLib.hospital.pacs import PacsClient, StoreUnconfirmed

    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = str(tmp_path / "seg.dcm")
    ds.save_as(path, enforce_file_format=True)
    server = _Trickler(answer=False)
    client = PacsClient(server.url, timeout=1, store_timeout=2)
    t0 = time.time()
    try:
        with pytest.raises(StoreUnconfirmed) as info:
            client.store(path)
    finally:
        client.close()
        server.stop()
    assert time.time() - t0 < 10
    assert "the SEG was sent, but no answer within 2 s (--store-timeout)" in str(info.value)
    assert info.value.sop_uid == ds.SOPInstanceUID


class _KillsOrthancOnCheck(object):
    """A plain TCP proxy to Orthanc that SIGKILLs it when the client asks whether a SEG is stored (the
    QIDO-RS check after a STOW), as a PACS that dies between storing and answering."""

    def __init__(self, orthanc):
        self.orthanc, self.armed = orthanc, True
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = "http://127.0.0.1:%d/dicom-web" % self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, client):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.orthanc.port))
        except OSError:
            client.close()
            return
        def watch(data):
            if self.armed and data.startswith(b"GET") and b"SOPInstanceUID=" in data:
                self.orthanc.proc.kill()
                self.orthanc.proc.wait()
                return False
            return True

        try:
            relay(client, upstream, watch)
        except OSError:
            pass
        finally:
            client.close()
            upstream.close()

    def stop(self):
        self.sock.close()


@needs_orthanc
def test_a_pacs_killed_after_storing_gives_unverified_with_uids_and_the_rerun_skips(tmp_path, studies, repo, capsys):
    """Break: reporting the lost check as 'failed' without the SEG's UIDs (the row item 7 of the issue shows)."""
    server = _server(tmp_path, studies, ["A"])
    proxy = _KillsOrthancOnCheck(server)
    report = tmp_path / "pacs.csv"
    argv = ["pacs", proxy.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report", str(report),
            "--auth-file", _auth_file(tmp_path), "--timeout", "3", "--retries", "1"]
    try:
        rc = main(argv)
        out, err = capsys.readouterr()
        assert rc == 1, err
        row = next(csv.DictReader(open(str(report))))
        assert row["status"] == "unverified" and row["seg_instance"] and row["seg_series"], row
        assert "the SEG may be stored, and the next run looks for it" in row["message"]
        assert "1 stored but not verified" in out
        proxy.armed = False
        server.start()  # the PACS is back, with what it stored
        assert [s["SOPInstanceUID"] for s in _segs(server)] == [row["seg_instance"]]
        assert main(argv) == 0
        again = next(csv.DictReader(open(str(report))))
        assert again["status"] == "skipped" and again["seg_instance"] == row["seg_instance"]
        assert len(_segs(server)) == 1
    finally:
        proxy.stop()
        server.stop()


@needs_orthanc
def test_a_full_disk_for_the_report_does_not_stop_the_other_studies(tmp_path, studies, repo, disk, capsys):
    """Break: letting write_report's error out of the loop stores 1 SEG and ends the run."""
    server = _server(tmp_path, studies, ["A", "B"])
    report = disk.path / "pacs.csv"
    disk.fill(0)
    try:
        rc = main(["pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report",
                   str(report), "--auth-file", _auth_file(tmp_path)])
        assert len(_segs(server)) == 2
    finally:
        server.stop()
    out, err = capsys.readouterr()
    assert rc == 1
    assert "2 study(ies): 2 SEG(s) stored" in out
    assert err.count("the report was not updated: could not write %s: No space left on device" % report) == 2, err
    assert disk.ours() == []


@needs_orthanc
def test_a_corrupt_instance_is_named_by_its_sop_instance_uid(tmp_path, studies, repo, capsys):
    """Break: naming the retrieved file (a deleted temporary path) instead of the instance."""
    from LowResSegLib.images.geometry import Volume  # noqa: F401
    from test_cli_segment import phantom

    img, _ = phantom()
    files = _series(tmp_path / "bad", img, "Ax FLAIR", "LRS-BAD", pydicom.uid.generate_uid(), 1)
    ds = pydicom.dcmread(files[3])
    bad = str(ds.SOPInstanceUID)
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(files[3])
    server = _server(tmp_path, studies, [])
    server.upload(files)
    try:
        rc = main(["pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report",
                   str(tmp_path / "pacs.csv"), "--auth-file", _auth_file(tmp_path)])
    finally:
        server.stop()
    out, err = capsys.readouterr()
    row = next(csv.DictReader(open(str(tmp_path / "pacs.csv"))))
    assert rc == 1 and row["status"] == "failed"
    assert row["message"].startswith("instance %s looks like a DICOM slice but could not be read" % bad), row
    assert "lowresseg-pacs-" not in row["message"] and "/tmp" not in row["message"]


class _SlowAfterSearch(_Trickler):
    """Answers the study search at once (one study), then trickles every other answer."""

    STUDY = ('[{"0020000D": {"vr": "UI", "Value": ["1.2.3.4.5"]}, "00100020": {"vr": "LO", "Value": ["LRS-SLOW"]}}]'
             ).encode()

    def _handle(self, conn):
        try:
            request = conn.recv(65536)
            if request.startswith(b"GET /dicom-web/studies?"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: %d\r\n"
                             b"Connection: close\r\n\r\n%s" % (len(self.STUDY), self.STUDY))
                conn.close()
                return
        except OSError:
            conn.close()
            return
        self._trickle(conn)

    def _trickle(self, conn):
        body = b"[]" + b" " * 4000
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\nContent-Length: %d\r\n\r\n"
                         % len(body))
            for byte in body:
                if self.stopped:
                    return
                conn.sendall(bytes([byte]))
                time.sleep(self.every)
        except OSError:
            pass
        finally:
            conn.close()


def test_a_study_whose_transfers_pass_the_study_deadline_fails_alone(tmp_path, repo):
    """--study-timeout bounds all of a study's transfers, retries included; the study fails with that reason.

    Break: without the study deadline, 6 tries of 2 s plus waits take about 45 s."""
    from LowResSegLib.hospital.pacs import run_pacs
    from LowResSegLib.inference.engines import LocalEngine

    server = _SlowAfterSearch()
    t0 = time.time()
    try:
        rows = run_pacs(server.url, filters={}, report=str(tmp_path / "pacs.csv"), timeout=2, retries=5,
                        backoff=1.0, study_timeout=3, engine=LocalEngine(MODEL, repo, threads=1), progress=False)
    finally:
        server.stop()
    took = time.time() - t0
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["message"] == ("listing the series of study 1.2.3.4.5: the study's transfers passed their "
                                  "deadline of 3 s (--study-timeout)"), rows[0]["message"]
    assert took < 12, "took %.1f s" % took
