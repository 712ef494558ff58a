"""`diagnose export RUN_DIR --tensorboard OUT`, and the round trip back through `diagnose report OUT`.

Runs recorded by the Monitor (tests/harness) are exported; the report on the TensorBoard
log must find what the report on the run directory found among the rules that read the
exported series (loss, validation loss, gradient norms, loss scale), and nothing on the
healthy scenarios.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from diagnose.cli import main
from diagnose.integrations.export import export_tensorboard
from diagnose.integrations.tensorboard import read_logdir
from diagnose.report import analyse
from diagnose.rundir.synthetic import write_synthetic_run
from tests.harness.faults_numerics import record_fault
from tests.harness.scenarios import HEALTHY, record

pytest.importorskip("tensorboard")

SERIES_RULES = {"nonfinite-loss", "nonfinite-gradients", "nonfinite-parameters", "loss-scale-collapse",
                "gradient-explosion", "gradient-spike", "dead-units", "loss-divergence", "loss-plateau", "overfitting"}
"""Rules whose inputs the export carries (not: call order, events, parameter shapes)."""


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _series_findings(path: Path) -> set[tuple[str, tuple | None]]:
    report = analyse(path)
    return {(f.rule, f.steps) for f in report.findings if f.rule in SERIES_RULES and f.severity.label != "info"}


@pytest.mark.parametrize("fault", [
    "label_drift", "rnn_explosion_clipped", "sgd_lr_too_high", "corrupt_batches", "overflow_from_midrun",
    "tiny_lr_plain", "small_data_big_mlp", "nan_loss_reference", "nan_weight_adam", "dead_relu_layer",
])
def test_round_trip_finds_the_same_loss_and_gradient_problems(tmp_path: Path, fault: str) -> None:
    run = record_fault(fault, tmp_path / "run")
    result = invoke("export", run, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    original = _series_findings(run)
    assert original, "the fault must show in the run directory first"
    assert _series_findings(tmp_path / "tb") == original


@pytest.mark.parametrize("scenario", sorted(HEALTHY))
def test_round_trip_of_healthy_runs_stays_silent(tmp_path: Path, scenario: str) -> None:
    run = record(scenario, tmp_path / "run")
    export_tensorboard(run, tmp_path / "tb")
    findings = [f for f in analyse(tmp_path / "tb").findings if f.severity.label != "info"]
    assert findings == []


def test_every_series_is_written(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", steps=40, params=4, amp=True, steps_per_epoch=10)
    folders, count = export_tensorboard(run, tmp_path / "tb")
    assert folders == [tmp_path / "tb"]
    back = read_logdir(tmp_path / "tb")
    tags = back.first.meta["tensorboard"]["tags"]
    assert {tags[t] for t in ("train/loss", "lr/group0", "lr/group1", "grad_norm/total", "amp/loss_scale",
                              "memory/rss_bytes", "time/step_s", "time/data_wait_s", "perf/samples_per_s",
                              "epoch", "val/loss")} == {
        "loss", "lr:0", "lr:1", "grad_norm", "scale", "rss_bytes", "step_time_s", "data_wait_s",
        "samples_per_s", "epoch", "val_loss"}
    assert tags["grad_norm/layers.1.bias"] == "grad_norm:layers.1.bias"
    assert tags["weight_norm/layers.1.bias"] == "weight_norm:layers.1.bias"
    assert list(back.first.param_norms.index) == [0, 10, 20, 30]  # param_every=10
    steps = back.first.steps
    original = analyse(run).run.first.steps
    assert list(steps.index) == list(original.index)
    assert steps["loss"].to_numpy() == pytest.approx(original["loss"].to_numpy(), rel=1e-6)
    assert steps["step_time_s"].to_numpy() == pytest.approx(original["step_time_s"].to_numpy(), rel=1e-5)
    # 12 step series (loss, 2 LRs, total norm, scale, skipped, RSS, step time, data wait, samples/s,
    # tokens/s, epoch), 4 parameters' gradient norms and (every 10 steps) weight norms, 2 metrics
    # (val_loss, val_acc) at 4 evaluations
    assert count == 40 * 12 + 40 * 4 + 4 * 4 + 4 * 2
    assert back.first.metrics["value"].notna().all()


def test_non_empty_out_is_refused_unless_overwrite(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", steps=20, params=2)
    out = tmp_path / "tb"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("export", run, "--tensorboard", out)
    assert result.exit_code == 2 and result.stderr.startswith("Error: ") and "--overwrite" in result.stderr
    assert "Traceback" not in result.output and list(out.iterdir()) == [out / "notes.txt"]
    assert invoke("export", run, "--tensorboard", out, "--overwrite").exit_code == 0
    assert invoke("export", run, "--tensorboard", out, "--overwrite").exit_code == 0
    events = [p for p in out.iterdir() if "tfevents" in p.name]
    assert len(events) == 1 and (out / "notes.txt").read_text() == "mine"  # old event files replaced, not piled up


@pytest.mark.parametrize(("args", "message"), [
    (["missing-run", "--tensorboard", "tb"], "no such directory"),
    (["run"], "Missing option '--tensorboard'"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    write_synthetic_run(tmp_path / "run", steps=5, params=1)
    result = CliRunner().invoke(main, ["export", *[str(tmp_path / a) if a in ("run", "missing-run", "tb") else a
                                                   for a in args]])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_several_ranks_become_one_tensorboard_run_each(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", steps=30, params=2, ranks=2)
    folders, _ = export_tensorboard(run, tmp_path / "tb")
    assert folders == [tmp_path / "tb" / "rank0", tmp_path / "tb" / "rank1"]
    result = invoke("report", tmp_path / "tb")
    assert result.exit_code == 2 and "holds 2 TensorBoard runs (rank0, rank1)" in result.stderr
    assert invoke("report", tmp_path / "tb" / "rank1").exit_code == 0
