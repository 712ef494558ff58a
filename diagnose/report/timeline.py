"""Call-order timeline: the calls of one training step and of one evaluation, in order.

Drawn as swim lanes (one per object: each model, autograd, clipping, each GradScaler,
optimizer and scheduler), one box per call from left to right; repeated identical calls
are drawn once with a count (`x200`). Which step is shown:
- training: the step a loop finding points at, else the most common call sequence
  among the training steps (sampled on long runs);
- evaluation: the first evaluation (calls in a `val`/`test` phase, or forward passes
  whose output never reached a backward), or the one a finding points at.
Calls that a loop finding blames are outlined in its severity's colour, its label above:
the calls its rule is about (`clip_grad_norm_` for `clip-before-unscale`, eval forwards
with grad enabled for `eval-with-grad`, a `zero_grad` between backward and step, ...),
or, for a rule this module does not know, the call tokens its evidence names (values of
keys containing `call` or `token`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.patches import FancyBboxPatch

from diagnose.report.figures import SEVERITY_COLORS, Plot, Series, missing, new_figure, style, to_data_uri
from diagnose.rules._base import Finding

KEY, TITLE = "calls", "Call order: one training step and one evaluation"
MAX_BOXES = 32
"""Boxes per panel at most (after merging repeats); the panel title says how many more there were."""
SAMPLE_STEPS = 2000
"""Training steps compared to find the most common call sequence."""

EVAL_RULES = frozenset({"eval-without-eval-mode", "eval-with-grad"})


@dataclass(frozen=True)
class Blame:
    """A loop finding as the timeline uses it: its label (`#3`) and the finding."""

    label: str
    finding: Finding


# ---- choosing the calls to show ----------------------------------------------------------------
def _is_eval(calls: pd.DataFrame) -> np.ndarray:
    """Calls of an evaluation: in a non-train phase, or forwards no backward reached."""
    phase = calls["phase"].astype(str).to_numpy() != "train"
    forward = calls["method"].astype(str).to_numpy() == "forward"
    no_backprop = ~calls["backprop"].fillna(False).to_numpy(dtype=bool)
    return phase | (forward & no_backprop)


def _finding_step(finding: Finding) -> int | None:
    for key in ("step", "first_step"):
        value = finding.evidence.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return finding.steps[0] if finding.steps else None


def _common_step(train: pd.DataFrame) -> tuple[int, int, int]:
    """The first step of the most common call sequence: (step, its count, steps compared)."""
    steps = train["step"].unique()
    if len(steps) > SAMPLE_STEPS:
        steps = steps[np.linspace(0, len(steps) - 1, SAMPLE_STEPS).astype(np.int64)]
        train = train[train["step"].isin(steps)]
    codes = train["token"].cat.codes.to_numpy() if hasattr(train["token"], "cat") else \
        pd.factorize(train["token"])[0]
    sequences = pd.Series(codes).groupby(train["step"].to_numpy(), sort=True).agg(tuple)
    counts = sequences.value_counts(sort=True)
    best = counts.index[0]
    step = next(int(st) for st, seq in sequences.items() if seq == best)
    return step, int(counts.iloc[0]), len(sequences)


def _eval_segment(rows: pd.DataFrame, eval_mask: np.ndarray) -> pd.DataFrame:
    """The evaluation calls of one step, with the mode switches just around them."""
    positions = np.flatnonzero(eval_mask)
    first, last = positions[0], positions[-1]
    methods = rows["method"].astype(str).to_numpy()
    if first > 0 and methods[first - 1] in ("eval", "train"):
        first -= 1
    if last + 1 < len(rows) and methods[last + 1] in ("eval", "train"):
        last += 1
    return rows.iloc[first:last + 1]


# ---- what a finding blames ---------------------------------------------------------------------
def _evidence_tokens(evidence: dict) -> set[str]:
    found: set[str] = set()

    def walk(key: str, value) -> None:
        if isinstance(value, str) and ("token" in key or "call" in key):
            found.add(value.split("*")[0])
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(str(k), v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(key, v)

    for k, v in evidence.items():
        walk(str(k), v)
    return found


def blamed(rule: str, rows: pd.DataFrame, evidence: dict | None = None) -> np.ndarray:
    """Which of `rows` (calls in order) the rule `rule` is about, as a boolean mask."""
    method = rows["method"].astype(str).to_numpy()
    obj = rows["obj"].astype(str).to_numpy()
    forward = method == "forward"
    backprop = rows["backprop"].fillna(False).to_numpy(dtype=bool)
    training = rows["training"].astype("float64").to_numpy(na_value=np.nan)  # 1, 0, or NaN: not a forward
    grad = rows["grad"].astype("float64").to_numpy(na_value=np.nan)
    opt_step = np.char.startswith(obj.astype(str), "opt") & (method == "step") | (
        np.char.startswith(obj.astype(str), "scaler") & (method == "step"))
    sched_step = np.char.startswith(obj.astype(str), "sched") & (method == "step")
    after_backward = np.cumsum(method == "backward") > 0
    before_opt = np.cumsum(opt_step[::-1])[::-1] > 0
    masks = {
        "eval-without-eval-mode": forward & ~backprop & (training == 1.0),
        "eval-with-grad": forward & ~backprop & (grad == 1.0),
        "train-mode-not-restored": forward & backprop & (training == 0.0),
        "clip-before-unscale": np.char.startswith(method.astype(str), "clip_grad"),
        "zero-grad-before-step": (method == "zero_grad") & after_backward & before_opt,
        "missing-zero-grad": opt_step,
        "scheduler-before-optimizer": sched_step & before_opt,
        "scheduler-never-stepped": np.zeros(len(rows), dtype=bool),
    }
    mask = masks.get(rule, np.zeros(len(rows), dtype=bool)).astype(bool)
    tokens = _evidence_tokens(evidence or {})
    if tokens and not mask.any():  # the rule's own test first: a token may also occur legitimately
        mask = rows["token"].astype(str).isin(tokens).to_numpy()
    return mask


# ---- drawing -------------------------------------------------------------------------------
@dataclass
class _Box:
    token: str
    lane: str
    text: str
    count: int
    labels: list[str]
    severity: object | None


def _lane(obj: str, method: str) -> str:
    if obj:
        return obj
    if method.startswith("clip_grad"):
        return "clip"
    if method == "backward":
        return "autograd"
    return "other"


def _lane_order(lane: str) -> tuple[int, str]:
    for rank, prefix in enumerate(("model", "autograd", "clip", "scaler", "opt", "sched")):
        if lane.startswith(prefix):
            return rank, lane
    return 9, lane


def _box_text(row) -> str:
    method = str(row.method)
    if method != "forward":
        return method.replace("clip_grad_norm_", "clip_grad_\nnorm_").replace("clip_grad_value_", "clip_grad_\nvalue_")
    parts = []
    if pd.notna(row.training):
        parts.append("train" if row.training else "eval")
    if bool(row.inference):
        parts.append("inference")
    elif pd.notna(row.grad):
        parts.append("grad" if row.grad else "no_grad")
    reached = "\n→ backward" if pd.notna(row.backprop) and row.backprop else ""
    return "forward\n" + " · ".join(parts) + reached


def _boxes(rows: pd.DataFrame, blames: Sequence[tuple[Blame, np.ndarray]]) -> list[_Box]:
    boxes: list[_Box] = []
    for position, row in enumerate(rows.itertuples(index=False)):
        labels = [b.label for b, mask in blames if mask[position]]
        severity = max((b.finding.severity for b, mask in blames if mask[position]), default=None)
        token = str(row.token)
        if boxes and boxes[-1].token == token and boxes[-1].labels == labels:
            boxes[-1].count += 1
            continue
        boxes.append(_Box(token, _lane(str(row.obj), str(row.method)), _box_text(row), 1, labels, severity))
    return boxes


def _lane_names(lanes: Iterable[str], objects: dict) -> dict[str, str]:
    classes = {}
    for kind, prefix in (("models", "model"), ("optimizers", "opt"), ("schedulers", "sched"), ("scalers", "scaler")):
        for item in objects.get(kind) or []:
            if isinstance(item, dict) and "index" in item:
                classes[f"{prefix}{item['index']}"] = str(item.get("class", "GradScaler" if prefix == "scaler" else ""))
    return {lane: f"{lane}\n{classes[lane]}" if classes.get(lane) else lane for lane in lanes}


def _draw_panel(ax, boxes: list[_Box], title: str, objects: dict, width: int) -> None:
    hidden = max(0, len(boxes) - MAX_BOXES)
    boxes = boxes[:MAX_BOXES]
    lanes = sorted({b.lane for b in boxes}, key=_lane_order)
    y_of = {lane: i for i, lane in enumerate(lanes)}
    fontsize = 8 if width <= 9 else 7 if width <= 14 else 6
    xs = np.arange(len(boxes))
    ax.plot(xs, [y_of[b.lane] for b in boxes], color="#bbbbbb", lw=1, zorder=1)
    for x, box in zip(xs, boxes):
        color = SEVERITY_COLORS.get(box.severity) if box.labels else None
        ax.add_patch(FancyBboxPatch((x - 0.44, y_of[box.lane] - 0.36), 0.88, 0.72,
                                    boxstyle="round,pad=0,rounding_size=0.12",
                                    facecolor="#fde0dd" if color else "#e8f0fa", edgecolor=color or "#5b7fa6",
                                    lw=2.2 if color else 0.8, zorder=2))
        ax.text(x, y_of[box.lane], box.text, ha="center", va="center", fontsize=fontsize, zorder=3,
                color="#8b0000" if color else "#1a1a1a", linespacing=1.1)
        if box.count > 1:  # repeated calls: one box with a count badge on its corner
            ax.text(x + 0.44, y_of[box.lane] + 0.36, f"×{box.count:,}", ha="center", va="center",
                    fontsize=fontsize, fontweight="bold", zorder=4, color="#1a1a1a",
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "#fff3c4", "edgecolor": "#b08800", "lw": 0.6})
        if box.labels:
            ax.text(x, y_of[box.lane] - 0.42, " ".join(box.labels), ha="center", va="bottom", fontsize=9,
                    fontweight="bold", color=color, zorder=3)
    ax.set_xlim(-0.6, max(width, 8) - 0.4)
    if len(lanes) == 1:  # keep the boxes' size, centred
        ax.set_ylim(0.95, -0.95)
    else:
        ax.set_ylim(len(lanes) - 0.4, -0.75)
    ax.set_yticks(range(len(lanes)))
    names = _lane_names(lanes, objects)
    ax.set_yticklabels([names[lane] for lane in lanes], fontsize=8)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(i + 1) for i in xs], fontsize=7)
    ax.grid(False)
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)
    ax.set_title(title + (f"  (first {MAX_BOXES} calls shown; {hidden} more not drawn)" if hidden else ""),
                 fontsize=10)


def timeline_plot(s: Series, blames: Sequence[Blame] = (), key: str = KEY, title: str = TITLE) -> Plot:
    """The training-step and evaluation panels of one run."""
    calls = s.tables.calls
    if calls.empty:
        return missing(key, title, "No call-order events were recorded (events.jsonl holds no `calls` records).")
    eval_mask = _is_eval(calls)
    eval_steps = set(calls["step"].to_numpy()[eval_mask].tolist())
    train = calls[~eval_mask]
    panels: list[tuple[str, pd.DataFrame, list[Blame]]] = []

    train_blames = [b for b in blames if b.finding.rule not in EVAL_RULES]
    wanted = next((_finding_step(b.finding) for b in train_blames if _finding_step(b.finding) is not None), None)
    if not train.empty:
        if wanted is not None and (train["step"] == wanted).any():
            step, what = wanted, f"Training step {wanted} (where the finding points)"
        else:
            step, count, compared = _common_step(train)
            what = (f"Training step {step}: the most common call sequence "
                    f"({count} of {compared} {'sampled ' if compared >= SAMPLE_STEPS else ''}training steps)")
        panels.append((what, train[train["step"] == step], train_blames))

    if eval_steps:
        eval_blames = [b for b in blames if b.finding.rule in EVAL_RULES]
        wanted = next((_finding_step(b.finding) for b in eval_blames if _finding_step(b.finding) in eval_steps), None)
        step = wanted if wanted is not None else min(eval_steps)
        rows = calls[calls["step"] == step]
        segment = _eval_segment(rows, _is_eval(rows))
        panels.append((f"Evaluation during step {step}", segment, eval_blames))

    objects = s.tables.objects
    with style():
        lane_counts = [max(2, len({_lane(str(o), str(m)) for o, m in zip(r["obj"], r["method"])}))
                       for _, r, _ in panels]
        heights = [0.62 * n + 0.9 for n in lane_counts]
        fig, axes = new_figure(sum(heights) + 0.3, rows=len(panels), sharex=False,
                               gridspec_kw={"height_ratios": heights})
        drawn = [_boxes(rows, [(b, blamed(b.finding.rule, rows, b.finding.evidence)) for b in panel_blames])
                 for _, rows, panel_blames in panels]
        width = min(MAX_BOXES, max(len(boxes) for boxes in drawn))
        for ax, (what, _, _), boxes in zip(axes, panels, drawn):
            _draw_panel(ax, boxes, what, objects, width)
        axes[-1].set_xlabel("call order")
        if not eval_steps:
            axes[-1].set_xlabel("call order (no evaluation was recorded)")
        return Plot(key, title, to_data_uri(fig),
                    alt="Swim-lane diagram of the calls of one training step and one evaluation, in order")
