"""The training loss climbs back up and stays up over a sustained stretch of steps.

## What it flags
In a run of at least 20 steps with a finite loss, a stretch of at least 10 steps (and
10% of the run) in which the smoothed training loss
stays clearly above the best it had reached before: by a quarter of the progress made
from the start, by 10% of the best value, and by well over the batch-to-batch noise.
Reports where the loss was best, where it rose, how high it went, where it ended, the
learning rate then, and the gradient norm's growth over the same steps.

## Why it matters
A falling loss that turns and climbs means the updates now make the model worse: the
learning rate is too high for where the run is (a warm-up peak set too high, a schedule
that grows, a restart), the optimizer state or the weights were damaged (a spike, fp16
overflow), or the training data changed under the model (a shuffling or labelling bug
that hits part of the data). Every step after the turn wastes compute, and the run
usually ends in `nonfinite-loss` if left alone.

## Example
```python
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 100) * 50)
#                                                         a warm-up to 50x the base LR
```
Use instead:
```python
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)   # in the loop
```
Then compare the LR recorded at the turn (evidence) with what the model tolerated before.

## Thresholds
Smoothing: trailing rolling median over w = n/20 steps (5 to 25). Start: median of the
first w losses. At each step, best = the lowest smoothed loss so far; the loss is "up"
when smoothed - best >= max(25% of (start - best), 10% of |best|, 4 standard errors of a
w-median, from 1.4826 x MAD of the loss around a centred median). Fires when it is up
for >= max(10, 10% of the steps) steps in a row. Error when the loss ends at or above
where it started (all progress lost), else warning.
A run that trains different models one after the other (a teacher, then a student with
its own optimizer: `_signals.training_stages`) is judged stage by stage: the student's
first losses are not a rise from the teacher's best.
A loss that never fell before it rose (its best is its start, within 4 standard errors)
and has stopped rising (the last w losses no higher than the w around the middle of the
run, within the same margin) is reported at info only: the task got harder during the
first steps on purpose (field test round 4: a MoCo queue filling with real negatives,
2.1 -> 4.0 over 9 steps, then flat at 3.8 for 70 steps; tests/rules/test_field_test_round4.py).
A loss that rises from the start and keeps rising (`maximize=True`, a sign error, an LR
too high from step 0) keeps its warning or error.
A model's `load_state_dict` after it began training (`_signals.restore_steps`) is a
rollback: the loss is judged apart before and after it, and a rise that ended in the
restore is info (an LR range test that ramps the LR until the loss blows up and then
restores its start; field test round 4).
Healthy scenarios (12, seeds 0-2): at most 11 consecutive "up" steps, 3.7% of the run
(batch size 2, 300 steps); a converged run whose loss went from 1e-7 to 4e-6 is not up
(that is nothing next to the 1.4 it started from). Faulty runs (seeds 0-2): 175-178 of
250 steps (labels going bad from step 60), 96-133 of 200 (an LR warm-up without end),
16-17 of 64 (SGD, LR 20x too high from step 40), 21-24 of the ~40 finite steps before
the reference `gradient-explosion` injection turns the loss NaN.
"""
from __future__ import annotations

import numpy as np

from diagnose.rules._base import Finding, RunTables, Severity
from diagnose.rules.numerics import _signals

NAME = "loss-divergence"
SEVERITY = Severity.WARNING
REQUIRES = ("steps.loss",)

MIN_STEPS = 20
PROGRESS_SHARE = 0.25
RELATIVE = 0.10
NOISE_SE = 4.0
SUSTAINED = 10
SUSTAINED_SHARE = 0.10

_FIX = """Find what changed at the turn (evidence: the step, the LR, the gradient norm):
- LR too high there: lower the peak LR, shorten/soften the warm-up, use a decaying schedule;
- clip gradients: `torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)`;
- a spike or overflow just before the turn: see gradient-spike / loss-scale-collapse,
  and restart from a checkpoint saved before the turn;
- data: check that the batches after the turn come from the same distribution (labels,
  normalisation, shuffling across files)."""


def check(run: RunTables) -> list[Finding]:
    loss = _signals.finite_losses(run.steps)
    stages = _signals.training_stages(run.calls) if len(run.calls) else []
    restores = _signals.restore_steps(run.calls) if len(run.calls) else []
    if len(stages) < 2 and not restores:
        return _check_series(run.steps, loss)
    if not stages and len(loss):
        stages = [(int(loss.index.min()), int(loss.index.max()))]
    findings = []
    for first, last in _split(stages, restores):
        for finding in _check_series(run.steps, loss[(loss.index >= first) & (loss.index <= last)]):
            finding.evidence["stage"] = [first, last]
            if last in restores:
                _rolled_back(finding, last)
            findings.append(finding)
    return findings


def _split(stages: list[tuple[int, int]], restores: list[int]) -> list[tuple[int, int]]:
    """The stages cut after each step in which the weights were restored."""
    out = []
    for first, last in stages:
        for at in restores:
            if first <= at < last:
                out.append((first, at))
                first = at + 1
        out.append((first, last))
    return out


def _rolled_back(finding: Finding, at: int) -> None:
    """A rise that ended in a restore of the weights was thrown away by the loop itself (an
    LR range test, a rollback): worth knowing, not a warning."""
    finding.severity = Severity.INFO
    finding.title += f"; then the weights were restored (step {at}), so the rise was rolled back"
    finding.evidence["restored_at"] = at


def _check_series(steps, loss) -> list[Finding]:
    n = len(loss)
    if n < MIN_STEPS:
        return []
    w = int(np.clip(n // 20, 5, 25))
    values = loss.to_numpy(dtype="float64")
    smooth = loss.rolling(w, min_periods=w).median()
    start = float(np.median(values[:w]))
    best = smooth.cummin()
    centred = loss.rolling(w, center=True, min_periods=1).median()
    noise = float(1.4826 * np.median(np.abs(values - centred.to_numpy())))
    se = 1.2533 * noise * np.sqrt(2.0 / w)
    need = np.maximum(np.maximum(PROGRESS_SHARE * (start - best), RELATIVE * best.abs()), NOISE_SE * se)
    rise = smooth - best
    up = ((rise >= need) & (rise > 0)).to_numpy()
    longest_needed = max(SUSTAINED, int(np.ceil(SUSTAINED_SHARE * n)))
    episodes = [(a, b) for a, b in _signals.runs(up) if b - a + 1 >= longest_needed]
    if not episodes:
        return []
    a, b = episodes[0][0], episodes[-1][1]          # from the first sustained rise to the last
    up_steps = int(sum(y - x + 1 for x, y in episodes))
    index = loss.index
    onset, last = int(index[a]), int(index[b])
    before = smooth.iloc[:a + 1]
    best_value = float(best.iloc[a])
    best_step = int(before.idxmin())
    episode = smooth.iloc[a:b + 1]
    peak_step = int(episode.idxmax())
    peak = float(episode.max())
    end = float(np.median(values[-w:]))
    lost_all = end >= start
    severity = Severity.ERROR if lost_all else Severity.WARNING
    if _rose_from_the_start_and_settled(values, start, best_value, end, peak, NOISE_SE * se, w):
        return [_settled_rise(steps, start, end, peak, peak_step, onset, last, up_steps, w, noise)]
    recovered = b < n - 1 and not lost_all
    title = (f"Loss rose from its best, {_signals.fmt(best_value)} (step {best_step}), to {_signals.fmt(peak)} "
             f"(step {peak_step}): up on {up_steps} steps from step {onset}")
    if lost_all:
        title += f"; it ends at {_signals.fmt(end)}, no better than the start ({_signals.fmt(start)})"
    elif recovered:
        title += ", then came back down"
    evidence = {
        "loss_start": start,
        "loss_best": best_value,
        "best_step": best_step,
        "onset_step": onset,
        "end_step": last,
        "peak_loss": peak,
        "peak_step": peak_step,
        "loss_end": end,
        "up_steps": up_steps,
        "episodes": [[int(index[x]), int(index[y])] for x, y in episodes][:10],
        "steps_with_loss": n,
        "rise_over_best": peak - best_value,
        "slope_per_step": (float(episode.iloc[-1]) - float(episode.iloc[0])) / max(last - onset, 1),
        "window": w,
        "noise": noise,
        "lr_at_best": _lr(steps, best_step),
        "lr_at_onset": _lr(steps, onset),
        "thresholds": {"progress_share": PROGRESS_SHARE, "relative": RELATIVE, "noise_se": NOISE_SE,
                       "sustained_steps": longest_needed},
    }
    growth = _grad_growth(steps, best_step, last)
    if growth is not None:
        evidence["grad_norm_growth"] = growth
    explanation = (f"The smoothed loss reached {_signals.fmt(best_value)} at step {best_step}; from step {onset} it "
                   f"stayed well above that on {up_steps} of the next {last - onset + 1} steps (peak "
                   f"{_signals.fmt(peak)} at step {peak_step}; noise of single batches {_signals.fmt(noise)}).")
    lr_best, lr_onset = evidence["lr_at_best"], evidence["lr_at_onset"]
    if lr_best and lr_onset and lr_onset[0] > 1.5 * lr_best[0]:
        explanation += (f" The learning rate had grown from {_signals.fmt(lr_best[0])} to "
                        f"{_signals.fmt(lr_onset[0])} by then: likely too high for this point of training.")
    if growth is not None and growth >= 10:
        explanation += f" The gradient norm grew {_signals.fmt(growth)}x over the same steps (see gradient-explosion)."
    if lost_all:
        explanation += " By the end the loss is no better than at the start: everything learned was lost."
    return [Finding(rule=NAME, severity=severity, title=title, steps=(onset, last), evidence=evidence,
                    explanation=explanation, fix=_FIX)]


def _rose_from_the_start_and_settled(values: np.ndarray, start: float, best: float, end: float, peak: float,
                                     margin: float, w: int) -> bool:
    """The loss never fell measurably before it rose (its best is its start, within
    `margin`), it settled up there (it ends above its start, beyond `margin`, and has come
    down by no more than half of its rise from the peak), and it has stopped rising: the
    last w losses are no higher than the w around the middle of the run, beyond `margin`.
    A loss that shot up and then fell back or collapsed (a Hugging Face Trainer at LR 5:
    12.8 -> 1,990 -> logged as 0 once NaN; tests/integrations/test_hf_trainer_logs.py)
    is a divergence, not a task that got harder (MoCo: 2.1 -> 4.0, flat at 3.8)."""
    if start - best > margin or end - start <= margin or peak - end > 0.5 * (peak - start):
        return False
    mid = len(values) // 2
    middle = float(np.median(values[max(0, mid - w // 2):mid + w - w // 2]))
    return end - middle <= margin


def _settled_rise(steps, start: float, end: float, peak: float, peak_step: int, onset: int, last: int,
                  up_steps: int, w: int, noise: float) -> Finding:
    """The info finding for a loss that rose over the first steps, without any progress
    before, and then stopped rising (see Thresholds)."""
    title = (f"Loss rose from the first steps, {_signals.fmt(start)} to {_signals.fmt(peak)} (step {peak_step}), "
             f"and settled at {_signals.fmt(end)}: it never fell before the rise")
    explanation = ("The loss did not fall at all before it rose, and the rise stopped: from the middle of the run "
                   "to the end it is flat. That is how a loss behaves whose task gets harder during the first "
                   "steps on purpose: a contrastive loss whose queue or memory bank fills with real negatives "
                   "(MoCo), a KL or regulariser weight that is annealed in, a curriculum. If none of that applies, "
                   "the model learned nothing: check that the loss is minimised (not `maximize=True`, not a sign "
                   "error in a hand-written update) and that the LR is not too high from the first step.")
    evidence = {"loss_start": start, "peak_loss": peak, "peak_step": peak_step, "loss_end": end,
                "onset_step": onset, "end_step": last, "up_steps": up_steps, "window": w, "noise": noise,
                "shape": "rose from the start, then settled", "lr_at_onset": _lr(steps, onset)}
    return Finding(rule=NAME, severity=Severity.INFO, title=title, steps=(onset, last), evidence=evidence,
                   explanation=explanation, fix=_FIX)


def _lr(steps, step: int) -> list[float]:
    columns = sorted(c for c in steps.columns if c.startswith("lr_"))
    if not columns or step not in steps.index:
        return []
    return [float(steps.at[step, c]) for c in columns]


def _grad_growth(steps, first: int, last: int) -> float | None:
    """Largest pre-clip gradient norm in [first, last] over the median around `first`."""
    norms, _ = _signals.preclip_norms(steps)
    if norms.empty:
        return None
    around = norms[(norms.index >= first - 5) & (norms.index <= first + 5)]
    inside = norms[(norms.index >= first) & (norms.index <= last)]
    if around.empty or inside.empty or around.median() <= 0:
        return None
    return float(inside.rolling(5, min_periods=1).median().max() / around.median())
