"""The per-step curves of the HTML report: loss, learning rate, gradient norm, loss scale,
memory and throughput. One function per figure: `(series, marks) -> Plot`.

`series` holds one entry per run (a comparison overlays them, one colour each) or, for
the throughput of a distributed run, one per rank. A figure whose columns were not
recorded in any of them comes back as a `Plot` with `missing` set to one line saying why.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, PercentFormatter

from diagnose.report.figures import (
    Mark, Plot, Series, binned, byte_unit, column, draw, legend, log2_formatter, missing, new_figure,
    nonfinite_marks, plain_log_axis, shade, step_marks, steps_axis, style, to_data_uri,
)

_LINESTYLES = ("-", "--", ":", "-.")
_GROUP_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _prefix(series: Sequence[Series], s: Series) -> str:
    """Legend prefix naming the run, only when several are drawn."""
    return f"{s.label}: " if len(series) > 1 else ""


def _wide_range(values: np.ndarray, ratio: float) -> bool:
    """True when all finite values are positive and span more than `ratio` (log axis)."""
    finite = values[np.isfinite(values)]
    return len(finite) > 1 and finite.min() > 0 and finite.max() / finite.min() > ratio


# ---- loss ----------------------------------------------------------------------------------
def _val_losses(s: Series) -> pd.DataFrame:
    """Loss-like metrics recorded outside training (`val_loss`, ...): step, name, value."""
    metrics = s.tables.metrics
    if metrics.empty:
        return metrics
    name = metrics["name"].astype(str)
    chosen = metrics[name.str.contains("loss", case=False) & (metrics["phase"].astype(str) != "train")
                     & metrics["step"].notna()]
    return chosen


def loss_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "loss", "Loss"
    train = {s.label: column(s.tables, "loss") for s in series}
    val = {s.label: _val_losses(s) for s in series}
    if all(v is None for v in train.values()) and all(v.empty for v in val.values()):
        return missing(key, title, "No loss was recorded: no backward() call was seen and no loss metric was logged.")
    with style():
        fig, (ax,) = new_figure(3.6)
        everything = []
        for s in series:
            loss = train[s.label]
            if loss is not None:
                mb = column(s.tables, "micro_batches")
                if mb is not None:
                    loss = loss[mb.fillna(0).to_numpy() > 0]
                x, y = loss.index.to_numpy(), loss.to_numpy()
                draw(ax, binned(x, y), s.color, f"{_prefix(series, s)}train loss", smooth=True)
                nonfinite_marks(ax, x, y, f"{_prefix(series, s)}non-finite loss")
                everything.append(y)
            for i, (metric, rows) in enumerate(val[s.label].groupby("name", sort=True)):
                rows = rows.sort_values("step")
                ax.plot(rows["step"].astype("int64"), rows["value"], color=s.color, ls=_LINESTYLES[1 + i % 3],
                        marker="o", ms=4, lw=1.3, label=f"{_prefix(series, s)}{metric}")
                everything.append(rows["value"].to_numpy(dtype=np.float64))
        values = np.concatenate(everything) if everything else np.array([])
        if _wide_range(values, 100.0):
            ax.set_yscale("log")
            plain_log_axis(ax)
        ax.set_ylabel("loss")
        steps_axis(ax)
        shade(ax, marks)
        legend(ax)
        return Plot(key, title, to_data_uri(fig), alt="Training loss per optimizer step and validation loss")


# ---- learning rate ---------------------------------------------------------------------------
def _group_names(s: Series, count: int) -> list[str]:
    """`opt0 (AdamW) group 1` for each `lr_k` column, from the objects record."""
    names = []
    for optimizer in s.tables.objects.get("optimizers") or []:
        if not isinstance(optimizer, dict):
            continue
        groups = optimizer.get("groups") or []
        for g in range(len(groups)):
            names.append(f"opt{optimizer.get('index', '?')} ({optimizer.get('class', '?')}) group {g}")
    if len(names) != count:
        names = [f"group {k}" for k in range(count)]
    return names


def lr_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "lr", "Learning rate per parameter group"
    columns = {s.label: sorted((c for c in s.tables.steps.columns if c.startswith("lr_")),
                               key=lambda c: int(c[3:]) if c[3:].isdigit() else 0) for s in series}
    if not any(columns.values()):
        return missing(key, title, "No learning rate was recorded (no optimizer was attached to the recorder).")
    with style():
        fig, (ax,) = new_figure(3.2)
        everything = []
        for s in series:
            names = _group_names(s, len(columns[s.label]))
            for k, (col, name) in enumerate(zip(columns[s.label], names)):
                lr = column(s.tables, col)
                if lr is None:
                    continue
                color = s.color if len(series) > 1 else _GROUP_COLORS[k % len(_GROUP_COLORS)]
                ls = _LINESTYLES[k % len(_LINESTYLES)]  # equal schedules stay visible
                data = binned(lr.index.to_numpy(), lr.to_numpy())
                ax.plot(data.x, data.y, color=color, ls=ls, lw=1.5, drawstyle="steps-post",
                        label=f"{_prefix(series, s)}{name}")
                everything.append(lr.to_numpy())
        if _wide_range(np.concatenate(everything) if everything else np.array([]), 1e3):
            ax.set_yscale("log")
        ax.set_ylabel("learning rate")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        steps_axis(ax)
        shade(ax, marks)
        legend(ax)
        return Plot(key, title, to_data_uri(fig), alt="Learning rate of each parameter group per step")


# ---- gradient norm ---------------------------------------------------------------------------
def grad_norm_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "grad-norm", "Total gradient norm"
    # clip_norm is what clip_grad_norm_ saw (before clipping); grad_norm is measured at the
    # optimizer step, after any clipping, so it is the fallback for runs that do not clip.
    norms = {}
    for s in series:
        pre_clip = column(s.tables, "clip_norm")
        norms[s.label] = ((pre_clip, "total grad norm before clipping") if pre_clip is not None
                          else (column(s.tables, "grad_norm"), "total grad norm"))
    if all(v is None for v, _ in norms.values()):
        return missing(key, title, "No gradient norm was recorded (per-parameter gradient norms were switched off).")
    with style():
        fig, (ax,) = new_figure(3.4)
        for s in series:
            norm, what = norms[s.label]
            if norm is None:
                continue
            x, y = norm.index.to_numpy(), norm.to_numpy()
            positive = np.where(y > 0, y, np.nan)
            draw(ax, binned(x, positive), s.color, f"{_prefix(series, s)}{what}")
            nonfinite_marks(ax, x, y, f"{_prefix(series, s)}non-finite norm")
            clip = column(s.tables, "clip_max")
            if clip is not None:
                data = binned(clip.index.to_numpy(), clip.to_numpy())
                ax.plot(data.x, data.y, color=s.color if len(series) > 1 else "black", ls="--", lw=1.1,
                        drawstyle="steps-post", label=f"{_prefix(series, s)}clip threshold (max_norm)")
            skipped = s.tables.steps.index[s.tables.steps["skipped"].to_numpy(dtype=bool)]
            step_marks(ax, skipped.to_numpy(), "#ff7f0e", f"{_prefix(series, s)}skipped by GradScaler "
                       f"({len(skipped)} steps)")
        ax.set_yscale("log")
        plain_log_axis(ax)
        ax.set_ylabel("L2 norm (log)")
        steps_axis(ax)
        shade(ax, marks)
        legend(ax)
        return Plot(key, title, to_data_uri(fig),
                    alt="Total gradient norm per step on a log scale, with the clipping threshold and skipped steps")


# ---- loss scale ----------------------------------------------------------------------------
def loss_scale_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "loss-scale", "GradScaler loss scale"
    scales = {s.label: column(s.tables, "scale") for s in series}
    if all(v is None for v in scales.values()):
        return missing(key, title, "No GradScaler was recorded (no fp16 mixed precision), so there is no loss scale.")
    with style():
        fig, (ax,) = new_figure(3.0)
        for s in series:
            scale = scales[s.label]
            if scale is None:
                continue
            data = binned(scale.index.to_numpy(), scale.to_numpy())
            ax.plot(data.x, data.y, color=s.color, lw=1.5, drawstyle="steps-post",
                    label=f"{_prefix(series, s)}scale at scaler.step()")
            skipped = s.tables.steps.index[s.tables.steps["skipped"].to_numpy(dtype=bool)]
            step_marks(ax, skipped.to_numpy(), "#d62728" if len(series) == 1 else s.color,
                       f"{_prefix(series, s)}skipped step ({len(skipped)})")
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(LogLocator(base=2, numticks=12))
        ax.yaxis.set_major_formatter(FuncFormatter(log2_formatter))
        ax.set_ylabel("loss scale (log2)")
        steps_axis(ax)
        shade(ax, marks)
        legend(ax)
        return Plot(key, title, to_data_uri(fig), alt="GradScaler scale per step with skipped steps marked")


# ---- memory --------------------------------------------------------------------------------
_MEMORY = (("mem_alloc_bytes", "CUDA allocated"), ("mem_reserved_bytes", "CUDA reserved"),
           ("mem_peak_bytes", "CUDA peak"), ("rss_bytes", "process RSS"))
_MEMORY_COLORS = ("#1f77b4", "#9467bd", "#d62728", "#2ca02c")


def memory_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "memory", "Memory"
    found = {s.label: [(c, name, column(s.tables, c)) for c, name in _MEMORY] for s in series}
    if all(v is None for entries in found.values() for _, _, v in entries):
        return missing(key, title, "No memory was recorded (neither CUDA allocator statistics nor process RSS).")
    finite = [v.to_numpy()[np.isfinite(v.to_numpy())] for entries in found.values() for _, _, v in entries
              if v is not None]
    peak = max((float(f.max()) for f in finite if len(f)), default=1.0)
    divisor, unit = byte_unit(peak)
    cuda = any(v is not None for entries in found.values() for c, _, v in entries if c != "rss_bytes")
    with style():
        fig, (ax,) = new_figure(3.2)
        for s in series:
            for k, (_, name, values) in enumerate(found[s.label]):
                if values is None:
                    continue
                color = s.color if len(series) > 1 else _MEMORY_COLORS[k]
                ls = _LINESTYLES[k] if len(series) > 1 else "-"
                note = " (no CUDA memory recorded: a CPU run)" if name == "process RSS" and not cuda else ""
                draw(ax, binned(values.index.to_numpy(), values.to_numpy() / divisor), color,
                     f"{_prefix(series, s)}{name}{note}", ls=ls)
        ax.set_ylabel(unit)
        lo, hi = ax.get_ylim()
        if hi - lo < 0.05 * hi:  # a flat line must look flat, not like a leak
            middle = (hi + lo) / 2
            ax.set_ylim(max(0.0, middle - 0.05 * hi), middle + 0.05 * hi)
        steps_axis(ax)
        shade(ax, marks)
        legend(ax)
        return Plot(key, title, to_data_uri(fig), alt=f"Memory per step in {unit}")


# ---- throughput ----------------------------------------------------------------------------
def throughput_plot(series: Sequence[Series], marks: Sequence[Mark] = ()) -> Plot:
    key, title = "throughput", "Throughput and data-loader wait"
    rate_name = next((c for c in ("samples_per_s", "tokens_per_s") if any(column(s.tables, c) is not None
                                                                          for s in series)), None)
    times = {s.label: column(s.tables, "step_time_s") for s in series}
    if rate_name is None and all(v is None for v in times.values()):
        return missing(key, title, "No step times were recorded.")
    waits = {s.label: column(s.tables, "data_wait_s") for s in series}
    has_wait = any(waits[s.label] is not None and times[s.label] is not None for s in series)
    with style():
        fig, axes = new_figure(4.4 if has_wait else 3.0, rows=2 if has_wait else 1,
                               gridspec_kw={"height_ratios": [3, 2]} if has_wait else None)
        top = axes[0]
        for s in series:
            if rate_name is not None:
                rate, label = column(s.tables, rate_name), rate_name.replace("_per_s", "/s")
            else:
                time_s = times[s.label]
                rate, label = (None if time_s is None else 1.0 / time_s.where(time_s > 0)), "steps/s"
            if rate is None:
                continue
            draw(top, binned(rate.index.to_numpy(), rate.to_numpy()), s.color,
                 s.label if len(series) > 1 else label, smooth=True)
        top.set_ylabel(rate_name.replace("_per_s", " / s") if rate_name else "steps / s")
        top.set_ylim(bottom=0)
        shade(top, marks)
        legend(top)
        if has_wait:
            bottom = axes[1]
            for s in series:
                wait, time_s = waits[s.label], times[s.label]
                if wait is None or time_s is None:
                    continue
                share = (wait / time_s.where(time_s > 0)).clip(0, 1)
                draw(bottom, binned(share.index.to_numpy(), share.to_numpy()), s.color,
                     s.label if len(series) > 1 else "share of step time waiting for data", smooth=True)
            bottom.set_ylim(0, 1)
            bottom.yaxis.set_major_formatter(PercentFormatter(1.0))
            bottom.set_ylabel("data wait")
            shade(bottom, [m.__class__(m.first, m.last, "", m.severity) for m in marks])
            legend(bottom)
        steps_axis(axes[-1])
        return Plot(key, title, to_data_uri(fig), alt="Samples per second and the share of each step spent waiting for data")
