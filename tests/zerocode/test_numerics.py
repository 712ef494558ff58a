"""The zero-code recorder changes nothing in the script's numerics: parameters, optimizer
state, the global RNG state (no extra random draws) and the output are bit-identical with
and without it, on the same seeded script."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.zerocode._helpers import REPO, SCRIPTS, env

TWIN = REPO / "tests" / "zerocode" / "_twin.py"


@pytest.mark.parametrize("name", [
    "healthy_mlp_onecycle.py",             # dropout: RNG draws inside forward
    "healthy_fp16_scaler_accumulation.py",  # GradScaler really scaling on CPU
    "healthy_transformer_bf16.py",          # bf16 autocast, two param groups
    "healthy_gru_plateau.py",               # DataLoader shuffling, ReduceLROnPlateau
    "healthy_cnn_batchnorm_workers.py",     # worker processes seeded from the global RNG
    "train_mode_not_restored.py",           # BatchNorm statistics, mode changes
    "healthy_lstm_seq_major_nll.py",        # loss and LSTM calls watched, statistics on sampled steps
])
def test_bit_identical_with_and_without_recorder(name, tmp_path):
    proc = subprocess.run([sys.executable, str(TWIN), str(SCRIPTS / name), str(tmp_path / "run")],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["differ"] == []
    assert result["same_stdout"]
    assert result["tensors"] >= 1  # at least the RNG state; parameters for module-level scripts
