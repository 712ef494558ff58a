"""Read a TensorBoard log directory into the run tables the rules read.

    run = read_logdir("lightning_logs/version_0", tag_map=["train/mse=loss"])
    findings, notes = run_rules(run)

Events are read with tensorboard's own `EventAccumulator` (every scalar kept, no
sampling; a restart that logs steps again replaces the old values, as TensorBoard shows
them), from every event file of the run's folder. `SummaryWriter.add_scalars` children
(`LOGDIR/loss_train/`, tag `loss`) are folded back into their parent as `loss/train`.
Tags become series by `tb_tags` (automatic detection, `--tag-map`), then:

- step-level fields become the step table, indexed by the logged `global_step`: a run
  that logs every 50 steps gives one row per 50 steps; `micro_batches` is 1 where a loss
  was logged; `scale_after` is the next logged scale (so a fall between two logged
  points reads as one skipped step); `step_time_s`, unless logged, is the wall time
  between two logged points over the steps between them;
- per-layer gradient norms become `grad_norms`, per-layer weight norms `param_norms`, with
  one parameter per layer name (the tag's layer part; shapes are not known, so
  shape-based rules leave them out);
- validation and epoch-averaged training losses become `metrics` (phase `val` /
  `train`), with the epoch logged at that step when an `epoch` tag exists.

What a TensorBoard log does not hold — the call order, modes, the parameter table's
shapes and optimizers, events — stays empty, and `run_rules` says which rules that skips.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from diagnose.integrations import tb_tags
from diagnose.rundir.reader import RunDirError
from diagnose.rundir.tables import METRICS_COLUMNS, Run, RunTables, empty_metrics, empty_params

__all__ = ["EVENT_FILE_MARK", "find_runs", "is_logdir", "read_logdir", "read_scalars", "scalars_to_run"]

EVENT_FILE_MARK = "tfevents"
"""Event files are named `events.out.tfevents.<time>.<host>...`."""


@dataclass(frozen=True)
class Scalars:
    """The scalars of one TensorBoard run: tag -> frame (`step`, `wall_time`, `value`)."""

    path: Path
    series: dict[str, pd.DataFrame]


def _has_events(folder: Path) -> bool:
    try:
        return any(EVENT_FILE_MARK in p.name and p.is_file() for p in folder.iterdir())
    except OSError:
        return False


def is_logdir(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder with TensorBoard event files in it or below it."""
    root = Path(path)
    return root.is_dir() and bool(_event_folders(root))


def _event_folders(root: Path) -> list[Path]:
    found = []
    for folder, _dirs, files in os.walk(root):
        if any(EVENT_FILE_MARK in f for f in files):
            found.append(Path(folder))
    return sorted(found)


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """The TensorBoard runs under `logdir`: folders holding event files, except
    `add_scalars` children (they belong to their parent's run)."""
    folders = _event_folders(Path(logdir))
    runs = []
    for folder in folders:
        parent = folder.parent
        if parent in folders and folder != Path(logdir) and _is_add_scalars_child(folder):
            continue
        runs.append(folder)
    return runs


def _is_add_scalars_child(folder: Path, acc=None) -> bool:
    """`add_scalars("loss", {"train": ...})` writes tag `loss` into `PARENT/loss_train/`."""
    try:
        tags = (acc if acc is not None else _accumulate(folder)).Tags().get("scalars", [])
    except Exception:  # noqa: BLE001 - unreadable: treat as its own run, which will say so
        return False
    return bool(tags) and all(folder.name.startswith(t.replace("/", "_") + "_") for t in tags)


def _accumulate(folder: Path):
    try:
        from tensorboard.backend.event_processing import event_accumulator
    except ImportError:
        raise RunDirError("reading TensorBoard logs needs the tensorboard package: "
                          "pip install 'diagnose[tensorboard]'") from None
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc.Reload()
    return acc


def _series(acc, tag: str, kind: str) -> pd.DataFrame:
    if kind == "scalars":
        events = acc.Scalars(tag)
        rows = [(e.step, e.wall_time, e.value) for e in events]
    else:  # scalar tensors (tf.summary.scalar in TF2, some writers)
        from tensorboard.util import tensor_util

        rows = []
        for e in acc.Tensors(tag):
            value = tensor_util.make_ndarray(e.tensor_proto)
            if value.size == 1 and np.issubdtype(value.dtype, np.number):
                rows.append((e.step, e.wall_time, float(value.reshape(()))))
    frame = pd.DataFrame(rows, columns=["step", "wall_time", "value"])
    frame["step"] = frame["step"].astype("int64")
    frame["value"] = frame["value"].astype("float64")
    return frame


def _scalar_tensor_tags(acc) -> list[str]:
    tags = []
    for tag in acc.Tags().get("tensors", []):
        try:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name == "scalars":
                tags.append(tag)
        except Exception:  # noqa: BLE001
            continue
    return tags


def read_scalars(run_folder: str | os.PathLike[str]) -> Scalars:
    """Every scalar series of one run folder (and its `add_scalars` children)."""
    folder = Path(run_folder)
    series: dict[str, pd.DataFrame] = {}

    def load(acc, prefix_for: str | None) -> None:
        kinds = [(t, "scalars") for t in acc.Tags().get("scalars", [])]
        kinds += [(t, "tensors") for t in _scalar_tensor_tags(acc)]
        for tag, kind in kinds:
            name = tag
            if prefix_for is not None:  # loss + PARENT/loss_train -> loss/train
                name = f"{tag}/{prefix_for[len(tag.replace('/', '_')) + 1:]}"
            frame = _series(acc, tag, kind)
            if len(frame):
                series[name] = frame

    load(_accumulate(folder), None)
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and _has_events(p)):
        acc = _accumulate(child)  # read once: to tell an add_scalars child, then its values
        if _is_add_scalars_child(child, acc):
            load(acc, child.name)
    return Scalars(folder, series)


def read_logdir(path: str | os.PathLike[str], tag_map: list[str] | tuple[str, ...] = ()) -> Run:
    """Read the one TensorBoard run at or under `path` into a `Run`.

    Raises:
        RunDirError: no event files, several runs (the message lists them), or no tag
            that maps to anything.
        tb_tags.TagMapError: a malformed `--tag-map` entry.
    """
    root = Path(path)
    parsed = tb_tags.parse_tag_map(list(tag_map))
    runs = find_runs(root)
    if not runs:
        raise RunDirError(f"{root}: no TensorBoard event files (events.out.tfevents.*) in it")
    if len(runs) > 1:
        names = ", ".join(str(r.relative_to(root)) or "." for r in runs[:6]) + (", ..." if len(runs) > 6 else "")
        raise RunDirError(f"{root} holds {len(runs)} TensorBoard runs ({names}); report one at a time, "
                          f"e.g. diagnose report {runs[0]}")
    return scalars_to_run(read_scalars(runs[0]), parsed)


def scalars_to_run(scalars: Scalars, tag_map: list[tuple[str, tb_tags.Target]] = ()) -> Run:
    """Build the run tables from one run's scalar series (see the module docstring)."""
    counts = {tag: len(frame) for tag, frame in scalars.series.items()}
    mapping, notes = tb_tags.resolve(counts, list(tag_map))
    if not counts:
        raise RunDirError(f"{scalars.path}: its event files hold no scalar values (unreadable, or only "
                          "images, histograms or graphs)")
    if not mapping:
        shown = ", ".join(list(counts)[:12]) + (", ..." if len(counts) > 12 else "")
        raise RunDirError(f"{scalars.path}: no TensorBoard tag was recognised ({shown}); "
                          "name them with --tag-map TAG=FIELD (e.g. --tag-map train/mse=loss)")
    series = {tag: _last_per_step(scalars.series[tag]) for tag in mapping}
    epoch_tag = next((t for t, target in mapping.items() if target.field == "epoch"), None)
    epochs = series[epoch_tag].set_index("step")["value"] if epoch_tag else None
    steps = _steps(series, mapping, epochs)
    layers = _layers(series, mapping)
    tables = RunTables(
        rank=0, path=scalars.path, meta=_meta(scalars, mapping, steps), objects={},
        params=layers.params, steps=steps, grad_norms=layers.grad_norms, grad_nonfinite=layers.grad_nonfinite,
        param_norms=layers.param_norms,
        metrics=_metrics(series, mapping, epochs),
    )
    labels = _labels(mapping)
    per_layer = {"layer_grad_norm": "gradient-norm", "layer_weight_norm": "weight-norm"}
    used = ", ".join(f"{tag} -> {labels[tag]}" for tag in mapping if mapping[tag].field not in per_layer)
    for field, what in per_layer.items():
        tags = [t for t, target in mapping.items() if target.field == field]
        if tags:
            used += (f"{', ' if used else ''}{len(tags)} per-layer {what} tag(s) -> {labels[tags[0]].partition(':')[0]}"
                     f":NAME ({', '.join(tags[:3])}{', ...' if len(tags) > 3 else ''})")
    unused = [t for t in counts if t not in mapping]
    notes.insert(0, f"TensorBoard log: read {used}")
    if unused:
        notes.insert(1, f"TensorBoard tags not used: {', '.join(unused[:20])}{', ...' if len(unused) > 20 else ''} "
                        "(map them with --tag-map TAG=FIELD)")
    return Run(path=scalars.path, ranks={0: tables}, notes=notes)


def _lr_tags(mapping: dict[str, tb_tags.Target]) -> list[str]:
    """LR tags in parameter-group order: `lr:N` ones at N, detected ones by their sort key."""
    return sorted((t for t, target in mapping.items() if target.field == "lr"),
                  key=lambda t: (isinstance(mapping[t].key, str), mapping[t].key))


def _labels(mapping: dict[str, tb_tags.Target]) -> dict[str, str]:
    """Tag -> the FIELD it was read as, as `--tag-map` would write it."""
    labels = {}
    for group, tag in enumerate(_lr_tags(mapping)):
        key = mapping[tag].key
        labels[tag] = f"lr:{key if isinstance(key, int) else group}"
    for tag, target in mapping.items():
        if target.field in ("layer_grad_norm", "layer_weight_norm"):
            labels[tag] = f"{target.field[len('layer_'):]}:{target.key}"
        elif tag not in labels:
            labels[tag] = target.field
    return labels


def _last_per_step(frame: pd.DataFrame) -> pd.DataFrame:
    """One value per step: the last one written (a restart that logged it again)."""
    return frame.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True)


def _steps(series: dict[str, pd.DataFrame], mapping: dict[str, tb_tags.Target],
           epochs: pd.Series | None) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}
    walls: pd.Series | None = None
    for group, tag in enumerate(_lr_tags(mapping)):
        key = mapping[tag].key
        columns[f"lr_{key if isinstance(key, int) else group}"] = series[tag].set_index("step")["value"]
    for tag, target in mapping.items():
        if target.field in tb_tags.STEP_FIELDS and target.field != "epoch":
            frame = series[tag].set_index("step")
            columns[target.field] = frame["value"] * target.factor
            if target.field == "loss" or walls is None:
                walls = frame["wall_time"]
    if not columns:
        frame = pd.DataFrame(index=pd.Index([], dtype="int64", name="step"))
        frame["skipped"] = pd.Series(dtype=bool)
        return frame
    frame = pd.DataFrame(columns)
    frame.index = frame.index.astype("int64")
    frame.index.name = "step"
    frame = frame.sort_index()
    if epochs is not None:
        frame["epoch"] = epochs.reindex(frame.index, method="ffill") if epochs.index.is_monotonic_increasing else np.nan
    if "loss" in frame.columns:  # 1 where a loss was logged, NaN or not (nonfinite-loss reads both)
        logged = next(series[t]["step"] for t, target in mapping.items() if target.field == "loss")
        frame["micro_batches"] = frame.index.isin(logged.to_numpy()).astype("int64")
    if "scale" in frame.columns:
        scale = frame["scale"].dropna()
        frame["scale_after"] = scale.shift(-1).reindex(frame.index)
        frame["skipped"] = (frame["scale_after"] < frame["scale"]).fillna(False).astype(bool)
    else:
        frame["skipped"] = False
    if "step_time_s" not in frame.columns and walls is not None and len(walls) > 1:
        walls = walls.sort_index()
        per_step = walls.diff() / pd.Series(walls.index, index=walls.index).diff()
        frame["step_time_s"] = per_step.where(per_step > 0).reindex(frame.index)
    if walls is not None and len(walls):
        frame["t_s"] = (walls - walls.min()).reindex(frame.index)
    if "samples_per_s" in frame.columns and "step_time_s" in frame.columns:
        frame["samples"] = frame["samples_per_s"] * frame["step_time_s"]
    return frame


@dataclass(frozen=True)
class _Layers:
    """What per-layer tags give: the parameter table and the per-parameter tables."""

    params: pd.DataFrame
    grad_norms: pd.DataFrame
    grad_nonfinite: pd.DataFrame
    param_norms: pd.DataFrame


def _empty_series() -> pd.DataFrame:
    return pd.DataFrame(index=pd.Index([], dtype="int64", name="step"), dtype=float)


def _layers(series: dict[str, pd.DataFrame], mapping: dict[str, tb_tags.Target]) -> _Layers:
    """One parameter per layer name, in first-seen order (the order the logger wrote
    them), shared by its gradient-norm and weight-norm tags. A step a layer was not
    logged at is NaN in the norms, but not non-finite."""
    names: dict[str, int] = {}
    grads: dict[int, pd.Series] = {}
    weights: dict[int, pd.Series] = {}
    for tag, target in mapping.items():
        if target.field not in ("layer_grad_norm", "layer_weight_norm"):
            continue
        index = names.setdefault(str(target.key), len(names))
        (grads if target.field == "layer_grad_norm" else weights)[index] = series[tag].set_index("step")["value"]
    if not names:
        return _Layers(empty_params(), _empty_series(), _empty_series().astype(bool), _empty_series())
    rows = [{"index": index, "name": name, "shape": None, "numel": pd.NA, "dtype": None,
             "module": name.rpartition(".")[0], "module_type": "", "requires_grad": True,
             "optimizer": pd.NA, "group": pd.NA, "backward_rank": pd.NA} for name, index in names.items()]
    params = pd.DataFrame(rows).set_index("index")
    for column in ("numel", "optimizer", "group", "backward_rank"):
        params[column] = params[column].astype("Int64")
    grad_norms = _table(grads)
    bad = pd.DataFrame({i: pd.Series(~np.isfinite(c.to_numpy(dtype="float64")), index=c.index)
                        for i, c in grads.items()})
    bad = bad.reindex(grad_norms.index).fillna(False).astype(bool) if grads else grad_norms.astype(bool)
    return _Layers(params, grad_norms, bad, _table(weights))


def _table(columns: dict[int, pd.Series]) -> pd.DataFrame:
    if not columns:
        return _empty_series()
    table = pd.DataFrame(columns).sort_index().astype("float64")
    table.index = table.index.astype("int64")
    table.index.name = "step"
    return table


def _metrics(series: dict[str, pd.DataFrame], mapping: dict[str, tb_tags.Target],
             epochs: pd.Series | None) -> pd.DataFrame:
    rows = []
    for tag, target in mapping.items():
        if target.field not in ("val_loss", "epoch_loss"):
            continue
        phase, name = ("val", "val_loss") if target.field == "val_loss" else ("train", "train_loss")
        for step, value in zip(series[tag]["step"], series[tag]["value"]):
            epoch = None
            if epochs is not None and len(epochs):
                at = epochs[epochs.index <= step]
                epoch = int(at.iloc[-1]) if len(at) and np.isfinite(at.iloc[-1]) else None
            rows.append((int(step), epoch, phase, name, float(value) * target.factor))
    if not rows:
        return empty_metrics()
    frame = pd.DataFrame(rows, columns=list(METRICS_COLUMNS))
    frame["step"] = frame["step"].astype("Int64")
    return frame.sort_values("step", kind="stable").reset_index(drop=True)


def _meta(scalars: Scalars, mapping: dict[str, tb_tags.Target], steps: pd.DataFrame) -> dict:
    walls = [f["wall_time"] for f in scalars.series.values() if len(f)]
    started = float(min(w.min() for w in walls)) if walls else None
    ended = float(max(w.max() for w in walls)) if walls else None
    return {
        "schema_version": 1,
        "source": "tensorboard",
        "status": "unknown",
        "started_at": started,
        "at": ended,
        "device": None,
        "world_size": 1,
        "command": None,
        "tensorboard": {"logdir": str(scalars.path),
                        "tags": _labels(mapping)},
    }
