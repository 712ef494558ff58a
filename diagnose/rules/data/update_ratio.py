"""Optimizer updates far too large (a layer thrashes) or practically zero (it does not learn).

## What it flags
Per layer (the parameters of one module together), the size of each optimizer update
relative to the weights, ‖Δw‖/‖w‖, on the sampled steps (`param_every`, 25 by default):
- **too large**: above `LARGE` on most sampled steps (at least `MIN_SAMPLES`): each step
  rewrites a large part of the layer, which then jumps around instead of converging;
- **practically zero**: below `SMALL` on most sampled steps where the layer's learning
  rate is at least 1% of its peak and the layer got gradients: the layer keeps its
  initial weights while the run goes on (an LR of 1e-9 for one param group, or for all).

Not judged (normal training): steps a GradScaler skipped, and steps that changed no weight
at all (every gradient cleared before the step: `zero-grad-before-step`); a parameter on a
step where its optimizer took no step (a GAN's generator during the critic's iterations:
with 5 critic steps per generator step and weights sampled every 25 steps, every sample
of the generator fell on a critic step and read as "never changes" before this); parameters in no
optimizer (`params-not-updated`); layers whose group LR is 0 on a
step (`zero-lr-steps` covers it) or below 1% of that group's largest LR in the run (a
warm-up from 0, the tail of a cosine schedule, ReduceLROnPlateau's cuts); layers with no
gradient on a step (frozen, unused; `params-not-updated`, `dead-units` cover those);
layers with zero weights. Gradient accumulation needs nothing: ratios are per optimizer
step. A parameter updated by weight decay alone has no gradient and is not judged.

## Why it matters
The usual healthy update is about 1e-3 of the weight per step (the rule of thumb from
Karpathy's CS231n notes for SGD/Adam; what the healthy runs below do). Updates of 10% or
more per step mean the LR is far too high for that layer: it forgets each step what the
previous one taught it. Updates below 1e-7 of the weights mean the layer cannot move in
any reasonable number of steps: it stays random while the loss goes down only through
the other layers.

## Example
```python
opt = torch.optim.AdamW([
    {"params": model.backbone.parameters(), "lr": 1e-9},   # typo: meant 1e-4
    {"params": model.head.parameters()}], lr=1e-3)
```
Use instead:
```python
opt = torch.optim.AdamW([
    {"params": model.backbone.parameters(), "lr": 1e-4},
    {"params": model.head.parameters()}], lr=1e-3)
```

## Thresholds
Measured with `python bench/update_ratios.py --seeds 0 1` (update norms on every step):
the 12 healthy scenarios of tests/harness/scenarios.py (SGD, Adam, AdamW; warm-up from 0,
OneCycle, cosine, ReduceLROnPlateau, GradScaler, accumulation, frozen backbone, two
optimizers) and the reference loop with AdamW (LR 3e-3) and SGD (LR 0.05): the median
ratio of a run is 2e-3-9e-3 (1e-2-4e-2 for the small Adam heads at LR 5e-3-1e-2, 4e-6 for
a long SGD run converged to its noise floor), per-layer medians from 1.5e-4 to 3.9e-2.
- `LARGE = 0.1`, on at least `LARGE_FRACTION = 0.5` of a layer's samples at full LR
  (group LR >= `FULL_LR_FRACTION = 0.25` of its peak): the most any healthy layer reached
  was 34% (a positional embedding initialised at zero: its first updates are large
  relative to its small norm; healthy first steps reach 1.0). A layer of the reference
  loop at 1000x-10000x the LR: 57-71% of its samples above 0.1 (medians 0.12, 0.44); an
  MLP layer at LR 30 with AdamW (weight decay 0.5): 0.09-0.34 on every step after the
  first ones (tests/rules/data/test_update_ratio.py).
- `SMALL = 1e-7`, on at least `FRACTION = 0.8` of a layer's judged samples (LR >= 1% of
  its peak, a gradient): no healthy sample was below it (smallest: 1.4e-7, the converged
  SGD run; its layers' medians 3e-6-7e-6). LR 1e-9 gives 1.4e-9-2.4e-9 for an AdamW group
  (tests/harness/faults_data.py group_lr_1e9), 2e-11-6e-9 for the reference loop with
  AdamW (`--inject loss-plateau`), 0 to 2.5e-10 with SGD: a float32 weight above ~0.02
  does not move at all (the update is below half a unit in the last place).
- `MIN_SAMPLES = 3`: with the default `param_every=25`, a run needs 75 steps or more (a
  shorter run is not judged).
Rule of thumb for a healthy update ratio, ~1e-3: Karpathy, CS231n "Neural Networks 3"
(ratio of the updates to the values). The copy of the weights is taken only when it fits
in 5% of the device's memory (diagnose/recorder/updates.py); otherwise a `not_recorded`
event says so and the rule has nothing to judge.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity, json_number
from diagnose.rules.loop._callindex import CallIndex, lr_columns

NAME = "update-ratio"
SEVERITY = Severity.WARNING
REQUIRES = ("params", "update_norms", "param_norms")

LARGE = 0.1
SMALL = 1e-7
FRACTION = 0.8
"""Share of a layer's judged samples that must be past the threshold."""
MIN_SAMPLES = 3
LOW_LR_FRACTION = 0.01
"""A step whose group LR is below this share of the group's peak LR is not judged 'zero'."""
FULL_LR_FRACTION = 0.25
"""'Too large' is judged on steps whose group LR is at least this share of its peak."""
LARGE_FRACTION = 0.5
"""Share of a layer's full-LR samples that must be above `LARGE`."""
MAX_LAYERS = 5


def _layer_of(name: str) -> str:
    return name.rpartition(".")[0] or name


def _group_columns(run: RunTables) -> dict[int, str]:
    """Parameter index -> its `lr_K` column (optimizers, then groups, as recorded)."""
    columns = lr_columns(run)
    offsets, total = {}, 0
    for opt in sorted(run.objects.get("optimizers") or [], key=lambda o: o.get("index", 0)):
        offsets[opt.get("index", 0)] = total
        total += len(opt.get("groups") or [])
    out = {}
    for index, row in run.params.iterrows():
        opt, group = row.get("optimizer"), row.get("group")
        if opt is None or group is None or pd.isna(opt) or pd.isna(group):
            continue
        k = offsets.get(int(opt), 0) + int(group)
        if k < len(columns):
            out[int(index)] = columns[k]
    return out


def _optimizer_stepped(run: RunTables, steps: pd.Index) -> dict[int, np.ndarray]:
    """Optimizer index -> whether its `step()` was called on each of `steps`, for the
    optimizers the call order shows stepping at all (none: nothing known, nothing dropped)."""
    if run.calls is None or run.calls.empty:
        return {}
    calls = CallIndex.of(run)
    stepped = {}
    for obj in np.unique(calls.obj[calls.opt_step]):
        if obj[3:].isdigit():  # optN
            rows = calls.opt_step & (calls.obj == obj)
            stepped[int(obj[3:])] = np.asarray(steps.isin(np.unique(calls.step[rows])))
    return stepped


def layer_ratios(run: RunTables) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(ratios, eligible, full_lr): per sampled step (index) and layer (columns),
    ‖Δw‖/‖w‖ of the layer's parameters together; whether the step may be judged
    "practically zero" for that layer; whether its LR is at full speed (judged "too
    large"). Steps a GradScaler skipped are dropped."""
    upd, weights = run.update_norms, run.param_norms
    steps = upd.index.intersection(weights.index)
    if "skipped" in run.steps.columns:
        skipped = run.steps["skipped"].reindex(steps).fillna(False).astype(bool)
        steps = steps[~skipped.to_numpy()]
    columns = [c for c in upd.columns  # trainable parameters (the others are never copied: NaN)
               if c in weights.columns and c in run.params.index and upd[c].notna().any()]
    if run.objects.get("optimizers") and "optimizer" in run.params.columns:
        # in no optimizer: never updated, `params-not-updated` reports it
        columns = [c for c in columns if pd.notna(run.params.loc[c, "optimizer"])]
    if steps.empty or not columns:
        return pd.DataFrame(index=steps), pd.DataFrame(index=steps), pd.DataFrame(index=steps)
    delta = upd.loc[steps, columns].to_numpy(dtype=float)
    w = weights.loc[steps, columns].to_numpy(dtype=float)
    usable = np.isfinite(delta) & np.isfinite(w)
    grads = run.grad_norms.reindex(index=steps, columns=columns).to_numpy(dtype=float)
    recorded = np.asarray(steps.isin(run.grad_norms.index))[:, None]
    has_grad = ~recorded | (np.isfinite(grads) & (grads > 0))  # NaN on a recorded step: no gradient
    group_of = _group_columns(run)
    lr_ok = np.ones_like(delta, dtype=bool)
    lr_full = np.ones_like(delta, dtype=bool)
    for j, col in enumerate(columns):
        lr_col = group_of.get(int(col))
        if lr_col is None:
            continue
        lr = run.steps[lr_col].astype(float)
        peak = np.nanmax(lr.to_numpy()) if lr.notna().any() else np.nan
        at = lr.reindex(steps).to_numpy(dtype=float)
        lr_ok[:, j] = np.isfinite(at) & (at > 0) & (at >= LOW_LR_FRACTION * peak)
        lr_full[:, j] = np.isfinite(at) & (at > 0) & (at >= FULL_LR_FRACTION * peak)
    # A step that changed no weight at all took no update (every gradient cleared before it,
    # a skip, LR 0): `zero-grad-before-step`, `zero-lr-steps`, the GradScaler's business.
    stepped = (np.where(usable, delta, 0.0) > 0).any(1)
    usable &= stepped[:, None]
    # A parameter whose optimizer took no step on that step was not meant to move (a GAN's
    # generator on the critic's steps): not a sample of its updates.
    by_opt = _optimizer_stepped(run, steps)
    if by_opt and "optimizer" in run.params.columns:
        for j, opt in enumerate(run.params.loc[columns, "optimizer"].to_numpy()):
            if pd.notna(opt) and int(opt) in by_opt:
                usable[:, j] &= by_opt[int(opt)]
    names = run.params.loc[columns, "name"].astype(str).map(_layer_of).to_numpy()
    layers = list(dict.fromkeys(names))
    ratios = np.full((len(steps), len(layers)), np.nan)
    eligible = np.zeros((len(steps), len(layers)), dtype=bool)
    full = np.zeros((len(steps), len(layers)), dtype=bool)
    for k, layer in enumerate(layers):
        cols = names == layer
        use = usable[:, cols]
        d2 = np.where(use, delta[:, cols] ** 2, 0.0).sum(1)
        w2 = np.where(use, w[:, cols] ** 2, 0.0).sum(1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[:, k] = np.where(w2 > 0, np.sqrt(d2) / np.sqrt(w2), np.nan)
        eligible[:, k] = (use & lr_ok[:, cols] & has_grad[:, cols]).all(1) & (w2 > 0)
        full[:, k] = (use & lr_full[:, cols]).all(1) & (w2 > 0)
    return (pd.DataFrame(ratios, index=steps, columns=layers),
            pd.DataFrame(eligible, index=steps, columns=layers),
            pd.DataFrame(full, index=steps, columns=layers))


def _judge(ratios: pd.DataFrame, mask: pd.DataFrame, past, fraction: float) -> list[tuple[str, pd.Series]]:
    out = []
    for layer in ratios.columns:
        values = ratios[layer][mask[layer] & ratios[layer].notna()]
        if len(values) < MIN_SAMPLES:
            continue
        hit = past(values)
        if hit.mean() >= fraction:
            out.append((layer, values))
    return out


def check(run: RunTables) -> list[Finding]:
    ratios, eligible, full = layer_ratios(run)
    if ratios.empty:
        return []
    large = _judge(ratios, full, lambda v: v > LARGE, LARGE_FRACTION)
    small = _judge(ratios, eligible, lambda v: v < SMALL, FRACTION)
    findings = []
    for kind, hits in (("large", large), ("small", small)):
        if not hits:
            continue
        hits.sort(key=lambda h: -h[1].median() if kind == "large" else h[1].median())
        layers = {layer: json_number(float(values.median())) for layer, values in hits}
        first = int(min(values.index.min() for _, values in hits))
        last = int(max(values.index.max() for _, values in hits))
        names = ", ".join(list(layers)[:MAX_LAYERS]) + (f" and {len(layers) - MAX_LAYERS} more"
                                                        if len(layers) > MAX_LAYERS else "")
        samples = int(sum(len(v) for _, v in hits))
        evidence = {"direction": kind, "median_ratio": layers, "sampled_steps": samples,
                    "threshold": LARGE if kind == "large" else SMALL, "layers": len(layers),
                    "of_layers": int(ratios.shape[1])}
        if kind == "large":
            worst = next(iter(layers.values()))
            title = (f"Updates of {worst:.2g}x the weights per step in {len(layers)} layer(s) ({names}): "
                     "the learning rate is far too high for them")
            explanation = (f"On {LARGE_FRACTION:.0%} or more of the sampled steps at full learning rate each optimizer "
                           f"step changed these layers by more than {LARGE:g} of their weights (healthy runs: ~1e-3). They jump around "
                           "instead of converging.")
            fix = ("Lower the learning rate (10-100x) for these layers' param group, or add a warm-up; check "
                   "for an LR meant for another optimizer (an SGD LR given to Adam).")
        else:
            worst = next(iter(layers.values()))
            title = (f"Updates of {worst:.1e}x the weights per step in {len(layers)} of {ratios.shape[1]} "
                     f"layer(s) ({names}): they practically never change")
            explanation = (f"On {FRACTION:.0%} or more of the sampled steps where their learning rate was near its "
                           f"peak and they had gradients, each step changed these layers by less than {SMALL:g} of "
                           "their weights (healthy runs: ~1e-3); they keep their initial values.")
            fix = ("Check the learning rate of these layers' param group (a typo like 1e-9 for 1e-4, an LR "
                   "multiplier applied twice); if they are meant to stay fixed, freeze them with "
                   "requires_grad_(False).")
        findings.append(Finding(rule=NAME, severity=SEVERITY, title=title, steps=(first, last),
                                evidence=evidence, explanation=explanation, fix=fix))
    return findings
