"""Global norms of sharded parameters (FSDP2 `fully_shard`, DTensor), put together offline.

Under FSDP2 every rank holds a shard of each parameter and of its gradient. The recorder
takes the norm of its own shard (`DTensor.to_local()`: no collective on the training's
hot path) and writes, per parameter, `shards`: into how many distinct pieces the
parameter is split (params.jsonl). Every rank holds one piece, so each piece is held by
`world_size / shards` ranks, and the global norm of a parameter at a step is

    sqrt(shards / world_size * sum over ranks of local_norm ** 2)

(an FSDP mesh over all ranks: shards == world_size, the plain sum; HSDP's replicas are
counted once). `combine_shards` replaces, in every rank's tables, the sharded
parameters' columns of `grad_norms`, `param_norms` and `update_norms` (‖Δw‖ is sharded
like w) with these global norms (the
same on every rank, as under DDP), recomputes `steps.grad_norm` from them and keeps the
rank's own as `steps.grad_norm_local`. Rules therefore see global numbers on every rank.
Losses, step times and memory stay each rank's own. Needs every rank's folder: with
some missing (or a single `rankN/` folder read) the norms stay local and a note says so.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rundir.tables import Run



_NONFINITE = {"grad_norms": "grad_nonfinite", "param_norms": "param_nonfinite"}
"""The mask that tells a series' real NaN/Inf from its absent values."""

def _sharded(run: Run) -> dict[int, float]:
    """{parameter index: shards} from the lowest rank's parameter table."""
    params = run.first.params
    if "shards" not in params.columns:
        return {}
    shards = pd.to_numeric(params["shards"], errors="coerce")
    return {int(i): float(n) for i, n in shards.items() if n == n and n >= 1}


def _combine(frames: list[pd.DataFrame], columns: list[int], scale: pd.Series) -> pd.DataFrame:
    """sqrt(scale * sum of squares) over the ranks' frames, at the steps all of them hold."""
    steps = frames[0].index
    for frame in frames[1:]:
        steps = steps.intersection(frame.index)
    squares = sum(frame.loc[steps, columns].to_numpy(dtype=np.float64) ** 2 for frame in frames)
    return pd.DataFrame(np.sqrt(squares * scale.loc[columns].to_numpy()), index=steps, columns=columns)


def _replace(frame: pd.DataFrame, combined: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the combined columns in place (NaN at steps not every rank holds)."""
    out = frame.copy()
    columns = list(combined.columns)
    out[columns] = combined.reindex(frame.index)
    return out


def combine_shards(run: Run) -> None:
    """Put the global norms of sharded parameters into every rank's tables (in place);
    a note in `run.notes` says what was done or why not."""
    sharded = _sharded(run)
    if not sharded:
        return
    world = run.first.meta.get("world_size")
    if not isinstance(world, int) or sorted(run.ranks) != list(range(world)):
        run.notes.append(f"{len(sharded)} parameter(s) are sharded (FSDP/DTensor) and not every rank's folder "
                         "was read: their gradient and weight norms are each rank's local shard's")
        return
    scale = pd.Series({i: n / world for i, n in sharded.items()})
    tables = [run.ranks[r] for r in range(world)]
    for name in ("grad_norms", "param_norms", "update_norms"):
        if not all(hasattr(t, name) for t in tables):
            continue
        frames = [getattr(t, name) for t in tables]
        columns = [c for c in sharded if all(c in f.columns for f in frames)]
        if not columns or any(f.empty for f in frames):
            continue
        combined = _combine(frames, columns, scale)
        mask = _NONFINITE.get(name)
        if mask and all(set(columns) <= set(getattr(t, mask).columns) for t in tables):
            nonfinite = pd.concat([getattr(x, mask)[columns] for x in tables]).groupby(level=0).any()
        else:
            mask = None
        for t in tables:
            setattr(t, name, _replace(getattr(t, name), combined))
            if mask:  # a shard's NaN/Inf makes the global norm one on every rank
                merged = getattr(t, mask).copy()
                merged[columns] = nonfinite.reindex(merged.index, fill_value=False)
                setattr(t, mask, merged)
    columns = [c for c in sharded if all(c in t.grad_norms.columns for t in tables)]
    for t in tables:
        steps, norms = t.steps, t.grad_norms
        if "grad_norm" not in steps.columns or norms.empty or not columns:
            continue
        steps["grad_norm_local"] = steps["grad_norm"]
        total = np.sqrt(np.nansum(norms.to_numpy(dtype=np.float64) ** 2, axis=1))
        total[norms[columns].isna().all(axis=1).to_numpy()] = np.nan  # a step not every rank recorded
        steps["grad_norm"] = pd.Series(total, index=norms.index).reindex(steps.index)
    run.notes.append(f"{len(sharded)} sharded parameter(s) (FSDP/DTensor): gradient and weight norms put together "
                     f"from the {world} ranks' local shards (global numbers; steps.grad_norm_local is each rank's own)")
