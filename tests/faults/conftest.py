"""Fixtures of the fault tests, and their figures in pytest's terminal summary."""

from __future__ import annotations

import pytest

from tests.faults.harness import REPORTS
from tests.services import create_pg_database, drop_pg_database


@pytest.fixture(scope="module")
def erp_url():
    """An empty PostgreSQL database shared by the tests of one module, which
    check different facts of the same chaos run."""
    url = create_pg_database()
    yield url
    drop_pg_database(url)


def pytest_terminal_summary(terminalreporter):
    if not REPORTS:
        return
    terminalreporter.section("chaos runs")
    for report in REPORTS:
        terminalreporter.write_line(report.summary())
