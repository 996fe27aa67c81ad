"""scripts/setup.sh installs into the project venv only: pip never runs on the interpreter it was given
(a stock Debian python3 is PEP 668 "externally managed" and refuses), and a second run changes nothing."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETUP = os.path.join(ROOT, "scripts", "setup.sh")


def dry_run(*args, **env):
    full = dict(os.environ, LOWRESSEG_SETUP_DRY_RUN="1", **env)
    return subprocess.run(["bash", SETUP] + list(args), cwd=ROOT, env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120)


def commands(stdout):
    return [l[2:] for l in stdout.splitlines() if l.startswith("+ ")]


@pytest.mark.parametrize("mode", ["all", "runtime"])
def test_fresh_setup_runs_pip_only_inside_the_venv(tmp_path, mode):
    venv = str(tmp_path / "venv")
    res = dry_run(mode, LOWRESSEG_VENV=venv, PYTHON=sys.executable)
    assert res.returncode == 0, res.stderr
    cmds = commands(res.stdout)
    assert "%s -m venv %s" % (sys.executable, venv) in cmds
    pip = [c for c in cmds if "pip" in c.split()]
    assert pip, cmds
    for c in pip:
        assert c.startswith(os.path.join(venv, "bin", "python") + " -m pip install "), c
        assert "--break-system-packages" not in c and "--user" not in c.split()
    assert any(("[train," in c) == (mode == "all") and "-e ." in c for c in pip)
    assert any("torch==" in c for c in pip) == (mode == "all")


def test_every_pip_call_in_the_script_uses_the_venv_python():
    """The static half: a pip call added later that bypasses $VPY fails here before it reaches a user."""
    lines = [l.strip() for l in open(SETUP) if not l.strip().startswith("#")]
    pip_lines = [l for l in lines if re.search(r"\bpip\b", l) and "install" in l]
    assert pip_lines
    for l in pip_lines:
        assert '"$VPY" -m pip install' in l, l


@pytest.mark.skipif(sys.prefix == getattr(sys, "base_prefix", sys.prefix),
                    reason="the suite is not running inside a venv made by scripts/setup.sh")
def test_second_run_changes_nothing():
    """The suite runs in the venv that setup.sh just made: setting up again must be a no-op."""
    res = dry_run("all", LOWRESSEG_VENV=sys.prefix)
    assert res.returncode == 0, res.stderr
    assert commands(res.stdout) == []
    assert "up to date" in res.stderr


def test_too_old_or_missing_python_is_a_clear_error(tmp_path):
    old = tmp_path / "python3.8"
    old.write_text("#!/bin/sh\necho 'Python 3.8.10' >&2\nexit 1\n")
    old.chmod(0o755)
    res = dry_run("runtime", LOWRESSEG_VENV=str(tmp_path / "v"), PYTHON=str(old))
    assert res.returncode != 0
    assert "Python 3.9 or newer" in res.stderr and commands(res.stdout) == []
    res = dry_run("runtime", LOWRESSEG_VENV=str(tmp_path / "v"), PYTHON=str(tmp_path / "nope"))
    assert res.returncode != 0 and "no '" in res.stderr and "PYTHON=" in res.stderr


def test_unknown_mode_is_refused():
    res = dry_run("everything")
    assert res.returncode == 2 and "usage" in res.stderr
