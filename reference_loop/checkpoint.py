"""Checkpoints: atomic, complete, loadable with `torch.load(weights_only=True)`.

- Atomic: written to a temporary file in the same directory, fsynced, then `os.replace`d
  over the target; a crash mid-save leaves the previous checkpoint intact and no torn file.
- Complete: model, optimizer, scheduler, GradScaler, EMA, counters, history and every RNG
  that decides what happens next (torch CPU and CUDA, Python's `random`, NumPy's global
  generator, the training loader's shuffling generator). Resuming from it reproduces the
  uninterrupted run bit for bit on CPU.
- Safe to load: only tensors, numbers, strings, lists, tuples and dicts, so
  `weights_only=True` (no arbitrary unpickling) reads it. NumPy's state is converted to a
  tensor for that reason.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

_EPOCH_FILE = re.compile(r"^epoch(\d+)\.pt$")
BEST_NAME = "best.pt"


def atomic_save(obj: Any, path: str | Path) -> Path:
    """torch.save to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX); not possible on every platform/filesystem.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without unpickling arbitrary objects."""
    return torch.load(path, map_location=map_location, weights_only=True)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state the loop depends on, in weights_only-loadable types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    # Only when CUDA is in use: asking a CPU run for CUDA RNG states would create a CUDA
    # context (seconds, and GPU memory) on every GPU of the machine.
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Inverse of capture_rng. Call it last, after everything that draws random numbers
    while being built (model init, data generation)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    for key, gen in (generators or {}).items():
        gen.set_state(state["generators"][key])
    if "cuda" in state and torch.cuda.is_initialized():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """Saves `epochNNN.pt` files in `directory`, keeps the last `keep_last`, and `best.pt`."""

    def __init__(self, directory: str | Path, keep_last: int = 2, save_best: bool = True):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1; got {keep_last}")
        self.directory = Path(directory)
        self.keep_last, self.save_best = keep_last, save_best

    def epoch_path(self, epoch: int) -> Path:
        return self.directory / f"epoch{epoch:03d}.pt"

    @property
    def best_path(self) -> Path:
        return self.directory / BEST_NAME

    def kept(self) -> list[Path]:
        """Epoch checkpoints on disk, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _EPOCH_FILE.match(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        kept = self.kept()
        return kept[-1] if kept else None

    def save(self, state: dict[str, Any], epoch: int, *, is_best: bool = False,
             epoch_file: bool = True) -> list[Path]:
        """Write the epoch's checkpoint (unless `epoch_file` is False: a best-only save
        between regular ones) and best.pt if it is the best; prune old epoch files.
        Returns the paths written."""
        written = [atomic_save(state, self.epoch_path(epoch))] if epoch_file else []
        if is_best and self.save_best:
            # Saved again rather than hard-linked: the epoch file may be pruned later, and
            # links are not available on every filesystem. The models here are small.
            written.append(atomic_save(state, self.best_path))
        kept = self.kept()
        # Epoch files numbered past this one come from an earlier run that got further
        # (a resume from an older checkpoint): stale, and they would outrank this run's.
        stale = [p for p in kept if int(_EPOCH_FILE.match(p.name).group(1)) > epoch]
        current = [p for p in kept if p not in stale]
        for old in stale + current[: -self.keep_last]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        return written

    def clear(self) -> None:
        """Delete every epoch checkpoint, best.pt and interrupted.pt (a fresh run in a used
        directory)."""
        for path in self.kept() + [self.best_path, self.directory / "interrupted.pt"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
