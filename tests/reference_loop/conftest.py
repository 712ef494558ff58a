"""Tiny configurations of the reference loop: every test trains in well under a second."""

import pytest
import torch

from reference_loop.config import TrainConfig

# One thread: deterministic, and faster than two on a shared 2-core machine.
TINY = dict(device="cpu", train_samples=256, val_samples=80, batch_size=32, width=8, epochs=2, num_threads=1,
            monitor=False, checkpoint_every=0, log_every=1)
TINY_CHARS = dict(device="cpu", task="chars", n_embd=32, n_layer=1, n_head=2, block_size=32, batch_size=64,
                  epochs=2, num_threads=1, monitor=False, checkpoint_every=0, log_every=1)


def make_tiny(**changes) -> TrainConfig:
    base = TINY_CHARS if changes.get("task") == "chars" else TINY
    return TrainConfig(**{**base, **changes})


@pytest.fixture
def tiny():
    """tiny(**changes) -> a TrainConfig that trains in a fraction of a second."""
    return make_tiny


@pytest.fixture(autouse=True)
def _keep_global_torch_state():
    """build() sets torch's thread count and seeds: restore them for other test files."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
