"""The rule catalogue: discovery, selection, and how run_rules treats rules that cannot run."""
from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from diagnose.rules import Catalogue, UnknownRuleError, catalogue, discover, resolve, run_rules
from diagnose.rules._base import Finding, RuleSpec, Severity, compact_ranges
from diagnose.rundir.reader import read_run
from diagnose.rundir.synthetic import write_synthetic_run
from diagnose.rundir.tables import Run, RunTables

GOOD_RULE = '''
"""Flags nothing, but proves discovery works.

## What it flags
Nothing.
"""
from diagnose.rules._base import Severity
NAME = "good-rule"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.loss", "calls")
def check(run):
    return []
'''


def _package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, modules: dict[str, str]) -> str:
    name = f"fakerules_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    for relative, source in {"__init__.py": "", **modules}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
        if path.parent != root:
            (path.parent / "__init__.py").touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# ---- discovery ---------------------------------------------------------------------------------
def test_diagnose_rules_are_all_valid_and_documented() -> None:
    cat = catalogue()
    assert cat.problems == ()
    rule = cat.get("nonfinite-loss")
    assert (rule.category, rule.severity, rule.scope) == ("numerics", Severity.ERROR, "rank")
    assert rule.summary == "The training loss became NaN or Inf."
    for spec in cat.rules:
        for section in ("## What it flags", "## Why it matters", "## Example", "Use instead", "## Thresholds"):
            assert section in spec.doc, f"{spec.name}: docstring lacks {section!r}"


def test_discover_loads_good_modules_and_reports_broken_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = _package(tmp_path, monkeypatch, {
        "numerics/good_rule.py": GOOD_RULE,
        "numerics/_helpers.py": "raise RuntimeError('private modules are not rules')",
        "loop/broken_import.py": "import does_not_exist_anywhere",
        "loop/wrong_name.py": GOOD_RULE,
        "loop/bad_requires.py": GOOD_RULE.replace('"good-rule"', '"bad-requires"').replace('"calls"', '"stepz"'),
    })
    cat = discover(package, families=("numerics", "loop", "distributed"))
    assert [(r.name, r.category, r.requires) for r in cat.rules] == [("good-rule", "numerics", ("steps.loss", "calls"))]
    problems = "\n".join(cat.problems)
    assert len(cat.problems) == 3
    assert f"{package}.loop.broken_import not loaded: ModuleNotFoundError" in problems
    assert "module name must be NAME with '_' for '-'" in problems
    assert "REQUIRES names unknown tables ['stepz']" in problems


# ---- selection ---------------------------------------------------------------------------------
def _spec(name: str, category: str = "numerics", severity: Severity = Severity.WARNING,
          requires: tuple[str, ...] = (), check=lambda run: [], scope: str = "rank") -> RuleSpec:
    return RuleSpec(name=name, category=category, severity=severity, summary=f"{name}.", doc=f"{name}.",
                    requires=requires, check=check, scope=scope)


CAT = Catalogue((_spec("nonfinite-loss"), _spec("gradient-spike"), _spec("clip-before-unscale", "loop")))


def test_resolve_by_name_category_and_ignore() -> None:
    assert [r.name for r in resolve(CAT)] == ["nonfinite-loss", "gradient-spike", "clip-before-unscale"]
    assert [r.name for r in resolve(CAT, select=["loop"])] == ["clip-before-unscale"]
    assert [r.name for r in resolve(CAT, select=["numerics"], ignore=["gradient-spike"])] == ["nonfinite-loss"]
    assert [r.name for r in resolve(CAT, ignore=["numerics"])] == ["clip-before-unscale"]
    assert resolve(CAT, select=[]) == []


@pytest.mark.parametrize("select, ignore, message", [
    (["nonfinite-los"], None, "unknown rule or category 'nonfinite-los'; did you mean 'nonfinite-loss'?"),
    (None, ["numeric"], "unknown rule or category 'numeric'; did you mean 'numerics'?"),
    (["zzz"], None, "unknown rule or category 'zzz'"),
])
def test_unknown_names_suggest_the_closest(select, ignore, message: str) -> None:
    with pytest.raises(UnknownRuleError) as caught:
        resolve(CAT, select=select, ignore=ignore)
    assert str(caught.value) == message


def test_get_unknown_rule_suggests() -> None:
    with pytest.raises(UnknownRuleError, match="did you mean 'gradient-spike'"):
        CAT.get("gradient-spikes")


# ---- running -----------------------------------------------------------------------------------
@pytest.fixture
def two_ranks(tmp_path: Path) -> Run:
    return read_run(write_synthetic_run(tmp_path / "run", steps=20, params=2, ranks=2))


def _finding(rule: str, severity: Severity, step: int, title: str = "t") -> Finding:
    return Finding(rule=rule, severity=severity, title=title, steps=(step, step))


def test_run_rules_skips_rules_without_their_tables_and_notes_it(two_ranks: Run) -> None:
    called = []
    cat = Catalogue((_spec("needs-scale", requires=("steps.scale",), check=called.append),
                     _spec("needs-steps", requires=("steps",), check=lambda t: called.append(t) or [])))
    findings, notes = run_rules(two_ranks, cat=cat)
    assert findings == []
    assert notes == ["rule needs-scale skipped: no steps.scale recorded"]
    assert [t.rank for t in called] == [0, 1]


def test_a_failing_rule_is_a_note_and_the_others_still_run(two_ranks: Run) -> None:
    def boom(tables: RunTables) -> list[Finding]:
        raise KeyError("loss")

    cat = Catalogue((_spec("boom", check=boom),
                     _spec("fine", check=lambda t: [_finding("fine", Severity.INFO, t.rank, f"on {t.rank}")])),
                    problems=("rule module x not loaded: SyntaxError: bad",))
    findings, notes = run_rules(two_ranks, cat=cat)
    assert [(f.rule, f.rank) for f in findings] == [("fine", 0), ("fine", 1)]
    assert notes == ["rule module x not loaded: SyntaxError: bad",
                     "rule boom failed on rank 0 and was skipped: KeyError: 'loss'",
                     "rule boom failed on rank 1 and was skipped: KeyError: 'loss'"]


def test_run_scoped_rules_get_the_whole_run_once(two_ranks: Run) -> None:
    seen = []
    cat = Catalogue((_spec("rank-desync", "distributed", scope="run",
                           check=lambda run: seen.append(run) or [_finding("rank-desync", Severity.ERROR, 3)]),))
    findings, _ = run_rules(two_ranks, cat=cat)
    assert seen == [two_ranks]
    assert findings[0].rank is None


def test_findings_are_ordered_by_severity_then_step(two_ranks: Run) -> None:
    def many(tables: RunTables) -> list[Finding]:
        if tables.rank:
            return []
        return [_finding("many", Severity.INFO, 1, "a"), _finding("many", Severity.ERROR, 9, "b"),
                _finding("many", Severity.WARNING, 2, "c"), _finding("many", Severity.ERROR, 4, "d")]

    findings, _ = run_rules(two_ranks, cat=Catalogue((_spec("many", check=many),)))
    assert [f.title for f in findings] == ["d", "b", "c", "a"]


def test_select_and_ignore_apply_to_run_rules(two_ranks: Run) -> None:
    cat = Catalogue((_spec("a", check=lambda t: [_finding("a", Severity.ERROR, 0)]),
                     _spec("b", "loop", check=lambda t: [_finding("b", Severity.ERROR, 0)])))
    findings, _ = run_rules(two_ranks, select=["loop"], cat=cat)
    assert {f.rule for f in findings} == {"b"}
    with pytest.raises(UnknownRuleError):
        run_rules(two_ranks, ignore=["c"], cat=cat)


# ---- the shared types --------------------------------------------------------------------------
def test_severity_orders_and_parses() -> None:
    assert Severity.INFO < Severity.WARNING < Severity.ERROR
    assert Severity.parse(" Warning ") is Severity.WARNING and str(Severity.ERROR) == "error"
    with pytest.raises(ValueError, match="use one of info, warning, error"):
        Severity.parse("fatal")


def test_finding_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="one line"):
        Finding(rule="r", severity=Severity.INFO, title="two\nlines")
    with pytest.raises(ValueError, match="first <= last"):
        Finding(rule="r", severity=Severity.INFO, title="t", steps=(5, 2))
    finding = Finding(rule="r", severity=2, title="t", steps=[3, 4])
    assert finding.severity is Severity.ERROR and finding.steps == (3, 4)
    assert finding.to_dict()["severity"] == "error" and finding.to_dict()["steps"] == [3, 4]


def test_compact_ranges() -> None:
    assert compact_ranges([7, 1, 2, 3, 9]) == [[1, 3], [7, 7], [9, 9]]
    assert compact_ranges(list(range(0, 40, 2)), limit=3) == [[0, 0], [2, 2], [4, 4]]
    assert compact_ranges([]) == []
