"""The profile section of the reports: what the torch.profiler trace says, per rank.

One section for the three formats, from `RunTables.profile` (a `ProfileSummary`):
the per-step time breakdown (data loading, CPU exec, GPU kernels, memcpy/memset,
communication, CUDA runtime, other), GPU utilisation where a GPU ran, the top operators
and kernels, torch-tb-profiler's recommendations, and how to open the trace. Without
torch-tb-profiler installed, the section is one line saying how to get it.
"""
from __future__ import annotations

from typing import Any

from diagnose.profiling.summary import PART_LABELS, PARTS, ProfileSummary
from diagnose.report import Report
from diagnose.report._html_parts import esc, number

TOP_SHOWN = 5
"""Operators and kernels shown in the terminal (the JSON and HTML show all kept)."""

PART_COLORS = {"data_loading": "#d62728", "cpu_exec": "#1f77b4", "kernel": "#2ca02c", "memcpy": "#9467bd",
               "memset": "#c5b0d5", "communication": "#ff7f0e", "runtime": "#8c564b", "other": "#b0b0b0"}


def profiles(report: Report) -> dict[int, ProfileSummary]:
    """The ranks that were profiled (a trace was found), by rank."""
    return {rank: tables.profile for rank, tables in report.run.ranks.items() if tables.profile is not None}


def open_hint(run_path: str) -> list[str]:
    """How to look at the trace yourself."""
    return [f"TensorBoard: tensorboard --logdir {run_path}  (with torch-tb-profiler; the PYTORCH_PROFILER tab)",
            "Perfetto: open the .pt.trace.json.gz file at https://ui.perfetto.dev (or chrome://tracing)"]


def short_kernel_name(name: str, limit: int = 90) -> str:
    """A kernel's C++ name without its template arguments and parameter list
    (`void at::native::reduce_kernel<128, 4, ...>(...)` -> `at::native::reduce_kernel<…>`),
    cut at `limit` characters; reports keep the full name where there is room (JSON, a
    tooltip in HTML)."""
    short = name[5:] if name.startswith("void ") else name
    if "<" in short:
        short = short[:short.index("<")] + "<…>"
    elif "(" in short:
        short = short[:short.index("(")] + "(…)"
    return short if len(short) <= limit else short[:limit - 1] + "…"


def _ms(value: float) -> str:
    return f"{value:.3g} ms" if value < 100 else f"{value:,.0f} ms"


def breakdown_line(profile: ProfileSummary) -> str:
    """`step 12.3 ms: GPU kernels 71% · data loading 20% · other 9%` (parts over 0.5%)."""
    parts = sorted(((profile.mean_share(p), p) for p in PARTS), reverse=True)
    shown = " · ".join(f"{PART_LABELS[p]} {share:.0%}" for share, p in parts if share >= 0.005)
    return f"mean step {_ms(profile.mean_ms.get('total', 0.0))}: {shown}"


def _header(rank: int, profile: ProfileSummary, many: bool) -> str:
    where = f"rank {rank}, " if many else ""
    span = profile.step_range()
    steps = f"steps {span[0]}-{span[1]}" if span else "no steps"
    return f"Profile ({where}{steps}; {profile.parser or 'torch-tb-profiler'})"


def text_lines(report: Report) -> list[str]:
    """The section as plain text lines (empty when no rank was profiled)."""
    found = profiles(report)
    if not found:
        return []
    lines: list[str] = []
    for rank, profile in found.items():
        if not profile.ok:
            lines.append(f"Profile (rank {rank}): {profile.message or 'no profiled step in the trace'}")
            continue
        lines.append(_header(rank, profile, len(found) > 1))
        lines.append(f"  {breakdown_line(profile)}")
        for gpu in profile.gpus:
            extra = f", SM efficiency {gpu.sm_efficiency:.0%}" if gpu.sm_efficiency is not None else ""
            lines.append(f"  GPU {gpu.device}{f' ({gpu.name})' if gpu.name else ''}: utilization "
                         f"{gpu.utilization:.0%}{extra}")
        if profile.top_operators:
            device = profile.top_operators[0].device_self_ms is not None
            ops = ", ".join(f"{op.name} {_ms(op.device_self_ms if device else op.host_self_ms)} x{op.calls}"
                            for op in profile.top_operators[:TOP_SHOWN])
            lines.append(f"  top operators ({'GPU' if device else 'host'} self time, {len(profile.steps)} steps): {ops}")
        if profile.top_kernels:
            kernels = ", ".join(f"{short_kernel_name(k.name, 60)} {_ms(k.total_ms)} x{k.calls}"
                                for k in profile.top_kernels[:TOP_SHOWN])
            lines.append(f"  top kernels ({len(profile.steps)} steps): {kernels}")
        for recommendation in profile.recommendations:
            lines.append(f"  torch-tb-profiler: {recommendation}")
    lines += [f"  {hint}" for hint in open_hint(report.summary.path)]
    return lines


def json_data(report: Report) -> dict[str, Any] | None:
    """The JSON report's `profile`: per rank (as strings) the summary, or None."""
    found = profiles(report)
    if not found:
        return None
    return {str(rank): profile.to_dict() for rank, profile in found.items()}


# ---- HTML ----------------------------------------------------------------------------------------
def breakdown_image(profile: ProfileSummary) -> str:
    """A horizontal stacked bar per profiled step (and the mean), as an SVG data URI."""
    from diagnose.report.figures import new_figure, style, to_data_uri

    rows = [("mean", {p: profile.mean_ms.get(p, 0.0) for p in PARTS})]
    rows += [(f"step {s.step}", s.parts_ms) for s in profile.steps]
    used = [p for p in PARTS if any(r[1].get(p, 0.0) > 0 for r in rows)]
    with style():
        fig, axes = new_figure(0.6 + 0.28 * len(rows))
        ax = axes[0]
        labels = [r[0] for r in rows][::-1]
        left = [0.0] * len(rows)
        for part in used:
            values = [r[1].get(part, 0.0) for r in rows][::-1]
            ax.barh(labels, values, left=left, color=PART_COLORS[part], label=PART_LABELS[part], height=0.7)
            left = [a + b for a, b in zip(left, values)]
        ax.set_xlabel("ms")
        ax.grid(axis="y", visible=False)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(used), frameon=False)
        return to_data_uri(fig)


def _cell(value: Any) -> str:
    if isinstance(value, tuple):  # (shown, full): the full text as a tooltip
        return f'<td title="{esc(value[1])}">{esc(value[0])}</td>'
    return f"<td>{esc(value if isinstance(value, str) else number(value))}</td>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table class="compare"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _one(rank: int, profile: ProfileSummary, many: bool, run_path: str) -> str:
    if not profile.ok:
        return f'<div class="card"><p class="missing">{esc(profile.message or "No profiled step in the trace.")}</p></div>'
    parts = [f"<h3>{esc(_header(rank, profile, many))}</h3>", f"<p>{esc(breakdown_line(profile))}</p>"]
    try:
        parts.append(f'<img src="{esc(breakdown_image(profile))}" alt="{esc("Time per profiled step, by part")}">')
    except Exception as exc:  # noqa: BLE001 - the numbers above still stand
        parts.append(f'<p class="missing">{esc(f"figure failed: {type(exc).__name__}: {exc}")}</p>')
    if profile.gpus:
        parts.append(_table(["GPU", "name", "utilization", "est. SM efficiency", "est. occupancy"],
                            [[str(g.device), g.name or "?", f"{g.utilization:.1%}",
                              "?" if g.sm_efficiency is None else f"{g.sm_efficiency:.1%}",
                              "?" if g.occupancy is None else f"{g.occupancy:.1%}"] for g in profile.gpus]))
    if profile.top_operators:
        device = profile.top_operators[0].device_self_ms is not None
        header = ["operator", "calls", "host self ms", "host total ms"] + (
            ["GPU self ms", "GPU total ms"] if device else [])
        rows = [[op.name, op.calls, op.host_self_ms, op.host_total_ms]
                + ([op.device_self_ms, op.device_total_ms] if device else []) for op in profile.top_operators]
        parts.append("<h4>Top operators</h4>" + _table(header, rows))
    if profile.top_kernels:
        parts.append("<h4>Top kernels</h4>" + _table(
            ["kernel", "calls", "total ms", "mean µs", "tensor cores"],
            [[(short_kernel_name(k.name), k.name), k.calls, k.total_ms, k.mean_us, {True: "yes", False: "no"}.get(k.tensor_cores, "?")] for k in profile.top_kernels]))
    if profile.recommendations:
        items = "".join(f"<li>{esc(r)}</li>" for r in profile.recommendations)
        parts.append(f"<h4>torch-tb-profiler recommends</h4><ul>{items}</ul>")
    hints = "".join(f"<li>{esc(h)}</li>" for h in open_hint(run_path))
    files = ", ".join(profile.trace_files)
    parts.append(f"<h4>Open the trace</h4><ul>{hints}</ul><p>Trace: <code>{esc(files)}</code></p>")
    if profile.adapted:
        parts.append(f"<details><summary>Adapted for torch-tb-profiler ({len(profile.adapted)})</summary>"
                     f"<ul class=\"notes\">{''.join(f'<li>{esc(a)}</li>' for a in profile.adapted)}</ul></details>")
    return f'<div class="card profile">{"".join(parts)}</div>'


def html_section(reports: list[Report], labels: list[str]) -> str:
    """The `<section id="profile">`, or "" when no run was profiled."""
    blocks = []
    for label, report in zip(labels, reports):
        found = profiles(report)
        for rank, profile in found.items():
            block = _one(rank, profile, len(found) > 1, report.summary.path)
            blocks.append(f"<h3>{esc(label)}</h3>{block}" if label else block)
    if not blocks:
        return ""
    caption = ("Where the time of each profiled step went (torch-tb-profiler's breakdown of the torch.profiler "
               "trace: each instant counted once, GPU work first), GPU utilization, and the operators and kernels "
               "that took longest. docs/profiling.md says how it was captured.")
    return f'<section id="profile"><h2>Profile</h2><p>{esc(caption)}</p>{"".join(blocks)}</section>'
