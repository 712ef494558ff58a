"""The reference loop under the real diagnose.Monitor: what it records is what ran."""

import json
import warnings

import pytest

from reference_loop.injections import INJECTIONS
from reference_loop.train import train

pytest.importorskip("diagnose.monitor")


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _calls(rank):
    return [e["calls"] for e in _jsonl(rank / "events.jsonl") if e["kind"] == "calls"]


def test_healthy_fp16_run_is_recorded_in_canonical_order(tmp_path, tiny):
    cfg = tiny(monitor=True, amp="fp16", epochs=2, checkpoint_every=1)
    r = train(cfg, tmp_path, progress=False)
    rank = tmp_path / "rank0"
    meta = _jsonl(rank / "meta.jsonl")
    assert meta[0]["config"] == cfg.to_dict()
    assert meta[-1]["status"] == "finished"
    steps = _jsonl(rank / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(r.steps))
    assert [s["loss"] for s in steps] == pytest.approx(r.history["loss"], rel=1e-6)
    assert all(s["scale"] == 2.0**16 for s in steps)

    step = _calls(rank)[3]
    order = ["opt0.zero_grad", "scaler0.scale", "backward", "scaler0.unscale_", "clip_grad_norm_",
             "scaler0.step", "scaler0.update", "sched0.step"]
    assert [c for c in step if c in order] == order
    assert "model0.forward[TGB]" in step

    events = _jsonl(rank / "events.jsonl")
    val = next(c for c in _calls(rank) if "phase:val" in c)
    assert val[val.index("phase:val"):] == ["phase:val", "model0.eval", "model0.forward[EN]*3", "model0.train",
                                             "phase:train"]
    checkpoints = [e for e in events if e["kind"] == "checkpoint"]
    assert {e["path"] for e in checkpoints} >= {str(p) for p in r.checkpoints}
    assert all({"model", "optimizer", "scheduler", "scaler", "rng"} <= set(e["keys"]) for e in checkpoints)
    metrics = [e for e in events if e["kind"] == "metrics" and e["phase"] == "val"]
    assert [m["metrics"]["val_loss"] for m in metrics] == pytest.approx(r.history["val_loss"])


def test_bare_loop_writes_no_run_files(tmp_path, tiny):
    train(tiny(monitor=False, checkpoint_every=0), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


# The rank injections need torchrun: tests/distributed/test_reference_ddp.py runs them.
@pytest.mark.parametrize("name", [n for n, inj in INJECTIONS.items() if inj.min_ranks == 1])
def test_each_injection_runs_under_the_monitor(tmp_path, tiny, name):
    task = "images" if "images" in INJECTIONS[name].tasks else "chars"
    cfg = tiny(task=task, monitor=True, epochs=1, inject=[name], nan_step=2, slow_data_s=0.0,
               checkpoint_every=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = train(cfg, tmp_path, progress=False)
    meta = _jsonl(tmp_path / "rank0" / "meta.jsonl")
    assert meta[-1]["status"] == "finished"
    assert len(_jsonl(tmp_path / "rank0" / "steps.jsonl")) == r.steps
