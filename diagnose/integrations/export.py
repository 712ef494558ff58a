"""`diagnose export RUN_DIR --tensorboard OUT`: a run's series as TensorBoard scalars.

So a diagnose run can be looked at in the TensorBoard already open beside it. Written
with `torch.utils.tensorboard.SummaryWriter` (its file writer, one event per step holding
that step's scalars), at the step numbers and wall times of the run (start time + `t_s`),
under tag names that `diagnose report OUT` maps back
(docs/integrations.md has the table):

| tag | from |
| --- | --- |
| `train/loss` | `steps.loss` (steps where backward ran) |
| `val/loss`, `val/NAME` | evaluation metrics (`Monitor.log_metrics`) |
| `train_epoch/NAME` | train-phase metrics |
| `lr/group0`, `lr/group1`, ... | learning rate per parameter group |
| `grad_norm/total` | total gradient norm before clipping (`clip_norm`, else `grad_norm`) |
| `grad_norm/PARAM` | per-parameter gradient norm (grad_norms.arrow) |
| `weight_norm/PARAM` | per-parameter weight norm on sampled steps (param_norms.arrow) |
| `amp/loss_scale`, `amp/skipped` | GradScaler scale, 1 on steps it skipped |
| `memory/allocated_bytes`, `memory/reserved_bytes`, `memory/peak_bytes`, `memory/rss_bytes` | memory |
| `time/step_s`, `time/data_wait_s`, `perf/samples_per_s`, `perf/tokens_per_s` | speed |
| `epoch` | epoch at each step |

One rank: OUT holds one run. Several ranks: `OUT/rankK/`, one TensorBoard run per rank.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import click
import pandas as pd

from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables

__all__ = ["export", "export_tensorboard", "scalar_series"]

_STEP_TAGS = (
    ("grad_norm/total", None),  # filled from clip_norm / grad_norm below
    ("amp/loss_scale", "scale"),
    ("memory/allocated_bytes", "mem_alloc_bytes"),
    ("memory/reserved_bytes", "mem_reserved_bytes"),
    ("memory/peak_bytes", "mem_peak_bytes"),
    ("memory/rss_bytes", "rss_bytes"),
    ("time/step_s", "step_time_s"),
    ("time/data_wait_s", "data_wait_s"),
    ("perf/samples_per_s", "samples_per_s"),
    ("perf/tokens_per_s", "tokens_per_s"),
    ("epoch", "epoch"),
)


def _finite_or_nan(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce").astype("float64")


def scalar_series(tables: RunTables) -> dict[str, pd.Series]:
    """Tag -> values indexed by step, for one rank (pure: no writing)."""
    steps = tables.steps
    out: dict[str, pd.Series] = {}
    if "loss" in steps.columns:
        loss = _finite_or_nan(steps["loss"])
        if "micro_batches" in steps.columns:
            loss = loss[steps["micro_batches"].fillna(0).to_numpy() > 0]
        out["train/loss"] = loss
    for column in sorted((c for c in steps.columns if c.startswith("lr_")), key=lambda c: int(c[3:])):
        out[f"lr/group{column[3:]}"] = _finite_or_nan(steps[column]).dropna()
    for tag, column in _STEP_TAGS:
        if column is None:
            total = _total_norm(steps)
            if total is not None:
                out[tag] = total
        elif column in steps.columns:
            values = _finite_or_nan(steps[column]).dropna() if column != "scale" else _finite_or_nan(steps[column])
            if len(values.dropna()):
                out[tag] = values
    if "scale" in steps.columns and "skipped" in steps.columns and steps["scale"].notna().any():
        out["amp/skipped"] = steps["skipped"].astype("float64")[steps["scale"].notna().to_numpy()]
    nonfinite = tables.grad_nonfinite
    for index in tables.grad_norms.columns:
        name = str(tables.params.at[index, "name"]) if index in tables.params.index else f"p{index}"
        values = tables.grad_norms[index].astype("float64")
        bad = nonfinite[index].astype(bool) if index in nonfinite.columns else values.isna() & False
        out[f"grad_norm/{name}"] = values[values.notna() | bad]  # NaN: a non-finite norm; no gradient: left out
    for index in tables.param_norms.columns:
        name = str(tables.params.at[index, "name"]) if index in tables.params.index else f"p{index}"
        out[f"weight_norm/{name}"] = tables.param_norms[index].astype("float64")
    metrics = tables.metrics
    for (phase, name), rows in metrics.groupby([metrics["phase"].astype(str), metrics["name"].astype(str)], sort=False):
        rows = rows[rows["step"].notna()]
        values = pd.Series(rows["value"].astype("float64").to_numpy(), index=rows["step"].astype("int64").to_numpy())
        values = values[~values.index.duplicated(keep="last")]
        if phase in ("val", "valid", "validation", "eval"):
            tag = "val/loss" if name in ("val_loss", "loss", "valid_loss", "eval_loss") else f"val/{name}"
        elif phase in ("train", "training"):
            tag = f"train_epoch/{name}"
        else:
            tag = f"{phase}/{name}"
        out[tag] = values
    return out


def _total_norm(steps: pd.DataFrame) -> pd.Series | None:
    """The pre-clip total norm where clipping ran, the recorded total elsewhere."""
    series = [_finite_or_nan(steps[c]) for c in ("clip_norm", "grad_norm") if c in steps.columns]
    if not series:
        return None
    total = series[0] if len(series) == 1 else series[0].combine_first(series[1])
    total = total.dropna()
    return total if len(total) else None


def export_tensorboard(run: Run | str | os.PathLike[str], out: str | os.PathLike[str]) -> tuple[list[Path], int]:
    """Write `run` (a `Run`, or the path of a run directory) as TensorBoard event files
    under `out`. Returns the folders written (one per rank) and the number of scalars.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary
    from torch.utils.tensorboard import SummaryWriter

    if not isinstance(run, Run):
        run = read_run(run)
    root = Path(out)
    written, count = [], 0
    for rank, tables in run.ranks.items():
        folder = root if run.world_size == 1 else root / f"rank{rank}"
        start = tables.meta.get("started_at")
        start = float(start) if isinstance(start, (int, float)) and math.isfinite(start) else None
        times = _wall_times(tables, start)
        by_step: dict[int, list] = {}
        for tag, values in scalar_series(tables).items():
            for step, value in zip(values.index, values.to_numpy(dtype="float64")):
                by_step.setdefault(int(step), []).append(Summary.Value(tag=tag, simple_value=float(value)))
                count += 1
        writer = SummaryWriter(log_dir=str(folder), max_queue=1000)
        try:  # one event per step holding all its values: 30x faster than one add_scalar per value
            file_writer = writer._get_file_writer()
            for step in sorted(by_step):
                file_writer.add_summary(Summary(value=by_step[step]), step, times.get(step))
        finally:
            writer.close()
        written.append(folder)
    return written, count


def _wall_times(tables: RunTables, start: float | None) -> dict[int, float]:
    """Step -> Unix time of the step (start + t_s), so TensorBoard's time axis is the run's."""
    steps = tables.steps
    if start is None or "t_s" not in steps.columns:
        return {}
    t = _finite_or_nan(steps["t_s"]).dropna()
    return {int(s): start + float(v) for s, v in t.items()}


def _event_files(folder: Path) -> Iterable[Path]:
    return (p for p in folder.rglob("*") if p.is_file() and "tfevents" in p.name)


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--tensorboard", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              metavar="OUT", help="Write TensorBoard event files into this folder (view: tensorboard --logdir OUT).")
@click.option("--overwrite", is_flag=True,
              help="Write into a non-empty OUT, first deleting the TensorBoard event files under it.")
def export(run_dir: Path, out: Path, overwrite: bool) -> None:
    """Export a run's series to another tool's format (TensorBoard scalars).

    Loss, validation metrics, LR per group, gradient norms (total and per parameter),
    loss scale, memory and throughput, at the run's steps and wall times. `diagnose
    report OUT` reads them back.
    """
    from diagnose.cli import CliError, _one_line_errors

    @_one_line_errors
    def body() -> None:
        if out.exists() and not out.is_dir():
            raise CliError(f"{out}: exists and is not a directory")
        run = read_run(run_dir)  # an unreadable run fails before anything is written
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise CliError(f"{out} is not empty; choose another folder or pass --overwrite")
            for path in list(_event_files(out)):
                path.unlink()
        folders, count = export_tensorboard(run, out)
        click.echo(f"diagnose: wrote {count:,} scalars to {', '.join(map(str, folders))} "
                   f"(view: tensorboard --logdir {out})", err=True)

    body()
