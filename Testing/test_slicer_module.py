"""The Slicer module without Slicer: (a) the real .ui in PySide6, (b) every Slicer / MRML / CTK / VTK
name it calls exists in the real API lists, (d) it compiles and keeps to Python 3.9.

(a) loads Resources/UI/LowResSeg.ui with QUiLoader offscreen (Slicer and CTK classes fall back to their
base class) and checks every ``self.ui.<name>`` the module uses. (b) parses LowResSeg.py with ``ast``:
``slicer.util.X``, ``slicer.X`` and every CamelCase method called must be in Testing/data/slicer-api
(5.8.1, or 5.12.3 behind a ``hasattr`` check), in ctk-dicomdatabase.txt, or in the ``vtk`` wheel.
"""

import ast
import os
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from helpers import installed_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULE = os.path.join(ROOT, "LowResSeg", "LowResSeg.py")
UI = os.path.join(ROOT, "Resources", "UI", "LowResSeg.ui")
API = os.path.join(ROOT, "Testing", "data", "slicer-api")  # names from Slicer's sources (see its README)
# the class a widget must have, by how the module uses it (name suffix)
EXPECTED = {"Button": ("QPushButton", "QRadioButton"), "RadioButton": ("QRadioButton",),
            "Selector": ("QComboBox", "qMRMLNodeComboBox"), "Table": ("QTableWidget",), "List": ("QListWidget",),
            "Label": ("QLabel",), "LineEdit": ("QLineEdit",), "ProgressBar": ("QProgressBar",),
            "CollapsibleButton": ("ctkCollapsibleButton",)}


def module_tree(path=MODULE):
    with open(path) as f:
        return ast.parse(f.read(), path)


def ui_names_used(tree):
    return sorted({node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Attribute) and node.value.attr == "ui"
                   and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"})


def ui_classes(path=UI):
    return {w.get("name"): w.get("class") for w in ET.parse(path).iter("widget")}


# --------------------------------------------------------------------------- (a) the .ui


def test_ui_loads_in_pyside6_and_has_every_widget_the_module_uses():
    pytest.importorskip("PySide6")
    code = r'''
import sys
from PySide6.QtCore import QFile
from PySide6.QtUiTools import QUiLoader
from PySide6.QtWidgets import QApplication, QWidget
app = QApplication([])
f = QFile(sys.argv[1]); assert f.open(QFile.ReadOnly)
w = QUiLoader().load(f)
assert w is not None and w.objectName() == "LowResSeg"
print("\n".join(sorted(c.objectName() for c in w.findChildren(QWidget) if c.objectName())))
'''
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-c", code, UI], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         universal_newlines=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    classes = ui_classes()
    used = ui_names_used(module_tree())
    assert used, "the module uses no self.ui widgets?"
    missing = [n for n in used if n not in loaded]
    assert missing == [], "self.ui names missing from the .ui: %s" % missing
    wrong = []
    for name in used:
        suffix = max((s for s in EXPECTED if name.endswith(s)), key=len, default=None)
        if suffix and classes[name] not in EXPECTED[suffix]:
            wrong.append((name, classes[name]))
    assert wrong == [], "widgets of an unexpected class: %s" % wrong


# --------------------------------------------------------------------------- (b) the API


def api_names(filename):
    names = set()
    with open(os.path.join(API, filename)) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 2 and not line.startswith("#"):
                names.add(parts[1].split(".")[-1])
    return names


def vtk_names():
    vtk = pytest.importorskip("vtk")
    names = set()
    for cls in ("vtkMatrix4x4",):
        names.update(dir(getattr(vtk, cls)))
    return names


def called_names(tree):
    """(kind, name, guarded): slicer.util.X and slicer.X used, and CamelCase methods called (not on qt)."""
    guarded = set()
    for node in ast.walk(tree):  # names used under `hasattr(..., "name")` checks
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr" and len(node.args) == 2 \
                and isinstance(node.args[1], ast.Constant):
            guarded.add(node.args[1].value)
    calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, v = [node.attr], node.value
        while isinstance(v, ast.Attribute):
            chain.insert(0, v.attr)
            v = v.value
        root = getattr(v, "id", None)
        if root == "slicer" and chain[0] == "util" and len(chain) == 2:
            found.append(("util", chain[1], chain[1] in guarded))
        elif root == "slicer" and len(chain) == 1:
            found.append(("slicer", chain[0], chain[0] in guarded))
        if id(node) in calls and root not in ("qt", "ctk") and re.match(r"^[A-Z][a-z]+[A-Za-z0-9]*$", node.attr):
            found.append(("method", node.attr, node.attr in guarded))
    return found


# module-level globals of the `slicer` package that the lists do not name as API entries
SLICER_GLOBALS = {"app", "util", "mrmlScene", "dicomDatabase", "packaging", "modules", "i18n"}


def unknown_api_names(tree):
    s58, s512 = api_names("slicer-5.8.1.txt"), api_names("slicer-5.12.3.txt")
    known = s58 | api_names("ctk-dicomdatabase.txt") | vtk_names() | SLICER_GLOBALS
    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    bad = []
    for kind, name, guarded in called_names(tree):
        if name in known or name in defined:
            continue
        if guarded and name in s512:
            continue
        bad.append("%s %s" % (kind, name))
    return sorted(set(bad))


def test_every_slicer_name_called_exists_in_the_real_api():
    assert unknown_api_names(module_tree()) == []


def test_the_api_check_catches_a_misspelt_method(tmp_path):
    with open(MODULE) as f:
        text = f.read()
    bad = tmp_path / "LowResSeg.py"
    bad.write_text(text.replace("SetReferenceImageGeometryParameterFromVolumeNode",
                                "SetReferenceImageGeometryParameterFromVolume", 1)
                   .replace("slicer.util.arrayFromVolume(", "slicer.util.arrayFromVolumes(", 1)
                   .replace("slicer.packaging.pip_ensure", "slicer.packaging.pip_ensured", 1))
    assert unknown_api_names(module_tree(str(bad))) == [
        "method SetReferenceImageGeometryParameterFromVolume", "util arrayFromVolumes"]  # pip_ensured: guarded


# --------------------------------------------------------------------------- (d) compiles, Python 3.9


def test_module_compiles_and_keeps_to_python_39(tmp_path):
    py_compile.compile(MODULE, cfile=str(tmp_path / "m.pyc"), doraise=True)
    vermin = installed_tool("vermin")
    if vermin is None:
        pytest.fail("vermin is missing; run scripts/setup.sh")
    files = [MODULE] + [os.path.join(ROOT, "LowResSegLib", f) for f in
                        ("frontends/slicersupport.py", "frontends/background.py", "frontends/processtree.py",
                         "frontends/worker.py", "frontends/childprotocol.py", "edge/tokens.py", "workflow/run.py",
                         "images/dicomread.py", "workflow/batch.py")]
    missing = [f for f in files if not os.path.isfile(f)]
    assert missing == [], "files the module runs, not found: %s" % missing
    out = subprocess.run([vermin, "-t=3.9-", "--violations", "--no-tips"] + files, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    assert out.returncode == 0, out.stdout


# --------------------------------------------------------------------------- decisions the module takes from the library


def test_comparison_view_lists():
    from LowResSegLib.frontends.slicersupport import comparison_view_lists, is_comparison_view

    assert is_comparison_view("LowResSeg2") and not is_comparison_view("Red") and not is_comparison_view("LowResSegX")
    views = [("vR", "Red"), ("v3d", "1"), ("c1", "LowResSeg1"), ("c2", "LowResSeg2")]
    lists = comparison_view_lists([("a", "LowResSeg1"), ("b", "LowResSeg2"), ("old", None), ("gone", "LowResSeg9")],
                                  views)
    assert lists == {"a": ["c1", "vR", "v3d"], "b": ["c2", "vR", "v3d"], "old": ["vR", "v3d"], "gone": ["vR", "v3d"]}
    assert comparison_view_lists([("a", None)], [("vR", "Red")]) == {}  # no comparison yet: nothing restricted
    # never an empty list: to Slicer that means every view
    assert comparison_view_lists([("a", None)], [("c1", "LowResSeg1")]) == {}


def test_install_failure_reason():
    import subprocess

    from LowResSegLib.frontends.slicersupport import install_failure_reason

    failed = subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", "onnxruntime"])
    assert install_failure_reason(failed).startswith("pip stopped with exit status 1 (its messages are in the Python")
    assert install_failure_reason(RuntimeError("User declined package installation")) == \
        "User declined package installation"
    assert install_failure_reason(OSError()) == "OSError"
