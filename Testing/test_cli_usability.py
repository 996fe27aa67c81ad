"""What a new user tripped over on the command line (issue 30): budgets, the runtime-only set-up, output
that is not a terminal, a PACS URL that is not the DICOMweb root. Real subprocesses of the CLI."""

import os
import subprocess
import sys

import pytest

from model_factory import add_threshold_model
from test_cli_segment import MODEL, phantom, write_nifti

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(args, env=None, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli"] + [str(a) for a in args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})), cwd=cwd or ROOT, timeout=timeout)


def _one_line(proc, command, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("lowresseg %s: error: " % command), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("budget,needle", [("0s", "must be more than 0 s"), ("0", "must be more than 0 s"),
                                           ("-1s", "must be more than 0 s"), ("-0.5", "must be more than 0 s"),
                                           ("soon", "cannot read the budget 'soon'")])
def test_a_budget_of_zero_or_less_is_one_clear_error(tmp_path, budget, needle):
    """Break: without the check in cli._check_budget, 0s picks 'the fastest' and -1s gets argparse's
    'expected one argument'."""
    proc = _cli(["segment", tmp_path / "missing.nii.gz", "--model", "auto", "--budget", budget, "--output",
                 tmp_path / "t.nii.gz"])
    _one_line(proc, "segment", "--budget" if budget != "soon" else "budget", needle)
    assert os.listdir(str(tmp_path)) == []


def test_a_training_side_command_in_a_runtime_only_environment_says_what_to_install(tmp_path):
    """``phantom`` where scipy is not installed (a package that fails to import as a missing one does).

    Break: without cli._check_training_side it dies with ModuleNotFoundError and leaves images/, labels/ and
    NOTICE-MNI152.txt behind.
    """
    shadow = tmp_path / "shadow" / "scipy"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'scipy'\", name='scipy')\n")
    out = tmp_path / "phantoms"
    proc = subprocess.run([sys.executable, "-m", "LowResSegLib.frontends.cli", "phantom", str(out), "--n", "1"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "shadow"), ROOT])),
                          cwd=str(tmp_path))
    _one_line(proc, "phantom", "needs the full set-up (missing: scipy)", "scripts/setup.sh")
    assert sorted(os.listdir(str(tmp_path))) == ["shadow"]


def test_progress_is_not_glued_together_when_output_is_not_a_terminal(tmp_path):
    """Break: tqdm's bars with carriage returns in a log file (issue 30, item 8)."""
    repo = str(tmp_path / "models")
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    img, _ = phantom()
    source = write_nifti(tmp_path / "flair.nii.gz", img)
    proc = _cli(["segment", source, "--model", MODEL, "--repository", repo, "--output", tmp_path / "t.nii.gz",
                 "--threads", "1"])
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr + proc.stdout and "slice/s" not in proc.stderr
    assert proc.stdout.splitlines()[0] == "wrote %s" % (tmp_path / "t.nii.gz")


def test_help_texts_name_the_right_options():
    proc = _cli(["compare", "--help"])
    assert "with auto in --models" in " ".join(proc.stdout.split()) and "with --model auto" not in proc.stdout
    seg = " ".join(_cli(["segment", "--help"]).stdout.split())
    assert "input the MRI volume: a NIfTI, NRRD or MetaImage file, or a folder of DICOM files" in seg
    assert "--repository REPOSITORY model repository folder" in seg


TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """A real `lowresseg serve` on 127.0.0.1 with a token, serving the threshold model; and a local repository."""
    from test_server import start_server

    root = tmp_path_factory.mktemp("edge")
    repo = str(root / "models")
    add_threshold_model(repo, MODEL, r=16, big_r=64, threshold=2.5)
    token = root / "token"
    token.write_text(TOKEN + "\n")
    os.chmod(str(token), 0o600)
    server = start_server(repo, "--token-file", str(token))
    img, _ = phantom()
    source = write_nifti(root / "flair.nii.gz", img)
    yield {"url": server.url, "repo": repo, "token": str(token), "source": source, "server": server}
    server.stop()


def test_segment_batch_and_compare_run_on_an_edge_server_with_the_local_labels(tmp_path, edge):
    """Issue 30: --server URL --token-file F gives the labels of the local run, for segment, batch and compare.

    Break: ignoring --server (a local run) fails: the remote runs get a repository without the model.
    """
    import SimpleITK as sitk

    local, remote = tmp_path / "local.nii.gz", tmp_path / "remote.nii.gz"
    assert _cli(["segment", edge["source"], "--model", MODEL, "--repository", edge["repo"], "--output", local,
                 "--threads", "1"]).returncode == 0
    proc = _cli(["segment", edge["source"], "--model", MODEL, "--output", remote, "--server", edge["url"],
                 "--token-file", edge["token"], "--repository", tmp_path / "no-models-here"])
    assert proc.returncode == 0, proc.stderr
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(local))) ==
            sitk.GetArrayFromImage(sitk.ReadImage(str(remote)))).all()
    studies = tmp_path / "studies"
    studies.mkdir()
    os.link(edge["source"], str(studies / "case.nii.gz"))
    proc = _cli(["batch", studies, "--model", MODEL, "--out", tmp_path / "out", "--server", edge["url"],
                 "--token-env", "LRS_EDGE_TOKEN", "--repository", tmp_path / "no-models-here"],
                env={"LRS_EDGE_TOKEN": TOKEN})
    assert proc.returncode == 0 and "1 case(s) done" in proc.stdout, proc.stderr
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz"))) ==
            sitk.GetArrayFromImage(sitk.ReadImage(str(local)))).all()
    proc = _cli(["compare", edge["source"], "--models", MODEL, "--out", tmp_path / "cmp", "--server", edge["url"],
                 "--token-file", edge["token"], "--repository", tmp_path / "no-models-here"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(str(tmp_path / "cmp"))) == ["comparison.csv", "comparison.json", "comparison.png"]


def test_a_wrong_token_or_a_down_server_is_one_line_and_leaves_nothing(tmp_path, edge):
    bad = tmp_path / "bad-token"
    bad.write_text("not-the-token-at-all\n")
    os.chmod(str(bad), 0o600)
    out = tmp_path / "out"
    out.mkdir()
    proc = _cli(["segment", edge["source"], "--model", MODEL, "--output", out / "t.nii.gz", "--server", edge["url"],
                 "--token-file", bad])
    _one_line(proc, "segment", "token")
    assert TOKEN not in proc.stderr and "not-the-token-at-all" not in proc.stderr
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here
    proc = _cli(["segment", edge["source"], "--model", MODEL, "--output", out / "t.nii.gz", "--server",
                 "http://127.0.0.1:%d" % port, "--token-file", edge["token"]])
    _one_line(proc, "segment", "127.0.0.1:%d" % port)
    proc = _cli(["segment", edge["source"], "--model", "auto", "--budget", "1s", "--output", out / "t.nii.gz",
                 "--server", edge["url"]])
    _one_line(proc, "segment", "with --server name the model")
    proc = _cli(["segment", edge["source"], "--model", MODEL, "--output", out / "t.nii.gz", "--token-file",
                 edge["token"]])
    _one_line(proc, "segment", "go with --server URL")
    assert os.listdir(str(out)) == []


def test_compare_figure_spreads_its_slices_over_the_tumour_and_labels_them_in_mm():
    """Issue 30, item 3. Break: the old choice (the three slices with the most tumour) gives neighbours (23, 24, 25)
    of a tumour that spans 10 slices; the old caption promised a green line that is not drawn without a truth."""
    import numpy as np

    from LowResSegLib.frontends.compare import figure_caption, figure_slices, slice_position

    counts = np.zeros(40)
    counts[10:30] = 100
    counts[22:26] = 400  # the bulk in the middle: the old rule picked 23, 24, 25
    ks = figure_slices(counts)
    assert len(ks) == 3 and ks[0] <= 17 and 22 <= ks[1] <= 25 and ks[2] >= 24 and ks[2] - ks[0] >= 7, ks
    assert figure_slices(np.zeros(9)) == [4]
    affine = np.diag([0.9, 0.8, 5.0, 1.0])
    affine[:3, 3] = [-100.0, -120.0, -20.0]
    assert slice_position(affine, 2, (30, 40, 50)) == "I 10.0 mm"
    assert slice_position(affine, 8, (30, 40, 50)) == "S 20.0 mm"
    caption = " ".join(figure_caption(["a", "b"], "the highest-resolution run (b)", False))
    assert "green" not in caption and "outlined in red" in caption and "highest-resolution run (b)" in caption
    assert "green dashed: the ground truth" in " ".join(figure_caption(["a"], "the ground truth", True))


def test_compare_figure_outlines_masks_and_its_caption_fits(tmp_path, monkeypatch):
    """The figure itself, inspected: each overlay panel holds one image (the anatomy) and outlines, no mask image
    over it; the per-panel titles give the position in mm; the caption lies inside the figure.

    Break: the old 35 % red fill (a second image on each overlay), or an unwrapped caption cut at both ends."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from LowResSegLib.frontends.compare import comparison_figure, run_comparison
    from LowResSegLib.images.io import read_volume
    from LowResSegLib.inference.engines import LocalEngine

    repo = str(tmp_path / "models")
    for name, r in (("threshold-16to64", 16), ("threshold-32to64", 32)):
        add_threshold_model(repo, name, r=r, big_r=64, threshold=2.5)
    img, _ = phantom()
    volume = read_volume(write_nifti(tmp_path / "flair.nii.gz", img))
    engines = [LocalEngine(n, repo, threads=1) for n in ("threshold-16to64", "threshold-32to64")]
    _, segs = run_comparison(volume, engines)
    saved = []
    real = Figure.savefig

    def keep(fig, *a, **k):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        saved.append((fig, [t.get_window_extent(renderer) for t in fig.texts]))
        return real(fig, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    comparison_figure(volume, segs, str(tmp_path / "c.png"))
    fig, extents = saved[0]
    axes = fig.axes
    overlays = [ax for ax in axes if " mm" in ax.get_title()]
    assert len(overlays) == len(axes) // 2 and overlays, [ax.get_title() for ax in axes]
    for ax in overlays:
        assert len(ax.images) == 1, "a mask image drawn over the anatomy"
    assert any(ax.collections for ax in overlays), "no outline drawn"
    assert all("whole volume" in ax.get_title() for ax in axes[:2])
    box = fig.bbox
    assert extents
    for ext in extents:
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y1 <= box.y1 + 1, "the caption is cut off"
    assert "green" not in " ".join(t.get_text() for t in fig.texts)


def test_the_suite_keeps_its_caches_out_of_the_home_folder():
    """Issue 30, item 7: the tests wrote 135 MB of phantoms into ~/.cache/lowresseg. Break: dropping the
    LOWRESSEG_CACHE set-up of conftest.pytest_configure."""
    import tempfile

    from LowResSegLib.inference.modelchoice import CalibrationCache
    from LowResSegLib.training.cache import default_cache_dir

    home = os.path.realpath(os.path.expanduser("~"))
    cache = os.path.realpath(default_cache_dir())
    assert cache.startswith(os.path.realpath(tempfile.gettempdir())) and not cache.startswith(
        os.path.join(home, ".cache")), cache
    assert os.path.isdir(cache)
    calibration = getattr(CalibrationCache(), "path", None)
    if calibration is not None:
        assert os.path.realpath(calibration).startswith(cache), calibration


def test_the_auto_pick_message_reads_as_a_sentence_for_every_preset(tmp_path):
    """Issue 30, item 9: '--budget best' said 'among the models that fit best quality'."""
    from LowResSegLib.inference.engines import LocalEngine
    from LowResSegLib.inference.modelchoice import choose_model

    repo = str(tmp_path / "models")
    for name, r in (("threshold-16to64", 16), ("threshold-32to64", 32)):
        add_threshold_model(repo, name, r=r, big_r=64, threshold=2.5)
    names = ["threshold-16to64", "threshold-32to64"]
    for budget, words in (("best", "of the 2 models (--budget best)"), ("balanced", "among the models that fit "
                                                                                    "balanced"),
                          ("10s", "among the models that fit a budget of")):
        choice = choose_model(names, budget, lambda n: LocalEngine(n, repo, threads=1), slices=20, cache=False)
        assert words in choice.reason and "fit best quality" not in choice.reason, choice.reason
