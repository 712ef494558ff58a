"""What the zero-code mode finds in a script, and what it leaves alone (in-process runs)."""
from __future__ import annotations

import textwrap
from pathlib import Path

from diagnose.recorder import RecorderOptions
from diagnose.rundir.reader import read_run
from diagnose.zerocode import run_script
from tests.zerocode._helpers import Run

HEADER = """
import copy, pickle, io, warnings
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0)
"""


def _run(tmp_path: Path, body: str) -> Run:
    script = tmp_path / "train.py"
    script.write_text(HEADER + textwrap.dedent(body))
    out = tmp_path / "run"
    code = run_script(script, [], out, options=RecorderOptions(param_every=1))
    assert code == 0
    return Run(out)


def test_models_are_the_outermost_trained_modules_only(tmp_path):
    run = _run(tmp_path, """
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.encoder = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
                self.head = nn.Linear(8, 2)
            def forward(self, x):
                return self.head(self.encoder(x))
        model = Net()
        teacher = copy.deepcopy(model).requires_grad_(False)  # distillation teacher
        criterion = nn.CrossEntropyLoss()                       # a module without parameters
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
            opt.zero_grad()
            with torch.no_grad():
                soft = teacher(x).softmax(-1)
            out = model(x)
            loss = criterion(out, y) + F.kl_div(out.log_softmax(-1), soft, reduction="batchmean")
            loss.backward()
            opt.step()
        with torch.no_grad():
            features = model.encoder(torch.randn(2, 4))  # a submodule called on its own
    """)
    assert run.objects["models"] == [{"index": 0, "class": "Net"}]
    assert run.calls_by_step()[0] == ["opt0.zero_grad", "model0.forward[TGB]", "backward",
                                      "opt0.step"]
    assert [p["name"] for p in run.params] == ["encoder.0.weight", "encoder.0.bias",
                                               "head.weight", "head.bias"]


def test_deepcopy_pickle_and_state_dicts_work_as_without_diagnose(tmp_path):
    run = _run(tmp_path, """
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1)
        scaler = torch.amp.GradScaler("cpu")
        for _ in range(2):
            opt.zero_grad()
            scaler.scale(model(torch.randn(2, 4)).sum()).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            best = copy.deepcopy(model)
            best.eval()                               # must not touch `model`
            assert model.training and not best.training
        buffer = io.BytesIO()
        torch.save(model, buffer)                     # whole-module pickling
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict()},
                   "ckpt.pt" if False else io.BytesIO())
        pickle.dumps(sched.state_dict())
        pickle.dumps(opt)
        assert "train" not in vars(model) and "zero_grad" not in vars(opt)
        assert "step" not in vars(sched) and not model._forward_hooks
    """)
    saves = run.kind("checkpoint")
    assert saves[0]["object"] == "Sequential" and "keys" not in saves[0]
    assert saves[1]["keys"] == ["model", "optimizer", "scaler", "scheduler"]
    assert saves[1]["tensors_only"] is False
    assert run.calls.count("model0.eval") == 0  # the copy's eval() is not the model's


def test_composite_and_custom_schedulers_and_optimizers_count_once(tmp_path):
    run = _run(tmp_path, """
        class MySGD(torch.optim.SGD):
            def zero_grad(self, set_to_none=True):
                super().zero_grad(set_to_none)
        class Halving(torch.optim.lr_scheduler.LRScheduler):
            def get_lr(self):
                return [g["lr"] * (0.5 if self.last_epoch else 1) for g in self.optimizer.param_groups]
            def step(self, epoch=None):
                super().step()
        model = nn.Linear(3, 1)
        opt = MySGD(model.parameters(), lr=0.1)
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=2)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
        seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[2])
        model2 = nn.Linear(3, 1)
        opt2 = torch.optim.SGD(model2.parameters(), lr=0.1)
        halving = Halving(opt2)
        for _ in range(4):
            opt.zero_grad(); opt2.zero_grad()
            (model(torch.randn(2, 3)).sum() + model2(torch.randn(2, 3)).sum()).backward()
            opt.step(); opt2.step()
            seq.step(); halving.step()
    """)
    classes = [s["class"] for s in run.objects["schedulers"]]
    assert classes == ["LinearLR", "CosineAnnealingLR", "SequentialLR", "Halving"]
    assert run.calls_by_step()[0] == ["opt0.zero_grad", "opt1.zero_grad", "model0.forward[TGB]",
                                      "model1.forward[TGB]", "backward", "opt0.step", "opt1.step",
                                      "sched2.step", "sched3.step"]  # composite: once
    assert run.calls.count("sched2.step") == 4 and run.calls.count("sched3.step") == 4
    assert "sched0.step" not in run.calls and "sched1.step" not in run.calls


def test_late_optimizer_and_late_model(tmp_path):
    run = _run(tmp_path, """
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
        head_opt = torch.optim.SGD(model[2].parameters(), lr=0.1)   # phase 1: head only
        for _ in range(2):
            head_opt.zero_grad(); model(torch.randn(4, 4)).sum().backward(); head_opt.step()
        full_opt = torch.optim.SGD(model.parameters(), lr=0.01)    # phase 2: everything
        for _ in range(2):
            full_opt.zero_grad(); model(torch.randn(4, 4)).sum().backward(); full_opt.step()
        probe = nn.Linear(8, 1)                                      # a model trained later
        probe_opt = torch.optim.SGD(probe.parameters(), lr=0.1)
        for _ in range(2):
            probe_opt.zero_grad(); probe(torch.randn(4, 8)).sum().backward(); probe_opt.step()
    """)
    opts = run.objects["optimizers"]
    assert len(opts) == 3
    assert opts[1]["groups"][0]["params"] == [0, 1, 2, 3]  # the model's, already in the table
    assert run.objects["models"][1]["class"] == "Linear"
    late = run.kind("late_model")[0]
    assert late["model"] == 1 and late["params_added"] == 2 and late["params_in_table"] == 0
    assert run.kind("not_recorded") == []
    # the late model's parameters joined the table: named, owned by opt2, with gradient norms
    assert [(p["index"], p["name"], p["optimizer"]) for p in run.params[4:]] == \
        [(4, "model1.weight", 2), (5, "model1.bias", 2)]
    assert opts[2]["groups"][0]["params"] == [4, 5]
    grads = read_run(run.path).first.grad_norms
    assert list(grads.columns) == [0, 1, 2, 3, 4, 5] and list(grads.index) == list(range(6))
    assert grads.loc[:3, [4, 5]].isna().all().all()  # not in the table yet (no gradient)
    assert (grads.loc[4:, [4, 5]] > 0).all().all()
    assert run.calls_by_step()[4] == ["opt2.zero_grad", "model1.forward[TGB]", "backward",
                                      "opt2.step"]
    assert len(run.steps) == 6 and len(run.steps[-1]["lr"]) == 3


def test_module_with_gradients_in_no_optimizer_is_a_model(tmp_path):
    run = _run(tmp_path, """
        model = nn.Linear(4, 4)
        aux = nn.Linear(4, 1)           # trained by mistake: gets gradients, never updated
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            aux(model(torch.randn(2, 4))).sum().backward()
            opt.step()
    """)
    assert [m["class"] for m in run.objects["models"]] == ["Linear", "Linear"]
    owner = {p["name"]: p["optimizer"] for p in run.params}
    assert owner == {"model0.weight": 0, "model0.bias": 0, "model1.weight": None,
                     "model1.bias": None}
    assert run.calls_by_step()[1] == ["opt0.zero_grad", "model0.forward[TGB]",
                                      "model1.forward[TGB]", "backward", "opt0.step"]


def test_checkpointed_recompute_and_lbfgs_closure(tmp_path):
    run = _run(tmp_path, """
        from torch.utils.checkpoint import checkpoint
        class Deep(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3))
            def forward(self, x):
                for block in self.blocks:
                    x = checkpoint(block, x, use_reentrant=False)
                return x
        model = Deep()
        opt = torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=2)
        x = torch.randn(5, 6)
        def closure():
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss
        for _ in range(2):
            opt.step(closure)
    """)
    assert [m["class"] for m in run.objects["models"]] == ["Deep"]
    # LBFGS calls the closure (zero_grad, forward, backward) inside its step, twice per step
    closure = ["opt0.zero_grad", "model0.forward[TGB]", "backward"]
    assert run.calls_by_step()[0][:7] == ["opt0.step"] + closure * 2
    assert run.calls.count("model0.forward[TGB]") == 4 and len(run.steps) == 2


def test_warnings_are_recorded_at_the_scripts_line(tmp_path):
    run = _run(tmp_path, """
        model = nn.Linear(2, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.StepLR(opt, 1)
        model(torch.randn(1, 2)).sum().backward()
        sched.step()          # before optimizer.step(): torch warns (stacklevel=2)
        opt.step()
        warnings.warn("custom note from the script")
    """)
    found = {w["message"][:30]: w for w in run.kind("warning")}
    torch_warning = found["Detected call of `lr_scheduler"]
    assert torch_warning["filename"].endswith("train.py") and torch_warning["lineno"] == 12
    assert found["custom note from the script"]["category"] == "UserWarning"


def test_module_compiled_in_place_says_what_it_cannot_see(tmp_path):
    run = _run(tmp_path, """
        model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 1))
        model.compile(backend="eager")
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad(); model(torch.randn(4, 3)).sum().backward(); opt.step()
    """)
    assert run.objects["models"] == [{"index": 0, "class": "Sequential"}]
    assert [n["what"] for n in run.kind("not_recorded")] == ["compiled-forward"]
    assert run.calls_by_step()[1] == ["opt0.zero_grad", "backward", "opt0.step"]
    assert len(run.steps) == 2 and run.steps[0]["grad_norm"] > 0


def test_compiled_training_function_is_traced_as_without_diagnose(tmp_path, recwarn):
    run = _run(tmp_path, """
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)

        @torch.compile(backend="eager")
        def forward_loss(x, y):
            return F.cross_entropy(model(x), y)

        for _ in range(3):
            opt.zero_grad()
            forward_loss(torch.randn(4, 8), torch.randint(0, 2, (4,))).backward()
            opt.step()
    """)
    notes = {n["what"]: n for n in run.kind("not_recorded")}
    assert notes["compiled-function"]["function"] == "forward_loss"
    assert notes["forward-not-seen"]["model"] == 0
    assert run.params[0]["name"] == "0.weight"  # the model was found among the globals
    assert run.calls_by_step()[1] == ["opt0.zero_grad", "backward", "opt0.step"]
    assert not [w for w in recwarn if "Dynamo" in str(w.message)]  # no graph break on us


def test_epochs_from_the_training_data_even_with_a_new_loader_each_epoch(tmp_path):
    run = _run(tmp_path, """
        from torch.utils.data import DataLoader, TensorDataset
        train = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
        val = TensorDataset(torch.randn(8, 4), torch.randn(8, 1))
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for epoch in range(3):
            for x, y in DataLoader(train, batch_size=16, shuffle=True):  # rebuilt each epoch
                opt.zero_grad(); F.mse_loss(model(x), y).backward(); opt.step()
            with torch.no_grad():
                for x, y in DataLoader(val, batch_size=8):
                    model(x)
    """)
    assert [s["epoch"] for s in run.steps] == [0, 0, 1, 1, 2, 2]
    assert [e["step"] for e in run.kind("epoch")] == [0, 2, 4]
