import random

import numpy as np
import pytest
import torch

from reference_loop import checkpoint
from reference_loop.checkpoint import CheckpointManager, atomic_save


def test_atomic_save_failure_keeps_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    atomic_save({"v": torch.tensor([1.0])}, path)

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"v": torch.tensor([2.0])}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["v"], torch.tensor([1.0]))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_keep_last_k_and_best(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for epoch in range(5):
        written = m.save({"epoch": epoch}, epoch, is_best=epoch in (1, 2))
        assert written[0] == m.epoch_path(epoch)
    assert [p.name for p in m.kept()] == ["epoch003.pt", "epoch004.pt"]
    assert checkpoint.load(m.best_path)["epoch"] == 2
    assert m.latest() == m.epoch_path(4)
    # a best-only save between regular ones writes best.pt and nothing else
    assert m.save({"epoch": 5}, 5, is_best=True, epoch_file=False) == [m.best_path]
    assert [p.name for p in m.kept()] == ["epoch003.pt", "epoch004.pt"]


def test_stale_later_epochs_are_removed_and_clear(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=5)
    for epoch in range(4):
        m.save({"epoch": epoch}, epoch)
    m.save({"epoch": 1}, 1)  # a run resumed from epoch 0 overwrites the future
    assert [p.name for p in m.kept()] == ["epoch000.pt", "epoch001.pt"]
    m.save({}, 2, is_best=True)
    m.clear()
    assert list(tmp_path.iterdir()) == []


def test_rng_roundtrip_through_weights_only_load(tmp_path):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(1), random.seed(1), np.random.seed(1)
    state = checkpoint.capture_rng({"loader": gen})
    atomic_save({"rng": state}, tmp_path / "r.pt")
    expected = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))

    torch.manual_seed(2), random.seed(2), np.random.seed(2), gen.manual_seed(2)
    checkpoint.restore_rng(checkpoint.load(tmp_path / "r.pt")["rng"], {"loader": gen})
    got = (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=gen))
    assert torch.equal(got[0], expected[0]) and got[1] == expected[1] and got[2] == expected[2]
    assert torch.equal(got[3], expected[3])
