"""The Slicer extension's packaging: CMake lists every runtime file (unlisted files are not packaged)."""

import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cmake_list(text, name):
    m = re.search(r"set\(%s\s+(.*?)\)" % name, text, re.S)
    assert m, "%s not set" % name
    return [t for t in m.group(1).split() if not t.startswith("#")]


def test_every_runtime_file_and_resource_is_listed():
    with open(os.path.join(ROOT, "LowResSeg", "CMakeLists.txt")) as f:
        text = f.read()
    scripts = cmake_list(text, "LOWRESSEG_LIBRARY_SCRIPTS")
    resources = cmake_list(text, "LOWRESSEG_RESOURCES")
    runtime = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "LowResSegLib", "**", "*.py"),
                                                                   recursive=True)
                     if os.sep + "training" + os.sep not in p and "__pycache__" not in p)
    assert "LowResSegLib/edge/server.py" in runtime and "LowResSegLib/images/io.py" in runtime
    assert sorted(scripts) == runtime  # LowResSegLib/training (torch) stays out of Slicer
    shipped = sorted(os.path.relpath(p, ROOT) for folder in ("Models", "UI", "Icons")
                     for p in glob.glob(os.path.join(ROOT, "Resources", folder, "**", "*"), recursive=True)
                     if os.path.isfile(p))
    assert sorted(resources) == shipped
    assert "slicerMacroBuildScriptedModule" in text and "SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR}/.." in text


def test_the_self_test_is_registered_with_ctest():
    """slicer_add_python_unittest(SCRIPT LowResSeg.py) under BUILD_TESTING, after the module is built, as in
    Slicer's scripted-module template (Utilities/Templates/Modules/Scripted/CMakeLists.txt@v5.8.1 l. 23-27)."""
    with open(os.path.join(ROOT, "LowResSeg", "CMakeLists.txt")) as f:
        text = re.sub(r"#.*", "", f.read())  # comments do not count
    assert re.search(r"set\(MODULE_NAME\s+LowResSeg\)", text)
    testing = re.search(r"if\(BUILD_TESTING\)(.*?)endif\(\)", text, re.S)
    assert testing, "no if(BUILD_TESTING) block"
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", testing.group(1))
    assert text.index("slicerMacroBuildScriptedModule(") < testing.start()


def test_extension_metadata_and_catalog_entry():
    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        text = f.read()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_DEPENDS"):
        assert re.search(r"set\(%s \"[^\"]+\"\)" % key, text), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in text and 'set(EXTENSION_DEPENDS "NA")' in text
    assert "find_package(Slicer REQUIRED)" in text and "add_subdirectory(LowResSeg)" in text
    with open(os.path.join(ROOT, "LowResSeg.json")) as f:
        entry = json.load(f)
    assert entry["category"] == "Segmentation" and entry["scm_url"].endswith(".git")
    assert os.path.isfile(os.path.join(ROOT, "Resources", "Icons", "LowResSeg.png"))
