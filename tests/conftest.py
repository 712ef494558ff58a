"""Fixtures shared by every test folder."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.harness.threads import one_torch_thread as _one_torch_thread


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The test runs torch on one thread (tests/harness/threads.py)."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def one_torch_thread_module() -> Iterator[None]:
    """The whole module, its module-scoped recordings included, runs torch on one thread."""
    with _one_torch_thread():
        yield
