"""pytest plugin: the `loop_trace` fixture (registered through the pytest11 entry point).

    def test_train_step_order(loop_trace):
        model, opt, sched, scaler = build()
        with loop_trace(model, opt, scheduler=sched, scaler=scaler) as trace:
            train_one_epoch(model, loader, opt, sched, scaler, max_steps=3)
            evaluate(model, val_loader)
        trace.assert_step_order()
        trace.assert_eval_mode_in_eval()
        trace.assert_train_mode_restored()
        trace.assert_no_findings()

The assertions run diagnose's own loop rules on what was recorded; see
docs/pytest-plugin.md. This module imports nothing heavy: torch and the recorder load
only when a test asks for the fixture, so the plugin costs nothing to test suites that
do not use it.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from diagnose.looptrace import TraceFactory


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("diagnose", "diagnose: training-loop checks (loop_trace fixture)")
    group.addoption(
        "--loop-trace-dir", metavar="DIR", default=None,
        help="Write every loop_trace recording under DIR/<test id>/ (kept, for `diagnose report`). "
             "Default: the test's temporary directory.")


@pytest.fixture
def loop_trace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TraceFactory]:
    """Record a block of your training loop and assert on its call order and modes.

    `with loop_trace(model, optimizer, scheduler=..., scaler=...) as trace:` watches those
    objects (any of them, in any order); `with loop_trace() as trace:` discovers what the
    block creates and uses. After the block: `trace.assert_step_order()`, ... Every hook
    is removed when the block ends, and again at teardown if it never did.
    """
    from diagnose.looptrace import TraceFactory, safe_name

    base = request.config.getoption("--loop-trace-dir")
    name = safe_name(request.node.nodeid)
    folder: list[Path] = []

    def make_dir(n: int) -> Path:
        if base:
            return Path(base) / name / f"trace{n}"
        if not folder:
            folder.append(tmp_path_factory.mktemp(f"loop_trace_{safe_name(request.node.name, 30)}"))
        return folder[0] / f"trace{n}"

    factory = TraceFactory(make_dir, label=request.node.nodeid)
    try:
        yield factory
    finally:
        factory.close()
