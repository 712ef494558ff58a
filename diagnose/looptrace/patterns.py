"""Call patterns for `assert_order` / `assert_called`: what users write, matched to tokens.

A pattern names a kind of call the way the user thinks of it; it is matched against the
call table's `obj` and `method` columns (docs/run-directory.md, "events.jsonl"):

| pattern | matches |
| --- | --- |
| `zero_grad` | any `optN.zero_grad` or `modelN.zero_grad` |
| `optimizer.zero_grad` (`opt.zero_grad`), `model.zero_grad` | of any optimizer / model |
| `backward` | `Tensor.backward()` |
| `forward` (`model.forward`) | any forward pass of a traced model |
| `clip` | `clip_grad_norm_` or `clip_grad_value_`; either one by its own name too |
| `scaler.scale`, `scaler.unscale_` (`unscale_`), `scaler.step`, `scaler.update` (`update`) | GradScaler calls |
| `optimizer.step` (`opt.step`) | the loop's optimizer step: `optN.step` *or* `scalerN.step` (a step GradScaler skipped has no `optN.step`, only `scalerN.step`) |
| `scheduler.step` (`sched.step`) | any LR scheduler's `step()` |
| `model.train` (`train`), `model.eval` (`eval`) | mode changes of a traced model |
| `opt1.step`, `sched0.step`, `model0.eval`, ... | that one object only, exactly |
| `model0.forward[EN]` | a recorded token, flags included, exactly |
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

_INDEXED = re.compile(r"(opt|sched|scaler|model)(\d+)")
_KINDS = {"opt": "opt", "optimizer": "opt", "sched": "sched", "scheduler": "sched", "lr_scheduler": "sched",
          "scaler": "scaler", "model": "model"}
_BARE = {
    "zero_grad": (None, "zero_grad"),
    "backward": ("", "backward"),
    "forward": ("model", "forward"),
    "clip_grad_norm_": ("", "clip_grad_norm_"),
    "clip_grad_value_": ("", "clip_grad_value_"),
    "unscale_": ("scaler", "unscale_"),
    "update": ("scaler", "update"),
    "train": ("model", "train"),
    "eval": ("model", "eval"),
}
KNOWN = ("zero_grad", "backward", "forward", "clip", "clip_grad_norm_", "clip_grad_value_", "unscale_",
         "update", "train", "eval", "optimizer.step", "optimizer.zero_grad", "scaler.scale", "scaler.unscale_",
         "scaler.step", "scaler.update", "scheduler.step", "model.train", "model.eval", "model.zero_grad",
         "model.forward", "opt0.step", "sched0.step", "model0.forward[EN]")


@dataclass(frozen=True)
class CallPattern:
    """One parsed pattern; `matches(obj, method, token)` arrays -> bool array."""

    text: str
    kind: str | None
    """`opt`, `sched`, `scaler`, `model`, `""` (a bare function) or None (any)."""
    index: str | None = None
    """`opt1` etc. when one object is meant."""
    method: str | None = None
    """None with `token` set (an exact token pattern) or `clip` (both clip functions)."""
    token: str | None = None
    loop_step: bool = False
    """`optimizer.step`: optN.step or scalerN.step."""

    def matches(self, obj: np.ndarray, method: np.ndarray, token: np.ndarray) -> np.ndarray:
        if self.token is not None:
            return token == self.token
        if self.loop_step:
            kind = np.char.startswith(obj.astype(str), "opt") | np.char.startswith(obj.astype(str), "scaler")
            return kind & (method == "step")
        if self.method == "clip":
            hit = np.char.startswith(method.astype(str), "clip_grad")
        else:
            hit = method == self.method
        if self.index is not None:
            return hit & (obj == self.index)
        if self.kind is None:
            return hit
        if self.kind == "":
            return hit & (obj == "")
        return hit & np.char.startswith(obj.astype(str), self.kind)


def parse(text: str) -> CallPattern:
    """Parse one pattern; ValueError with the accepted forms when it is not one."""
    raw = str(text).strip()
    if "[" in raw:
        return CallPattern(raw, kind=None, token=raw)
    owner, dot, method = raw.rpartition(".")
    if not dot:
        if raw in ("clip", "clip_grad"):
            return CallPattern(raw, kind="", method="clip")
        if raw in _BARE:
            kind, name = _BARE[raw]
            return CallPattern(raw, kind=kind, method=name)
        if raw == "step":
            raise ValueError("'step' is ambiguous: write 'optimizer.step', 'scaler.step' or 'scheduler.step'")
        raise ValueError(f"unknown call {raw!r}; use one of: {', '.join(KNOWN)}")
    indexed = _INDEXED.fullmatch(owner)
    if indexed:
        return CallPattern(raw, kind=indexed[1], index=owner, method=method)
    kind = _KINDS.get(owner)
    if kind is None:
        raise ValueError(f"unknown object {owner!r} in {raw!r}; use optimizer, scheduler, scaler, model "
                         "or an indexed name such as opt0, sched1, scaler0, model0")
    if kind == "opt" and method == "step":
        return CallPattern(raw, kind="opt", method="step", loop_step=True)
    return CallPattern(raw, kind=kind, method=method)
