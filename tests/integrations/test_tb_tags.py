"""Tag detection: the names SummaryWriter scripts, Lightning and the HF Trainer write."""
from __future__ import annotations

import pytest

from diagnose.integrations.tb_tags import TagMapError, Target, classify, parse_tag_map, resolve

# (tag as the tool writes it, field it must be read as); None: must not be read as anything.
KNOWN = [
    # hand-written SummaryWriter loops
    ("loss", "loss"), ("Loss/train", "loss"), ("train/loss", "loss"), ("loss/val", "val_loss"),
    ("Loss/validation", "val_loss"), ("lr", "lr"), ("grad_norm", "grad_norm"), ("grad_norm/total", "grad_norm"),
    ("amp/loss_scale", "scale"), ("memory/allocated_gb", "mem_alloc_bytes"), ("time/step_ms", "step_time_s"),
    ("throughput", "samples_per_s"), ("loss/aux", None), ("gpu_mem", None), ("test_loss", None),
    # Lightning: self.log keys with on_step/on_epoch suffixes, LearningRateMonitor, grad_norm, DeviceStatsMonitor
    ("train_loss", "loss"), ("train_loss_step", "loss"), ("train_loss_epoch", "epoch_loss"), ("val_loss", "val_loss"),
    ("val_loss_epoch", "val_loss"), ("lr-AdamW", "lr"), ("lr-AdamW/pg2", "lr"), ("lr-AdamW-momentum", None),
    ("grad_2.0_norm_total", "grad_norm"), ("grad_2.0_norm/net.0.weight", "layer_grad_norm"),
    ("grad_inf_norm_total", None), ("epoch", "epoch"), ("hp_metric", None),
    ("DeviceStatsMonitor.on_train_batch_start/allocated_bytes.all.current", "mem_alloc_bytes"),
    ("DeviceStatsMonitor.on_train_batch_start/allocated_bytes.all.peak", "mem_peak_bytes"),
    ("DeviceStatsMonitor.on_train_batch_start/cpu_percent", None),
    # Hugging Face Trainer (TensorBoardCallback rewrites keys to train/... and eval/...)
    ("train/learning_rate", "lr"), ("train/grad_norm", "grad_norm"), ("train/epoch", "epoch"),
    ("eval/loss", "val_loss"), ("eval/runtime", None), ("train/train_loss", None), ("train/total_flos", None),
    ("train/train_samples_per_second", None),
]


@pytest.mark.parametrize(("tag", "field"), KNOWN)
def test_known_tag_names(tag: str, field: str | None) -> None:
    target = classify(tag)
    assert (target.field if target else None) == field


def test_layer_name_and_units() -> None:
    assert classify("grad_2.0_norm/encoder.layers.0.attn.in_proj_weight").key == "encoder.layers.0.attn.in_proj_weight"
    assert classify("memory/allocated_gb").factor == 2.0 ** 30
    assert classify("time/step_ms").factor == pytest.approx(1e-3)


def test_lr_groups_keep_their_order() -> None:
    keys = [classify(t).key for t in ("lr-AdamW/pg10", "lr-AdamW/pg2", "lr-AdamW/pg1")]
    assert sorted(keys) == [keys[2], keys[1], keys[0]]


def test_most_values_win_and_the_others_are_named() -> None:
    mapping, notes = resolve({"loss": 3, "train/loss": 50})
    assert mapping == {"train/loss": Target("loss")}
    assert any("loss" in n and "used train/loss" in n for n in notes)


def test_tag_map_overrides_detection_and_takes_globs() -> None:
    tag_map = parse_tag_map(["objective=loss", "grads/*/l2=grad_norm:*", "loss=ignore", "lr-SGD=lr:1"])
    counts = {"objective": 10, "loss": 10, "grads/fc1.weight/l2": 10, "lr-SGD": 10, "lr-Adam": 10}
    mapping, notes = resolve(counts, tag_map)
    assert mapping["objective"] == Target("loss") and "loss" not in mapping
    assert mapping["grads/fc1.weight/l2"] == Target("layer_grad_norm", key="fc1.weight")
    assert mapping["lr-SGD"] == Target("lr", key=1)
    assert "lr-Adam" not in mapping  # an explicit lr mapping turns LR detection off
    assert notes == []


@pytest.mark.parametrize(("entry", "message"), [
    ("loss", "is not TAG=FIELD"), ("=loss", "is not TAG=FIELD"), ("x=los", "did you mean 'loss'"),
    ("x=lr:a", "unknown field"),
])
def test_bad_tag_map_entries(entry: str, message: str) -> None:
    with pytest.raises(TagMapError, match=message):
        parse_tag_map([entry])


def test_memory_units_in_tag_map() -> None:
    (_, target), = parse_tag_map(["gpu_mem=mem_alloc_mib"])
    assert target == Target("mem_alloc_bytes", factor=2.0 ** 20)
