"""Labels on every agentkit container, and the reaper that removes what nobody owns any more.

A process that dies by `kill -9` (or a machine that loses power) cannot clean up. Every container
therefore says who made it (host, boot id, pid and that pid's start time, so a recycled pid does not
count as alive; `_owner`), when, and how long it may live; every bubblewrap sandbox leaves the same
facts in its host folder and its cgroup's name. The TTL is also enforced from inside a container: its
only long-lived process is `sleep <ttl>`, so even an engine nobody reaps frees itself.

When the reaper runs: the first sandbox a process opens sweeps once; after that, opening a sandbox or a
pool refill sweeps again once `AGENTKIT_REAP_INTERVAL` seconds (default 30) have passed, and a daemon
thread sweeps at that interval for as long as the process lives, so a long-lived app reaps the
leftovers of a worker killed next to it even if it opens nothing new. `AGENTKIT_REAP_INTERVAL=0` turns
the periodic part off. Operators can sweep by hand: `agentkit sandbox gc`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from . import _cgroup, _hostroot
from ._owner import owner_alive, owner_token

log = logging.getLogger("agentkit.sandbox")

LABEL = "io.agentkit.sandbox"
LABEL_OWNER = f"{LABEL}.owner"
LABEL_SESSION = f"{LABEL}.session"
LABEL_CREATED = f"{LABEL}.created"
LABEL_TTL = f"{LABEL}.ttl"
LABEL_POOL = f"{LABEL}.pool"
DEFAULT_INTERVAL_S = 30.0

__all__ = [
    "LABEL",
    "Report",
    "collect_garbage",
    "ensure_background",
    "is_stale",
    "make_labels",
    "maybe_reap",
    "owner_alive",
    "owner_token",
    "reap_stale",
]

_lock = threading.Lock()
_last: dict[str, float] = {}  # engine (or "host") -> monotonic time of its last sweep
_engines: dict[str, Any] = {}  # engines this process has used: the background sweep visits them
_thread: threading.Thread | None = None


def interval() -> float:
    try:
        return max(0.0, float(os.environ.get("AGENTKIT_REAP_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def make_labels(session: str, ttl: int, pool: str | None = None) -> dict[str, str]:
    labels = {
        LABEL: "1",
        LABEL_OWNER: owner_token(),
        LABEL_SESSION: session,
        LABEL_CREATED: str(int(time.time())),
        LABEL_TTL: str(int(ttl)),
    }
    if pool is not None:
        labels[LABEL_POOL] = pool
    return labels


def is_stale(labels: dict[str, str], now: float | None = None) -> bool:
    now = time.time() if now is None else now
    try:
        expires = int(labels.get(LABEL_CREATED, "0")) + int(labels.get(LABEL_TTL, "0"))
    except ValueError:
        return True
    if now >= expires:
        return True
    return owner_alive(labels.get(LABEL_OWNER, "")) is False


def stale_containers(client: Any) -> list[Any]:
    return [
        c
        for c in client.containers.list(all=True, filters={"label": f"{LABEL}=1"}, ignore_removed=True)
        if is_stale(dict(c.labels))
    ]


def reap_stale(client: Any) -> list[str]:
    """Remove (force, with volumes) every labelled container whose owner is gone or whose TTL passed,
    and every labelled volume no container uses any more.

    Returns the ids removed. Safe to run from many processes at once: removal races are ignored, and
    the engine refuses to remove a volume that is in use.
    """
    import docker.errors

    removed: list[str] = []
    for c in stale_containers(client):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            c.remove(force=True, v=True)
            removed.append(c.id)
    # volumes whose container is gone (removed without `v=True`, or auto-removed by the engine)
    for v in client.volumes.list(filters={"label": f"{LABEL}=1", "dangling": True}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            v.remove()
            removed.append(v.id)
    return removed


def reap_host() -> list[str]:
    """Bubblewrap leftovers on this host: cgroups first (their processes die), then folders and mounts."""
    return [*_cgroup.reap(os.environ.get("AGENTKIT_CGROUP_PARENT")), *_hostroot.reap_stale()]


def _due(key: str) -> bool:
    """True (and the clock reset) if `key` was never swept or its interval has passed."""
    now = time.monotonic()
    with _lock:
        last = _last.get(key)
        every = interval()
        if last is not None and (every == 0 or now - last < every):
            return False
        _last[key] = now
        return True


def maybe_reap(client: Any) -> None:
    """The reaper on the path of every container start (blocking): the first time, then per interval."""
    key = str(getattr(client.api, "base_url", "default"))
    with _lock:
        _engines.setdefault(key, client)
    if _due(key):
        try:
            reap_stale(client)
        except Exception as e:  # a sweep must never stop a sandbox from starting
            log.debug("sandbox reaper: docker sweep failed: %s", e)
    ensure_background()


def _sweep() -> None:
    with _lock:
        engines = list(_engines.items())
    for key, client in engines:
        if _due(key):
            try:
                reap_stale(client)
            except Exception as e:
                log.debug("sandbox reaper: docker sweep of %s failed: %s", key, e)
    if _due("host"):
        try:
            reap_host()
        except Exception as e:
            log.debug("sandbox reaper: host sweep failed: %s", e)


def ensure_background() -> None:
    """Start the periodic sweep (a daemon thread) once per process; sweep the host now if it is due."""
    global _thread
    if _due("host"):
        try:
            reap_host()
        except Exception as e:
            log.debug("sandbox reaper: host sweep failed: %s", e)
    every = interval()
    with _lock:
        if every == 0 or (_thread is not None and _thread.is_alive()):
            return
        _thread = threading.Thread(target=_loop, name="agentkit-sandbox-reaper", daemon=True)
        _thread.start()


def _loop() -> None:
    while True:
        every = interval()
        if every == 0:
            return
        time.sleep(every / 2)  # wake twice per interval: each key is swept once its interval is over
        _sweep()


@dataclass(slots=True)
class Report:
    """What a garbage collection found (and, unless a dry run, removed)."""

    containers: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def collect_garbage(*, docker: bool = True, bwrap: bool = True, dry_run: bool = False) -> Report:
    """Everything stale on this host and its Docker engine, for `agentkit sandbox gc`."""
    report = Report()
    if docker:
        try:
            from ._engine import docker_client

            client = docker_client()
        except Exception as e:
            report.notes.append(f"docker: skipped ({e})")
        else:
            if dry_run:
                report.containers = [c.id for c in stale_containers(client)]
                report.volumes = [
                    v.id for v in client.volumes.list(filters={"label": f"{LABEL}=1", "dangling": True})
                ]
            else:
                volume_ids = {v.id for v in client.volumes.list(filters={"label": f"{LABEL}=1"})}
                for rid in reap_stale(client):
                    (report.volumes if rid in volume_ids else report.containers).append(rid)
    if bwrap:
        parent = os.environ.get("AGENTKIT_CGROUP_PARENT")
        if dry_run:
            report.folders = _hostroot.stale_roots()
            report.cgroups = _cgroup.stale(parent)
        else:
            report.cgroups = _cgroup.reap(parent)
            report.folders = _hostroot.reap_stale()
    return report
