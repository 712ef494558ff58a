"""framework-warning: real warnings of a script run in zero-code mode, each once, rated by meaning."""
from __future__ import annotations

import textwrap
from pathlib import Path

from diagnose.rules._base import Severity
from diagnose.rules.data import framework_warning
from diagnose.rundir.reader import read_run
from diagnose.zerocode import run_script

SCRIPT = """
import torch
import torch.nn as nn
import torch.nn.functional as F
torch.manual_seed(0)
model = nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 1)
x, y = torch.randn(8, 4), torch.randn(8)
for step in range(6):
    if {sched_first} and step == 0:
        sched.step()                                   # scheduler-order warning
    opt.zero_grad()
    pred = model(x)
    if step >= 2:
        F.softmax(pred)                                # implicit dim, from step 2 on
    F.mse_loss(pred, y).backward()                    # (8, 1) against (8,): target-size warning
    opt.step()
    sched.step()
"""


def _run(tmp_path: Path, sched_first: bool):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT.format(sched_first=sched_first)))
    assert run_script(script, [], tmp_path / "run") == 0
    return read_run(tmp_path / "run").first


def test_each_distinct_warning_once_with_first_step_and_count(tmp_path: Path) -> None:
    findings = framework_warning.check(_run(tmp_path, sched_first=True))
    target = next(f for f in findings if "target size" in f.evidence["message"])
    softmax = next(f for f in findings if "Implicit dimension" in f.evidence["message"])
    order = next(f for f in findings if "lr_scheduler.step()" in f.evidence["message"])
    assert len(findings) == 3, [f.title for f in findings]
    # Python shows a warning once per location by default: count 1, the first step it came at
    assert (target.severity, target.evidence["category"], target.evidence["first_step"]) == \
        (Severity.INFO, "UserWarning", 0)
    # loss-shape-broadcast reports the mistake itself (at error): the warning is info and points there
    assert target.evidence["see_rule"] == "loss-shape-broadcast" and "(see loss-shape-broadcast)" in target.title
    assert "squeeze" in target.fix and target.evidence["location"].endswith("train.py:17")
    assert (softmax.severity, softmax.evidence["first_step"]) == (Severity.WARNING, 2)
    assert "dim=-1" in softmax.fix
    # covered by a dedicated rule: info, and it points there
    assert order.severity == Severity.INFO and order.evidence["see_rule"] == "scheduler-before-optimizer"
    assert order.title.endswith("(see scheduler-before-optimizer)")


def test_repeated_warnings_group_and_a_clean_script_is_silent(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import warnings
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
        warnings.simplefilter("always")                # shown at every call, with other sizes
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(4):
            opt.zero_grad()
            n = 8 + step
            F.mse_loss(model(torch.randn(n, 4)), torch.randn(n)).backward()
            opt.step()
    """))
    assert run_script(script, [], tmp_path / "run") == 0
    [finding] = framework_warning.check(read_run(tmp_path / "run").first)
    assert (finding.evidence["count"], finding.evidence["first_step"]) == (4, 0)
    assert "(4 times)" in finding.title

    clean = SCRIPT.format(sched_first=False).replace("F.softmax(pred)", "F.softmax(pred, dim=-1)")
    clean = clean.replace("F.mse_loss(pred, y)", "F.mse_loss(pred.squeeze(-1), y)")
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "train.py").write_text(clean)
    assert run_script(tmp_path / "clean" / "train.py", [], tmp_path / "clean" / "run") == 0
    assert framework_warning.check(read_run(tmp_path / "clean" / "run").first) == []
