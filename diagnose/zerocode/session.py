"""One zero-code recording: what the script created, and where each call goes.

The wrappers and hooks (`modules.py`, `objects.py`, `loaders.py`, `capture.py`) call the
handlers here; the handlers keep the tables of discovered objects (models, optimizers,
schedulers, scalers, by `id`) and feed the recorder. Every handler runs through
`safe`: a fault becomes one warning and a `recorder_error` event, the session switches
itself off (all wrappers pass straight through) and the script goes on.
"""
from __future__ import annotations

import os
import sys
import weakref
from pathlib import Path
from typing import Any

import torch

from diagnose.recorder.recorder import RecorderOptions
from diagnose.zerocode import capture, loaders, modules, objects
from diagnose.zerocode.classpatch import ClassPatches
from diagnose.zerocode.recording import ZeroCodeRecorder
from diagnose.zerocode.roots import outermost, owns_any, resolve_roots, unwrap

PENDING_LIMIT = 5_000
"""Top-level calls buffered before the models are resolved without an optimizer step."""

_graph_task_id = getattr(torch._C, "_current_graph_task_id", lambda: -1)
_SESSIONS: "weakref.WeakSet[Session]" = weakref.WeakSet()


def _off_in_forked_child() -> None:
    # A DataLoader worker is a fork of the training process: it inherits the patches but
    # not the writer thread. Nothing it does is part of the training's record.
    for session in list(_SESSIONS):
        session.on = False
        session.rec._closed = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_off_in_forked_child)


class Session:
    """Discovers a script's models, optimizers, schedulers and scalers and records them."""

    def __init__(self, run_dir: str | Path, *, options: RecorderOptions | None = None,
                 overwrite: bool = False, config: dict | None = None) -> None:
        self.rec = ZeroCodeRecorder(run_dir, config=config, options=options,
                                    overwrite=overwrite)
        self.patches = ClassPatches()
        self.on = False
        self.closed = False
        self.resolved = False
        # re-entrancy flags the wrappers read
        self.in_train_call = False
        self.in_opt_zero_grad = False
        self.in_sched_step = False
        self.in_scaler_step = False
        self.sched_init_depth = 0
        # discovered objects
        self.targets: dict[int, tuple[int, torch.nn.Module]] = {}
        """id(module called) -> (model index, the module whose train/eval mode counts)."""
        self.opt_index: dict[int, int] = {}
        self.sched_index: dict[int, int] = {}
        self.scaler_index: dict[int, int] = {}
        self._called: dict[int, torch.nn.Module] = {}
        self._compiled_in_place: list[torch.nn.Module] = []
        self._compiled_functions: set[str] = set()
        self._nonroots: dict[int, weakref.ref] = {}
        self._opt_param_ids: set[int] | None = None
        self._inner_ids: set[int] | None = None
        self._current = False
        self._current_target: tuple | None = None
        self._top_forwards = 0
        self._last_loader: int | None = None
        self._train_loader: int | None = None
        self._epoch = 0
        # the forward hooks: global until the models are known, then on the models alone
        self.forward_watch: modules.ForwardWatch | None = None
        self._hookable: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        """id -> a module the script calls as a model (what `narrow` hooks)."""
        self._narrow_due = False
        self._compiled_any = False
        self._resolve_after_step = False
        _SESSIONS.add(self)

    # ---- lifetime -------------------------------------------------------------------------
    def install(self) -> None:
        """Install every wrapper and hook (each part on its own: one that fails is noted)."""
        for part in (modules, objects, loaders, capture):
            try:
                installed = part.install(self, self.patches)
                if part is modules:
                    self.forward_watch = installed
            except Exception as exc:  # noqa: BLE001 - an older torch may lack a target
                self.rec.event("not_recorded", what=part.__name__.rsplit(".", 1)[-1],
                               message=f"could not install: {type(exc).__name__}: {exc}")
        self.on = True

    def close(self, status: str, error: str | None = None) -> None:
        """Resolve what is still pending, undo every patch, flush. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.on and not self.rec._broken:
            try:
                self.resolve()
                self._note_no_step()
            except Exception as exc:  # noqa: BLE001
                self.fault(exc)
        self.on = False
        self.patches.undo()
        self.rec.close(status, error)
        _SESSIONS.discard(self)

    def safe(self, fn, *args) -> Any:
        """Run a handler; a fault switches the session off instead of reaching the script."""
        if not self.on or self.rec._broken:
            self.on = False
            return None
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - never raise into the user's script
            self.fault(exc)
            return None

    def fault(self, exc: BaseException) -> None:
        self.on = False
        if not self.rec._broken and not self.rec._closed:
            self.rec._fault(exc)

    # ---- models ---------------------------------------------------------------------------
    def top_forward_pre(self, module: torch.nn.Module, args: tuple) -> None:
        self._current = False
        try:
            if _graph_task_id() != -1:
                return  # re-run inside backward (activation checkpointing): not a call
            target = self.targets.get(id(module))
            if target is None:
                if not self.resolved:
                    if len(self.rec._pending) < PENDING_LIMIT:
                        self._called.setdefault(id(module), module)
                        self.rec.pending_forward(module, args)
                        self._current = True
                        self._top_forwards += 1
                        return
                    self.resolve()
                target = self._classify(module)
                if target is None:
                    return
            index, mode_module = target
            self.rec.on_forward_pre(index, mode_module, args)
            self._current_target = target
            self._current = True
            self._top_forwards += 1
        except Exception as exc:  # noqa: BLE001
            self.fault(exc)

    def top_forward_post(self, module: torch.nn.Module, output: Any, kwargs: dict | None = None) -> None:
        if not self._current:
            return
        self._current = False
        target, self._current_target = self._current_target, None
        try:
            if kwargs and target is not None:  # model(**batch): the pre-hook saw no inputs
                self.rec.on_forward_kwargs(target[0], target[1], kwargs)
            self.rec.on_forward(0, output)  # marks the token `B` if a backward reaches it
        except Exception as exc:  # noqa: BLE001
            self.fault(exc)

    def _classify(self, module: torch.nn.Module) -> tuple[int, torch.nn.Module] | None:
        """A top-level module first called after the models were resolved."""
        ref = self._nonroots.get(id(module))
        if ref is not None and ref() is module:
            return None
        base = self.targets.get(id(unwrap(module)))
        if base is not None:  # a new wrapper (torch.compile, DDP) around a known model
            self.targets[id(module)] = base
            self._hookable[id(module)] = module
            return base
        if self._inner_ids is None:
            self._inner_ids = {id(sub) for _, m in self.targets.values() for sub in m.modules()}
        if id(module) not in self._inner_ids and owns_any(module, self._optimizer_params()):
            return self._add_root(module, late=True)
        key = id(module)
        self._nonroots[key] = weakref.ref(module, lambda _r, k=key: self._nonroots.pop(k, None))
        return None

    def resolve(self) -> None:
        """Decide the models (roots) once: at the first optimizer step, or at the end."""
        if self.resolved:
            return
        self.resolved = True
        called = list(self._called.values()) + self._compiled_in_place
        for module in resolve_roots(called, self._optimizer_params(),
                                    have_optimizers=bool(self.rec.optimizers)):
            self._add_root(module, late=False)
        self._models_without_forward()
        self.rec.settle_pending(self._index_of)
        self._called.clear()
        self._narrow_due = True
        self.rec.freeze_params()
        if self._last_loader is not None:
            self._train_loader = self._last_loader
            self.rec.inputs.keep_only(self._train_loader)
            self.rec.set_epoch(0)

    def _models_without_forward(self) -> None:
        """Optimizers none of whose parameters belong to a model seen called (its forward
        ran in compiled code, or as `module.forward(x)`): look for their model among the
        script's global variables, so parameters keep their names."""
        unowned = [i for i, opt in enumerate(self.rec.optimizers)
                   if not any(owns_any(m, {id(p) for g in opt.param_groups for p in g["params"]})
                              for _, m in self.targets.values())]
        if not unowned:
            return
        main = getattr(sys.modules.get("__main__"), "__dict__", {})
        ids = {id(p) for i in unowned for g in self.rec.optimizers[i].param_groups
               for p in g["params"]}
        found = outermost([v for v in list(main.values())
                           if isinstance(v, torch.nn.Module) and owns_any(v, ids)])
        for module in found:
            index = self._add_root(module, late=False)[0]
            self.rec.event("not_recorded", what="forward-not-seen", model=index,
                           message=f"model{index} ({type(module).__name__}) holds optimizer "
                                   "parameters but no forward call of it was seen (it ran in "
                                   "compiled code, or as module.forward()): its forward "
                                   "passes are not recorded")
        if not found:
            self.rec.event("not_recorded", what="model-not-found",
                           optimizer=unowned[0],
                           message="no model holding the optimizer's parameters was seen "
                                   "or found among the script's globals: parameters are "
                                   "named after their optimizer (optN.groupG.J)")

    def _add_root(self, module: torch.nn.Module, late: bool) -> tuple[int, torch.nn.Module]:
        base = unwrap(module)
        table = len(self.rec.params)
        known = self.targets.get(id(base))
        if known is None:
            self.rec.watch(model=base, instance_hooks=False)
            known = (len(self.rec.models) - 1, base)
        self.targets[id(module)] = self.targets[id(base)] = known
        self._hookable[id(module)] = module  # the wrapper the script calls (DDP), and
        self._hookable[id(base)] = base  # the model it wraps, called alone to evaluate
        self._inner_ids = None
        index = known[0]
        if hasattr(module, "_orig_mod"):
            self.rec.event("not_recorded", what="compiled-submodules", model=index,
                           message=f"model{index} is torch.compile'd: its forward passes are "
                                   "recorded (mode, grad state, backward), nothing inside "
                                   "the compiled graph is (no hook runs there); the first "
                                   "steps include compilation time")
        if getattr(base, "_compiled_call_impl", None) is not None:
            self.rec.event("not_recorded", what="compiled-forward", model=index,
                           message=f"model{index} was compiled in place (module.compile()): "
                                   "its forward runs inside dynamo, where no hook sees it, so "
                                   "its forward passes (mode, grad state, evaluation passes) "
                                   "are not recorded; torch.compile(model) keeps them visible")
        if late:  # watch() added its new parameters to the table (Recorder.grow_params)
            added = len(self.rec.params) - table
            total = sum(1 for _ in base.parameters())
            self.rec.event("late_model", model=index, **{"class": type(base).__name__},
                           params_added=added, params_in_table=total - added)
        return known

    def _index_of(self, module: torch.nn.Module) -> int | None:
        target = self.targets.get(id(module))
        return target[0] if target is not None else None

    def _optimizer_params(self) -> set[int]:
        if self._opt_param_ids is None:
            self._opt_param_ids = {id(p) for opt in self.rec.optimizers
                                   for group in opt.param_groups for p in group["params"]}
        return self._opt_param_ids

    def on_module_mode(self, module: torch.nn.Module, training: bool) -> None:
        index = self._index_of(module)
        if index is not None:
            self.rec.on_mode(f"model{index}", training)
        elif not self.resolved and next(module.parameters(), None) is not None:
            self.rec.pending_call(module, "train" if training else "eval", opens_step=False)

    def on_module_load_state(self, module: torch.nn.Module) -> None:
        """A recorded model's `load_state_dict` (weights loaded before the models are known,
        e.g. pretrained ones, are not a rollback: not recorded)."""
        index = self._index_of(module)
        if index is not None:
            self.rec.on_load_state(f"model{index}")

    def on_module_zero_grad(self, module: torch.nn.Module) -> None:
        index = self._index_of(module)
        if index is not None:
            self.rec.on_zero_grad(f"model{index}")
        elif not self.resolved and next(module.parameters(), None) is not None:
            self.rec.pending_call(module, "zero_grad", opens_step=True)

    def on_compile(self) -> None:
        """`torch.compile` or `Module.compile` was called: hooks stay global from now on
        (dynamo guards on them; swapping them would recompile the script's graphs)."""
        self._compiled_any = True
        self._narrow_due = False
        if self.forward_watch is not None:
            self.forward_watch.widen()

    def _narrow(self) -> None:
        """Hook the models alone once they are known (see modules.py, "Narrowing")."""
        self._narrow_due = False
        watch = self.forward_watch
        if watch is None or watch.narrowed or self._compiled_any or not self.targets:
            return
        models = [m for _, m in self.targets.values()]
        for opt in self.rec.optimizers:  # a model not seen yet would need the global hooks
            ids = {id(p) for group in opt.param_groups for p in group["params"]}
            if not any(owns_any(m, ids) for m in models):
                return
        watch.narrow(m for m in self._hookable.values()
                     if getattr(m, "_compiled_call_impl", None) is None)

    def on_module_compiled(self, module: torch.nn.Module) -> None:
        if all(module is not m for m in self._compiled_in_place):
            self._compiled_in_place.append(module)

    def on_function_compiled(self, fn: Any) -> None:
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        if name in self._compiled_functions or len(self._compiled_functions) > 20:
            return
        self._compiled_functions.add(name)
        self.rec.event("not_recorded", what="compiled-function", function=name,
                       message=f"torch.compile({name}): calls made inside compiled code "
                               "(model forwards, zero_grad, optimizer and scheduler steps, "
                               "clipping, scaler calls) are not recorded; what runs outside "
                               "it, including a backward() dynamo leaves to eager mode, is")

    # ---- optimizers ---------------------------------------------------------------------
    def adopt_optimizer(self, opt: torch.optim.Optimizer) -> int:
        index = self.opt_index.get(id(opt))
        if index is not None:
            return index
        objects.install_for_subclass(self, self.patches, opt)
        self.rec.watch(optimizer=opt, instance_hooks=False)
        index = self.opt_index[id(opt)] = len(self.rec.optimizers) - 1
        self._opt_param_ids = None
        if self.resolved:  # created after the parameter table was fixed
            if self.forward_watch is not None and not self._compiled_any:
                self.forward_watch.widen()  # its model's first call must be seen
                self._narrow_due = True
            self._nonroots.clear()  # its model may be a module already judged not to be one
            # its parameters join the table at its first step (Recorder.grow_params), named
            # after their model if it has been called by then
        return index

    def on_optimizer_zero_grad(self, opt) -> None:
        self.rec.on_zero_grad(f"opt{self.adopt_optimizer(opt)}")

    def on_optimizer_step_pre(self, opt, closure: bool = False) -> None:
        index = self.adopt_optimizer(opt)
        if closure and not self.resolved and not self._called:
            # `opt.step(closure)` (LBFGS) before any forward: the model is called inside
            # the closure, so the models are resolved when the step returns
            self._resolve_after_step = True
        else:
            self.resolve()
        self.rec.on_optimizer_step_pre(f"opt{index}", opt)

    def on_optimizer_step_post(self, opt) -> None:
        if self._resolve_after_step:
            self._resolve_after_step = False
            self.resolve()
        self.rec.on_optimizer_step_post()
        if self._narrow_due:
            self._narrow()

    # ---- schedulers ---------------------------------------------------------------------
    def adopt_scheduler(self, sched) -> int:
        index = self.sched_index.get(id(sched))
        if index is None:
            objects.install_for_subclass(self, self.patches, sched)
            self.rec.watch(scheduler=sched, instance_hooks=False)
            index = self.sched_index[id(sched)] = len(self.rec.schedulers) - 1
        return index

    def on_scheduler_step(self, sched) -> None:
        self.rec._token(f"sched{self.adopt_scheduler(sched)}.step")

    def on_plateau_metric(self, sched, args: tuple, kwargs: dict) -> None:
        metric = args[0] if args else kwargs.get("metrics")
        if metric is None:
            return
        self.rec.event("metrics", phase="val", epoch=self.rec.epoch,
                       metrics={"scheduler_metric": float(metric)},
                       source=f"sched{self.adopt_scheduler(sched)}.step")

    # ---- GradScalers --------------------------------------------------------------------
    def adopt_scaler(self, scaler) -> int:
        index = self.scaler_index.get(id(scaler))
        if index is None:
            objects.install_for_subclass(self, self.patches, scaler)
            self.rec.watch(scaler=scaler, instance_hooks=False)
            index = self.scaler_index[id(scaler)] = len(self.rec.scalers) - 1
        return index

    def on_scaler_scale(self, scaler, outputs, out) -> None:
        self.rec.on_scale(f"scaler{self.adopt_scaler(scaler)}", outputs, out)

    def on_scaler_unscale(self, scaler, opt) -> None:
        self.adopt_optimizer(opt)
        self.rec.on_unscale(f"scaler{self.adopt_scaler(scaler)}", opt)

    def on_scaler_step_pre(self, scaler, opt) -> None:
        name = f"scaler{self.adopt_scaler(scaler)}"
        self.adopt_optimizer(opt)
        self.resolve()
        self.rec.on_scaler_step_pre(name, scaler, opt)

    def set_in_scaler_step(self, flag: bool) -> None:
        self.in_scaler_step = flag
        self.rec._in_scaler_step = flag

    def on_scaler_update(self, scaler) -> None:
        self.rec.on_scaler_update(f"scaler{self.adopt_scaler(scaler)}")

    # ---- data, warnings, checkpoints ----------------------------------------------------
    def on_loader_iter(self, loader, iterator) -> None:
        # keyed by the dataset: a loop that builds a new DataLoader every epoch still counts
        key = id(getattr(loader, "dataset", loader))
        try:
            setattr(iterator, loaders.LOADER_ATTR, key)
        except AttributeError:
            return
        if self._train_loader is not None and key == self._train_loader:
            self._epoch += 1
            self.rec.set_epoch(self._epoch)

    def on_batch_wait(self, iterator, seconds: float) -> None:
        try:
            self.rec.data_wait(seconds)
            self.rec._safe(self.rec.contracts.guarded, "on_batch", iterator)  # its batch_size
            self._last_loader = getattr(iterator, loaders.LOADER_ATTR, None)
        except Exception as exc:  # noqa: BLE001 - runs in the iterator's finally
            self.fault(exc)

    def on_batch(self, iterator, batch) -> None:
        """A batch fetched with autograd on: checked for NaN/Inf if it is (or may be, before
        the first optimizer step) a training batch."""
        key = getattr(iterator, loaders.LOADER_ATTR, None)
        if self._train_loader is None or key == self._train_loader:
            self.rec.on_batch(batch, key)

    def on_checkpoint(self, record: dict) -> None:
        self.rec.event("checkpoint", **record)

    def _note_no_step(self) -> None:
        rec = self.rec
        if rec.step > 0 or rec._stepped:
            return
        if not rec.optimizers:
            why = "the script created no optimizer"
        elif rec._cur.micro_batches == 0:
            why = "the script created an optimizer but never called backward() or step()"
        else:
            why = "backward() ran but no optimizer step followed"
        rec.event("no_optimizer_step", message=f"no optimizer step was recorded: {why}",
                  optimizers=len(rec.optimizers), models=len(rec.models),
                  backward_calls=rec._cur.micro_batches, model_forwards=self._top_forwards)
