"""The shape of the code: which package may import which, no import cycles, no web code outside the web.

    verifier.core  <-  verifier.enrollment  <-  verifier.web
         ^   ^---------------- verifier.cli -----^ (never)
         |   verifier.settings (plain; read by web and cli)
    imagesets <- calibration <- training <- bench

The import graph comes from the source (every `import`, inside functions too, so an import
hidden in a function cannot hide a cycle); what a module really loads is checked by
importing it in a fresh interpreter.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("verifier", "training", "calibration", "imagesets", "bench")

# Each group and the groups it may import (besides itself and the empty `verifier` package).
ALLOWED = {
    "verifier.core": set(),
    "verifier.enrollment": {"verifier.core"},
    "verifier.settings": {"verifier.core"},
    "verifier.web": {"verifier.core", "verifier.enrollment", "verifier.settings"},
    "verifier.cli": {"verifier.core", "verifier.enrollment", "verifier.settings"},
    "verifier.__main__": {"verifier.cli"},
    "imagesets": {"verifier.core"},
    "calibration": {"verifier.core", "imagesets"},
    "training": {"verifier.core", "imagesets", "calibration"},
    "bench": {"verifier.core", "verifier.enrollment", "verifier.settings", "imagesets", "calibration", "training"},
}

WEB = ("flask", "werkzeug", "verifier.web")
TENSORFLOW = ("tensorflow", "keras")
# What importing every module of a group must not load.
FORBIDDEN = {
    "verifier.core": WEB + TENSORFLOW,
    "verifier.enrollment": WEB + TENSORFLOW,
    "verifier.settings": WEB + TENSORFLOW,
    "verifier.cli": WEB + TENSORFLOW,
    "imagesets": WEB,
    "calibration": WEB,
    "training": WEB,
}


def _module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def group(module):
    """verifier.core.scorer -> verifier.core; training.trainer -> training."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "verifier" and len(parts) > 1 else parts[0]


def imports(module):
    """The project modules `module` imports, anywhere in its source.

    `from P import x` imports P (its __init__ runs and is read) and, when P.x is a module, P.x.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_belongs_to_a_known_group():
    assert {group(module) for module in MODULES} - {"verifier"} <= set(ALLOWED)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down_the_layers(module):
    allowed = ALLOWED.get(group(module), set()) | {group(module), "verifier"}
    wrong = sorted(target for target in GRAPH[module] if group(target) not in allowed)
    assert not wrong, f"{module} ({group(module)}) imports {wrong}; it may use {sorted(allowed)}"


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while not component or node not in component:
                component.add(stack.pop())
            on_stack.difference_update(component)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    cycles = _cycles(GRAPH)
    assert not cycles, "modules that import each other (directly or round a loop): " + "; ".join(
        " <-> ".join(component) for component in cycles)


def test_the_cycle_check_sees_a_package_read_mid_import():
    graph = {"p": {"p.base"}, "p.base": {"p", "p.schema"}, "p.schema": set()}  # base: from p import schema
    assert _cycles(graph) == [["p", "p.base"]]


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_importing_a_group_loads_nothing_forbidden(name):
    """Import every module of the group in a fresh interpreter; list what got loaded that must not be."""
    modules = sorted(module for module in MODULES if group(module) == name and not module.endswith("__main__"))
    script = ("import importlib, json, sys\n"
              f"for module in {modules!r}:\n"
              "    importlib.import_module(module)\n"
              f"forbidden = {FORBIDDEN[name]!r}\n"
              "print(json.dumps(sorted(m for m in sys.modules if any(m == f or m.startswith(f + '.')\n"
              "                                                           for f in forbidden))))\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {name} loads {loaded[:10]}"
