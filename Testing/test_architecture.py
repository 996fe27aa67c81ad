"""The library's architecture, read from its imports: no cycle, layers that point one way, and an
edge server that carries nothing but itself and the model repository (docs/architecture.md)."""

import ast
import os

import pytest

from importgraph import closure, find_cycle, import_graph, package_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "LowResSegLib")

# Which subpackage may import which (docs/architecture.md); the package root only holds __version__.
MAY_IMPORT = {
    "images": set(),
    "repository": set(),
    "edge": {"repository"},
    "inference": {"images", "repository", "edge"},
    "results": {"images"},
    "workflow": {"images", "repository", "inference", "results"},
    "hospital": {"images", "repository", "inference", "results", "workflow"},
    "frontends": {"images", "repository", "edge", "inference", "results", "workflow", "hospital", "training"},
    "training": {"images", "repository", "inference", "results"},
}


def subpackage(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_the_library_has_no_import_cycle():
    graph, _ = import_graph(LIB)
    assert "LowResSegLib.images.io" in graph and "LowResSegLib.training.trainer" in graph
    assert find_cycle(graph) is None, "import cycle: %s" % " -> ".join(find_cycle(graph))


def test_find_cycle_finds_one(tmp_path):
    """The check can fail: a cycle through a function-level import is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import x\n")
    (pkg / "b.py").write_text("x = 1\ndef f():\n    from pkg import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph, _ = import_graph(str(pkg))
    cycle = find_cycle(graph)
    assert cycle and cycle[0] == cycle[-1] and set(cycle) == {"pkg.a", "pkg.b", "pkg.c"}


def test_every_subpackage_is_known_and_says_what_belongs_there():
    found = sorted(d for d in os.listdir(LIB) if os.path.isfile(os.path.join(LIB, d, "__init__.py")))
    assert found == sorted(MAY_IMPORT), "a subpackage without a rule in MAY_IMPORT (and docs/architecture.md)"
    stray = sorted(f for f in os.listdir(LIB) if f.endswith(".py") and f != "__init__.py")
    assert not stray, "modules belong in a subpackage: %s" % stray
    for name in found:
        path = os.path.join(LIB, name, "__init__.py")
        doc = ast.get_docstring(ast.parse(open(path).read()))
        assert doc and len(doc) > 40, "%s needs a docstring that says what belongs there" % path


def test_dependencies_point_one_way():
    graph, _ = import_graph(LIB)
    wrong = []
    for module, targets in graph.items():
        here = subpackage(module)
        for target in targets:
            there = subpackage(target)
            if here and there and there != here and there not in MAY_IMPORT[here]:
                wrong.append("%s imports %s" % (module, target))
    assert not wrong, "\n".join(sorted(wrong))


def test_the_edge_server_carries_only_itself_and_the_model_repository():
    graph, third_party = import_graph(LIB)
    reached, others = closure(graph, third_party, "LowResSegLib.edge.server")
    allowed = {"LowResSegLib", "LowResSegLib.repository"}
    extra = sorted(m for m in reached if m not in allowed and subpackage(m) not in ("edge", "repository"))
    assert not extra, "the edge server's closure reaches %s" % extra
    assert "LowResSegLib.repository.modelstore" in reached and "LowResSegLib.edge.protocol" in reached
    assert others <= {"numpy", "onnxruntime"}, others


@pytest.mark.parametrize("entry", ["LowResSegLib.frontends.cli", "LowResSegLib.frontends.worker",
                                   "LowResSegLib.edge.server"])
def test_python_m_entry_points_exist(entry):
    """``python -m`` targets named in the docs and the code are real modules with a main guard."""
    path = package_modules(LIB)[entry]
    assert '__name__ == "__main__"' in open(path).read(), path
