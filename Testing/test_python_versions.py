"""The edge-server closure must run on Python 3.6 (JetPack 4.6); the Slicer-side runtime on 3.9 (Slicer 5.8)."""

import os
import subprocess

import pytest

from helpers import installed_tool
from importgraph import closure, import_graph, package_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "LowResSegLib")
SERVER = os.path.join(LIB, "edge", "server.py")
# What the Jetson has besides the standard library (docs/jetson.md)
JETSON_THIRD_PARTY = {"numpy", "onnxruntime"}
TRAINING = os.path.join(LIB, "training")


def import_closure(entry, package_dir):
    """(files, third-party top-level modules) that ``entry`` imports, transitively, found with ast.

    Every import counts, also those inside functions: they run on the Jetson as well. Modules of
    the package (``package_dir``'s name) are followed to their files, with the ``__init__.py`` of
    every package on the way; everything else is reported by its top-level name unless it is in
    the standard library.
    """
    modules = package_modules(package_dir)
    graph, third_party = import_graph(package_dir)
    entry_module = {path: module for module, path in modules.items()}[os.path.abspath(entry)]
    reached, others = closure(graph, third_party, entry_module)
    return sorted(modules[m] for m in reached), others


def runtime_files():
    """Every file of the library but ``training/`` (torch): what Slicer's Python 3.9 runs."""
    return sorted(p for p in package_modules(LIB).values() if not p.startswith(TRAINING + os.sep))


def vermin(target, files):
    exe = installed_tool("vermin")
    assert exe, "vermin is not installed: run the README's test command (it installs the [dev] extra)"
    cmd = [exe, "-t=%s" % target, "--violations", "--eval-annotations", "--no-tips"]
    res = subprocess.run(cmd + files, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    return res.returncode, res.stdout


def test_edge_server_import_closure_is_python36_and_needs_only_numpy_and_onnxruntime():
    files, third_party = import_closure(SERVER, LIB)
    names = sorted(os.path.relpath(f, LIB) for f in files)
    assert {"__init__.py", "repository/modelstore.py", "edge/protocol.py", "edge/server.py", "edge/tokens.py"} <= set(
        names), names
    assert not [n for n in names if n.startswith("training")], names
    assert third_party <= JETSON_THIRD_PARTY, "the server imports %s, which JetPack 4.6 does not have" % (
        third_party - JETSON_THIRD_PARTY)
    code, out = vermin("3.6-", files)
    assert code == 0, out


def test_import_closure_follows_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import json\ndef f():\n    from pkg import b\n    return b\n")
    (pkg / "b.py").write_text("from . import c\nimport numpy as np\n")
    (pkg / "c.py").write_text("from pkg.d import thing\n")
    (pkg / "d.py").write_text("import torch\nthing = 1\n")
    (pkg / "unused.py").write_text("import requests\n")
    files, others = import_closure(str(pkg / "a.py"), str(pkg))
    assert [os.path.basename(f) for f in files] == ["__init__.py", "a.py", "b.py", "c.py", "d.py"]
    assert others == {"numpy", "torch"}


def test_runtime_is_python39():
    files = runtime_files()
    assert os.path.join(LIB, "images", "geometry.py") in files
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
