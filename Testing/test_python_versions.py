"""The edge-server closure must run on Python 3.6 (JetPack 4.6); the Slicer-side runtime on 3.9 (Slicer 5.8)."""

import os
import subprocess

import pytest

from helpers import installed_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "LowResSegLib")
# Grows with the edge server: protocol.py and server.py join this list when they exist.
PY36 = ["__init__.py", "modelstore.py", "protocol.py", "server.py"]
TRAINING = os.path.join(LIB, "training")


def runtime_files():
    return sorted(os.path.join(LIB, f) for f in os.listdir(LIB) if f.endswith(".py"))


def vermin(target, files):
    exe = installed_tool("vermin")
    assert exe, "vermin is not installed: run the README's test command (it installs the [dev] extra)"
    cmd = [exe, "-t=%s" % target, "--violations", "--eval-annotations", "--no-tips"]
    res = subprocess.run(cmd + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    return res.returncode, res.stdout


@pytest.mark.parametrize("name", PY36)
def test_edge_server_closure_is_python36(name):
    code, out = vermin("3.6-", [os.path.join(LIB, name)])
    assert code == 0, out


def test_runtime_is_python39():
    files = runtime_files()
    assert os.path.join(LIB, "geometry.py") in files
    code, out = vermin("3.9-", files)
    assert code == 0, out


def test_vermin_catches_violations(tmp_path):
    """The check can fail: a 3.8 walrus and a 3.9 generic annotation are reported."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: list[int]):\n    if (n := len(x)) > 1:\n        return n\n")
    code, out = vermin("3.6-", [str(bad)])
    assert code != 0 and "3.8" in out


def test_runtime_does_not_import_training_or_slicer():
    """Module-level imports only: the CLI may import the training package inside a subcommand."""
    for path in runtime_files():
        top = [l for l in open(path).read().splitlines() if l.startswith(("import ", "from "))]
        for line in top:
            mod = line.split()[1]
            assert mod.split(".")[0] not in ("torch", "slicer", "qt", "vtk", "ctk"), "%s: %s" % (path, line)
            assert not mod.startswith("LowResSegLib.training"), "%s: %s" % (path, line)
