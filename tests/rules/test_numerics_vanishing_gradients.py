"""vanishing-gradients: fires when the first layers' per-element gradients are orders of
magnitude below the last layers' (deep sigmoid stack; deep tanh with tiny init), silent on
frozen or unused parameters, on dead layers (dead-units' business) and on healthy runs."""
from __future__ import annotations

import pytest

from diagnose.rules._base import Severity
from diagnose.rules.numerics import vanishing_gradients
from diagnose.rundir.reader import read_run
from diagnose.rundir.tables import Run, RunTables
from tests.harness.faults_numerics import recorded


@pytest.fixture(scope="module")
def fault(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.getbasetemp()
    return lambda name, seed=0: read_run(recorded(name, base, seed)).first


def _only(findings):
    assert len(findings) == 1, findings
    finding = findings[0]
    assert finding.rule == "vanishing-gradients" and finding.severity >= Severity.WARNING
    return finding


def test_fires_on_a_deep_sigmoid_stack(fault) -> None:
    finding = _only(vanishing_gradients.check(fault("deep_sigmoid")))
    ev = finding.evidence
    assert finding.severity == Severity.ERROR and ev["ratio_early_to_late"] < 1e-6
    assert ev["early_parameters"] == ["layers.0.weight", "layers.1.weight", "layers.2.weight"]
    assert ev["late_parameters"][-1] == "head.weight"
    ratios = [layer["ratio_to_late"] for layer in ev["layers"]]
    assert ratios[0] < ratios[5] < ratios[-1]                        # shrinking toward the input
    assert "layers.0.weight" in ev["below_threshold"] and "head.weight" not in ev["below_threshold"]
    assert all(".bias" not in p["parameter"] for p in ev["layers"])


def test_fires_on_a_deep_tanh_with_tiny_init(fault) -> None:
    finding = _only(vanishing_gradients.check(fault("deep_tanh_small_init")))
    ev = finding.evidence
    assert finding.severity == Severity.WARNING and 1e-6 <= ev["ratio_early_to_late"] < 1e-3
    assert ev["layers"][0]["parameter"] == "layers.0.weight" and "layers.0.weight" in finding.title


@pytest.mark.parametrize("name", ["frozen_and_unused", "dead_relu_layer", "dead_units_reference"])
def test_silent_on_frozen_unused_and_dead_layers(fault, name: str) -> None:
    assert vanishing_gradients.check(fault(name)) == []


def test_silent_without_gradient_norms() -> None:
    assert vanishing_gradients.check(RunTables()) == []


def test_silent_on_healthy(healthy_run: Run) -> None:
    assert vanishing_gradients.check(healthy_run.first) == []
