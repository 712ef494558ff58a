"""`diagnose report LOGDIR` on TensorBoard event files written by real tiny training loops."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("tensorboard")

from diagnose.cli import main  # noqa: E402
from diagnose.integrations.tensorboard import find_runs, read_logdir  # noqa: E402
from tests.integrations.tb_loops import LR_JUMP_STEP, RAMP_STEP, write_log  # noqa: E402


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def report_json(logdir: Path, *extra: str) -> dict:
    result = invoke("report", logdir, "--format", "json", *extra)
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def rules_at_warning(doc: dict) -> set[str]:
    return {f["rule"] for f in doc["findings"] if f["severity"] in ("warning", "error")}


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory):
    """Each (style, fault) log written once for the module."""
    made: dict[tuple[str, str | None], Path] = {}

    def get(style: str, fault: str | None = None) -> Path:
        if (style, fault) not in made:
            made[style, fault] = write_log(tmp_path_factory.mktemp(f"{style}_{fault}"), style, fault)
        return made[style, fault]

    return get


@pytest.mark.parametrize("style", ["plain", "hf", "add_scalars"])
def test_healthy_logs_stay_silent(logs, style: str) -> None:
    doc = report_json(logs(style))
    assert rules_at_warning(doc) == set(), doc["findings"]


def test_plain_tags_are_all_read(logs) -> None:
    run = read_logdir(logs("plain"))
    tables = run.first
    assert {"loss", "lr_0", "grad_norm", "micro_batches", "step_time_s"} <= set(tables.steps.columns)
    assert len(tables.steps) == 160 and tables.steps.index[0] == 0
    assert list(tables.params["name"]) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert tables.grad_norms.shape == (160, 6)
    val = tables.metrics[tables.metrics["phase"] == "val"]
    assert len(val) == 5 and set(val["name"]) == {"val_loss"}
    assert any(n.startswith("TensorBoard log: read Loss/train -> loss") for n in run.notes)


def test_hf_names_and_sparse_steps(logs) -> None:
    run = read_logdir(logs("hf"))
    steps = run.first.steps
    assert list(steps.index[:3]) == [0, 4, 8]  # logged every 4 steps: one row per logged step
    assert steps.index[-1] == 156 and steps["epoch"].iloc[-1] == pytest.approx(156 / 32)
    assert "train/train_loss" in " ".join(n for n in run.notes if n.startswith("TensorBoard tags not used"))


def test_add_scalars_children_fold_into_one_run(logs) -> None:
    logdir = logs("add_scalars")
    assert find_runs(logdir) == [logdir]
    tags = read_logdir(logdir).first.meta["tensorboard"]["tags"]
    assert tags["loss/train"] == "loss" and tags["loss/val"] == "val_loss"


@pytest.mark.parametrize("style", ["plain", "hf", "add_scalars"])
def test_lr_jump_is_found(logs, style: str) -> None:
    doc = report_json(logs(style, "lr_jump"))
    divergence = [f for f in doc["findings"] if f["rule"] == "loss-divergence"]
    assert divergence, doc["findings"]
    assert LR_JUMP_STEP <= divergence[0]["steps"][0] <= LR_JUMP_STEP + 40


def test_exploding_gradients_are_found(logs) -> None:
    doc = report_json(logs("plain", "explode"))
    explosion = [f for f in doc["findings"] if f["rule"] == "gradient-explosion"]
    assert explosion and explosion[0]["severity"] == "error", doc["findings"]
    assert explosion[0]["steps"][0] >= RAMP_STEP
    assert explosion[0]["evidence"]["top_parameters_at_peak"]  # per-layer tags name the layers


def test_hf_explosion_logged_sparsely_ends_as_nan_loss(logs) -> None:
    doc = report_json(logs("hf", "explode"))
    assert rules_at_warning(doc) & {"nonfinite-loss", "loss-divergence"}, doc["findings"]


@pytest.mark.parametrize("style", ["plain", "hf", "add_scalars"])
def test_overfitting_is_found(logs, style: str) -> None:
    doc = report_json(logs(style, "overfit"))
    assert "overfitting" in rules_at_warning(doc), doc["findings"]


def test_rules_without_data_are_named(logs) -> None:
    notes = report_json(logs("hf"))["notes"]
    assert "rule missing-zero-grad skipped: no calls recorded" in notes
    assert any(n.startswith("rule dataloader-bottleneck skipped: no steps.data_wait_s") for n in notes)
    result = invoke("report", logs("hf"))
    assert "rules had nothing to check" in result.stdout and "TensorBoard log: read train/loss -> loss" in result.stdout


def test_tag_map_names_what_detection_misses(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(100):
        writer.add_scalar("objective", 2.0 - step / 100 if step < 50 else 1.5 + step / 50, step)
    writer.close()
    result = invoke("report", tmp_path)
    assert result.exit_code == 2 and "no TensorBoard tag was recognised (objective)" in result.stderr
    assert "Traceback" not in result.output
    doc = report_json(tmp_path, "--tag-map", "objective=loss")
    assert "loss-divergence" in rules_at_warning(doc)


@pytest.mark.parametrize(("args", "message"), [
    (["--tag-map", "objective"], "is not TAG=FIELD"),
    (["--tag-map", "x=lsos"], "did you mean 'loss'"),
])
def test_bad_tag_map_is_a_usage_error(logs, args: list[str], message: str) -> None:
    result = invoke("report", logs("plain"), *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_several_runs_are_refused_with_their_names(logs, tmp_path: Path) -> None:
    for name in ("version_0", "version_1"):
        write_log(tmp_path / "lightning_logs" / name, "hf")
    result = invoke("report", tmp_path / "lightning_logs")
    assert result.exit_code == 2
    assert "holds 2 TensorBoard runs (version_0, version_1)" in result.stderr
    assert invoke("report", tmp_path / "lightning_logs" / "version_1").exit_code == 0


def test_tag_map_on_a_run_directory_is_refused(tmp_path: Path) -> None:
    from diagnose.rundir.synthetic import write_synthetic_run

    run = write_synthetic_run(tmp_path / "run", steps=30, params=2)
    result = invoke("report", run, "--tag-map", "loss=loss")
    assert result.exit_code == 2 and "--tag-map applies to TensorBoard logs only" in result.stderr


def test_new_style_scalars_are_read(tmp_path: Path) -> None:
    """`add_scalar(..., new_style=True)` (and TF2's tf.summary.scalar) store tensors, not simple values."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(30):
        writer.add_scalar("train/loss", 2.0 - step / 30, step, new_style=True)
    writer.close()
    steps = read_logdir(tmp_path).first.steps
    assert len(steps) == 30 and steps["loss"].iloc[-1] == pytest.approx(2.0 - 29 / 30)


def test_unreadable_event_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "events.out.tfevents.1700000000.host").write_bytes(bytes(range(256)) * 20)
    result = invoke("report", tmp_path)
    assert result.exit_code == 2 and "event files hold no scalar values" in result.stderr
    assert "Traceback" not in result.output


def test_html_header_says_the_run_came_from_event_files(logs, tmp_path: Path) -> None:
    out = tmp_path / "tb.html"
    result = invoke("report", logs("plain"), "--html", out)
    assert result.exit_code in (0, 1), result.output
    page = out.read_text(encoding="utf-8")
    assert "TensorBoard event files in" in page and "not recorded by diagnose" in page
    assert "Python none" not in page  # no empty versions row for a log without them
