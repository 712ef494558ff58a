"""Run scripts under the zero-code recorder and read back what it wrote."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "tests" / "scripts"


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expand(tokens: list[str]) -> list[str]:
    """Undo the run-length encoding of a calls list (`x*3` -> x, x, x)."""
    out: list[str] = []
    for token in tokens:
        match = re.fullmatch(r"(.*)\*(\d+)", token)
        out += [match.group(1)] * int(match.group(2)) if match else [token]
    return out


@dataclass
class Run:
    """One recorded run: the process result and the rank-0 files."""

    path: Path
    returncode: int = 0
    stdout: str = ""
    stderr: str = ""

    @property
    def rank(self) -> Path:
        return self.path / "rank0"

    @property
    def meta(self) -> list[dict]:
        return _lines(self.rank / "meta.jsonl")

    @property
    def status(self) -> dict:
        return [m for m in self.meta if m["type"] == "status"][-1]

    @property
    def objects(self) -> dict:
        return [m for m in self.meta if m["type"] == "objects"][-1]

    @property
    def steps(self) -> list[dict]:
        return _lines(self.rank / "steps.jsonl")

    @property
    def params(self) -> list[dict]:
        return _lines(self.rank / "params.jsonl")

    @property
    def events(self) -> list[dict]:
        return _lines(self.rank / "events.jsonl")

    def kind(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind]

    def calls_by_step(self) -> dict[int, list[str]]:
        by_step: dict[int, list[str]] = {}
        for record in self.kind("calls"):
            by_step.setdefault(record["step"], []).extend(expand(record["calls"]))
        return by_step

    @property
    def calls(self) -> list[str]:
        return [t for _, tokens in sorted(self.calls_by_step().items()) for t in tokens]


def env() -> dict:
    """The subprocess environment: the repo importable, one thread (reproducible, fair)."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out.setdefault("OMP_NUM_THREADS", "1")
    return out


def record(script: Path | str, out: Path, *args: str, timeout: float = 180) -> Run:
    """`python -m diagnose.zerocode --out OUT SCRIPT ARGS` in a fresh process."""
    script = SCRIPTS / script if isinstance(script, str) else script
    proc = subprocess.run(
        [sys.executable, "-m", "diagnose.zerocode", "--out", str(out), str(script), *args],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    return Run(out, proc.returncode, proc.stdout, proc.stderr)
