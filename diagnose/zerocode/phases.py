"""Evaluation phases inferred from the call order, without code (`phase:val` tokens).

A script run unchanged cannot say "this is validation", so the zero-code mode infers it
when a step's calls are written (by then every backward of the step has run, so each
forward's `B` flag is final):

- an *evaluation forward* is a forward of a model that no backward reached (no `B`),
  whatever its mode and grad state (eval() + no_grad, or buggy: train mode, grad on),
  except a grad-enabled one whose next forward-or-backward call is a `backward`: that
  backward was meant for it, and reached nothing because the loss was cut from the graph
  (`loss.detach().requires_grad_()`; field test round 4,
  tests/scripts/loss_detached_requires_grad.py, read as a validation with autograd on
  before), when that backward reached no forward at all. A validation never calls
  backward; the training forward that follows one comes before the next backward; a
  teacher run with autograd on beside a student is still an evaluation with grad (the
  backward reached the student's forward);
- `phase:val` goes before the first evaluation forward after training, moved back over
  the `modelN.eval` calls just before it;
- `phase:train` goes before the next training call (zero_grad, a forward a backward
  reached, backward, scaler or optimizer calls, clipping) or the `modelN.train` call
  that ends the evaluation, whichever comes first.

Scheduler steps, `scalerN.update` and `batch` markers (a training batch arrived) belong to no phase (ReduceLROnPlateau steps on the
validation loss inside the evaluation). Validation and test cannot be told apart: both
are `val`.
"""
from __future__ import annotations

from diagnose.rundir import schema

TRAIN = "train"
VAL = "val"
PHASE_PREFIX = "phase:"
BACKWARD = "backward"
"""The token of a backward() call (diagnose/recorder/recorder.py `on_backward`)."""


def _is_forward(name: str) -> bool:
    return name.endswith(".forward")


def _is_eval_forward(token: list) -> bool:
    return _is_forward(token[0]) and schema.FLAG_BACKPROP not in (token[1] or "")


def _is_neutral(name: str) -> bool:
    return (name.startswith(PHASE_PREFIX) or name == schema.BATCH_TOKEN
            or (name.startswith("sched") and name.endswith(".step"))
            or name.endswith(".update") or name.endswith(".eval"))


def _backward_next(tokens: list[list]) -> list[bool]:
    """Per token: whether the next forward or backward call after it is a `backward` that
    reached no forward at all (no forward with `B` since the backward before it). A
    backward that reached another model's forward (a student's, beside a teacher run with
    autograd on) leaves the un-reached forwards before it what they were."""
    reached = [False] * len(tokens)
    seen_b = False
    for i, token in enumerate(tokens):
        if token[0] == BACKWARD:
            reached[i], seen_b = seen_b, False
        elif _is_forward(token[0]) and schema.FLAG_BACKPROP in (token[1] or ""):
            seen_b = True
    out = [False] * len(tokens)
    upcoming = False
    for i in range(len(tokens) - 1, -1, -1):
        out[i] = upcoming
        name = tokens[i][0]
        if name == BACKWARD:
            upcoming = not reached[i]
        elif _is_forward(name):
            upcoming = False
    return out


def _cut_from_graph(token: list, backward_next: bool) -> bool:
    """A grad-enabled forward no backward reached although a backward came right after
    it: the training forward of a loss cut from the graph, not an evaluation."""
    return backward_next and schema.FLAG_GRAD in (token[1] or "")


def insert_phases(tokens: list[list], phase: str) -> tuple[list[list], str]:
    """`tokens` ([name, flags] pairs) with phase tokens inserted, and the phase at the end."""
    out: list[list] = []
    backward_next = _backward_next(tokens)
    for token, then_backward in zip(tokens, backward_next):
        name = token[0]
        if phase == TRAIN and _is_eval_forward(token) and not _cut_from_graph(token, then_backward):
            at = len(out)
            while at > 0 and out[at - 1][0].endswith(".eval"):
                at -= 1
            out.insert(at, [PHASE_PREFIX + VAL, None])
            phase = VAL
        elif phase == VAL and (not _is_eval_forward(token) or _cut_from_graph(token, then_backward)) \
                and not _is_neutral(name):
            out.append([PHASE_PREFIX + TRAIN, None])
            phase = TRAIN
        out.append(token)
    return out, phase
