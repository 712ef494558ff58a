"""`diagnose report` on event files a real Hugging Face Trainer wrote (tests/data/hf_trainer)."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("tensorboard")

from tests.integrations.test_tensorboard_report import report_json, rules_at_warning  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data" / "hf_trainer"


def test_the_trainers_own_tag_names_are_recognised() -> None:
    doc = report_json(DATA / "healthy")
    notes = " ".join(doc["notes"])
    for mapping in ("train/loss -> loss", "train/grad_norm -> grad_norm",
                    "train/learning_rate -> lr", "eval/loss -> val_loss"):
        assert mapping in notes, notes
    assert doc["run"]["steps"] == 120


def test_healthy_trainer_run_stays_silent() -> None:
    assert rules_at_warning(report_json(DATA / "healthy")) == set()


def test_learning_rate_far_too_high_is_found() -> None:
    found = rules_at_warning(report_json(DATA / "lr5"))
    assert "gradient-explosion" in found and "loss-divergence" in found, found
