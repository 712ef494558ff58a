"""`DiagnoseCallback`: record a Lightning `Trainer` into a diagnose run directory.

Example:
    ```python
    import lightning as L
    from diagnose.integrations.lightning import DiagnoseCallback

    trainer = L.Trainer(max_epochs=10, callbacks=[DiagnoseCallback("runs/exp1")])
    trainer.fit(model, train_loader, val_loader)
    ```
    Then `diagnose report runs/exp1`.

It reuses the Monitor's recorder and hooks, attached at `on_fit_start` (when the
strategy has built the optimizers and the precision plugin) and removed at `teardown`:

- the LightningModule is `model0`; its `training_step` / `validation_step` / `test_step`
  calls are its forward passes (with the mode and autograd state they run under, and
  `B` when the returned loss is backpropagated), its `train()`/`eval()` calls are mode
  changes;
- every optimizer of `trainer.optimizers`, every scheduler of
  `trainer.lr_scheduler_configs` and the precision plugin's GradScaler (`16-mixed`) get
  the Monitor's hooks: call order, LR per group, loss scale and skipped steps;
- gradient norms (total and per parameter, `torch._foreach_norm`, read back a few steps later, no sync)
  are taken in `on_before_optimizer_step`: after the precision plugin's `unscale_` and
  before Lightning's gradient clipping, so they are the true, unclipped norms;
- the loss comes from `backward()` (what Lightning backpropagates: divided by
  `accumulate_grad_batches`, summed over the micro-batches of a step);
- validation is a `val` phase, and the validation metrics of `trainer.callback_metrics`
  (names with val/valid/eval in them) are written at the end of each validation run;
- data wait is the time spent in the training DataLoader's `__next__`.

Nothing here raises into the training: a recorder fault is one warning, and the
recorder switches itself off. Only the `fit` stage is recorded.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import torch

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.model_helpers import is_overridden
except ImportError as exc:  # pragma: no cover - exercised only without lightning
    raise ImportError("diagnose.integrations.lightning needs Lightning: pip install 'diagnose[lightning]'") from exc

from diagnose.integrations import tb_tags
from diagnose.monitor import record_exception
from diagnose.recorder.recorder import Recorder, RecorderOptions, RunDirExistsError
from diagnose.rundir import schema
from diagnose.zerocode.classpatch import ClassPatches

__all__ = ["DiagnoseCallback", "LightningRecorder"]

_STEP_METHODS = ("training_step", "validation_step", "test_step")


class LightningRecorder(Recorder):
    """The recorder with the entry points a Lightning callback needs.

    Lightning passes its training step as a closure to `optimizer.step(closure)` (unless
    a GradScaler is used): the step's pre-hook fires *before* the forward, `zero_grad`
    and `backward` that the closure runs. So the `optN.step` token is written when the
    step returns (after the closure, where the update happens), and the gradients are
    measured at `grads_ready`, not at the pre-hook (they would be the previous step's).
    """

    def __init__(self, run_dir, **kwargs: Any) -> None:
        super().__init__(run_dir, **kwargs)
        self._step_tokens: list[str] = []

    def on_optimizer_step_pre(self, name: str, opt) -> None:
        self._step_tokens.append(f"{name}.step")

    def on_optimizer_step_post(self) -> None:
        for token in self._step_tokens:
            self._token(token)
        self._step_tokens.clear()
        if self._cur.t_step is None:  # no on_before_optimizer_step (a plain optimizer.step())
            self._at_optimizer_step(None)
        super().on_optimizer_step_post()

    def grads_ready(self, optimizer: torch.optim.Optimizer) -> None:
        """The gradients for `optimizer` are final (Lightning's `on_before_optimizer_step`):
        measure them now, before clipping; divided by the loss scale if the scaler has not
        unscaled this optimizer (an optimizer that unscales inside its own `step`)."""
        scale = None
        if id(optimizer) not in self._unscaled:
            scaler = next((s for s in self.scalers if s.is_enabled()), None)
            scale = getattr(scaler, "_scale", None) if scaler is not None else None
        self._at_optimizer_step(scale)


class DiagnoseCallback(Callback):
    """Records a Lightning `Trainer.fit` into a diagnose run directory.

    Args:
        run_dir: where to write (`rankK/` folders inside, one per process).
        grad_every: per-parameter gradient norms every N optimizer steps.
        param_every: per-parameter weight norms every N optimizer steps.
        config: any JSON-able dict stored with the run; default: the module's
            `hparams`.
        overwrite: replace a run already recorded in `run_dir`.

    Raises:
        RunDirExistsError: `run_dir` already holds a run and `overwrite` is False.
        ValueError: `grad_every` or `param_every` below 1.

    Example:
        ```python
        trainer = L.Trainer(max_epochs=5, callbacks=[DiagnoseCallback("runs/exp1")])
        trainer.fit(model, train_loader, val_loader)   # then: diagnose report runs/exp1
        ```
    """

    def __init__(self, run_dir: str | Path, *, grad_every: int = 1, param_every: int = 25,
                 config: dict | None = None, overwrite: bool = False) -> None:
        self.options = RecorderOptions(grad_every=grad_every, param_every=param_every)
        self.run_dir = Path(run_dir)
        self.config = config
        self.overwrite = overwrite
        rank0 = self.run_dir / schema.rank_dir_name(0)
        if not overwrite and rank0.is_dir() and any(rank0.iterdir()):
            raise RunDirExistsError(f"{self.run_dir} already holds a recorded run; choose another directory "
                                    "or pass overwrite=True")
        self.recorder: LightningRecorder | None = None
        self._patches = ClassPatches()
        self._exception: BaseException | None = None
        self._used = False
        self._in_train_epoch = False

    # ---- life cycle -------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when fit begins: attach the recorder."""
        if self._used:
            warnings.warn("diagnose: DiagnoseCallback records one fit() only; this one is not recorded",
                          RuntimeWarning, stacklevel=2)
            return
        self._used = True
        try:
            self._attach(trainer, pl_module)
        except Exception as exc:  # noqa: BLE001 - never stop the user's training
            warnings.warn(f"diagnose: could not start recording ({type(exc).__name__}: {exc}); "
                          "training continues unrecorded", RuntimeWarning, stacklevel=2)
            self._detach()

    def _attach(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        config = self.config if self.config is not None else _hparams(pl_module)
        rec = LightningRecorder(self.run_dir, config=config, options=self.options, overwrite=True)
        self.recorder = rec
        rec.watch(model=pl_module, instance_hooks=False)
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs]
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        rec.watch(optimizers=list(trainer.optimizers), schedulers=schedulers,
                  scalers=[scaler] if scaler is not None else [])
        self._wrap_module(rec, pl_module)
        self._wrap_lightning_optimizers(rec, trainer)
        self._patches.wrap(torch.utils.data.dataloader._BaseDataLoaderIter, "__next__", self._timed_next)
        rec.event("lightning", version=pl.__version__, precision=str(trainer.precision),
                  accumulate_grad_batches=trainer.accumulate_grad_batches,
                  gradient_clip_val=trainer.gradient_clip_val,
                  gradient_clip_algorithm=trainer.gradient_clip_algorithm)

    def _wrap_module(self, rec: LightningRecorder, module: pl.LightningModule) -> None:
        def make_train(original):
            def train(mode: bool = True):
                rec._safe(rec.on_mode, "model0", bool(mode))
                return original(mode)
            return train

        def make_zero_grad(original):
            def zero_grad(*args, **kwargs):
                rec._safe(rec.on_zero_grad, "model0")
                return original(*args, **kwargs)
            return zero_grad

        def make_step(original):
            def step(*args, **kwargs):
                rec._safe(rec.on_forward_pre, 0, module, args)
                output = original(*args, **kwargs)
                rec._safe(rec.on_forward, 0, output)
                return output
            return step

        rec.patches.wrap_method(module, "train", make_train)
        rec.patches.wrap_method(module, "zero_grad", make_zero_grad)
        for name in _STEP_METHODS:
            if is_overridden(name, module):
                rec.patches.wrap_method(module, name, make_step)

    @staticmethod
    def _wrap_lightning_optimizers(rec: LightningRecorder, trainer: pl.Trainer) -> None:
        """`self.optimizers()` hands out `LightningOptimizer`s (manual optimization): copies
        of the optimizers' state in a subclass, whose `zero_grad` the optimizer's own hook
        does not see. Their `step` reaches the optimizer's, which is hooked already."""
        for wrapper in getattr(trainer.strategy, "_lightning_optimizers", None) or []:
            inner = getattr(wrapper, "_optimizer", None)
            index = next((i for i, o in enumerate(rec.optimizers) if o is inner), None)
            if index is None:
                continue

            def make_zero_grad(original, name=f"opt{index}"):
                def zero_grad(*args, **kwargs):
                    rec._safe(rec.on_zero_grad, name)
                    return original(*args, **kwargs)
                return zero_grad

            rec.patches.wrap_method(wrapper, "zero_grad", make_zero_grad)

    def _timed_next(self, original):
        clock = time.perf_counter

        def __next__(iterator):
            rec = self.recorder
            if rec is None or not self._in_train_epoch or not torch.is_grad_enabled():
                return original(iterator)
            start = clock()
            try:
                return original(iterator)
            finally:
                rec.data_wait(clock() - start)
        return __next__

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Called when fit fails: record the exception."""
        self._exception = exception
        if self.recorder is not None:
            try:
                record_exception(self.recorder, exception)
            except Exception:  # noqa: BLE001
                pass
        self._detach()  # Lightning does not call the callbacks' teardown after an exception

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Called when fit, validate, test or predict ends: close the record after fit."""
        if stage == "fit":
            self._detach()

    def _detach(self) -> None:
        self._patches.undo()
        rec, self.recorder = self.recorder, None
        if rec is None:
            return
        exc = self._exception
        if exc is None:
            rec.close(schema.STATUS_FINISHED)
        else:
            interrupted = isinstance(exc, (KeyboardInterrupt, SystemExit))
            rec.close(schema.STATUS_INTERRUPTED if interrupted else schema.STATUS_CRASHED,
                      error=f"{type(exc).__name__}: {exc}")

    # ---- training ---------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a training epoch begins."""
        self._in_train_epoch = True
        if self.recorder is not None:
            self.recorder.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a training epoch ends: epoch-averaged training losses as metrics."""
        self._in_train_epoch = False
        self._log_metrics(trainer, "epoch_loss", "train")

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        """Called before each optimizer step, after unscaling and before clipping."""
        rec = self.recorder
        if rec is not None:
            rec._safe(rec.grads_ready, optimizer)

    # ---- validation -------------------------------------------------------------------------
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a validation run begins (the sanity check too)."""
        if self.recorder is not None:
            self.recorder.phase_token("val")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Called when a validation run ends: its metrics, then back to training."""
        if self.recorder is None:
            return
        if not trainer.sanity_checking:
            self._log_metrics(trainer, "val_loss", "val")
        self.recorder.phase_token("train")

    def _log_metrics(self, trainer: pl.Trainer, field: str, phase: str) -> None:
        """The `callback_metrics` that read as `field` (tb_tags' naming rules), once per
        validation or epoch: reading them waits for the device, which is idle then."""
        rec = self.recorder
        if rec is None:
            return
        try:
            values = {}
            for name, value in trainer.callback_metrics.items():
                target = tb_tags.classify(name)
                if target is not None and target.field == field and _is_scalar(value):
                    values[name] = float(value)
            if values:
                rec.event("metrics", phase=phase, epoch=trainer.current_epoch, metrics=values)
        except Exception as exc:  # noqa: BLE001
            rec._fault(exc)


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hparams(module: pl.LightningModule) -> dict:
    try:
        return {str(k): v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                for k, v in dict(module.hparams).items()}
    except Exception:  # noqa: BLE001
        return {}
