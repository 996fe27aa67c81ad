"""``lowresseg pacs`` end to end against a real Orthanc (Debian ``orthanc`` + ``orthanc-dicomweb``).

Each test starts its own Orthanc on 127.0.0.1 (free port, temporary storage, authentication on;
Testing/orthanc_server.py) and uploads synthetic studies: a FLAIR with a bright "tumour", a
FLAIR + T2 study (the FLAIR must be read), a T1 + T2 study (no FLAIR: refused). The SEGs are read
back from Orthanc, checked against the tumour, by highdicom and by dciodvfy. The credential is
looked for in every output, report and message. Without Orthanc the tests fail (as without dciodvfy),
unless LOWRESSEG_SKIP_PACS_TESTS=1 says to skip them.
"""

import csv
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("requests")

from LowResSegLib.frontends.cli import main  # noqa: E402
from LowResSegLib.images.geometry import Volume  # noqa: E402

from helpers import installed_tool, self_signed_cert  # noqa: E402
from model_factory import add_threshold_model  # noqa: E402
from orthanc_server import PASSWORD, USER, Orthanc, TlsProxy, orthanc_missing, relay  # noqa: E402
from test_cli_segment import MODEL, lps_affine, phantom  # noqa: E402

MISSING = orthanc_missing()


@pytest.fixture
def orthanc_installed():
    """Orthanc is required, as dciodvfy is: without it these tests fail (CI must not be green with no PACS
    coverage); LOWRESSEG_SKIP_PACS_TESTS=1 skips them on a machine where it cannot be installed."""
    if MISSING and os.environ.get("LOWRESSEG_SKIP_PACS_TESTS") == "1":
        pytest.skip(MISSING + " (LOWRESSEG_SKIP_PACS_TESTS=1)")
    if MISSING:
        pytest.fail(MISSING + "; scripts/setup.sh installs it (or set LOWRESSEG_SKIP_PACS_TESTS=1 to skip these "
                              "tests knowingly)")


needs_orthanc = pytest.mark.usefixtures("orthanc_installed")
SECRET_FORMS = (PASSWORD, "bHJzLXRlc3Q6", "T3J0aGFuYy1Qdy03ZjNjOWUyMQ")  # the password, base64 of the header
AUTH_VAR = "LRS_TEST_PACS_AUTH"
LUA = """function ReceivedInstanceFilter(dicom, origin, info)
  if dicom.Modality == 'SEG' and dicom.PatientID == 'LRS-REJECT' then error('the test refuses this SEG') end
  if dicom.Modality == 'SEG' and dicom.PatientID == 'LRS-DROP' then return false end
  return true
end"""


def _series(folder, arr, description, patient, study, number):
    from LowResSegLib.images.dicomsynth import write_mr_series

    paths = write_mr_series(Volume(arr, lps_affine()), str(folder), patient_id=patient,
                            series_description=description, series_number=number)
    for p in paths:  # one study for the series of one patient
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = study
        ds.save_as(p)
    return paths


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """{name: {study, files: {description: paths}, series: {description: uid}}} written once."""
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("pacs-studies")
    img, _ = phantom()
    plan = {"A": [("Ax T2 FLAIR", img)], "B": [("Ax FLAIR", img), ("Ax T2 TSE", img[:, :, ::-1])],
            "C": [("Ax T1 SE", img), ("Ax T2 TSE", img)], "REJECT": [("Ax FLAIR", img)], "DROP": [("Ax FLAIR", img)]}
    out = {}
    for name, series in plan.items():
        study = generate_uid()
        entry = {"study": study, "patient": "LRS-" + name, "files": {}, "series": {}}
        for n, (description, arr) in enumerate(series):
            files = _series(root / name / str(n), arr, description, entry["patient"], study, n + 1)
            entry["files"][description] = files
            entry["series"][description] = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        out[name] = entry
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pacs-models"))
    add_threshold_model(root, MODEL, r=16, big_r=64, threshold=2.5)
    return root


def _server(tmp_path, studies, names, **kw):
    server = Orthanc(tmp_path / "orthanc", **kw).start()
    for name in names:
        server.upload(p for files in studies[name]["files"].values() for p in files)
    return server


@pytest.fixture
def orthanc(tmp_path, studies):
    server = _server(tmp_path, studies, ["A", "B", "C"])
    yield server
    server.stop()


def _segs(server):
    return server.instances_by_modality().get("SEG", [])


def _report(path):
    with open(str(path), newline="") as f:
        return {r["patient_id"]: r for r in csv.DictReader(f)}


def _no_secret(*texts):
    for text in texts:
        for form in SECRET_FORMS:
            assert form not in text


def _ours(folder):
    """Our temporary folders left in ``folder`` (other libraries may keep files of their own there)."""
    return [n for n in os.listdir(str(folder)) if n.startswith("lowresseg")]


def _cli(server, repo, tmp_path, *extra, auth="%s:%s" % (USER, PASSWORD)):
    """The installed console script, as an administrator runs it; credentials from the environment."""
    exe = installed_tool("lowresseg")
    assert exe, "the lowresseg console script is not installed (pip install -e .)"
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(work), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    env[AUTH_VAR] = auth
    argv = [exe, "pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--auth-env", AUTH_VAR,
            "--report", str(tmp_path / "pacs.csv"), "--timeout", "10"] + list(extra)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, env=env,
                          timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _ours(work) == []  # every retrieved series was removed
    _no_secret(proc.stdout, proc.stderr)
    return proc


@needs_orthanc
def test_three_studies_two_segs_stored_one_refused_rerun_stores_nothing(orthanc, studies, repo, tmp_path):
    import highdicom as hd

    from LowResSegLib.results.dicomseg import read_dicom_seg, seg_errors_by_origin
    from LowResSegLib.images.metrics import dice

    mr_before = sorted(i["SOPInstanceUID"] for i in orthanc.instances_by_modality()["MR"])
    dry = _cli(orthanc, repo, tmp_path, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("planned: study") == 2 and dry.stdout.count("refused: study") == 1
    assert "would retrieve 8 file(s)" in dry.stdout and "3 study(ies) found, 2 would be segmented" in dry.stdout
    assert _segs(orthanc) == [] and not (tmp_path / "pacs.csv").exists()

    proc = _cli(orthanc, repo, tmp_path)
    assert proc.returncode == 1, proc.stderr  # one study refused
    assert "3 study(ies): 2 SEG(s) stored, 0 skipped (already done), 1 refused, 0 failed" in proc.stdout
    rows = _report(tmp_path / "pacs.csv")
    _no_secret(open(str(tmp_path / "pacs.csv")).read())
    assert rows["LRS-A"]["status"] == "done" and rows["LRS-B"]["status"] == "done"
    assert rows["LRS-B"]["series"] == studies["B"]["series"]["Ax FLAIR"]  # the FLAIR, not the T2
    assert "read %s 'Ax FLAIR'" % studies["B"]["series"]["Ax FLAIR"] in rows["LRS-B"]["warnings"]
    c = rows["LRS-C"]
    assert c["status"] == "refused" and "none looks like FLAIR" in c["message"] and "[T1]" in c["message"]
    assert "refused: study %s (patient LRS-C)" % studies["C"]["study"] in proc.stderr

    segs = _segs(orthanc)
    assert len(segs) == 2
    img, truth = phantom()
    for name, description in (("A", "Ax T2 FLAIR"), ("B", "Ax FLAIR")):
        row = rows["LRS-" + name]
        seg = [s for s in segs if s["SOPInstanceUID"] == row["seg_instance"]]
        assert len(seg) == 1 and seg[0]["StudyInstanceUID"] == studies[name]["study"]  # under the right study
        path = tmp_path / ("%s.seg.dcm" % name)
        path.write_bytes(orthanc.get("/instances/%s/file" % seg[0]["_id"]))
        ds = hd.seg.segread(str(path))
        assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == studies[name]["series"][description]
        assert ds.SeriesInstanceUID == row["seg_series"] and ds.Manufacturer == "LowResSeg"
        source = studies[name]["files"][description]
        labels = read_dicom_seg(str(path), source)
        assert dice(labels, truth) > 0.9 and float(row["volume_ml"]) > 0
        ours, _ = seg_errors_by_origin(str(path), source[0])
        assert ours == [], ours

    again = _cli(orthanc, repo, tmp_path)
    assert again.returncode == 1 and "0 SEG(s) stored, 2 skipped" in again.stdout
    rows = _report(tmp_path / "pacs.csv")
    assert rows["LRS-A"]["status"] == rows["LRS-B"]["status"] == "skipped" and "--force" in rows["LRS-A"]["message"]
    assert sorted(s["SOPInstanceUID"] for s in _segs(orthanc)) == sorted(s["SOPInstanceUID"] for s in segs)

    forced = _cli(orthanc, repo, tmp_path, "--force", "--study", studies["A"]["study"])
    assert forced.returncode == 0 and "1 study(ies): 1 SEG(s) stored" in forced.stdout
    after = sorted(s["SOPInstanceUID"] for s in _segs(orthanc))
    assert len(after) == 3 and set(s["SOPInstanceUID"] for s in segs) <= set(after)  # added, nothing replaced
    assert sorted(i["SOPInstanceUID"] for i in orthanc.instances_by_modality()["MR"]) == mr_before


@needs_orthanc
def test_credentials_wrong_missing_or_in_the_url_are_clear_errors_that_never_show_them(orthanc, repo, tmp_path,
                                                                                        capsys, monkeypatch):
    common = [orthanc.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--dry-run"]
    wrong = "%s:Wrong-Secret-5d1e" % USER
    monkeypatch.setenv(AUTH_VAR, wrong)
    assert main(["pacs"] + common + ["--auth-env", AUTH_VAR]) == 2
    out, err = capsys.readouterr()
    assert "server refused the credentials from the environment variable %s; check them (HTTP 401)" % AUTH_VAR in err
    assert "Wrong-Secret-5d1e" not in out + err and err.count("\n") == 1

    monkeypatch.delenv("LOWRESSEG_PACS_AUTH", raising=False)
    assert main(["pacs"] + common) == 2
    assert "the server wants credentials: give --auth-file or --auth-env" in capsys.readouterr().err

    leaky = orthanc.url.replace("://", "://%s:%s@" % (USER, PASSWORD))
    assert main(["pacs", leaky] + common[1:]) == 2
    out, err = capsys.readouterr()
    assert "the DICOMweb URL holds credentials" in err
    _no_secret(out, err)

    good = tmp_path / "auth.txt"
    good.write_text("basic %s:%s\n" % (USER, PASSWORD))
    assert main(["pacs"] + common + ["--auth-file", str(good)]) == 0
    out, err = capsys.readouterr()
    assert "dry run: 3 study(ies) found, 2 would be segmented" in out
    _no_secret(out, err)
    token = tmp_path / "token.txt"
    token.write_text("bearer Token-9a8b7c6d5e")  # Orthanc takes basic only: refused, and the token not shown
    assert main(["pacs"] + common + ["--auth-file", str(token)]) == 2
    err = capsys.readouterr().err
    assert "refused the credentials from the auth file %s" % token in err and "Token-9a8b7c6d5e" not in err


class _StopsServerDuringInference(object):
    """The real engine; the first inference stops Orthanc, as a PACS going down mid-run."""

    def __init__(self, engine, server):
        self.engine, self.server = engine, server

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def infer(self, batch):
        self.server.stop()
        return self.engine.infer(batch)


@needs_orthanc
def test_server_going_down_mid_run_fails_each_study_clearly_and_the_run_goes_on(tmp_path, studies, repo,
                                                                                monkeypatch):
    import tempfile

    from LowResSegLib.inference.engines import LocalEngine
    from LowResSegLib.hospital.pacs import Auth, run_pacs

    server = _server(tmp_path, studies, ["A", "B"])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    try:
        engine = _StopsServerDuringInference(LocalEngine(MODEL, repo, threads=1), server)
        report = tmp_path / "pacs.csv"
        rows = run_pacs(server.url, filters={}, report=str(report), auth=Auth.parse("%s:%s" % (USER, PASSWORD)),
                        engine=engine, retries=1, backoff=0.01, timeout=5, progress=False)
    finally:
        server.stop()
    assert [r["status"] for r in rows] == ["failed", "failed"]
    first, second = rows
    assert first["message"].startswith("storing ") and "cannot reach 127.0.0.1:%d (connection refused); check the " \
        "URL and that the server runs" % server.port in first["message"]
    assert second["message"].startswith("listing the series of study %s: cannot reach" % second["study"])
    assert _report(report)[first["patient_id"]]["status"] == "failed" and len(_report(report)) == 2
    assert _ours(work) == []
    _no_secret(*[r["message"] for r in rows])


@needs_orthanc
def test_a_store_the_server_refuses_or_drops_is_a_clear_failure(tmp_path, studies, repo, capsys):
    server = _server(tmp_path, studies, ["REJECT", "DROP"], lua=LUA)
    try:
        report = tmp_path / "pacs.csv"
        rc = main(["pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report",
                   str(report), "--auth-file", _auth_file(tmp_path)])
        assert _segs(server) == []
    finally:
        server.stop()
    out, err = capsys.readouterr()
    assert rc == 1 and "2 study(ies): 0 SEG(s) stored, 0 skipped (already done), 0 refused, 2 failed" in out
    rows = _report(report)
    assert rows["LRS-REJECT"]["status"] == "failed" and "the server did not store the SEG" in rows["LRS-REJECT"][
        "message"] and "see the server's log" in rows["LRS-REJECT"]["message"]
    assert rows["LRS-DROP"]["status"] == "failed" and "answered that it stored the SEG, but does not hold it" in rows[
        "LRS-DROP"]["message"]
    _no_secret(out, err, open(str(report)).read())


def _auth_file(tmp_path):
    path = tmp_path / "auth.txt"
    path.write_text("%s:%s\n" % (USER, PASSWORD))
    return str(path)


@needs_orthanc
def test_store_seg_for_slicer_and_tls_is_verified(tmp_path, studies, repo):
    """What the Slicer export step calls; over HTTPS with a self-signed certificate: refused, then pinned."""
    from LowResSegLib.results.dicomseg import write_dicom_seg
    from LowResSegLib.repository.modelstore import ModelRepository
    from LowResSegLib.hospital.pacs import PacsError, store_seg

    cert, key = self_signed_cert(tmp_path)
    _, truth = phantom()
    source = studies["A"]["files"]["Ax T2 FLAIR"]
    seg = write_dicom_seg(truth, source, ModelRepository(repo).card(MODEL), str(tmp_path / "seg.dcm"))
    server = _server(tmp_path, studies, ["A"])
    proxy = TlsProxy(cert, key, server.port)
    try:
        with pytest.raises(PacsError, match="TLS certificate of %s could not be verified; give the PEM file of its CA"
                                            % proxy.host) as exc:
            store_seg(proxy.url, seg, "%s:%s" % (USER, PASSWORD))
        _no_secret(str(exc.value))
        with pytest.raises(PacsError, match="refused the credentials from the stored credentials") as exc:
            store_seg(proxy.url, seg, "%s:nope-Secret-1234" % USER, ca_bundle=str(cert))
        assert "nope-Secret-1234" not in str(exc.value)
        assert _segs(server) == []
        result = store_seg(proxy.url, seg, "%s:%s" % (USER, PASSWORD), ca_bundle=str(cert))
        stored = _segs(server)
        assert [s["SOPInstanceUID"] for s in stored] == [result.sop_uid]
        assert stored[0]["StudyInstanceUID"] == studies["A"]["study"] == result.study_uid
    finally:
        proxy.stop()
        server.stop()


def test_credentials_parse_and_scrub():
    from LowResSegLib.hospital.pacs import Auth, PacsError

    basic = Auth.parse("someone:pass word:with colon\n")
    assert basic.scheme == "Basic" and basic.header() == "Basic c29tZW9uZTpwYXNzIHdvcmQ6d2l0aCBjb2xvbg=="
    assert basic.scrub("x pass word:with colon y c29tZW9uZTpwYXNzIHdvcmQ6d2l0aCBjb2xvbg==") == "x *** y ***"
    assert "pass word" not in repr(basic)
    bearer = Auth.parse("Bearer abc.def.ghi")
    assert bearer.header() == "Bearer abc.def.ghi" and bearer.scrub("token abc.def.ghi") == "token ***"
    for bad in ("", "just-a-token", "a:b\nc:d", ":nouser"):
        with pytest.raises(PacsError, match="USER:PASSWORD"):
            Auth.parse(bad, "the auth file f")


class _RecordingProxy(object):
    """A plain TCP proxy to Orthanc that records the method and path of every HTTP request through it."""

    REQUEST = re.compile(rb"(?:^|\r\n)([A-Z]{3,10}) (/\S*) HTTP/1\.[01]\r\n")

    def __init__(self, port):
        import socketserver
        import threading

        seen = self.seen = []

        class Pipe(socketserver.BaseRequestHandler):
            def handle(self):
                with socket.create_connection(("127.0.0.1", port)) as upstream:
                    relay(self.request, upstream, watch=lambda data: seen.extend(
                        (m.decode(), p.decode()) for m, p in self.REQUEST_RX.findall(data)))

        Pipe.REQUEST_RX = self.REQUEST
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Pipe)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d/dicom-web" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@needs_orthanc
def test_the_client_never_deletes_or_replaces_anything(tmp_path, studies, repo, capsys):
    """Only GET (search, retrieve) and POST (a new instance, into its study) reach the PACS, and Orthanc's change
    log holds no deletion, through a dry run, a run, a rerun, --force and store_seg (issue 32: behaviour, not the
    source text). Break: any requests.delete / session.put on these paths, or a store that replaces an instance."""
    from LowResSegLib.hospital.pacs import store_seg

    server = _server(tmp_path, studies, ["A", "B", "C"])
    proxy = _RecordingProxy(server.port)
    mr_before = sorted(i["SOPInstanceUID"] for i in server.instances_by_modality()["MR"])
    argv = ["pacs", proxy.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report",
            str(tmp_path / "pacs.csv"), "--auth-file", _auth_file(tmp_path)]
    try:
        main(argv + ["--dry-run"])
        main(argv)
        main(argv)
        main(argv + ["--force", "--study", studies["A"]["study"]])
        seg = server.get("/instances/%s/file" % _segs(server)[0]["_id"])
        (tmp_path / "again.dcm").write_bytes(seg)
        store_seg(proxy.url, str(tmp_path / "again.dcm"), "%s:%s" % (USER, PASSWORD))  # same UID: a POST, kept as is
        changes = server.get("/changes?limit=10000")["Changes"]
        mr_after = sorted(i["SOPInstanceUID"] for i in server.instances_by_modality()["MR"])
    finally:
        proxy.stop()
        server.stop()
    capsys.readouterr()
    methods = set(m for m, _ in proxy.seen)
    assert methods == {"GET", "POST"}, proxy.seen
    posts = [p for m, p in proxy.seen if m == "POST"]
    assert len(posts) == 4 and all(re.match(r"^/dicom-web/studies/[0-9.]+$", p) for p in posts), posts
    assert not [c for c in changes if "Deleted" in c["ChangeType"]], changes
    assert mr_after == mr_before


@needs_orthanc
def test_only_a_flair_gets_a_seg_unattended_t1_and_unnamed_series_are_refused(tmp_path, studies, repo, capsys):
    """Issue 30: FLAIR+T2, a T1-only study and a study whose only series names no contrast: exactly 1 SEG; the
    two others refused with their reasons; a rerun stores nothing; --series on the T1 study stores one, warned.

    Break: dropping the contrast_refusal check in StudyJob.plan puts a FLAIR model's SEG on the T1 study.
    """
    from pydicom.uid import generate_uid

    img, _ = phantom()
    extra = {}
    for name, description in (("T1ONLY", "Sag 3D T1 MPRAGE"), ("UNNAMED", "series 1")):
        study = generate_uid()
        files = _series(tmp_path / name, img, description, "LRS-" + name, study, 1)
        extra[name] = (study, str(pydicom.dcmread(files[0]).SeriesInstanceUID), files)
    server = _server(tmp_path, studies, ["B"])
    for _, _, files in extra.values():
        server.upload(files)
    report = tmp_path / "pacs.csv"
    argv = ["pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report", str(report),
            "--auth-file", _auth_file(tmp_path)]
    try:
        assert main(argv) == 1
        out, err = capsys.readouterr()
        assert "3 study(ies): 1 SEG(s) stored, 0 skipped (already done), 2 refused, 0 failed" in out
        rows = _report(report)
        assert rows["LRS-B"]["status"] == "done"
        t1, unnamed = rows["LRS-T1ONLY"], rows["LRS-UNNAMED"]
        assert t1["status"] == "refused" and "looks like T1 by its headers, not FLAIR" in t1["message"] and \
            "pass --study UID --series UID" in t1["message"]
        assert unnamed["status"] == "refused" and "names no contrast in its headers" in unnamed["message"] and \
            "--accept-unknown-contrast" in unnamed["message"]
        assert len(_segs(server)) == 1
        assert main(argv) == 1 and len(_segs(server)) == 1  # the rerun stores nothing
        capsys.readouterr()
        study, series, _ = extra["T1ONLY"]
        assert main(argv + ["--study", study, "--series", series]) == 0
        assert len(_segs(server)) == 2
        assert "looks like T1" in _report(report)["LRS-T1ONLY"]["warnings"]
        assert main(argv + ["--accept-unknown-contrast", "--study", extra["UNNAMED"][0]]) == 0
        assert len(_segs(server)) == 3
    finally:
        server.stop()


@needs_orthanc
def test_a_url_without_the_dicomweb_root_gets_a_hint(tmp_path, studies, repo, capsys):
    """Issue 30: Orthanc's own REST root answers a QIDO search with HTTP 400 and raw JSON.

    Break: without the 400/405 hint in PacsClient._check the line shows Orthanc's '"Details" : ...' text.
    """
    server = _server(tmp_path, studies, ["A"])
    try:
        rc = main(["pacs", server.rest, "--model", MODEL, "--repository", repo, "--report", str(tmp_path / "r.csv"),
                   "--auth-file", _auth_file(tmp_path)])
    finally:
        server.stop()
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert "check that the URL is its DICOMweb root (for Orthanc it ends in /dicom-web" in lines[0], lines[0]
    assert "Details" not in lines[0]
    assert not os.path.exists(str(tmp_path / "r.csv"))


@needs_orthanc
def test_pacs_segments_on_an_edge_server_with_server(tmp_path, studies, repo, capsys):
    """Issue 30: `pacs --server URL --token-file F` runs the model on a real `lowresseg serve`.

    Break: ignoring --server fails: the local repository given holds no model.
    """
    from test_server import start_server

    token = tmp_path / "edge-token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(str(token), 0o600)
    edge = start_server(repo, "--token-file", str(token))
    server = _server(tmp_path, studies, ["A"])
    try:
        rc = main(["pacs", server.url, "--model", MODEL, "--repository", str(tmp_path / "no-models"), "--report",
                   str(tmp_path / "r.csv"), "--auth-file", _auth_file(tmp_path), "--server", edge.url,
                   "--token-file", str(token)])
        assert rc == 0, capsys.readouterr()
        assert len(_segs(server)) == 1
    finally:
        server.stop()
        edge.stop()


@needs_orthanc
def test_a_seg_of_an_older_model_version_does_not_count_as_done(tmp_path, studies, repo, capsys):
    """docs/pacs.md: only a SEG of the same model *and version* skips a study. Break: comparing the model name
    only (or SoftwareVersions by prefix) skips the study and stores nothing."""
    from LowResSegLib.repository.modelstore import ModelRepository
    from LowResSegLib.results.dicomseg import write_dicom_seg

    _, truth = phantom()
    card = dict(ModelRepository(repo).card(MODEL))
    card["version"] = "0.0.1-older"
    old = str(tmp_path / "old.dcm")
    write_dicom_seg(truth, studies["A"]["files"]["Ax T2 FLAIR"], card, old)
    server = _server(tmp_path, studies, ["A"])
    server.upload([old])
    try:
        rc = main(["pacs", server.url, "--model", MODEL, "--repository", repo, "--threads", "1", "--report",
                   str(tmp_path / "pacs.csv"), "--auth-file", _auth_file(tmp_path)])
        segs = _segs(server)
    finally:
        server.stop()
    out, _ = capsys.readouterr()
    assert rc == 0 and "1 SEG(s) stored, 0 skipped" in out
    assert len(segs) == 2
