"""The package's layering, read from its source: no import cycle (module-level or inside functions), no private name
imported across modules, one meaning per public constant name, and no process-wide side effect at import."""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Set

import pytest

pytestmark = pytest.mark.spikingjelly_versions  # CI runs this file under each SpikingJelly version

PACKAGE = Path(__file__).resolve().parent.parent / "snn_adv"


def _modules() -> Dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The package modules ``name`` imports anywhere in its source (functions included), except under
    ``if TYPE_CHECKING``: ``from .x import y`` counts as importing ``x.y`` where that is a module, else ``x``."""
    tree = ast.parse(path.read_text())
    hidden = {id(node) for branch in ast.walk(tree) if isinstance(branch, ast.If)
              and "TYPE_CHECKING" in ast.unparse(branch.test) for node in ast.walk(branch)}
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
    return {m for m in found if m in modules and m != name}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    cycles: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for vertex in sorted(graph):
        if vertex not in index:
            visit(vertex)
    return cycles


def test_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["snn_adv.checkpoints"] and graph["snn_adv.studies"]  # the walk sees imports at all
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(
        " <-> ".join(c) + " (" + ", ".join(f"{m} -> {sorted(graph[m] & set(c))}" for m in c) + ")" for c in cycles)


def test_no_private_name_imported_across_modules():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("snn_adv")):
                offenders += [f"{path.name}: {ast.unparse(node)}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders


def test_one_meaning_per_public_constant_name():
    """A public constant (``KINDS``, ``ATTACKS``) is defined in one module; others import it or use another name."""
    defined = defaultdict(list)
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
            for target in targets:
                if isinstance(target, ast.Name) and target.id.isupper() and not target.id.startswith("_"):
                    defined[target.id].append(name)
    # one meaning in every module that defines it, like __all__: a study module's config section (studies/__init__
    # reads it from each)
    per_module = {"CONFIG"}
    assert {k: v for k, v in defined.items() if len(v) > 1 and k not in per_module} == {}
    assert all(name.startswith("snn_adv.studies.") for name in defined["CONFIG"])


@pytest.mark.parametrize("module", ["snn_adv", "snn_adv.cli"])
def test_import_has_no_process_wide_side_effect(module):
    """Importing the package leaves the umask, numpy, torch's defaults and RNGs and the warning filters as found
    (its dependencies imported first: what they do on import is theirs)."""
    probe = f"""
import os, random, warnings
import numpy as np, torch, scipy.stats, tqdm, torchvision
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import spikingjelly.activation_based.functional, spikingjelly.activation_based.layer
def state():
    mask = os.umask(0o022); os.umask(mask)
    return (mask, hasattr(np, "int"), torch.get_default_dtype(), torch.get_num_threads(), torch.random.get_rng_state().sum().item(),
            np.random.get_state()[1].sum(), random.getstate()[1][:4], len(warnings.filters), torch.is_grad_enabled())
before = state()
import {module}
after = state()
assert before == after, (before, after)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
