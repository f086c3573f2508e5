"""The distribution installs the three import names and nothing generic.

The repo folders runtime/ and tools/ become `agentkit.runtime` and `agentkit.tools` only through the
build configuration (setup.py), so a wheel is built here and imported from outside the source tree: a
mapping mistake would show up as a missing module or as a stray top-level `runtime` / `tools`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
        ],
        check=True,
        cwd=out,
    )
    (whl,) = out.glob("agentkit-*.whl")
    return whl


def test_wheel_holds_only_the_agentkit_namespace(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"agentkit"}
    for module in ("agentkit/runtime/model.py", "agentkit/tools/tool.py", "agentkit/dsml/encode.py"):
        assert module in names
    assert "agentkit/py.typed" in names
    assert "agentkit/tiny/demo_tasks.json" in names  # the demo's tasks are package data


def test_wheel_imports_all_three_from_outside_the_repo(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, agentkit, agentkit.runtime, agentkit.tools, agentkit.runtime.config, "
        "agentkit.tools.sandbox, importlib.util as u; "
        "print(json.dumps({'files': [m.__file__ for m in (agentkit, agentkit.runtime, agentkit.tools)], "
        "'runtime': u.find_spec('runtime') is not None, 'tools': u.find_spec('tools') is not None}))"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    res = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    seen = json.loads(res.stdout)
    assert all(f.startswith(str(site)) for f in seen["files"]), seen
    assert not seen["runtime"] and not seen["tools"]


def test_editable_install_maps_the_folders() -> None:
    import agentkit.runtime
    import agentkit.tools

    assert Path(agentkit.runtime.__file__).parent == ROOT / "runtime"
    assert Path(agentkit.tools.__file__).parent == ROOT / "tools"
