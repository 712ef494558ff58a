"""`run_script` runs a script as `python SCRIPT ARGS` would, and leaves nothing behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.modules.module as module_mod
import torch.optim.optimizer as optimizer_mod
import torch.utils.data.dataloader as dataloader_mod

from diagnose.recorder import RecorderOptions, RunDirExistsError
from diagnose.zerocode import run_script
from tests.zerocode._helpers import REPO, Run, env

TRAIN = """
import torch
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 2)
for step in range({steps}):
    opt.zero_grad()
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    opt.step()
    sched.step()
"""


def _script(tmp_path: Path, body: str, name: str = "train.py") -> Path:
    path = tmp_path / "project" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(body))
    return path


def _run(tmp_path: Path, body: str, *args: str, **kwargs) -> tuple[int, Run]:
    out = tmp_path / "run"
    code = run_script(_script(tmp_path, body), list(args), out, options=RecorderOptions(),
                      **kwargs)
    return code, Run(out)


def _patched_state() -> dict:
    return {
        "opt_init": torch.optim.Optimizer.__init__, "opt_zero_grad": torch.optim.Optimizer.zero_grad,
        "train": torch.nn.Module.train, "module_zero_grad": torch.nn.Module.zero_grad,
        "compile": torch.nn.Module.compile, "backward": torch.Tensor.backward,
        "clip": torch.nn.utils.clip_grad_norm_, "save": torch.save,
        "showwarning": warnings.showwarning, "filters": list(warnings.filters),
        "sched_step": torch.optim.lr_scheduler.LRScheduler.step,
        "plateau_step": torch.optim.lr_scheduler.ReduceLROnPlateau.step,
        "scaler_step": torch.amp.GradScaler.step,
        "next": dataloader_mod._BaseDataLoaderIter.__next__,
        "iter": dataloader_mod.DataLoader.__iter__,
        "hooks": (len(module_mod._global_forward_pre_hooks), len(module_mod._global_forward_hooks),
                  len(optimizer_mod._global_optimizer_pre_hooks),
                  len(optimizer_mod._global_optimizer_post_hooks)),
    }


def test_script_sees_python_semantics_and_everything_is_restored(tmp_path):
    before = _patched_state()
    argv, path0, cwd = sys.argv[:], sys.path[0], os.getcwd()
    report = tmp_path / "seen.json"
    code, run = _run(tmp_path, f"""
        import json, os, sys
        json.dump({{"argv": sys.argv, "path0": sys.path[0], "name": __name__,
                   "file": __file__, "cwd": os.getcwd()}}, open({str(report)!r}, "w"))
        import helper  # a sibling module: importable because sys.path[0] is this folder
        print("out", helper.VALUE)
    """, "--lr", "3e-4", "--flag")
    assert code == 0
    seen = json.loads(report.read_text())
    script = tmp_path / "project" / "train.py"
    assert seen["argv"][1:] == ["--lr", "3e-4", "--flag"]
    assert Path(seen["argv"][0]).resolve() == script.resolve()
    assert seen["path0"] == str(script.parent.resolve())
    assert seen["name"] == "__main__" and seen["file"] == str(script.resolve())
    assert seen["cwd"] == cwd == os.getcwd()
    assert sys.argv == argv and sys.path[0] == path0
    assert _patched_state() == before
    assert run.status["status"] == "finished"


@pytest.fixture(autouse=True)
def _helper_module(tmp_path):
    (tmp_path / "project").mkdir(exist_ok=True)
    (tmp_path / "project" / "helper.py").write_text("VALUE = 42\n")
    yield
    sys.modules.pop("helper", None)


@pytest.mark.parametrize("ending, code, status", [
    ("pass", 0, "finished"),
    ("sys.exit()", 0, "finished"),
    ("sys.exit(0)", 0, "finished"),
    ("sys.exit(3)", 3, "crashed"),
    ("sys.exit(-1)", 255, "crashed"),
    ("sys.exit('giving up')", 1, "crashed"),
    ("raise ValueError('bad batch')", 1, "crashed"),
])
def test_exit_code_is_the_scripts(tmp_path, capsys, ending, code, status):
    got, run = _run(tmp_path, TRAIN.format(steps=3) + "import sys\n" + ending + "\n")
    assert got == code
    assert run.status["status"] == status and run.status["steps"] == 3
    err = capsys.readouterr().err
    if "giving up" in ending:
        assert err.strip().endswith("giving up")
    if "raise" in ending:
        lines = err.splitlines()
        assert lines[0] == "Traceback (most recent call last):"
        assert "train.py" in lines[1] and "<module>" in lines[1]  # the script's own frame first
        assert lines[-1] == "ValueError: bad batch"
        assert run.kind("exception")[0]["message"] == "bad batch"


def test_keyboard_interrupt_is_interrupted_130(tmp_path, capsys):
    code, run = _run(tmp_path, TRAIN.format(steps=2) + "raise KeyboardInterrupt\n")
    assert code == 130 and run.status["status"] == "interrupted"
    assert capsys.readouterr().err.rstrip().endswith("KeyboardInterrupt")


def test_missing_script_and_existing_run_dir(tmp_path):
    with pytest.raises(FileNotFoundError):
        run_script(tmp_path / "nope.py", [], tmp_path / "run")
    _run(tmp_path, TRAIN.format(steps=1))
    with pytest.raises(RunDirExistsError):
        _run(tmp_path, TRAIN.format(steps=1))
    code, run = _run(tmp_path, TRAIN.format(steps=2), overwrite=True)
    assert code == 0 and len(run.steps) == 2


def test_recorder_fault_is_one_warning_never_an_exception(tmp_path, monkeypatch):
    from diagnose.zerocode.session import Session

    def broken(self, sched):
        raise RuntimeError("boom")

    monkeypatch.setattr(Session, "on_scheduler_step", broken)
    done = tmp_path / "done"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, run = _run(tmp_path, TRAIN.format(steps=6) + f"open({str(done)!r}, 'w')\n")
    assert code == 0 and done.exists()  # the script ran to the end
    ours = [w for w in caught if "diagnose" in str(w.message)]
    assert len(ours) == 1 and "boom" in str(ours[0].message)
    assert [e["message"] for e in run.kind("recorder_error")] == ["RuntimeError: boom"]
    assert torch.optim.lr_scheduler.LRScheduler.step.__name__ == "step"
    assert not hasattr(torch.optim.lr_scheduler.LRScheduler.step, "__diagnose_wrapped__")


def _zerocode(script: Path, out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "diagnose.zerocode", "--out", str(out), str(script), *args],
        cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


LOOP_FOREVER = TRAIN.replace("for step in range({steps}):", "import time\nstep = 0\nwhile True:") \
    .replace("    sched.step()\n", "    sched.step()\n    step += 1\n    if step == 3:\n"
             "        print('ready', flush=True)\n    time.sleep(0.01)\n")


@pytest.mark.parametrize("signum, returncode, last", [
    (signal.SIGINT, -signal.SIGINT, "KeyboardInterrupt"),
    (signal.SIGTERM, -signal.SIGTERM, None),
])
def test_signal_flushes_marks_interrupted_and_dies_like_python(tmp_path, signum, returncode,
                                                               last):
    script = _script(tmp_path, LOOP_FOREVER)
    proc = _zerocode(script, tmp_path / "run")
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == returncode  # what `python train.py` gives
    if last:
        assert err.rstrip().splitlines()[-2] == last  # traceback, then our one line
    run = Run(tmp_path / "run")
    assert run.status["status"] == "interrupted"
    assert len(run.steps) >= 3


def test_module_cli_passes_arguments_and_reports_errors(tmp_path):
    script = _script(tmp_path, "import sys\nprint(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-m", "diagnose.zerocode", "--out",
                           str(tmp_path / "run"), str(script), "--", "--out", "x", "-h"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "['--out', 'x', '-h']"
    again = subprocess.run([sys.executable, "-m", "diagnose.zerocode", "--out",
                            str(tmp_path / "run"), str(script)],
                           cwd=REPO, env=env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith("Error:")
    assert "already holds a recorded run" in again.stderr


def test_torchrun_records_one_rank_folder_each(tmp_path):
    script = _script(tmp_path, """
        import torch, torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP
        dist.init_process_group("gloo")
        torch.manual_seed(0)
        model = DDP(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1)))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(); model(torch.randn(4, 4)).sum().backward(); opt.step()
        with torch.no_grad():
            model.module.eval()
            model.module(torch.randn(2, 4))
        dist.destroy_process_group()
    """)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "-m", "diagnose.zerocode", "--out", str(tmp_path / "run"), str(script)],
        cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        meta = [json.loads(line) for line in
                (tmp_path / "run" / f"rank{rank}" / "meta.jsonl").read_text().splitlines()]
        assert meta[0]["rank"] == rank and meta[0]["world_size"] == 2
        assert meta[-1]["status"] == "finished" and meta[-1]["steps"] == 3
        params = (tmp_path / "run" / f"rank{rank}" / "params.jsonl").read_text()
        assert '"name":"0.weight"' in params  # DDP's `module.` prefix is not there
    assert Run(tmp_path / "run").calls[-3:] == ["phase:val", "model0.eval", "model0.forward[EN]"]
