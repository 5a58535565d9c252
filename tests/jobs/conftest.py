"""Fixtures of the tests that start processes of their own (tests/jobs/services.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jobs.services import Services


@pytest.fixture
def services() -> Iterator[Services]:
    """Every process the test starts, stopped by PID at the end; their output's tail is
    printed, which pytest shows when the test failed."""
    started = Services()
    try:
        yield started
    finally:
        print(started.logs())
        started.close()
