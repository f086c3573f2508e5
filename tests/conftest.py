"""Test-wide policy: under CI=true a skipped test is a failure, except for a missing GPU.

A skip usually means a real part (Docker engine, bwrap, Chromium) was not there; in CI that part is
installed by .ci/run, so its absence is a bug in set-up, not something to hide.

Also: torch runs on one thread in every test that has imported it, so model tests behave the same on a
shared two-core machine as on a large one (and never fight each other's thread pools).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

import pytest

ALLOWED_SKIP_PREFIX = "no GPU"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") and report.skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not reason.removeprefix("Skipped: ").startswith(ALLOWED_SKIP_PREFIX):
            report.outcome = "failed"
            report.longrepr = f"skipped under CI=true (a required part is missing): {reason}"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
