"""Measure the per-layer update ratio ‖Δw‖/‖w‖ of healthy runs (data for `update-ratio`).

Records, on CPU with one thread, every healthy scenario of tests/harness/scenarios.py
(seeds given) and the reference loop with AdamW and with SGD, all with update norms on
every step (`param_every=1`), then prints per run the distribution of the per-layer
ratios the rule judges (diagnose.rules.data.update_ratio.layer_ratios: skipped steps
dropped; "eligible" = LR at least 1% of its group's peak, the layer got gradients).

    python bench/update_ratios.py --seeds 0 1 2 --work /tmp/ur
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diagnose.monitor as monitor_mod  # noqa: E402
from diagnose.rules.data.update_ratio import layer_ratios  # noqa: E402
from diagnose.rundir.reader import read_run  # noqa: E402
from tests.harness.scenarios import HEALTHY, record  # noqa: E402


def _every_step() -> None:
    """Make every Monitor record update norms on every step."""
    original = monitor_mod.RecorderOptions

    def options(**kwargs):
        kwargs["param_every"] = 1
        return original(**kwargs)

    monitor_mod.RecorderOptions = options  # type: ignore[assignment]


def _reference(run_dir: Path, optimizer: str) -> None:
    from reference_loop.config import TrainConfig
    from reference_loop.train import train

    lr = 3e-3 if optimizer == "adamw" else 0.05
    train(TrainConfig(device="cpu", num_threads=1, optimizer=optimizer, lr=lr, param_every=1),
          run_dir, progress=False)


def summarise(label: str, run_dir: Path) -> dict:
    ratios, eligible, full = layer_ratios(read_run(run_dir).first)
    values = ratios.to_numpy()[eligible.to_numpy()]
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        print(f"{label:42s} no ratios")
        return {}
    per_layer_median = ratios.where(eligible).median()
    q = np.quantile(values, [0.0, 0.01, 0.5, 0.99, 1.0])
    from diagnose.rules.data.update_ratio import LARGE
    above = (ratios > LARGE).where(full & ratios.notna()).mean().max()
    below = ((ratios < 1e-7) & eligible).sum().max() / max(int(eligible.sum().max()), 1)
    print(f"{label:42s} n={values.size:5d} worst layer: {above:.0%} of full-LR samples > {LARGE:g}, "
          f"{below:.0%} of judged samples < 1e-7; min={q[0]:.2e} p1={q[1]:.2e} median={q[2]:.2e} "
          f"p99={q[3]:.2e} max={q[4]:.2e} layer-medians {per_layer_median.min():.1e}..{per_layer_median.max():.1e}")
    return {"min": q[0], "p1": q[1], "p99": q[3], "max": q[4]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--no-reference", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _every_step()
    work = args.work or Path(tempfile.mkdtemp(prefix="update-ratios-"))
    for name in sorted(HEALTHY):
        for seed in args.seeds:
            run_dir = work / f"{name}-s{seed}"
            record(name, run_dir, seed)
            summarise(f"{name}@{seed}", run_dir)
    if not args.no_reference:
        for optimizer in ("adamw", "sgd"):
            run_dir = work / f"reference-{optimizer}"
            _reference(run_dir, optimizer)
            summarise(f"reference loop ({optimizer})", run_dir)


if __name__ == "__main__":
    main()
