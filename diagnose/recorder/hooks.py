"""Attach and detach instrumentation without touching the user's code.

Two kinds of patches, both undone exactly by `Patches.undo()`:
- instance wrappers: a bound method replaced by a wrapper stored on the instance
  (`optimizer.zero_grad`, `scheduler.step`, `scaler.update`, `model.train`), removed by
  deleting the instance attribute so the class method shows through again;
- global wrappers for free functions every loop calls through a module attribute
  (`torch.Tensor.backward`, `torch.nn.utils.clip_grad_norm_`, `torch.save`, the loss functions
  and RNN forwards of contracts.py), installed once for all
  active recorders and removed when the last one closes.
Torch's own hooks (module forward hooks, optimizer step hooks) are used wherever they
exist; their RemovableHandles are kept in the same undo list.
"""
from __future__ import annotations

import functools
import threading
import types
import weakref
from typing import Any, Callable

import torch

from diagnose.recorder import clipcapture

_MISSING = object()


def _inert(*args, **kwargs):
    return None


class Callback:
    """A hook function that survives `torch.save(model)` and `copy.deepcopy(model)`.

    torch keeps hooks in the module's dicts, so pickling a watched model would try to
    pickle the recorder (threads, open files) and fail. A copy gets an inert hook instead.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return (_make_inert, ())


def _make_inert() -> Callback:
    return Callback(_inert)


class _ClassPatch:
    """One class method replaced by a dispatcher to per-instance wrappers."""

    def __init__(self, cls: type, name: str) -> None:
        self.cls, self.name = cls, name
        self.own = cls.__dict__.get(name, _MISSING)  # defined on this class itself?
        self.original = getattr(cls, name)
        self.instances: dict[int, tuple[Any, Callable]] = {}
        original, instances = self.original, self.instances

        @functools.wraps(original)
        def dispatch(this, *args, **kwargs):
            found = instances.get(id(this))
            if found is not None and found[0]() is this:
                return found[1](*args, **kwargs)
            return original(this, *args, **kwargs)

        dispatch.__diagnose_wrapped__ = True  # type: ignore[attr-defined]
        setattr(cls, name, dispatch)

    def restore(self) -> None:
        if self.own is _MISSING:
            try:
                delattr(self.cls, self.name)
            except AttributeError:
                pass
        else:
            setattr(self.cls, self.name, self.own)


_class_patches: dict[tuple[type, str], _ClassPatch] = {}


class UndoList:
    """Undo actions, run newest first by `undo()`, which never raises."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def add(self, undo: Callable[[], None]) -> None:
        """Register an undo action (a torch RemovableHandle's `remove`, a restore)."""
        self._undo.append(undo)

    def undo(self) -> None:
        """Undo everything, newest first; never raises."""
        while self._undo:
            fn = self._undo.pop()
            try:
                fn()
            except Exception:  # noqa: BLE001
                pass


class Patches(UndoList):
    """An undo list of every hook and wrapper one recorder installed."""

    def handle(self, removable: Any) -> None:
        """Keep a torch RemovableHandle."""
        self._undo.append(removable.remove)

    def wrap_method(self, obj: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        """Route calls of `obj.name` through `make(original_bound_method)`.

        The wrapper is installed on the object's *class*, dispatching by object identity,
        not stored on the instance: an instance attribute would end up in
        `LRScheduler.state_dict()` (it returns `__dict__`, so `torch.save` of it fails),
        be copied by `copy.deepcopy(model)` (an EMA copy would call the original's
        method) and break pickling. Other instances of the class are untouched. Where the
        instance already carries its own attribute of that name (someone else's wrapper),
        ours wraps it on the instance as a last resort.
        """
        if name in getattr(obj, "__dict__", {}):
            self._wrap_instance(obj, name, make)
            return
        cls = type(obj)
        key = (cls, name)
        with _lock:
            entry = _class_patches.get(key)
            if entry is None:
                entry = _ClassPatch(cls, name)
                _class_patches[key] = entry
            original = types.MethodType(entry.original, obj)
            wrapper = make(original)
            entry.instances[id(obj)] = (weakref.ref(obj), wrapper)

        def undo() -> None:
            with _lock:
                entry.instances.pop(id(obj), None)
                if not entry.instances:
                    entry.restore()
                    _class_patches.pop(key, None)

        self._undo.append(undo)

    def _wrap_instance(self, obj: Any, name: str, make: Callable[[Callable], Callable]) -> None:
        original = getattr(obj, name)
        previous = obj.__dict__.get(name, _MISSING)
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        wrapper.__diagnose_wrapped__ = True  # type: ignore[attr-defined]
        object.__setattr__(obj, name, wrapper)

        def undo() -> None:
            if previous is _MISSING:
                obj.__dict__.pop(name, None)
            else:
                object.__setattr__(obj, name, previous)

        self._undo.append(undo)


# ---- global wrappers shared by all active recorders ---------------------------------------

_lock = threading.Lock()
_listeners: list[Any] = []
_originals: dict[tuple[Any, str], Any] = {}


def _global_targets() -> list[tuple[Any, str, Callable[[Callable], Callable]]]:
    import torch.nn.utils as nn_utils
    import torch.nn.utils.clip_grad as clip_mod

    import torch.serialization

    targets = [(torch.Tensor, "backward", _wrap_backward),
               (torch, "save", _wrap_save), (torch.serialization, "save", _wrap_save)]
    for module in (nn_utils, clip_mod):
        targets.append((module, "clip_grad_norm_", _wrap_clip("clip_grad_norm_")))
        targets.append((module, "clip_grad_value_", _wrap_clip("clip_grad_value_")))
        if hasattr(module, "clip_grad_norm"):
            targets.append((module, "clip_grad_norm", _wrap_clip("clip_grad_norm_")))
    from diagnose.recorder import contracts  # loss functions, RNN forwards

    return targets + contracts.global_targets()


def _is_compiling() -> bool:
    """Whether dynamo is tracing: then the wrappers pass straight through, so compiled
    code is traced as without diagnose (no graph break on the recorder's own code)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_compiling", bool)())


def _wrap_backward(original: Callable) -> Callable:
    def backward(self, *args, **kwargs):
        if not _is_compiling():
            for listener in list(_listeners):
                listener._safe(listener.on_backward, self)
        try:
            return original(self, *args, **kwargs)
        except torch.OutOfMemoryError as exc:  # recorded even if the loop catches it and goes on
            for listener in list(_listeners):
                if hasattr(listener, "on_oom"):
                    listener._safe(listener.on_oom, exc, "backward")
            raise

    return backward


def _wrap_clip(kind: str) -> Callable[[Callable], Callable]:
    def make(original: Callable) -> Callable:
        def clip(*args, **kwargs):
            if _is_compiling():
                return original(*args, **kwargs)
            if kind != "clip_grad_norm_" or not _listeners:
                result, norms = original(*args, **kwargs), None
            else:  # keep the per-parameter norms the clip computes (clipcapture.py)
                args, kwargs, given = clipcapture.listed_parameters(args, kwargs)
                with clipcapture.capture() as norms:
                    result = original(*args, **kwargs)
                norms.params = given
            for listener in list(_listeners):
                listener._safe(listener.on_clip, kind, args, kwargs, result)
                if norms is not None and hasattr(listener, "on_clip_norms"):
                    listener._safe(listener.on_clip_norms, norms)
            return result

        return clip

    return make


def _wrap_save(original: Callable) -> Callable:
    def save(obj, f, *args, **kwargs):
        result = original(obj, f, *args, **kwargs)
        if not _is_compiling():
            for listener in list(_listeners):
                listener._safe(listener.on_save, obj, f)
        return result

    return save


def add_global_listener(listener: Any) -> None:
    """Route global calls (backward, clipping, torch.save) to `listener` until removed."""
    with _lock:
        if not _listeners:
            for owner, name, make in _global_targets():
                original = getattr(owner, name, None)
                if original is None or getattr(original, "__diagnose_wrapped__", False):
                    continue
                _originals[(owner, name)] = original
                wrapper = make(original)
                functools.update_wrapper(wrapper, original)
                wrapper.__diagnose_wrapped__ = True  # type: ignore[attr-defined]
                setattr(owner, name, wrapper)
        if listener not in _listeners:
            _listeners.append(listener)


def remove_global_listener(listener: Any) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)
        if not _listeners:
            for (owner, name), original in _originals.items():
                setattr(owner, name, original)
            _originals.clear()
