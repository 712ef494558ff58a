"""The fault injections: a complete registry, each runs, each breaks what it says."""

import dataclasses
import math
import pathlib
import warnings
import weakref

import pytest
import torch

import reference_loop
import reference_loop.train as loop
from reference_loop import injections
from reference_loop.injections import ALIASES, INJECTIONS

# The rule catalogue's names (RULES.md): the public contract injections are named after.
RULES = frozenset("""
nonfinite-loss nonfinite-gradients nonfinite-parameters loss-scale-collapse gradient-explosion
gradient-spike vanishing-gradients dead-units loss-divergence loss-plateau overfitting
missing-zero-grad zero-grad-before-step scheduler-before-optimizer scheduler-never-stepped
scheduler-step-frequency zero-lr-steps clip-before-unscale eval-without-eval-mode eval-with-grad
train-mode-not-restored params-not-updated nonfinite-inputs softmax-before-cross-entropy
update-ratio loss-shape-broadcast rnn-batch-first-mismatch framework-warning checkpoint-incomplete
memory-leak dataloader-bottleneck throughput-drop rank-straggler rank-desync
""".split())

REQUIRED = {
    "eval-without-eval-mode", "eval-with-grad", "train-mode-not-restored", "scheduler-before-optimizer",
    "scheduler-never-stepped", "scheduler-step-frequency", "missing-zero-grad", "zero-grad-before-step",
    "clip-before-unscale", "memory-leak", "gradient-explosion", "nonfinite-loss", "loss-scale-collapse",
    "dataloader-bottleneck", "params-not-updated", "dead-units", "loss-plateau",
}


def test_registry_is_complete_and_named_after_rules():
    assert REQUIRED <= set(INJECTIONS)
    for name, inj in INJECTIONS.items():
        assert inj.name == name and inj.triggers in RULES and set(inj.also) <= RULES
        assert len(inj.what) > 40
    assert set(ALIASES.values()) <= set(INJECTIONS) and "tiny-lr" in ALIASES
    text = injections.describe()
    assert all(name in text for name in INJECTIONS)


def test_every_injection_is_implemented_in_the_loop():
    package = pathlib.Path(reference_loop.__file__).parent
    source = "".join(p.read_text() for p in package.glob("*.py") if p.name != "injections.py")
    forced = {n for n, inj in INJECTIONS.items() if inj.forces is not injections._no_forces}
    for name in set(INJECTIONS) - forced - {"loss-plateau", "gradient-explosion"}:
        assert f'"{name}"' in source, name


def test_unknown_injection_is_one_line_listing_valid_names():
    with pytest.raises(ValueError) as info:
        injections.resolve(["nan-loss"])
    assert "\n" not in str(info.value) and "nonfinite-loss" in str(info.value)
    assert injections.resolve("memory-leak,tiny-lr") == ["memory-leak", "loss-plateau"]


@pytest.fixture
def built(monkeypatch):
    """The objects train() built, captured for inspection after the run."""
    seen = {}

    def spy(cfg):
        seen["b"] = b = build(cfg)
        seen["init"] = {k: v.detach().clone() for k, v in b.model.named_parameters()}
        return b

    build = loop.build
    monkeypatch.setattr(loop, "build", spy)
    return seen


def _run(tmp_path, tiny, name, **changes):
    settings = dict(epochs=1, inject=[name], nan_step=2, slow_data_s=0.0, checkpoint_every=1)
    cfg = tiny(**{**settings, **changes})
    return loop.train(cfg, tmp_path, progress=False)


# The rank injections need torchrun: tests/distributed/test_reference_ddp.py runs them.
@pytest.mark.parametrize("name", [n for n, inj in INJECTIONS.items() if inj.min_ranks == 1])
def test_each_injection_runs_a_few_steps(tmp_path, tiny, name):
    task = "images" if "images" in INJECTIONS[name].tasks else "chars"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scheduler-before-optimizer makes torch warn: that is the point
        r = _run(tmp_path, tiny, name, task=task)
    assert r.steps > 0 and len(r.history["loss"]) == r.steps


def _changed(seen):
    return {k for k, v in seen["b"].model.named_parameters() if not torch.equal(v, seen["init"][k])}


def test_params_not_updated(tmp_path, tiny, built):
    _run(tmp_path, tiny, "params-not-updated")
    b = built["b"]
    probe = {n for n, p in b.model.named_parameters() if any(p is q for q in b.model.probe.parameters())}
    assert probe and not probe & _changed(built)
    assert all(b.model.probe.weight.grad is not None for _ in [0])  # it still gets gradients
    in_optimizer = {id(p) for g in b.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimizer for p in b.model.probe.parameters())


def test_dead_units_have_exactly_zero_gradients(tmp_path, tiny, built):
    _run(tmp_path, tiny, "dead-units")
    grad = built["b"].model.probe.weight.grad
    assert grad is not None and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("name", ["zero-grad-before-step", "loss-plateau"])
def test_nothing_trains(tmp_path, tiny, built, name):
    _run(tmp_path, tiny, name)
    if name == "zero-grad-before-step":
        assert _changed(built) == set()
    else:
        b = built["b"]
        assert b.optimizer.param_groups[0]["initial_lr"] == pytest.approx(injections.TINY_LR / 25)
        drift = max((p - built["init"][k]).abs().max().item() for k, p in b.model.named_parameters())
        assert 0 < drift < 1e-7


def test_missing_zero_grad_never_clears(tmp_path, tiny, monkeypatch):
    calls = []
    zero_grad = torch.optim.Optimizer.zero_grad
    monkeypatch.setattr(torch.optim.Optimizer, "zero_grad", lambda self, *a, **k: (calls.append(1), zero_grad(self, *a, **k))[1])
    _run(tmp_path, tiny, "missing-zero-grad")
    assert calls == []


@pytest.mark.parametrize("name", ["nonfinite-loss", "nonfinite-inputs"])
def test_nan_at_the_configured_step(tmp_path, tiny, name):
    losses = _run(tmp_path, tiny, name).history["loss"]
    assert all(math.isfinite(x) for x in losses[:2]) and math.isnan(losses[2])


def test_loss_scale_collapse_skips_and_halves_every_step(tmp_path, tiny, monkeypatch):
    scales = []
    update = torch.amp.GradScaler.update
    monkeypatch.setattr(torch.amp.GradScaler, "update", lambda self, *a: (scales.append(self.get_scale()), update(self, *a))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # every step skipped: torch thinks the scheduler ran first
        r = _run(tmp_path, tiny, "loss-scale-collapse")
    assert r.amp == "fp16"
    assert scales == [2.0 ** (16 - i) for i in range(r.steps)]


def _call_log(monkeypatch):
    calls = []
    for owner, name, label in [(torch.amp.GradScaler, "unscale_", "unscale_"), (torch.nn.utils, "clip_grad_norm_", "clip"),
                               (torch.amp.GradScaler, "step", "step"), (torch.optim.lr_scheduler.LRScheduler, "step", "sched")]:
        original = getattr(owner, name)
        monkeypatch.setattr(owner, name, (lambda o, l: lambda *a, **k: (calls.append(l), o(*a, **k))[1])(original, label))
    return calls


def test_clip_before_unscale(tmp_path, tiny, monkeypatch):
    calls = _call_log(monkeypatch)
    r = _run(tmp_path, tiny, "clip-before-unscale", amp="off", grad_clip=0.0)
    assert r.amp == "fp16" and calls.count("clip") == r.steps
    # no unscale_ before clipping; scaler.step unscales (too late) by itself
    first = calls.index("clip")
    assert calls[first:first + 4] == ["clip", "step", "unscale_", "sched"]


def test_scheduler_before_optimizer_warns(tmp_path, tiny, monkeypatch):
    calls = _call_log(monkeypatch)
    with pytest.warns(UserWarning, match="lr_scheduler.step.*before.*optimizer.step"):
        _run(tmp_path, tiny, "scheduler-before-optimizer")
    first = calls.index("clip")
    assert calls[first:first + 3] == ["clip", "sched", "step"]


@pytest.mark.parametrize("name", ["scheduler-never-stepped", "scheduler-step-frequency", "zero-lr-steps"])
def test_schedule_injections(tmp_path, tiny, name):
    lr = _run(tmp_path, tiny, name, epochs=2, warmup_frac=0.3).history["lr"]
    peak = 3e-3
    if name == "scheduler-never-stepped":
        assert all(x == pytest.approx(peak / 25) for x in lr)
    elif name == "scheduler-step-frequency":
        assert len(set(lr[:8])) == 1 and max(lr) < peak / 2  # never leaves the warm-up
    else:
        half = len(lr) // 2
        assert min(lr[:half]) > 0 and set(lr[half:]) == {0.0}


def test_memory_leak_keeps_every_activation_alive(tmp_path, tiny, monkeypatch):
    outputs, alive_at_eval = [], []

    def spy(cfg):
        b = build(cfg)
        b.model.leak_site.register_forward_hook(
            lambda m, a, out: outputs.append(weakref.ref(out)) if torch.is_grad_enabled() else None)
        return b

    build, evaluate = loop.build, loop.evaluate
    monkeypatch.setattr(loop, "build", spy)
    monkeypatch.setattr(loop, "evaluate", lambda *a: (alive_at_eval.append(sum(r() is not None for r in outputs)), evaluate(*a))[1])
    _run(tmp_path, tiny, "memory-leak", epochs=2)
    assert alive_at_eval == [8, 16]
    outputs.clear()
    _run(tmp_path / "healthy", tiny, "softmax-before-cross-entropy", epochs=1)
    assert alive_at_eval[-1] <= 1


def test_dataloader_bottleneck_sleeps_per_batch(tmp_path, tiny, monkeypatch):
    import reference_loop.data as data

    sleeps = []
    monkeypatch.setattr(data.time, "sleep", sleeps.append)
    r = _run(tmp_path, tiny, "dataloader-bottleneck", slow_data_s=0.25)
    assert sleeps[: r.steps] == [0.25] * r.steps


def test_softmax_before_cross_entropy_feeds_probabilities(tmp_path, tiny, monkeypatch):
    rows = []
    ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda x, *a, **k: (rows.append(x.detach().sum(-1)), ce(x, *a, **k))[1])
    _run(tmp_path, tiny, "softmax-before-cross-entropy")
    assert rows and all(torch.allclose(r, torch.ones_like(r), atol=1e-5) for r in rows)


def test_loss_shape_broadcast_adds_an_n1_against_n_mse(tmp_path, tiny, monkeypatch):
    shapes = []
    mse = torch.nn.functional.mse_loss
    monkeypatch.setattr(torch.nn.functional, "mse_loss",
                        lambda a, b, *r, **k: (shapes.append((tuple(a.shape), tuple(b.shape))), mse(a, b, *r, **k))[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's target-size warning: that is the point
        r = _run(tmp_path, tiny, "loss-shape-broadcast")
    assert shapes and set(shapes) == {((32, 1), (32,))} and r.steps > 0


def test_rnn_batch_first_mismatch_feeds_the_lstm_batch_major(tmp_path, tiny, built, monkeypatch):
    from reference_loop.model import CharLSTM

    cfg = tiny(task="chars", inject=["rnn-batch-first-mismatch"], block_size=64, batch_size=64)
    assert cfg.block_size == 32  # seq_len == batch size would hide the layout: halved
    inputs = []
    forward = torch.nn.LSTM.forward
    monkeypatch.setattr(torch.nn.LSTM, "forward", lambda self, x, *a: (inputs.append(tuple(x.shape)), forward(self, x, *a))[1])
    loop.train(dataclasses.replace(cfg, epochs=1), tmp_path, progress=False)
    model = built["b"].model
    assert isinstance(model, CharLSTM) and model.batch_major and not model.rnn.batch_first
    assert inputs and all(shape[:2] == (64, 32) for shape in inputs[:3])   # (batch, seq, emb) into (seq, batch, ...)


def test_gradient_explosion_grows_the_gradient_norm(tmp_path, tiny, monkeypatch):
    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (norms.append(float(clip(*a, **k))), norms[-1])[1])
    r = _run(tmp_path, tiny, "gradient-explosion", epochs=4, train_samples=256)
    finite = [n for n in norms if math.isfinite(n)]
    assert r.steps == 32 and max(finite) > 1e3 * norms[0]


def test_train_mode_not_restored_trains_in_eval_mode(tmp_path, tiny, monkeypatch):
    modes = []
    call = torch.nn.Module.__call__

    def spy(self, *args, **kwargs):
        if self.__class__.__name__ == "SmallCNN" and torch.is_grad_enabled():
            modes.append(self.training)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", spy)
    _run(tmp_path, tiny, "train-mode-not-restored", epochs=2)
    assert modes == [True] * 8 + [False] * 8
