"""The assertions of a `LoopTrace` (mixed into it): each runs a loop rule on the recording.

| assertion | check(s) |
| --- | --- |
| `assert_step_order()` | missing-zero-grad, zero-grad-before-step, clip-before-unscale, scheduler-before-optimizer, clip-after-step |
| `assert_zero_grad_called()` | missing-zero-grad |
| `assert_no_zero_grad_before_step()` | zero-grad-before-step |
| `assert_scheduler_after_optimizer()` | scheduler-before-optimizer |
| `assert_scheduler_stepped()` | scheduler-never-stepped |
| `assert_scheduler_frequency()` | scheduler-step-frequency |
| `assert_no_zero_lr_steps()` | zero-lr-steps |
| `assert_clip_after_unscale()` | clip-before-unscale |
| `assert_eval_mode_in_eval(no_grad=True)` | eval-without-eval-mode (and eval-with-grad) |
| `assert_no_grad_in_eval()` | eval-with-grad |
| `assert_train_mode_restored()` | train-mode-not-restored, and each model's mode when the block ended |
| `assert_params_updated()` | params-not-updated |
| `assert_no_findings(select, ignore, fail_on)` | the whole catalogue, as `diagnose report` runs it |
| `assert_order(*calls)`, `assert_called(call, times)` | the call table directly |

A named assertion fails on any finding of its checks (whatever its severity: it states a
fact about the loop), and fails rather than passes when the block recorded nothing to
check (no optimizer step; no evaluation forward).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from diagnose.looptrace import checks, message, patterns
from diagnose.rules import run_rules
from diagnose.rules._base import Finding, Severity
from diagnose.rules.loop._callindex import CallIndex

if TYPE_CHECKING:
    from pathlib import Path

    from diagnose.rundir.tables import Run, RunTables

STEP_ORDER = ("missing-zero-grad", "zero-grad-before-step", "clip-before-unscale", "scheduler-before-optimizer",
              "clip-after-step")
CANONICAL = ("zero_grad → backward → scaler.unscale_ → clip → optimizer.step → scaler.update → "
             "scheduler.step "
             "(the scaler and clipping calls when used)")
EVALUATION = ("a forward pass no backward() reached, in eval mode or under torch.no_grad() after an optimizer step, "
              "or any forward inside `with trace.phase(\"val\"):`")
_RESTORE_FIX = """Switch back to training mode after evaluating:
    model.eval()
    with torch.no_grad():
        ...
    model.train()
(If your loop calls model.train() at the start of each epoch instead, trace one more training step after the
evaluation, so the trace can see it.)"""


class Assertions:
    """Assertion methods; `LoopTrace` provides `run`, `tables`, `legend`, `modes_at_exit`."""

    run: Run
    tables: RunTables
    legend: str
    modes_at_exit: dict[str, bool]
    run_dir: Path
    discovered: bool
    skipped_steps: list[int]

    # ---- the loop rules ------------------------------------------------------------------
    def assert_step_order(self) -> None:
        """zero_grad → backward → unscale_ → clip → step → update → scheduler.step, every step."""
        __tracebackhide__ = True
        self._assert_checks("assert_step_order()", STEP_ORDER, need="step", expected=CANONICAL)

    def assert_zero_grad_called(self) -> None:
        """Gradients are cleared between optimizer steps (rule missing-zero-grad)."""
        __tracebackhide__ = True
        self._assert_checks("assert_zero_grad_called()", ("missing-zero-grad",), need="step")

    def assert_no_zero_grad_before_step(self) -> None:
        """No zero_grad() between backward() and the optimizer step (zero-grad-before-step)."""
        __tracebackhide__ = True
        self._assert_checks("assert_no_zero_grad_before_step()", ("zero-grad-before-step",), need="step")

    def assert_scheduler_after_optimizer(self) -> None:
        """scheduler.step() comes after the optimizer step (scheduler-before-optimizer)."""
        __tracebackhide__ = True
        self._assert_checks("assert_scheduler_after_optimizer()", ("scheduler-before-optimizer",), need="step")

    def assert_scheduler_stepped(self) -> None:
        """Every traced scheduler's step() is called (scheduler-never-stepped)."""
        __tracebackhide__ = True
        self._assert_checks("assert_scheduler_stepped()", ("scheduler-never-stepped",), need="scheduler")

    def assert_scheduler_frequency(self) -> None:
        """Per-iteration schedules step every iteration, per-epoch ones every epoch
        (scheduler-step-frequency; needs a block long enough to tell, see the rule)."""
        __tracebackhide__ = True
        self._assert_checks("assert_scheduler_frequency()", ("scheduler-step-frequency",), need="scheduler")

    def assert_no_zero_lr_steps(self) -> None:
        """No optimizer step runs at learning rate 0 after the first (zero-lr-steps)."""
        __tracebackhide__ = True
        self._assert_checks("assert_no_zero_lr_steps()", ("zero-lr-steps",), need="step")

    def assert_clip_after_unscale(self) -> None:
        """Gradients of a scaled loss are unscaled before clipping (clip-before-unscale)."""
        __tracebackhide__ = True
        self._assert_checks("assert_clip_after_unscale()", ("clip-before-unscale",), need="step")

    def assert_eval_mode_in_eval(self, *, no_grad: bool = True) -> None:
        """Evaluation forwards run in eval mode (eval-without-eval-mode) and, unless
        `no_grad=False`, without autograd (eval-with-grad)."""
        __tracebackhide__ = True
        names = ("eval-without-eval-mode", "eval-with-grad") if no_grad else ("eval-without-eval-mode",)
        self._assert_checks(f"assert_eval_mode_in_eval({'' if no_grad else 'no_grad=False'})", names, need="eval")

    def assert_no_grad_in_eval(self) -> None:
        """Evaluation forwards run under no_grad / inference_mode (eval-with-grad)."""
        __tracebackhide__ = True
        self._assert_checks("assert_no_grad_in_eval()", ("eval-with-grad",), need="eval")

    def assert_train_mode_restored(self) -> None:
        """After evaluation the models train in train mode again (train-mode-not-restored);
        a model whose evaluation is the last thing traced must be in train mode at the end."""
        __tracebackhide__ = True
        self._assert_checks("assert_train_mode_restored()", ("train-mode-not-restored",), need="eval",
                            more=self._left_in_eval_mode())

    def assert_params_updated(self) -> None:
        """Parameters that get gradients are in an optimizer and change (params-not-updated)."""
        __tracebackhide__ = True
        self._assert_checks("assert_params_updated()", ("params-not-updated",), need="step")

    def assert_no_findings(self, select: str | Sequence[str] | None = None,
                           ignore: str | Sequence[str] | None = None, *, fail_on: str = "warning") -> None:
        """No finding at or above `fail_on` from the catalogue's rules (names or categories in
        `select` / `ignore`), computed exactly as `diagnose report` does."""
        __tracebackhide__ = True
        found, notes = run_rules(self.run, _names(select), _names(ignore))
        failed = [n for n in notes if " failed" in n]
        if failed:
            raise checks.CheckError("; ".join(failed))
        threshold = Severity.parse(fail_on)
        blocks = [self._describe(f, "rule") for f in found if f.severity >= threshold]
        if blocks:
            args = ", ".join([repr(a) for a in (select, ignore) if a is not None] +
                             ([f"fail_on={fail_on!r}"] if fail_on != "warning" else []))
            raise AssertionError(message.failure(f"assert_no_findings({args})", blocks, run_dir=str(self.run_dir)))

    # ---- the call table ------------------------------------------------------------------
    def assert_called(self, call: str, times: int | None = None) -> None:
        """`call` (a pattern: `"scheduler.step"`, `"zero_grad"`, `"opt1.step"`, ...) was
        recorded `times` times, or at least once when `times` is None (`times=0`: never).
        `optimizer.step` counts a GradScaler step once, skipped or not."""
        __tracebackhide__ = True
        pattern = patterns.parse(call)
        calls = CallIndex.of(self.tables)
        hit = self._hits(pattern, calls)
        count = int(hit.sum())
        if (count >= 1) if times is None else (count == times):
            return
        want = "at least once" if times is None else f"{times} time{'s' if times != 1 else ''}"
        per_step = {int(s): int(n) for s, n in zip(*np.unique(calls.step[hit], return_counts=True))}
        steps = sorted(set(calls.step.tolist()))
        details = [("expected", f"{call} called {want} in the block"),
                   ("recorded", f"{count} call{'s' if count != 1 else ''}"
                    + (": " + ", ".join(f"step {s}: {per_step.get(s, 0)}" for s in steps[:12])
                       + (", ..." if len(steps) > 12 else "") if steps else ""))]
        details += [("calls", self._summary(calls)), ("objects", self.legend or "none")]
        args = f"{call!r}" + (f", times={times}" if times is not None else "")
        headline = f"{call} was called {count} time{'s' if count != 1 else ''}, expected {want}"
        raise AssertionError(message.problem(f"assert_called({args})", headline, details, run_dir=str(self.run_dir)))

    def assert_order(self, *calls: str) -> None:
        """The calls happen in this order, again and again, from the first one recorded:
        `assert_order("zero_grad", "backward", "optimizer.step", "scheduler.step")`.

        Only the calls named are looked at; each may repeat before the next (gradient
        accumulation: several `backward`), and after the last the cycle starts over. The
        trace must hold at least one whole cycle. A step GradScaler skipped has no
        `optN.step`: `optimizer.step` (which matches `scalerN.step` too) never misses one,
        and a pattern naming `opt0.step` is excused on skipped steps.
        """
        __tracebackhide__ = True
        if len(calls) < 2:
            raise TypeError("assert_order() needs at least two calls")
        pats = [patterns.parse(c) for c in calls]
        index = CallIndex.of(self.tables)
        label = np.full(len(index), -1)
        for i in reversed(range(len(pats))):
            label[self._hits(pats[i], index, dedupe=False)] = i
        skipped = set(self.skipped_steps)
        current, cycles, n = -1, 0, len(pats)
        for pos in np.flatnonzero(label >= 0).tolist():
            got = int(label[pos])
            nxt = (current + 1) % n
            if current == -1 and got != 0:
                self._order_failure(calls, index, pos, None, pats[0].text)
            if got == current:
                continue
            if got == nxt or (current >= 0 and _excused(pats[nxt], int(index.step[pos]) in skipped)
                              and got == (nxt + 1) % n):
                current = got
                cycles += current == n - 1
                continue
            self._order_failure(calls, index, pos, pats[current].text, pats[nxt].text)
        if cycles == 0:
            seen = pats[current].text if current >= 0 else None
            headline = (f"the calls never went all the way to {pats[-1].text}" if seen else
                        "none of these calls was recorded")
            details = [("expected", " → ".join(calls) + " (each may repeat), at least once"),
                       ("recorded", f"up to {seen}" if seen else "none of them"),
                       ("calls", self._summary(index)), ("objects", self.legend or "none")]
            raise AssertionError(message.problem(_call("assert_order", calls), headline, details,
                                                 run_dir=str(self.run_dir)))

    # ---- helpers -------------------------------------------------------------------------
    def _assert_checks(self, assertion: str, names: Sequence[str], *, need: str, expected: str | None = None,
                       more: Sequence[Finding] = ()) -> None:
        __tracebackhide__ = True
        self._require(assertion, need)
        blocks = [self._describe(f, checks.source(name)) for name in names for f in checks.run_check(name, self.run)]
        blocks += [self._describe(f, "trace") for f in more]
        if blocks:
            extra = [f"expected order: {expected}"] if expected else []
            raise AssertionError(message.failure(assertion, blocks, run_dir=str(self.run_dir), extra=extra))

    def _require(self, assertion: str, need: str) -> None:
        """Fail (not pass) when the block recorded nothing the assertion could check."""
        __tracebackhide__ = True
        calls = CallIndex.of(self.tables)
        if need in ("step", "scheduler") and not calls.any_opt_step.any():
            hint = ("make the block create (or use) the optimizer and run at least one optimizer.step() or "
                    "scaler.step(optimizer)" if self.discovered else
                    "pass the optimizer that the loop steps (loop_trace(model, optimizer, ...)) and run at least one "
                    "optimizer.step() or scaler.step(optimizer) inside the block")
            self._nothing(assertion, "no optimizer step was recorded in the block", calls, hint)
        if need == "scheduler" and not self.tables.objects.get("schedulers"):
            self._nothing(assertion, "no scheduler was traced", calls,
                          "pass the scheduler: loop_trace(model, optimizer, scheduler=scheduler)")
        if need == "eval" and not calls.evaluation_forwards().any():
            self._nothing(assertion, "no evaluation forward pass was recorded in the block", calls,
                          f"evaluation is {EVALUATION}. Run the evaluation inside the block; one in train mode with "
                          "autograd on looks like training unless it is inside `with trace.phase(\"val\"):`")

    def _nothing(self, assertion: str, headline: str, calls: CallIndex, hint: str) -> None:
        __tracebackhide__ = True
        details = [("traced", self.legend or "nothing"), ("calls", self._summary(calls)), ("hint", hint)]
        raise AssertionError(message.problem(assertion, headline + ", so there is nothing to check", details,
                                             run_dir=str(self.run_dir)))

    def _describe(self, finding: Finding, source: str) -> list[str]:
        sequence = finding.evidence.get("sequence")
        if not sequence:
            step = finding.evidence.get("step", finding.steps[0] if finding.steps else None)
            calls = CallIndex.of(self.tables)
            rows = calls.rows_of_step(int(step)) if step is not None and len(calls) else []
            sequence = calls.sequence(int(rows[0])) if len(rows) else None
        return message.describe(finding, sequence=sequence, source=source, legend=self.legend)

    def _left_in_eval_mode(self) -> list[Finding]:
        """Models in eval mode when the block ended whose last recorded use was an evaluation
        (the rule can only judge training steps that follow an evaluation)."""
        calls = CallIndex.of(self.tables)
        if not len(calls):
            return []
        evaluation = calls.evaluation_forwards()
        training = calls.forward & calls.backprop
        found = []
        for model, in_train_mode in self.modes_at_exit.items():
            mine = calls.obj == model
            evals = np.flatnonzero(evaluation & mine)
            if in_train_mode or not len(evals):
                continue
            last = int(evals[-1])
            before, after = training & mine, (training & mine)[last:]
            if after.any() or (before.any() and not calls.train_mode[before].any()):
                continue  # trained again (the rule's case), or trained in eval mode throughout on purpose
            step = int(calls.step[last])
            found.append(Finding(
                rule="train-mode-not-restored", severity=Severity.WARNING,  # the rule's severity
                title=f"{model} is still in eval mode when the traced block ends, after its evaluation",
                steps=(step, step),
                evidence={"step": step, "sequence": calls.sequence(last), "missing": f"{model}.train"},
                fix=_RESTORE_FIX))
        return found

    def _order_failure(self, calls: Sequence[str], index: CallIndex, pos: int, after: str | None,
                       expected: str) -> None:
        __tracebackhide__ = True
        token, step = str(index.token[pos]), int(index.step[pos])
        headline = (f"{token} at step {step} came before {expected}" if after is None else
                    f"{token} at step {step} came after {after}, where {expected} was expected")
        details = [("expected", " → ".join(calls) + " (each may repeat), then again from the start"),
                   (f"step {step}", message.sequence_text(index.sequence(pos))),
                   ("call", f"{token} (expected {expected}" + (f" or another {after})" if after else ")")),
                   ("objects", self.legend or "none")]
        raise AssertionError(message.problem(_call("assert_order", calls), headline, details,
                                             run_dir=str(self.run_dir)))

    @staticmethod
    def _hits(pattern: patterns.CallPattern, calls: CallIndex, dedupe: bool = True) -> np.ndarray:
        """Rows matching `pattern`; with `dedupe`, a GradScaler step and the optimizer step it
        runs count once for `optimizer.step`."""
        if not len(calls):
            return np.zeros(0, dtype=bool)
        hit = pattern.matches(calls.obj, calls.method, calls.token)
        if dedupe and pattern.loop_step:
            hit &= ~(calls.opt_step & np.r_[False, calls.scaler_step[:-1]])
        return hit

    @staticmethod
    def _summary(calls: CallIndex, limit: int = 14) -> str:
        """Distinct recorded tokens with their counts, in first-seen order."""
        if not len(calls):
            return "none"
        tokens, first, counts = np.unique(calls.token, return_index=True, return_counts=True)
        order = np.argsort(first)
        parts = [f"{tokens[i]} x{counts[i]}" for i in order[:limit]]
        return message.sequence_text(parts + (["..."] if len(order) > limit else []))


def _excused(pattern: patterns.CallPattern, skipped: bool) -> bool:
    """`optN.step` may be missing from a step GradScaler skipped."""
    return skipped and pattern.kind == "opt" and pattern.method == "step" and not pattern.loop_step


def _names(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _call(name: str, args: Sequence[str]) -> str:
    return f"{name}({', '.join(repr(a) for a in args)})"
