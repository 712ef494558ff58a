"""The HTML report's per-rank view of a distributed run: the ranks side by side.

Only for one run directory with several ranks. A table with one row per rank (host,
status and how it ended, steps, median step time and data wait, last loss, loss scale,
GradScaler-skipped steps), the rank that stopped first marked, and one figure with a
panel per signal (step time, loss, loss scale), one line per rank, a dashed line where a
rank stopped and a tick at each skipped step. What a rank did alone (a longer step, a
skipped step, an early end) shows against the others.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator

from diagnose.report._html_parts import esc
from diagnose.report.figures import (RUN_COLORS, binned, column, draw, legend, log2_formatter, new_figure,
                                     steps_axis, style, to_data_uri)
from diagnose.rundir.ranks import RankEnd, first_stop, rank_ends
from diagnose.rundir.tables import Run, RunTables

TITLE = "Ranks side by side"


def _median_ms(tables: RunTables, name: str) -> str:
    values = column(tables, name)
    if values is None:
        return "—"
    finite = values.to_numpy(dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    return f"{np.median(finite) * 1000:,.1f} ms" if len(finite) else "—"


def _last(tables: RunTables, name: str, fmt: str) -> str:
    values = column(tables, name)
    if values is None or values.dropna().empty:
        return "—"
    return format(float(values.dropna().iloc[-1]), fmt)


def _scale(tables: RunTables) -> str:
    scale = column(tables, "scale")
    if scale is None or scale.dropna().empty:
        return "—"
    values = scale.dropna()
    return f"{values.iloc[-1]:g} (min {values.min():g})"


def _skipped(tables: RunTables) -> str:
    steps = tables.steps
    if "scale" not in steps.columns:
        return "—"
    skipped = steps.index[steps["skipped"].to_numpy(dtype=bool)].tolist()
    if not skipped:
        return "0"
    shown = ", ".join(str(s) for s in skipped[:6]) + (", …" if len(skipped) > 6 else "")
    return f"{len(skipped)}: step {shown}"


def _ended(end: RankEnd, start: float | None) -> str:
    """`finished`, `killed: no end record, last record at step 7 (0.31 s)`, ..."""
    at = f" ({end.end_at - start:,.2f} s)" if end.end_at is not None and start is not None else ""
    where = f"at step {end.last_step}" if end.last_step is not None else "before its first step"
    if end.status == "finished":
        return "finished" + at
    if end.status == "running":
        return f"still running, or stopped without a word; last record {where}{at}"
    if end.killed:  # its writer's last ~1 s of records went with it
        return f"killed: no end record, process gone; last record written {where}{at}"
    error = f": {end.error.splitlines()[0][:70]}…" if end.error and len(end.error) > 70 else (
        f": {end.error}" if end.error else "")
    return f"{end.status} {where}{at}{error}"


def _start(run: Run) -> float | None:
    """The earliest rank's start (epoch seconds): "when" is counted from there."""
    starts = [t.meta.get("started_at") for t in run.ranks.values()
              if isinstance(t.meta.get("started_at"), (int, float))]
    return min(starts) if starts else None


def _table(run: Run, ends: list[RankEnd], first: RankEnd | None) -> str:
    start = _start(run)
    head = ("<tr><th>Rank</th><th>Host</th><th>Status</th><th>Ended</th><th>Steps</th><th>Step time</th>"
            "<th>Data wait</th><th>Last loss</th><th>Loss scale</th><th>Skipped steps</th></tr>")
    rows = []
    for end in ends:
        tables = run.ranks[end.rank]
        status = end.status + (" (stopped first)" if first is not None and end.rank == first.rank else "")
        word = end.status if end.status in ("finished", "crashed", "interrupted", "running") else "running"
        rows.append(
            f"<tr><th>{end.rank}</th>"
            f"<td>{esc(tables.meta.get('host') or '?')}</td>"
            f'<td><span class="status {word}">{esc(status)}</span></td>'
            f"<td>{esc(_ended(end, start))}</td><td>{end.steps:,}</td>"
            f"<td>{esc(_median_ms(tables, 'step_time_s'))}</td><td>{esc(_median_ms(tables, 'data_wait_s'))}</td>"
            f"<td>{esc(_last(tables, 'loss', '.4g'))}</td><td>{esc(_scale(tables))}</td>"
            f"<td>{esc(_skipped(tables))}</td></tr>")
    return f'<table class="compare ranks"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def _figure(run: Run, ends: list[RankEnd]) -> str | None:
    """One panel per recorded signal, one line per rank; None when nothing was recorded."""
    panels = [(name, label) for name, label in (("step_time_s", "step time (s)"), ("loss", "loss"),
                                                ("scale", "loss scale (log2)"))
              if any(column(t, name) is not None for t in run.ranks.values())]
    if not panels:
        return None
    stopped = {e.rank: e.last_step for e in ends if e.stopped and e.last_step is not None}
    with style():
        fig, axes = new_figure(1.3 + 1.9 * len(panels), rows=len(panels))
        for ax, (name, label) in zip(axes, panels):
            for rank, tables in sorted(run.ranks.items()):
                values = column(tables, name)
                color = RUN_COLORS[rank % len(RUN_COLORS)]
                if values is None:
                    continue
                data = binned(values.index.to_numpy(), values.to_numpy(dtype=np.float64))
                if name == "scale":
                    ax.plot(data.x, data.y, color=color, lw=1.5, drawstyle="steps-post", label=f"rank {rank}")
                    skipped = tables.steps.index[tables.steps["skipped"].to_numpy(dtype=bool)]
                    if len(skipped):
                        ax.plot(skipped, values.reindex(skipped), "v", color=color, ms=7,
                                label=f"rank {rank}: skipped step ({len(skipped)})")
                else:
                    draw(ax, data, color, f"rank {rank}", smooth=name == "step_time_s")
                if rank in stopped:
                    ax.axvline(stopped[rank], color=color, ls="--", lw=1.2,
                               label=f"rank {rank} stopped (step {stopped[rank]})" if ax is axes[0] else None)
            if name == "scale":
                ax.set_yscale("log", base=2)
                ax.yaxis.set_major_locator(LogLocator(base=2, numticks=8))
                ax.yaxis.set_major_formatter(FuncFormatter(log2_formatter))
            elif name == "step_time_s":
                ax.set_ylim(bottom=0)
            ax.set_ylabel(label)
            legend(ax)
        steps_axis(axes[-1])
        return to_data_uri(fig)


def html_section(reports: Sequence, labels: Sequence[str]) -> str:
    """The `<section id="ranks">` of a single multi-rank report; "" otherwise."""
    if len(reports) != 1 or reports[0].run.world_size < 2:
        return ""
    run = reports[0].run
    ends = rank_ends(run)
    first = first_stop(run)
    lead = ""
    if first is not None:
        lead = f"<p><strong>Rank {first.rank} stopped first</strong>: {esc(_ended(first, _start(run)))}.</p>"
    try:
        image = _figure(run, ends)
    except Exception as exc:  # noqa: BLE001 - a figure must not cost the report
        image, why = None, f"This figure could not be drawn ({type(exc).__name__}: {exc})."
    else:
        why = "No step time, loss or loss scale was recorded."
    figure = (f'<img src="{esc(image)}" alt="Step time, loss and loss scale per step, one line per rank">'
              if image else f'<p class="missing">{esc(why)}</p>')
    return (f'<section id="ranks"><h2>{TITLE}</h2><div class="card">{lead}{_table(run, ends, first)}</div>'
            f'<figure class="plot" id="fig-ranks">{figure}<figcaption>One line per rank. Dashed: where a rank '
            "stopped (its last recorded step). Triangles: steps the rank's GradScaler skipped. Under DDP the "
            "step times even out at the all-reduce; a rank's own delay shows in its data wait (table)."
            "</figcaption></figure></section>")


def has_section(reports: Sequence) -> bool:
    """Whether `html_section` draws anything (for the table of contents)."""
    return len(reports) == 1 and reports[0].run.world_size >= 2
