"""Faulty loops and near misses for the loss-contract and tensor-layout rules.

Rules: `softmax-before-cross-entropy`, `loss-shape-broadcast`, `rnn-batch-first-mismatch`.
Each fault is written at least three ways: hand-written loops instrumented with `Monitor`
(here, in different styles: functional losses, `nn.*Loss` modules, bf16 autocast, a
DataLoader or plain tensor batches) and the reference loop's injection; the zero-code
mode's plain scripts live in tests/scripts/. The *near misses* are healthy loops that a
naive rule would flag: log_softmax + NLLLoss, BCELoss on sigmoid outputs, cross-entropy
with soft targets and label smoothing, matching (N, 1) shapes, an LSTM with
`batch_first=False` fed sequence-major data (transposed, `pad_sequence`-collated, or
batchified by hand as in PyTorch's word_language_model example), and `batch_first=True`
with sequence length equal to the batch size.

`record_fault(name, run_dir, seed)` records one on CPU (one torch thread) in about a
second. `FAULTS[name].rule` is the rule it must trigger (None for a near miss), `.at` the
first step where it shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, TensorDataset

from diagnose import Monitor
from tests.harness.faults_loop import _reference
from tests.harness.threads import one_torch_thread

EPOCHS = 2


def _blobs(seed: int, n: int = 256, dim: int = 8, classes: int = 4):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 2.0
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, dim, generator=gen), y


def _regression(seed: int, n: int = 256, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=gen)
    return x, x @ torch.randn(dim, generator=gen) + 0.1 * torch.randn(n, generator=gen)   # y: (N,)


def _tokens(seed: int, n: int, length: int, vocab: int = 12):
    gen = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (n, 1), generator=gen)
    seq = (start + torch.arange(length + 1)) % vocab  # learnable: next = previous + 1
    return seq[:, :-1], seq[:, 1:]


def _sequences(seed: int, n: int = 256, length: int = 10):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 4, generator=gen)
    return x, (x[:, :, 0].sum(1) > 0).long()


def _loader(x, y, batch_size: int, seed: int, **kwargs) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def _mlp(dim: int = 8, out: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, 32), nn.ReLU(), nn.Linear(32, out))


def _train(run_dir: Path, model: nn.Module, batches: Callable, loss_fn: Callable, *, lr: float = 1e-2,
           autocast: bool = False) -> None:
    """A flat Monitor loop: `batches()` gives one epoch's iterable, `loss_fn(model, x, y)`."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(EPOCHS):
            mon.epoch(epoch)
            for x, y in mon.loader(batches()):
                opt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = loss_fn(model, x, y)
                loss.backward()
                opt.step()


# ---- softmax-before-cross-entropy ---------------------------------------------------------


def softmax_then_cross_entropy_module(run_dir: Path, seed: int) -> None:
    """nn.CrossEntropyLoss fed model(x).softmax(-1), batches from a DataLoader."""
    torch.manual_seed(seed)
    x, y = _blobs(seed)
    criterion = nn.CrossEntropyLoss()
    _train(run_dir, _mlp(), lambda: _loader(x, y, 32, seed), lambda m, xb, yb: criterion(m(xb).softmax(-1), yb))


def softmax_then_nll_bf16(run_dir: Path, seed: int) -> None:
    """F.nll_loss fed softmax probabilities (not log_softmax), under bf16 autocast."""
    torch.manual_seed(seed)
    x, y = _blobs(seed)
    batches = lambda: zip(x.split(32), y.split(32))  # noqa: E731
    _train(run_dir, _mlp(), batches, lambda m, xb, yb: F.nll_loss(F.softmax(m(xb), dim=1), yb), autocast=True)


def log_softmax_nll(run_dir: Path, seed: int) -> None:
    """Healthy: log_softmax + nn.NLLLoss (probabilities' logs: all <= 0)."""
    torch.manual_seed(seed)
    x, y = _blobs(seed)
    criterion = nn.NLLLoss()
    _train(run_dir, _mlp(), lambda: _loader(x, y, 32, seed),
           lambda m, xb, yb: criterion(F.log_softmax(m(xb), dim=1), yb))


def bce_sigmoid_and_soft_targets(run_dir: Path, seed: int) -> None:
    """Healthy: nn.BCELoss on sigmoid outputs (multi-label), cross_entropy with label
    smoothing, and cross_entropy with probability (soft) targets, summed."""
    torch.manual_seed(seed)
    x, y = _blobs(seed)
    bce = nn.BCELoss()

    def loss_fn(m, xb, yb):
        logits = m(xb)
        multi = F.one_hot(yb, 4).float()
        soft = 0.8 * multi + 0.05
        return (bce(torch.sigmoid(logits), multi) + F.cross_entropy(logits, yb, label_smoothing=0.1)
                + F.cross_entropy(logits, soft))

    _train(run_dir, _mlp(), lambda: _loader(x, y, 32, seed), loss_fn)


# ---- loss-shape-broadcast --------------------------------------------------------------


def mse_n1_against_n(run_dir: Path, seed: int) -> None:
    """nn.MSELoss with prediction (N, 1) and target (N,): (N, N)."""
    torch.manual_seed(seed)
    x, y = _regression(seed)
    criterion = nn.MSELoss()
    _train(run_dir, _mlp(out=1), lambda: _loader(x, y, 32, seed), lambda m, xb, yb: criterion(m(xb), yb))


def l1_n_against_n1_bf16(run_dir: Path, seed: int) -> None:
    """F.smooth_l1_loss with prediction (N,) and target (N, 1), bf16, plain tensor batches."""
    torch.manual_seed(seed)
    x, y = _regression(seed)
    batches = lambda: zip(x.split(32), y.unsqueeze(1).split(32))  # noqa: E731
    _train(run_dir, _mlp(out=1), batches, lambda m, xb, yb: F.smooth_l1_loss(m(xb).squeeze(-1), yb), autocast=True)


def matching_shapes(run_dir: Path, seed: int) -> None:
    """Healthy: mse (N, 1)/(N, 1), l1 and huber (N,)/(N,), and a (C,) target row that
    broadcasts over (N, C) without growing it."""
    torch.manual_seed(seed)
    x, y = _regression(seed)
    row = torch.zeros(3)

    def loss_fn(m, xb, yb):
        out = m(xb)
        return (F.mse_loss(out[:, :1], yb.unsqueeze(1)) + F.l1_loss(out[:, 1], yb)
                + F.huber_loss(out[:, 2], yb) + 0.01 * F.mse_loss(out, row.expand(1, 3)))

    _train(run_dir, _mlp(out=3), lambda: _loader(x, y, 32, seed), loss_fn)


# ---- rnn-batch-first-mismatch ---------------------------------------------------------


class SeqClassifier(nn.Module):
    """LSTM/GRU classifier; `how`: "batch-major" (the bug: (B, T, F) into batch_first=False),
    "transpose" (batch_first=False fed x.transpose(0, 1)) or "batch-first"."""

    def __init__(self, how: str, cell=nn.LSTM):
        super().__init__()
        self.how = how
        self.rnn = cell(4, 16, batch_first=how == "batch-first")
        self.out = nn.Linear(16, 2)

    def forward(self, x):  # x: (B, T, 4)
        if self.how == "transpose":
            out, _ = self.rnn(x.transpose(0, 1))
            return self.out(out[-1])
        out, _ = self.rnn(x)
        return self.out(out[:, -1])   # "batch-major": the author thinks dim 0 is the batch


class TokenRNN(nn.Module):
    """Embedding, GRU (or LSTM), head, on token ids as given: (T, B) for the default
    batch_first=False, (B, T) for batch_first=True; (B, T) into batch_first=False is the bug."""

    def __init__(self, vocab: int = 12, batch_first: bool = False, cell=nn.GRU):
        super().__init__()
        self.emb = nn.Embedding(vocab + 1, 16, padding_idx=vocab)
        self.rnn = cell(16, 32, batch_first=batch_first)
        self.head = nn.Linear(32, vocab)

    def forward(self, tokens):
        out, _ = self.rnn(self.emb(tokens))
        return self.head(out)


def _lm_loss(m, xb, yb):
    out = m(xb)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1))


def lstm_batch_major_classifier(run_dir: Path, seed: int) -> None:
    """nn.LSTM (batch_first=False) fed (B=32, T=10, F) from a DataLoader; loss on out[:, -1]."""
    torch.manual_seed(seed)
    x, y = _sequences(seed)
    _train(run_dir, SeqClassifier("batch-major"), lambda: _loader(x, y, 32, seed),
           lambda m, xb, yb: F.cross_entropy(m(xb), yb))


def gru_batch_major_lm(run_dir: Path, seed: int) -> None:
    """A GRU language model (batch_first=False) fed (B=16, T=24) token embeddings from a
    DataLoader; the per-token loss is flattened (B*T, V), so only the loader tells B."""
    torch.manual_seed(seed)
    x, y = _tokens(seed, 256, 24)
    _train(run_dir, TokenRNN(), lambda: _loader(x, y, 16, seed), _lm_loss)


def lstm_transposed(run_dir: Path, seed: int) -> None:
    """Healthy: nn.LSTM (batch_first=False) fed x.transpose(0, 1); GRU batch_first=True."""
    torch.manual_seed(seed)
    x, y = _sequences(seed)
    _train(run_dir, SeqClassifier("transpose"), lambda: _loader(x, y, 32, seed),
           lambda m, xb, yb: F.cross_entropy(m(xb), yb))


def _pad_collate(batch):
    seqs, targets = zip(*batch)
    return pad_sequence(list(seqs), padding_value=12), pad_sequence(list(targets), padding_value=-100)  # (T, B)


def lstm_pad_sequence(run_dir: Path, seed: int) -> None:
    """Healthy: variable-length sequences collated by pad_sequence (sequence-major (T, B),
    its default) into an nn.LSTM with batch_first=False; DataLoader batch_size 8."""
    torch.manual_seed(seed)
    x, y = _tokens(seed, 128, 20)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 21, (128,), generator=gen).tolist()
    data = [(x[i, :n], y[i, :n]) for i, n in enumerate(lengths)]
    batches = lambda: DataLoader(data, batch_size=8, shuffle=True, collate_fn=_pad_collate,  # noqa: E731
                                 generator=torch.Generator().manual_seed(seed))
    _train(run_dir, TokenRNN(cell=nn.LSTM), batches, _lm_loss)


def lstm_batchified_by_hand(run_dir: Path, seed: int) -> None:
    """Healthy: PyTorch's word_language_model style: one token stream batchified by hand
    into (T_total, B=10) columns, bptt windows of 35 (T, B), nn.LSTM batch_first=False; no
    DataLoader, so nothing but the model's input says which axis is the batch."""
    torch.manual_seed(seed)
    stream = _tokens(seed, 1, 2000)[0].reshape(-1)
    cols = stream[: len(stream) // 10 * 10].view(10, -1).t().contiguous()  # (T_total, 10)
    windows = [(cols[i:i + 35], cols[i + 1:i + 36]) for i in range(0, len(cols) - 36, 35)]
    _train(run_dir, TokenRNN(cell=nn.LSTM), lambda: windows, _lm_loss)


def gru_batch_first_square(run_dir: Path, seed: int) -> None:
    """Healthy: GRU with batch_first=True and sequence length == batch size (16 and 16)."""
    torch.manual_seed(seed)
    x, y = _tokens(seed, 256, 16)
    _train(run_dir, TokenRNN(batch_first=True), lambda: _loader(x, y, 16, seed), _lm_loss)


@dataclass(frozen=True)
class Fault:
    fn: Callable[[Path, int], None]
    rule: str | None
    """The rule it must trigger (at `severity` or above); None for a near miss."""
    at: int | None = None
    """The first step where the fault shows."""
    severity: str = "error"


def _ref(**overrides) -> Callable[[Path, int], None]:
    return lambda run_dir, seed: _reference(run_dir, seed, **overrides)


FAULTS: dict[str, Fault] = {
    # softmax-before-cross-entropy
    "softmax_then_cross_entropy_module": Fault(softmax_then_cross_entropy_module, "softmax-before-cross-entropy", 0),
    "softmax_then_nll_bf16": Fault(softmax_then_nll_bf16, "softmax-before-cross-entropy", 0),
    "ref_softmax_before_cross_entropy": Fault(_ref(inject=["softmax-before-cross-entropy"]),
                                              "softmax-before-cross-entropy", 0),
    "ref_softmax_before_cross_entropy_chars": Fault(_ref(inject=["softmax-before-cross-entropy"], task="chars"),
                                                    "softmax-before-cross-entropy", 0),
    "log_softmax_nll": Fault(log_softmax_nll, None),
    "bce_sigmoid_and_soft_targets": Fault(bce_sigmoid_and_soft_targets, None),
    # loss-shape-broadcast
    "mse_n1_against_n": Fault(mse_n1_against_n, "loss-shape-broadcast", 0),
    "l1_n_against_n1_bf16": Fault(l1_n_against_n1_bf16, "loss-shape-broadcast", 0),
    "ref_loss_shape_broadcast": Fault(_ref(inject=["loss-shape-broadcast"]), "loss-shape-broadcast", 0),
    "matching_shapes": Fault(matching_shapes, None),
    # rnn-batch-first-mismatch
    "lstm_batch_major_classifier": Fault(lstm_batch_major_classifier, "rnn-batch-first-mismatch", 0),
    "gru_batch_major_lm": Fault(gru_batch_major_lm, "rnn-batch-first-mismatch", 0),
    "ref_rnn_batch_first_mismatch": Fault(_ref(inject=["rnn-batch-first-mismatch"], task="chars"),
                                          "rnn-batch-first-mismatch", 0),
    "lstm_transposed": Fault(lstm_transposed, None),
    "lstm_pad_sequence": Fault(lstm_pad_sequence, None),
    "lstm_batchified_by_hand": Fault(lstm_batchified_by_hand, None),
    "gru_batch_first_square": Fault(gru_batch_first_square, None),
}
"""Every faulty loop and near miss by name."""


def record_fault(name: str, run_dir: Path, seed: int = 0) -> Path:
    """Record fault (or near miss) `name` into `run_dir` on one torch thread; returns it."""
    with one_torch_thread():
        FAULTS[name].fn(Path(run_dir), seed)
    return Path(run_dir)
