"""A parameter table that grows during the run (k-fold, a second training stage): the norm
files become a sequence of Arrow streams of widening schemas, read back as one table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diagnose import Monitor
from diagnose.recorder.writer import RunWriter
from diagnose.rundir import schema
from diagnose.rundir._norms import read_norms
from diagnose.rules import run_rules
from diagnose.rundir.reader import read_run


def _write(rank_dir: Path) -> None:
    writer = RunWriter(rank_dir, arrow_chunk_rows=2)
    writer.set_param_count(2)
    for step in range(3):
        writer.matrix_row(schema.GRAD_NORMS_FILE, step, np.array([1.0, float("nan") if step == 1 else 2.0],
                                                                  dtype=np.float32))
        writer.matrix_row(schema.PARAM_NORMS_FILE, step, np.array([3.0, 4.0], dtype=np.float32))
    writer.set_param_count(4)
    for step in range(3, 6):
        writer.matrix_row(schema.GRAD_NORMS_FILE, step, np.array([-1.0, -1.0, 5.0, 6.0], dtype=np.float32))
        writer.matrix_row(schema.PARAM_NORMS_FILE, step, np.array([3.0, 4.0, 7.0, 8.0], dtype=np.float32))
    writer.close()


def test_streams_of_a_grown_table_read_as_one(tmp_path):
    _write(tmp_path)
    notes: list[str] = []
    grads = read_norms(tmp_path / schema.GRAD_NORMS_FILE, "g", notes, no_grad_sentinel=True)
    weights = read_norms(tmp_path / schema.PARAM_NORMS_FILE, "p", notes)
    assert notes == []
    assert list(grads.norms.columns) == [0, 1, 2, 3] and list(grads.norms.index) == list(range(6))
    assert grads.norms.loc[:2, [2, 3]].isna().all().all()  # not in the table yet: no gradient
    assert grads.norms.loc[3:, 2].tolist() == [5.0] * 3
    # only the real NaN (step 1, parameter 1) is non-finite, not the cells before the growth
    assert grads.nonfinite.to_numpy().sum() == 1 and bool(grads.nonfinite.at[1, 1])
    assert weights.norms.loc[:2, [2, 3]].isna().all().all() and weights.norms.at[4, 3] == 8.0
    assert not weights.nonfinite.to_numpy().any()


def test_a_cut_in_the_second_stream_keeps_the_first(tmp_path):
    _write(tmp_path)
    path = tmp_path / schema.GRAD_NORMS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # inside the second stream's last chunk
    notes: list[str] = []
    grads = read_norms(path, "g", notes, no_grad_sentinel=True)
    assert list(grads.norms.index) == [0, 1, 2, 3, 4]  # the second stream's last chunk is lost
    assert notes == ["g: stream cut after 1 complete chunk(s) (2 rows); the rest was skipped"]


def test_a_monitor_loop_that_watches_a_new_model_per_fold(tmp_path):
    """`mon.watch(model=..., optimizer=...)` for each fold: every fold's parameters are in
    the table, named, with gradient and weight norms while it trains; no NaN weights
    reported for the folds that did not exist yet."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randn(64, 1)
    with Monitor(tmp_path / "run") as mon:
        for fold in range(3):
            model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
            opt = torch.optim.SGD(model.parameters(), lr=0.05)
            mon.watch(model=model, optimizer=opt)
            for _ in range(30):
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    run = read_run(tmp_path / "run")
    tables = run.first
    assert len(tables.params) == 12 and tables.params.at[4, "name"] == "model1.0.weight"
    grads = tables.grad_norms
    for fold in range(3):
        assert (grads.loc[30 * fold: 30 * fold + 29, 4 * fold: 4 * fold + 3] > 0).all().all()
    assert tables.param_norms.loc[:29, 4:].isna().all().all()
    assert not tables.param_nonfinite.to_numpy().any()
    findings, _notes = run_rules(run)
    assert "nonfinite-parameters" not in {f.rule for f in findings}
