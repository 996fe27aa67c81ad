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
