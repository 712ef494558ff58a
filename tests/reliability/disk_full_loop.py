"""Train a tiny `Monitor` loop into RUN_DIR and say what happened, as one JSON line.

    python tests/reliability/disk_full_loop.py RUN_DIR STEPS

Used by test_disk_full.py inside a user and mount namespace whose RUN_DIR is on a tmpfs
of a few KiB (`unshare -rm`, then `mount -t tmpfs -o size=...`), so the disk really fills
up during the run. Reports: the steps the loop trained, the diagnose warnings shown, the
losses (to compare with a run without the recorder), and what `diagnose report` made of
the directory (exit code, notes, status), read before the namespace and its tmpfs vanish.
"""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def train(run_dir: Path | None, steps: int) -> tuple[list[float], list[str]]:
    """A small MLP trained `steps` steps (with a Monitor when `run_dir` is given)."""
    from diagnose import Monitor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(steps)]
    losses = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor = Monitor(run_dir, model=model, optimizer=opt) if run_dir is not None else None
        for x, y in (monitor.loader(data) if monitor else data):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        if monitor:
            monitor.close()
    return losses, [str(w.message) for w in caught if str(w.message).startswith("diagnose:")]


def main(run_dir: Path, steps: int) -> None:
    from click.testing import CliRunner

    from diagnose.cli import main as cli

    torch.set_num_threads(1)
    losses, shown = train(run_dir, steps)
    bare, _ = train(None, steps)
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "json"])
    try:
        document = json.loads(result.stdout)
    except ValueError:
        document = {}
    print(json.dumps({"trained": len(losses), "same_losses": losses == bare, "warnings": shown,
                      "exit": result.exit_code, "notes": document.get("notes", []),
                      "status": (document.get("run") or {}).get("status"),
                      "output": result.output[-500:] if result.exit_code == 2 else ""}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
