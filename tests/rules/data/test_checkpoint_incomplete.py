"""checkpoint-incomplete: weights-only checkpoints during training, from Monitor and the
reference loop's injection; silent on full checkpoints, final exports and no checkpoints."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from diagnose import Monitor
from diagnose.rules._base import Severity
from diagnose.rules.data import checkpoint_incomplete
from diagnose.rundir.reader import read_run
from reference_loop.config import TrainConfig
from reference_loop.train import train


def _loop(run_dir: Path, save) -> Path:
    """3 epochs x 4 steps of a tiny regression; `save(mon, model, opt, epoch, tmp)` at each epoch's end."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        for epoch in range(3):
            for i in range(4):
                opt.zero_grad()
                nn.functional.mse_loss(model(x[i * 4:(i + 1) * 4]), y[i * 4:(i + 1) * 4]).backward()
                opt.step()
            save(mon, model, opt, epoch, run_dir.parent)
    return run_dir


def _weights_only(mon, model, opt, epoch, where) -> None:
    state = model.state_dict()
    torch.save(state, where / f"ckpt_{epoch}.pt")
    mon.log_checkpoint(where / f"ckpt_{epoch}.pt", keys=list(state))


def _full(mon, model, opt, epoch, where) -> None:
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch}
    torch.save(state, where / f"ckpt_{epoch}.pt")
    mon.log_checkpoint(where / f"ckpt_{epoch}.pt", keys=list(state))


def test_fires_on_a_monitor_loop_saving_state_dicts(tmp_path: Path) -> None:
    run = read_run(_loop(tmp_path / "run", _weights_only))
    [finding] = checkpoint_incomplete.check(run.first)
    assert finding.rule == "checkpoint-incomplete" and finding.severity == Severity.WARNING
    ev = finding.evidence
    # saved after epochs 0 and 1 (steps 3, 7); the one after the last step (11) is a final export
    assert (ev["checkpoints"], ev["first_step"], ev["last_optimizer_step"]) == (2, 3, 11)
    assert ev["keys"] == ["bias", "weight"] and ev["first_path"].endswith("ckpt_0.pt")
    assert finding.steps == (3, 7)
    assert '"optimizer": optimizer.state_dict()' in finding.fix


def test_fires_from_torch_save_alone_and_counts_each_file_once(tmp_path: Path) -> None:
    def save_only(mon, model, opt, epoch, where):
        torch.save(model.state_dict(), where / f"w_{epoch}.pt")   # no log_checkpoint: the recorder sees it
    run = read_run(_loop(tmp_path / "run", save_only))
    saves = run.first.events_of("checkpoint")
    assert [d["source"] for d in saves["data"]] == ["torch.save"] * 3
    assert saves["data"].iloc[0]["tensors_only"] is True
    [finding] = checkpoint_incomplete.check(run.first)
    assert finding.evidence["checkpoints"] == 2 and finding.evidence["keys"] == ["bias", "weight"]
    torch.save({"x": torch.zeros(1)}, tmp_path / "after.pt")   # the recorder is closed: torch.save unwrapped
    assert not getattr(torch.save, "__diagnose_wrapped__", False)


def test_pickling_a_tensor_is_no_checkpoint(tmp_path: Path) -> None:
    def pickle_only(mon, model, opt, epoch, where):
        # what dist.all_gather_object does: pickling a tensor torch.save()s its storage to a BytesIO
        assert pickle.loads(pickle.dumps({"w": model.weight.detach()}))["w"].shape == (1, 4)
    run = read_run(_loop(tmp_path / "run", pickle_only))
    assert run.first.events_of("checkpoint").empty


def test_silent_on_full_checkpoints_and_on_a_weights_export_beside_them(tmp_path: Path) -> None:
    def both(mon, model, opt, epoch, where):
        _full(mon, model, opt, epoch, where)
        _weights_only(mon, model, opt, epoch, where)   # best_model.pt-style export beside it
    assert checkpoint_incomplete.check(read_run(_loop(tmp_path / "a", _full)).first) == []
    assert checkpoint_incomplete.check(read_run(_loop(tmp_path / "b", both)).first) == []


def test_silent_on_a_final_export_only_and_on_no_checkpoints(tmp_path: Path) -> None:
    def final(mon, model, opt, epoch, where):
        if epoch == 2:
            _weights_only(mon, model, opt, epoch, where)
    assert checkpoint_incomplete.check(read_run(_loop(tmp_path / "a", final)).first) == []
    assert checkpoint_incomplete.check(read_run(_loop(tmp_path / "b", lambda *a: None)).first) == []


@pytest.mark.parametrize("data, kind", [
    ({"keys": ["model", "epoch"]}, "weights"),
    ({"keys": ["model_state_dict", "optimizer_state_dict"]}, "full"),
    ({"keys": ["state_dict", "optimizer_states", "lr_schedulers"]}, "full"),   # Lightning
    ({"keys": ["model", "opt"]}, "full"),
    ({"object": "OrderedDict", "keys": [], "tensors_only": True}, "weights"),
    ({"object": "Linear"}, "weights"),
    ({"object": "Tensor"}, None),
    ({"keys": []}, None),
])
def test_classify(data: dict, kind: str | None) -> None:
    assert checkpoint_incomplete.classify(data) == kind


def _reference(tmp_path: Path, inject: list[str]):
    cfg = TrainConfig(device="cpu", train_samples=128, val_samples=32, batch_size=32, width=8, epochs=3,
                      num_threads=1, checkpoint_every=1, log_every=1, inject=inject)
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        train(cfg, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)
    return read_run(tmp_path / "run")


def test_reference_loop_injection_fires_and_its_healthy_loop_does_not(tmp_path: Path) -> None:
    [finding] = checkpoint_incomplete.check(_reference(tmp_path / "bad", ["checkpoint-incomplete"]).first)
    assert finding.evidence["keys"] == ["epoch", "model"]
    assert finding.evidence["checkpoints"] >= 2
    assert checkpoint_incomplete.check(_reference(tmp_path / "good", []).first) == []
