"""nonfinite-inputs: a NaN/Inf in a training batch, found by the recorder's check of every
batch a watched loader yields; masks, integer tensors and evaluation batches stay silent."""
from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from diagnose import Monitor
from diagnose.recorder import inputs
from diagnose.rules._base import Severity
from diagnose.rules.data import nonfinite_inputs
from diagnose.rundir.reader import read_run
from diagnose.zerocode import run_script
from tests.scripts import script_path

Pair = namedtuple("Pair", "left right")


def _dict_batches(bad_steps: dict[int, str], n: int = 12):
    """Batches like a tokenised-text pipeline's: integer ids, a float feature tensor, a
    boolean padding mask, an additive causal mask ({0, -inf}) and a named float mask."""
    gen = torch.Generator().manual_seed(0)
    for step in range(n):
        image = torch.randn(8, 6, generator=gen)
        if bad_steps.get(step) == "nan":
            image[2, 3] = float("nan")
        elif bad_steps.get(step) == "inf":
            image[0, 0] = float("inf")
        elif bad_steps.get(step) == "log0":
            image[1, 1] = float("-inf")  # log(0) of a feature: a bug, not a mask
        yield {"image": image, "label": torch.randint(0, 3, (8,), generator=gen),
               "pad": torch.ones(8, 6, dtype=torch.bool),
               "causal": torch.full((6, 6), float("-inf")).triu(1),
               "attn_mask": torch.where(torch.rand(8, 6, generator=gen) < 0.2, float("-inf"), 0.5)}


def _monitor_run(tmp_path: Path, bad_steps: dict[int, str], eval_bad: bool = False):
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with Monitor(tmp_path / "run", model=model, optimizer=opt) as mon:
        for batch in mon.loader(_dict_batches(bad_steps)):
            opt.zero_grad()
            F.cross_entropy(model(torch.nan_to_num(batch["image"])), batch["label"]).backward()
            opt.step()
        with mon.phase("val"):  # evaluation batches: never training inputs
            for batch in mon.loader(_dict_batches({0: "nan"} if eval_bad else {}, 2)):
                model(batch["image"])
        with torch.no_grad():
            for batch in mon.loader(_dict_batches({0: "inf"} if eval_bad else {}, 2)):
                model(batch["image"])
    return read_run(tmp_path / "run").first


def test_fires_on_nan_in_a_dict_batch_with_its_path_and_step_count(tmp_path: Path) -> None:
    run = _monitor_run(tmp_path, {4: "nan", 7: "inf", 9: "log0"}, eval_bad=True)
    [finding] = nonfinite_inputs.check(run)
    assert finding.evidence["first_step"] == 4 and finding.evidence["tensor"] == 'batch["image"]'
    assert finding.evidence["steps"] == [4, 7, 9] and finding.evidence["steps_affected"] == 3
    assert finding.evidence["tensors"] == {'batch["image"]': 3}
    assert finding.title.startswith('NaN in training batch at step 4 (batch["image"]); 3 steps')
    # nan_to_num in the model's input: the loss stayed finite, so a warning, not an error
    assert finding.severity == Severity.WARNING and not finding.evidence["loss_nonfinite"]


def test_silent_with_masks_integers_and_bad_evaluation_batches(tmp_path: Path) -> None:
    run = _monitor_run(tmp_path, {}, eval_bad=True)
    events = run.events_of("nonfinite_input")
    # the additive causal mask ({0, -inf}) is not even recorded; the named mask is, not judged
    assert all(t["path"] == 'batch["attn_mask"]' for d in events["data"] for t in d["tensors"])
    assert len(events) == 12
    assert nonfinite_inputs.check(run) == []


def test_reference_loop_injection_is_an_error_at_nan_step(tmp_path: Path) -> None:
    from tests.reference_loop.conftest import make_tiny
    from reference_loop.train import train

    cfg = make_tiny(monitor=True, epochs=1, inject=["nonfinite-inputs"], nan_step=3)
    train(cfg, tmp_path / "run", progress=False)
    [finding] = nonfinite_inputs.check(read_run(tmp_path / "run").first)
    assert (finding.evidence["first_step"], finding.evidence["tensor"]) == (3, "batch[0]")
    assert finding.severity == Severity.ERROR and finding.evidence["loss_nonfinite"]
    assert finding.evidence["steps_affected"] == 1


def test_zero_code_script_names_the_batch_tensor(tmp_path: Path) -> None:
    assert run_script(script_path("nonfinite_inputs.py"), [], tmp_path / "run") == 0
    [finding] = nonfinite_inputs.check(read_run(tmp_path / "run").first)
    assert (finding.evidence["first_step"], finding.evidence["tensor"]) == (8, "batch[0]")
    assert finding.severity == Severity.ERROR


def test_batch_paths_and_what_each_tensor_holds() -> None:
    batch = {"a": [torch.zeros(2), (torch.ones(1, dtype=torch.long), torch.zeros(0))],
             3: Pair(torch.ones(2), "text"), "h": torch.ones(2, dtype=torch.float16)}
    assert [p for p, _ in inputs.float_tensors(batch)] == \
        ['batch["a"][0]', "batch[3].left", 'batch["h"]']
    assert inputs.describe("x", 0.0, 1.0) is None
    assert inputs.describe("m", float("-inf"), 0.0) is None  # additive mask
    assert inputs.describe("x", float("-inf"), 2.0)["neginf"]
    assert inputs.describe("x", float("nan"), float("nan"))["nan"]


def test_silent_on_healthy(healthy_run) -> None:
    assert nonfinite_inputs.check(healthy_run.first) == []


def test_a_failing_check_switches_the_checks_off_not_the_recorder(tmp_path: Path, monkeypatch) -> None:
    def broken(self, batch, key):
        raise TypeError("odd tensor subclass")

    monkeypatch.setattr(inputs.InputChecks, "_add", broken)
    run = _monitor_run(tmp_path, {4: "nan"})
    assert len(run.steps) == 12 and run.events_of("recorder_error").empty
    assert nonfinite_inputs.check(run) == []


def test_a_batch_with_many_non_tensor_items_is_cut_short() -> None:
    batch = {"names": [f"img{i}.png" for i in range(10_000)], "x": torch.zeros(2)}
    assert inputs.float_tensors(batch) == []  # the budget ran out inside the names
    assert [p for p, _ in inputs.float_tensors({"x": torch.zeros(2), "names": batch["names"]})] == ['batch["x"]']
