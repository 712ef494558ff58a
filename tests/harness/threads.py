"""Tiny runs on one torch thread.

The test models are tiny: torch's spinning worker threads make their runs up to 10x
slower on a busy two-core machine, and multi-threaded reductions add in an order that
depends on the thread count, so the same seed would give other numbers elsewhere.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Within the block torch runs on one thread; the previous count is restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
