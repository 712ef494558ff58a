"""The Lightning callback: a tiny LightningModule trained on CPU, recorded, reported.

Healthy runs (fp32, bf16-mixed, fp16 with a GradScaler) must stay silent; a too-high LR
and a layer left out of the optimizer must be found. Skipped without lightning.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

L = pytest.importorskip("lightning")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from diagnose.cli import main  # noqa: E402
from diagnose.integrations.lightning import DiagnoseCallback  # noqa: E402
from diagnose.recorder.recorder import RunDirExistsError  # noqa: E402
from diagnose.report import analyse  # noqa: E402
from diagnose.rundir.reader import read_run  # noqa: E402

STEPS_PER_EPOCH = 16
GROWTH_FROM = 20


class Blobs(L.LightningModule):
    """A 3-layer MLP classifying Gaussian blobs; the LR and its schedule, the optimizer's
    parameters and a failing step are what the tests vary."""

    def __init__(self, lr: float = 1e-2, optimizer: str = "adamw", head_only: bool = False,
                 lr_growth: float | None = None, log_norms: bool = False, fail_at: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.hparams.fail_at is not None and self.global_step == self.hparams.fail_at:
            raise RuntimeError("boom")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def on_before_optimizer_step(self, optimizer):
        if self.hparams.log_norms:
            from lightning.pytorch.utilities import grad_norm

            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self):
        params = self.net[4].parameters() if self.hparams.head_only else self.parameters()
        if self.hparams.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=self.hparams.lr)
        else:
            opt = torch.optim.AdamW(params, lr=self.hparams.lr)
        if self.hparams.lr_growth:  # a warm-up that never ends: x lr_growth a step from step GROWTH_FROM
            growth = self.hparams.lr_growth
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: growth ** max(0, s - GROWTH_FROM))
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _loaders(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 8, generator=gen) * 2
    y = torch.randint(0, 4, (STEPS_PER_EPOCH * 32,), generator=gen)
    x = centers[y] + torch.randn(len(y), 8, generator=gen)
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=gen)
    val = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=64)
    return train, val


class PlateauSchedule(Blobs):
    """SGD with momentum and ReduceLROnPlateau on the validation loss (stepped per epoch)."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"}}


class EpochCosine(Blobs):
    """A per-epoch cosine schedule, in Lightning's list form."""

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return [opt], [torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)]


class TwoGroups(Blobs):
    """Two parameter groups, the first layer at a tenth of the LR, no scheduler."""

    def configure_optimizers(self):
        rest = [*self.net[2].parameters(), *self.net[4].parameters()]
        return torch.optim.AdamW([{"params": self.net[0].parameters(), "lr": 1e-3}, {"params": rest}], lr=1e-2)


class ManualTwoOptimizers(Blobs):
    """Manual optimization with two optimizers (a probe trained on the detached features)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        self.probe = nn.Linear(4, 4)

    def training_step(self, batch, batch_idx):
        main_opt, probe_opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        main_opt.zero_grad()
        self.manual_backward(loss)
        main_opt.step()
        probe_loss = nn.functional.cross_entropy(self.probe(self.net(x).detach()), y)
        probe_opt.zero_grad()
        self.manual_backward(probe_loss)
        probe_opt.step()
        self.log("train_loss", loss)

    def configure_optimizers(self):
        return (torch.optim.AdamW(self.net.parameters(), lr=1e-2),
                torch.optim.AdamW(self.probe.parameters(), lr=1e-2))


def fit(run_dir: Path | None, *, epochs: int = 4, precision="32-true", plugins=None, logger=False,
        callbacks=(), seed: int = 0, module: type[Blobs] = Blobs, trainer_args: dict | None = None,
        **model_args) -> Blobs:
    """Train `module(**model_args)` for `epochs`, recorded into `run_dir` (None: not recorded)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    try:
        model = module(**model_args)
        extra = [DiagnoseCallback(run_dir)] if run_dir is not None else []
        args = {"gradient_clip_val": 1.0, **(trainer_args or {})}
        trainer = L.Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, precision=None if plugins else precision,
            plugins=plugins, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, log_every_n_steps=1, callbacks=[*extra, *callbacks], **args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(model, *_loaders(seed))
        return model
    finally:
        torch.set_num_threads(threads)


def problems(run_dir: Path) -> dict[str, str]:
    return {f.rule: f.severity.label for f in analyse(run_dir).findings if f.severity.label != "info"}


def _step_calls(run_dir: Path, step: int) -> list[str]:
    calls = read_run(run_dir).first.calls
    return list(calls[calls["step"] == step]["token"])


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("lightning") / "run"
    fit(run_dir)
    return run_dir


def test_healthy_run_stays_silent(healthy: Path) -> None:
    assert problems(healthy) == {}


def test_call_order_and_modes(healthy: Path) -> None:
    assert _step_calls(healthy, 1) == ["model0.forward[TGB]", "opt0.zero_grad", "backward", "clip_grad_norm_",
                                       "opt0.step", "sched0.step"]
    calls = read_run(healthy).first.calls
    val = calls[calls["phase"] == "val"]  # the sanity check and 4 validations: eval mode, no autograd
    assert set(val["token"]) == {"model0.forward[EN]"} and len(val) == 5 * 2  # 2 batches each
    assert not val["training"].any() and not val["grad"].any()


def test_steps_norms_and_metrics(healthy: Path) -> None:
    tables = read_run(healthy).first
    steps = tables.steps
    assert len(steps) == 4 * STEPS_PER_EPOCH and list(steps["epoch"].unique()) == [0, 1, 2, 3]
    # measured in on_before_optimizer_step: before clipping, so equal to what clipping saw
    assert steps["grad_norm"].to_numpy() == pytest.approx(steps["clip_norm"].to_numpy(), rel=1e-4)
    assert steps["lr_0"].iloc[0] == pytest.approx(1e-2) and steps["lr_0"].iloc[-1] == pytest.approx(5e-3)
    assert (steps["samples"] == 32).all() and (steps["data_wait_s"] > 0).all()
    assert tables.params["name"].iloc[0] == "net.0.weight"
    val = tables.metrics[tables.metrics["phase"] == "val"]
    assert list(val["name"]) == ["val_loss"] * 4  # one per epoch, not the sanity check
    assert tables.meta["status"] == "finished" and tables.meta["config"]["lr"] == pytest.approx(1e-2)


@pytest.mark.parametrize(("module", "trainer_args"), [
    (Blobs, {"accumulate_grad_batches": 2}), (Blobs, {"gradient_clip_val": None}),
    (Blobs, {"val_check_interval": 0.5}), (PlateauSchedule, {}), (EpochCosine, {}), (TwoGroups, {}),
], ids=["accumulate", "no-clipping", "validation-twice-an-epoch", "plateau", "epoch-cosine", "two-groups"])
def test_other_healthy_setups_stay_silent(tmp_path: Path, module: type[Blobs], trainer_args: dict) -> None:
    fit(tmp_path / "run", module=module, trainer_args=trainer_args)
    assert problems(tmp_path / "run") == {}


def test_manual_optimization_with_two_optimizers(tmp_path: Path) -> None:
    fit(tmp_path / "run", module=ManualTwoOptimizers, trainer_args={"gradient_clip_val": None}, epochs=2)
    assert problems(tmp_path / "run") == {}
    assert _step_calls(tmp_path / "run", 3) == ["opt1.zero_grad", "backward", "opt1.step"]  # through self.optimizers()
    assert len(read_run(tmp_path / "run").first.steps) == 2 * 2 * STEPS_PER_EPOCH  # two optimizer steps a batch


def test_accumulation_is_one_step_of_two_micro_batches(tmp_path: Path) -> None:
    fit(tmp_path / "run", trainer_args={"accumulate_grad_batches": 2}, epochs=1)
    steps = read_run(tmp_path / "run").first.steps
    assert len(steps) == STEPS_PER_EPOCH // 2 and (steps["micro_batches"] == 2).all()
    assert _step_calls(tmp_path / "run", 3) == ["model0.forward[TGB]", "opt0.zero_grad", "backward",
                                                "model0.forward[TGB]", "backward", "clip_grad_norm_", "opt0.step",
                                                "sched0.step"]


def test_bf16_mixed_stays_silent(tmp_path: Path) -> None:
    fit(tmp_path / "run", precision="bf16-mixed")
    assert problems(tmp_path / "run") == {}


def test_fp16_loss_scale_and_unscaled_norms(tmp_path: Path) -> None:
    scaler = torch.amp.GradScaler("cpu")
    fit(tmp_path / "run", plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)])
    assert problems(tmp_path / "run") == {}
    steps = read_run(tmp_path / "run").first.steps
    assert (steps["scale"] == 65536.0).all()
    assert steps["grad_norm"].max() < 50  # unscaled (a scaled norm would be ~1e4-1e5)
    assert _step_calls(tmp_path / "run", 1) == [
        "model0.forward[TGB]", "opt0.zero_grad", "scaler0.scale", "backward", "scaler0.unscale_",
        "clip_grad_norm_", "scaler0.step", "opt0.step", "scaler0.update", "sched0.step"]


RUNAWAY_LR = {"optimizer": "sgd", "lr": 0.05, "lr_growth": 1.15}
"""SGD whose LR grows 15% a step from step 20 (3 at step 50): the run blows up."""


def test_too_high_lr_is_found(tmp_path: Path) -> None:
    fit(tmp_path / "run", **RUNAWAY_LR)
    assert problems(tmp_path / "run").keys() & {"loss-divergence", "gradient-explosion", "nonfinite-loss"}


def test_layer_left_out_of_the_optimizer_is_found(tmp_path: Path) -> None:
    fit(tmp_path / "run", head_only=True, epochs=2)
    finding = next(f for f in analyse(tmp_path / "run").findings if f.rule == "params-not-updated")
    assert "net.0.weight" in json.dumps(finding.evidence)


def test_recording_changes_no_number(tmp_path: Path) -> None:
    plain = fit(None, epochs=2)
    recorded = fit(tmp_path / "run", epochs=2)
    for a, b in zip(plain.parameters(), recorded.parameters()):
        assert torch.equal(a, b)
    assert not hasattr(torch.optim.AdamW.step, "__diagnose_wrapped__")
    assert not getattr(torch.utils.data.dataloader._BaseDataLoaderIter.__next__, "__diagnose_wrapped__", False)


def test_a_crash_is_recorded_and_still_raised(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        fit(tmp_path / "run", fail_at=5)
    tables = read_run(tmp_path / "run").first
    assert tables.meta["status"] == "crashed" and "boom" in tables.meta["error"]
    assert "exception" in set(tables.events["kind"])


def test_existing_run_is_refused_at_construction(healthy: Path) -> None:
    with pytest.raises(RunDirExistsError):
        DiagnoseCallback(healthy)


def test_lightning_tensorboard_logs_are_read(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import TensorBoardLogger

    logger = TensorBoardLogger(str(tmp_path), name="lightning_logs")
    fit(None, **RUNAWAY_LR, log_norms=True, logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="step")])
    result = CliRunner().invoke(main, ["report", str(tmp_path / "lightning_logs"), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    read = next(n for n in doc["notes"] if n.startswith("TensorBoard log: read"))
    for part in ("train_loss -> loss", "val_loss -> val_loss", "lr-SGD -> lr:0", "grad_2.0_norm_total -> grad_norm",
                 "epoch -> epoch", "per-layer gradient-norm tag(s)"):
        assert part in read
    assert {f["rule"] for f in doc["findings"]} & {"loss-divergence", "gradient-explosion", "nonfinite-loss"}
