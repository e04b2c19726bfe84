"""Result plots that read without the code: labelled axes, a legend, a title saying what was measured (attack and
eps included), integer ticks where x counts layers, and error bars that are intervals ``[low, high]``.

matplotlib is imported on the first plot, not with the package, and only its object API is used (a
``Figure`` drawn by the Agg canvas): no display is needed and pyplot's global backend and figure list, which a
notebook user relies on, are left alone.
"""
from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .io import PathLike, atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Point", "plot_lines", "plot_bars", "series_from_rows", "format_eps"]

#: ``(x, value, low, high)``: a value with its interval (``low == high == value`` draws no error bar);
#: ``(x, value, half_width)`` for ``value +- half_width``; ``(x, value)`` has no interval.
Point = Union[Tuple[float, float, float, float], Tuple[float, float, float], Tuple[float, float]]
#: ``(value, low, high)``, ``(value, half_width)`` or ``(value,)``, as for :data:`Point`.
Bar = Union[Tuple[float, float, float], Tuple[float, float], Tuple[float]]


def _figure(width: float, height: float = 4.2) -> Tuple["Figure", "Axes"]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: "Figure", path: PathLike) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=130, bbox_inches="tight")
    return path


def format_eps(eps: float) -> str:
    """``8/255`` for multiples of 1/255 (how image-space eps are written), else ``0.03``."""
    fraction = Fraction(eps).limit_denominator(255)
    if fraction.denominator in (1, 255) and math.isclose(float(fraction), eps, rel_tol=1e-6):
        return "0" if fraction == 0 else f"{fraction.numerator * 255 // fraction.denominator}/255"
    return f"{eps:g}"


def _title(ax: "Axes", title: str, attack: Optional[str], eps: Optional[float], note: Optional[str]) -> None:
    """The title with the attack and eps, and the measurement conditions (data, intervals) as a smaller line."""
    condition = ", ".join(part for part in (attack, f"eps {format_eps(eps)}" if eps is not None else None) if part)
    ax.set_title(title + (f" ({condition})" if condition else "") + (f"\n{note}" if note else ""), fontsize=9)


def _labels(ax: "Axes", xlabel: str, ylabel: str) -> None:
    for name, label in (("xlabel", xlabel), ("ylabel", ylabel)):
        if not label or not label.strip():
            raise ValueError(f"argument '{name}' = {label!r}: every axis needs a label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _interval(value: float, rest: Sequence[float], where: str) -> Tuple[float, float]:
    """``(value - low, high - value)``, the distances matplotlib's error bars take."""
    if not rest:
        return 0.0, 0.0
    if len(rest) > 2:
        raise ValueError(f"{where}: expected (value, low, high), got {len(rest) + 1} numbers")
    low, high = rest if len(rest) == 2 else (value - rest[0], value + rest[0])
    if not low <= value <= high:
        raise ValueError(f"{where}: interval [{low}, {high}] does not contain the value {value}")
    return value - low, high - value


def plot_lines(
    series: Mapping[str, Sequence[Point]],
    path: PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    xticks: Optional[Sequence[float]] = None,
    xticklabels: Optional[Sequence[str]] = None,
    xscale: str = "linear",
    ylim: Optional[Tuple[float, float]] = None,
    note: Optional[str] = None,
    attack: Optional[str] = None,
    eps: Optional[float] = None,
) -> Path:
    """One line per series, error bars from each point's interval; saved as PNG at ``path``.

    Where every x is an integer (layer indices, T) and no ``xticks`` are given, the ticks are those integers.
    ``attack`` and ``eps`` (image scale, e.g. ``8/255``) go into the title.
    """
    fig, ax = _figure(6.4)
    all_x = set()
    for label, points in series.items():
        points = sorted(points)
        x = [p[0] for p in points]
        value = [p[1] for p in points]
        errors = [_interval(p[1], p[2:], f"series {label!r}, x = {p[0]}") for p in points]
        yerr = [[e[0] for e in errors], [e[1] for e in errors]] if any(any(e) for e in errors) else None
        ax.errorbar(x, value, yerr=yerr, marker="o", ms=4, capsize=3, label=label)
        all_x.update(x)
    ax.set_xscale(xscale)
    if xticks is None and all_x and len(all_x) <= 25 and all(float(v).is_integer() for v in all_x):
        xticks = sorted(all_x)
    if xticks is not None:
        from matplotlib.ticker import NullFormatter

        ax.set_xticks(list(xticks))
        ax.set_xticklabels(list(xticklabels) if xticklabels is not None else [f"{t:g}" for t in xticks])
        ax.xaxis.set_minor_formatter(NullFormatter())  # no "6x10^0" between the given ticks
    if ylim is not None:
        ax.set_ylim(*ylim)
    _labels(ax, xlabel, ylabel)
    _title(ax, title, attack, eps, note)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(
    groups: Sequence[str],
    bars: Mapping[str, Sequence[Bar]],
    path: PathLike,
    *,
    ylabel: str,
    title: str,
    xlabel: str = "attack and threat model",
    ylim: Optional[Tuple[float, float]] = (0.0, 100.0),
    note: Optional[str] = None,
    attack: Optional[str] = None,
    eps: Optional[float] = None,
) -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per key of ``bars`` (values ``(value, low, high)``,
    drawn with the interval as error bar)."""
    fig, ax = _figure(max(6.4, 1.1 * len(groups) * max(1, len(bars)) / 2))
    width = 0.8 / max(1, len(bars))
    for i, (label, values) in enumerate(bars.items()):
        value = [v[0] for v in values]
        errors = [_interval(v[0], v[1:], f"bar {label!r} of group {g!r}") for g, v in zip(groups, values)]
        yerr = [[e[0] for e in errors], [e[1] for e in errors]] if any(any(e) for e in errors) else None
        ax.bar([g + (i - (len(bars) - 1) / 2) * width for g in range(len(groups))], value, width, yerr=yerr,
               capsize=2, label=label)
    ax.set_xticks(list(range(len(groups))))
    ax.set_xticklabels(list(groups), rotation=20, ha="right", fontsize=8)
    if ylim is not None:
        ax.set_ylim(*ylim)
    _labels(ax, xlabel, ylabel)
    _title(ax, title, attack, eps, note)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def series_from_rows(
    rows: Sequence[Mapping], *, series: str, x: str, y: str, low: Optional[str] = None, high: Optional[str] = None,
    std: Optional[str] = None,
) -> Dict[str, List[Point]]:
    """Group table rows into plot series: ``{row[series]: [(row[x], row[y], row[low], row[high]), ...]}``, or
    ``(row[x], row[y], row[std])`` (``y +- std``), or ``(row[x], row[y])`` without interval columns."""
    if (low is None) != (high is None) or (low is not None and std is not None):
        raise ValueError(f"arguments 'low' = {low!r}, 'high' = {high!r}, 'std' = {std!r}: give low and high, or std, "
                         "or none of them")
    out: Dict[str, List[Point]] = {}
    for row in rows:
        point = (float(row[x]), float(row[y]))
        if low is not None:
            point += (float(row[low]), float(row[high]))
        elif std is not None:
            point += (float(row.get(std) or 0.0),)
        out.setdefault(str(row[series]), []).append(point)
    return out
