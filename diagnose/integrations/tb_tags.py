"""Which TensorBoard scalar tag is which series: automatic detection and `--tag-map`.

Pure functions over tag names (no file access). A tag is split into lower-case words
(`Loss/train` -> `loss`, `train`; `lr-AdamW/pg2` -> `lr`, `adamw`, `pg2`); the words say
what it measures and in which phase (`val`, `valid`, `validation`, `eval`, `dev` are
evaluation; `test` is left out). The names come from the tools that write the logs:

| tool | tags it writes |
| --- | --- |
| SummaryWriter (by hand) | whatever the script chose: `loss`, `train/loss`, `Loss/train`, `lr`, `grad_norm`, ... |
| Lightning `self.log` | the key as given (`train_loss`), `_step`/`_epoch` suffixes with `on_step` and `on_epoch` |
| Lightning `LearningRateMonitor` | `lr-AdamW`, `lr-AdamW/pg1`, `lr-AdamW/pg2` (1-based groups), `lr-AdamW-momentum` |
| Lightning `grad_norm(module, 2)` | `grad_2.0_norm/<param name>`, `grad_2.0_norm_total` |
| `diagnose export` | `weight_norm/<param name>` as well (weights, for `nonfinite-parameters`) |
| Lightning `DeviceStatsMonitor` (CUDA) | `...allocated_bytes.all.current`, `...reserved_bytes.all.current`, `...allocated_bytes.all.peak` |
| Hugging Face Trainer | `train/loss`, `train/learning_rate`, `train/grad_norm`, `train/epoch`, `eval/loss`; `train/train_loss` (one final average) |

When several tags look like the same series (`train/loss` and HF's one-point
`train/train_loss`), the one with the most values wins and the others are named in a note.
Anything else is mapped with `--tag-map TAG=FIELD` (FIELDS below); TAG may hold `*`
wildcards, and `grad_norm:*` (`weight_norm:*`) takes the layer name from what the first
`*` matched.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass

__all__ = ["FIELDS", "TagMapError", "Target", "classify", "parse_tag_map", "resolve", "words"]


@dataclass(frozen=True)
class Target:
    """Where a tag's values go.

    Attributes:
        field: a FIELDS name (`loss`, `lr`, `layer_grad_norm`, `layer_weight_norm`, ...)
            or `ignore`.
        key: for `lr`, the parameter group (an `int` given with `lr:N`, else a sort key);
            for `layer_grad_norm` / `layer_weight_norm`, the layer (parameter) name.
        factor: the values are multiplied by this (MiB -> bytes, ms -> s).
    """

    field: str
    key: str | int | None = None
    factor: float = 1.0


STEP_FIELDS = {
    "loss": "training loss per step (steps.loss)",
    "grad_norm": "total gradient L2 norm per step (steps.grad_norm)",
    "scale": "GradScaler loss scale (steps.scale; the next logged value is read as the scale after the step)",
    "epoch": "epoch number at a step (tags steps and evaluations with their epoch)",
    "step_time_s": "seconds per optimizer step (default: from the event wall times)",
    "data_wait_s": "seconds per step spent waiting for data",
    "samples_per_s": "training samples per second",
    "tokens_per_s": "training tokens per second",
    "mem_alloc_bytes": "CUDA memory allocated at the step",
    "mem_reserved_bytes": "CUDA memory reserved by the caching allocator",
    "mem_peak_bytes": "peak CUDA memory allocated",
    "rss_bytes": "resident set size of the process",
}
"""Fields that become columns of the step table."""

FIELDS = {
    **STEP_FIELDS,
    "lr": "learning rate of parameter group 0 (`lr:N` for group N)",
    "grad_norm:NAME": "gradient L2 norm of one layer/parameter NAME (`grad_norm:*` with a `*` in TAG)",
    "weight_norm:NAME": "weight L2 norm of one layer/parameter NAME (`weight_norm:*` with a `*` in TAG)",
    "val_loss": "validation loss (an evaluation metric)",
    "epoch_loss": "training loss averaged over an epoch (a train-phase metric)",
    "ignore": "leave this tag out (also stops its automatic detection)",
}
"""Every FIELD `--tag-map TAG=FIELD` accepts. Memory fields also take `_kib`, `_mib`,
`_gib` instead of `_bytes`, time fields `_ms` instead of `_s`, for logs in those units."""

_UNITS = {"bytes": 1.0, "b": 1.0, "kib": 2.0 ** 10, "kb": 2.0 ** 10, "mib": 2.0 ** 20, "mb": 2.0 ** 20,
          "gib": 2.0 ** 30, "gb": 2.0 ** 30}
_VAL = {"val", "valid", "validation", "eval", "evaluation", "dev"}
_TRAIN = {"train", "training"}
_FILLER = {"mean", "avg", "average", "total", "batch", "running", "smoothed", "step", "overall", "epoch"}
_LAYER_PREFIX = re.compile(
    r"^(?P<prefix>(?:[^/]*/)?(?:grad|grads|gradient|gradients)[_ .-]?(?:(?:2|2\.0|l2)[_ .-]?)?norms?)/(?P<name>.+)$",
    re.IGNORECASE)
_WEIGHT_PREFIX = re.compile(
    r"^(?P<prefix>(?:[^/]*/)?(?:weight|weights|param|params|parameter)[_ .-]?(?:(?:2|2\.0|l2)[_ .-]?)?norms?)/(?P<name>.+)$",
    re.IGNORECASE)
_NOT_LAYERS = {"total", "all", "global", "train", "training", "step", "norm", "total_norm"}


_LAYER_FIELDS = ("layer_grad_norm", "layer_weight_norm")


class TagMapError(ValueError):
    """A `--tag-map` entry that cannot be understood (a usage error, one line)."""


def words(tag: str) -> list[str]:
    """Lower-case words of a tag: split at `/ . _ - space` and camelCase humps."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", tag)
    return [w for w in re.split(r"[/._\-\s]+", spaced.lower()) if w]


def _phase(ws: list[str]) -> str:
    if any(w in _VAL for w in ws):
        return "val"
    if "test" in ws:
        return "test"
    return "train"


def classify(tag: str) -> Target | None:
    """The automatic mapping of one tag, or None when it is not recognised."""
    epoch_level = tag.endswith("_epoch")
    base = tag[: -len("_epoch")] if epoch_level else tag[: -len("_step")] if tag.endswith("_step") else tag
    layer = _LAYER_PREFIX.match(base)
    if layer and layer["name"].lower() not in _NOT_LAYERS and not epoch_level:
        return Target("layer_grad_norm", key=layer["name"])
    weight = _WEIGHT_PREFIX.match(base)
    if weight and weight["name"].lower() not in _NOT_LAYERS and not epoch_level:
        return Target("layer_weight_norm", key=weight["name"])
    ws = words(base)
    if not ws or ws[:2] == ["train", "train"] or "flos" in ws:
        return None  # the HF Trainer's one-point summary of the run (train/train_loss, ...)
    phase = _phase(ws)
    rest = [w for w in ws if w not in _VAL and w not in _TRAIN and w != "test"]
    if phase == "test":
        return None
    found = _quantity(rest, ws)
    if found is None:
        return None
    if found.field == "loss":
        if phase == "val":
            return Target("val_loss")
        return Target("epoch_loss") if epoch_level else found
    if phase == "val" or epoch_level:
        return None  # evaluation-time throughput, memory, ...: not the training's
    return found


def _quantity(rest: list[str], ws: list[str]) -> Target | None:
    s = set(rest)
    if "scale" in s and s <= {"scale", "loss", "grad", "amp", "scaler", "gradscaler"}:
        return Target("scale")
    if ("lr" in s or {"learning", "rate"} <= s) and not s & {"momentum", "weight", "decay", "beta", "betas", "scale"}:
        return Target("lr", key=_lr_key(rest))
    if s & {"grad", "grads", "gradient", "gradients"} and s & {"norm", "norms"}:
        if s - {"grad", "grads", "gradient", "gradients", "norm", "norms", "2", "0", "l2", "total", "global", "all",
                "pre", "clip", "unclipped"}:
            return None
        return Target("grad_norm")
    if "loss" in s and s - {"loss"} <= _FILLER:
        return Target("loss")
    if s == {"epoch"}:
        return Target("epoch")
    unit = next((_UNITS[w] for w in rest if w in _UNITS), None)
    if s & {"mem", "memory", "bytes"} or "rss" in s or s & {"allocated", "reserved"}:
        if unit is None or s & {"percent", "util", "utilization"}:
            return None  # GB or bytes? ambiguous without a unit: --tag-map says
        if "rss" in s:
            return Target("rss_bytes", factor=unit)
        if s & {"peak", "max"}:
            return Target("mem_peak_bytes", factor=unit)
        if "reserved" in s:
            return Target("mem_reserved_bytes", factor=unit)
        if s & {"alloc", "allocated"}:
            return Target("mem_alloc_bytes", factor=unit)
        return None
    if "time" in s and s & {"step", "iter", "iteration", "batch"} and s <= {"time", "step", "iter", "iteration",
                                                                            "batch", "s", "sec", "ms", "per"}:
        return Target("step_time_s", factor=1e-3 if "ms" in s else 1.0)
    if "data" in s and s & {"wait", "time", "load", "loading"} and s <= {"data", "wait", "time", "load", "loading",
                                                                         "s", "sec", "ms"}:
        return Target("data_wait_s", factor=1e-3 if "ms" in s else 1.0)
    if s == {"throughput"} or ("samples" in s and s & {"s", "sec", "second", "per"}):
        return Target("samples_per_s")
    if "tokens" in s and s & {"s", "sec", "second", "per"}:
        return Target("tokens_per_s")
    return None


def _lr_key(rest: list[str]) -> str:
    """A sort key that puts groups in order: `lr-AdamW/pg2` after `lr-AdamW/pg1`, and the
    first optimizer's groups before the second's (`lr-AdamW-1`)."""
    parts = []
    for w in rest:
        m = re.fullmatch(r"(?:pg|group|param_group)?(\d+)", w)
        parts.append(f"{int(m[1]):06d}" if m else w)
    return "/".join(p for p in parts if p not in ("lr", "learning", "rate"))


# ---- --tag-map --------------------------------------------------------------------------------
def parse_field(text: str) -> Target:
    """A FIELD of `--tag-map TAG=FIELD` as a Target; TagMapError when unknown."""
    field = text.strip()
    if field == "ignore":
        return Target("ignore")
    if field in ("loss", "val_loss", "epoch_loss", "grad_norm", "scale", "epoch"):
        return Target(field)
    if field == "lr":
        return Target("lr", key=0)
    if field.startswith("lr:") and field[3:].isdigit():
        return Target("lr", key=int(field[3:]))
    if field.startswith("grad_norm:") and field[len("grad_norm:"):]:
        return Target("layer_grad_norm", key=field[len("grad_norm:"):])
    if field.startswith("weight_norm:") and field[len("weight_norm:"):]:
        return Target("layer_weight_norm", key=field[len("weight_norm:"):])
    if field in STEP_FIELDS:
        return Target(field)
    m = re.fullmatch(r"(mem_alloc|mem_reserved|mem_peak|rss)_(kib|mib|gib)", field)
    if m:
        return Target(f"{m[1]}_bytes", factor=_UNITS[m[2]])
    m = re.fullmatch(r"(step_time|data_wait)_ms", field)
    if m:
        return Target(f"{m[1]}_s", factor=1e-3)
    close = difflib.get_close_matches(field, [f.partition(":")[0] for f in FIELDS] + list(STEP_FIELDS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise TagMapError(f"--tag-map: unknown field {field!r}{hint} (fields: {', '.join(FIELDS)})")


def parse_tag_map(entries: list[str] | tuple[str, ...]) -> list[tuple[str, Target]]:
    """`["train/mse=loss", "grads/*=grad_norm:*"]` -> [(pattern, Target), ...]."""
    parsed = []
    for entry in entries:
        tag, sep, field = entry.rpartition("=")
        if not sep or not tag.strip():
            raise TagMapError(f"--tag-map: {entry!r} is not TAG=FIELD (e.g. train/mse=loss)")
        parsed.append((tag.strip(), parse_field(field)))
    return parsed


def _explicit(tag: str, tag_map: list[tuple[str, Target]]) -> Target | None:
    for pattern, target in tag_map:
        if pattern == tag:
            return target
        if "*" in pattern or "?" in pattern:
            if fnmatch.fnmatchcase(tag, pattern):
                if target.field in _LAYER_FIELDS and target.key == "*":
                    regex = "^" + re.escape(pattern).replace(r"\*", "(.*)", 1).replace(r"\*", ".*") + "$"
                    m = re.match(regex.replace(r"\?", "."), tag)
                    return Target(target.field, key=(m[1] if m and m.groups() else tag))
                return target
    return None


def _slot(target: Target) -> tuple:
    """What two tags must not both fill: a field, an LR group, a layer."""
    return (target.field, target.key) if target.field in ("lr", *_LAYER_FIELDS) else (target.field,)


def resolve(counts: dict[str, int], tag_map: list[tuple[str, Target]] = ()) -> tuple[dict[str, Target], list[str]]:
    """Map every tag (`counts`: tag -> number of values, in first-seen order).

    Explicit `tag_map` entries come first; a field they fill is not detected
    automatically again. Automatic candidates for the same slot: the most values win.
    Returns the mapping (mapped tags only) and notes on what was left out and why.
    """
    notes: list[str] = []
    mapping: dict[str, Target] = {}
    explicit_fields: set[str] = set()
    for tag in counts:
        target = _explicit(tag, list(tag_map))
        if target is not None:
            if target.field != "ignore":
                mapping[tag] = target
                explicit_fields.add(target.field)
    unused = [pattern for pattern, _ in tag_map
              if not any(pattern == t or fnmatch.fnmatchcase(t, pattern) for t in counts)]
    if unused:
        notes.append(f"--tag-map: no tag matches {', '.join(unused)}")
    ignored = {t for t in counts if (target := _explicit(t, list(tag_map))) is not None and target.field == "ignore"}
    candidates: dict[tuple, list[str]] = {}
    for tag in counts:
        if tag in mapping or tag in ignored:
            continue
        target = classify(tag)
        if target is None or target.field in explicit_fields:
            continue
        candidates.setdefault(_slot(target), []).append(tag)
    taken = {_slot(t) for t in mapping.values()}
    for slot, tags in candidates.items():
        if slot in taken:
            continue
        best = max(tags, key=lambda t: counts[t])  # first-seen wins a tie
        mapping[best] = classify(best)
        others = [t for t in tags if t != best]
        if others:
            notes.append(f"tags {', '.join(others)} also look like {slot[0]}; used {best} "
                         f"({counts[best]} values; choose with --tag-map TAG={slot[0]})")
    return mapping, notes
