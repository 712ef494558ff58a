"""A recurrent layer's input has its batch on the axis the layer reads as time.

## What it flags
An `nn.LSTM`, `nn.GRU` or `nn.RNN` built with `batch_first=False` (the default) whose
input is batch-major `(batch, seq, features)`: its first dimension is the batch size seen
by the training DataLoader and the loss, its second is not. The same check runs the other
way for `batch_first=True` fed sequence-major input. Judged on the RNN forwards recorded
on sampled training steps (`rnn_call` events: the first 5 optimizer steps, then every
100th) against the batch size of that step:
- the training DataLoader's `batch_size` (`Monitor.loader(...)`, or any DataLoader in
  the zero-code mode; a loader without automatic batching gives none), and
- the number of rows of a `cross_entropy` / `nll_loss` prediction `(N, C)` in the same
  step, unless N is the product of the RNN input's first two dimensions (a per-token
  loss over flattened `(batch * seq, C)` scores says nothing about which axis is which).

## Why it matters
The layer recurs across the samples of the batch instead of along each sequence: sample
k's hidden state is fed by samples 0..k-1 (with shuffling, by unrelated ones), each
"sequence" is a column of time steps taken from different samples, and the last hidden
state belongs to the last sample, not to each sequence's end. Shapes all line up, so
nothing fails: the model just learns far worse than it should, and evaluation with a
different batch size changes the predictions.

## Example
```python
self.rnn = nn.LSTM(emb, hidden)          # batch_first=False
out, _ = self.rnn(self.emb(tokens))      # tokens: (batch, seq) from the DataLoader
```
Use instead:
```python
self.rnn = nn.LSTM(emb, hidden, batch_first=True)
# or keep batch_first=False and feed (seq, batch, features):
out, _ = self.rnn(self.emb(tokens).transpose(0, 1))
```
Not flagged: `batch_first=True` with `(batch, seq, ...)`; `batch_first=False` with
sequence-major data (`(seq, batch, ...)`, e.g. from `pad_sequence` or a transpose);
`PackedSequence` inputs (they carry their own batch sizes); unbatched 2-D inputs.

## Thresholds
- A call is evidence of a mismatch only when its batch axis and its other leading axis
  differ in size, the other axis equals a batch size of the step, and the batch axis
  does not. When sequence length equals batch size (e.g. 64 and 64) the call says
  nothing and is not counted, whichever way it is fed: such a run is judged on its
  other steps (a smaller last batch, another length) or not at all.
- A module is flagged when at least `MIN_CALLS` = 2 of its recorded calls are
  mismatched and none of them is consistent (its batch axis equal to a batch size of
  the step), so a module fed both ways is left alone.

## Limits
Shapes alone cannot tell two layouts apart when one reading makes the time axis exactly
the batch size: an RNN run over a folded batch (`(batch * k, T, f)` into `batch_first=True`,
words of each sentence, say) whose length T equals the batch size looks like
sequence-major input, and is flagged (a false alarm: `--ignore rnn-batch-first-mismatch`
there). Without a DataLoader and without a per-sample class loss (a language model over
a stream batchified by hand), no batch size is known and nothing is judged.
"""
from __future__ import annotations

from collections import defaultdict

import pandas as pd

from diagnose.rules._base import Finding, RunTables, Severity

NAME = "rnn-batch-first-mismatch"
SEVERITY = Severity.ERROR
REQUIRES = ("rnn_calls",)

MIN_CALLS = 2


def _loss_batches(run: RunTables) -> dict[int, set[int]]:
    """Rows of the class-score predictions of each step's recorded loss calls."""
    out: dict[int, set[int]] = defaultdict(set)
    calls = run.loss_calls
    calls = calls[calls["fn"].isin(("cross_entropy", "nll_loss"))]
    for step, shape in zip(calls["step"], calls["input_shape"]):
        if isinstance(shape, tuple) and len(shape) == 2:
            out[int(step)].add(shape[0])
    return out


def verdict(shape: tuple[int, ...], batch_first: bool, batches: set[int]) -> str | None:
    """"mismatch", "consistent" or None (nothing to tell) for one call's input shape."""
    if len(shape) != 3:
        return None
    batch_axis, other_axis = (shape[0], shape[1]) if batch_first else (shape[1], shape[0])
    if batch_axis == other_axis:
        return None  # seq_len == batch size: cannot tell which is which
    batches = batches - {shape[0] * shape[1]}
    if batch_axis in batches:
        return "consistent"
    if other_axis in batches:
        return "mismatch"
    return None


def check(run: RunTables) -> list[Finding]:
    calls = run.rnn_calls
    if calls.empty:
        return []
    losses = _loss_batches(run)
    per_module: dict[int, dict] = {}
    for row in calls.itertuples(index=False):
        if row.packed or not isinstance(row.input_shape, tuple):
            continue
        batches = set(losses.get(int(row.step), set()))
        if pd.notna(row.loader_batch_size):
            batches.add(int(row.loader_batch_size))
        if len(row.input_shape) == 3:  # a flattened per-token loss says nothing
            batches.discard(row.input_shape[0] * row.input_shape[1])
        result = verdict(row.input_shape, bool(row.batch_first), batches)
        if result is None:
            continue
        entry = per_module.setdefault(int(row.index), {"row": row, "mismatch": [], "consistent": 0,
                                                       "batches": set(), "name": ""})
        entry["name"] = entry["name"] or row.name  # the zero-code mode learns the models late
        if result == "consistent":
            entry["consistent"] += 1
        else:
            entry["mismatch"].append((int(row.step), row.input_shape))
            entry["batches"] |= batches
    findings = []
    for index, entry in sorted(per_module.items()):
        if entry["consistent"] or len(entry["mismatch"]) < MIN_CALLS:
            continue
        row = entry["row"]
        steps = sorted({s for s, _ in entry["mismatch"]})
        shape = entry["mismatch"][0][1]
        label = entry["name"] or f"{row.module} #{index}"
        if row.batch_first:
            title = (f"{label} ({row.module}, batch_first=True) is fed sequence-major input {tuple(shape)}: "
                     f"its dimension 1 ({shape[1]}) is the batch size, so it recurs across the batch")
            fix = ("Feed (batch, seq, features), or build it with batch_first=False:\n"
                   "    out, _ = self.rnn(x.transpose(0, 1))   # (seq, batch, f) -> (batch, seq, f)")
        else:
            title = (f"{label} ({row.module}, batch_first=False) is fed batch-major input {tuple(shape)}: "
                     f"its dimension 0 ({shape[0]}) is the batch size, so it recurs across the batch")
            fix = (f"Build it with batch_first=True:\n    nn.{row.module}(..., batch_first=True)\n"
                   "or feed it (seq, batch, features) and turn its output back:\n"
                   "    out, _ = self.rnn(x.transpose(0, 1))\n    out = out.transpose(0, 1)")
        findings.append(Finding(
            rule=NAME, severity=SEVERITY, title=title, steps=(steps[0], steps[-1]),
            evidence={"module": entry["name"] or None, "class": row.module, "batch_first": bool(row.batch_first),
                      "input_shape": list(shape), "batch_sizes_seen": sorted(entry["batches"]),
                      "calls_mismatched": len(entry["mismatch"]), "steps": steps[:20]},
            explanation=("The layer reads the batch axis as time: each sample's hidden state is fed by the samples "
                         "before it in the batch, and each 'sequence' is a column of time steps taken from different "
                         "samples. Nothing fails, the model just learns much worse than it should."),
            fix=fix,
        ))
    return findings
