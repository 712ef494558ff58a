"""Shared by the loop rules: the call table as numpy arrays, and the call sequence of a step.

Not a rule (the leading underscore keeps it out of the catalogue). The call table of a
100k-step run holds about a million rows but only a dozen distinct tokens, so every mask
is computed once per category and spread with the category codes: no Python loop over rows.

Vocabulary used by the loop rules:
- an *optimizer step call* is `optN.step` or `scalerN.step` (a GradScaler step that skips
  the optimizer on an overflow is still the loop's step: no `optN.step` follows it);
- an *evaluation forward* is a forward pass no backward reached (flag `B` absent) inside
  an evaluation phase (`Monitor.phase("val")`, or any phase but `train` in which no
  backward ever ran); in a run that marks no such phase, one in a step's tail that runs
  in eval mode or without autograd (how zero-code runs show their validation);
- a step's *tail* is what follows its last optimizer step call (scheduler steps,
  validation, checkpointing); a step without an optimizer step call (the calls recorded
  after the last step) is all tail.
"""
from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from diagnose.rules._base import RunTables

_CACHE: list = []
_CACHE_SIZE = 4
SEQUENCE_LIMIT = 24
"""Tokens at most in an evidence `sequence` (after run-length encoding)."""


CHAIN_LIMIT = 64
"""Most links of a chain of models feeding a training forward (`CallIndex.feeds_training`)."""


def _mask(column: pd.Series, predicate: Callable[[str], bool]) -> np.ndarray:
    """`predicate` of each value of a (categorical) string column, evaluated once per category."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        hit = np.array([bool(predicate(str(c))) for c in column.cat.categories] + [False], dtype=bool)
        codes = column.cat.codes.to_numpy()
        return hit[np.where(codes < 0, len(hit) - 1, codes)]
    values = column.astype(str).to_numpy()
    uniques, inverse = np.unique(values, return_inverse=True)
    hit = np.array([bool(predicate(str(u))) for u in uniques], dtype=bool)
    return hit[inverse] if len(values) else np.zeros(0, dtype=bool)


def _strings(column: pd.Series) -> np.ndarray:
    """A (categorical) string column as a numpy object array, built once per category."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        names = np.array([str(c) for c in column.cat.categories] + [""], dtype=object)
        codes = column.cat.codes.to_numpy()
        return names[np.where(codes < 0, len(names) - 1, codes)]
    return np.array([str(v) for v in column.to_numpy(dtype=object)], dtype=object)


def _flag(column: pd.Series, value: bool) -> np.ndarray:
    """Rows where a nullable boolean column equals `value` (NA never does)."""
    if len(column) == 0:
        return np.zeros(0, dtype=bool)
    return column.astype("boolean").eq(value).fillna(False).to_numpy(dtype=bool)


@dataclass
class CallIndex:
    """The call table of one rank as arrays, in call order, with the masks the rules use."""

    frame: pd.DataFrame
    step: np.ndarray
    obj: np.ndarray
    method: np.ndarray
    token: np.ndarray
    phase: np.ndarray
    opt_step: np.ndarray
    scaler_step: np.ndarray
    any_opt_step: np.ndarray
    sched_step: np.ndarray
    backward: np.ndarray
    zero_grad: np.ndarray
    forward: np.ndarray
    scale: np.ndarray
    unscale: np.ndarray
    clip: np.ndarray
    train_mode: np.ndarray
    """Forward in training mode (flag T)."""
    eval_mode: np.ndarray
    """Forward in eval mode (flag E)."""
    grad_on: np.ndarray
    """Forward with autograd recording (flag G)."""
    no_grad: np.ndarray
    """Forward under no_grad or inference mode (flag N or I)."""
    backprop: np.ndarray
    """Forward whose output a backward reached (flag B)."""
    off_phase: np.ndarray
    """Call inside an evaluation phase: a phase other than `train` (`Monitor.phase("val")`)
    in which no backward ever ran (a phase the user named for training is not evaluation)."""
    has_phases: bool
    """Whether the run marked any evaluation phase at all."""
    batch: np.ndarray
    """Per row: how many training batches had arrived from a watched loader before the call
    (the `batch` markers; all 0 when no loader was watched or the run predates them)."""
    step_first: np.ndarray
    """Per row: position of the first row of its step."""
    step_last: np.ndarray
    """Per row: position of the last row of its step."""

    @classmethod
    def of(cls, run: RunTables) -> CallIndex:
        """The index of `run.calls`, built once per call table (the loop rules share it)."""
        for ref, index in _CACHE:
            if ref() is run.calls:
                return index
        index = cls._build(run.calls)
        _CACHE.insert(0, (weakref.ref(run.calls), index))
        del _CACHE[_CACHE_SIZE:]
        return index

    @classmethod
    def _build(cls, calls: pd.DataFrame) -> CallIndex:
        if len(calls) and not calls["seq"].is_monotonic_increasing:
            calls = calls.sort_values("seq", kind="stable")
        calls = calls.reset_index(drop=True)
        obj, method = calls["obj"], calls["method"]
        step = calls["step"].to_numpy(dtype=np.int64)
        is_step = _mask(method, lambda m: m == "step")
        backward = _mask(method, lambda m: m == "backward")
        phase = _strings(calls["phase"])
        trained_in = set(phase[backward].tolist())
        off_phase = _mask(calls["phase"], lambda p: p != "train" and p not in trained_in)
        grad_true, inference = _flag(calls["grad"], True), calls["inference"].to_numpy(dtype=bool)
        starts = np.flatnonzero(np.r_[True, step[1:] != step[:-1]]) if len(step) else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(step)][:len(starts)] - 1
        lengths = ends - starts + 1
        opt_step = is_step & _mask(obj, lambda o: o.startswith("opt"))
        scaler_step = is_step & _mask(obj, lambda o: o.startswith("scaler"))
        return cls(
            frame=calls,
            step=step,
            obj=_strings(obj),
            method=_strings(method),
            token=_strings(calls["token"]),
            phase=phase,
            opt_step=opt_step,
            scaler_step=scaler_step,
            any_opt_step=opt_step | scaler_step,
            sched_step=is_step & _mask(obj, lambda o: o.startswith("sched")),
            backward=backward,
            zero_grad=_mask(method, lambda m: m == "zero_grad"),
            forward=_mask(method, lambda m: m == "forward"),
            scale=_mask(method, lambda m: m == "scale") & _mask(obj, lambda o: o.startswith("scaler")),
            unscale=_mask(method, lambda m: m == "unscale_"),
            clip=_mask(method, lambda m: m.startswith("clip_grad")),
            train_mode=_flag(calls["training"], True),
            eval_mode=_flag(calls["training"], False),
            grad_on=grad_true & ~inference,
            no_grad=_flag(calls["grad"], False) | inference,
            backprop=_flag(calls["backprop"], True),
            off_phase=off_phase,
            has_phases=bool(off_phase.any()),
            batch=(pd.to_numeric(calls["batch"], errors="coerce").fillna(0).to_numpy(dtype=np.int64)
                   if "batch" in calls.columns else np.zeros(len(step), dtype=np.int64)),
            step_first=np.repeat(starts, lengths),
            step_last=np.repeat(ends, lengths),
        )

    def __len__(self) -> int:
        return len(self.step)

    def where_obj(self, predicate: Callable[[str], bool]) -> np.ndarray:
        """Rows whose object name (`opt0`, `model1`, ...) satisfies `predicate`."""
        return _mask(self.frame["obj"], predicate)

    def is_obj(self, name: str) -> np.ndarray:
        """Rows of object `name`."""
        return self.where_obj(lambda o: o == name)

    # ---- positions ------------------------------------------------------------------------
    def last_at_or_before(self, mask: np.ndarray) -> np.ndarray:
        """Per row: the position of the last row at or before it where `mask` holds, or -1."""
        return np.maximum.accumulate(np.where(mask, np.arange(len(mask)), -1)) if len(mask) else mask.astype(np.int64)

    def next_at_or_after(self, mask: np.ndarray) -> np.ndarray:
        """Per row: the position of the first row at or after it where `mask` holds, or len."""
        n = len(mask)
        if not n:
            return mask.astype(np.int64)
        return np.minimum.accumulate(np.where(mask, np.arange(n), n)[::-1])[::-1]

    def in_tail(self) -> np.ndarray:
        """Rows after the last optimizer step call of their step (the whole step if it has none)."""
        last_opt = self.last_at_or_before(self.any_opt_step)
        # the last optimizer step call of the step: the last one at or before the step's end
        step_last_opt = last_opt[self.step_last] if len(self) else last_opt
        has_opt = step_last_opt >= self.step_first
        position = np.arange(len(self))
        return np.where(has_opt, position > step_last_opt, True)

    def evaluation_forwards(self) -> np.ndarray:
        """Forwards that are evaluation: no backward reached them and they are in a
        non-train phase, or (when the run marks no phases) they sit in a step's tail and
        run in eval mode or without autograd. A train-mode, grad-enabled forward without
        `B` in the train phase is never called evaluation (it could be anything)."""
        candidate = self.forward & ~self.backprop & ~self.feeds_training()
        if self.has_phases:
            return candidate & self.off_phase
        return candidate & self.in_tail() & (self.eval_mode | self.no_grad)

    def feeds_training(self) -> np.ndarray:
        """Forwards whose next call, past zero_grad, scheduler steps and scaler updates, is a
        forward of *another* model that a backward reached: they made that model's training
        input (a GAN generator's samples drawn under no_grad for the discriminator step, a
        frozen feature extractor), so they belong to the training step, not to an
        evaluation. Found in the field test (tests/scripts/healthy_wgan_gp_critic.py: a
        BatchNorm generator sampled under no_grad in train mode read as a validation).
        A validation of one model ends with its `train()` call or its own next training
        forward, never another model's, so it is not affected.

        The same holds down a chain of models: a forward whose next call is another model's
        forward that fed training fed it too (field test round 3:
        tests/scripts/healthy_checkpoint_sequential_reentrant.py, where reentrant
        `checkpoint_sequential` runs each layer of the first segments under no_grad, each a
        separate "model" to the zero-code mode because the Sequential itself is never called
        in training, and only the last segment with autograd: the BatchNorm layers among them
        read as a validation in train mode). A chain never passes the same model twice, so a
        validation run through those layers right before the next step's chain joins it only
        with its layers after the last one the chain holds (the others stay evaluation), and
        has at most `CHAIN_LIMIT` models."""
        n = len(self)
        if not n:
            return np.zeros(0, dtype=bool)
        passive = self.zero_grad | self.sched_step | (self.method == "update")
        after = np.r_[self.next_at_or_after(~passive)[1:], n]
        target = np.minimum(after, n - 1)
        link = self.forward & ~self.backprop & (after < n) & self.forward[target] & (self.obj[target] != self.obj)
        feeds = link & self.backprop[target]
        members: dict[int, frozenset] = {}
        for i in np.flatnonzero(link)[::-1].tolist():  # a link points forward: its target is done
            t = int(target[i])
            if feeds[i]:
                members[i] = frozenset((self.obj[i], self.obj[t]))
            elif t in members and self.obj[i] not in members[t] and len(members[t]) < CHAIN_LIMIT:
                feeds[i] = True
                members[i] = members[t] | {self.obj[i]}
        return feeds

    # ---- evidence --------------------------------------------------------------------------
    def rows_of_step(self, step: int) -> np.ndarray:
        """Positions of the rows of `step`."""
        lo, hi = np.searchsorted(self.step, [step, step + 1])
        return np.arange(lo, hi)

    def sequence(self, position: int, limit: int = SEQUENCE_LIMIT) -> list[str]:
        """The calls of the step that holds row `position`, as recorded tokens
        (run-length encoded, `phase:NAME` where the phase changes), trimmed to about
        `limit` tokens around that row; `...` marks what was cut."""
        first, last = int(self.step_first[position]), int(self.step_last[position])
        tok, phase = self.token[first:last + 1], self.phase[first:last + 1]
        new_run = np.r_[True, (tok[1:] != tok[:-1]) | (phase[1:] != phase[:-1])]
        new_phase = np.r_[phase[0] != "train", phase[1:] != phase[:-1]]
        starts = np.flatnonzero(new_run)
        counts_arr = np.diff(np.r_[starts, len(tok)])
        tokens: list[str] = []
        counts: list[int] = []
        focus = 0
        focus_run = int(np.searchsorted(starts, position - first, side="right")) - 1
        for r, (start, count) in enumerate(zip(starts.tolist(), counts_arr.tolist())):
            if new_phase[start]:
                tokens.append(f"phase:{phase[start]}")
                counts.append(1)
            if r == focus_run:
                focus = len(tokens)
            tokens.append(str(tok[start]))
            counts.append(count)
        out = [t if c == 1 else f"{t}*{c}" for t, c in zip(tokens, counts)]
        if len(out) <= limit:
            return out
        lo = max(0, min(focus - limit // 2, len(out) - limit))
        hi = lo + limit
        return (["..."] if lo > 0 else []) + out[lo:hi] + (["..."] if hi < len(out) else [])


def step_ranges_text(steps: list[int]) -> str:
    """`[3, 4, 5, 9]` -> `"3-5, 9"` (for titles); at most four ranges, then `...`."""
    ranges: list[list[int]] = []
    for s in sorted(steps):
        if ranges and s == ranges[-1][1] + 1:
            ranges[-1][1] = s
        else:
            ranges.append([s, s])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:4]]
    return ", ".join(parts) + (", ..." if len(ranges) > 4 else "")


def scheduler_config(entry: dict) -> dict:
    """A scheduler's recorded configuration (the recorder nests it under `config`)."""
    config = dict(entry)
    nested = entry.get("config")
    if isinstance(nested, dict):
        config.update(nested)
    return config


def lr_columns(run: RunTables) -> list[str]:
    """The `lr_K` columns of the step table, in group order."""
    cols = [c for c in run.steps.columns if isinstance(c, str) and c.startswith("lr_") and c[3:].isdigit()]
    return sorted(cols, key=lambda c: int(c[3:]))


def group_names(run: RunTables) -> list[str]:
    """`opt0.group0`, ... in the order of the `lr_K` columns (optimizers, then groups)."""
    names = []
    for opt in run.objects.get("optimizers") or []:
        for g, _ in enumerate(opt.get("groups") or []):
            names.append(f"opt{opt.get('index', 0)}.group{g}")
    return names


# ---- models and their parameters ---------------------------------------------------------

OPTIMIZER_ONLY = re.compile(r"opt\d+\.group\d+\.\d+")

MODE_INDEPENDENT_TYPES = frozenset({
    "Linear", "NonDynamicallyQuantizableLinear", "LazyLinear", "Bilinear", "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "LazyConv1d", "LazyConv2d", "LazyConv3d",
    "Embedding", "EmbeddingBag", "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm", "PReLU",
})
"""Module types whose forward is the same in train and eval mode (what the parameter table
can show; Dropout has no parameters and never appears there)."""


def model_params(run: RunTables, model: int) -> pd.DataFrame:
    """The parameter rows of watched model `model` (names are prefixed `modelN.` only when
    several models are watched; tensors known only from an optimizer are left out)."""
    params = run.params
    if params.empty:
        return params
    names = params["name"].astype(str)
    models = run.objects.get("models") or [{"index": 0}]
    if len(models) > 1:
        return params[names.str.startswith(f"model{model}.")]
    return params[~names.str.fullmatch(OPTIMIZER_ONLY.pattern)]


def mode_dependent_modules(run: RunTables, model: int) -> tuple[list[str], bool]:
    """(module paths whose type may act differently in eval mode, whether the parameter table
    rules every module out). BatchNorm and friends, attention and RNN layers (dropout
    inside), and any type we do not know count as mode-dependent."""
    rows = model_params(run, model)
    if rows.empty:
        return [], False
    types = rows["module_type"].astype(str)
    dependent = rows[~types.isin(MODE_INDEPENDENT_TYPES)]
    labels = sorted({f"{m or '(root)'} ({t})" for m, t in zip(dependent["module"].astype(str),
                                                                 dependent["module_type"].astype(str))})
    return labels, dependent.empty


def frozen_model(run: RunTables, model: int) -> bool:
    """Whether every parameter of the model had requires_grad=False at attach time (its
    forwards build no autograd graph from the weights)."""
    rows = model_params(run, model)
    if rows.empty:
        return False
    return not rows["requires_grad"].fillna(True).astype(bool).any()


def model_index(obj: str) -> int | None:
    """`model3` -> 3; None for other objects."""
    if obj.startswith("model") and obj[5:].isdigit():
        return int(obj[5:])
    return None


_DROPOUT_KEY = re.compile(r"dropout|pdrop|drop_?rate|drop_?prob|drop_?path", re.IGNORECASE)


def configured_dropout(config: object, depth: int = 0) -> dict[str, float]:
    """Dropout probabilities the run's config declares (`dropout`, `attn_pdrop`,
    `hidden_dropout_prob`, `drop_rate`, `drop_path_rate`, ... at any nesting up to 3 deep),
    as {key: value}. Empty when the config says nothing about dropout."""
    found: dict[str, float] = {}
    if depth > 3 or not isinstance(config, dict):
        return found
    for key, value in config.items():
        if isinstance(value, dict):
            found.update(configured_dropout(value, depth + 1))
        elif _DROPOUT_KEY.search(str(key)) and isinstance(value, (int, float)) and not isinstance(value, bool):
            found[str(key)] = float(value)
    return found


def mode_evidence(run: RunTables, model: int) -> tuple[bool, dict]:
    """Whether train and eval mode can compute differently for `model`, and why.

    Yes when the parameter table shows a module that acts differently in eval mode or that
    we cannot rule out (BatchNorm, attention and RNN layers, custom modules), or when the
    run's config declares a dropout above 0. Otherwise no: every parameter belongs to a
    layer that computes the same in both modes, and the config declares no dropout (or
    says nothing) — Dropout owns no parameters, so the record cannot show it."""
    modules, _ = mode_dependent_modules(run, model)
    dropout = configured_dropout(run.meta.get("config"))
    active = {k: v for k, v in dropout.items() if v > 0}
    evidence = {"mode_dependent_modules": modules[:10], "configured_dropout": dropout}
    return bool(modules or active), evidence
