"""The recorder marks each training batch from a watched loader in the call order (`batch`),
and only those: not validation batches, not batches fetched without autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.rundir.reader import read_run


def test_training_batches_are_marked_once_each(tmp_path, one_torch_thread) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(6)]
    with Monitor(tmp_path / "run", model=model, optimizer=opt) as mon:
        for i, (x, y) in enumerate(mon.loader(data)):
            if i % 2 == 0:
                opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            if i % 2 == 1:
                opt.step()
        with mon.phase("val"), torch.no_grad():
            model.eval()
            for x, _ in mon.loader(data):
                model(x)
            model.train()
        with torch.no_grad():
            for _ in mon.loader(data[:2]):  # fetched without autograd: not a training batch
                pass
    calls = read_run(tmp_path / "run").first.calls
    assert "batch" not in set(calls["token"].astype(str))
    backward = calls[calls["method"].astype(str) == "backward"]
    assert backward["batch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert calls["batch"].max() == 6  # the validation and no_grad batches added none
    events = (tmp_path / "run" / "rank0" / "events.jsonl").read_text()
    assert events.count('"batch"') == 6
