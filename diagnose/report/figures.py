"""The HTML report's figures: matplotlib, rendered to SVG, embedded as `data:` images.

Each figure function takes the runs to draw (one, or several overlaid for a comparison)
and the step ranges to shade (`Mark`, one per finding that points at the figure), and
returns a `Plot`: the image, or one line saying why its data was not recorded.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot, no global state, no
GUI backend) and written as SVG with text kept as text. Long runs are summarised before
drawing, never drawn point by point: a series of more than `MAX_POINTS` steps becomes a
per-bin mean line inside a min-max band, so a 100k-step run costs what a 2k-step run does
and a single spike still shows. The per-layer heatmap and the call timeline live in
`heatmap.py` and `timeline.py`; they share the helpers here.
"""
from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

from diagnose.rules._base import Severity
from diagnose.rundir.tables import RunTables

MAX_POINTS = 1200
"""Steps above which a series is drawn as binned mean and min-max band (in MAX_POINTS / 2
bins: about 2 px each on the page)."""

WIDTH_IN = 11.0
"""Figure width in inches; the page scales it to its column (about 1100 px)."""

RUN_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
"""One colour per run in a comparison, in the order the runs were given."""

SEVERITY_COLORS = {Severity.ERROR: "#d62728", Severity.WARNING: "#ff7f0e", Severity.INFO: "#1f77b4"}

_RC = {
    "svg.fonttype": "none",  # text stays text: small files, selectable, escaped by matplotlib
    "svg.hashsalt": "diagnose",  # stable ids: the same run renders the same bytes
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 9,
    "legend.framealpha": 0.85,
    "figure.dpi": 100,
    "path.simplify": True,
}


@dataclass(frozen=True)
class Mark:
    """A step range to shade in a figure: the steps of one finding.

    Attributes:
        first, last: steps, both included.
        label: short text drawn at the top of the band (`#2`, or `B#2` in a comparison).
        severity: picks the colour.
    """

    first: int
    last: int
    label: str
    severity: Severity = Severity.WARNING


@dataclass(frozen=True)
class Series:
    """One run's tables as a figure sees them, with its legend label and colour."""

    label: str
    tables: RunTables
    color: str = RUN_COLORS[0]


@dataclass(frozen=True)
class Plot:
    """A rendered figure, or the reason it could not be drawn.

    Attributes:
        key: stable id (`loss`, `grad-norm`, ...): the HTML anchor is `fig-<key>`.
        title: heading shown above it.
        image: `data:image/svg+xml;base64,...`, or None when `missing` says why.
        missing: one line for the reader when the data was not recorded.
        alt: text alternative for the image (what it plots).
    """

    key: str
    title: str
    image: str | None = None
    missing: str | None = None
    alt: str = ""


@contextmanager
def style() -> Iterator[None]:
    """The report's matplotlib settings, without touching the caller's rcParams."""
    with matplotlib.rc_context(_RC):
        yield


def new_figure(height_in: float, rows: int = 1, sharex: bool = True, **kw) -> tuple[Figure, np.ndarray]:
    """A figure of the report's width and its axes (always an array)."""
    fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
    axes = fig.subplots(rows, 1, sharex=sharex, squeeze=False, **kw)[:, 0]
    return fig, axes


def to_data_uri(fig: Figure) -> str:
    """The figure as an SVG `data:` URI (text as text, no date: reproducible bytes)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def missing(key: str, title: str, why: str) -> Plot:
    """A figure that cannot be drawn: one line saying why."""
    return Plot(key=key, title=title, missing=why)


# ---- summarising long series -------------------------------------------------------------
@dataclass(frozen=True)
class Binned:
    """A series ready to draw: raw (`lo`/`hi` None) or binned (mean with min-max band)."""

    x: np.ndarray
    y: np.ndarray
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None


def bin_edges(n: int, bins: int) -> np.ndarray:
    """Start positions of at most `bins` nearly equal, non-empty bins over `n` rows."""
    return np.unique(np.linspace(0, n, min(bins, n) + 1).astype(np.int64)[:-1])


def binned(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> Binned:
    """`y` against `x`, summarised per bin when longer than `max_points`. Non-finite
    values are left out of the summary (draw them with `nonfinite_marks`)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) <= max_points:
        return Binned(x, np.where(np.isfinite(y), y, np.nan))
    starts = bin_edges(len(x), max_points // 2)
    finite = np.isfinite(y)
    clean = np.where(finite, y, 0.0)
    count = np.add.reduceat(finite.astype(np.int64), starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.add.reduceat(clean, starts) / count
    lo = np.fmin.reduceat(np.where(finite, y, np.nan), starts)
    hi = np.fmax.reduceat(np.where(finite, y, np.nan), starts)
    ends = np.append(starts[1:], len(x)) - 1
    return Binned((x[starts] + x[ends]) / 2.0, mean, lo, hi)


SMOOTH_MIN_POINTS = 60
"""Raw series at least this long get a rolling median drawn over them (`draw(smooth=True)`)."""


def draw(ax, data: Binned, color: str, label: str, lw: float = 1.3, smooth: bool = False, **kw) -> None:
    """A line (and its band when binned). `smooth`: a noisy raw series is drawn faint,
    under its rolling median (window ~2% of the run), so the trend reads at a glance.
    How the series was summarised goes into the legend's title (see `legend`)."""
    if data.lo is not None:
        ax.fill_between(data.x, data.lo, data.hi, color=color, alpha=0.18, lw=0, step="mid")
        ax.plot(data.x, data.y, color=color, lw=lw, label=label, **kw)
        _note(ax, "binned", _bin_steps(data.x))
    elif smooth and len(data.y) >= SMOOTH_MIN_POINTS:
        window = max(5, len(data.y) // 50) | 1
        trend = pd.Series(data.y).rolling(window, center=True, min_periods=1).median().to_numpy()
        ax.plot(data.x, data.y, color=color, lw=0.8, alpha=0.35, **kw)
        ax.plot(data.x, trend, color=color, lw=lw + 0.4, label=label, **kw)
        _note(ax, "smooth", window)
    else:
        ax.plot(data.x, data.y, color=color, lw=lw, label=label, **kw)


def _bin_steps(x: np.ndarray) -> int:
    return int(round((x[-1] - x[0]) / max(len(x) - 1, 1))) if len(x) > 1 else 1


def _note(ax, kind: str, steps: int) -> None:
    """Remember how a series of `ax` was summarised (`kind`, over how many steps)."""
    ax.__dict__.setdefault("_diagnose_notes", {}).setdefault(kind, set()).add(steps)


def _notes_text(ax) -> str:
    def span(values: set[int]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:,}" if lo == hi else f"{lo:,}–{hi:,}"

    notes = ax.__dict__.get("_diagnose_notes", {})
    parts = []
    if "binned" in notes:
        parts.append(f"line: mean per bin of ~{span(notes['binned'])} steps; band: min to max")
    if "smooth" in notes:
        parts.append(f"faint: each step; line: rolling median of {span(notes['smooth'])} steps")
    return "; ".join(parts)


def step_marks(ax, steps: np.ndarray, color: str, label: str, bottom: bool = True, bins: int = 1000) -> None:
    """Short ticks along the bottom (or top) edge at `steps`: skipped steps, non-finite
    values. More than `bins` of them are merged per bin so the SVG stays small."""
    steps = np.asarray(steps, dtype=np.float64)
    if len(steps) == 0:
        return
    if len(steps) > bins:  # one tick per occupied bin
        edges = np.linspace(steps.min(), steps.max(), bins + 1)
        occupied = np.unique(np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, bins - 1))
        steps = (edges[occupied] + edges[occupied + 1]) / 2.0
    y0, y1 = (0.0, 0.06) if bottom else (0.94, 1.0)
    ax.vlines(steps, y0, y1, transform=ax.get_xaxis_transform(), color=color, lw=1.2, label=label, zorder=4)


def nonfinite_marks(ax, x: np.ndarray, y: np.ndarray, label: str = "non-finite") -> None:
    """Ticks along the top edge where `y` is NaN or Inf (a line plot would hide them)."""
    x = np.asarray(x)
    bad = ~np.isfinite(np.asarray(y, dtype=np.float64))
    if bad.any():
        step_marks(ax, x[bad], "#d62728", f"{label} ({int(bad.sum())} steps)", bottom=False)


def shade(ax, marks: Sequence[Mark], fill: bool = True) -> None:
    """Mark each finding's step range and label it at the top: a translucent band behind
    the data, or (`fill=False`, over an image) two lines in front of it."""
    for mark in marks:
        color = SEVERITY_COLORS.get(mark.severity, "#7f7f7f")
        first, last = mark.first - 0.5, mark.last + 0.5
        if fill:
            ax.axvspan(first, last, color=color, alpha=0.14, lw=0, zorder=0)
        lw, zorder = (0.8, 1) if fill else (1.6, 5)
        ax.axvline(first, color=color, lw=lw, alpha=0.8, zorder=zorder)
        if mark.last > mark.first:
            ax.axvline(last, color=color, lw=lw, alpha=0.8, zorder=zorder)
        if mark.label:
            ax.text(first, 0.985, mark.label, transform=ax.get_xaxis_transform(), color=color, fontsize=9,
                    fontweight="bold", va="top", ha="left", zorder=6, clip_on=False,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": color, "lw": 0.8})


def legend(ax, ncol: int = 4) -> None:
    """A legend (deduplicated) above the axes, right-aligned, so it never hides data; its
    title says how long series were summarised (`draw`)."""
    handles, labels = ax.get_legend_handles_labels()
    seen: dict[str, object] = {}
    for handle, text in zip(handles, labels):
        if not text.startswith("_"):
            seen.setdefault(text, handle)
    notes = _notes_text(ax)
    if seen:
        ax.legend(list(seen.values()), list(seen.keys()), loc="lower right", bbox_to_anchor=(1.0, 1.0),
                  ncol=min(ncol, len(seen)), frameon=False, borderaxespad=0.2, columnspacing=1.2,
                  handlelength=1.8, title=notes or None, title_fontsize=8, alignment="right")


def plain(value: float) -> str:
    """A tick value for people: 0.25, 2, 1,000, 250,000, 1e-05, 1e+08."""
    if 1e3 <= abs(value) < 1e7 and float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.3g}"


def plain_log_axis(ax) -> None:
    """Tick labels of a log y axis as plain numbers (0.3, 2, 1e-05). Call it after the
    data is drawn: within one decade the ticks are spaced like a linear axis (a log
    locator would leave one or two), within two the 2s and 5s are labelled too."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plain(v) if v > 0 else ""))
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo < 10:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_minor_locator(NullLocator())
        return

    def minor(value: float, _pos) -> str:
        low, high = ax.get_ylim()
        if value <= 0 or low <= 0:
            return ""
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
        return plain(value) if high / low < 100 and mantissa in (2.0, 5.0) else ""

    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def steps_axis(ax) -> None:
    """Label the x axis as optimizer steps with plain integers."""
    ax.set_xlabel("optimizer step")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))


def column(tables: RunTables, name: str) -> pd.Series | None:
    """A steps column as float, or None when it was not recorded. The reader drops a
    column that was null on every line, so a column that is there but all NaN holds
    non-finite values (a loss that was NaN from the first step): it is returned."""
    steps = tables.steps
    if name not in steps.columns or steps.empty:
        return None
    return pd.to_numeric(steps[name], errors="coerce").astype("float64")


def byte_unit(max_bytes: float) -> tuple[float, str]:
    """Divisor and unit name for a byte axis."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if max_bytes >= 1024 ** power:
            return 1024.0 ** power, unit
    return 1.0, "bytes"


def log2_formatter(value: float, _pos) -> str:
    """Loss-scale tick labels: 65,536 for 2^16, 1/8 for 2^-3, a power of two beyond."""
    if value <= 0 or not math.isfinite(value):
        return ""
    k = math.log2(value)
    if abs(k - round(k)) > 1e-6:
        return ""
    k = int(round(k))
    if 0 <= k <= 20:
        return f"{value:,.0f}"
    if -10 <= k < 0:
        return f"1/{2 ** -k:,}"
    return f"$2^{{{k}}}$"
