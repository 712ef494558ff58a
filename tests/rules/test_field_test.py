"""What the field test (docs/rules.md "Field test") changed, on tiny Monitor loops: the
zero-code scripts of tests/scripts show each case end to end; these pin each fix down and
the healthy loops next to it that must stay silent.

- nonfinite-inputs: without a watched loader, the model's forward inputs are checked;
- scheduler-step-frequency: a per-epoch StepLR/ExponentialLR stepped every batch until
  the LR vanished; the same classes stepped per iteration with a sane setting are silent;
- dead-units: a bias whose gradient cancels while its layer's weight learns is not dead;
  layers of two models with the same module path stay apart;
- eval-without-eval-mode: a no_grad forward that feeds another model's training forward
  (a GAN generator's samples) is not an evaluation;
- the report notes a script that trained without a torch.optim optimizer.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.recorder import inputs
from diagnose.report import build_report
from diagnose.rules import run_rules
from diagnose.rules._base import Severity
from diagnose.rules.data import nonfinite_inputs
from diagnose.rules.loop import eval_without_eval_mode, scheduler_step_frequency
from diagnose.rules.numerics import dead_units
from diagnose.rundir.reader import read_run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _blobs(n: int = 320, nan_rows: tuple[int, ...] = ()):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] > 0).long()
    for row in nan_rows:
        x[row, 2] = float("nan")
    return x, y


# ---- nonfinite-inputs: batches sliced by hand --------------------------------------------------

def _sliced_loop(run_dir: Path, x: torch.Tensor, y: torch.Tensor, loader: bool = False) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(run_dir, model=model, optimizer=opt) as mon:
        batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, len(x), 32)]
        for xb, yb in (mon.loader(batches) if loader else batches):
            opt.zero_grad()
            F.cross_entropy(model(torch.nan_to_num(xb) if loader else xb), yb).backward()
            opt.step()


def test_nan_rows_sliced_by_hand_are_found_in_the_models_input(tmp_path: Path) -> None:
    x, y = _blobs(nan_rows=(100, 230))
    _sliced_loop(tmp_path / "run", x, y)
    [finding] = nonfinite_inputs.check(read_run(tmp_path / "run").first)
    assert finding.evidence["first_step"] == 3 and finding.evidence["tensor"] == "model0.input[0]"
    assert finding.evidence["steps"] == [3, 7] and finding.severity == Severity.ERROR


def test_a_watched_loader_turns_the_forward_checks_off(tmp_path: Path) -> None:
    # the loader's batches hold the NaN (found there); the model gets nan_to_num of them
    x, y = _blobs(nan_rows=(100,))
    _sliced_loop(tmp_path / "run", x, y, loader=True)
    [finding] = nonfinite_inputs.check(read_run(tmp_path / "run").first)
    assert finding.evidence["tensor"] == "batch[0]" and finding.severity == Severity.WARNING


def test_forward_checks_skip_tensors_that_require_grad_and_masks() -> None:
    checks = inputs.InputChecks()
    nan = torch.full((2, 3), float("nan"))
    generated = nan.clone().requires_grad_(True)  # another model's output: not data
    mask = torch.full((3, 3), float("-inf")).triu(1)
    checks.add_forward_inputs("model1", (generated, mask, torch.ones(2, dtype=torch.long)))
    assert checks.take()[0] == []
    checks.add_forward_inputs("model0", (torch.zeros(2), nan))
    assert [t["path"] for t in checks.take()[0]] == ["model0.input[1]"]
    checks.add([torch.zeros(2)])  # a watched loader from now on
    checks.add_forward_inputs("model0", (nan,))
    assert checks.take()[0] == []


# ---- scheduler-step-frequency: a per-epoch decay stepped per batch -----------------------------

def _scheduled_loop(run_dir: Path, make_scheduler, steps: int = 60) -> None:
    x, y = _blobs(n=steps * 8)
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = make_scheduler(opt)
    with Monitor(run_dir, model=model, optimizer=opt, scheduler=sched):
        for i in range(steps):
            opt.zero_grad()
            F.cross_entropy(model(x[8 * i:8 * i + 8]), y[8 * i:8 * i + 8]).backward()
            opt.step()
            sched.step()


@pytest.mark.parametrize("make, fires", [
    (lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1), True),
    (lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5), True),
    (lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 4, 6, 8, 10, 12, 14], gamma=0.1), True),
    # per iteration on purpose: a few decays over the run, the LR stays well above 1e-6 x
    (lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.1), False),
    (lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.95), False),
    (lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[30, 45], gamma=0.1), False),
], ids=["steplr-3", "exponential-0.5", "multistep-7", "steplr-20", "exponential-0.95", "multistep-2"])
def test_decay_stepped_per_batch_until_the_lr_vanished(tmp_path: Path, make, fires: bool) -> None:
    _scheduled_loop(tmp_path / "run", make)
    findings = scheduler_step_frequency.check(read_run(tmp_path / "run").first)
    assert bool(findings) == fires
    if fires:
        [finding] = findings
        assert finding.severity == Severity.WARNING
        assert finding.evidence["decayed_share"] >= scheduler_step_frequency.DECAYED_SHARE
        assert finding.evidence["lr_last"] < 1e-6 * finding.evidence["lr_max"]


def test_a_steplr_stepped_per_epoch_is_not_judged_by_its_decay(tmp_path: Path) -> None:
    # gamma 1e-3 per epoch: harsh, but stepped once per 8 optimizer steps: not this rule's case
    x, y = _blobs()
    model = nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=1e-3)
    with Monitor(tmp_path / "run", model=model, optimizer=opt, scheduler=sched) as mon:
        for epoch in range(5):
            mon.epoch(epoch)
            for i in range(0, 64, 8):
                opt.zero_grad()
                F.cross_entropy(model(x[i:i + 8]), y[i:i + 8]).backward()
                opt.step()
            sched.step()
    assert scheduler_step_frequency.check(read_run(tmp_path / "run").first) == []


# ---- WGAN critic: dead-units and eval-without-eval-mode ----------------------------------------

def _wgan(run_dir: Path, steps: int = 14, dead_relu: bool = False) -> None:
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    critic = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    if dead_relu:  # a real fault next to the near miss: the generator's hidden ReLUs are dead
        gen = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
        nn.init.constant_(gen[0].bias, -100.0)
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_c = torch.optim.Adam(critic.parameters(), lr=1e-3)
    with Monitor(run_dir, models=[gen, critic], optimizers=[opt_g, opt_c]):
        for _ in range(steps):
            real = torch.randn(16, 2) + 2
            with torch.no_grad():
                fake = gen(torch.randn(16, 4))  # train mode, BatchNorm: part of the critic's step
            opt_c.zero_grad()
            (critic(fake).mean() - critic(real).mean()).backward()
            opt_c.step()
            critic.requires_grad_(False)  # the generator's step needs no critic gradients
            opt_g.zero_grad()
            (-critic(gen(torch.randn(16, 4))).mean()).backward()
            opt_g.step()
            critic.requires_grad_(True)


def test_wgan_critic_is_healthy(tmp_path: Path) -> None:
    _wgan(tmp_path / "run")
    run = read_run(tmp_path / "run")
    tables = run.first
    # the critic's output bias gets exactly zero gradients (it cancels), its weight learns
    table = dead_units.dead_parameters(tables)
    bias = table[table["parameter"] == "model1.2.bias"]
    assert float(bias["zero_share"].iloc[0]) == 1.0 and bias["layer"].iloc[0] == "model1.2"
    assert dead_units.check(tables) == []
    assert eval_without_eval_mode.check(tables) == []
    findings, _ = run_rules(run)
    assert [f.rule for f in findings if f.severity >= Severity.WARNING] == []


def test_dead_relus_in_the_critic_are_still_found(tmp_path: Path) -> None:
    _wgan(tmp_path / "run", dead_relu=True)
    [finding] = dead_units.check(read_run(tmp_path / "run").first)
    layers = {entry["layer"]: entry for entry in finding.evidence["layers"]}
    assert finding.evidence["nearest_output"] == "model0.0" and "0" not in layers
    # not merged with the critic's layer 0, whose parameters learn
    assert layers["model0.0"]["parameters"] == ["model0.0.weight", "model0.0.bias"]
    assert layers["model0.0"]["alive_parameters"] == []


def test_a_generator_sample_for_logging_in_train_mode_is_still_an_evaluation(tmp_path: Path) -> None:
    # the same no_grad train-mode forward, but followed by the generator's own training
    torch.manual_seed(0)
    gen = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(gen.parameters(), lr=1e-3)
    with Monitor(tmp_path / "run", model=gen, optimizer=opt):
        for _ in range(6):
            opt.zero_grad()
            gen(torch.randn(16, 4)).pow(2).mean().backward()
            opt.step()
            with torch.no_grad():
                gen(torch.randn(16, 4))
    [finding] = eval_without_eval_mode.check(read_run(tmp_path / "run").first)
    assert finding.severity == Severity.WARNING


# ---- the report on a script without an optimizer -------------------------------------------------

def test_report_notes_training_without_an_optimizer(tmp_path: Path) -> None:
    from diagnose.zerocode import run_script

    script = tmp_path / "by_hand.py"
    script.write_text(
        "import torch\n"
        "model = torch.nn.Linear(3, 1)\n"
        "for _ in range(5):\n"
        "    model.zero_grad()\n"
        "    model(torch.randn(4, 3)).pow(2).mean().backward()\n"
        "    with torch.no_grad():\n"
        "        for p in model.parameters():\n"
        "            p -= 0.1 * p.grad\n")
    assert run_script(script, [], tmp_path / "run") == 0
    run = read_run(tmp_path / "run")
    report = build_report(run, *run_rules(run))
    [note] = [n for n in report.notes if n.startswith("no optimizer step")]
    assert "(5 backward calls)" in note and "torch.optim" in note


# ---- softmax-before-cross-entropy: a sigmoid before BCEWithLogitsLoss ----------------------------

def _binary_loop(run_dir: Path, head: nn.Module, loss_fn: nn.Module) -> None:
    x, y = _blobs()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), head)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with Monitor(run_dir, model=model, optimizer=opt):
        for i in range(0, 192, 32):
            opt.zero_grad()
            loss_fn(model(x[i:i + 32]), y[i:i + 32, None].float()).backward()
            opt.step()


def _near_unit_logits() -> nn.Module:
    """A fresh head whose logits all lie in (0, 1) (bias 0.5, tiny weights), no sigmoid."""
    head = nn.Linear(16, 1)
    nn.init.normal_(head.weight, std=1e-3)
    nn.init.constant_(head.bias, 0.5)
    return head


@pytest.mark.parametrize("head, loss_fn, fires", [
    (lambda: nn.Sequential(nn.Linear(16, 1), nn.Sigmoid()), nn.BCEWithLogitsLoss, True),
    (_near_unit_logits, nn.BCEWithLogitsLoss, False),  # logits in [0, 1] are still logits
    (lambda: nn.Sequential(nn.Linear(16, 1), nn.Sigmoid()), nn.BCELoss, False),  # BCELoss takes probabilities
], ids=["sigmoid-bce-with-logits", "small-logits", "sigmoid-bce"])
def test_sigmoid_before_bce_with_logits(tmp_path: Path, head, loss_fn, fires: bool) -> None:
    from diagnose.rules.data import softmax_before_cross_entropy

    _binary_loop(tmp_path / "run", head(), loss_fn())
    tables = read_run(tmp_path / "run").first
    ops = set(tables.loss_calls["input_op"])
    assert ops == ({"SigmoidBackward0"} if fires or loss_fn is nn.BCELoss else {"AddmmBackward0"})
    findings = softmax_before_cross_entropy.check(tables)
    assert [f.evidence["function"] for f in findings] == (["binary_cross_entropy_with_logits"] if fires else [])


# ---- Monitor: a model called with keyword arguments only -----------------------------------------

class _KwargsModel(nn.Module):
    """Hugging Face style: `model(input_ids=..., features=..., labels=...)` returns the loss."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Embedding(10, 4), nn.Linear(6, 2)

    def forward(self, input_ids=None, features=None, labels=None):
        logits = self.head(torch.cat([self.embed(input_ids).mean(1), features], 1))
        return {"loss": F.cross_entropy(logits, labels)}


def test_monitor_sees_keyword_arguments(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _KwargsModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt):
        for step in range(6):
            features = torch.randn(8, 2)
            if step == 4:
                features[1, 0] = float("inf")
            out = model(input_ids=torch.randint(0, 10, (8, 5)), features=features,
                        labels=torch.randint(0, 2, (8,)))
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
    tables = read_run(tmp_path / "run").first
    assert (tables.steps["samples"] == 8).all() and (tables.steps["tokens"] == 40).all()
    [finding] = nonfinite_inputs.check(tables)
    assert finding.evidence["first_step"] == 4 and finding.evidence["tensor"] == 'model0.input["features"]'


# ---- loss-divergence: a teacher, then a student --------------------------------------------------

def _teacher_then_student(run_dir: Path, student_lr: float, recreate: bool = False) -> None:
    """Teacher trained 40 steps, then a student (another model, another optimizer) 40 steps;
    `recreate`: instead, one model whose optimizer is built again for the second half."""
    x, y = _blobs(n=640)
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 2))
    student = teacher if recreate else nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    t_opt = torch.optim.Adam(teacher.parameters(), lr=1e-2)
    s_opt = torch.optim.SGD(student.parameters(), lr=student_lr)
    models = [teacher] if recreate else [teacher, student]
    with Monitor(run_dir, models=models, optimizers=[t_opt, s_opt]):
        for i in range(80):
            xb, yb = x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]
            model, opt = (teacher, t_opt) if i < 40 else (student, s_opt)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()


def test_a_student_after_its_teacher_is_not_a_divergence(tmp_path: Path) -> None:
    from diagnose.rules.numerics import _signals, loss_divergence

    _teacher_then_student(tmp_path / "run", student_lr=0.05)
    tables = read_run(tmp_path / "run").first
    assert _signals.training_stages(tables.calls) == [(0, 39), (40, 79)]
    loss = tables.steps["loss"]
    assert loss.loc[40:44].median() > 2 * loss.loc[30:39].median()  # the student starts higher
    assert loss_divergence.check(tables) == []
    # judged as one series (before the field test) the student's start read as a divergence;
    # each stage alone still goes through the same test
    whole = _signals.finite_losses(tables.steps)
    assert loss_divergence._check_series(tables.steps, whole)


def test_an_optimizer_built_again_for_the_same_model_is_one_stage(tmp_path: Path) -> None:
    from diagnose.rules.numerics import _signals

    _teacher_then_student(tmp_path / "run", student_lr=0.05, recreate=True)
    assert _signals.training_stages(read_run(tmp_path / "run").first.calls) == [(0, 79)]


def test_zero_code_sees_keyword_arguments(tmp_path: Path) -> None:
    from diagnose.zerocode import run_script

    script = tmp_path / "kwargs_nan.py"
    script.write_text(
        "import torch\n"
        "import torch.nn.functional as F\n"
        "torch.manual_seed(0)\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(3, 2)\n"
        "    def forward(self, features=None, labels=None):\n"
        "        return F.cross_entropy(self.lin(torch.nan_to_num(features)), labels)\n"
        "model = M()\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(6):\n"
        "    features = torch.randn(4, 3)\n"
        "    if step == 3:\n"
        "        features[0, 1] = float('nan')\n"
        "    opt.zero_grad()\n"
        "    model(features=features, labels=torch.randint(0, 2, (4,))).backward()\n"
        "    opt.step()\n")
    assert run_script(script, [], tmp_path / "run") == 0
    tables = read_run(tmp_path / "run").first
    assert (tables.steps["samples"].iloc[1:] == 4).all()
    [finding] = nonfinite_inputs.check(tables)
    assert finding.evidence["first_step"] == 3 and finding.evidence["tensor"] == 'model0.input["features"]'
    assert finding.severity == Severity.WARNING  # nan_to_num in the model: the loss stayed finite
