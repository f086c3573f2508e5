"""The Docker engine connection: one place that says whether an engine answers, and why not.

Apart from `docker.py` so that the reaper (which `docker.py` uses) can reach the engine too without an
import circle.
"""

from __future__ import annotations

from typing import Any

from .base import SandboxUnavailable

HINT = "start dockerd or use bwrap"
"""The advice when Docker was asked for by name; the fallback note leaves it out (bwrap is in use)."""


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
        raise SandboxUnavailable(f"no Docker engine answers ({e}); {HINT}") from e
    return client
