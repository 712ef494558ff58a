"""Series and helpers the numerics rules share (private: discovery skips `_` modules).

Compute-the-metric helpers, kept apart from the rules that decide: the training loss per
step, the total gradient norm *before* clipping, robust smoothing, runs of consecutive
steps, the forward order of parameters, and number formatting for titles.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def losses(steps: pd.DataFrame) -> pd.Series:
    """The loss of every step where `backward()` ran, finite or not (as `nonfinite-loss`)."""
    if "loss" not in steps.columns:
        return pd.Series(dtype="float64")
    loss = steps["loss"].astype("float64")
    if "micro_batches" in steps.columns:
        loss = loss[steps["micro_batches"].fillna(0).to_numpy() > 0]
    return loss


def finite_losses(steps: pd.DataFrame) -> pd.Series:
    """`losses` without the non-finite ones (those are `nonfinite-loss`'s business)."""
    loss = losses(steps)
    return loss[np.isfinite(loss.to_numpy())]


def training_stages(calls: pd.DataFrame) -> list[tuple[int, int]]:
    """(first step, last step) of each stage of a run that trains different models one
    after the other: a teacher with its optimizer, then a student with another. A stage
    starts at the first step of an optimizer when every optimizer that stepped before has
    stepped for the last time, and no model trained before (a forward a backward reached)
    is trained from then on. One stage for everything else: a GAN's optimizers interleave,
    an optimizer re-created every epoch trains the same model. Found in the field test
    (tests/scripts/healthy_distillation_teacher.py: the student's loss, starting above the
    teacher's best, read as a divergence)."""
    if calls is None or calls.empty or not {"step", "obj", "method"} <= set(calls.columns):
        return []
    step = pd.to_numeric(calls["step"], errors="coerce")
    obj, method = calls["obj"].astype(str), calls["method"].astype(str)
    opt = (method == "step") & obj.str.startswith("opt") & step.notna()
    if not opt.any():
        return []
    lifetimes = step[opt].groupby(obj[opt]).agg(["min", "max"]).sort_values("min")
    trained = (method == "forward") & (calls["backprop"] == True) & step.notna()  # noqa: E712 - nullable
    trained_steps, trained_models = step[trained].to_numpy(), obj[trained].to_numpy()
    first, last = int(step.min()), int(step.max())
    bounds = [first]
    for name, row in lifetimes.iloc[1:].iterrows():
        begin = int(row["min"])
        earlier = lifetimes[lifetimes["min"] < begin]
        if begin <= bounds[-1] or not len(earlier) or (earlier["max"] >= begin).any():
            continue
        before = set(trained_models[(trained_steps >= bounds[-1]) & (trained_steps < begin)])
        after = set(trained_models[trained_steps >= begin])
        if before and after and not before & after:
            bounds.append(begin)
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:])] + [(bounds[-1], last)]


def restore_steps(calls: pd.DataFrame) -> list[int]:
    """Steps in which a model that was already being trained had weights loaded into it
    (`modelN.load_state_dict` after that model's first forward that a backward reached):
    a rollback to a snapshot. The loss after it is not a continuation of the loss before:
    an LR range test that ramps the LR until the loss blows up and then restores its
    start, or early stopping that goes back to the best weights. Loading before training
    (pretrained weights) is not one. Found in field test round 4 (an LR range test)."""
    if calls is None or calls.empty or not {"step", "obj", "method", "backprop"} <= set(calls.columns):
        return []
    step = pd.to_numeric(calls["step"], errors="coerce")
    obj, method = calls["obj"].astype(str), calls["method"].astype(str)
    loads = (method == "load_state_dict") & step.notna()
    if not loads.any():
        return []
    trained = (method == "forward") & (calls["backprop"] == True) & step.notna()  # noqa: E712 - nullable
    first_trained = step[trained].groupby(obj[trained]).min()
    out = set()
    for at, name in zip(step[loads].astype(int), obj[loads]):
        begun = first_trained.get(name)
        if begun is not None and begun < at:
            out.add(int(at))
    return sorted(out)


def not_skipped(steps: pd.DataFrame) -> pd.Series:
    """True for steps GradScaler did not skip (every step when there is no scaler)."""
    return ~steps["skipped"].astype(bool) if "skipped" in steps.columns else pd.Series(True, steps.index)


def unskipped_rows(steps: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-step table (`grad_norms`, ...) whose step GradScaler did not skip."""
    keep = not_skipped(steps).reindex(frame.index, fill_value=True).astype(bool)
    return frame[keep.to_numpy()]


def preclip_norms(steps: pd.DataFrame) -> tuple[pd.Series, str]:
    """The total gradient norm before clipping, on steps GradScaler did not skip.

    `grad_norm` is measured at the optimizer step, i.e. *after* `clip_grad_norm_` when the
    loop clips; `clip_norm` is what `clip_grad_norm_` returned: the pre-clip total norm.
    Returns the finite values and which column they came from.
    """
    keep = not_skipped(steps)
    for column in ("clip_norm", "grad_norm"):
        if column in steps.columns:
            values = steps[column].astype("float64")[keep]
            values = values[np.isfinite(values.to_numpy())]
            if len(values):
                if column == "clip_norm" and "grad_norm" in steps.columns:
                    # Clipping may run on some steps only: fill the others from grad_norm.
                    other = steps["grad_norm"].astype("float64")[keep]
                    other = other[np.isfinite(other.to_numpy())]
                    values = values.combine_first(other)
                return values.sort_index(), column
    return pd.Series(dtype="float64"), ""


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) positions, end included, of each run of consecutive True values."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2])]


def forward_order(params: pd.DataFrame) -> list[int]:
    """Parameter indices from input to output: the reverse of the first backward pass's
    order (`backward_rank`), parameters it never reached after, by index."""
    if params.empty:
        return []
    rank = params["backward_rank"] if "backward_rank" in params.columns else pd.Series(pd.NA, params.index)
    known = rank.dropna()
    if known.empty:
        return [int(i) for i in params.index]
    ordered = [int(i) for i in known.astype("int64").sort_values(ascending=False).index]
    return ordered + [int(i) for i in params.index if i not in set(ordered)]


def backward_order(params: pd.DataFrame, indices) -> list[int]:
    """`indices` sorted by backward order (first gradient produced first); unknown last."""
    rank = params["backward_rank"] if "backward_rank" in params.columns else pd.Series(pd.NA, params.index)

    def key(i: int) -> tuple[int, int]:
        value = rank.get(i, pd.NA)
        return (0, int(value)) if not pd.isna(value) else (1, int(i))

    return sorted((int(i) for i in indices), key=key)


def name_of(params: pd.DataFrame, index: int) -> str:
    """The parameter's qualified name (`p{index}` when the table lacks it)."""
    if index in params.index and isinstance(params.at[index, "name"], str):
        return params.at[index, "name"]
    return f"p{index}"


def module_of(params: pd.DataFrame, index: int) -> str:
    """The owning module's path, or the name without its last part. With several models
    the names carry a `modelK.` prefix that the module path lacks (both models' first
    layer are module `0`): the prefixed path is returned, so their layers stay apart."""
    parent = name_of(params, index).rpartition(".")[0]
    if index in params.index:
        module = params.at[index, "module"]
        if isinstance(module, str) and module:
            return parent if parent.endswith("." + module) else module
    return parent or name_of(params, index)


def lr_evidence(steps: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per param group (`lr_0`, ...): first, median, max and last learning rate."""
    out = {}
    for column in sorted(c for c in steps.columns if c.startswith("lr_")):
        values = steps[column].astype("float64").dropna()
        if len(values):
            out[column] = {"first": float(values.iloc[0]), "median": float(values.median()),
                           "max": float(values.max()), "last": float(values.iloc[-1])}
    return out


def lr_text(steps: pd.DataFrame) -> str:
    """'LR 1e-09' or 'LR 1e-09 .. 3e-03' over all groups and steps; '' when unrecorded."""
    values = [steps[c].astype("float64").dropna() for c in steps.columns if c.startswith("lr_")]
    values = pd.concat(values) if values else pd.Series(dtype="float64")
    if values.empty:
        return ""
    low, high = float(values.min()), float(values.max())
    return f"LR {fmt(low)}" if math.isclose(low, high, rel_tol=1e-6) else f"LR {fmt(low)} .. {fmt(high)}"


def fmt(value: float) -> str:
    """A short, readable number: 3 significant digits, scientific when tiny or huge."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:.3g}"
    return f"{value:.2e}".replace("e-0", "e-").replace("e+0", "e+")
