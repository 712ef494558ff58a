"""Fault injections: the bugs the reference loop can be told to have.

Each injection is named after the diagnose rule it should trigger (RULES.md), changes the
loop as little as possible, and is switched on with `TrainConfig(inject=[NAME, ...])` or
`diagnose run --inject NAME`. The loop tests `NAME in inject` at the one place the bug
lives; grep `reference_loop/train.py` for the name to see it.

Some injections need a setting to show themselves at all (clipping before unscaling needs
a GradScaler, i.e. fp16); they force it through `forces`, which `TrainConfig.__post_init__`
applies, so the recorded config is the one that ran. Forces are idempotent: a config may be
validated again (`dataclasses.replace`) without compounding them, which is why the LR
injections set an absolute LR rather than multiplying the configured one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

BOTH_TASKS = ("images", "chars")


def _no_forces(cfg: Any) -> dict[str, Any]:
    return {}


def _fp16(cfg: Any) -> dict[str, Any]:
    return {"amp": "fp16"}


def _fp16_and_clip(cfg: Any) -> dict[str, Any]:
    return {"amp": "fp16", "grad_clip": cfg.grad_clip or 1.0}


def _per_iteration_schedule(cfg: Any) -> dict[str, Any]:
    if cfg.scheduler in ("onecycle", "warmup-cosine"):
        return {}
    return {"scheduler": "onecycle"}


def _onecycle(cfg: Any) -> dict[str, Any]:
    return {"scheduler": "onecycle"}


def _some_schedule(cfg: Any) -> dict[str, Any]:
    return {"scheduler": "onecycle"} if cfg.scheduler == "none" else {}


def _warmup_cosine(cfg: Any) -> dict[str, Any]:
    return {"scheduler": "warmup-cosine"}


def _accumulate(cfg: Any) -> dict[str, Any]:
    return {} if cfg.accum_steps >= 2 else {"accum_steps": ACCUM_CLEARED_STEPS}


def _explode(cfg: Any) -> dict[str, Any]:
    return {"optimizer": "sgd", "lr": EXPLODE_LR}


def _tiny_lr(cfg: Any) -> dict[str, Any]:
    return {"lr": TINY_LR}


def _block_not_batch(cfg: Any) -> dict[str, Any]:
    # seq_len == batch size makes (B, T) and (T, B) look alike: the rule cannot tell them apart
    return {"block_size": cfg.block_size // 2} if cfg.block_size == cfg.batch_size else {}


def nan_batch(loader: Any, *, first_step: int, accum: int, at: int):
    """The loader's batches, the first micro-batch of optimizer step `at` with NaN in its
    first input (the nonfinite-inputs injection: bad data from the pipeline, as the
    training loop receives it). `first_step`: the optimizer step the iteration starts at."""
    for i, (x, y) in enumerate(loader):
        if first_step + i // accum == at and i % accum == 0:
            x = x.clone()
            x[0] = float("nan")
        yield x, y


@dataclass(frozen=True)
class Injection:
    name: str
    """The injection's name: the rule it should trigger, unless `rule` says otherwise."""
    what: str
    """What it changes in the loop (one or two sentences, shown by --help)."""
    rule: str = ""
    """The diagnose rule it should trigger ("" means the same as name)."""
    forces: Callable[[Any], dict[str, Any]] = field(default=_no_forces, repr=False)
    """Config overrides it needs, as a function of the config."""
    tasks: tuple[str, ...] = BOTH_TASKS
    """Tasks it applies to."""
    also: tuple[str, ...] = ()
    """Other rules it is expected to trigger too (a side effect of the same bug)."""
    min_ranks: int = 1
    """Processes it needs (the rank injections need torchrun: --nproc-per-node 2)."""

    @property
    def triggers(self) -> str:
        return self.rule or self.name


# Shared numbers, so tests and docs agree with the loop.
EXPLODE_LR = 50.0  # ~1000x a sane SGD LR (0.05) for these models
TINY_LR = 1e-9
THRASH_LR_FACTOR = 10000.0
DEAD_BIAS = -1e3
LOGIT_OVERFLOW = 1e9
ACCUM_CLEARED_STEPS = 4  # zero-grad-every-micro-batch: accumulation it forces when there is none

_ALL = [
    Injection(
        "eval-without-eval-mode",
        "Validation runs without model.eval(): dropout stays on and BatchNorm normalises with "
        "(and updates its running stats from) the validation batches."),
    Injection(
        "eval-with-grad",
        "Validation runs without torch.no_grad(): autograd records a graph for every "
        "validation forward that no backward ever uses."),
    Injection(
        "train-mode-not-restored",
        "model.train() is not called after validation: from the second epoch on, training "
        "runs in eval mode (no dropout, frozen BatchNorm statistics)."),
    Injection(
        "scheduler-before-optimizer",
        "scheduler.step() is called before the optimizer step in every iteration (so the first "
        "LR of the schedule is skipped; torch warns). Forces a per-iteration scheduler.",
        forces=_per_iteration_schedule, also=("framework-warning",)),
    Injection(
        "scheduler-never-stepped",
        "scheduler.step() is never called: the LR stays at the schedule's first value "
        "(OneCycleLR: lr / 25 all run long). Forces a scheduler if there is none.",
        forces=_some_schedule),
    Injection(
        "scheduler-step-frequency",
        "A per-iteration OneCycleLR is stepped once per epoch, so after E epochs it has moved "
        "E of its total_steps and the LR never leaves the warm-up. Forces scheduler=onecycle.",
        forces=_onecycle),
    Injection(
        "missing-zero-grad",
        "optimizer.zero_grad() is never called: every backward adds to the gradients of all "
        "previous steps."),
    Injection(
        "zero-grad-before-step",
        "optimizer.zero_grad() is called after backward (and unscale_/clipping) and just "
        "before the optimizer step, so the step finds no gradients and nothing trains.",
        also=("loss-plateau",)),
    Injection(
        "zero-grad-every-micro-batch",
        "Gradient accumulation that does not accumulate: optimizer.zero_grad() runs before every "
        "micro-batch's backward instead of only the first of each group, so each optimizer step "
        "uses the last micro-batch's gradient and the other accum_steps - 1 are thrown away. "
        f"Forces accum_steps={ACCUM_CLEARED_STEPS} when it is 1.",
        rule="zero-grad-before-step", forces=_accumulate),
    Injection(
        "clip-before-unscale",
        "clip_grad_norm_ runs on the gradients still multiplied by the GradScaler's scale "
        "(no scaler.unscale_ before it), so every step is clipped ~scale-fold too hard. "
        "Forces amp=fp16 and clipping.",
        forces=_fp16_and_clip),
    Injection(
        "memory-leak",
        "A forward hook meant for feature logging keeps every training output of one layer "
        "(`model.leak_site`, with its autograd graph) in a list that is never emptied: memory "
        "grows ~1 MiB per step at the default size, ~320 MiB over the default run. (The FAQ's "
        "`total += loss` alone keeps only graph nodes, ~KB per step: lost in RSS noise.)"),
    Injection(
        "gradient-explosion",
        f"SGD at LR {EXPLODE_LR:g}, ~1000x a sane SGD LR for these models: the unnormalised "
        "head grows every step and the (pre-clip) gradient norm grows by many orders of "
        "magnitude within ~30 steps, then turns Inf/NaN. (AdamW's normalised steps at 1000x LR "
        "kill the ReLUs instead of exploding.) Forces optimizer=sgd and lr.",
        forces=_explode, also=("loss-divergence", "nonfinite-loss", "nonfinite-gradients")),
    Injection(
        "nonfinite-loss",
        "The loss is multiplied by NaN at optimizer step `nan_step` (config), once. Without a "
        "GradScaler the NaN gradients reach the weights, and every later loss is NaN too.",
        also=("nonfinite-gradients", "nonfinite-parameters")),
    Injection(
        "loss-scale-collapse",
        f"The logits are multiplied by {LOGIT_OVERFLOW:g} inside fp16 autocast, so the forward "
        "overflows every step: GradScaler skips every step and halves its scale each time. "
        "Forces amp=fp16.",
        forces=_fp16, also=("nonfinite-loss",)),
    Injection(
        "dataloader-bottleneck",
        "The DataLoader's collate function sleeps `slow_data_s` (config) per batch, longer "
        "than the default model's step, so the loop mostly waits for data."),
    Injection(
        "params-not-updated",
        "The parameters of one hidden layer (`model.probe`) are left out of the optimizer: "
        "they get gradients every step and never change."),
    Injection(
        "dead-units",
        f"The bias of one hidden layer (`model.probe`) is set to {DEAD_BIAS:g} before its "
        "ReLU/GELU: its outputs, and so its gradients, are exactly zero on every step. In the "
        "CNN that layer feeds the classifier, so nothing learns (the loss plateaus too); in "
        "the transformer it is block 0's MLP and the residual path still learns.",
        also=("loss-plateau",)),
    Injection(
        "loss-plateau",
        f"The learning rate is set to {TINY_LR:g}: the weights barely move (update/weight "
        "ratio ~1e-9) and the loss stays where it started. Forces lr.",
        forces=_tiny_lr, also=("update-ratio",)),
    Injection(
        "nonfinite-inputs",
        "The training loader delivers one batch (at optimizer step `nan_step`) with NaN in its "
        "first image; the loss, gradients and then the weights become NaN.",
        tasks=("images",), also=("nonfinite-loss", "nonfinite-gradients")),
    Injection(
        "update-ratio",
        f"The parameters of one hidden layer (`model.probe`) get their own param group with "
        f"{THRASH_LR_FACTOR:g}x the LR (30 for AdamW at the default 3e-3): every step rewrites "
        "a large part of that layer (update/weight ratio ~0.1-1 instead of ~1e-3), which "
        "thrashes instead of learning; its growing weights also make the gradient norm grow.",
        also=("gradient-explosion",)),
    Injection(
        "softmax-before-cross-entropy",
        "The logits go through softmax before F.cross_entropy (which applies log-softmax "
        "itself), so the loss sees probabilities and learns slowly."),
    Injection(
        "loss-shape-broadcast",
        "An auxiliary confidence loss, F.mse_loss(max softmax probability (N, 1), correct (N,)), "
        "weighted 0.1, is added to the cross-entropy: the shapes broadcast to (N, N), so each "
        "confidence is regressed to the batch's accuracy, not its own sample's (torch warns).",
        tasks=("images",), also=("framework-warning",)),
    Injection(
        "rnn-batch-first-mismatch",
        "The chars task's model becomes an LSTM language model (embedding, nn.LSTM built with "
        "batch_first=False, head) fed the loader's batch-major (B, T) embeddings as they are, so "
        "it recurs across the batch. Forces block_size != batch_size (halves it when equal).",
        forces=_block_not_batch, tasks=("chars",)),
    Injection(
        "zero-lr-steps",
        "The warmup-cosine schedule is laid out over half the run and holds LR exactly 0 "
        "after it: the second half takes optimizer steps that change nothing. Forces "
        "scheduler=warmup-cosine.",
        forces=_warmup_cosine),
    Injection(
        "checkpoint-incomplete",
        "Checkpoints hold the model weights only (no optimizer, scheduler, scaler, EMA or "
        "RNG state): such a checkpoint cannot be resumed."),
    Injection(
        "rank-straggler",
        "The last rank's batches arrive `slow_data_s` (config) late (its collate function "
        "sleeps): under DDP every rank waits for it at each gradient all-reduce. Needs "
        "--nproc-per-node 2 or more.",
        min_ranks=2, also=("dataloader-bottleneck",)),
    Injection(
        "rank-desync",
        "At optimizer step `nan_step` (config) the last rank puts an Inf into one gradient after "
        "DDP's all-reduce: only its GradScaler skips the step and halves its scale, and from "
        "then on its weights differ from the other ranks'. Forces amp=fp16. Needs "
        "--nproc-per-node 2 or more.",
        forces=_fp16, min_ranks=2),
    Injection(
        "rank-killed",
        "The last rank kills itself with SIGKILL at optimizer step `nan_step` (config), as the "
        "kernel's OOM killer would: no exception, no flush; torchrun then stops the other ranks. "
        "Needs --nproc-per-node 2 or more.",
        rule="rank-desync", min_ranks=2),
]

INJECTIONS: dict[str, Injection] = {inj.name: inj for inj in _ALL}
"""Every injection by name, in a stable order."""

ALIASES: dict[str, str] = {"tiny-lr": "loss-plateau"}
"""Other accepted names; `resolve` maps them to the canonical name."""


def resolve(names: list[str] | tuple[str, ...] | str) -> list[str]:
    """Canonical names, deduplicated in order; ValueError (one line) on an unknown name."""
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[str] = []
    for raw in names:
        name = ALIASES.get(raw.strip(), raw.strip())
        if name not in INJECTIONS:
            valid = ", ".join(list(INJECTIONS) + list(ALIASES))
            raise ValueError(f"unknown injection {raw!r}; valid: {valid}")
        if name not in out:
            out.append(name)
    return out


def check_world_size(names: list[str] | tuple[str, ...], world_size: int) -> None:
    """ValueError (one line) when an injection needs more processes than the run has."""
    for name in names:
        needed = INJECTIONS[name].min_ranks
        if world_size < needed:
            raise ValueError(f"injection {name} needs {needed} or more processes "
                             f"(diagnose run --nproc-per-node {needed}); this run has {world_size}")


def describe() -> str:
    """One line per injection: `name  what it does  [-> rule]`, for --help texts."""
    width = max(map(len, INJECTIONS))
    lines = []
    for inj in INJECTIONS.values():
        lines.append(f"{inj.name:<{width}}  {inj.what}")
    lines.append("aliases: " + ", ".join(f"{a} = {n}" for a, n in ALIASES.items()))
    return "\n".join(lines)
