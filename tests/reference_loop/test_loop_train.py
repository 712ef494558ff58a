import math

import pytest
import torch
import torch.nn.functional as F

from reference_loop import checkpoint
from reference_loop.ema import EMA
from reference_loop.train import build, evaluate, resolve_amp, train


def _mean(xs):
    return sum(xs) / len(xs)


def test_images_task_learns(tmp_path, tiny):
    r = train(tiny(train_samples=512, epochs=3, lr=1e-2, image_noise=1.0), tmp_path, progress=False)
    assert r.steps == 3 * (512 // 32) == len(r.history["loss"]) == len(r.history["lr"])
    assert _mean(r.history["loss"][-5:]) < _mean(r.history["loss"][:5]) - 0.5
    assert r.val_loss < math.log(10) - 0.5 and r.val_acc > 0.4
    assert r.history["val_loss"] == sorted(r.history["val_loss"], reverse=True)


def test_chars_task_learns(tmp_path, tiny):
    r = train(tiny(task="chars", epochs=3), tmp_path, progress=False)
    h = r.history
    assert _mean(h["loss"][-5:]) < _mean(h["loss"][:5]) - 0.8
    assert h["val_loss"][-1] < h["val_loss"][0]


def test_same_config_same_numbers(tmp_path, tiny):
    a = train(tiny(epochs=1), tmp_path / "a", progress=False)
    b = train(tiny(epochs=1), tmp_path / "b", progress=False)
    assert a.history == {**b.history, "epoch_time_s": a.history["epoch_time_s"]}


def test_amp_auto_resolution(monkeypatch):
    assert resolve_amp("auto", torch.device("cpu")) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", torch.device("cuda")) is torch.float16
    assert resolve_amp("bf16", torch.device("cpu")) is torch.bfloat16
    assert resolve_amp("off", torch.device("cuda")) is None


def _forward_dtypes(monkeypatch):
    seen = []
    original = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.__class__.__name__ in ("SmallCNN", "CharTransformer"):
            seen.append((out.dtype, self.training, torch.is_grad_enabled()))
        return out

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    return seen


@pytest.mark.parametrize("amp, dtype, scaled", [("off", torch.float32, False), ("bf16", torch.bfloat16, False),
                                                ("fp16", torch.float16, True)])
def test_precision_paths_on_cpu(tmp_path, monkeypatch, amp, dtype, scaled, tiny):
    seen = _forward_dtypes(monkeypatch)
    scales = []
    original_update = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update",
                        lambda self, *a: (original_update(self, *a), scales.append(self.get_scale()))[0])
    r = train(tiny(epochs=1, amp=amp), tmp_path, progress=False)
    assert r.amp == amp and r.device == "cpu"
    assert {d for d, *_ in seen} == {dtype}
    assert math.isfinite(r.val_loss)
    if scaled:  # GradScaler("cpu") really scales: the first step ran at the initial scale
        assert scales == [2.0**16] * r.steps
    else:
        assert all(s == 1.0 for s in scales)  # a disabled scaler reports scale 1


def test_call_order_of_one_step(tmp_path, monkeypatch, tiny):
    calls = []

    def spy(owner, name, label):
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    spy(torch.optim.Optimizer, "zero_grad", "zero_grad")
    spy(torch.Tensor, "backward", "backward")
    spy(torch.amp.GradScaler, "unscale_", "unscale_")
    spy(torch.nn.utils, "clip_grad_norm_", "clip")  # the loop must call it via the module attribute
    spy(torch.amp.GradScaler, "step", "scaler.step")
    spy(torch.amp.GradScaler, "update", "update")
    spy(torch.optim.lr_scheduler.LRScheduler, "step", "sched.step")
    r = train(tiny(epochs=1, amp="fp16", max_steps=2), tmp_path, progress=False)
    one_step = ["zero_grad", "backward", "unscale_", "clip", "scaler.step", "update", "sched.step"]
    assert calls[0] == "sched.step"  # LRScheduler.__init__ steps once, before training
    assert r.steps == 2 and calls[1:] == one_step * 2


def test_gradient_accumulation_matches_the_big_batch(tmp_path, tiny):
    common = dict(task="chars", dropout=0.0, optimizer="sgd", momentum=0.0, lr=0.5, grad_clip=0.0,
                  scheduler="none", max_steps=3)
    big = train(tiny(batch_size=16, **common), tmp_path / "big", progress=False)
    small = train(tiny(batch_size=8, accum_steps=2, **common), tmp_path / "small", progress=False)
    assert big.steps == small.steps == 3
    assert big.history["loss"] == pytest.approx(small.history["loss"], rel=1e-5)
    assert big.val_loss == pytest.approx(small.val_loss, rel=1e-5)


def test_accumulation_zeroes_once_per_optimizer_step(tmp_path, monkeypatch, tiny):
    zero_grads, opt_steps = [], []
    zg, st = torch.optim.Optimizer.zero_grad, torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: (zero_grads.append(1), zg(self, *a, **k))[1])
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: (opt_steps.append(1), st(self, *a, **k))[1])
    r = train(tiny(epochs=1, batch_size=16, accum_steps=3), tmp_path, progress=False)
    assert r.steps == (256 // 16) // 3 == len(zero_grads) == len(opt_steps)


def test_evaluate_uses_eval_mode_no_grad_and_weights_by_batch_size(monkeypatch, tiny):
    b = build(tiny(val_samples=80))  # 32 + 32 + 16: an uneven last batch
    seen = _forward_dtypes(monkeypatch)
    loss, acc = evaluate(b)
    assert seen and all(not training and not grad for _, training, grad in seen)
    assert b.model.training  # restored
    b.model.eval()
    with torch.no_grad():
        x, y = b.data.val.x, b.data.val.y
        logits = b.model(x)
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert acc == pytest.approx((logits.argmax(1) == y).float().mean().item())


@pytest.mark.parametrize("bug, expect", [
    ("eval-without-eval-mode", dict(training=True, grad=False, restored=True)),
    ("eval-with-grad", dict(training=False, grad=True, restored=True)),
    ("train-mode-not-restored", dict(training=False, grad=False, restored=False)),
])
def test_evaluation_injections(monkeypatch, bug, expect, tiny):
    b = build(tiny(inject=[bug]))
    seen = _forward_dtypes(monkeypatch)
    evaluate(b, frozenset([bug]))
    assert {(t, g) for _, t, g in seen} == {(expect["training"], expect["grad"])}
    assert b.model.training is expect["restored"]


def test_ema_is_swapped_in_for_evaluation_and_restored(tiny):
    b = build(tiny())
    ema = EMA(b.model, 0.5)
    trained = {k: v.clone() for k, v in b.model.state_dict().items()}
    with torch.no_grad():
        for v in ema.shadow.values():
            v.add_(1.0)
    with ema.applied(b.model):
        state = b.model.state_dict()
        assert all(torch.equal(state[k], ema.shadow[k]) for k in ema.shadow)
    assert all(torch.equal(v, trained[k]) for k, v in b.model.state_dict().items())
    ema.update(b.model)  # effective decay min(0.5, 2/11): moves most of the way back
    key = next(iter(ema.shadow))
    assert torch.allclose(ema.shadow[key], trained[key] + 2 / 11)


def test_early_stopping(tmp_path, tiny):
    r = train(tiny(epochs=6, early_stop_patience=2, min_delta=100.0), tmp_path, progress=False)
    assert r.stopped_early and r.epochs == 3 and r.best_epoch == 0


def test_max_steps_caps_the_run_and_the_schedule(tmp_path, tiny):
    r = train(tiny(epochs=5, max_steps=11), tmp_path, progress=False)
    assert r.steps == 11 and r.epochs == 2
    assert r.history["lr"][-1] < 1e-6  # OneCycleLR laid out over 11 steps ends at its minimum


@pytest.mark.parametrize("scheduler", ["onecycle", "warmup-cosine", "step", "cosine", "plateau", "none"])
def test_schedulers_step_at_their_frequency(tmp_path, scheduler, tiny):
    r = train(tiny(epochs=3, scheduler=scheduler, step_size=1, warmup_frac=0.2), tmp_path, progress=False)
    lr, per_epoch = r.history["lr"], 256 // 32
    epochs = [lr[i * per_epoch:(i + 1) * per_epoch] for i in range(3)]
    if scheduler in ("onecycle", "warmup-cosine"):
        assert len(set(epochs[0])) == per_epoch  # changes every step
        assert max(lr) == pytest.approx(3e-3, rel=0.05) and lr[-1] < 0.5 * 3e-3 and min(lr) > 0
    else:
        assert all(len(set(e)) == 1 for e in epochs)  # constant within an epoch
    if scheduler == "step":
        assert [e[0] for e in epochs] == pytest.approx([3e-3, 1.5e-3, 7.5e-4])
    if scheduler == "cosine":
        assert epochs[0][0] > epochs[1][0] > epochs[2][0]
    if scheduler == "none":
        assert set(lr) == {3e-3}


def test_checkpoints_every_epoch_keep_last_and_best(tmp_path, tiny):
    cfg = tiny(epochs=3, checkpoint_every=1, keep_last=2)
    r = train(cfg, tmp_path, progress=False)
    assert [p.name for p in r.checkpoints] == ["epoch001.pt", "epoch002.pt"]
    assert r.best_checkpoint == tmp_path / "checkpoints" / "best.pt"
    state = checkpoint.load(r.checkpoints[-1])  # weights_only=True
    assert {"model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "rng", "history",
            "config"} <= set(state)
    assert state["epoch"] == 3 and state["step"] == r.steps
    assert checkpoint.load(r.best_checkpoint)["best_epoch"] == r.best_epoch
    # a fresh run in the same directory does not inherit the old checkpoints
    r2 = train(cfg.replace(epochs=1), tmp_path, progress=False)
    assert [p.name for p in r2.checkpoints] == ["epoch000.pt"]


def test_incomplete_checkpoint_cannot_be_resumed(tmp_path, tiny):
    r = train(tiny(epochs=1, checkpoint_every=1, inject=["checkpoint-incomplete"]), tmp_path, progress=False)
    assert set(checkpoint.load(r.checkpoints[0])) == {"model", "epoch"}
    with pytest.raises(ValueError, match="cannot be resumed"):
        train(tiny(resume=str(r.checkpoints[0])), tmp_path / "again", progress=False)
