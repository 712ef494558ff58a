"""Disk full, an unwritable run directory, a fault inside the recorder: training goes on,
exactly one warning is shown, and the report says the record is incomplete.

How the disk fills up for real:
- a tmpfs of 64 KiB mounted in a user and mount namespace (`unshare -rm`, no root
  needed where user namespaces are enabled): the kernel answers ENOSPC once the run's
  files reach it (skipped where `unshare` or the mount is refused);
- `/dev/full` in place of steps.jsonl: every write to it fails with ENOSPC, in-process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from diagnose.cli import main as cli
from diagnose.recorder import recorder as recorder_mod
from diagnose.recorder.writer import RESERVE_FILE
from diagnose.rundir.reader import read_run

_LOOP = Path(__file__).with_name("disk_full_loop.py")
_ROOT = _LOOP.parents[2]
sys.path.insert(0, str(_LOOP.parent))
from disk_full_loop import train  # noqa: E402


def _report(run_dir: Path) -> dict:
    result = CliRunner().invoke(cli, ["report", str(run_dir), "--format", "json"])
    assert result.exit_code in (0, 1), result.output
    return json.loads(result.stdout)


def _incomplete_note(notes: list[str]) -> str:
    found = [n for n in notes if "the record is incomplete" in n]
    assert len(found) == 1 and notes[0] == found[0], notes  # one note, and the first
    return found[0]


def test_a_tmpfs_that_fills_up(tmp_path):
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) to mount a private tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {mount} || exit 77; "
              f"exec {sys.executable} {_LOOP} {mount}/run 400")
    env = dict(os.environ, PYTHONPATH=str(_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    if proc.returncode == 77 or "unshare failed" in proc.stderr or "Operation not permitted" in proc.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {proc.stderr.strip()[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["trained"] == 400 and out["same_losses"]  # training went on, unchanged
    assert len(out["warnings"]) == 1 and "No space left on device" in out["warnings"][0]
    assert out["exit"] in (0, 1) and out["status"] == "finished"  # the final status still fit
    note = _incomplete_note(out["notes"])
    assert "No space left on device" in note and "of the 400 the run made" in note


def test_dev_full_in_place_of_steps_jsonl(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    run_dir = tmp_path / "run"
    real_init = recorder_mod.Recorder.__init__

    def init_then_fill(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        (self.rank_dir / "steps.jsonl").symlink_to("/dev/full")  # before the first step record

    recorder_mod.Recorder.__init__ = init_then_fill
    try:
        losses, shown = train(run_dir, 30)
    finally:
        recorder_mod.Recorder.__init__ = real_init
    assert len(losses) == 30
    assert len(shown) == 1 and "No space left on device" in shown[0]
    document = _report(run_dir)
    assert document["run"]["status"] == "finished"
    assert "No space left on device" in _incomplete_note(document["notes"])
    assert not (run_dir / "rank0" / RESERVE_FILE).exists()  # the reserve is given back


def test_an_unwritable_run_directory(tmp_path):
    """The run directory cannot even be created (its parent is a file): training goes on,
    one warning; `diagnose report` then says in one line that there is no run there."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    losses, shown = train(blocker / "run", 10)
    assert len(losses) == 10
    assert len(shown) == 1 and "could not write the run directory" in shown[0]
    result = CliRunner().invoke(cli, ["report", str(blocker / "run")])
    assert result.exit_code == 2 and result.output.count("Error:") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("also_disk_full", [False, True], ids=["fault", "fault-and-disk-full"])
def test_a_fault_inside_the_recorder(tmp_path, monkeypatch, also_disk_full):
    """A bug in the recorder at step 3: one warning (one, even if the disk then fills up
    too), the loop runs to the end, and the report says from which step nothing was recorded."""
    real_close = recorder_mod.Recorder._close_step

    def close_step(self):
        if self.step == 3:
            if also_disk_full:
                self.writer._fail(OSError(28, "No space left on device"))
            raise RuntimeError("boom")
        real_close(self)

    monkeypatch.setattr(recorder_mod.Recorder, "_close_step", close_step)
    losses, shown = train(tmp_path / "run", 12)
    assert len(losses) == 12
    assert len(shown) == 1, shown
    run = read_run(tmp_path / "run")
    note = _incomplete_note(run.notes)
    if also_disk_full:
        assert "No space left on device" in note
    else:
        assert "failed at step 3" in note and "boom" in note
        assert list(run.first.steps.index) == [0, 1, 2]
    assert run.first.meta["status"] == "finished"


def test_a_healthy_run_has_no_incomplete_note_and_no_reserve_left(tmp_path):
    losses, shown = train(tmp_path / "run", 5)
    assert shown == [] and len(losses) == 5
    assert not any("incomplete" in n for n in read_run(tmp_path / "run").notes)
    assert not (tmp_path / "run" / "rank0" / RESERVE_FILE).exists()
