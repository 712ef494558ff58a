"""DataLoader iteration: time spent waiting for batches, and epochs.

`_BaseDataLoaderIter.__next__` (the iterator every `DataLoader` returns, with or without
worker processes) is timed while autograd is enabled: training loops fetch batches with
grad on, evaluation loops usually under `no_grad`, so the data wait is the training's.
`DataLoader.__iter__` marks each iterator with the id of its loader's dataset: the
dataset whose loader delivered the last batch before the first optimizer step is the
training data, and each later `iter()` of a loader over it starts a new epoch (the
zero-code mode's inferred epochs; a loop that builds a new DataLoader every epoch counts
too).
Each batch fetched with autograd on is also checked for NaN/Inf (`Session.on_batch`; only
the training loader's batches count once it is known).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch
import torch.utils.data.dataloader as dataloader_mod

from diagnose.zerocode.classpatch import ClassPatches

if TYPE_CHECKING:
    from diagnose.zerocode.session import Session

LOADER_ATTR = "_diagnose_loader_id"


def install(session: "Session", patches: ClassPatches) -> None:
    patches.wrap(dataloader_mod.DataLoader, "__iter__", _make_iter(session))
    patches.wrap(dataloader_mod._BaseDataLoaderIter, "__next__", _make_next(session))


def _make_iter(session: "Session"):
    def make(original):
        def __iter__(self):
            iterator = original(self)
            if session.on:
                session.safe(session.on_loader_iter, self, iterator)
            return iterator
        return __iter__
    return make


def _make_next(session: "Session"):
    clock = time.perf_counter
    grad_enabled = torch.is_grad_enabled

    def make(original):
        def __next__(self):
            if not session.on or not grad_enabled():
                return original(self)
            start = clock()
            try:
                batch = original(self)
            finally:
                session.on_batch_wait(self, clock() - start)
            session.safe(session.on_batch, self, batch)
            return batch
        return __next__
    return make
