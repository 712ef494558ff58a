"""The HTML report: one self-contained file that opens offline.

    diagnose report RUN_DIR --html report.html
    diagnose report RUN_A RUN_B --html compare.html      # a comparison

From Python (what `diagnose run` calls at the end of a run):

    from diagnose.report.html import write_html_report
    write_html_report([run], [findings], run.path / "report.html", notes_per_run=[notes])

The page holds everything: its style sheet inline, each figure an SVG `data:` image, no
script at all. A Content-Security-Policy meta tag allows nothing else (`default-src
'none'; img-src data:; style-src` the sheet's hash), so the file cannot fetch, run or
leak anything, even if a run's strings were hostile; and every such string is escaped
(`_html_parts.esc`).

Layout: the run's facts (command, versions, device, status, duration, steps, samples/s),
for a run of several ranks the ranks side by side (ranks_section.py), then the findings,
most severe first, each linking to the figure that shows it, where
its steps are shaded; then the figures (`FIGURES`), then what the reader and the rules
skipped. With several runs: a side-by-side table of facts with the step-time ratio,
findings in one column per run, and curves overlaid (one colour per run).
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from diagnose.report import Report, build_report, profile_section, ranks_section
from diagnose.report._html_parts import Numbered, command_text, esc, finding_card, flatten, kv_table, value_text
from diagnose.report._style import CSS
from diagnose.report.figures import RUN_COLORS, Mark, Plot, Series
from diagnose.report.summary import format_duration
from diagnose.rules._base import Finding, Severity
from diagnose.rundir.schema import REPORT_FILE
from diagnose.rundir.tables import Run, RunTables

__all__ = ["FIGURES", "figure_for", "render", "render_html", "render_many", "write_html_report", "write_reports"]


@dataclass(frozen=True)
class FigureSpec:
    key: str
    title: str
    caption: str


FIGURES = (
    FigureSpec("loss", "Loss", "Training loss per optimizer step (long runs: mean per bin inside the min-max band) "
               "and validation loss where it was logged. Red ticks at the top: non-finite losses."),
    FigureSpec("lr", "Learning rate per parameter group",
               "The learning rate each parameter group trained with, step by step: warm-up, decay, restarts, "
               "and steps at zero."),
    FigureSpec("grad-norm", "Total gradient norm",
               "L2 norm of all gradients before clipping (log scale), the clipping threshold, and the steps "
               "GradScaler skipped (ticks at the bottom)."),
    FigureSpec("grad-heatmap", "Gradient norm per parameter",
               "Each row a parameter tensor in model order, each column a step (or the largest value in a bin of "
               "steps); colour is the log gradient norm. Dead, vanishing and exploding layers show as bands."),
    FigureSpec("loss-scale", "GradScaler loss scale",
               "The mixed-precision loss scale: it halves at each skipped (overflowing) step and grows back after "
               "a quiet stretch. A staircase down means repeated overflows."),
    FigureSpec("memory", "Memory", "CUDA allocated, reserved and peak memory per step and the process's resident "
               "memory (RSS). A steady climb after warm-up is a leak."),
    FigureSpec("throughput", "Throughput and data-loader wait",
               "Samples (or tokens) per second and the share of each step spent waiting for the next batch."),
    FigureSpec("calls", "Call order: one training step and one evaluation",
               "The calls of one representative training step and of one evaluation, in order, one lane per "
               "object. Calls a loop finding blames are outlined in its severity's colour (red: error, orange: "
               "warning) and labelled with its number."),
)
"""The figures, in page order: key (anchor `fig-KEY`), title, caption."""
_TITLES = {f.key: f.title for f in FIGURES}

_FIGURE_OF_RULE = {
    "nonfinite-loss": "loss", "loss-divergence": "loss", "loss-plateau": "loss", "overfitting": "loss",
    "nonfinite-inputs": "loss", "softmax-before-cross-entropy": "loss", "loss-shape-broadcast": "loss",
    "rnn-batch-first-mismatch": "loss",
    "nonfinite-gradients": "grad-norm", "gradient-explosion": "grad-norm", "gradient-spike": "grad-norm",
    "clip-before-unscale": "calls",
    "vanishing-gradients": "grad-heatmap", "dead-units": "grad-heatmap", "nonfinite-parameters": "grad-heatmap",
    "params-not-updated": "grad-heatmap",
    "loss-scale-collapse": "loss-scale", "rank-desync": "loss-scale",
    "memory-leak": "memory",
    "dataloader-bottleneck": "throughput", "throughput-drop": "throughput", "rank-straggler": "throughput",
    "zero-lr-steps": "lr", "scheduler-step-frequency": "lr", "scheduler-never-stepped": "lr",
    "missing-zero-grad": "calls", "zero-grad-before-step": "calls", "scheduler-before-optimizer": "calls",
    "eval-without-eval-mode": "calls", "eval-with-grad": "calls", "train-mode-not-restored": "calls",
}
_FIGURE_OF_CATEGORY = {"numerics": "loss", "loop": "calls", "resources": "throughput", "distributed": "throughput"}


def figure_for(finding: Finding) -> str | None:
    """Key of the figure that shows `finding` (None when no figure does)."""
    if finding.rule in _FIGURE_OF_RULE:
        return _FIGURE_OF_RULE[finding.rule]
    try:
        from diagnose.rules import catalogue

        category = next((r.category for r in catalogue().rules if r.name == finding.rule), None)
    except Exception:  # noqa: BLE001 - a link is a nicety; the finding is still shown
        category = None
    return _FIGURE_OF_CATEGORY.get(category or "")


# ---- public API --------------------------------------------------------------------------------
def write_html_report(
    runs: Sequence[Run],
    findings_per_run: Sequence[Sequence[Finding]],
    path: str | os.PathLike[str],
    notes_per_run: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Write the HTML report of one run (or a comparison of several) to `path`.

    Args:
        runs: the runs, as `read_run` returns them; two or more make a comparison.
        findings_per_run: the findings of each run (as `run_rules` returns them).
        path: the file to write (its folder must exist); replaced if present.
        notes_per_run: what the rules skipped or failed on, per run (the reader's own
            notes are taken from each `Run`).

    Returns:
        The path written.
    """
    if len(runs) != len(findings_per_run):
        raise ValueError(f"{len(runs)} runs but {len(findings_per_run)} lists of findings")
    notes_per_run = notes_per_run if notes_per_run is not None else [[] for _ in runs]
    reports = [build_report(run, list(findings), list(notes))
               for run, findings, notes in zip(runs, findings_per_run, notes_per_run)]
    return write_reports(reports, Path(path))


def write_reports(reports: Sequence[Report], path: str | os.PathLike[str] | None = None) -> Path:
    """Write the page of `reports` (built by `diagnose.report.analyse`) to `path`;
    None means `report.html` in the (single) run's directory. Returns the path written."""
    if path is None:
        if len(reports) != 1:
            raise ValueError("a comparison of several runs needs an explicit path")
        path = reports[0].run.path / REPORT_FILE
    target = Path(path)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_text(render_html(reports), encoding="utf-8")
    temporary.replace(target)  # never leave a half-written report behind
    return target


def render(report: Report, stream: TextIO) -> None:
    """The `--format html` entry point (see `diagnose.report.Format`): one run."""
    stream.write(render_html([report]))


def render_many(reports: list[Report], stream: TextIO) -> None:
    """Several run directories: one comparison page."""
    stream.write(render_html(reports))


def render_html(reports: Sequence[Report]) -> str:
    """The whole page for one report, or a comparison of several."""
    if not reports:
        raise ValueError("no report to render")
    labels = [_label(i) for i in range(len(reports))] if len(reports) > 1 else [""]
    numbered = [_number_findings(r.findings, label) for r, label in zip(reports, labels)]
    plots = _plots(reports, labels, numbered)
    body = [
        _top(reports, labels),
        "<main>",
        _toc(reports, plots),
        _summary(reports, labels),
        ranks_section.html_section(list(reports), list(labels)),
        _findings(reports, labels, numbered),
        _figures(plots, numbered),
        profile_section.html_section(list(reports), list(labels)),
        _notes(reports, labels),
        "</main>",
        _footer(reports),
    ]
    return _page(_title(reports), "".join(body))


# ---- page frame ---------------------------------------------------------------------------------
def csp() -> str:
    """The Content-Security-Policy of the page: nothing but the inline sheet and data: images."""
    digest = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; img-src data:; style-src 'sha256-{digest}'; "
            "base-uri 'none'; form-action 'none'")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp())}">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="diagnose">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _label(i: int) -> str:
    return string.ascii_uppercase[i] if i < 26 else f"R{i + 1}"


def _title(reports: Sequence[Report]) -> str:
    names = [Path(r.summary.path).name or r.summary.path for r in reports]
    return ("diagnose: " + " vs ".join(names)) if len(reports) > 1 else f"diagnose report: {names[0]}"


def _verdict(findings: Sequence[Finding]) -> str:
    counts = {s: sum(1 for f in findings if f.severity == s) for s in Severity}
    parts = [f"{counts[s]} {s.label}{'s' if counts[s] != 1 else ''}" for s in reversed(Severity) if counts[s]]
    return ", ".join(parts) if parts else "no problems found"


def _top(reports: Sequence[Report], labels: Sequence[str]) -> str:
    if len(reports) == 1:
        where = esc(reports[0].summary.path)
        verdict = esc(_verdict(reports[0].findings))
        heading = "diagnose report"
    else:
        where = " · ".join(f"{esc(label)}: {esc(r.summary.path)}" for label, r in zip(labels, reports))
        verdict = " · ".join(f"{esc(label)}: {esc(_verdict(r.findings))}" for label, r in zip(labels, reports))
        heading = f"diagnose: comparison of {len(reports)} runs"
    return (f'<header class="top"><div class="inner"><h1>{esc(heading)}</h1>'
            f'<span class="where">{where}</span><span class="verdict">{verdict}</span></div></header>')


def _toc(reports: Sequence[Report], plots: list[tuple[FigureSpec, list[Plot]]]) -> str:
    total = sum(len(r.findings) for r in reports)
    links = ['<a href="#summary">Run</a>']
    if ranks_section.has_section(reports):
        links.append('<a href="#ranks">Ranks</a>')
    links.append(f'<a href="#findings">Findings ({total})</a>')
    links += [f'<a href="#fig-{esc(spec.key)}">{esc(spec.title)}</a>' for spec, _ in plots]
    if any(profile_section.profiles(r) for r in reports):
        links.append('<a href="#profile">Profile</a>')
    links.append('<a href="#notes">Notes</a>')
    return f'<nav class="toc">{"".join(links)}</nav>'


def _footer(reports: Sequence[Report]) -> str:
    from diagnose import __version__

    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"<footer>Written by diagnose {esc(__version__)} on {esc(now)}. Self-contained: no network, no scripts.</footer>"


# ---- run facts ---------------------------------------------------------------------------------
def _median(tables: RunTables, name: str) -> float | None:
    if name not in tables.steps.columns:
        return None
    values = tables.steps[name].to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _facts(report: Report) -> dict[str, str]:
    """The run's facts as plain text (escaped by the caller), in display order."""
    s, tables = report.summary, report.run.first
    meta = tables.meta
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}
    facts = {"Run directory": s.path, "Status": s.status_text}
    if s.error:
        facts["Error"] = value_text(s.error)
    if meta.get("source") == "tensorboard":  # read from event files: no command, versions, device
        logdir = (meta.get("tensorboard") or {}).get("logdir") if isinstance(meta.get("tensorboard"), dict) else None
        facts["Source"] = f"TensorBoard event files in {logdir or s.path} (not recorded by diagnose)"
    else:
        facts["Command"] = command_text(s.command)
        facts["Device"] = str(s.device or "?") + (f" × {s.world_size} ranks" if s.world_size > 1 else "")
        facts["Versions"] = ", ".join(f"{name} {versions.get(key) or 'none'}" for key, name in
                                      (("python", "Python"), ("torch", "torch"), ("cuda", "CUDA")))
    if s.started_at is not None:
        facts["Started"] = dt.datetime.fromtimestamp(s.started_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    facts["Duration"] = format_duration(s.duration_s)
    facts["Steps"] = f"{s.steps:,}" + (f" (last step {s.last_step:,})" if s.last_step not in (None, s.steps - 1)
                                       else "")
    for column, unit in (("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s")):
        value = _median(tables, column)
        if value is not None:
            facts[unit.capitalize()] = f"{value:,.1f} (median)"
    step_time = _median(tables, "step_time_s")
    if step_time is not None:
        facts["Step time"] = f"{step_time * 1000:,.1f} ms (median)"
    if s.run_id or meta.get("host"):
        facts["Run id, host"] = f"{s.run_id or '?'} on {meta.get('host') or '?'}"
    return facts


def _status_html(status: str) -> str:
    word = status.split(" ", 1)[0]  # "crashed (rank 1)"
    known = word if word in ("finished", "crashed", "interrupted", "running") else "running"
    return f'<span class="status {known}">{esc(status)}</span>'


def _config_block(report: Report) -> str:
    config = report.run.first.meta.get("config")
    flat = flatten(config) if config not in (None, {}, []) else {}
    if not flat:
        return '<p class="mono">Config: none recorded.</p>'
    opened = " open" if len(flat) <= 16 else ""
    return f"<details{opened}><summary>Config ({len(flat)} values)</summary>{kv_table(flat)}</details>"


def _summary(reports: Sequence[Report], labels: Sequence[str]) -> str:
    if len(reports) == 1:
        report = reports[0]
        facts = _facts(report)
        rows = "".join(
            f"<tr><th>{esc(k)}</th><td>{_status_html(v) if k == 'Status' else esc(v)}</td></tr>"
            for k, v in facts.items())
        return (f'<section id="summary"><h2>Run</h2><div class="card"><table class="facts">{rows}</table>'
                f"{_config_block(report)}</div></section>")
    all_facts = [_facts(r) for r in reports]
    keys = list(dict.fromkeys(k for facts in all_facts for k in facts))
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    rows = []
    for key in keys:
        cells = "".join(
            f"<td>{_status_html(f[key]) if key == 'Status' and key in f else esc(f.get(key, '—'))}</td>"
            for f in all_facts)
        rows.append(f"<tr><th>{esc(key)}</th>{cells}</tr>")
    rows.append(f"<tr><th>Step time vs {esc(labels[0])}</th>{_ratios(reports)}</tr>")
    configs = "".join(f'<div><h3>{esc(label)}</h3>{_config_block(r)}</div>' for label, r in zip(labels, reports))
    return (f'<section id="summary"><h2>Runs</h2><div class="card"><table class="compare"><thead><tr><th></th>'
            f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{_config_diff(reports, labels)}</div>"
            f'<div class="columns">{configs}</div></section>')


def _config_diff(reports: Sequence[Report], labels: Sequence[str], limit: int = 40) -> str:
    """The config values that differ between the runs, side by side."""
    flats = []
    for report in reports:
        config = report.run.first.meta.get("config")
        flats.append(flatten(config) if config not in (None, {}, []) else {})
    missing = object()
    keys = [k for k in dict.fromkeys(k for flat in flats for k in flat)
            if len({json.dumps(f.get(k, missing), sort_keys=True, default=str) for f in flats}) > 1]
    if not keys:
        return "<p>The runs' configs are the same.</p>" if any(flats) else ""
    shown = keys[:limit]
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    rows = "".join(
        f"<tr><th>{esc(k)}</th>" + "".join(f"<td>{esc(value_text(f[k])) if k in f else '—'}</td>" for f in flats)
        + "</tr>" for k in shown)
    more = f"<p>… and {len(keys) - limit} more.</p>" if len(keys) > limit else ""
    return (f"<h3>Config that differs ({len(keys)} value{'s' if len(keys) != 1 else ''})</h3>"
            f'<table class="compare"><thead><tr><th></th>{head}</tr></thead><tbody>{rows}</tbody></table>{more}')


def _ratios(reports: Sequence[Report]) -> str:
    times = [_median(r.run.first, "step_time_s") for r in reports]
    base = times[0]
    cells = []
    for t in times:
        if t is None or not base:
            cells.append("<td>—</td>")
        else:
            ratio = t / base
            if ratio > 1.005:
                word = f"{ratio:.3g}× slower"
            elif ratio < 0.995:
                word = f"{1 / ratio:.3g}× faster"
            else:
                word = "the same"
            cells.append(f"<td>{ratio:.3g}× ({esc(word)})</td>")
    return "".join(cells)


# ---- findings ------------------------------------------------------------------------------------
def _number_findings(findings: Sequence[Finding], run_label: str) -> list[Numbered]:
    ordered = sorted(findings, key=lambda f: (-int(f.severity), f.steps[0] if f.steps else -1, f.rule))
    numbered = []
    for i, finding in enumerate(ordered, start=1):
        label = f"{run_label}#{i}"
        anchor = f"finding-{run_label.lower()}{i}" if run_label else f"finding-{i}"
        figure = figure_for(finding)
        numbered.append(Numbered(label, anchor, finding, figure))
    return numbered


def _findings(reports: Sequence[Report], labels: Sequence[str], numbered: list[list[Numbered]]) -> str:
    def block(items: list[Numbered], report: Report) -> str:
        if not items:
            return '<p class="card none">No findings: nothing looked wrong in what was recorded.</p>'
        return "".join(finding_card(item, _TITLES, show_rank=report.run.world_size > 1) for item in items)

    if len(reports) == 1:
        return f'<section id="findings"><h2>Findings</h2>{block(numbered[0], reports[0])}</section>'
    columns = "".join(f"<div><h3>{esc(label)}: {esc(Path(r.summary.path).name)}</h3>{block(items, r)}</div>"
                      for label, r, items in zip(labels, reports, numbered))
    return f'<section id="findings"><h2>Findings, side by side</h2><div class="columns">{columns}</div></section>'


# ---- figures --------------------------------------------------------------------------------------
def _safe(build: Callable[[], Plot], key: str, title: str) -> Plot:
    """A figure that fails to draw costs that figure only, never the report."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001
        return Plot(key, title, missing=f"This figure could not be drawn ({type(exc).__name__}: {exc}).")


def _plots(reports: Sequence[Report], labels: Sequence[str], numbered: list[list[Numbered]]
           ) -> list[tuple[FigureSpec, list[Plot]]]:
    from diagnose.report import curves, heatmap, timeline

    many = len(reports) > 1
    names = [f"{label}: {Path(r.summary.path).name}" for label, r in zip(labels, reports)]
    series = [Series(label or "run", r.run.first, RUN_COLORS[i % len(RUN_COLORS)])
              for i, (label, r) in enumerate(zip(labels, reports))]

    def marks(key: str, only: int | None = None) -> list[Mark]:
        return [Mark(n.finding.steps[0], n.finding.steps[1], n.label, n.finding.severity)
                for i, items in enumerate(numbered) if only is None or i == only
                for n in items if n.figure == key and n.finding.steps is not None]

    builders = {
        "loss": curves.loss_plot, "lr": curves.lr_plot, "grad-norm": curves.grad_norm_plot,
        "loss-scale": curves.loss_scale_plot, "memory": curves.memory_plot,
    }
    out: list[tuple[FigureSpec, list[Plot]]] = []
    for spec in FIGURES:
        key, title = spec.key, spec.title
        if key in builders:
            plots = [_safe(lambda b=builders[key]: b(series, marks(key)), key, title)]
        elif key == "throughput":
            ranks = reports[0].run.ranks
            per_rank = series if many or len(ranks) == 1 else [
                Series(f"rank {rank}", tables, RUN_COLORS[i % len(RUN_COLORS)])
                for i, (rank, tables) in enumerate(sorted(ranks.items()))]
            plots = [_safe(lambda: curves.throughput_plot(per_rank, marks(key)), key, title)]
        elif key == "grad-heatmap":
            plots = [_safe(lambda i=i, s=s: heatmap.heatmap_plot(
                s, marks(key, i), key=f"{key}-{s.label.lower()}" if many else key,
                title=names[i]), key, title) for i, s in enumerate(series)]
        else:  # calls
            plots = [_safe(lambda i=i, s=s: timeline.timeline_plot(
                s, [timeline.Blame(n.label, n.finding) for n in numbered[i] if n.figure == "calls"],
                key=f"{key}-{s.label.lower()}" if many else key, title=names[i]), key, title)
                for i, s in enumerate(series)]
        out.append((spec, plots))
    for items in numbered:  # now that anchors are known, let findings point at them
        for j, n in enumerate(items):
            if n.figure is not None:
                items[j] = Numbered(n.label, n.anchor, n.finding, n.figure, f"fig-{n.figure}")
    return out


def _figures(plots: list[tuple[FigureSpec, list[Plot]]], numbered: list[list[Numbered]]) -> str:
    parts = ['<section id="figures"><h2>Figures</h2>']
    for spec, figure_plots in plots:
        shown = [n for items in numbered for n in items if n.figure == spec.key]
        links = ""
        if shown:
            links = '<div class="shown">Findings shown here: ' + ", ".join(
                f'<a href="#{esc(n.anchor)}">{esc(n.label)} {esc(n.finding.rule)}</a>' for n in shown) + "</div>"
        inner = []
        for plot in figure_plots:
            heading = f"<h3>{esc(plot.title)}</h3>" if len(figure_plots) > 1 else ""
            if plot.image is not None:
                inner.append(f'{heading}<img src="{esc(plot.image)}" alt="{esc(plot.alt or plot.title)}">')
            else:
                inner.append(f'{heading}<p class="missing">{esc(plot.missing or "Not recorded.")}</p>')
        parts.append(f'<figure class="plot" id="fig-{esc(spec.key)}"><h3>{esc(spec.title)}</h3>{"".join(inner)}'
                     f"<figcaption>{esc(spec.caption)}</figcaption>{links}</figure>")
    parts.append("</section>")
    return "".join(parts)


# ---- notes ------------------------------------------------------------------------------------
def _notes(reports: Sequence[Report], labels: Sequence[str]) -> str:
    blocks = []
    for label, report in zip(labels, reports):
        prefix = f"{label}: " if label else ""
        if report.notes:
            items = "".join(f"<li>{esc(note)}</li>" for note in report.notes)
            blocks.append(f"<details><summary>{esc(prefix)}{len(report.notes)} note(s) from the reader and the rules"
                          f'</summary><ul class="notes">{items}</ul></details>')
        else:
            blocks.append(f"<p>{esc(prefix)}The reader and the rules skipped nothing.</p>")
    return f'<section id="notes"><h2>Notes</h2><div class="card">{"".join(blocks)}</div></section>'
