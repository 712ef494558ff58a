"""Report formats: what `diagnose report --format NAME` can write.

A format is a renderer of `Report`s, imported only when used (so `--format json` never
imports rich, and the HTML format's matplotlib is loaded only for HTML). To add one,
write its module with a `render(report, stream)` function and add a `Format` to FORMATS:

    FORMATS["html"] = Format("html", "diagnose.report.html", "One self-contained HTML file.",
                             default_output=lambda run: run.path / schema.REPORT_FILE)
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from diagnose.report.summary import RunSummary, summarize
from diagnose.rules._base import Finding
from diagnose.rundir import schema
from diagnose.rundir.tables import Run

__all__ = ["FORMATS", "Format", "Report", "analyse", "build_report", "load_run"]


@dataclass
class Report:
    """Everything a format renders for one run directory."""

    run: Run
    summary: RunSummary
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    """What the reader skipped, then what the rules skipped or failed on."""


def build_report(run: Run, findings: list[Finding], rule_notes: list[str]) -> Report:
    """Assemble a report: the summary of `run`, its findings, reader notes, a note when no
    optimizer step was recorded, then rule notes."""
    return Report(run=run, summary=summarize(run), findings=findings,
                  notes=[*run.notes, *_no_step_notes(run), *rule_notes])


def _no_step_notes(run: Run) -> list[str]:
    """The zero-code mode's `no_optimizer_step` event as a note: without it a script that
    trains with hand-written updates (`p.data.add_(p.grad, alpha=-lr)`, the PyTorch
    word-language-model example) reads "No problems found" although the step-based rules
    saw one step (found in the field test, docs/rules.md)."""
    notes = []
    for rank, tables in sorted(run.ranks.items()):
        try:
            events = tables.events_of("no_optimizer_step")
        except Exception:  # noqa: BLE001 - a note is optional, the report is not
            continue
        for data in events["data"] if "data" in events else []:
            if not isinstance(data, dict):
                continue
            message = str(data.get("message") or "no optimizer step was recorded")
            backward = data.get("backward_calls")
            where = f" on rank {rank}" if len(run.ranks) > 1 else ""
            by_hand = not data.get("optimizers") and backward
            notes.append(f"{message}{where}" + (
                f" ({backward} backward calls): weights updated without a torch.optim optimizer are not seen, "
                "so the rules on steps, gradients and schedules had nothing to check" if by_hand else ""))
            break
    return notes


def analyse(path: str | os.PathLike[str], select: Iterable[str] | None = None,
            ignore: Iterable[str] | None = None, tag_map: Iterable[str] = ()) -> Report:
    """Read the run directory at `path`, run the selected rules, and assemble the report.

    `path` may also be a TensorBoard log directory (diagnose/integrations/tensorboard.py);
    `tag_map` (`["TAG=FIELD", ...]`) then names tags the automatic detection misses.
    Raises RunDirError (unreadable run directory) and UnknownRuleError (bad select/ignore).
    """
    from diagnose.rules import run_rules

    run = load_run(path, tag_map)
    findings, notes = run_rules(run, select=select, ignore=ignore)
    return build_report(run, findings, notes)


def load_run(path: str | os.PathLike[str], tag_map: Iterable[str] = ()) -> Run:
    """A diagnose run directory, or else a TensorBoard log directory, as a `Run`."""
    from diagnose.integrations import tensorboard
    from diagnose.rundir.reader import RunDirError, read_run

    tag_map = list(tag_map)
    try:
        run = read_run(path)
    except RunDirError:
        if not tensorboard.is_logdir(path):
            raise
        return tensorboard.read_logdir(path, tag_map)
    if tag_map:
        raise RunDirError(f"{path} is a diagnose run directory; --tag-map applies to TensorBoard logs only")
    return run


@dataclass(frozen=True)
class Format:
    """One output format.

    Attributes:
        name: the `--format` value.
        module: module with `render(report: Report, stream: TextIO) -> None`, and
            optionally `render_many(reports: list[Report], stream)` for several run
            directories in one output (else `render` is called once per report).
        help: one line for `--help`.
        default_output: where the file goes when `--output` is not given (per run);
            None writes to stdout.
    """

    name: str
    module: str
    help: str
    default_output: Callable[[Run], Path] | None = None

    def _module(self):
        return importlib.import_module(self.module)

    def write(self, reports: list[Report], stream: TextIO) -> None:
        """Render `reports` to `stream`, all in one output."""
        module = self._module()
        if len(reports) != 1 and hasattr(module, "render_many"):
            module.render_many(reports, stream)
            return
        for report in reports:
            module.render(report, stream)


FORMATS: dict[str, Format] = {
    "terminal": Format("terminal", "diagnose.report.terminal",
                       "A summary table for people (colour on a terminal, plain text otherwise)."),
    "json": Format("json", "diagnose.report.json_report",
                   "One JSON document for programs (an array of them for several run directories)."),
    "html": Format("html", "diagnose.report.html",
                   "One self-contained HTML file with figures (report.html in the run directory unless -o; "
                   "several RUN_DIRs with -o make one comparison page).",
                   default_output=lambda run: run.path / schema.REPORT_FILE),
}
