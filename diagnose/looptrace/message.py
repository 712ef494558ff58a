"""The text of a failed loop_trace assertion: what was expected, what was recorded, the fix.

    loop_trace.assert_step_order(): 1 problem in the recorded loop

    [scheduler-before-optimizer] sched0.step() runs before the optimizer step in 3 steps
      expected  scheduler.step() after optimizer.step() (or scaler.step(optimizer))
      step 0    opt0.zero_grad, model0.forward[TGB], backward, sched0.step, opt0.step
      call      sched0.step (too early)
      fix       Step the scheduler after the optimizer ...
      rule      scheduler-before-optimizer (warning); `diagnose explain scheduler-before-optimizer`
"""
from __future__ import annotations

import textwrap
from collections.abc import Sequence

from diagnose.rules._base import Finding

WIDTH = 100
SHOWN = 3
"""Findings shown in full; the others get one line each."""

EXPECTED = {
    "missing-zero-grad": "zero_grad() between every two optimizer steps that have a backward() between them",
    "zero-grad-before-step": "zero_grad() before backward(), never between backward() and the optimizer step",
    "scheduler-before-optimizer": "scheduler.step() after optimizer.step() (or scaler.step(optimizer))",
    "scheduler-never-stepped": "scheduler.step() called in the traced block",
    "scheduler-step-frequency": "each scheduler stepped as often as its schedule was laid out "
                                "(per iteration or per epoch)",
    "zero-lr-steps": "a learning rate above 0 at every optimizer step after the first",
    "clip-before-unscale": "scaler.unscale_(optimizer) before clipping gradients of a scaled loss",
    "clip-after-step": "gradient clipping between backward() and the optimizer step",
    "eval-without-eval-mode": "evaluation forward passes in eval mode (model.eval())",
    "eval-with-grad": "evaluation forward passes without autograd (torch.no_grad() or torch.inference_mode())",
    "train-mode-not-restored": "the model back in train mode after evaluation (model.train())",
    "params-not-updated": "every parameter that gets a gradient is in an optimizer, and changes when it steps",
}

# evidence keys that name the offending call, and how to read them
_CALL_KEYS = (("call", ""), ("early_call", "too early"), ("clearing_call", "clears the gradients"),
              ("missing", "missing"))


def _block(label: str, text: str) -> list[str]:
    """`label` in a 10-wide column, `text` beside it (its own line breaks kept: fixes hold code)."""
    pad = " " * 12
    return [(f"  {label:<10}" if i == 0 else pad) + line.rstrip()
            for i, line in enumerate(str(text).splitlines() or [""])]


def sequence_text(tokens: Sequence[str]) -> str:
    """Call tokens, comma-separated, wrapped at WIDTH."""
    return textwrap.fill(", ".join(tokens), WIDTH - 12, break_long_words=False, break_on_hyphens=False)


def describe(finding: Finding, *, sequence: Sequence[str] | None, source: str, legend: str) -> list[str]:
    """The lines for one finding (`sequence`: the calls of its first step, trimmed)."""
    lines = [f"[{finding.rule}] {finding.title}"]
    expected = EXPECTED.get(finding.rule)
    if expected:
        lines += _block("expected", expected)
    step = finding.evidence.get("step", finding.steps[0] if finding.steps else None)
    if sequence:
        lines += _block(f"step {step}" if step is not None else "calls", sequence_text(sequence))
    elif step is not None:
        lines += _block("step", str(step))
    for key, note in _CALL_KEYS:
        value = finding.evidence.get(key)
        if value:
            lines += _block("call", f"{value} ({note})" if note else str(value))
            break
    if finding.steps and finding.steps[0] != finding.steps[1]:
        lines += _block("steps", f"{finding.steps[0]} to {finding.steps[1]}")
    if legend:
        lines += _block("objects", legend)
    if finding.fix:
        lines += _block("fix", finding.fix)
    where = {"rule": f"`diagnose explain {finding.rule}`",
             "plugin": "a loop_trace check (no diagnose rule yet)",
             "trace": "checked by loop_trace when the block ended"}.get(source, source)
    lines += _block("rule", f"{finding.rule} ({finding.severity.label}); {where}")
    return lines


def failure(assertion: str, blocks: list[list[str]], *, run_dir: str | None, extra: Sequence[str] = ()) -> str:
    """The whole message: a headline, up to SHOWN blocks in full, a line for each other."""
    count = len(blocks)
    head = f"loop_trace.{assertion}: {count} problem{'s' if count != 1 else ''} in the recorded loop"
    lines = [head, ""]
    for block in blocks[:SHOWN]:
        lines += block + [""]
    for block in blocks[SHOWN:]:
        lines.append(f"also: {block[0]}")
    lines += list(extra)
    if run_dir:
        lines.append(f"recorded in {run_dir} (`diagnose report` it for the full report)")
    return "\n".join(lines).rstrip()


def problem(assertion: str, headline: str, details: Sequence[tuple[str, str]], *, run_dir: str | None = None) -> str:
    """A failure that is not a finding (nothing recorded, a wrong count, an order mismatch)."""
    lines = [f"loop_trace.{assertion}: {headline}", ""]
    for label, text in details:
        lines += _block(label, text)
    if run_dir:
        lines += ["", f"recorded in {run_dir} (`diagnose report` it for the full report)"]
    return "\n".join(lines).rstrip()
