"""The CI policy in conftest.py: under CI=true a skip is a failure, except a missing GPU.

Runs pytest on a throw-away test file with this repo's conftest, so the hook is exercised for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

PROBE = """
import pytest

def test_missing_engine():
    pytest.skip("docker engine not running")

@pytest.mark.skipif(True, reason="no GPU: CUDA path")
def test_cuda_path():
    pass

def test_plain():
    assert True
"""


def _run(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.mark.parametrize("ci", ["true", "1"])
def test_under_ci_a_skip_fails_but_a_missing_gpu_does_not(tmp_path: Path, ci: str) -> None:
    res = _run(tmp_path, ci)
    assert res.returncode == 1, res.stdout
    assert "FAILED test_probe.py::test_missing_engine" in res.stdout
    assert "1 failed, 1 passed, 1 skipped" in res.stdout


def test_outside_ci_skips_stay_skips(tmp_path: Path) -> None:
    res = _run(tmp_path, None)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 2 skipped" in res.stdout
