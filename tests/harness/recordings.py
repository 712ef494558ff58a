"""Record each fault of a harness once per process and read it once: the tests of several
rules share one recording (derive changed copies of the tables with `dataclasses.replace`,
never edit them in place)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import RunTables
from tests.harness.threads import one_torch_thread


class Recordings:
    """`faults`: name -> an object whose `fn(run_dir, seed)` records that run."""

    def __init__(self, faults: Mapping[str, Any]) -> None:
        self.faults = faults
        self._recorded: dict[tuple[str, int], Path] = {}
        self._read: dict[Path, RunTables] = {}

    def record(self, name: str, run_dir: Path, seed: int = 0) -> Path:
        """Record `name` into `run_dir` and return it. Torch runs on one thread meanwhile
        (these tiny models gain nothing from more, and on a busy machine torch's spinning
        threads make a run 10x slower); the thread count is restored after."""
        with one_torch_thread():
            self.faults[name].fn(Path(run_dir), seed)
        return Path(run_dir)

    def recorded(self, name: str, root: Path, seed: int = 0) -> Path:
        """`record` once per process: later calls return the directory recorded first."""
        key = (name, seed)
        if key not in self._recorded:
            self._recorded[key] = self.record(name, Path(root) / f"{name}_s{seed}", seed)
        return self._recorded[key]

    def tables(self, name: str, root: Path, seed: int = 0) -> RunTables:
        """Rank 0's tables of `name`, recorded and read once per process."""
        path = self.recorded(name, root, seed)
        if path not in self._read:
            self._read[path] = read_run(path).first
        return self._read[path]
