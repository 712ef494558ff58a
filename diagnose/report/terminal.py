"""The terminal report: a header, the findings by severity with one line of evidence
each, then each finding's explanation and fix, then the notes.

Colour and a table (rich) on a terminal; plain text when the output is a pipe or a file,
so logs and CI output stay greppable.
"""
from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from diagnose.report import Report, profile_section
from diagnose.report.summary import RunSummary, format_duration
from diagnose.rules._base import Finding, RuleSpec, Severity

_STYLE = {Severity.ERROR: "bold red", Severity.WARNING: "yellow", Severity.INFO: "cyan"}
_EVIDENCE_WIDTH = 110


def render(report: Report, stream: TextIO) -> None:
    """Write `report` to `stream`: rich when it is a terminal, plain text otherwise."""
    console = Console(file=stream, highlight=False)
    if console.is_terminal:
        _render_rich(report, console)
    else:
        stream.write(plain_text(report))


# ---- shared pieces ------------------------------------------------------------------------------
def header_line(summary: RunSummary) -> str:
    """`status crashed (RuntimeError: ...) · 1,200 steps · 1m 05s · cpu · 1 rank`; with
    several ranks, the rank that stopped first: `status crashed (rank 1) · ...`."""
    status = summary.status or "unknown"
    detail = [f"rank {summary.status_rank}"] if summary.status_rank is not None else []
    if summary.error:
        detail.append(summary.error.splitlines()[0][:80])
    if detail:
        status += f" ({': '.join(detail)})"
    ranks = f"{summary.world_size} rank" + ("s" if summary.world_size != 1 else "")
    return " · ".join([f"status {status}", f"{summary.steps:,} steps", format_duration(summary.duration_s),
                       summary.device or "device ?", ranks])


def _short(value: Any, depth: int = 0) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        items = [_short(v, depth + 1) for v in value[:3]]
        return "[" + ", ".join(items) + (", …" if len(value) > 3 else "") + "]"
    if isinstance(value, dict):
        items = [f"{k}: {_short(v, depth + 1)}" for k, v in list(value.items())[:4]]
        return "{" + ", ".join(items) + (", …" if len(value) > 4 else "") + "}"
    return str(value)


def evidence_line(evidence: dict[str, Any], width: int = _EVIDENCE_WIDTH) -> str:
    """The evidence on one line, `key=value, ...`, cut at `width` characters."""
    line = ", ".join(f"{k}={_short(v)}" for k, v in evidence.items())
    return line if len(line) <= width else line[: width - 1] + "…"


def steps_text(finding: Finding) -> str:
    """`1200`, `1200–1999` or `` for a finding not tied to steps."""
    if finding.steps is None:
        return ""
    first, last = finding.steps
    return str(first) if first == last else f"{first}–{last}"


def counts_line(findings: list[Finding]) -> str:
    """`1 error, 2 warnings, 0 info` or `No problems found.`"""
    if not findings:
        return "No problems found."
    counts = Counter(f.severity for f in findings)
    parts = [f"{counts[s]} {s.label}{'s' if s != Severity.INFO and counts[s] != 1 else ''}"
             for s in sorted(Severity, reverse=True)]
    return ", ".join(parts) + ". `diagnose explain RULE` tells more about a rule."


def _where(finding: Finding, world_size: int) -> str:
    parts = [finding.rule, finding.severity.label]
    if finding.rank is not None and world_size > 1:
        parts.append(f"rank {finding.rank}")
    if finding.steps is not None:
        parts.append(f"step {steps_text(finding)}")
    return ", ".join(parts)


# ---- plain text ---------------------------------------------------------------------------------
def plain_text(report: Report) -> str:
    """The whole report as plain text (no colour, no box drawing)."""
    lines = [f"diagnose report: {report.summary.path}", f"  {header_line(report.summary)}", ""]
    width = max((len(f.rule) for f in report.findings), default=0)
    for finding in report.findings:
        lines.append(f"{finding.severity.label.upper():<8} {finding.rule:<{width}}  {finding.title}")
        if finding.evidence:
            lines.append(f"{'':<8} {'':<{width}}  {evidence_line(finding.evidence)}")
    if report.findings:
        lines.append("")
    for number, finding in enumerate(report.findings, start=1):
        lines.append(f"[{number}] {finding.title}  ({_where(finding, report.summary.world_size)})")
        if finding.explanation:
            lines += textwrap.wrap(finding.explanation, width=100, initial_indent="    ", subsequent_indent="    ")
        if finding.fix:
            lines.append("    Fix:")
            lines += [f"      {line}" if line else "" for line in finding.fix.splitlines()]
        lines.append("")
    profile = profile_section.text_lines(report)
    if profile:
        lines += [*profile, ""]
    notes = visible_notes(report.notes)
    if notes:
        lines.append("Notes:")
        lines += [f"  - {note}" for note in notes]
        lines.append("")
    lines.append(counts_line(report.findings))
    return "\n".join(lines) + "\n"


def visible_notes(notes: list[str]) -> list[str]:
    """The notes worth a line at 3 AM: "rule X skipped: no Y recorded" (a rule with nothing
    to check, e.g. loss-scale-collapse without a GradScaler) collapses into one line; the
    JSON report keeps every note."""
    skipped = [n.split()[1] for n in notes if n.startswith("rule ") and " skipped" in n]
    shown = [n for n in notes if not (n.startswith("rule ") and " skipped" in n)]
    if skipped:
        shown.append(f"{len(skipped)} rule{'s' if len(skipped) > 1 else ''} had nothing to check "
                     f"({', '.join(sorted(skipped))}); `--format json` says why")
    return shown


# ---- rich ---------------------------------------------------------------------------------------
def _render_rich(report: Report, console: Console) -> None:
    console.print(Text.assemble(("diagnose report: ", "bold"), (report.summary.path, "bold")))
    console.print(Text(f"  {header_line(report.summary)}", style="dim"))
    console.print()
    if report.findings:
        table = Table(show_edge=False, pad_edge=False, expand=False, header_style="bold")
        table.add_column("severity", no_wrap=True)
        table.add_column("rule", no_wrap=True)
        table.add_column("finding")
        table.add_column("steps", justify="right", no_wrap=True)
        for finding in report.findings:
            cell = Text(finding.title)
            if finding.evidence:
                cell.append("\n" + evidence_line(finding.evidence), style="dim")
            table.add_row(Text(finding.severity.label, style=_STYLE[finding.severity]), finding.rule, cell,
                          steps_text(finding))
        console.print(table)
        console.print()
    for number, finding in enumerate(report.findings, start=1):
        console.print(Text.assemble((f"[{number}] ", "bold"), (finding.title, _STYLE[finding.severity]),
                                    (f"  ({_where(finding, report.summary.world_size)})", "dim")))
        if finding.explanation:
            console.print(Text(finding.explanation), style="default")
        if finding.fix:
            console.print(Text("Fix:", style="bold"))
            console.print(Text(textwrap.indent(finding.fix, "  ")))
        console.print()
    profile = profile_section.text_lines(report)
    if profile:
        console.print(Text(profile[0], style="bold"))
        for line in profile[1:]:
            console.print(Text(line))
        console.print()
    notes = visible_notes(report.notes)
    if notes:
        console.print(Text("Notes:", style="bold dim"))
        for note in notes:
            console.print(Text(f"  - {note}", style="dim"))
        console.print()
    console.print(Text(counts_line(report.findings), style="bold"))


def render_rule_list(rules: list[RuleSpec], stream: TextIO) -> None:
    """`diagnose rules`: name, category, severity and summary of each rule."""
    console = Console(file=stream, highlight=False)
    if not console.is_terminal:
        width = max((len(r.name) for r in rules), default=0)
        for rule in rules:
            stream.write(f"{rule.name:<{width}}  {rule.category:<11}  {rule.severity.label:<7}  {rule.summary}\n")
        return
    table = Table(show_edge=False, pad_edge=False, header_style="bold")
    for column in ("rule", "category", "severity", "summary"):
        table.add_column(column, no_wrap=column != "summary")
    for rule in rules:
        table.add_row(rule.name, rule.category, Text(rule.severity.label, style=_STYLE[rule.severity]), rule.summary)
    console.print(table)
