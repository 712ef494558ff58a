"""What every rule shares: `Severity`, `Finding` (a rule's output) and `RuleSpec` (a rule).

A rule module (one per rule, in a family folder such as `rules/numerics/`) defines:

    NAME = "nonfinite-loss"         # stable kebab-case name, = the module name with "-"
    SEVERITY = Severity.ERROR       # what its findings usually are
    REQUIRES = ("steps.loss",)      # tables (or table.column) it needs; see RunTables.has
    SCOPE = "rank"                  # optional: "rank" (default) or "run"
    def check(run: RunTables) -> list[Finding]: ...   # pure; Run when SCOPE == "run"

and a docstring that is its user documentation (`diagnose explain NAME`). A rank-scoped
rule is called once per rank; a run-scoped rule (distributed rules comparing ranks) once
with the whole `Run`.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from diagnose.rundir.tables import Run, RunTables

__all__ = ["Finding", "RuleSpec", "Run", "RunTables", "Severity", "compact_ranges", "json_number"]


class Severity(enum.IntEnum):
    """How bad a finding is; ordered, so `severity >= Severity.WARNING` works."""

    INFO = 0
    """Worth knowing."""
    WARNING = 1
    """Likely wrong: look."""
    ERROR = 2
    """The run is wrong or wasted."""

    @property
    def label(self) -> str:
        """Lower-case name, as users write it and JSON carries it: `"warning"`."""
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        """`"warning"` (any case) -> Severity.WARNING; ValueError for anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown severity {text!r}; use one of {', '.join(s.label for s in cls)}") from None

    def __str__(self) -> str:
        return self.label


StepSpan = tuple[int, int]
"""First and last step (both included) that a finding concerns."""


@dataclass
class Finding:
    """One problem found in a run, with its evidence and its fix.

    Attributes:
        rule: the rule's NAME.
        severity: usually the rule's SEVERITY; a rule may lower or raise it per finding.
        title: one line that says what is wrong, with the key number
            ("Loss is NaN from step 1200 to the end (800 steps)").
        steps: `(first, last)` step the finding concerns, both included, or None when it
            is not tied to steps. Individual steps (spikes, ...) go in `evidence`.
        evidence: JSON-able numbers, strings and lists that back the title (steps,
            values, parameter names). Non-finite floats are allowed: the JSON report
            writes them as "nan"/"inf"; use `json_number` when in doubt.
        explanation: why this matters, in a few plain sentences.
        fix: what to do, with a short code snippet.
        rank: the rank it was found on; None when it concerns the run as a whole (set by
            `run_rules` for rank-scoped rules).
    """

    rule: str
    severity: Severity
    title: str
    steps: StepSpan | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    explanation: str = ""
    fix: str = ""
    rank: int | None = None

    def __post_init__(self) -> None:
        if "\n" in self.title:
            raise ValueError(f"Finding.title must be one line: {self.title!r}")
        if self.steps is not None:
            first, last = (int(s) for s in self.steps)
            if first > last:
                raise ValueError(f"Finding.steps must be (first, last) with first <= last: {self.steps}")
            self.steps = (first, last)
        self.severity = Severity(self.severity)

    def to_dict(self) -> dict[str, Any]:
        """The finding as plain Python data (the JSON report's shape; floats untouched)."""
        return {
            "rule": self.rule,
            "severity": self.severity.label,
            "title": self.title,
            "steps": list(self.steps) if self.steps is not None else None,
            "evidence": self.evidence,
            "explanation": self.explanation,
            "fix": self.fix,
            "rank": self.rank,
        }


CheckFunction = Callable[[Any], list[Finding]]


@dataclass(frozen=True)
class RuleSpec:
    """A rule as the catalogue knows it (built from its module by `diagnose.rules`)."""

    name: str
    category: str
    severity: Severity
    summary: str
    """First line of the docstring."""
    doc: str
    """The whole docstring: the rule's user documentation."""
    requires: tuple[str, ...]
    check: CheckFunction
    scope: str = "rank"
    """"rank": `check(RunTables)` once per rank; "run": `check(Run)` once."""


def json_number(value: float) -> float | str:
    """A float for evidence: finite as is, NaN/Inf as "nan"/"inf"/"-inf" (the format's spelling)."""
    value = float(value)
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def compact_ranges(steps: list[int], limit: int = 10) -> list[list[int]]:
    """Sorted steps as inclusive `[first, last]` runs of consecutive steps, at most
    `limit` of them (the first ones): [1, 2, 3, 7] -> [[1, 3], [7, 7]]."""
    ranges: list[list[int]] = []
    for step in sorted(steps):
        if ranges and step == ranges[-1][1] + 1:
            ranges[-1][1] = step
        elif len(ranges) == limit:
            break
        else:
            ranges.append([step, step])
    return ranges
