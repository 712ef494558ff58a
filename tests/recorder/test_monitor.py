"""The Monitor records what a real tiny training loop does, and changes nothing in it."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.recorder import RunDirExistsError, recorder as recorder_mod


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _calls(rank_dir: Path) -> list[str]:
    out: list[str] = []
    for event in _lines(rank_dir / "events.jsonl"):
        if event["kind"] == "calls":
            out += event["calls"]
    return out


def _train(run_dir: Path | None, *, amp: str = "off", steps: int = 12, accum: int = 1,
           nan_at: int | None = None, seed: int = 0, clip: bool = True):
    """A small plain loop: MLP, AdamW, OneCycleLR, optional fp16 GradScaler / bf16."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", enabled=(amp == "fp16"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen))
            for _ in range(steps * accum)]
    monitor = Monitor(run_dir, model=model, optimizer=opt, scheduler=sched, scaler=scaler,
                      param_every=4) if run_dir else None
    losses = []
    try:
        for i, (x, y) in enumerate(monitor.loader(data) if monitor else data):
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                loss = F.cross_entropy(model(x), y) / accum
            if nan_at is not None and i // accum == nan_at:
                loss = loss * float("nan")
            losses.append(loss.detach().float())
            scaler.scale(loss).backward()
            if (i + 1) % accum == 0:
                scaler.unscale_(opt)
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt)
                scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad():
            model(data[0][0])
        model.train()
    finally:
        if monitor:
            monitor.close()
    return model, losses


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_recording_does_not_change_numerics(tmp_path, amp):
    bare, bare_losses = _train(None, amp=amp)
    rng_after_bare = torch.get_rng_state()
    watched, watched_losses = _train(tmp_path / "run", amp=amp)
    assert torch.equal(torch.get_rng_state(), rng_after_bare)  # no extra RNG draws
    for a, b in zip(bare.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(torch.stack(bare_losses), torch.stack(watched_losses))


def test_steps_hold_unscaled_loss_lr_norms_and_scale(tmp_path):
    _, losses = _train(tmp_path / "run", amp="fp16", steps=10)
    steps = _lines(tmp_path / "run" / "rank0" / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(10))
    for record, loss in zip(steps, losses):
        assert record["loss"] == pytest.approx(float(loss), rel=1e-5)  # unscaled, not x65536
        assert record["scale"] == 65536.0
        assert record["clip_max"] == 1.0
        assert record["clip_norm"] > 0 and record["grad_norm"] <= 1.0 + 1e-4
        assert len(record["lr"]) == 1 and record["samples"] == 8
    lrs = [s["lr"][0] for s in steps]
    assert max(lrs) > lrs[0] and lrs[-1] < max(lrs)  # the OneCycle shape was seen


def test_call_order_and_forward_flags(tmp_path):
    _train(tmp_path / "run", amp="fp16", steps=3)
    calls = _calls(tmp_path / "run" / "rank0")
    first_step = calls[: calls.index("sched0.step") + 1]
    assert first_step == ["batch", "model0.forward[TGB]", "scaler0.scale", "backward", "scaler0.unscale_",
                          "clip_grad_norm_", "scaler0.step", "opt0.step", "scaler0.update",
                          "sched0.step"]
    assert "opt0.zero_grad" in calls
    # the evaluation forward: eval mode, no grad, no backward reached it
    assert calls[-3:] == ["model0.eval", "model0.forward[EN]", "model0.train"]


def test_gradient_accumulation_makes_one_step_per_boundary(tmp_path):
    _, losses = _train(tmp_path / "run", steps=5, accum=4)
    steps = _lines(tmp_path / "run" / "rank0" / "steps.jsonl")
    assert len(steps) == 5
    assert all(s["micro_batches"] == 4 and s["samples"] == 32 for s in steps)
    expected = float(sum(losses[:4]))
    assert steps[0]["loss"] == pytest.approx(expected, rel=1e-5)


def test_nan_is_recorded_and_skipped_step_visible(tmp_path, capsys):
    _train(tmp_path / "run", amp="fp16", steps=8, nan_at=3)
    steps = _lines(tmp_path / "run" / "rank0" / "steps.jsonl")
    assert steps[3]["loss"] == "nan"
    assert steps[3]["scale_after"] < steps[3]["scale"]  # GradScaler skipped that step
    assert steps[3]["nonfinite_grads"]  # indices of the NaN gradients, backward order
    order = [e for e in _lines(tmp_path / "run" / "rank0" / "events.jsonl")
             if e["kind"] == "backward_order"][0]["order"]
    assert steps[3]["nonfinite_grads"][0] == order[0]
    assert steps[2]["scale_after"] == steps[2]["scale"]
    assert "at step 3 the loss is nan" in capsys.readouterr().err


def test_grad_norms_file_has_one_float32_column_per_parameter(tmp_path):
    import pyarrow.ipc as ipc

    _train(tmp_path / "run", steps=6)
    rank = tmp_path / "run" / "rank0"
    table = ipc.open_stream(rank / "grad_norms.arrow").read_all()
    params = _lines(rank / "params.jsonl")
    assert table.num_rows == 6
    assert table.column_names == ["step"] + [f"p{p['index']}" for p in params]
    assert [p["name"] for p in params] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    steps = _lines(rank / "steps.jsonl")
    norms = table.to_pandas().drop(columns="step").to_numpy()
    for row, record in zip(norms, steps):
        assert math.sqrt(float((row.astype("float64") ** 2).sum())) == pytest.approx(
            record["grad_norm"], rel=1e-5)
    param_table = ipc.open_stream(rank / "param_norms.arrow").read_all()
    assert param_table.column("step").to_pylist() == [0, 4]


def test_hooks_and_patches_are_removed_on_close(tmp_path):
    backward = torch.Tensor.backward
    clip = torch.nn.utils.clip_grad_norm_
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(tmp_path / "run", model=model, optimizer=opt)
    assert torch.Tensor.backward is not backward
    mon.close()
    assert torch.Tensor.backward is backward and torch.nn.utils.clip_grad_norm_ is clip
    assert "zero_grad" not in opt.__dict__ and "train" not in model.__dict__
    assert not model._forward_hooks and not model._forward_pre_hooks
    status = _lines(tmp_path / "run" / "rank0" / "meta.jsonl")[-1]
    assert status["status"] == "finished"


def test_existing_run_is_never_overwritten_without_asking(tmp_path):
    _train(tmp_path / "run", steps=2)
    before = (tmp_path / "run" / "rank0" / "steps.jsonl").read_text()
    with pytest.raises(RunDirExistsError, match="already holds a recorded run"):
        Monitor(tmp_path / "run")
    assert (tmp_path / "run" / "rank0" / "steps.jsonl").read_text() == before
    Monitor(tmp_path / "run", overwrite=True).close()
    assert not (tmp_path / "run" / "rank0" / "steps.jsonl").exists()


def test_recorder_fault_warns_once_and_training_goes_on(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(recorder_mod.system, "rss_bytes", broken)  # read at every step
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, losses = _train(tmp_path / "run", steps=5)
    assert len(losses) == 5
    messages = [str(w.message) for w in caught if "diagnose" in str(w.message)]
    assert len(messages) == 1 and "boom" in messages[0]
    events = _lines(tmp_path / "run" / "rank0" / "events.jsonl")
    assert any(e["kind"] == "recorder_error" and "boom" in e["message"] for e in events)


def test_exception_marks_run_crashed(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        with Monitor(tmp_path / "run", model=model, optimizer=opt):
            model(torch.randn(3, 2)).sum().backward()
            opt.step()
            raise ValueError("bad batch")
    meta = _lines(tmp_path / "run" / "rank0" / "meta.jsonl")
    assert meta[-1]["status"] == "crashed" and "bad batch" in meta[-1]["error"]
    events = _lines(tmp_path / "run" / "rank0" / "events.jsonl")
    assert any(e["kind"] == "exception" and e["type"] == "ValueError" for e in events)


def test_watched_objects_still_save_copy_and_pickle(tmp_path):
    """No instance attributes: scheduler.state_dict() (its __dict__) must stay picklable,
    and a deepcopy of the model (an EMA copy) must not report as the original."""
    import copy
    import io
    import pickle

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt, scheduler=sched):
        torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, io.BytesIO())
        ema = copy.deepcopy(model)
        pickle.loads(pickle.dumps(model))
        model(torch.randn(1, 2)).sum().backward()
        opt.step()
        sched.step()
        ema.eval()
        ema(torch.randn(1, 2))
    calls = _calls(tmp_path / "run" / "rank0")
    assert calls == ["model0.forward[TGB]", "backward", "opt0.step", "sched0.step"]
    assert "step" not in type(sched).__dict__ and "train" not in torch.nn.Linear.__dict__


def test_a_checkpoint_brings_the_steps_before_it_to_disk(tmp_path):
    """A checkpoint event wakes the writer: the record on disk catches up with the checkpoint
    without waiting for the flush interval (set to an hour here)."""
    import time

    from diagnose.recorder.recorder import Recorder, RecorderOptions

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "run", options=RecorderOptions(flush_interval_s=3600.0))
    rec.watch(model, opt)
    try:
        for _ in range(4):
            opt.zero_grad()
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
        opt.zero_grad()  # closes step 3
        steps_file = tmp_path / "run" / "rank0" / "steps.jsonl"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, tmp_path / "ckpt.pt")
        deadline = time.monotonic() + 30.0  # waits on the file, far below the hour
        while time.monotonic() < deadline and not (steps_file.exists() and
                                                   len(steps_file.read_text().splitlines()) >= 4):
            time.sleep(0.02)
        assert [r["step"] for r in _lines(steps_file)] == [0, 1, 2, 3]
    finally:
        rec.close()


def test_step_records_are_finished_in_batches_and_all_reach_the_disk(tmp_path, monkeypatch):
    """Finished step records wait in memory until `_BATCH` of them are due (the wait limit
    set out of reach here), then go to the writer together, in order; `model.eval()` hands
    over what is waiting; close writes the rest."""
    from diagnose.recorder.recorder import Recorder

    monkeypatch.setattr(recorder_mod, "_BATCH_WAIT_S", 3600.0)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder(tmp_path / "run")
    rec.watch(model, opt)
    waiting = []
    for _ in range(recorder_mod._BATCH + 3):
        opt.zero_grad()  # closes the previous step
        waiting.append(len(rec._inflight))
        model(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
    opt.zero_grad()
    assert len(rec._inflight) == 3
    model.eval()  # an evaluation can take long: what has landed goes to the writer first
    assert len(rec._inflight) == 0
    rec.close()
    batch = recorder_mod._BATCH
    assert waiting[: batch + 1] == list(range(batch)) + [0]  # held, then finished together
    assert waiting[batch + 1:] == [1, 2]
    steps = [r["step"] for r in _lines(tmp_path / "run" / "rank0" / "steps.jsonl")]
    assert steps == list(range(batch + 3))
