"""A loss that takes logits or log-probabilities is fed probabilities.

## What it flags
- `F.cross_entropy` / `nn.CrossEntropyLoss` whose prediction is already a probability
  distribution: every value in [0, 1] and every row (the class dimension) summing to 1,
  i.e. the output of a `softmax`;
- `F.nll_loss` / `nn.NLLLoss` fed probabilities instead of log-probabilities: every value
  in [0, 1] (log-probabilities are all <= 0);
- `F.binary_cross_entropy_with_logits` / `nn.BCEWithLogitsLoss` fed the output of a
  sigmoid (`nn.Sigmoid()` as the model's last layer, `torch.sigmoid`): the autograd node
  that made the prediction is `SigmoidBackward0` (recorded as `input_op`, a name read on
  the host). Values alone cannot tell: healthy logits of a fresh model can all lie in
  [0, 1] too. Found missing in the field test (tests/scripts/sigmoid_before_bce_with_logits.py).
Judged on the loss calls recorded on sampled training steps (the first 5 optimizer steps,
then every 100th: `loss_call` events with the prediction's min, max and largest
|row sum - 1|, computed on the device and read asynchronously).

## Why it matters
`cross_entropy` applies `log_softmax` itself. Fed probabilities p, it computes
`log_softmax(p)`: the inputs of that softmax only span [0, 1], so the predicted
distribution can never be far from uniform (with 10 classes the best it can say for the
right class is e/(e + 9) = 23%), the loss cannot go far below its starting value, the
gradients are squashed by the softmax's Jacobian, and the model learns slowly or not
at all. `nll_loss` expects log-probabilities and simply returns `-input[target]`: fed
probabilities it *maximises* nothing useful, the loss is negative and its minimum is
-1, reached by saturating one output.

## Example
```python
probs = model(x).softmax(-1)
loss = F.cross_entropy(probs, y)          # softmax applied twice
loss = F.nll_loss(probs, y)               # NLL of probabilities, not log-probabilities
```
Use instead:
```python
logits = model(x)
loss = F.cross_entropy(logits, y)         # takes raw logits
loss = F.nll_loss(logits.log_softmax(-1), y)
```
Healthy and not flagged: `log_softmax` + `NLLLoss`; `BCELoss` on sigmoid outputs (it
takes probabilities); `cross_entropy` with probability (soft) targets or label smoothing
(the *target* is a distribution, the prediction still logits).

## Thresholds
- row sums within `ROW_SUM_TOL` = 0.01 of 1: softmax in float32 sums to 1 within ~1e-6;
  in bfloat16/float16 each value is rounded to 2^-8 relative, so a row sum is off by at
  most ~0.4%; raw logits summing to 1 within 1% in *every* row are practically impossible;
- values in [0, 1 + 1e-3] (the margin covers rounding up to 1.0 in half precision);
- at least `MIN_CALLS` = 2 recorded calls of the function look like this (or the only one,
  in a run with a single sampled call), with at least 2 classes;
- binary_cross_entropy_with_logits: the same count of calls whose prediction came straight
  from a sigmoid. There is no threshold to tune: BCE-with-logits of a sigmoid is a sigmoid
  applied twice whatever the values (an explicit `.float()` or reshape in between hides it).
"""
from __future__ import annotations

import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "softmax-before-cross-entropy"
SEVERITY = Severity.ERROR
REQUIRES = ("loss_calls",)

ROW_SUM_TOL = 0.01
VALUE_MARGIN = 1e-3
MIN_CALLS = 2

_FIX = {
    "cross_entropy": ("Pass the raw logits: cross_entropy applies log_softmax itself.\n"
                      "    logits = model(x)              # no .softmax() here\n"
                      "    loss = F.cross_entropy(logits, y)\n"
                      "Apply softmax only where you need probabilities (metrics, inference)."),
    "binary_cross_entropy_with_logits": (
        "Pass the raw logits: BCEWithLogitsLoss applies the sigmoid itself (stably).\n"
        "    net = nn.Sequential(..., nn.Linear(32, 1))     # no nn.Sigmoid() at the end\n"
        "    loss = nn.BCEWithLogitsLoss()(net(x), y)\n"
        "    probs = torch.sigmoid(net(x))                  # only where you need probabilities\n"
        "or keep the sigmoid and use nn.BCELoss (less stable)."),
    "nll_loss": ("Give nll_loss log-probabilities:\n"
                 "    loss = F.nll_loss(logits.log_softmax(dim=1), y)\n"
                 "or pass the logits to F.cross_entropy, which does both in one stable step."),
}


def probability_like(calls: pd.DataFrame) -> pd.Series:
    """Per loss call: is its prediction a probability tensor (see the module docs)?"""
    in_range = (calls["pred_min"] >= 0.0) & (calls["pred_max"] <= 1.0 + VALUE_MARGIN)
    rows_sum_to_one = calls["row_sum_err"] <= ROW_SUM_TOL
    ce = calls["fn"] == "cross_entropy"
    nll = calls["fn"] == "nll_loss"
    classes = pd.to_numeric(calls["classes"], errors="coerce")
    return (in_range & ((ce & rows_sum_to_one) | nll) & (classes >= 2)).fillna(False).astype(bool)


SIGMOID_OPS = ("SigmoidBackward0", "SigmoidBackward1")
"""Autograd nodes of `torch.sigmoid` / `nn.Sigmoid` (the suffix is torch's overload number)."""


def _sigmoid_before_bce(run: RunTables) -> list[Finding]:
    calls = run.loss_calls
    if "input_op" not in calls.columns:
        return []
    calls = calls[calls["fn"] == "binary_cross_entropy_with_logits"]
    if calls.empty:
        return []
    bad = calls[calls["input_op"].isin(SIGMOID_OPS)]
    if not len(bad) or len(bad) < min(MIN_CALLS, len(calls)):
        return []
    steps = sorted(int(s) for s in bad["step"].unique())
    fn = "binary_cross_entropy_with_logits"
    first = bad.iloc[0]
    evidence = {"function": fn, "calls_flagged": len(bad), "calls_recorded": len(calls), "steps": steps[:20],
                "input_shape": list(first["input_shape"]) if first["input_shape"] is not None else None,
                "input_op": str(first["input_op"])}
    title = (f"{fn} (BCEWithLogitsLoss) is fed sigmoid outputs on {len(bad)} of {len(calls)} recorded calls: "
             "the sigmoid is applied twice")
    explanation = ("binary_cross_entropy_with_logits applies a sigmoid to its input. The prediction it got was "
                   "already the output of a sigmoid (values in (0, 1)), so the loss sees sigmoid(sigmoid(z)), "
                   "which only spans (0.5, 0.73): the model can never predict the negative class with confidence, "
                   "the loss cannot fall far and the gradients are squashed.")
    return [Finding(rule=NAME, severity=SEVERITY, title=title, steps=(steps[0], steps[-1]),
                    evidence=evidence, explanation=explanation, fix=_FIX[fn])]


def check(run: RunTables) -> list[Finding]:
    findings = _sigmoid_before_bce(run)
    calls = run.loss_calls
    calls = calls[calls["fn"].isin(("cross_entropy", "nll_loss")) & calls["pred_min"].notna()]
    if calls.empty:
        return findings
    flagged = probability_like(calls)
    for fn, group in calls.groupby("fn", sort=False):
        bad = group[flagged.loc[group.index]]
        if len(bad) < min(MIN_CALLS, len(group)):
            continue
        steps = sorted(int(s) for s in bad["step"].unique())
        first = bad.iloc[0]
        sums = "rows summing to 1" if (bad["row_sum_err"] <= ROW_SUM_TOL).all() else "rows not summing to 1"
        what = "probabilities (its input went through softmax)" if fn == "cross_entropy" \
            else "probabilities, not log-probabilities"
        title = (f"{fn} is fed {what} on {len(bad)} of {len(group)} recorded calls "
                 f"(values in [{first['pred_min']:.3g}, {first['pred_max']:.3g}], {sums})")
        evidence = {
            "function": fn,
            "calls_flagged": len(bad),
            "calls_recorded": len(group),
            "steps": steps[:20],
            "input_shape": list(first["input_shape"]) if first["input_shape"] is not None else None,
            "pred_min": float(bad["pred_min"].min()),
            "pred_max": float(bad["pred_max"].max()),
            "max_row_sum_error": float(bad["row_sum_err"].max()),
        }
        if fn == "cross_entropy":
            explanation = ("cross_entropy applies log_softmax to its input. Given probabilities it applies softmax a "
                           "second time to values that only span [0, 1], so its predictions stay close to uniform, the "
                           "loss cannot fall far and the gradients are squashed: the model learns slowly or not at all.")
        else:
            explanation = ("nll_loss returns -input[target], expecting log-probabilities (all <= 0). Given "
                           "probabilities it is negative, bounded below by -1, and pushes one output to saturate "
                           "instead of training a calibrated classifier.")
        findings.append(Finding(rule=NAME, severity=SEVERITY, title=title, steps=(steps[0], steps[-1]),
                                evidence=evidence, explanation=explanation, fix=_FIX[str(fn)]))
    return findings
