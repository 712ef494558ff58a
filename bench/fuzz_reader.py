"""Fuzz the run-directory reader through `diagnose report DIR --format json`.

Each case copies a real run directory (`write_synthetic_run`: healthy, AMP, one step,
several ranks), applies 1-3 random mutations (a truncated file, garbage bytes, invalid
UTF-8, an empty or missing file, a field of the wrong type, missing or extra fields,
NaN/Inf/huge numbers, a future schema version, 0 or 1 step, out-of-order and duplicate
steps) and calls the CLI in-process (click's CliRunner). The property: exit 0 or 1 (what
was skipped is in the notes, and no rule failed on a value the reader let through), or
exit 2 with one `Error:` line that is not an internal error. Never a traceback.

    python bench/fuzz_reader.py --cases 10000      # prints the figures, exit 1 on a failure

tests/reliability/test_fuzz_reader.py drives the same mutations with hypothesis (60 examples).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FILES = ("meta.jsonl", "params.jsonl", "steps.jsonl", "events.jsonl", "grad_norms.arrow", "param_norms.arrow")
BASES = ("healthy", "amp", "one_step", "two_ranks", "running")
ODD_VALUES = (None, "x", "", -1, 0, 10**30, 2**63, -(2**63) - 1, 1e308, -1e308, "nan", "inf", "-inf",
              [], {}, True, [1, "a"], {"a": [None]}, 3.5, "1", "\u00e9\u0000")
OPS = ("truncate", "garbage", "bad_utf8", "empty", "delete", "wrong_type", "drop_field", "extra_field",
       "future_version", "zero_steps", "one_step", "shuffle_steps", "duplicate_steps", "duplicate_line",
       "not_an_object", "bad_version")


def make_bases(root: Path) -> dict[str, Path]:
    from diagnose.rundir.synthetic import write_synthetic_run

    return {
        "healthy": write_synthetic_run(root / "healthy", steps=30, params=4, steps_per_epoch=10, chunk_rows=8),
        "amp": write_synthetic_run(root / "amp", steps=20, params=4, amp=True,
                                   loss=[float("nan") if i == 5 else 1.0 for i in range(20)], chunk_rows=4),
        "one_step": write_synthetic_run(root / "one_step", steps=1, params=2),
        "two_ranks": write_synthetic_run(root / "two_ranks", steps=12, params=3, ranks=2, chunk_rows=5),
        "running": write_synthetic_run(root / "running", steps=15, params=2, status="running", pid=2**22 + 12345),
    }


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _mutate_record(rng: random.Random, path: Path, how: str) -> None:
    lines = _lines(path)
    if not lines:
        return
    i = rng.randrange(len(lines))
    try:
        record = json.loads(lines[i])
    except ValueError:
        return
    if not isinstance(record, dict) or not record:
        return
    key = rng.choice(sorted(record))
    if how == "wrong_type":
        record[key] = rng.choice(ODD_VALUES)
    elif how == "drop_field":
        del record[key]
    else:
        record[rng.choice(("zz", "kind", "type", "step", "index", "lr", "loss", "metrics", "calls"))] = \
            rng.choice(ODD_VALUES)
    lines[i] = json.dumps(record).encode() + b"\n"
    path.write_bytes(b"".join(lines))


def mutate(rng: random.Random, run_dir: Path, op: str, file_name: str) -> str:
    """Apply one mutation to one file of one rank; returns a description."""
    ranks = sorted(p for p in run_dir.iterdir() if p.is_dir())
    path = rng.choice(ranks) / file_name
    if op == "delete":
        path.unlink(missing_ok=True)
        return f"{op} {path.parent.name}/{file_name}"
    if not path.is_file():
        return f"{op} {file_name} (absent)"
    data = path.read_bytes()
    if op == "truncate":
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif op == "garbage":
        at = rng.randrange(len(data) + 1)
        path.write_bytes(data[:at] + rng.randbytes(rng.randrange(1, 64)) + data[at:])
    elif op == "bad_utf8":
        at = rng.randrange(len(data) + 1)
        path.write_bytes(data[:at] + rng.choice((b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80")) + data[at:])
    elif op == "empty":
        path.write_bytes(b"")
    elif op in ("wrong_type", "drop_field", "extra_field") and file_name.endswith(".jsonl"):
        _mutate_record(rng, path, op)
    elif op in ("future_version", "bad_version") and file_name == "meta.jsonl":
        version = rng.choice((2, 99, 2**70)) if op == "future_version" else rng.choice((0, -1, "1", 1.5, None, True))
        out = []
        for line in _lines(path):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and record.get("type") == "start":
                record["schema_version"] = version
                line = json.dumps(record).encode() + b"\n"
            out.append(line)
        path.write_bytes(b"".join(out))
    elif file_name == "steps.jsonl" and op in ("zero_steps", "one_step", "shuffle_steps", "duplicate_steps"):
        lines = _lines(path)
        if op == "zero_steps":
            lines = []
        elif op == "one_step":
            lines = lines[:1]
        elif op == "shuffle_steps":
            rng.shuffle(lines)
        else:
            lines = lines + rng.sample(lines, min(len(lines), 3))
        path.write_bytes(b"".join(lines))
    elif op == "duplicate_line" and file_name.endswith(".jsonl"):
        lines = _lines(path)
        if lines:
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(lines))
            path.write_bytes(b"".join(lines))
    elif op == "not_an_object" and file_name.endswith(".jsonl"):
        lines = _lines(path)
        lines.insert(rng.randrange(len(lines) + 1), rng.choice((b"[1,2]\n", b"3\n", b'"s"\n', b"null\n", b"{}\n")))
        path.write_bytes(b"".join(lines))
    else:  # the op does not apply to this file: truncate instead
        path.write_bytes(data[: rng.randrange(len(data) + 1)])
        op = "truncate"
    return f"{op} {path.parent.name}/{file_name}"


def check_report(run_dir: Path) -> str | None:
    """None when the property holds, else what went wrong."""
    from click.testing import CliRunner

    from diagnose.cli import main

    result = CliRunner().invoke(main, ["report", str(run_dir), "--format", "json"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        exc = result.exception
        return f"exception {type(exc).__name__}: {exc}"
    if result.exit_code in (0, 1):
        try:
            notes = json.loads(result.stdout).get("notes", [])
        except (ValueError, AttributeError):
            return f"exit {result.exit_code} without a JSON document: {result.stdout[-300:]!r}"
        failed = [n for n in notes if " failed" in n and "was skipped" in n]
        return failed[0] if failed else None  # a rule tripped on a value the reader let through
    lines = [x for x in result.output.splitlines() if x.startswith("Error:")]
    if result.exit_code != 2 or len(lines) != 1:
        return f"exit {result.exit_code}: {result.output[-300:]!r}"
    if "internal error" in lines[0] or "Traceback" in result.output:
        return lines[0]
    return None


def run_case(bases: dict[str, Path], workdir: Path, seed: int) -> tuple[str, str | None]:
    rng = random.Random(seed)
    base = rng.choice(BASES)
    target = workdir / f"case{seed}"
    shutil.copytree(bases[base], target)
    try:
        done = [mutate(rng, target, rng.choice(OPS), rng.choice(FILES)) for _ in range(rng.randint(1, 3))]
        return f"{base}: {'; '.join(done)}", check_report(target)
    finally:
        shutil.rmtree(target, ignore_errors=True)


_BASES: dict[str, Path] = {}
_WORK: Path | None = None


def _init(root: str) -> None:
    global _WORK
    _BASES.update({name: Path(root) / "bases" / name for name in BASES})
    _WORK = Path(tempfile.mkdtemp(dir=root))


def _worker(seed: int) -> tuple[int, str, str | None]:
    return (seed, *run_case(_BASES, _WORK, seed))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0, help="First case's seed; case i uses seed + i.")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="diagnose-fuzz-"))
    make_bases(root / "bases")
    failures: Counter[str] = Counter()
    examples: dict[str, str] = {}
    with get_context("spawn").Pool(args.jobs, initializer=_init, initargs=(str(root),)) as pool:
        for done, (seed, what, failure) in enumerate(
                pool.imap_unordered(_worker, range(args.seed, args.seed + args.cases), chunksize=20), 1):
            if failure is not None:
                key = failure.split(":")[0][:80]
                failures[key] += 1
                examples.setdefault(key, f"seed {seed} ({what}): {failure}")
            if done % 1000 == 0:
                print(f"{done} cases, {sum(failures.values())} failures", flush=True)
    shutil.rmtree(root, ignore_errors=True)
    print(f"\ncases: {args.cases}, failures: {sum(failures.values())}, distinct: {len(failures)}")
    for key, count in failures.most_common():
        print(f"  {count:5d}  {examples[key][:400]}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
