"""The config presets shipped with the package (``snn_adv/configs/<name>.json``): ``--config cpu`` names one, and
a path to any JSON config works too."""
from __future__ import annotations

from pathlib import Path
from typing import List

from ..io import PathLike

__all__ = ["PRESETS_DIR", "config_path", "presets"]

PRESETS_DIR = Path(__file__).resolve().parent


def presets() -> List[str]:
    """The names of the shipped presets (file names without ``.json``)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


def config_path(config: PathLike) -> Path:
    """The file of ``config``: an existing path as given, else the shipped preset of that name."""
    path = Path(config)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{config}.json"
    if path.suffix != ".json" and preset.is_file():
        return preset
    raise ValueError(f"argument 'config' = {str(config)!r}: no such file, and not a preset name (presets: "
                     f"{', '.join(presets())})")
