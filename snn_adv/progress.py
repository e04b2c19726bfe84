"""Progress reporting that suits where the output goes.

On a terminal (or in a notebook) a stage shows a live tqdm bar; anywhere else (a log file, a pipe, a batch job)
bars are off, so a long run writes only the one-line-per-stage messages of :func:`log`, not thousands of
redrawn bar lines. Both go to stderr: stdout keeps the results.
"""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

__all__ = ["describe", "log", "progress", "show_bars"]

Item = TypeVar("Item")


def show_bars() -> bool:
    """Whether live bars are wanted by default: stderr is a terminal, or this runs in a Jupyter kernel."""
    return "ipykernel" in sys.modules or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())


def progress(
    iterable: Iterable[Item],
    desc: str,
    *,
    total: Optional[int] = None,
    unit: str = "it",
    enabled: Optional[bool] = None,
    leave: bool = False,
) -> "tqdm[Item]":
    """``iterable`` wrapped in a tqdm bar titled ``desc``, drawn on stderr if ``enabled`` (default:
    :func:`show_bars`); a disabled bar iterates silently and accepts ``set_postfix`` like a live one. Inner
    stages keep ``leave=False`` so that a finished bar leaves no line behind."""
    show = show_bars() if enabled is None else enabled
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=not show, file=sys.stderr,
                dynamic_ncols=True)


def log(message: str) -> None:
    """One line on stderr, written above any live bar."""
    tqdm.write(message, file=sys.stderr)


def describe(model) -> str:
    """A classifier's name for logs: kind, architecture and, for a spiking one, T (e.g. ``SNN vgg5 at T=8``);
    a network of the user's own is named by its body's class."""
    arch = (getattr(model, "arch", None) or {}).get("name") or type(getattr(model, "body", model)).__name__
    timesteps = getattr(model, "timesteps", None)
    return f"{getattr(model, 'kind', 'model').upper()} {arch}" + (f" at T={timesteps}" if timesteps else "")
