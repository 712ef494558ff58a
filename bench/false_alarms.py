"""Publish how often every rule fires on healthy runs, and what it catches: docs/rules.md.

Records, on CPU, in this process:
- every healthy scenario of tests/harness/scenarios.py for each seed (0-4 by default),
  and the reference loop without injection for the same seeds (healthy too);
- every `--inject` fault of the reference loop (reference_loop/injections.py), seed 0;
- every faulty loop and near miss of tests/harness/faults_*.py, seed 0;
then runs all rules (`diagnose.rules.run_rules`) on each and writes a Markdown page with
the false-alarm table (findings at warning or error on healthy runs and near misses, per
rule) and the detection table (which fault each rule catches, at which step).

    python bench/false_alarms.py                          # everything, writes docs/rules.md
    python bench/false_alarms.py --seeds 0 1 --no-reference --out /tmp/rules.md
    python bench/false_alarms.py --only healthy           # the false-alarm table alone
    python bench/false_alarms.py --work runs/fa --reuse   # rules changed: analyse again, record only what is new

Memory freed by one recording is handed back to the OS before the next
(`release_freed_memory`), so RSS-based rules see each run as a fresh process would. The
whole thing takes a few minutes on two idle cores; timing rules (throughput, data wait)
are only as quiet as the machine: the page records its load.
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from diagnose.rules import FAMILIES, catalogue, run_rules  # noqa: E402
from diagnose.rules._base import Severity  # noqa: E402
from diagnose.rundir.reader import read_run  # noqa: E402
from tests.harness.faults_resources import release_freed_memory  # noqa: E402
from tests.harness.scenarios import HEALTHY, record  # noqa: E402


@dataclass
class Result:
    """One recorded run and what the rules said about it."""

    group: str
    """"healthy", "near miss" or "fault"."""
    source: str
    """Where the loop comes from: "scenarios", "reference", "faults_loop", ..."""
    name: str
    seed: int
    expected: str | None = None
    """The rule a fault must trigger (None for healthy runs and near misses)."""
    at: int | None = None
    """The step the fault starts at, when its author said."""
    min_severity: str = "warning"
    """The least severity that counts as caught (a harness may expect `info`)."""
    findings: list[tuple[str, str, int | None, str]] = field(default_factory=list)
    """(rule, severity, first step, title) of every finding."""
    problems: list[str] = field(default_factory=list)
    """Rules that failed on this run, or why it could not be recorded."""
    seconds: float = 0.0
    reused: bool = False
    """Read from an earlier recording (--reuse), not recorded now."""

    def alarms(self) -> list[tuple[str, str, int | None, str]]:
        return [f for f in self.findings if f[1] in ("warning", "error")]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.seed}" if self.group == "healthy" else self.name


def _record(result: Result, train: Callable[[Path], Any], work: Path, reuse: bool = False) -> Result:
    run_dir = work / result.group.replace(" ", "_") / result.source / f"{result.name}-s{result.seed}"
    release_freed_memory()
    start = time.perf_counter()
    try:
        result.reused = reuse and _finished(run_dir)
        if not result.reused:
            train(run_dir)
        findings, notes = run_rules(read_run(run_dir))
    except Exception as exc:  # noqa: BLE001 - one broken loop must not cost the page
        result.problems.append(f"not recorded: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        return result
    finally:
        result.seconds = time.perf_counter() - start
    result.findings = [(f.rule, f.severity.label, f.steps[0] if f.steps else None, f.title) for f in findings]
    result.problems += [n for n in notes if " failed" in n or "not loaded" in n]
    return result


def _finished(run_dir: Path) -> bool:
    """True when run_dir already holds a run whose recording ended (any final status)."""
    try:
        return read_run(run_dir).first.meta.get("status") not in (None, "running")
    except Exception:  # noqa: BLE001 - anything unreadable is recorded again
        return False


def _reference_train(config_kwargs: dict) -> Callable[[Path], Any]:
    """The reference loop with its default config (what `diagnose run --inject` trains) on
    CPU, one intra-op thread: on a busy machine torch's threads otherwise spin-wait for each
    other and a 20-second run takes minutes."""
    from reference_loop.config import TrainConfig

    config_kwargs = {"device": "cpu", "num_threads": 1, **config_kwargs}
    from reference_loop.train import train

    def run(run_dir: Path) -> Any:
        threads = torch.get_num_threads()
        try:
            return train(TrainConfig(**config_kwargs), run_dir, progress=False, overwrite=True)
        finally:
            torch.set_num_threads(threads)
    return run


def _has_reference() -> bool:
    try:
        importlib.import_module("reference_loop.train")
        return True
    except ImportError:
        return False


def healthy_runs(seeds: list[int], reference: bool) -> list[tuple[Result, Callable[[Path], Any]]]:
    jobs = []
    for seed in seeds:
        for name in HEALTHY:
            jobs.append((Result("healthy", "scenarios", name, seed),
                         lambda d, name=name, seed=seed: record(name, d, seed)))
        if reference:
            jobs.append((Result("healthy", "reference", "reference_loop", seed),
                         _reference_train({"seed": seed})))
    return jobs


def fault_runs(reference: bool) -> list[tuple[Result, Callable[[Path], Any]]]:
    jobs = []
    if reference:
        from reference_loop.injections import INJECTIONS

        for inj in INJECTIONS.values():
            if inj.min_ranks > 1:  # needs torchrun; tests/distributed/test_reference_ddp.py
                continue
            jobs.append((Result("fault", "reference", f"--inject {inj.name}", 0, expected=inj.triggers),
                         _reference_train({"inject": [inj.name], "seed": 0,  # its task when not the default
                                           **({} if "images" in inj.tasks else {"task": inj.tasks[0]})})))
    for path in sorted((ROOT / "tests" / "harness").glob("faults_*.py")):
        module = importlib.import_module(f"tests.harness.{path.stem}")
        record_fault = getattr(module, "record_fault", None)
        for name, fault in getattr(module, "FAULTS", {}).items():
            rule = getattr(fault, "rule", None)
            group = "fault" if rule else "near miss"
            if record_fault is not None:  # the harness's own way (threads, settings)
                train = lambda d, name=name, rec=record_fault: rec(name, d, 0)  # noqa: E731
            else:
                train = lambda d, fn=getattr(fault, "record", None) or fault.fn: fn(d, 0)  # noqa: E731
            jobs.append((Result(group, path.stem, name, 0, expected=rule, at=getattr(fault, "at", None),
                                min_severity=getattr(fault, "severity", "warning")), train))
    return jobs


# ---- the page --------------------------------------------------------------------------


def _cell(names: list[str], limit: int = 6) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def _false_alarm_table(results: list[Result], rules: list) -> list[str]:
    runs = len(results)
    lines = ["| rule | category | warning | error | fired on (warning/error) | info |",
             "| --- | --- | --- | --- | --- | --- |"]
    for rule in rules:
        def fired(severity: str) -> list[str]:
            return [r.label for r in results if any(f[0] == rule.name and f[1] == severity for f in r.findings)]
        warn, err, info = fired("warning"), fired("error"), fired("info")
        lines.append(f"| `{rule.name}` | {rule.category} | {len(warn)} / {runs} | {len(err)} / {runs} "
                     f"| {_cell(sorted(set(warn + err)))} | {len(info) or ''} |")
    return lines


def _caught(r: Result, f: tuple) -> bool:
    return f[0] == r.expected and Severity.parse(f[1]) >= Severity.parse(r.min_severity)


def _detection_tables(faults: list[Result], rules: list) -> list[str]:
    present = {rule.name for rule in rules}
    lines = ["| fault | source | must trigger | caught | at step (fault starts) | severity | other rules at warning/error |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in faults:
        hit = [f for f in r.findings if _caught(r, f)]
        weak = [f for f in r.findings if f[0] == r.expected and not _caught(r, f)]
        others = sorted({f[0] for f in r.alarms() if f[0] != r.expected})
        if r.problems and not r.findings:
            caught, step, severity = "not recorded", "", ""
        elif r.expected not in present:
            caught, step, severity = "rule not written yet", "", ""
        elif hit:
            caught, step, severity = "yes", _step(hit[0][2], r.at), hit[0][1]
        elif weak:
            caught, step, severity = f"**only {weak[0][1]}**", _step(weak[0][2], r.at), weak[0][1]
        else:
            caught, step, severity = "**no**", "", ""
        expected = f"`{r.expected}`" + (f" ({r.min_severity})" if r.min_severity != "warning" else "")
        lines.append(f"| `{r.name}` | {r.source} | {expected} | {caught} | {step} | {severity} "
                     f"| {', '.join(f'`{o}`' for o in others)} |")
    lines += ["", "Per rule:", "", "| rule | faults | caught | missed |", "| --- | --- | --- | --- |"]
    for rule in rules:
        mine = [r for r in faults if r.expected == rule.name]
        caught = [r for r in mine if any(_caught(r, f) for f in r.findings)]
        missed = [f"`{r.name}`" for r in mine if r not in caught]
        lines.append(f"| `{rule.name}` | {len(mine)} | {len(caught)} | {', '.join(missed)} |")
    absent = sorted({r.expected for r in faults if r.expected not in present})
    if absent:
        lines += ["", "Faults whose rule is not written yet: " + ", ".join(f"`{a}`" for a in absent) + "."]
    return lines


def _step(step: int | None, at: int | None) -> str:
    if step is None:
        return "(whole run)"
    return f"{step}" + (f" ({at})" if at is not None else "")


def write_page(path: Path, results: list[Result], args: argparse.Namespace, wall_s: float) -> None:
    cat = catalogue()
    rules = sorted(cat.rules, key=lambda r: (FAMILIES.index(r.category), r.name))
    healthy = [r for r in results if r.group == "healthy"]
    near = [r for r in results if r.group == "near miss"]
    faults = [r for r in results if r.group == "fault"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    scenario_count = len({r.name for r in healthy if r.source == "scenarios"})
    lines = [
        "# Rules: false alarms and detections",
        "",
        "Generated by `python bench/false_alarms.py` "
        f"({' '.join(sys.argv[1:]) or 'default arguments'}); do not edit by hand (except the "
        "\"Field test\" section at the end, which is kept).",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPU cores (load average "
        f"{load:.1f} at the end), Python {platform.python_version()}, torch {torch.__version__}, CPU only; "
        f"{len(results)} runs ({sum(r.reused for r in results)} of them recorded earlier and analysed again) "
        f"in {wall_s / 60:.1f} min. Rules present: {len(rules)} "
        f"({', '.join(cat.categories)}).",
        "",
        "A healthy run must report nothing at warning or error (info is allowed). Severity is per",
        "finding, so a rule can say `info` where its usual severity is higher.",
        "",
        "## False alarms on healthy runs",
        "",
        f"{len(healthy)} healthy runs: the {scenario_count} scenarios of `tests/harness/scenarios.py` "
        f"(differently written loops: AMP, accumulation, warm-up from 0, ReduceLROnPlateau, early "
        f"stopping, a frozen backbone, EMA, two optimizers, ...) for seeds {', '.join(map(str, args.seeds))}"
        + (", and the reference loop without injection for the same seeds" if any(
            r.source == "reference" for r in healthy) else "") + ". A cell is runs with a finding of that "
        "severity / runs.",
        "",
        *_false_alarm_table(healthy, rules),
        "",
    ]
    if near:
        lines += ["## Near misses", "",
                  f"{len(near)} loops from `tests/harness/faults_*.py` that look like a fault and are healthy "
                  "(seed 0). Any finding at warning or error here is a false alarm too.", "",
                  "| near miss | source | findings at warning/error |", "| --- | --- | --- |"]
        for r in near:
            found = ", ".join(f"`{f[0]}` ({f[1]}, step {f[2]})" for f in r.alarms()) or "none"
            lines.append(f"| `{r.name}` | {r.source} | {found} |")
        lines.append("")
    if faults:
        lines += ["## Detections", "",
                  f"{len(faults)} faulty runs (seed 0): the reference loop's `--inject` faults (default "
                  "config, CPU, one thread) and the faulty loops of `tests/harness/faults_*.py`. \"At step\" is the first "
                  "step of the finding; in brackets the step the fault starts at, when its author recorded "
                  "it.", "", *_detection_tables(faults, rules), ""]
    problems = [(r, p) for r in results for p in r.problems]
    if problems:
        lines += ["## Problems", ""] + [f"- `{r.name}` (seed {r.seed}): {p}" for r, p in problems] + [""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + _hand_written_tail(path))


HAND_WRITTEN = "\n## Field test"
"""Where the hand-written end of the page starts: kept when the page is generated again."""


def _hand_written_tail(path: Path) -> str:
    """The page's hand-written section (from `## Field test` to the end), or ""."""
    old = path.read_text() if path.exists() else ""
    at = old.find(HAND_WRITTEN)
    return old[at:] if at >= 0 else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="Seeds of the healthy runs.")
    parser.add_argument("--only", choices=("healthy", "faults"), help="Record only this half.")
    parser.add_argument("--no-reference", action="store_true", help="Leave the reference loop out.")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "rules.md", help="The page to write.")
    parser.add_argument("--work", type=Path, help="Keep the run directories here (default: a temporary folder).")
    parser.add_argument("--reuse", action="store_true",
                        help="With --work: analyse runs already recorded there again instead of recording them.")
    args = parser.parse_args(argv)

    reference = not args.no_reference and _has_reference()
    jobs = []
    if args.only != "faults":
        jobs += healthy_runs(args.seeds, reference)
    if args.only != "healthy":
        jobs += fault_runs(reference)
    work = args.work or Path(tempfile.mkdtemp(prefix="diagnose-false-alarms-"))
    start = time.perf_counter()
    results = []
    for i, (result, train) in enumerate(jobs, 1):
        _record(result, train, work, reuse=args.reuse)
        alarms = ", ".join(f"{f[0]}:{f[1]}@{f[2]}" for f in result.alarms()) or "-"
        print(f"[{i}/{len(jobs)}] {result.group:9s} {result.source:16s} {result.label:42s} "
              f"{result.seconds:6.1f}s  {alarms}", file=sys.stderr, flush=True)
        results.append(result)
    write_page(args.out, results, args, time.perf_counter() - start)
    print(f"wrote {args.out} ({len(results)} runs, work dir {work})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
