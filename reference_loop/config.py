"""The reference loop's configuration: one dataclass, one docstring per field.

Every check lives in `TrainConfig.__post_init__` and raises `ValueError` with a one-line
message, so a bad TOML file or CLI flag fails before any data is built. Fault injections
that need a particular setting (fp16 for `clip-before-unscale`, a per-iteration schedule
for `scheduler-before-optimizer`, ...) force it here, so `to_dict()` - what the recorder
writes into the run directory - shows the settings the run really used.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reference_loop import injections

TASKS = ("images", "chars")
OPTIMIZERS = ("adamw", "sgd")
# Stepped once per optimizer step; the rest once per epoch (plateau: on the val loss).
PER_ITERATION_SCHEDULERS = ("onecycle", "warmup-cosine")
PER_EPOCH_SCHEDULERS = ("step", "cosine", "plateau")
SCHEDULERS = PER_ITERATION_SCHEDULERS + PER_EPOCH_SCHEDULERS + ("none",)
AMP_MODES = ("auto", "off", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    # --- task and data -------------------------------------------------------------
    task: str = "images"
    """Embedded task: "images" (synthetic 10-class 3x16x16 classification, a small CNN)
    or "chars" (character-level language model on a text shipped with the package)."""

    seed: int = 0
    """Seeds the data, the weights, dropout and the shuffling: two runs with the same
    config produce the same numbers on CPU."""

    device: str = "auto"
    """"cpu", "cuda" (or "cuda:N"), or "auto": CUDA when available, else CPU."""

    num_threads: int = 0
    """torch intra-op CPU threads; 0 leaves torch's default. On a shared machine 1 can be
    faster than 2: torch's threads spin-wait for each other when a core is busy."""

    train_samples: int = 4096
    """images: number of generated training images."""

    val_samples: int = 1024
    """images: number of generated validation images (a different seed, same classes)."""

    image_noise: float = 2.0
    """images: std of the Gaussian noise on top of the class pattern (amplitude ~1). At 2.0
    the default CNN climbs from 10% to ~85-90% validation accuracy in 5 epochs."""

    text_path: str | None = None
    """chars: a UTF-8 text file to train on; None uses the text shipped in the package."""

    block_size: int = 64
    """chars: context length in characters."""

    val_fraction: float = 0.1
    """chars: fraction of the text (its end) held out for validation."""

    batch_size: int = 64
    """Samples per micro-batch (per forward/backward)."""

    num_workers: int = 0
    """DataLoader worker processes. 0 loads in the training process: the synthetic data is
    already in memory, and workers would cost a second or two of start-up."""

    # --- model -----------------------------------------------------------------------
    width: int = 32
    """images: channels of the CNN's first block (the last block has twice as many)."""

    n_layer: int = 2
    """chars: transformer blocks."""

    n_head: int = 4
    """chars: attention heads per block; must divide n_embd."""

    n_embd: int = 64
    """chars: embedding width."""

    dropout: float = 0.1
    """Dropout probability (CNN head, transformer residual paths)."""

    # --- optimisation ----------------------------------------------------------------
    epochs: int = 5
    """Passes over the training set."""

    max_steps: int | None = None
    """Stop after this many optimizer steps (None: run all epochs). The schedule is laid
    out over min(epochs * steps_per_epoch, max_steps) steps."""

    accum_steps: int = 1
    """Micro-batches per optimizer step (gradient accumulation); each micro-batch's loss is
    divided by it, so the step sees the mean gradient of accum_steps * batch_size samples."""

    optimizer: str = "adamw"
    """"adamw" or "sgd" (with Nesterov momentum). Biases and norm weights get no weight
    decay (a second parameter group)."""

    lr: float = 3e-3
    """Peak learning rate (OneCycleLR's max_lr, the warm-up target of warmup-cosine)."""

    weight_decay: float = 0.05
    """Decoupled (AdamW) or L2 (SGD) weight decay on weight matrices and conv kernels."""

    momentum: float = 0.9
    """sgd: momentum."""

    betas: tuple[float, float] = (0.9, 0.99)
    """adamw: (beta1, beta2)."""

    grad_clip: float = 1.0
    """Max total gradient L2 norm (clip_grad_norm_, after unscaling); 0 disables clipping."""

    scheduler: str = "onecycle"
    """"onecycle" or "warmup-cosine" (stepped every optimizer step), "step", "cosine"
    (stepped every epoch), "plateau" (ReduceLROnPlateau on the val loss), or "none"."""

    warmup_frac: float = 0.1
    """Fraction of the steps spent warming up (OneCycleLR's pct_start, warmup-cosine's
    linear warm-up)."""

    min_lr_frac: float = 0.0
    """warmup-cosine and cosine: final LR as a fraction of lr."""

    step_size: int = 2
    """step: epochs between LR decays."""

    gamma: float = 0.5
    """step: LR multiplier at each decay."""

    plateau_factor: float = 0.5
    """plateau: LR multiplier when the val loss stops improving."""

    plateau_patience: int = 1
    """plateau: epochs without improvement before the LR is cut."""

    # --- mixed precision -------------------------------------------------------------
    amp: str = "auto"
    """"off", "bf16" (autocast, no scaler), "fp16" (autocast + GradScaler), or "auto":
    off on CPU; on CUDA bf16 where supported, else fp16 + GradScaler. On CPU both bf16 and
    fp16 autocast work (fp16 is slow there: no native kernels) and GradScaler("cpu") really
    scales and skips steps."""

    init_scale: float = 2.0**16
    """fp16: GradScaler's initial loss scale."""

    # --- EMA, early stopping, checkpoints --------------------------------------------
    ema_decay: float = 0.0
    """Exponential moving average of the weights (and float buffers), used for
    validation and saved in checkpoints; 0 disables it. The effective decay is
    min(ema_decay, (1 + n) / (10 + n)) after n updates, so early evaluations are not
    dominated by the random initialisation."""

    early_stop_patience: int = 0
    """Stop after this many epochs without a val-loss improvement; 0 disables."""

    min_delta: float = 0.0
    """Smallest val-loss decrease that counts as an improvement."""

    checkpoint_every: int = 1
    """Save a checkpoint every this many epochs (and at the last one); 0 disables
    checkpoints (and best.pt)."""

    keep_last: int = 2
    """Epoch checkpoints kept on disk (older ones are deleted; best.pt is separate)."""

    save_best: bool = True
    """Also keep best.pt: the checkpoint of the epoch with the lowest val loss."""

    resume: str | None = None
    """Checkpoint to resume from: model, optimizer, scheduler, scaler, EMA, counters and
    RNG states are restored, so the run continues exactly where it stopped."""

    # --- instrumentation, progress ---------------------------------------------------
    monitor: bool = True
    """Record the run through diagnose.Monitor into the run directory; False trains the
    bare loop (the baseline of the overhead benchmark)."""

    grad_every: int = 1
    """Monitor: record per-parameter gradient norms every this many steps."""

    param_every: int = 25
    """Monitor: record per-parameter weight norms every this many steps."""

    log_every: int = 20
    """Progress: plain-text lines (when stdout is not a terminal) every this many steps;
    each costs a host sync for the loss value."""

    # --- fault injections ------------------------------------------------------------
    inject: list[str] = field(default_factory=list)
    """Fault injections by name (see `reference_loop.injections`); each breaks the loop
    the way one diagnose rule describes. Some force settings they need (amp, scheduler)."""

    nan_step: int = 20
    """nonfinite-loss / nonfinite-inputs: the optimizer step at which NaN is injected."""

    slow_data_s: float = 0.05
    """dataloader-bottleneck: seconds the collate function sleeps per batch."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.inject = injections.resolve(self.inject)
        for name in self.inject:
            for key, value in injections.INJECTIONS[name].forces(self).items():
                setattr(self, key, value)
        _check(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a flat mapping; unknown keys are an error (a typo must not be ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
            )
        return cls(**data)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a flat TOML table (`lr = 1e-3`, `inject = ["memory-leak"]`)."""
        with open(path, "rb") as f:
            return cls.from_dict(tomllib.load(f))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def per_iteration_scheduler(self) -> bool:
        """True when the scheduler is meant to be stepped every optimizer step."""
        return self.scheduler in PER_ITERATION_SCHEDULERS


def _check(c: TrainConfig) -> None:
    def fail(msg: str) -> None:
        raise ValueError(msg)

    def one_of(name: str, value: str, valid: tuple[str, ...]) -> None:
        if value not in valid:
            fail(f"{name} must be one of {', '.join(valid)}; got {value!r}")

    one_of("task", c.task, TASKS)
    one_of("optimizer", c.optimizer, OPTIMIZERS)
    one_of("scheduler", c.scheduler, SCHEDULERS)
    one_of("amp", c.amp, AMP_MODES)
    if c.device not in DEVICES and not c.device.startswith("cuda:"):
        fail(f"device must be one of {', '.join(DEVICES)} or cuda:N; got {c.device!r}")

    positive = ("train_samples", "val_samples", "block_size", "batch_size", "width",
                "n_layer", "n_head", "n_embd", "epochs", "accum_steps", "step_size",
                "log_every", "grad_every", "param_every")
    for name in positive:
        if getattr(c, name) < 1:
            fail(f"{name} must be >= 1; got {getattr(c, name)}")
    non_negative = ("num_threads", "num_workers", "weight_decay", "grad_clip", "min_delta",
                    "early_stop_patience", "checkpoint_every", "image_noise", "nan_step",
                    "slow_data_s", "plateau_patience")
    for name in non_negative:
        if getattr(c, name) < 0:
            fail(f"{name} must be >= 0; got {getattr(c, name)}")
    if c.max_steps is not None and c.max_steps < 1:
        fail(f"max_steps must be >= 1 or None; got {c.max_steps}")
    if c.keep_last < 1:
        fail(f"keep_last must be >= 1; got {c.keep_last}")
    if not c.lr > 0:
        fail(f"lr must be > 0; got {c.lr}")
    if c.init_scale <= 0:
        fail(f"init_scale must be > 0; got {c.init_scale}")
    for name in ("dropout", "warmup_frac", "min_lr_frac", "momentum"):
        if not 0 <= getattr(c, name) < 1:
            fail(f"{name} must be in [0, 1); got {getattr(c, name)}")
    if not 0 < c.val_fraction < 1:
        fail(f"val_fraction must be in (0, 1); got {c.val_fraction}")
    for name in ("gamma", "plateau_factor"):
        if not 0 < getattr(c, name) <= 1:
            fail(f"{name} must be in (0, 1]; got {getattr(c, name)}")
    if c.scheduler == "onecycle" and not 0 < c.warmup_frac < 1:
        fail(f"onecycle needs 0 < warmup_frac < 1; got {c.warmup_frac}")
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        fail(f"betas must be two numbers in [0, 1); got {list(c.betas)}")
    if not 0 <= c.ema_decay < 1:
        fail(f"ema_decay must be in [0, 1) (0 disables EMA); got {c.ema_decay}")
    if c.n_embd % c.n_head:
        fail(f"n_embd ({c.n_embd}) must be divisible by n_head ({c.n_head})")
    if c.text_path is not None and not Path(c.text_path).is_file():
        fail(f"text_path {c.text_path!r} is not a file")
    if c.resume is not None and not Path(c.resume).is_file():
        fail(f"resume checkpoint {c.resume!r} is not a file")
    for name in c.inject:
        tasks = injections.INJECTIONS[name].tasks
        if c.task not in tasks:
            fail(f"injection {name} needs task {' or '.join(tasks)}; got task {c.task!r}")
