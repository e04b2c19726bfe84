"""The scripts of ``experiments/`` for the tests that check them (experiments are scripts, not package code)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

#: the project's ``experiments/`` folder
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module (its ``main`` is not run)."""
    spec = importlib.util.spec_from_file_location(name, EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
