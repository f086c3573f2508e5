"""The Docker engine connection: one place that says whether an engine answers, and why not.

Apart from `docker.py` so that the reaper (which `docker.py` uses) can reach the engine too without an
import circle.
"""

from __future__ import annotations

from typing import Any

from .base import SandboxUnavailable


def docker_client() -> Any:
    """A client whose engine answers, or SandboxUnavailable saying why not."""
    try:
        import docker
    except ImportError as e:  # pragma: no cover - docker is a hard dependency
        raise SandboxUnavailable("the `docker` Python package is not installed") from e
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:
        raise SandboxUnavailable(f"no Docker engine answers ({e}); start dockerd or use bwrap") from e
    return client
