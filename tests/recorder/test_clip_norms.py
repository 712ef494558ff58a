"""The recorder reuses the per-parameter norms that clip_grad_norm_ computes.

Each loop runs twice from the same seed: once as is, once with the capture switched off
(the recorder then computes every norm itself, as it always did). The recorded gradient
norms must agree, and the capture must really have been used where it can be.
"""
from __future__ import annotations

import contextlib
import gc
import weakref

import numpy as np
import pytest
import torch
import torch.nn as nn

from diagnose import Monitor
from diagnose.recorder import clipcapture, numerics
from diagnose.rundir.reader import read_run


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def _loop(run_dir, *, max_norm=0.05, scaler=False, clip_first=False, subset=False,
          foreach=None, steps=6, freeze_first=False, two_clips=False, zero_after_clip=False,
          after_clip=None, clip_kwargs=False):
    torch.manual_seed(0)
    model = _model()
    if freeze_first:
        model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10) if scaler else None
    x, y = torch.randn(steps, 8, 6), torch.randint(0, 3, (steps, 8))
    with Monitor(run_dir, model=model, optimizer=opt, scaler=grad_scaler):
        for i in range(steps):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler):
                loss = nn.functional.cross_entropy(model(x[i]), y[i])
            clipped = model[4].parameters() if subset else model.parameters()
            if grad_scaler is not None:
                grad_scaler.scale(loss).backward()
                if clip_first:  # the clip-before-unscale bug: clips scaled gradients
                    torch.nn.utils.clip_grad_norm_(clipped, max_norm, foreach=foreach)
                grad_scaler.unscale_(opt)
                if not clip_first:
                    torch.nn.utils.clip_grad_norm_(clipped, max_norm, foreach=foreach)
                grad_scaler.step(opt)
                grad_scaler.update()
            else:
                loss.backward()
                if two_clips:  # per-module clipping: two calls, two coefficients
                    torch.nn.utils.clip_grad_norm_(model[0].parameters(), max_norm)
                    clipped = list(model[2].parameters()) + list(model[4].parameters())
                if clip_kwargs:
                    torch.nn.utils.clip_grad_norm_(parameters=clipped, max_norm=max_norm)
                else:
                    torch.nn.utils.clip_grad_norm_(clipped, max_norm, foreach=foreach)
                if after_clip is not None:
                    after_clip(model)
                if zero_after_clip:  # the zero-grad-before-step bug, zeroing in place
                    opt.zero_grad(set_to_none=False)
                opt.step()
    return read_run(run_dir).first.grad_norms


@contextlib.contextmanager
def _capture_off():
    @contextlib.contextmanager
    def unusable():
        yield clipcapture.ClipNorms(clean=False)

    original = clipcapture.capture
    clipcapture.capture = unusable
    try:
        yield
    finally:
        clipcapture.capture = original


def _own_norm_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = numerics.grad_norms

    def counted(params):
        calls.append(1)
        return original(params)

    monkeypatch.setattr(numerics, "grad_norms", counted)
    return calls


@pytest.mark.parametrize("kwargs, reused", [
    ({"max_norm": 0.05}, True),                        # clips every step
    ({"max_norm": 1e6}, True),                         # never clips
    ({"max_norm": 0.05, "scaler": True}, True),        # unscale_, then clip (fp16 GradScaler)
    ({"max_norm": 0.05, "freeze_first": True}, True),  # frozen parameters have no gradient
    ({"max_norm": 0.05, "scaler": True, "clip_first": True}, False),  # clip sees scaled grads
    ({"max_norm": 0.05, "subset": True}, False),       # the clip sees only some gradients
    ({"max_norm": 0.05, "foreach": False}, False),     # no foreach norms to reuse
    ({"max_norm": 0.05, "two_clips": True}, False),    # no single set of norms
    ({"max_norm": 0.05, "zero_after_clip": True}, False),  # stale: zeroed in place after the clip
    ({"max_norm": 0.05, "clip_kwargs": True}, True),   # clip_grad_norm_(parameters=..., max_norm=...)
    # one gradient scaled in place after the clip: stale
    ({"max_norm": 0.05, "after_clip": lambda m: m[2].weight.grad.mul_(3.0)}, False),
    # one gradient replaced after the clip: the optimizer steps with the new one
    ({"max_norm": 0.05, "after_clip": lambda m: setattr(m[4].bias, "grad", m[4].bias.grad * 3)}, False),
])
def test_norms_from_the_clip_equal_the_recorders_own(tmp_path, monkeypatch, kwargs, reused):
    with _capture_off():
        own = _loop(tmp_path / "own", **kwargs)
    calls = _own_norm_calls(monkeypatch)
    got = _loop(tmp_path / "clip", **kwargs)
    assert (len(calls) == 0) == reused
    assert list(got.index) == list(own.index) and len(got) == 6
    assert list(got.columns) == list(own.columns)
    np.testing.assert_allclose(got.to_numpy(), own.to_numpy(), rtol=2e-5, equal_nan=True)
    if kwargs.get("zero_after_clip"):
        assert (got.to_numpy() == 0).all()  # what the optimizer stepped with
    if kwargs.get("freeze_first"):
        assert got.iloc[:, :2].isna().all().all()  # no gradient, no norm
    if kwargs["max_norm"] < 1:  # post-clip norms: the total is the clip threshold
        total = np.sqrt(np.nansum(got.to_numpy(dtype=np.float64) ** 2, axis=1))
        if not any(kwargs.get(k) for k in ("subset", "clip_first", "two_clips", "zero_after_clip",
                                           "after_clip")):
            np.testing.assert_allclose(total, kwargs["max_norm"], rtol=1e-4)


def test_nonfinite_gradients_give_the_same_norms(tmp_path):
    def run(run_dir):
        torch.manual_seed(0)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with Monitor(run_dir, model=model, optimizer=opt):
            for i in range(3):
                opt.zero_grad()
                x = torch.randn(8, 6)
                if i == 1:
                    x[0, 0] = float("inf")
                model(x).sum().backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
        return read_run(run_dir).first.grad_norms

    with _capture_off():
        own = run(tmp_path / "own")
    got = run(tmp_path / "clip")
    assert not np.isfinite(got.loc[1].to_numpy()).all()
    np.testing.assert_allclose(got.to_numpy(), own.to_numpy(), rtol=2e-5, equal_nan=True)


def test_the_capture_never_keeps_gradients_alive(tmp_path):
    torch.manual_seed(0)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        old = weakref.ref(model[0].weight.grad)
        for p in model.parameters():   # what the next zero_grad(set_to_none=True) does,
            p.grad = None              # without calling into the recorder
        gc.collect()
        assert old() is None


def test_torch_functions_are_restored_after_a_failing_clip(tmp_path):
    foreach_norm, stack = torch._foreach_norm, torch.stack
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt):
        opt.zero_grad()
        x = torch.randn(4, 6)
        x[0, 0] = float("nan")
        model(x).sum().backward()
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)
        assert torch._foreach_norm is foreach_norm and torch.stack is stack


def test_the_clip_norms_line_up_with_the_parameters_without_reading_each_grad(tmp_path):
    """`ClipNorms.in_order_of`: true when the clip was given the parameter table itself
    (every gradient present, one dtype group), false for a subset, a missing gradient, a
    second dtype group or a sampled gradient replaced after the clip."""
    from diagnose.recorder import hooks

    model = _model()
    params = list(model.parameters())
    seen = []

    class Listener:
        def _safe(self, fn, *args):
            return fn(*args)

        def on_clip(self, *args):
            pass

        def on_clip_norms(self, norms):
            norms.seal()
            seen.append(norms)

        def on_backward(self, tensor):
            pass

    listener = Listener()
    hooks.add_global_listener(listener)
    try:
        model(torch.randn(4, 6)).sum().backward()
        clip = torch.nn.utils.clip_grad_norm_
        clip(model.parameters(), 1e6)                         # a generator
        assert seen[-1].in_order_of(params) and seen[-1].unchanged()
        clip(parameters=params, max_norm=1e6)                 # keywords
        assert seen[-1].in_order_of(params) and seen[-1].unchanged()
        clip(params[2:], 1e6)                                 # a subset
        assert not seen[-1].in_order_of(params)
        clip(params, 1e6)
        params[4].grad = params[4].grad.clone()               # replaced after the clip
        assert not seen[-1].in_order_of(params)
        clip(params, 1e6)
        params[0].grad.mul_(2.0)                              # changed in place after the clip
        assert not seen[-1].unchanged()
        params[1].grad = None                                 # a gradient missing
        clip(params, 1e6)
        assert not seen[-1].in_order_of(params)
        mixed = [nn.Parameter(torch.randn(3)), nn.Parameter(torch.randn(3, dtype=torch.float64))]
        for p in mixed:
            p.grad = torch.ones_like(p)
        clip(mixed, 1e6)                                      # two (device, dtype) groups
        assert seen[-1].calls == 2 and not seen[-1].in_order_of(mixed)
    finally:
        hooks.remove_global_listener(listener)
