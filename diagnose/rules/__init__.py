"""The rule catalogue: discover rule modules, select them, run them over a run.

Rules live one per module in the family packages (`numerics/`, `loop/`, `data/`,
`resources/`, `distributed/`); the family is the rule's category. See `_base` for what a
rule module defines. Adding a rule means adding one module and its tests: nothing here
lists rules by name.

    findings, notes = run_rules(read_run(path), select=["numerics"], ignore=["loss-plateau"])
"""
from __future__ import annotations

import difflib
import functools
import importlib
import pkgutil
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

from diagnose.rules._base import Finding, RuleSpec, Severity
from diagnose.rundir.tables import TABLE_NAMES, Run

__all__ = ["FAMILIES", "Catalogue", "UnknownRuleError", "catalogue", "discover", "resolve", "run_rules"]

FAMILIES = ("numerics", "loop", "data", "resources", "distributed")
"""Rule families (subpackages), in report order; a rule's category is its family."""

SCOPES = ("rank", "run")
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


class UnknownRuleError(ValueError):
    """A rule or category name that the catalogue does not know (a usage error)."""


@dataclass(frozen=True)
class Catalogue:
    """Every rule found, and why any module could not be loaded (one line each)."""

    rules: tuple[RuleSpec, ...]
    problems: tuple[str, ...] = ()

    def get(self, name: str) -> RuleSpec:
        """The rule called `name`; UnknownRuleError (with a suggestion) otherwise."""
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise UnknownRuleError(f"unknown rule {name!r}{_suggestion(name, [r.name for r in self.rules])}")

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories that hold at least one rule, in family order."""
        present = {r.category for r in self.rules}
        return tuple(f for f in FAMILIES if f in present)


def _suggestion(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def spec_from_module(module: ModuleType, category: str) -> RuleSpec:
    """Validate a rule module and describe it; ValueError says what is wrong with it."""
    where = module.__name__
    missing = [a for a in ("NAME", "SEVERITY", "REQUIRES", "check") if not hasattr(module, a)]
    if missing:
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    name, severity, requires = module.NAME, module.SEVERITY, tuple(module.REQUIRES)
    scope = getattr(module, "SCOPE", "rank")
    doc = (module.__doc__ or "").strip()
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: NAME {name!r} is not kebab-case")
    if name.replace("-", "_") != where.rsplit(".", 1)[-1]:
        raise ValueError(f"{where}: module name must be NAME with '_' for '-' ({name!r})")
    if not isinstance(severity, Severity):
        raise ValueError(f"{where}: SEVERITY must be a Severity")
    unknown = [r for r in requires if r.partition(".")[0] not in TABLE_NAMES]
    if unknown:
        raise ValueError(f"{where}: REQUIRES names unknown tables {unknown}; tables are {', '.join(TABLE_NAMES)}")
    if scope not in SCOPES:
        raise ValueError(f"{where}: SCOPE must be one of {SCOPES}")
    if not doc:
        raise ValueError(f"{where}: no docstring (it is the rule's documentation)")
    if not callable(module.check):
        raise ValueError(f"{where}: check is not callable")
    return RuleSpec(name=name, category=category, severity=severity, summary=doc.splitlines()[0].strip(),
                    doc=doc, requires=requires, check=module.check, scope=scope)


def discover(package: str = __name__, families: tuple[str, ...] = FAMILIES) -> Catalogue:
    """Import every module of every family package under `package` and describe it.

    A module that fails to import or is malformed is left out and described in
    `Catalogue.problems`, so one broken rule never takes the report down.
    """
    rules: list[RuleSpec] = []
    problems: list[str] = []
    for family in families:
        try:
            family_package = importlib.import_module(f"{package}.{family}")
        except ModuleNotFoundError:
            continue
        for info in sorted(pkgutil.iter_modules(family_package.__path__), key=lambda i: i.name):
            if info.name.startswith("_") or info.ispkg:
                continue
            qualified = f"{family_package.__name__}.{info.name}"
            try:
                rules.append(spec_from_module(importlib.import_module(qualified), family))
            except Exception as exc:  # noqa: BLE001 - a broken rule is a note, not a crash
                problems.append(f"rule module {qualified} not loaded: {type(exc).__name__}: {exc}")
    names = [r.name for r in rules]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"rule names defined twice (kept the first): {', '.join(duplicates)}")
        seen: set[str] = set()
        rules = [r for r in rules if not (r.name in seen or seen.add(r.name))]
    return Catalogue(tuple(rules), tuple(problems))


@functools.cache
def catalogue() -> Catalogue:
    """The catalogue of diagnose's own rules (discovered once per process)."""
    return discover()


def resolve(cat: Catalogue, select: Iterable[str] | None = None, ignore: Iterable[str] | None = None) -> list[RuleSpec]:
    """The rules to run: those named in `select` (all when None), minus those in `ignore`.

    Both take rule names and category names. UnknownRuleError for any other name, with a
    "did you mean" suggestion.
    """
    def expand(names: Iterable[str]) -> set[str]:
        chosen: set[str] = set()
        known = [r.name for r in cat.rules] + list(FAMILIES)
        for raw in names:
            name = raw.strip()
            if not name:
                continue
            if name in FAMILIES:
                chosen.update(r.name for r in cat.rules if r.category == name)
            elif any(r.name == name for r in cat.rules):
                chosen.add(name)
            else:
                raise UnknownRuleError(f"unknown rule or category {name!r}{_suggestion(name, known)}")
        return chosen

    selected = expand(select) if select is not None else {r.name for r in cat.rules}
    ignored = expand(ignore or ())
    return [r for r in cat.rules if r.name in selected and r.name not in ignored]


def run_rules(
    run: Run,
    select: Iterable[str] | None = None,
    ignore: Iterable[str] | None = None,
    *,
    cat: Catalogue | None = None,
) -> tuple[list[Finding], list[str]]:
    """Run the selected rules over every rank of `run`.

    Returns the findings (most severe first, then by first step) and notes: rules skipped
    for want of data, rules that failed (a rule's exception is a note, never a crash),
    rule modules that could not be loaded.
    """
    cat = cat if cat is not None else catalogue()
    notes = list(cat.problems)
    findings: list[Finding] = []
    for rule in resolve(cat, select, ignore):
        missing = {rank: tables.missing(*rule.requires) for rank, tables in run.ranks.items()}
        skipped = {rank: names for rank, names in missing.items() if names}
        if skipped:
            notes.append(_skip_note(rule.name, skipped, run.world_size))
        if rule.scope == "run":
            if not skipped:
                findings += _call(rule, run, None, notes)
            continue
        for rank, tables in run.ranks.items():
            if rank not in skipped:
                findings += _call(rule, tables, rank, notes)
    findings = _merge_across_ranks(findings)
    findings.sort(key=lambda f: (-f.severity, f.steps[0] if f.steps else -1, f.rule))
    return findings, notes


def _call(rule: RuleSpec, tables: object, rank: int | None, notes: list[str]) -> list[Finding]:
    try:
        found = list(rule.check(tables))
    except Exception as exc:  # noqa: BLE001 - one rule's bug must not cost the report
        where = f" on rank {rank}" if rank is not None else ""
        notes.append(f"rule {rule.name} failed{where} and was skipped: {type(exc).__name__}: {exc}")
        return []
    for finding in found:
        if finding.rank is None:
            finding.rank = rank
    return found


def _skip_note(name: str, skipped: dict[int, list[str]], world_size: int) -> str:
    what = sorted({n for names in skipped.values() for n in names})
    ranks = "" if len(skipped) == world_size else f" on rank {', '.join(map(str, sorted(skipped)))}"
    return f"rule {name} skipped{ranks}: no {', '.join(what)} recorded"


def _merge_across_ranks(findings: list[Finding]) -> list[Finding]:
    """The same finding on several ranks (same rule, title and steps) is reported once,
    with `rank=None` and the ranks listed in `evidence["ranks"]`."""
    groups: dict[tuple, list[Finding]] = {}
    for finding in findings:
        groups.setdefault((finding.rule, finding.title, finding.steps), []).append(finding)
    merged = []
    for group in groups.values():
        first = group[0]
        ranks = [f.rank for f in group]
        if len(group) > 1 and None not in ranks and len(set(ranks)) == len(ranks):
            first.evidence = {**first.evidence, "ranks": sorted(ranks)}
            first.rank = None
        merged.append(first)
    return merged
