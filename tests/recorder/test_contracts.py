"""The recorder's loss and RNN call records (diagnose/recorder/contracts.py): which calls,
on which steps, at what cost to the training (none to its numerics, no crash)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from diagnose import Monitor
from diagnose.recorder import contracts
from diagnose.rundir.reader import read_run

LOSSES = [  # (name recorded, module form, functional form, prediction transform, target)
    ("cross_entropy", nn.CrossEntropyLoss(), F.cross_entropy, lambda p: p, lambda y: y),
    ("nll_loss", nn.NLLLoss(), F.nll_loss, lambda p: p.log_softmax(1), lambda y: y),
    ("mse_loss", nn.MSELoss(), F.mse_loss, lambda p: p, lambda y: F.one_hot(y, 3).float()),
    ("l1_loss", nn.L1Loss(), F.l1_loss, lambda p: p, lambda y: F.one_hot(y, 3).float()),
    ("smooth_l1_loss", nn.SmoothL1Loss(), F.smooth_l1_loss, lambda p: p, lambda y: F.one_hot(y, 3).float()),
    ("huber_loss", nn.HuberLoss(), F.huber_loss, lambda p: p, lambda y: F.one_hot(y, 3).float()),
    ("binary_cross_entropy", nn.BCELoss(), F.binary_cross_entropy, torch.sigmoid,
     lambda y: F.one_hot(y, 3).float()),
    ("binary_cross_entropy_with_logits", nn.BCEWithLogitsLoss(), F.binary_cross_entropy_with_logits,
     lambda p: p, lambda y: F.one_hot(y, 3).float()),
]


def _loop(run_dir: Path, loss_fn, steps: int = 8, monitor: bool = True, evaluate: bool = False):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(steps, 6, 4), torch.randint(0, 3, (steps, 6))
    mon = Monitor(run_dir, model=model, optimizer=opt) if monitor else None
    try:
        for i in range(steps):
            opt.zero_grad()
            loss_fn(model(x[i]), y[i]).backward()
            opt.step()
            if evaluate:
                with torch.no_grad():
                    loss_fn(model(x[i]), y[i])
    finally:
        if mon is not None:
            mon.close()
    return model


@pytest.mark.parametrize("name, module, functional, pred, target", LOSSES, ids=[c[0] for c in LOSSES])
def test_module_and_functional_forms_are_both_seen(tmp_path, name, module, functional, pred, target) -> None:
    _loop(tmp_path / "m", lambda p, y: module(pred(p), target(y)))
    # F.<name> looked up at call time, as `F.mse_loss(...)` in a loop does; the target by keyword
    _loop(tmp_path / "f", lambda p, y: getattr(F, functional.__name__)(pred(p), target=target(y)))
    for run_dir in ("m", "f"):
        calls = read_run(tmp_path / run_dir).first.loss_calls
        assert calls["fn"].tolist() == [name] * 5, run_dir
        assert calls["step"].tolist() == [0, 1, 2, 3, 4]
        assert calls["input_shape"].iloc[0] == (6, 3)
        has_stats = name in contracts.CLASS_LOSSES
        assert calls["pred_min"].notna().all() == has_stats and calls["pred_min"].isna().all() != has_stats


def test_sampled_steps_and_per_step_cap(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(contracts, "EVERY", 4)
    _loop(tmp_path / "run", lambda p, y: sum(F.cross_entropy(p, y) for _ in range(6)), steps=10)
    calls = read_run(tmp_path / "run").first.loss_calls
    counts = calls.groupby("step").size()
    assert counts.index.tolist() == [0, 1, 2, 3, 4, 8] and set(counts) == {contracts.MAX_PER_STEP}
    assert contracts.sampled(0) and contracts.sampled(4) and not contracts.sampled(5)


def test_evaluation_calls_are_not_recorded(tmp_path) -> None:
    _loop(tmp_path / "run", lambda p, y: F.cross_entropy(p, y), evaluate=True)
    assert len(read_run(tmp_path / "run").first.loss_calls) == 5   # the no_grad calls are not


def test_statistics_are_the_predictions(tmp_path) -> None:
    _loop(tmp_path / "run", lambda p, y: F.cross_entropy(p.softmax(1), y))
    calls = read_run(tmp_path / "run").first.loss_calls
    assert (calls["pred_min"] > 0).all() and (calls["pred_max"] < 1).all()
    assert (calls["row_sum_err"] < 1e-6).all() and (calls["classes"] == 3).all()


def test_recording_changes_no_numbers_and_no_rng(tmp_path) -> None:
    def loss(p, y):
        return F.cross_entropy(p, y) + F.mse_loss(p[:, :1], y[:, None].float())
    bare = _loop(tmp_path / "a", loss, monitor=False)
    rng_bare = torch.get_rng_state()
    watched = _loop(tmp_path / "b", loss)
    assert torch.equal(torch.get_rng_state(), rng_bare)   # dropout drew the same numbers
    for p, q in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(p, q)


def test_wrappers_are_removed_and_torchscript_still_works(tmp_path) -> None:
    originals = {name: getattr(F, name) for name in contracts.LOSS_FUNCTIONS + contracts.DROPOUT_FUNCTIONS}
    lstm_forward = nn.LSTM.forward
    with Monitor(tmp_path / "run", model=nn.Linear(2, 2)):
        assert F.mse_loss is not originals["mse_loss"] and nn.LSTM.forward is not lstm_forward
        assert F.dropout is not originals["dropout"]

        @torch.jit.script
        def scripted(a, b):
            return F.mse_loss(a, b) + F.cross_entropy(F.dropout(a, 0.1), b)

        assert torch.isfinite(scripted(torch.randn(3, 2), torch.rand(3, 2)))
        torch.jit.script(nn.LSTM(2, 3))
    assert {name: getattr(F, name) for name in contracts.LOSS_FUNCTIONS + contracts.DROPOUT_FUNCTIONS} == originals
    assert nn.LSTM.forward is lstm_forward


def test_rnn_calls_layout_loader_batch_size_and_packed_input(tmp_path) -> None:
    torch.manual_seed(0)
    emb, lstm, gru = nn.Embedding(10, 4), nn.LSTM(4, 5), nn.GRU(4, 5, batch_first=True)
    model = nn.ModuleDict({"emb": emb, "lstm": lstm, "gru": gru})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randint(0, 10, (24, 7)))
    loader = torch.utils.data.DataLoader(data, batch_size=6)
    with Monitor(tmp_path / "run", model=model, optimizer=opt) as mon:
        for (tokens,) in mon.loader(loader):
            opt.zero_grad()
            e = emb(tokens)
            packed = pack_padded_sequence(e, torch.full((6,), 7), batch_first=True)
            out = lstm(e.transpose(0, 1))[0].sum() + gru(e)[0].sum() + lstm(packed)[0].data.sum()
            out.backward()
            opt.step()
        with torch.no_grad():
            lstm(e.transpose(0, 1))   # under no_grad: not a training call
    calls = read_run(tmp_path / "run").first.rnn_calls
    assert len(calls) == 4 * 3
    first = calls[calls["step"] == 0]
    assert first["name"].tolist() == ["lstm", "gru", "lstm"] and first["index"].tolist() == [0, 1, 0]
    assert first["input_shape"].tolist() == [(7, 6, 4), (6, 7, 4), None]
    assert first["batch_first"].tolist() == [False, True, False] and first["packed"].tolist() == [False, False, True]
    assert (calls["loader_batch_size"] == 6).all()


def test_a_fault_switches_off_this_part_only(tmp_path, monkeypatch) -> None:
    def broken(pred):
        raise RuntimeError("boom")
    monkeypatch.setattr(contracts, "class_stats", broken)
    with pytest.warns(RuntimeWarning, match="loss/RNN call recording failed"):
        model = _loop(tmp_path / "run", lambda p, y: F.cross_entropy(p, y) + F.mse_loss(p, p.detach()))
    run = read_run(tmp_path / "run").first
    [error] = run.events_of("recorder_error")["data"]
    assert error == {"part": "contracts", "message": "RuntimeError: boom"}
    assert run.loss_calls.empty and len(run.steps) == 8   # the rest of the record went on
    assert all(torch.isfinite(p).all() for p in model.parameters())
