"""Write a syntactically real run directory of N steps x P parameters, without a recorder.

Used by the reader's tests, the rules' tests and the benchmark (`bench/report_speed.py`).
It follows docs/run-directory.md with plain file writes (json, pyarrow) and shares nothing
with the recorder but the file names in `schema.py`, so a drift between the recorder and the
documented format shows up as a failing test instead of being copied on both sides.

The default run is healthy: a loss that falls smoothly from ~2.4 to ~0.4, finite gradient
norms, a one-cycle learning rate, an evaluation phase at the end of every epoch. Arguments
bend it into the faulty shapes the tests need (`loss=` with NaNs, `status="running"`, ...).
A step whose loss is not finite gets NaN gradient norms and, with `amp`, a GradScaler that
skips it (the scale halves), as in a real run.
"""
from __future__ import annotations

import json
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from diagnose.rundir import schema

_SCALE = 65536.0
_BATCH = 32
_SEQ_LEN = 128
_WIDTH = 64


def write_synthetic_run(
    path: str | os.PathLike[str],
    *,
    steps: int = 100,
    params: int = 8,
    ranks: int = 1,
    amp: bool = False,
    loss: Sequence[float] | None = None,
    status: str = schema.STATUS_FINISHED,
    steps_per_epoch: int = 50,
    grad_every: int = 1,
    param_every: int = 10,
    chunk_rows: int = 1000,
    seed: int = 0,
    pid: int | None = None,
) -> Path:
    """Write a run directory at `path` (created) and return it.

    Args:
        steps: optimizer steps per rank.
        params: parameter tensors (alternating `layers.K.weight` / `layers.K.bias`).
        ranks: number of `rankN/` folders (world size).
        amp: record a GradScaler (scale fields and scaler calls).
        loss: the loss per step, overriding the healthy curve (NaN allowed); its length
            must be `steps`.
        status: final status line; `"running"` writes no final line after the first.
        steps_per_epoch: an evaluation phase and a metrics record close each epoch.
        grad_every, param_every: steps between rows of grad_norms.arrow / param_norms.arrow.
        chunk_rows: rows per Arrow record batch.
        seed: seeds the noise; the same arguments always write the same bytes
            (apart from the host and pid of the start record).
        pid: the process id of the start record (default: this process, which is alive).
    """
    if loss is not None and len(loss) != steps:
        raise ValueError(f"loss has {len(loss)} values for {steps} steps")
    root = Path(path)
    for rank in range(ranks):
        rank_dir = root / schema.rank_dir_name(rank)
        rank_dir.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed + rank)
        series = _Series.healthy(rng, steps, params, loss)
        _write_meta(rank_dir, rank, ranks, steps, params, amp, status, grad_every, param_every, pid)
        _write_params(rank_dir, params)
        _write_steps(rank_dir, series, amp, steps_per_epoch)
        _write_events(rank_dir, series, amp, steps_per_epoch, params)
        grad_rows = np.arange(0, steps, grad_every)
        _write_arrow(rank_dir / schema.GRAD_NORMS_FILE, grad_rows, series.grad_norms[grad_rows], chunk_rows)
        param_rows = np.arange(0, steps, param_every)
        _write_arrow(rank_dir / schema.PARAM_NORMS_FILE, param_rows, series.param_norms[param_rows], chunk_rows)
    return root


@dataclass(frozen=True)
class _Series:
    """The numbers of one rank, one entry (or row) per step."""

    loss: np.ndarray
    scale: np.ndarray  # GradScaler scale at the step and after update(), if amp
    scale_after: np.ndarray
    lr: np.ndarray
    grad_norms: np.ndarray  # (steps, params) float32
    param_norms: np.ndarray  # (steps, params) float32
    grad_norm: np.ndarray
    step_time_s: np.ndarray
    data_wait_s: np.ndarray
    rss_bytes: np.ndarray

    @classmethod
    def healthy(cls, rng: np.random.Generator, steps: int, params: int, loss: Sequence[float] | None) -> _Series:
        t = np.arange(steps, dtype=np.float64)
        tau = max(steps / 4.0, 1.0)
        if loss is None:
            noise = 1.0 + 0.03 * rng.standard_normal(steps)
            loss_arr = (0.4 + 2.0 * np.exp(-t / tau)) * noise
        else:
            loss_arr = np.asarray(loss, dtype=np.float64)
        # One-cycle: linear warm-up over the first 10%, cosine down to 1% of the peak.
        warm = max(int(steps * 0.1), 1)
        peak = 3e-4
        lr = np.where(
            t < warm,
            peak * (t + 1) / warm,
            peak * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * (t - warm) / max(steps - warm, 1)))),
        )
        base = np.exp(rng.normal(-2.0, 0.5, params))  # per-tensor gradient scale
        decay = 0.5 + 0.5 * np.exp(-t / tau)
        grad = base[None, :] * decay[:, None] * np.exp(0.1 * rng.standard_normal((steps, params)))
        weight = np.sqrt(np.arange(1, params + 1))[None, :] * (1.0 + 0.1 * t / max(steps, 1))[:, None]
        bad = ~np.isfinite(loss_arr)
        grad[bad, :] = np.nan  # a non-finite loss has non-finite gradients
        # GradScaler: halve the scale after each step whose gradients were not finite.
        scale_after = _SCALE * 0.5 ** np.cumsum(bad)
        scale = np.concatenate([[_SCALE], scale_after[:-1]])
        return cls(
            scale=scale,
            scale_after=scale_after,
            loss=loss_arr,
            lr=lr,
            grad_norms=grad.astype(np.float32),
            param_norms=weight.astype(np.float32),
            grad_norm=np.sqrt((grad.astype(np.float64) ** 2).sum(axis=1)),
            step_time_s=0.05 + 0.002 * rng.random(steps),
            data_wait_s=0.001 + 0.0005 * rng.random(steps),
            rss_bytes=(600e6 + 1e6 * rng.random(steps)).astype(np.int64),
        )


def _json_number(value: float) -> float | str:
    """JSON has no NaN/Inf literal: the format writes them as strings."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return float(value)


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, separators=(",", ":")) + "\n" for r in records)


def _write_meta(
    rank_dir: Path, rank: int, world_size: int, steps: int, params: int, amp: bool, status: str,
    grad_every: int, param_every: int, pid: int | None,
) -> None:
    started_at = 1_700_000_000.0
    start = {
        "type": "start", "schema_version": schema.SCHEMA_VERSION, "run_id": "5ynth371c",
        "started_at": started_at, "command": ["python", "train.py", "--synthetic"],
        "cwd": "/tmp", "host": socket.gethostname(), "pid": os.getpid() if pid is None else pid,
        "config": {"steps": steps, "batch_size": _BATCH, "lr": 3e-4},
        "versions": {"python": "3.11.7", "torch": "2.13.0", "cuda": None, "diagnose": "0.1.0"},
        "device": "cpu", "rank": rank, "local_rank": rank, "world_size": world_size,
        "options": {"grad_every": grad_every, "param_every": param_every},
    }
    groups = [
        {"lr": 3e-4, "weight_decay": wd, "params": list(range(first, params, 2))}
        for first, wd in ((0, 0.01), (1, 0.0))
    ]
    objects: dict[str, Any] = {
        "type": "objects",
        "models": [{"index": 0, "class": "MLP"}],
        "optimizers": [{"index": 0, "class": "AdamW", "groups": groups}],
        "schedulers": [{"index": 0, "class": "OneCycleLR", "per_iteration": True, "total_steps": steps}],
        "scalers": [{"index": 0, "enabled": True, "init_scale": _SCALE, "growth_interval": 2000}] if amp else [],
    }
    records = [start, objects, {"type": "status", "status": schema.STATUS_RUNNING, "at": started_at}]
    if status != schema.STATUS_RUNNING:
        final: dict[str, Any] = {"type": "status", "status": status, "at": started_at + 0.05 * steps}
        if status == schema.STATUS_CRASHED:
            final["error"] = "RuntimeError: synthetic crash"
        records.append(final)
    _write_jsonl(rank_dir / schema.META_FILE, records)


def _write_params(rank_dir: Path, params: int) -> None:
    records = []
    for i in range(params):
        layer, is_bias = divmod(i, 2)
        records.append({
            "index": i, "name": f"layers.{layer}.{'bias' if is_bias else 'weight'}",
            "shape": [_WIDTH] if is_bias else [_WIDTH, _WIDTH], "numel": _WIDTH if is_bias else _WIDTH * _WIDTH,
            "dtype": "torch.float32", "module": f"layers.{layer}", "module_type": "Linear",
            "requires_grad": True, "optimizer": 0, "group": is_bias,
        })
    _write_jsonl(rank_dir / schema.PARAMS_FILE, records)


def _write_steps(rank_dir: Path, s: _Series, amp: bool, steps_per_epoch: int) -> None:
    t_s = np.cumsum(s.step_time_s)
    records = []
    for i in range(len(s.loss)):
        records.append({
            "step": i, "epoch": i // steps_per_epoch, "t_s": round(float(t_s[i]), 6),
            "loss": _json_number(s.loss[i]), "micro_batches": 1,
            "lr": [float(s.lr[i]), float(s.lr[i])],
            "scale": float(s.scale[i]) if amp else None, "scale_after": float(s.scale_after[i]) if amp else None,
            "grad_norm": _json_number(s.grad_norm[i]), "clip_norm": _json_number(s.grad_norm[i]), "clip_max": 1.0,
            "step_time_s": round(float(s.step_time_s[i]), 6), "data_wait_s": round(float(s.data_wait_s[i]), 6),
            "samples": _BATCH, "tokens": _BATCH * _SEQ_LEN,
            "mem_alloc_bytes": None, "mem_reserved_bytes": None, "mem_peak_bytes": None,
            "rss_bytes": int(s.rss_bytes[i]),
        })
        if not np.isfinite(s.grad_norms[i]).all():  # in backward order: last parameter first
            records[-1]["nonfinite_grads"] = [j for j in range(s.grad_norms.shape[1] - 1, -1, -1)
                                              if not np.isfinite(s.grad_norms[i, j])]
    _write_jsonl(rank_dir / schema.STEPS_FILE, records)


def _train_calls(amp: bool) -> list[str]:
    if amp:
        return ["opt0.zero_grad", "model0.forward[TGB]", "scaler0.scale", "backward", "scaler0.unscale_",
                "clip_grad_norm_", "scaler0.step", "scaler0.update", "sched0.step"]
    return ["opt0.zero_grad", "model0.forward[TGB]", "backward", "clip_grad_norm_", "opt0.step", "sched0.step"]


_EVAL_CALLS = ["phase:val", "model0.eval", "model0.forward[EN]", "model0.forward[EN]", "model0.train", "phase:train"]


def _write_events(rank_dir: Path, s: _Series, amp: bool, steps_per_epoch: int, params: int) -> None:
    t_s = np.cumsum(s.step_time_s)
    train = _train_calls(amp)
    records: list[dict[str, Any]] = []
    for i in range(len(s.loss)):
        t = round(float(t_s[i]), 6)
        epoch, within = divmod(i, steps_per_epoch)
        if within == 0:
            records.append({"kind": "epoch", "step": i, "t_s": t, "epoch": epoch})
        if i == 0:
            records.append({"kind": "backward_order", "step": 0, "t_s": t, "order": list(range(params - 1, -1, -1))})
        calls = list(train)
        epoch_end = within == steps_per_epoch - 1 or i == len(s.loss) - 1
        if epoch_end:
            calls += _EVAL_CALLS
            records.append({"kind": "phase", "step": i, "t_s": t, "phase": "val"})
            val_loss = float(s.loss[i]) * 1.05
            records.append({"kind": "metrics", "step": i, "t_s": t, "phase": "val", "epoch": epoch,
                            "metrics": {"val_loss": _json_number(val_loss), "val_acc": 0.5}})
            records.append({"kind": "phase", "step": i, "t_s": t, "phase": "train"})
            records.append({"kind": "checkpoint", "step": i, "t_s": t, "path": f"ckpt_{epoch}.pt",
                            "keys": ["model", "optimizer", "scheduler", "step"]})
        records.append({"kind": "calls", "step": i, "calls": calls})
    _write_jsonl(rank_dir / schema.EVENTS_FILE, records)


def _write_arrow(path: Path, steps: np.ndarray, values: np.ndarray, chunk_rows: int) -> None:
    n_params = values.shape[1]
    arrow_schema = pa.schema(
        [pa.field("step", pa.int64())] + [pa.field(schema.param_column(i), pa.float32()) for i in range(n_params)]
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, arrow_schema) as writer:
        for start in range(0, len(steps), chunk_rows):
            rows = slice(start, start + chunk_rows)
            columns = [pa.array(steps[rows].astype(np.int64))]
            columns += [pa.array(values[rows, j]) for j in range(n_params)]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=arrow_schema))
