"""Issue 31 through the front ends that need a server: the PACS report's review columns (a real Orthanc) and
`lowresseg segment --server` with an ensemble whose members run on a real `lowresseg serve` (labels and
disagreement map equal to the local run)."""

import numpy as np
import SimpleITK as sitk

from test_ensemble import ENS, build_repo, cli, graded_volume, write_nifti
from test_pacs import _cli, _report, _segs, _server, needs_orthanc, orthanc_installed, studies  # noqa: F401  (fixtures)
from test_server import start_server


@needs_orthanc
def test_the_pacs_report_holds_the_review_score_and_flag(tmp_path, studies):  # noqa: F811
    repo = build_repo(str(tmp_path / "models"))
    server = _server(tmp_path, studies, ["A"])
    try:
        proc = _cli(server, repo, tmp_path, "--model", ENS, "--repository", repo)
        assert proc.returncode == 0, proc.stderr
        row = _report(tmp_path / "pacs.csv")["LRS-A"]
        assert row["status"] == "done" and row["review"] in ("yes", "no") and 0 <= float(row["review_score"]) <= 1
        assert len(_segs(server)) == 1  # stored into the study
        with open(str(tmp_path / "pacs.csv")) as f:
            assert "review_score,review" in f.readline()
    finally:
        server.stop()


def test_segment_with_server_runs_the_ensemble_members_remotely_with_the_local_result(tmp_path):
    repo = build_repo(str(tmp_path / "models"))
    src = write_nifti(graded_volume(), str(tmp_path / "case.nii.gz"))
    server = start_server(repo)
    try:
        remote = cli("segment", src, "--model", ENS, "--repository", repo, "--server", server.url,
                     "--output", str(tmp_path / "r.nii.gz"), "--uncertainty", str(tmp_path / "ru.nii.gz"))
        assert remote.returncode == 0, remote.stderr
    finally:
        server.stop()
    local = cli("segment", src, "--model", ENS, "--repository", repo, "--output", str(tmp_path / "l.nii.gz"),
                "--uncertainty", str(tmp_path / "lu.nii.gz"))
    assert local.returncode == 0, local.stderr
    for a, b in (("r.nii.gz", "l.nii.gz"), ("ru.nii.gz", "lu.nii.gz")):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / a))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / b))))
    review = [l for l in remote.stdout.splitlines() if "review score" in l]
    assert review and review == [l for l in local.stdout.splitlines() if "review score" in l]
