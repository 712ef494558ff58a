"""Per-layer gradient-norm heatmap: parameters (rows, in model order) x steps (columns).

Colour is log10 of the gradient L2 norm. A long run is max-pooled over step bins to at
most `MAX_COLUMNS` columns: the largest norm in each bin is kept, so a spike survives the
summary, and a bin is "non-finite" if any of its steps was. Four kinds of cell:
- a colour: the (largest) finite norm;
- red: a NaN/Inf gradient in the bin;
- white: exactly zero in every step of the bin (a dead layer);
- grey: no gradient at all (`.grad` was None, or the step was not recorded).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter

from diagnose.report.figures import Mark, Plot, Series, bin_edges, missing, new_figure, shade, style, to_data_uri

MAX_COLUMNS = 1000
"""Step bins at most; a longer run is max-pooled."""
MAX_LABELS = 60
"""Parameter names written on the y axis at most (every k-th one past that)."""

_NONFINITE = np.array([0.89, 0.10, 0.11, 1.0])  # red: not in viridis
_ZERO = np.array([1.0, 1.0, 1.0, 1.0])
_NO_GRAD = np.array([0.66, 0.66, 0.66, 1.0])
_KEY = ((_NONFINITE, "NaN/Inf"), (_ZERO, "exactly 0"), (_NO_GRAD, "no gradient"))


def pooled(norms: np.ndarray, nonfinite: np.ndarray, max_columns: int = MAX_COLUMNS
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Max-pool (steps x params) over step bins. Returns the bin starts (row positions),
    the pooled norms (bins x params; NaN where no finite norm) and the non-finite flags."""
    starts = bin_edges(norms.shape[0], max_columns)
    if len(starts) == norms.shape[0]:
        return starts, norms, nonfinite
    finite = np.where(np.isfinite(norms), norms, np.nan)
    with np.errstate(invalid="ignore"):
        values = np.fmax.reduceat(finite, starts, axis=0)
    flags = np.logical_or.reduceat(nonfinite, starts, axis=0)
    return starts, values, flags


def colour_cells(values: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, Normalize]:
    """RGBA cells (params x bins) and the log10 norm that maps colours to values."""
    positive = values[np.isfinite(values) & (values > 0)]
    if len(positive):
        lo, hi = np.percentile(np.log10(positive), [1, 100])
        if hi - lo < 1e-6:
            lo, hi = lo - 0.5, hi + 0.5
    else:
        lo, hi = -1.0, 0.0
    norm = Normalize(lo, hi, clip=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log10(values)
    rgba = colormaps["viridis"](norm(np.where(np.isfinite(logs), logs, lo)))
    rgba[values == 0] = _ZERO
    rgba[np.isnan(values)] = _NO_GRAD
    rgba[flags] = _NONFINITE
    return rgba.transpose(1, 0, 2), norm


def heatmap_plot(s: Series, marks: Sequence[Mark] = (), key: str = "grad-heatmap",
                 title: str = "Gradient norm per parameter") -> Plot:
    """The heatmap of one run (rank 0 in a distributed run)."""
    tables = s.tables
    if tables.grad_norms.empty or tables.grad_norms.shape[1] == 0:
        return missing(key, title, "No per-parameter gradient norms were recorded (grad_norms.arrow is missing "
                                   "or empty).")
    norms = tables.grad_norms.to_numpy(dtype=np.float32, copy=False)
    if tables.grad_nonfinite.shape == tables.grad_norms.shape:
        nonfinite = tables.grad_nonfinite.to_numpy(dtype=bool, copy=False)
    else:
        nonfinite = ~np.isfinite(norms) & ~np.isnan(norms)
    steps = tables.grad_norms.index.to_numpy()
    starts, values, flags = pooled(norms, nonfinite)
    rgba, norm = colour_cells(values, flags)

    params = [int(c) for c in tables.grad_norms.columns]
    names = tables.params["name"].reindex(params).astype(object).where(lambda n: n.notna(), None)
    labels = [str(n) if n is not None else f"p{i}" for i, n in zip(params, names)]
    n_params = len(params)
    ends = np.append(steps[starts[1:]], steps[-1] + 1)
    edges = np.append(steps[starts], ends[-1])  # step edges of the columns
    pooled_note = (f" (max over bins of ~{len(steps) / len(starts):.0f} recorded steps)"
                   if len(starts) < len(steps) else "")
    with style():
        height = min(max(2.6, 0.9 + 0.16 * min(n_params, MAX_LABELS)), 11.0)
        fig, (ax,) = new_figure(height, sharex=False)
        ax.imshow(rgba, aspect="auto", interpolation="nearest", origin="upper",
                  extent=(edges[0] - 0.5, edges[-1] - 0.5, n_params - 0.5, -0.5))
        ax.grid(False)
        every = max(1, int(np.ceil(n_params / MAX_LABELS)))
        ticks = list(range(0, n_params, every))
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: labels[int(v)] if 0 <= int(v) < n_params else ""))
        ax.tick_params(axis="y", labelsize=8 if n_params <= 30 else 7)
        ax.set_xlabel(f"optimizer step{pooled_note}")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.set_ylabel("parameter (model order)" + (f", every {every}th named" if every > 1 else ""))
        shade(ax, marks, fill=False)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap="viridis"), ax=ax, pad=0.01, fraction=0.03,
                           aspect=max(12.0, 9.0 * height))  # as tall as the heatmap, ~0.12 in wide
        bar.set_label("log10 gradient L2 norm")
        ax.legend([Patch(facecolor=c, edgecolor="#666666", lw=0.6) for c, _ in _KEY], [t for _, t in _KEY],
                  loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False,
                  borderaxespad=0.1, handlelength=1.2)
        return Plot(key, title, to_data_uri(fig),
                    alt=f"Heatmap of log gradient norms of {n_params} parameters over {len(steps)} recorded steps")
