"""The recorder: turns hook callbacks into the run directory's records.

It is the state machine behind `Monitor` (explicit objects), the zero-code mode and the
pytest plugin. Hooks call the `on_*` methods; those do host-side bookkeeping and queue
device work (norms, a packed copy) without reading any device value, so the training
loop never waits on the recorder. The values are read once their copy has landed, and the
step records are finished in batches (`_drain`, `_BATCH`).

Every `on_*` entry point runs through `_safe`: a fault in the recorder is reported once
as a warning and an event, the recorder switches itself off, and training goes on.
"""
from __future__ import annotations

import math
import operator
import shutil
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from diagnose.recorder import checkpoints, hooks, inputs, numerics, system, updates, warnings_capture
from diagnose.profiling.window import ProfileWindow
from diagnose.recorder import contracts
from diagnose.recorder import interrupts
from diagnose.recorder import oom
from diagnose.recorder.writer import RunWriter
from diagnose.rundir import schema

_MAX_IN_FLIGHT = 32
"""Step records whose device values may be on their way at once; past it the oldest is
waited for (the device is that many steps behind the host)."""
_BATCH = 16
_BATCH_WAIT_S = 0.25
"""Landed step records are finished together, `_BATCH` at a time or once the oldest has
waited `_BATCH_WAIT_S`: the first record of a batch runs its numpy and dict code with
caches that the training step has just evicted, the others warm (np.dot on 200 norms:
0.4 us warm, 3.3 us right after a step, measured on the development VM). A SIGKILL loses
at most this much more than the writer's flush interval."""


class RunDirExistsError(FileExistsError):
    """The run directory already holds a run and overwriting was not asked for."""


@dataclass
class _Step:
    """What the current optimizer step has gathered so far."""

    loss: torch.Tensor | None = None
    micro_batches: int = 0
    samples: int = 0
    tokens: int = 0
    t_step: float | None = None
    step_time_s: float | None = None
    cpu_time_s: float | None = None
    involuntary_switches: int | None = None
    data_wait_s: float = 0.0
    lr: list = field(default_factory=list)
    lr_tensors: list = field(default_factory=list)
    scale: torch.Tensor | None = None
    norms_present: list | None = None
    norms: torch.Tensor | None = None
    clip_norm: torch.Tensor | None = None
    inputs: tuple | None = None
    """Finite checks of the step's batches (`inputs.InputChecks.take`)."""
    clip_max: float | None = None
    clip_capture: Any = None
    """The clip call's own per-parameter norms (clipcapture.ClipNorms); False: unusable."""
    norms_from_clip: bool = False
    norms_order: list | None = None
    """Where each present parameter's norm sits in `norms` when the clip's order differs."""


@dataclass
class RecorderOptions:
    """What to record and how often."""

    grad_every: int = 1
    """Per-parameter gradient norms every N optimizer steps (1 = every step)."""
    param_every: int = 25
    """Per-parameter weight norms every N optimizer steps (for NaN weights, update ratio)."""
    flush_interval_s: float = 1.0
    """The writer thread flushes JSON Lines this often; a SIGKILL loses at most this."""
    echo_nonfinite: bool = True
    """Print one line to stderr the first time the loss or a gradient turns NaN/Inf."""
    profile: ProfileWindow | None = None
    """Profile these steps with torch.profiler into `rankK/profile/` (docs/profiling.md)."""

    def __post_init__(self) -> None:
        if self.grad_every < 1 or self.param_every < 1:
            raise ValueError("grad_every and param_every must be >= 1")


class Recorder:
    """Records one process's training into `run_dir/rankK/`."""

    def __init__(self, run_dir: str | Path, *, config: dict | None = None,
                 options: RecorderOptions | None = None, overwrite: bool = False,
                 command: list[str] | None = None, defer_params: bool = False) -> None:
        """`defer_params=True`: the parameter table is fixed by `freeze_params()` (the
        zero-code mode calls it once it knows the models), not by the first recorded call."""
        self.options = options or RecorderOptions()
        ranks = system.rank_info()
        self.rank = ranks["rank"]
        self.run_dir = Path(run_dir)
        self.rank_dir = self.run_dir / schema.rank_dir_name(self.rank)
        if self.rank_dir.exists() and any(self.rank_dir.iterdir()):
            if not overwrite:
                raise RunDirExistsError(
                    f"{self.run_dir} already holds a recorded run; choose another directory "
                    "or pass overwrite=True")
            shutil.rmtree(self.rank_dir)
        self.writer = RunWriter(self.rank_dir, flush_interval_s=self.options.flush_interval_s)
        self.patches = hooks.Patches()
        self.copier = numerics.HostCopier()
        self.inputs = inputs.InputChecks()
        self.updates = updates.UpdateSampler()
        self.models: list[torch.nn.Module] = []
        self.optimizers: list[torch.optim.Optimizer] = []
        self.schedulers: list[Any] = []
        self.scalers: list[Any] = []
        self.params: list[torch.Tensor] = []
        self.param_names: list[str] = []
        self._param_ids: dict[int, int] = {}
        self._late_optimizer = False
        """An optimizer was attached after the parameter table was fixed: its parameters
        are added at its first step (`grow_params`)."""
        self._every_index: list[int] = []
        """[0, 1, ..., n-1]: the `present` list of a step where every parameter has a
        gradient (shared between records, never changed)."""
        self._frozen = False
        self._defer_params = defer_params
        self._broken = False
        self._fault_message: str | None = None
        self._closed = False
        self._t0 = time.perf_counter()
        self._wall0 = time.time()
        self.step = 0
        self.epoch: int | None = None
        self._stepped = False
        self._cur = _Step()
        self._calls: list[list] = []
        self._in_scaler_step = False
        self._unscaled: set[int] = set()
        self._scaled_out_id: int | None = None
        self._scaled_loss: torch.Tensor | None = None
        self._last_forward: list | None = None
        self.forward_depth = 0
        """Watched-model forwards open now (pre-hook ran, post-hook not yet): the functional
        dropout check (recorder/contracts.py) asks whether a call is inside one."""
        self._wait_pending = 0.0
        self._last_step_t: float | None = None
        self._last_usage = system.cpu_usage()
        self._inflight: deque = deque()
        self._device: torch.device | None = None
        self._bw_order: list[int] = []
        self._bw_handles: list[Any] = []
        self._warned_nonfinite = False
        self._listening = False
        self._profiler = None
        start = {"type": "start", "schema_version": schema.SCHEMA_VERSION,
                 "run_id": f"{int(self._wall0 * 1000):x}", "started_at": self._wall0,
                 "command": command if command is not None else list(sys.argv),
                 "cwd": str(Path.cwd()), "config": config or {},
                 "versions": system.versions(), "device": system.device_name(),
                 "options": {"grad_every": self.options.grad_every,
                             "param_every": self.options.param_every,
                             "flush_interval_s": self.options.flush_interval_s,
                             "profile": self.options.profile.to_dict() if self.options.profile else None}}
        start.update(ranks)
        self.writer.line(schema.META_FILE, start)
        self.writer.line(schema.META_FILE, {"type": "status", "status": schema.STATUS_RUNNING,
                                            "at": self._wall0})
        self._warnings = 0
        self.contracts = contracts.ContractWatcher(self)  # loss and RNN calls (sampled steps)
        hooks.add_global_listener(self)
        warnings_capture.add_listener(self)
        interrupts.install()  # a Ctrl-C Python swallowed (in a __del__) is raised again
        self._listening = True
        if self.options.profile is not None:
            self._profile("start")

    # ---- attaching ----------------------------------------------------------------------
    def watch(self, model=None, optimizer=None, scheduler=None, scaler=None, *,
              models=(), optimizers=(), schedulers=(), scalers=(),
              instance_hooks: bool = True) -> None:
        """Attach hooks to more objects (any may be None).

        `instance_hooks=False` only registers the objects (their index, the parameter
        table, the `objects` record): the caller routes their calls to the `on_*` methods
        itself. The zero-code mode does this with class-level wrappers and torch's global
        hooks, so nothing is stored on the user's objects (a hook or wrapper kept in an
        instance's `__dict__` travels with `copy.deepcopy` and breaks pickling).
        """
        lists = ((self.models, self._attach_model, [model, *models]),
                 (self.optimizers, self._attach_optimizer, [optimizer, *optimizers]),
                 (self.schedulers, self._attach_scheduler, [scheduler, *schedulers]),
                 (self.scalers, self._attach_scaler, [scaler, *scalers]))
        models, optimizers = len(self.models), len(self.optimizers)
        for known, attach, objs in lists:
            for obj in objs:
                if obj is not None and all(obj is not x for x in known):
                    if instance_hooks:
                        attach(obj)
                    else:
                        known.append(obj)
        if self._frozen and len(self.optimizers) > optimizers:
            # its parameters join the table at its first step: by then the model they
            # belong to has usually been called (and named them), as in a k-fold loop
            self._late_optimizer = True
        if self._frozen and len(self.models) > models:
            self.grow_params()
        else:
            self._write_objects()

    def _attach_model(self, model: torch.nn.Module) -> None:
        index = len(self.models)
        self.models.append(model)
        name = f"model{index}"
        self.patches.handle(model.register_forward_pre_hook(  # keywords too: model(**batch)
            hooks.Callback(lambda mod, args, kwargs, i=index: self._safe(self.on_forward_pre, i, mod, args, kwargs)),
            with_kwargs=True))
        self.patches.handle(model.register_forward_hook(
            hooks.Callback(lambda mod, args, out, i=index: self._safe(self.on_forward, i, out))))

        def make_train(original):
            def train(mode: bool = True):
                self._safe(self.on_mode, name, bool(mode))
                return original(mode)
            return train

        def make_zero_grad(original):
            def zero_grad(*args, **kwargs):
                self._safe(self.on_zero_grad, name)
                return original(*args, **kwargs)
            return zero_grad

        def make_load(original):
            def load_state_dict(*args, **kwargs):
                result = original(*args, **kwargs)
                self._safe(self.on_load_state, name)
                return result
            return load_state_dict

        self.patches.wrap_method(model, "train", make_train)
        self.patches.wrap_method(model, "zero_grad", make_zero_grad)
        self.patches.wrap_method(model, "load_state_dict", make_load)

    def _attach_optimizer(self, opt: torch.optim.Optimizer) -> None:
        index = len(self.optimizers)
        self.optimizers.append(opt)
        name = f"opt{index}"
        self.patches.handle(opt.register_step_pre_hook(
            hooks.Callback(lambda o, args, kwargs: self._safe(self.on_optimizer_step_pre, name, o))))
        self.patches.handle(opt.register_step_post_hook(
            hooks.Callback(lambda o, args, kwargs: self._safe(self.on_optimizer_step_post))))

        def make_zero_grad(original):
            def zero_grad(*args, **kwargs):
                self._safe(self.on_zero_grad, name)
                return original(*args, **kwargs)
            return zero_grad

        self.patches.wrap_method(opt, "zero_grad", make_zero_grad)

    def _attach_scheduler(self, sched: Any) -> None:
        name = f"sched{len(self.schedulers)}"
        self.schedulers.append(sched)

        def make_step(original):
            def step(*args, **kwargs):
                self._safe(self._token, f"{name}.step")
                return original(*args, **kwargs)
            return step

        self.patches.wrap_method(sched, "step", make_step)

    def _attach_scaler(self, scaler: Any) -> None:
        name = f"scaler{len(self.scalers)}"
        self.scalers.append(scaler)

        def make_scale(original):
            def scale(outputs):
                out = original(outputs)
                self._safe(self.on_scale, name, outputs, out)
                return out
            return scale

        def make_unscale(original):
            def unscale_(optimizer):
                if not self._in_scaler_step:
                    self._safe(self.on_unscale, name, optimizer)
                return original(optimizer)
            return unscale_

        def make_step(original):
            def step(optimizer, *args, **kwargs):
                self._safe(self.on_scaler_step_pre, name, scaler, optimizer)
                self._in_scaler_step = True
                try:
                    return original(optimizer, *args, **kwargs)
                finally:
                    self._in_scaler_step = False
                    self._safe(self.on_optimizer_step_post)
            return step

        def make_update(original):
            def update(*args, **kwargs):
                self._safe(self._token, f"{name}.update")
                self._unscaled.clear()
                return original(*args, **kwargs)
            return update

        self.patches.wrap_method(scaler, "scale", make_scale)
        self.patches.wrap_method(scaler, "unscale_", make_unscale)
        self.patches.wrap_method(scaler, "step", make_step)
        self.patches.wrap_method(scaler, "update", make_update)

    def freeze_params(self) -> None:
        """Fix the parameter table now (with `defer_params`; otherwise it happens itself)."""
        self._freeze_params()

    def _freeze_params(self) -> None:
        """Fix the parameter table (Arrow columns) at the first recorded call."""
        if self._frozen:
            return
        self._frozen = True
        self._extend_table(prefix_models=len(self.models) > 1)
        if self.params:
            self._device = self.params[0].device
        # The order gradients arrive in on the first backward ("backward order"): used to
        # name the *first* parameter that went non-finite. Hooks removed after one step.
        for index, p in enumerate(self.params):
            if p.requires_grad and hasattr(p, "register_post_accumulate_grad_hook"):
                self._bw_handles.append(p.register_post_accumulate_grad_hook(
                    hooks.Callback(lambda _p, i=index: self._bw_order.append(i))))
        self._write_objects()

    def grow_params(self) -> None:
        """Add the parameters of models and optimizers attached after the table was fixed
        (k-fold training, a second stage with a new model or optimizer): new rows in
        params.jsonl, and the norm files widen from the next row on. Before the table is
        fixed this does nothing (the first fix takes them)."""
        self._late_optimizer = False
        if not self._frozen:
            return
        if self._has_new_params():
            # the steps closed so far are written at the old width first (waits for their
            # values once per growth): a row is as wide as the table when its step closed
            self._drain(block=True)
            self._extend_table(prefix_models=True)
            if self._device is None:
                self._device = self.params[0].device
        self._write_objects()  # the new objects, and the optimizers' parameter indices

    def _has_new_params(self) -> bool:
        """Whether a watched model or optimizer holds a parameter not in the table."""
        known = self._param_ids
        return any(id(p) not in known for m in self.models for p in m.parameters()) or \
            any(id(p) not in known for o in self.optimizers for g in o.param_groups for p in g["params"])

    def _extend_table(self, prefix_models: bool) -> None:
        """Add every parameter of the watched models (named `modelN.path`, or just `path`
        without `prefix_models`) and then of the optimizers (`optN.groupG.J`) that is not in
        the table yet; write their rows and the new column count."""
        start = len(self.params)
        for mi, model in enumerate(self.models):
            for pname, p in model.named_parameters():
                self._add_param(p, f"model{mi}.{pname}" if prefix_models else pname, model, pname)
        for oi, opt in enumerate(self.optimizers):
            for gi, group in enumerate(opt.param_groups):
                for j, p in enumerate(group["params"]):
                    self._add_param(p, f"opt{oi}.group{gi}.{j}", None, None)
        owner = {}
        for oi, opt in enumerate(self.optimizers):
            for gi, group in enumerate(opt.param_groups):
                for p in group["params"]:
                    owner.setdefault(id(p), (oi, gi))
        for index in range(start, len(self.params)):
            oi, gi = owner.get(id(self.params[index]), (None, None))
            row = self._param_rows[index]
            row["optimizer"], row["group"] = oi, gi
            self.writer.line(schema.PARAMS_FILE, row)
        self.writer.set_param_count(len(self.params))

    def _add_param(self, p: torch.Tensor, name: str, model, pname) -> None:
        if id(p) in self._param_ids:
            return
        if not hasattr(self, "_param_rows"):
            self._param_rows: list[dict] = []
        module_path, module_type = "", ""
        if model is not None and pname is not None:
            module_path = pname.rpartition(".")[0]
            try:
                module_type = type(model.get_submodule(module_path)).__name__
            except AttributeError:
                module_type = ""
        self._param_ids[id(p)] = len(self.params)
        self.params.append(p)
        self.param_names.append(name)
        self._param_rows.append({
            "index": len(self._param_rows), "name": name, "shape": list(p.shape),
            "numel": p.numel(), "dtype": str(p.dtype).replace("torch.", ""),
            "module": module_path, "module_type": module_type,
            "requires_grad": bool(p.requires_grad), **numerics.shard_info(p)})

    def _write_objects(self) -> None:
        self.writer.line(schema.META_FILE, {
            "type": "objects",
            "models": [{"index": i, "class": type(m).__name__} for i, m in enumerate(self.models)],
            "optimizers": [_describe_optimizer(i, o, self._param_ids)
                           for i, o in enumerate(self.optimizers)],
            "schedulers": [_describe_scheduler(i, s) for i, s in enumerate(self.schedulers)],
            "scalers": [_describe_scaler(i, s) for i, s in enumerate(self.scalers)]})

    # ---- hook callbacks ------------------------------------------------------------------
    def _safe(self, fn: Callable, *args) -> Any:
        interrupts.redeliver()  # a swallowed Ctrl-C/SIGTERM stops the loop here (interrupts.py)
        if self._broken or self._closed:
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never raise into the user's loop
            self._fault(exc)
            return None

    def _fault(self, exc: BaseException) -> None:
        self._broken = True
        message = f"{type(exc).__name__}: {exc}"
        self._fault_message = self._fault_message or message
        self.writer.warn_once(f"diagnose: the recorder failed and switched itself off ({message}); "
                              "training continues, the record is incomplete")  # one per run
        self.writer.line(schema.EVENTS_FILE, {
            "kind": "recorder_error", "step": self.step, "t_s": self._now(),
            "message": message, "traceback": traceback.format_exc(limit=8)})

    def _now(self) -> float:
        return round(time.perf_counter() - self._t0, 6)

    def _token(self, name: str, flags: str | None = None) -> list:
        if not self._frozen and not self._defer_params:
            self._freeze_params()
        token = [name, flags]
        self._calls.append(token)
        return token

    def _open_if_stepped(self) -> None:
        if self._stepped:
            self._close_step()
            self.step += 1
            self._stepped = False
            self._cur = _Step()
            if self._profiler is not None:
                self._profile("step")

    def _profile(self, action: str) -> None:
        """Start, step or stop the profiler; a profiler fault switches profiling off only
        (a `profile_error` event), never the recorder or the training."""
        try:
            if action == "start":
                from diagnose.profiling.capture import StepProfiler

                self._profiler = StepProfiler(self.rank_dir / schema.PROFILE_DIR, self.options.profile,
                                              worker=schema.rank_dir_name(self.rank))
            elif action == "step":
                self._profiler.step()
            else:
                self._profiler.stop()
        except Exception as exc:  # noqa: BLE001 - profiling is optional, training is not
            self._profiler = None
            self.event("profile_error", action=action, message=f"{type(exc).__name__}: {exc}"[:2000])

    def on_mode(self, name: str, training: bool) -> None:
        """`model.train()` / `model.eval()`: a call token. Going into evaluation also hands
        the step records whose values have landed to the writer: an evaluation can take
        long, and a crash during it should not take the training steps before it along."""
        self._token(f"{name}.{'train' if training else 'eval'}")
        if not training:
            self._drain(block=False)

    def on_load_state(self, name: str) -> None:
        """`model.load_state_dict(...)` returned: a call token (`modelN.load_state_dict`).
        Loaded into a model being trained, it is a rollback to a snapshot (an LR range test
        that restores its start, early stopping that goes back to the best weights): the
        rules judge the loss before and after it apart (`_signals.restore_steps`)."""
        self._token(f"{name}.load_state_dict")

    def on_zero_grad(self, owner: str) -> None:
        self._open_if_stepped()
        self._token(f"{owner}.zero_grad")

    def on_forward_pre(self, index: int, module: torch.nn.Module, args: tuple,
                       kwargs: dict | None = None) -> None:
        training = module.training
        grad = torch.is_grad_enabled()
        if training and grad:
            self._open_if_stepped()
        self._last_forward = self._token(f"model{index}.forward", forward_flags(training))
        self.forward_depth += 1
        if training and grad and index == 0:
            samples, tokens = batch_size(args if args or not kwargs else kwargs)
            self._cur.samples += samples
            self._cur.tokens += tokens
        if training and grad:  # no watched loader: check the data the model is given
            self.inputs.add_forward_inputs(f"model{index}", args, kwargs)

    def on_forward_kwargs(self, index: int, module: torch.nn.Module, kwargs: dict) -> None:
        """The keyword arguments of a top-level forward called with no positional ones
        (the zero-code mode's global hooks only see them after the call): samples, tokens
        and the forward-input check, as `on_forward_pre` does for positional inputs."""
        if not (module.training and torch.is_grad_enabled()):
            return
        if index == 0:
            samples, tokens = batch_size(kwargs)
            self._cur.samples += samples
            self._cur.tokens += tokens
        self.inputs.add_forward_inputs(f"model{index}", (), kwargs)

    def on_forward(self, index: int, output: Any) -> None:
        self.forward_depth = max(0, self.forward_depth - 1)
        if not torch.is_grad_enabled():
            return
        tensor = _first_tensor(output, needs_grad=True)
        if tensor is None:
            return
        token = self._last_forward

        def mark(_grad, token=token):
            if token[1] is not None and "B" not in token[1]:
                token[1] += "B"

        tensor.register_hook(mark)

    def on_backward(self, tensor: torch.Tensor) -> None:
        self.forward_depth = 0  # a forward that raised never ran its post-hook
        self._open_if_stepped()
        self._token("backward")
        if tensor.numel() != 1 or not tensor.is_floating_point():
            return
        if self._scaled_out_id is not None and id(tensor) == self._scaled_out_id \
                and self._scaled_loss is not None:
            loss = self._scaled_loss  # detached in on_scale
        else:
            loss = tensor.detach()
        if loss.dtype is not torch.float32:
            loss = loss.float()
        loss = loss.reshape(1)  # as HostCopier.pack takes it: one launch fewer there
        self._cur.loss = loss if self._cur.loss is None else self._cur.loss + loss
        self._cur.micro_batches += 1
        self._scaled_out_id, self._scaled_loss = None, None

    def on_scale(self, name: str, outputs: Any, out: Any) -> None:
        self._token(f"{name}.scale")
        if isinstance(outputs, torch.Tensor) and outputs.numel() == 1:
            self._scaled_out_id = id(out)
            self._scaled_loss = outputs.detach()

    def on_unscale(self, name: str, optimizer) -> None:
        self._token(f"{name}.unscale_")
        self._unscaled.add(id(optimizer))

    def on_scaler_step_pre(self, name: str, scaler, optimizer) -> None:
        self._token(f"{name}.step")
        scale = getattr(scaler, "_scale", None) if scaler.is_enabled() else None
        if scale is not None:
            self._cur.scale = scale.clone()  # update() changes it in place (no autograd)
        self._at_optimizer_step(None if id(optimizer) in self._unscaled else scale)

    def on_optimizer_step_pre(self, name: str, opt) -> None:
        self._token(f"{name}.step")
        if not self._in_scaler_step:
            self._at_optimizer_step(None)

    def on_optimizer_step_post(self) -> None:
        self._stepped = True
        self._cur.clip_capture = None

    def on_oom(self, exc: BaseException, where: str) -> None:
        """An out-of-memory error went by (oom.py): an `oom` event with the memory state."""
        if oom.first_sighting(exc):
            self._drain(block=False)  # what has landed goes to disk with the event
            self.event("oom", **oom.describe(exc, self._device, where))
            # The step's training forwards (train mode, grad on) were for a backward that
            # ran out of memory, or never came: not evaluation passes (eval-* rules).
            for token in self._calls:
                flags = token[1]
                if flags and flags.startswith("TG") and "B" not in flags:
                    token[1] = flags + "B"

    def on_save(self, obj: Any, f: Any) -> None:
        """`torch.save(obj, f)` returned: a `checkpoint` event (path, top-level keys)."""
        if checkpoints.is_storage(obj):  # pickling a tensor saves its storage (all_gather_object)
            return
        # the event wakes the writer: the records of the steps the checkpoint holds go with
        # it (saving the state has copied it to the host: waiting here costs nothing more)
        self._drain(block=True)
        self.event("checkpoint", **checkpoints.describe_checkpoint(obj, f))

    def on_warning(self, message: Any, category: Any, filename: Any, lineno: Any) -> None:
        """A warning was shown (diagnose/recorder/warnings_capture.py): a `warning` event."""
        if str(message).startswith("diagnose:") or self._warnings >= warnings_capture.MAX_WARNINGS:
            return
        self._warnings += 1
        self.event("warning", **warnings_capture.describe(message, category, filename, lineno))

    def on_clip(self, kind: str, args: tuple, kwargs: dict, result: Any) -> None:
        self._token(kind)
        if kind == "clip_grad_norm_":
            max_norm = kwargs.get("max_norm", args[1] if len(args) > 1 else None)
            self._cur.clip_max = float(max_norm) if max_norm is not None else None
            if isinstance(result, torch.Tensor):  # computed under no_grad: detached already
                self._cur.clip_norm = result.detach() if result.requires_grad else result

    def on_clip_norms(self, norms: Any) -> None:
        """`clip_grad_norm_` computed every gradient's norm (diagnose/recorder/clipcapture.py):
        keep them for the optimizer step, when they are of unscaled gradients and from the
        step's only clip call."""
        cur = self._cur
        if self._stepped:  # clipping after the step: not this step's gradients
            return
        if cur.clip_capture is not None:  # a second clip call: no single set of norms
            cur.clip_capture = False
            return
        scaled = not self._unscaled and any(s.is_enabled() for s in self.scalers)
        if not scaled:
            norms.seal()
        cur.clip_capture = False if scaled else norms

    def _norms_from_clip(self, scale: torch.Tensor | None) -> tuple | None:
        """(present, device vector, order) from the step's clip call, or None to compute."""
        capture, self._cur.clip_capture = self._cur.clip_capture, None  # frees its grads
        if not capture or scale is not None:
            return None
        vector = capture.vector()
        if vector is None or not capture.unchanged():  # zeroed/scaled in place after the clip
            return None
        if capture.in_order_of(self.params):
            # the usual case: the clip was given our parameters, every one with a gradient
            if len(self._every_index) != len(self.params):
                self._every_index = list(range(len(self.params)))
            return self._every_index, vector, None
        grads = [p.grad for p in self.params]
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            return None
        mine = [grads[i] for i in present]
        if len(mine) == len(capture.grads) and all(map(operator.is_, mine, capture.grads)):
            return present, vector, None  # the clip saw them in our order
        position = {id(g): k for k, g in enumerate(capture.grads)}
        order = [position.get(id(g)) for g in mine]
        if None in order:  # a gradient the clip did not see
            return None
        return present, vector, order

    def _at_optimizer_step(self, scale: torch.Tensor | None) -> None:
        """Grad norms, LR and timing at an optimizer step (first one in the step only)."""
        cur = self._cur
        if cur.t_step is not None:
            return
        now = time.perf_counter()
        cur.t_step = now
        cur.step_time_s = now - (self._last_step_t if self._last_step_t is not None else self._t0)
        self._last_step_t = now
        usage = system.cpu_usage()  # the same interval: what the process did in that time
        if usage is not None and self._last_usage is not None:
            cur.cpu_time_s = usage[0] - self._last_usage[0]
            cur.involuntary_switches = usage[1] - self._last_usage[1]
        self._last_usage = usage
        cur.data_wait_s, self._wait_pending = self._wait_pending, 0.0
        if self._late_optimizer:
            self.grow_params()
        cur.inputs = self.inputs.take()
        if self.step % self.options.param_every == 0 and self.params:
            self.updates.before(self.params)
            if self.updates.refused and not getattr(self, "_noted_updates", False):
                self._noted_updates = True
                self.event("not_recorded", what="update-norms", message=self.updates.refused)
        for opt in self.optimizers:
            for group in opt.param_groups:
                lr = group.get("lr")
                if isinstance(lr, torch.Tensor):
                    cur.lr.append(None)
                    cur.lr_tensors.append((len(cur.lr) - 1, lr.detach()))
                else:
                    cur.lr.append(float(lr) if lr is not None else None)
        from_clip = self._norms_from_clip(scale)
        if self.step % self.options.grad_every == 0 and self.params:
            if from_clip is not None:
                cur.norms_present, cur.norms, cur.norms_order = from_clip
                cur.norms_from_clip = True
            else:
                present, norms = numerics.grad_norms(self.params)
                if norms is not None and scale is not None:
                    norms = norms / scale.float()
                cur.norms_present, cur.norms = present, norms

    def on_batch(self, batch: Any, key: Any = None) -> None:
        """A training batch arrived (from a watched loader): a `batch` marker in the call
        order, and its float tensors checked for NaN/Inf (diagnose/recorder/inputs.py).
        Batches fetched without autograd are not training batches: neither."""
        if torch.is_grad_enabled():
            # a marker in the call order (no step opened, no device work): which backward
            # passes came from which batch (rule zero-grad-before-step)
            self._calls.append([schema.BATCH_TOKEN, None])
            self.inputs.add(batch, key)

    def data_wait(self, seconds: float) -> None:
        """Time spent waiting for a batch (from a watched loader)."""
        self._wait_pending += seconds

    def set_epoch(self, epoch: int) -> None:
        # A new epoch is a step boundary: the step that ended the previous epoch is
        # closed now, so it keeps the previous epoch's number.
        self._safe(self._open_if_stepped)
        self.epoch = epoch
        self.event("epoch", epoch=epoch)

    def phase_token(self, phase: str) -> None:
        self._safe(self._token, f"phase:{phase}")

    def event(self, kind: str, **data: Any) -> None:
        """Write a discrete event (epoch, metrics, checkpoint, exception, ...)."""
        if self._closed:
            return
        record = {"kind": kind, "step": self.step, "t_s": self._now()}
        record.update(data)
        self.writer.line(schema.EVENTS_FILE, record)

    # ---- step records ---------------------------------------------------------------------
    def _close_step(self) -> None:
        cur = self._cur
        if self._bw_handles and self._bw_order:
            for handle in self._bw_handles:
                handle.remove()
            self._bw_handles.clear()
            self.event("backward_order", order=list(dict.fromkeys(self._bw_order)))
        parts: dict[str, torch.Tensor | None] = {
            "loss": cur.loss, "scale": cur.scale, "clip_norm": cur.clip_norm,
            "norms": cur.norms}
        if cur.scale is not None:
            scaler_scale = next((getattr(s, "_scale", None) for s in self.scalers
                                 if getattr(s, "_scale", None) is not None), None)
            parts["scale_after"] = scaler_scale
        if cur.lr_tensors:
            parts["lr_tensors"] = torch.stack([t.float().reshape(()) for _, t in cur.lr_tensors])
        if self.step % self.options.param_every == 0 and self.params:
            parts["param_norms"] = numerics.tensor_norms(self.params)
        moved = self.updates.after(self.params)
        if moved is not None:
            parts["update_norms"] = moved[1]
        input_host, input_paths, parts["input_minmax"] = cur.inputs or ([], [], None)
        alloc, reserved, peak = system.cuda_memory(self._device)
        meta = {
            "step": self.step, "epoch": self.epoch,
            "t_s": round((cur.t_step or time.perf_counter()) - self._t0, 6),
            "micro_batches": cur.micro_batches, "lr": cur.lr,
            "clip_max": cur.clip_max,
            "step_time_s": cur.step_time_s, "data_wait_s": cur.data_wait_s,
            "cpu_time_s": cur.cpu_time_s, "involuntary_switches": cur.involuntary_switches,
            "samples": cur.samples, "tokens": cur.tokens or None,
            "mem_alloc_bytes": alloc, "mem_reserved_bytes": reserved, "mem_peak_bytes": peak,
            "rss_bytes": system.rss_bytes(),
            "_present": cur.norms_present,
            "_clip": (cur.norms_order,) if cur.norms_from_clip else None, "_lr_slots": [i for i, _ in cur.lr_tensors],
            "_inputs": (input_host, input_paths), "_moved": moved[0] if moved else None}
        self._inflight.append(self.copier.pack(parts, meta))
        self._write_calls()
        self._drain(block=False, batched=True)

    def _write_calls(self) -> None:
        if not self._calls:
            return
        tokens = _run_length([name if not flags else f"{name}[{flags}]"
                              for name, flags in self._calls])
        self._calls = []
        self.writer.line(schema.EVENTS_FILE, {"kind": "calls", "step": self.step, "calls": tokens})

    def _drain(self, block: bool, batched: bool = False) -> None:
        """Finish the step records whose values have landed, in order (`block`: all of them,
        waiting for the device; `batched`: only once a batch is due, see `_BATCH`)."""
        inflight = self._inflight
        if not inflight:
            return
        if batched and len(inflight) < _BATCH \
                and time.perf_counter() - inflight[0].created < _BATCH_WAIT_S:
            return
        while inflight and (block or len(inflight) > _MAX_IN_FLIGHT or inflight[0].ready()):
            self._finalize(inflight.popleft())

    def _finalize(self, flight: numerics.InFlight) -> None:
        values = flight.values()
        record = flight.meta  # made for this flight alone (_close_step): becomes the record
        present = record.pop("_present")
        from_clip = record.pop("_clip", None)
        lr_slots = record.pop("_lr_slots")
        input_host, input_paths = record.pop("_inputs", ([], []))
        moved = record.pop("_moved", None)
        self.copier.release(flight)
        get = values.get
        for slot, value in zip(lr_slots, get("lr_tensors", ())):
            record["lr"][slot] = float(value)
        record["loss"] = _scalar(get("loss"))
        record["scale"] = _scalar(get("scale"))
        record["scale_after"] = _scalar(get("scale_after"))
        record["clip_norm"] = _scalar(get("clip_norm"))
        step = record["step"]
        norms = get("norms")
        if norms is not None and present is not None:
            if from_clip is not None:  # the clip's norms: before it scaled the gradients
                order = from_clip[0]
                norms = _after_clip(norms if order is None else norms[order],
                                    record["clip_norm"], record["clip_max"])
            wide = norms.astype(np.float64)
            squares = float(np.dot(wide, wide))  # NaN/Inf exactly when a norm is (float32 inputs)
            record["grad_norm"] = math.sqrt(squares) if norms.size else None
            if len(present) == len(self.params):  # every parameter has a gradient: in order
                full = norms
            else:
                full = np.full(len(self.params), -1.0, dtype=np.float32)
                full[present] = norms
            if not math.isfinite(squares):  # the -1 "no gradient" sentinel is finite
                record["nonfinite_grads"] = [i for i in self._bw_order_or_index()
                                             if not math.isfinite(float(full[i]))]
            self.writer.matrix_row(schema.GRAD_NORMS_FILE, step, full)
        if "param_norms" in values:
            self.writer.matrix_row(schema.PARAM_NORMS_FILE, step, values["param_norms"])
        if "update_norms" in values and moved is not None:
            full = np.full(len(self.params), np.nan, dtype=np.float32)
            full[moved] = values["update_norms"]
            self.writer.matrix_row(schema.UPDATE_NORMS_FILE, step, full)
        bad_inputs = input_host + inputs.findings_from(input_paths, get("input_minmax", []))
        if bad_inputs:
            self.writer.line(schema.EVENTS_FILE, {"kind": "nonfinite_input", "step": step,
                                                  "t_s": record["t_s"], "tensors": bad_inputs})
        for key in _FLOAT_FIELDS:
            if key in record:
                record[key] = _compact(record[key])
        record["lr"] = [_compact(v) for v in record["lr"]]
        record = {k: v for k, v in record.items() if v is not None}
        self.writer.line(schema.STEPS_FILE, record)
        self._echo_nonfinite(record)

    def _bw_order_or_index(self) -> list[int]:
        seen = list(dict.fromkeys(self._bw_order))
        seen_set = set(seen)
        return seen + [i for i in range(len(self.params)) if i not in seen_set]

    def _echo_nonfinite(self, record: dict) -> None:
        if self._warned_nonfinite or not self.options.echo_nonfinite:
            return
        loss = record.get("loss")
        skipped = (record.get("scale_after") is not None and record.get("scale") is not None
                   and record["scale_after"] < record["scale"])
        what = None
        if loss is not None and not math.isfinite(loss):
            what = f"the loss is {loss}"
        elif record.get("nonfinite_grads") and not skipped:
            first = self.param_names[record["nonfinite_grads"][0]]
            what = f"gradients are NaN/Inf (first: {first})"
        if what:
            self._warned_nonfinite = True
            print(f"diagnose: at step {record['step']} {what}", file=sys.stderr)

    # ---- closing --------------------------------------------------------------------------
    def close(self, status: str = schema.STATUS_FINISHED, error: str | None = None) -> None:
        """Finish the last step, flush everything, remove every hook. Idempotent."""
        if self._closed:
            return
        if self._broken:  # the steps closed before the fault are whole: written if they can be
            try:
                self._drain(block=True)
            except Exception:  # noqa: BLE001 - the fault is reported already
                pass
        else:
            try:
                if self._stepped or self._cur.loss is not None:
                    self._close_step()
                self._write_calls()
                self._drain(block=True)
                self.contracts.close()
            except Exception as exc:  # noqa: BLE001
                self._fault(exc)
        if self._profiler is not None:
            self._profile("stop")
        self._closed = True
        for handle in self._bw_handles:
            handle.remove()
        self.patches.undo()
        if self._listening:
            hooks.remove_global_listener(self)
            warnings_capture.remove_listener(self)
            interrupts.uninstall()
            self._listening = False
        record = {"type": "status", "status": status, "at": time.time(),
                  "steps": self.step + (1 if self._stepped else 0)}
        if error:
            record["error"] = error
        if self.writer.failed or self._fault_message:
            record["incomplete"] = self.writer.failed or self._fault_message
        self.writer.line(schema.META_FILE, record)
        self.writer.close()

    def __del__(self) -> None:  # a forgotten close() must not leave hooks behind
        try:
            if not self._closed and self._listening:
                hooks.remove_global_listener(self)
                warnings_capture.remove_listener(self)
                interrupts.uninstall()
        except Exception:  # noqa: BLE001
            pass


def _after_clip(norms: np.ndarray, total: float | None, max_norm: float | None) -> np.ndarray:
    """Per-parameter norms after `clip_grad_norm_` scaled the gradients, from those before.

    Same formula as torch (clip_coef = max_norm / (total + 1e-6), clamped to 1; a NaN total
    gives NaN), so the values equal what the recorder reads from the clipped gradients.
    """
    if total is None or max_norm is None:
        return norms
    coef = max_norm / (total + 1e-6)
    if coef >= 1.0:  # no clipping this step (NaN compares False and scales below)
        return norms
    with np.errstate(invalid="ignore", over="ignore"):
        return norms * np.float32(coef)


def _run_length(tokens: list[str]) -> list[str]:
    """Collapse repeats: 200 evaluation forwards become one `model0.forward[EN]*200`."""
    out: list[str] = []
    count = 0
    for i, token in enumerate(tokens):
        count += 1
        if i + 1 == len(tokens) or tokens[i + 1] != token:
            out.append(token if count == 1 else f"{token}*{count}")
            count = 0
    return out


_FLOAT_FIELDS = ("t_s", "loss", "scale", "scale_after", "clip_norm", "clip_max", "grad_norm",
                 "step_time_s", "data_wait_s", "cpu_time_s")
"""The step record's float fields written to 7 significant digits (with each `lr`)."""


def _compact(value: Any) -> Any:
    """A float to 7 significant digits (they come from float32 or timers): ~40% fewer
    bytes. Anything else (None, NaN, Inf) as it is."""
    if value.__class__ is float and math.isfinite(value):
        return float(f"{value:.7g}")
    return value


def forward_flags(training: bool) -> str:
    """The flags of a `modelN.forward[...]` token from the mode and autograd state now."""
    if torch.is_inference_mode_enabled():
        grad = "I"
    else:
        grad = "G" if torch.is_grad_enabled() else "N"
    return ("T" if training else "E") + grad


def batch_size(args: Any) -> tuple[int, int]:
    """(samples, tokens) of a forward's inputs: first dimension of the first tensor, and
    its element count when it holds integers (token ids)."""
    first = _first_tensor(args)
    if first is None or first.dim() == 0:
        return 0, 0
    integer = not first.is_floating_point() and not first.is_complex() \
        and first.dtype != torch.bool
    return int(first.shape[0]), (first.numel() if integer else 0)


def _scalar(values: np.ndarray | None) -> float | None:
    if values is None or len(values) == 0:
        return None
    return float(values[0])


def _first_tensor(obj: Any, needs_grad: bool = False, depth: int = 0) -> torch.Tensor | None:
    """The first tensor in a (nested) forward input/output, optionally one needing grad."""
    if isinstance(obj, torch.Tensor):
        return obj if (not needs_grad or obj.requires_grad) else None
    if depth > 2:
        return None
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dataclass_fields__"):
        items = (getattr(obj, f) for f in obj.__dataclass_fields__)
    else:
        return None
    for item in items:
        found = _first_tensor(item, needs_grad, depth + 1)
        if found is not None:
            return found
    return None


def _describe_optimizer(index: int, opt, param_ids: dict[int, int]) -> dict:
    groups = []
    for group in opt.param_groups:
        groups.append({k: _jsonable(v) for k, v in group.items() if k != "params"} |
                      {"params": [param_ids.get(id(p)) for p in group["params"]]})
    return {"index": index, "class": type(opt).__name__, "groups": groups}


_SCHED_KEYS = ("total_steps", "T_max", "T_0", "step_size", "milestones", "gamma", "eta_min",
               "max_lr", "last_epoch", "base_lrs", "mode", "patience", "factor", "warmup",
               "total_iters", "pct_start", "anneal_strategy", "cooldown", "min_lrs")


def _describe_scheduler(index: int, sched) -> dict:
    config = {k: _jsonable(getattr(sched, k)) for k in _SCHED_KEYS if hasattr(sched, k)}
    if hasattr(sched, "_schedulers"):
        config["children"] = [type(s).__name__ for s in sched._schedulers]
    return {"index": index, "class": type(sched).__name__, "config": config}


def _describe_scaler(index: int, scaler) -> dict:
    return {"index": index, "enabled": bool(scaler.is_enabled()),
            "init_scale": _jsonable(getattr(scaler, "_init_scale", None)),
            "growth_interval": _jsonable(getattr(scaler, "_growth_interval", None)),
            "backoff_factor": _jsonable(getattr(scaler, "_backoff_factor", None)),
            "growth_factor": _jsonable(getattr(scaler, "_growth_factor", None))}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, torch.Tensor):
        return None  # reading it would sync the device
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
