"""`open_sandbox()`: the safest backend this machine offers, or a clear refusal.

The chain is Docker (an engine answers and the image is there), then bubblewrap (and it can create
namespaces here). It never falls through to the host: `LocalSandbox` runs only when named, because
running an agent's commands unconfined must be a decision, not an accident of the environment.

Falling back from Docker to bubblewrap is said once per process, at INFO: on a machine without Docker it
is the expected path, not a problem, and a demo opening eight sandboxes must not say it eight times.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from ._engine import HINT as DOCKER_HINT
from .base import Sandbox, SandboxError, SandboxUnavailable
from .bubblewrap import BwrapConfig, BwrapSandbox
from .docker import DockerConfig, DockerSandbox
from .local import LocalSandbox
from .pool import SandboxPool

log = logging.getLogger("agentkit.sandbox")

Backend = Literal["auto", "docker", "bwrap", "local"]
_BACKENDS = ("auto", "docker", "bwrap", "local")
_DOCKER_FIELDS = set(DockerConfig.__dataclass_fields__) | {"client", "memory_mb"}
_BWRAP_FIELDS = set(BwrapConfig.__dataclass_fields__)
_LOCAL_FIELDS = {"default_timeout", "output_limit", "env", "workspace_parent", "read_limit", "workspace"}
_noted_fallback: list[str] = []
"""The fallback reason already said in this process (at most one entry)."""


def _note_fallback(reason: str) -> None:
    """Say once per process that "auto" chose bubblewrap, why, and how to choose explicitly."""
    if _noted_fallback:
        log.debug("sandbox: using bubblewrap again (%s)", reason)
        return
    _noted_fallback.append(reason)
    log.info(
        "sandbox: using bubblewrap, not Docker (%s). To use Docker, start its engine; "
        'to skip this check, ask for bubblewrap (sandbox="bwrap"; CLI: --sandbox bwrap).',
        reason.removeprefix("docker: ").removesuffix(f"; {DOCKER_HINT}"),
    )


def _check_options(backend: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"{backend} sandbox does not take option(s) {unknown}; it takes {sorted(allowed)}")


def _docker(options: dict[str, Any]) -> DockerSandbox:
    _check_options("docker", options, _DOCKER_FIELDS)
    opts = dict(options)
    if "memory_mb" in opts:
        opts["memory"] = f"{int(opts.pop('memory_mb'))}m"
    return DockerSandbox(**opts)


def _bwrap(options: dict[str, Any]) -> BwrapSandbox:
    _check_options("bwrap", options, _BWRAP_FIELDS)
    return BwrapSandbox(**options)


async def open_sandbox(
    backend: Backend = "auto", *, pool: SandboxPool | None = None, **options: Any
) -> Sandbox:
    """Start and return a sandbox; close it (or `async with` it) when done.

    With `pool` (an open SandboxPool), a Docker sandbox comes from it in milliseconds; the pool's
    config then decides the container's shape, so no other options are accepted alongside it.

    `async with await open_sandbox() as sb:` works: entering a started sandbox does not restart it.
    With "auto", options must suit the backend that gets picked (memory_mb, pids, network, env,
    default_timeout and output_limit suit both).
    """
    if backend not in _BACKENDS:
        raise ValueError(f"unknown sandbox backend {backend!r}; choose one of {_BACKENDS}")
    if pool is not None:
        if backend not in ("auto", "docker"):
            raise ValueError(f"a SandboxPool holds Docker sandboxes; backend {backend!r} cannot use one")
        if options:
            raise TypeError(f"options {sorted(options)} conflict with pool: configure the pool instead")
        return await pool.acquire()
    if backend == "local":
        _check_options("local", options, _LOCAL_FIELDS | {"host_workspace", "workspace_writable"})
        opts = dict(options)
        folder, writable = opts.pop("host_workspace", None), bool(opts.pop("workspace_writable", False))
        if folder is not None:
            if not writable:
                raise SandboxError(
                    "the local backend cannot mount a folder read-only (its commands run on the host, "
                    "unconfined); use docker or bwrap, or allow writes (workspace_writable=True)"
                )
            opts["workspace"] = folder
        return LocalSandbox(**opts)
    if backend == "docker":
        return await _docker(options).start()
    if backend == "bwrap":
        return await _bwrap(options).start()
    reasons: list[str] = []
    bwrap_opts = {k: v for k, v in options.items() if k not in _BWRAP_FIELDS}
    docker_opts = {k: v for k, v in options.items() if k not in _DOCKER_FIELDS}
    # a typo must fail loudly, not silently decide which backend runs
    _check_options("auto", options, _DOCKER_FIELDS | _BWRAP_FIELDS)
    try:
        if not docker_opts:
            return await _docker(options).start()
        reasons.append(f"docker: does not take option(s) {sorted(docker_opts)}")
    except SandboxUnavailable as e:
        reasons.append(f"docker: {e}")
    try:
        if not bwrap_opts:
            sb = await _bwrap(options).start()
            _note_fallback(reasons[-1])
            return sb
        reasons.append(f"bwrap: does not take option(s) {sorted(bwrap_opts)}")
    except SandboxUnavailable as e:
        reasons.append(f"bwrap: {e}")
    raise SandboxUnavailable(
        "no isolated sandbox backend works here; " + "; ".join(reasons)
        + ". Install Docker or bubblewrap, or ask for backend='local' to run unconfined on the host."
    )  # fmt: skip
