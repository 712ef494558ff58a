"""The reference training loop: plain PyTorch, instrumented by diagnose.Monitor.

One optimizer step, in the canonical order (every line is ordinary PyTorch; the Monitor
learns loss, gradient norms and call order from hooks, so nothing here talks to it):

    zero_grad -> autocast forward -> scaler.scale(loss).backward()   (x accum_steps)
    -> scaler.unscale_(opt) -> clip_grad_norm_ -> scaler.step(opt) -> scaler.update()
    -> scheduler.step() (per-iteration schedules) -> EMA update

After each epoch: validation (eval mode, no_grad, EMA weights, loss weighted by batch
size), per-epoch scheduler step, checkpoint, early stopping. Under torchrun the same loop
runs on every rank with the model in DDP (reference_loop/distributed.py says what changes). Fault injections (see
injections.py) are `if "NAME" in inj` at the one place each bug lives.

Cost notes: the per-step loss stays on the device (a tensor per step); the host reads it
once per epoch and every `log_every` steps for the progress line, since `.item()` is a
device sync that would stall a GPU every step.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from reference_loop import checkpoint, distributed, injections
from reference_loop.builder import Built, build, resolve_amp, resolve_device, seed_everything
from reference_loop.checkpoint import CheckpointManager
from reference_loop.config import TrainConfig
from reference_loop.ema import EMA
from reference_loop.stop import INTERRUPTED_NAME, GracefulStop
from reference_loop.progress import StepProgress

__all__ = ["Built", "TrainResult", "build", "evaluate", "resolve_amp", "resolve_device",
           "seed_everything", "train"]


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    """Optimizer steps taken in total (including those before a resume)."""
    epochs: int
    """Epochs completed."""
    train_loss: float
    """Mean training loss of the last epoch."""
    val_loss: float
    val_acc: float
    best_val_loss: float
    best_epoch: int
    stopped_early: bool
    checkpoints: list[Path]
    """Epoch checkpoints on disk at the end, oldest first."""
    best_checkpoint: Path | None
    history: dict[str, list[float]]
    """Per step: "loss", "lr" (first param group, as the step used it). Per epoch:
    "train_loss", "val_loss", "val_acc", "epoch_time_s". A resumed run's history includes
    what came before the checkpoint."""
    wall_s: float
    device: str
    amp: str


class _Bare:
    """The Monitor's interface, doing nothing: the uninstrumented loop (monitor=False)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def epoch(self, epoch: int) -> None: ...
    def loader(self, iterable): return iterable
    def phase(self, name: str): return contextlib.nullcontext()
    def log_metrics(self, phase: str, **metrics) -> None: ...
    def log_checkpoint(self, path, keys=None) -> None: ...
    def watch(self, **objects) -> None: ...


def open_monitor(cfg: TrainConfig, run_dir: Path, b: Built, *, overwrite: bool = False,
                 recorder_options: Any = None):
    """diagnose.Monitor on the built objects, or the do-nothing stand-in when cfg.monitor
    is False. `recorder_options` (a RecorderOptions) overrides cfg.grad_every/param_every."""
    if not cfg.monitor:
        return _Bare()
    from diagnose import Monitor  # imported here: the bare loop must not need the recorder

    grad_every = getattr(recorder_options, "grad_every", cfg.grad_every)
    param_every = getattr(recorder_options, "param_every", cfg.param_every)
    # The module inside DDP: its forward hooks see the training forwards (DDP calls it) and
    # the evaluation ones (run on it directly), and its parameter names carry no "module.".
    return Monitor(run_dir, model=distributed.unwrap(b.model), optimizer=b.optimizer, scheduler=b.scheduler,
                   # A disabled scaler is a pass-through: recording it would only add noise.
                   scaler=b.scaler if b.scaler.is_enabled() else None,
                   config=cfg.to_dict(), grad_every=grad_every, param_every=param_every,
                   overwrite=overwrite, profile=getattr(recorder_options, "profile", None))


def evaluate(b: Built, inj: frozenset[str] = frozenset()) -> tuple[float, float]:
    """Validation loss and accuracy (per target: per image or per character).

    Eval mode (dropout off, BatchNorm running statistics), no autograd graph, and the mode
    it found restored after. Losses are summed and divided by the number of targets, so a
    smaller last batch weighs what it holds, not as much as a full one. With several
    ranks each scores its part of the validation set with the unwrapped model (DDP's
    forward would broadcast buffers, a collective the ranks' unequal batch counts would
    hang), and the sums are all-reduced: every rank returns the same exact numbers.
    """
    model = distributed.unwrap(b.model)
    was_training = model.training
    if "eval-without-eval-mode" not in inj:
        model.eval()
    grad_mode = contextlib.nullcontext() if "eval-with-grad" in inj else torch.no_grad()
    loss_sum = torch.zeros((), device=b.device, dtype=torch.float64)
    correct = torch.zeros((), device=b.device, dtype=torch.long)
    count = 0
    with grad_mode:
        for x, y in b.val_loader:
            x, y = x.to(b.device, non_blocking=True), y.to(b.device, non_blocking=True)
            with b.autocast():
                logits = _outputs(model, x, inj)
            logits, y = logits.flatten(0, -2).float(), y.flatten()
            loss_sum = loss_sum + F.cross_entropy(logits, y, reduction="sum")
            correct += (logits.argmax(-1) == y).sum()
            count += y.numel()
    if "train-mode-not-restored" not in inj:
        model.train(was_training)
    totals = distributed.all_reduce_sum(torch.stack([loss_sum, correct.double(),
                                                     torch.tensor(float(count), device=b.device,
                                                                  dtype=torch.float64)]))
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count


def _outputs(model: nn.Module, x: torch.Tensor, inj: frozenset[str]) -> torch.Tensor:
    out = model(x)
    if "softmax-before-cross-entropy" in inj:
        out = out.softmax(-1)  # the bug: cross_entropy applies log-softmax itself
    return out


@dataclass
class _State:
    """Counters that a checkpoint carries besides the objects' own state dicts."""

    epoch: int = 0
    """Next epoch to run."""
    step: int = 0
    best_val_loss: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: dict[str, list[float]] = field(default_factory=lambda: {
        k: [] for k in ("loss", "lr", "train_loss", "val_loss", "val_acc", "epoch_time_s")})


def _checkpoint_state(cfg: TrainConfig, b: Built, ema: EMA | None, st: _State) -> dict[str, Any]:
    """What a checkpoint holds. Called on every rank (the RNG states are gathered), saved
    by rank 0; the model's own state dict, without DDP's "module." prefixes."""
    net = distributed.unwrap(b.model)
    if "checkpoint-incomplete" in cfg.inject:
        return {"model": net.state_dict(), "epoch": st.epoch}
    rng = checkpoint.capture_rng({"train_loader": b.train_loader.generator})
    rng_ranks = distributed.gather_objects(rng) if b.ranks.distributed else None
    return {
        "model": net.state_dict(),
        "optimizer": b.optimizer.state_dict(),
        "scheduler": _scheduler_state(b.scheduler) if b.scheduler is not None else None,
        "scaler": b.scaler.state_dict(),
        "ema": ema.state_dict() if ema is not None else None,
        "epoch": st.epoch,
        "step": st.step,
        "best_val_loss": st.best_val_loss,
        "best_epoch": st.best_epoch,
        "bad_epochs": st.bad_epochs,
        "history": {k: list(v) for k, v in st.history.items()},
        "config": cfg.to_dict(),
        "rng": rng,
        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
    }


def _scheduler_state(sched: Any) -> dict[str, Any]:
    """sched.state_dict() without callables. LR schedulers return their whole __dict__, so a
    method wrapped on the instance by instrumentation (a recorder, a profiler) lands in it;
    a function can neither be pickled by name nor loaded with weights_only=True, and it is
    no state. (LambdaLR's lambdas are already reduced to their attributes or None.)"""
    return {k: v for k, v in sched.state_dict().items() if not callable(v)}


_RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "ema", "epoch", "step", "rng")


def _resume(path: str, b: Built, ema: EMA | None) -> _State:
    s = checkpoint.load(path)  # on CPU: RNG states must be CPU tensors; load_state_dict moves the rest
    missing = [k for k in _RESUME_KEYS if k not in s]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}; it cannot be resumed")
    if (s["scheduler"] is None) != (b.scheduler is None) or (s["ema"] is None) != (ema is None):
        raise ValueError(f"checkpoint {path} was saved with a different scheduler/EMA setting")
    distributed.unwrap(b.model).load_state_dict(s["model"])
    b.optimizer.load_state_dict(s["optimizer"])
    if b.scheduler is not None:
        b.scheduler.load_state_dict(s["scheduler"])
    if b.scaler.is_enabled():
        b.scaler.load_state_dict(s["scaler"])
    if ema is not None:
        ema.load_state_dict(s["ema"])
    st = _State(s["epoch"], s["step"], s["best_val_loss"], s["best_epoch"], s["bad_epochs"],
                {k: list(v) for k, v in s["history"].items()})
    # Last: building the model and data above drew random numbers. Each rank its own
    # states when the checkpoint has one per rank (saved with the same number of ranks).
    rng = s["rng"]
    if b.ranks.distributed and len(s.get("rng_ranks") or []) == b.ranks.world_size:
        rng = s["rng_ranks"][b.ranks.rank]
    checkpoint.restore_rng(rng, {"train_loader": b.train_loader.generator})
    return st


def train(config: TrainConfig, run_dir: str | Path, *, progress: bool = True,
          progress_file=None, overwrite: bool = False, recorder_options: Any = None) -> TrainResult:
    """Train `config` and record it into `run_dir` (checkpoints in run_dir/checkpoints).

    Args:
        progress: draw a progress bar (plain lines when the stream is not a terminal).
        progress_file: the stream for it (stdout by default).
        overwrite: let the Monitor replace a run already recorded in run_dir.
        recorder_options: diagnose's RecorderOptions; its grad_every/param_every win over
            the config's.

    A fresh run (no `resume`) starts by deleting checkpoints an earlier run left in
    run_dir/checkpoints, so "latest" and "best" always mean this run's.

    Under torchrun (RANK/WORLD_SIZE set) it joins the process group and trains with DDP;
    only rank 0 shows progress and writes checkpoints (reference_loop/distributed.py).
    """
    cfg, inj = config, frozenset(config.inject)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ranks, created = distributed.setup(resolve_device(cfg.device).type)
    injections.check_world_size(cfg.inject, ranks.world_size)
    ok = False
    try:
        result = _train(cfg, inj, run_dir, progress=progress, progress_file=progress_file,
                        overwrite=overwrite, recorder_options=recorder_options)
        ok = True
        return result
    finally:
        distributed.teardown(created, ok)


def _train(cfg: TrainConfig, inj: frozenset[str], run_dir: Path, *, progress: bool, progress_file,
           overwrite: bool, recorder_options: Any) -> TrainResult:
    t_start = time.perf_counter()
    b = build(cfg)
    model, opt, sched, scaler, device = b.model, b.optimizer, b.scheduler, b.scaler, b.device
    accum = cfg.accum_steps
    net = distributed.unwrap(model)  # the module itself (DDP's inside, with several ranks)
    main = b.ranks.is_main
    last_rank = b.ranks.distributed and b.ranks.rank == b.ranks.world_size - 1
    ema = EMA(net, cfg.ema_decay) if cfg.ema_decay > 0 else None
    ckpts = CheckpointManager(run_dir / "checkpoints", cfg.keep_last, cfg.save_best) if cfg.checkpoint_every else None
    st = _resume(cfg.resume, b, ema) if cfg.resume else _State()
    if ckpts is not None and not cfg.resume and main:
        ckpts.clear()

    step_scheduler = sched is not None and "scheduler-never-stepped" not in inj
    # scheduler-step-frequency: a per-iteration schedule stepped once per epoch.
    per_iteration = cfg.per_iteration_scheduler and "scheduler-step-frequency" not in inj
    early_sched = "scheduler-before-optimizer" in inj

    stopped_early = False
    if "memory-leak" in inj:
        # The bug: a "feature logging" hook that keeps every training activation of one layer,
        # graph attached, in a list nobody empties (instead of output.detach().cpu(), cleared).
        leaked: list[torch.Tensor] = []
        net.leak_site.register_forward_hook(
            lambda module, args, out: leaked.append(out) if torch.is_grad_enabled() else None)
    bar = StepProgress(b.total_steps, enabled=progress and main, file=progress_file, every=cfg.log_every,
                       start_step=st.step)
    stop = GracefulStop(enabled=not b.ranks.distributed)  # Ctrl-C/SIGTERM: at a step boundary

    def save_interrupted() -> None:  # what stop.check() writes before it raises
        if ckpts is not None and main and "checkpoint-incomplete" not in inj:
            state = _checkpoint_state(cfg, b, ema, st)
            mon.log_checkpoint(checkpoint.atomic_save(state, ckpts.directory / INTERRUPTED_NAME), keys=list(state))

    with open_monitor(cfg, run_dir, b, overwrite=overwrite, recorder_options=recorder_options) as mon, bar, stop:
        if b.amp == "fp16" and device.type == "cpu":
            bar.print("note: fp16 autocast on CPU has no native convolution kernels on most CPUs; "
                      "the images task runs ~10x slower than in float32 (use --steps to shorten)")
        model.train()
        for epoch in range(st.epoch, b.epochs):
            if st.step >= b.total_steps:
                break
            mon.epoch(epoch)
            if b.ranks.distributed:
                b.train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on all ranks
            t_epoch = time.perf_counter()
            steps_now = min(b.steps_per_epoch, b.total_steps - st.step)
            losses: list[torch.Tensor] = []  # one device tensor per optimizer step
            step_loss = torch.zeros((), device=device)
            # islice: stop after whole accumulation groups without fetching another batch.
            batches = b.train_loader
            if "nonfinite-inputs" in inj:  # the loader itself delivers the corrupted batch
                batches = injections.nan_batch(batches, first_step=st.step, accum=accum, at=cfg.nan_step)
            for i, (x, y) in enumerate(islice(mon.loader(batches), steps_now * accum)):
                micro = i % accum
                # zero-grad-every-micro-batch: the bug clears the micro-batches accumulated so far
                if (micro == 0 or "zero-grad-every-micro-batch" in inj) and "missing-zero-grad" not in inj:
                    opt.zero_grad(set_to_none=True)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with b.autocast():
                    logits = _outputs(model, x, inj)
                    if "loss-scale-collapse" in inj:
                        logits = logits * injections.LOGIT_OVERFLOW  # fp16 overflows: inf every step
                    loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
                    if "loss-shape-broadcast" in inj:  # the bug: (N, 1) against (N,) is (N, N)
                        flat = logits.flatten(0, -2)
                        confidence = flat.softmax(-1).amax(-1, keepdim=True)
                        correct = (flat.argmax(-1) == y.flatten()).float()
                        loss = loss + 0.1 * F.mse_loss(confidence, correct)
                if "nonfinite-loss" in inj and st.step == cfg.nan_step:
                    loss = loss * float("nan")
                # Mean over the accumulation group: the step sees the gradient of one big batch.
                loss = loss / accum
                # Summed on the device and detached: `.item()` here would sync every step, and
                # without detach() every step's autograd history would stay alive.
                step_loss = step_loss + loss.detach()
                scaler.scale(loss).backward()
                if micro < accum - 1:
                    continue

                if last_rank and st.step == cfg.nan_step:
                    if "rank-desync" in inj:  # after DDP's all-reduce: only this rank sees it
                        next(p for p in net.parameters() if p.grad is not None).grad.view(-1)[0] = math.inf
                    if "rank-killed" in inj:
                        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would

                # --- the optimizer step: unscale, clip, step, update, schedule ---
                if cfg.grad_clip > 0:
                    # Gradients must be unscaled before clipping, or max_norm is compared with
                    # norms ~scale (65536) times too large. A no-op without a GradScaler.
                    if "clip-before-unscale" not in inj:
                        scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if early_sched and step_scheduler:
                    sched.step()
                if "zero-grad-before-step" in inj:
                    opt.zero_grad(set_to_none=True)
                st.history["lr"].append(opt.param_groups[0]["lr"])  # the LR this step uses
                scaler.step(opt)  # skips the step if the unscaled gradients hold inf/NaN
                scaler.update()
                if per_iteration and step_scheduler and not early_sched:
                    sched.step()
                if ema is not None:
                    ema.update(net)
                st.step += 1
                losses.append(step_loss)
                log_now = bar.enabled and (st.step % cfg.log_every == 0 or st.step == b.total_steps)
                bar.update(st.step, samples=x.shape[0] * accum,
                           loss=step_loss.item() if log_now else None)  # .item(): a host sync
                step_loss = torch.zeros((), device=device)
                stop.check(save_interrupted)  # a signal came: checkpoint, then stop (reference_loop/stop.py)

            # --- end of epoch: one host sync for the epoch's losses ---
            step_losses = torch.stack(losses).detach().float().cpu() if losses else torch.zeros(0)
            st.history["loss"].extend(step_losses.tolist())
            train_loss = step_losses.mean().item() if losses else math.nan

            with mon.phase("val"), (ema.applied(net) if ema is not None else contextlib.nullcontext()):
                val_loss, val_acc = evaluate(b, inj)
            mon.log_metrics("train", epoch=epoch, train_loss=train_loss)
            mon.log_metrics("val", epoch=epoch, val_loss=val_loss, val_acc=val_acc)

            if step_scheduler and not per_iteration:
                if cfg.scheduler == "plateau":
                    sched.step(val_loss)
                elif not early_sched:
                    sched.step()

            improved = val_loss < st.best_val_loss - cfg.min_delta  # False for NaN
            if improved:
                st.best_val_loss, st.best_epoch, st.bad_epochs = val_loss, epoch, 0
            else:
                st.bad_epochs += 1
            last = epoch == b.epochs - 1 or st.step >= b.total_steps
            stopped_early = bool(cfg.early_stop_patience) and st.bad_epochs >= cfg.early_stop_patience and not last
            epoch_time = time.perf_counter() - t_epoch
            for key, value in (("train_loss", train_loss), ("val_loss", val_loss), ("val_acc", val_acc),
                               ("epoch_time_s", epoch_time)):
                st.history[key].append(value)
            st.epoch = epoch + 1

            due = ckpts is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or last or stopped_early)
            if ckpts is not None and (due or (improved and cfg.save_best)):
                state = _checkpoint_state(cfg, b, ema, st)  # every rank: gathers their RNG states
                for path in ckpts.save(state, epoch, is_best=improved, epoch_file=due) if main else ():
                    mon.log_checkpoint(path, keys=list(state))

            bar.print(f"epoch {epoch}: train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  "
                      f"val_acc {val_acc:.3f}  lr {opt.param_groups[0]['lr']:.2e}  ({epoch_time:.1f}s)")
            if stopped_early:
                bar.print(f"early stop: no val_loss improvement for {st.bad_epochs} epochs")
                break
            stop.check(save_interrupted)

    def final(key: str) -> float:
        return st.history[key][-1] if st.history[key] else math.nan

    return TrainResult(
        run_dir=run_dir, steps=st.step, epochs=st.epoch, train_loss=final("train_loss"),
        val_loss=final("val_loss"), val_acc=final("val_acc"), best_val_loss=st.best_val_loss,
        best_epoch=st.best_epoch,
        stopped_early=stopped_early, checkpoints=ckpts.kept() if ckpts else [],
        best_checkpoint=ckpts.best_path if ckpts and ckpts.best_path.exists() else None,
        history=st.history, wall_s=time.perf_counter() - t_start, device=str(device), amp=b.amp,
    )
