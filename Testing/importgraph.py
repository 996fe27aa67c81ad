"""A package's import graph, read with ``ast`` (nothing is imported): for the architecture tests.

Every import counts, also those inside functions: they run too. A module ``a.b.c`` imports its
packages' ``__init__`` files as well (``a``, ``a.b``), as Python does.
"""

import ast
import os
import sys


def package_modules(package_dir):
    """{dotted module name: file} of every ``.py`` file under ``package_dir`` (a package ``__init__``
    is named by its package)."""
    package_dir = os.path.abspath(package_dir)
    root = os.path.dirname(package_dir)
    modules = {}
    for folder, _, names in os.walk(package_dir):
        for name in names:
            if name.endswith(".py") and "__pycache__" not in folder:
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                if dotted.endswith(".__init__"):
                    dotted = dotted[:-len(".__init__")]
                modules[dotted] = path
    return modules


def _parents(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(module, path, modules):
    """(modules of the package that ``module`` imports, other top-level names outside the standard library)."""
    is_package = os.path.basename(path) == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[:len(here) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            candidates = [base] + [base + "." + a.name for a in node.names]
        else:
            continue
        for name in candidates:
            if name in modules:
                inside.add(name)
                inside.update(p for p in _parents(name) if p in modules)
            elif name.split(".")[0] not in modules and name.split(".")[0] not in sys.stdlib_module_names:
                outside.add(name.split(".")[0])
    inside.discard(module)
    return inside, outside


def import_graph(package_dir):
    """{module: set of the package's modules it imports}, and {module: third-party top-level names}."""
    modules = package_modules(package_dir)
    graph, third_party = {}, {}
    for module, path in modules.items():
        graph[module], third_party[module] = imports_of(module, path, modules)
    return graph, third_party


def find_cycle(graph):
    """One import cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def closure(graph, third_party, entry):
    """(modules that ``entry`` reaches, third-party names they import), transitively."""
    seen, todo = set(), [entry]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen, set().union(*(third_party.get(m, set()) for m in seen))
