"""Optimizers, LR schedulers and GradScalers: found at construction, their calls routed.

- Optimizers: `Optimizer.__init__` is wrapped (every optimizer, in construction order);
  `optimizer.step()` is seen through torch's global step pre/post hooks (which also
  adopt an optimizer built without `__init__`, e.g. unpickled); `zero_grad` is wrapped
  on the class.
- Schedulers: `__init__` and `step` of `LRScheduler` and of every torch scheduler class
  that defines its own (ReduceLROnPlateau, SequentialLR, ...). The step a scheduler takes
  inside its own constructor, and the steps a composite scheduler makes its children
  take, are not calls of the script and are not recorded. A ReduceLROnPlateau step also
  records the metric it was given (usually the validation loss) as a `metrics` event.
- GradScalers: `torch.amp.GradScaler.__init__` (torch.cuda.amp / torch.cpu.amp's are
  subclasses), `scale`, `unscale_`, `step`, `update`.

A user subclass that overrides one of these methods gets its own class wrapper when an
instance is adopted; nested calls (an override calling `super()`) count once. Inside
`torch.compile`d code every wrapper passes straight through (see modules.py).
"""
from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch
import torch.optim.lr_scheduler as lr_scheduler
import torch.optim.optimizer as optimizer_mod

from diagnose.zerocode.classpatch import ClassPatches
from diagnose.zerocode.modules import is_compiling

if TYPE_CHECKING:
    from diagnose.zerocode.session import Session


def scheduler_classes() -> list[type]:
    """torch's scheduler classes (LRScheduler, its subclasses, ReduceLROnPlateau)."""
    base = getattr(lr_scheduler, "LRScheduler", None) or lr_scheduler._LRScheduler
    found = [base]
    for _, cls in inspect.getmembers(lr_scheduler, inspect.isclass):
        if cls not in found and (issubclass(cls, base) or cls.__name__ == "ReduceLROnPlateau"):
            found.append(cls)
    return found


def install(session: "Session", patches: ClassPatches) -> None:
    """Wrap the constructors and methods; register the global optimizer step hooks."""
    opt = torch.optim.Optimizer
    patches.wrap(opt, "__init__", _after_init(session, session.adopt_optimizer))
    patches.wrap(opt, "zero_grad", _make_opt_zero_grad(session))
    pre = optimizer_mod.register_optimizer_step_pre_hook(
        lambda o, args, kwargs: _route(session, session.on_optimizer_step_pre, o,
                                       _has_closure(args, kwargs)))
    post = optimizer_mod.register_optimizer_step_post_hook(
        lambda o, args, kwargs: _route(session, session.on_optimizer_step_post, o))
    patches.add(pre.remove)
    patches.add(post.remove)
    for cls in scheduler_classes():
        patches.wrap(cls, "__init__", _make_sched_init(session))
        patches.wrap(cls, "step", _make_sched_step(session))
    scaler = torch.amp.GradScaler
    patches.wrap(scaler, "__init__", _after_init(session, session.adopt_scaler))
    install_scaler_methods(session, patches, scaler)


def install_scaler_methods(session: "Session", patches: ClassPatches, cls: type) -> None:
    patches.wrap_defining(cls, "scale", _make_scale(session))
    patches.wrap_defining(cls, "unscale_", _make_unscale(session))
    patches.wrap_defining(cls, "step", _make_scaler_step(session))
    patches.wrap_defining(cls, "update", _make_update(session))


def install_for_subclass(session: "Session", patches: ClassPatches, obj) -> None:
    """Wrap overriding methods of a user subclass (no-op for torch's own classes)."""
    if isinstance(obj, torch.optim.Optimizer):
        patches.wrap_defining(type(obj), "zero_grad", _make_opt_zero_grad(session))
    elif isinstance(obj, torch.amp.GradScaler):
        install_scaler_methods(session, patches, type(obj))
    else:
        patches.wrap_defining(type(obj), "step", _make_sched_step(session))


def _has_closure(args: tuple, kwargs: dict) -> bool:
    """Whether `optimizer.step(closure)` was called with a closure (the hook's `args`
    start with the optimizer itself)."""
    return (len(args) > 1 and args[1] is not None) or kwargs.get("closure") is not None


def _route(session: "Session", fn, *args) -> None:
    if session.on and not is_compiling():
        session.safe(fn, *args)
    return None  # a hook that returns something would replace the step's arguments


def _after_init(session: "Session", adopt):
    def make(original):
        def __init__(self, *args, **kwargs):
            original(self, *args, **kwargs)
            if session.on:
                session.safe(adopt, self)
        return __init__
    return make


def _make_opt_zero_grad(session: "Session"):
    def make(original):
        def zero_grad(self, *args, **kwargs):
            if not session.on or session.in_opt_zero_grad or is_compiling():
                return original(self, *args, **kwargs)
            session.in_opt_zero_grad = True
            try:
                session.safe(session.on_optimizer_zero_grad, self)
                return original(self, *args, **kwargs)
            finally:
                session.in_opt_zero_grad = False
        return zero_grad
    return make


def _make_sched_init(session: "Session"):
    def make(original):
        def __init__(self, *args, **kwargs):
            session.sched_init_depth += 1
            try:
                original(self, *args, **kwargs)
            finally:
                session.sched_init_depth -= 1
            if session.on and session.sched_init_depth == 0:
                session.safe(session.adopt_scheduler, self)
        return __init__
    return make


def _make_sched_step(session: "Session"):
    def make(original):
        def step(self, *args, **kwargs):
            if not session.on or session.sched_init_depth or session.in_sched_step \
                    or is_compiling():
                return original(self, *args, **kwargs)
            session.in_sched_step = True
            try:
                session.safe(session.on_scheduler_step, self)
                result = original(self, *args, **kwargs)
            finally:
                session.in_sched_step = False
            if type(self).__name__ == "ReduceLROnPlateau" and session.on:
                session.safe(session.on_plateau_metric, self, args, kwargs)
            return result
        return step
    return make


def _make_scale(session: "Session"):
    def make(original):
        def scale(self, outputs):
            out = original(self, outputs)
            if session.on and not is_compiling():
                session.safe(session.on_scaler_scale, self, outputs, out)
            return out
        return scale
    return make


def _make_unscale(session: "Session"):
    def make(original):
        def unscale_(self, optimizer):
            if session.on and not session.in_scaler_step and not is_compiling():
                session.safe(session.on_scaler_unscale, self, optimizer)
            return original(self, optimizer)
        return unscale_
    return make


def _make_scaler_step(session: "Session"):
    def make(original):
        def step(self, optimizer, *args, **kwargs):
            if not session.on or session.in_scaler_step or is_compiling():
                return original(self, optimizer, *args, **kwargs)
            session.safe(session.on_scaler_step_pre, self, optimizer)
            session.set_in_scaler_step(True)
            try:
                return original(self, optimizer, *args, **kwargs)
            finally:
                session.set_in_scaler_step(False)
                session.safe(session.on_optimizer_step_post, optimizer)
        return step
    return make


def _make_update(session: "Session"):
    def make(original):
        def update(self, *args, **kwargs):
            if session.on and not is_compiling():
                session.safe(session.on_scaler_update, self)
            return original(self, *args, **kwargs)
        return update
    return make
