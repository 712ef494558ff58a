"""The CUDA paths of the reference loop (skipped without a GPU)."""

import pytest
import torch

from reference_loop import checkpoint
from reference_loop.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("amp, expect", [
    ("auto", "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"),
    ("fp16", "fp16"), ("off", "off")])
def test_trains_on_cuda(tmp_path, tiny, amp, expect):
    r = train(tiny(device="cuda", amp=amp, epochs=1, checkpoint_every=1, lr=1e-2, image_noise=1.0),
              tmp_path, progress=False)
    assert r.device.startswith("cuda") and r.amp == expect
    assert r.history["loss"][-1] < r.history["loss"][0]
    state = checkpoint.load(r.checkpoints[-1])  # mapped to CPU, weights_only
    assert "cuda" in state["rng"] and all(t.device.type == "cpu" for t in state["model"].values())


def test_resume_on_cuda_continues(tmp_path, tiny):
    cfg = tiny(device="cuda", amp="fp16", epochs=2, checkpoint_every=1, keep_last=2)
    full = train(cfg, tmp_path / "full", progress=False)
    resumed = train(cfg.replace(resume=str(full.checkpoints[0])), tmp_path / "resumed", progress=False)
    assert resumed.steps == full.steps
    # cuDNN may pick non-deterministic kernels: close, not necessarily bit-identical
    assert resumed.history["loss"] == pytest.approx(full.history["loss"], rel=1e-3)
