"""A user's folder as a sandbox's /workspace: who the sandboxed code must run as to use it, or a refusal.

Docker and bubblewrap both mount the folder itself (a bind mount, read-only unless asked otherwise), so
what the code sees and writes is the user's files, with no copy to fall out of date. Sandboxed code
never runs as root, so it acts on the folder as the folder's owner: writes then land as the user's own
files. A folder owned by root can still be mounted read-only (its world-readable files are readable by
the usual sandbox user), never writable: that would need root inside, which the sandbox never grants.
"""

from __future__ import annotations

import os

from .base import SandboxError


def workspace_owner(path: str, writable: bool) -> tuple[int, int] | None:
    """(uid, gid) the sandbox should run as for `path`, or None to keep its usual user.

    Raises SandboxError for a missing folder, or a writable mount of a folder owned by root.
    """
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise SandboxError(f"workspace {path!r} is not a directory")
    st = os.stat(real)
    if st.st_uid != 0:
        return st.st_uid, st.st_gid
    if writable:
        raise SandboxError(
            f"cannot mount {path} writable: it belongs to root and sandboxed code never runs as root; "
            f"give it to an ordinary user (e.g. chown -R 1000:1000 {path}) or mount it read-only"
        )
    return None


def check_reachable(path: str, uid: int, gid: int) -> None:
    """Refuse, clearly, a folder that `uid` cannot reach: bubblewrap opens the bind source as the
    sandbox's host user, so every folder above it must be searchable by that user (mode bits only)."""
    real = os.path.realpath(path)
    chain = [real]
    while os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
    for d in reversed(chain):
        st = os.stat(d)
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            raise SandboxError(
                f"the sandbox's user (host uid {uid}) cannot reach {path}: {d} is not searchable by it "
                f"(mode {st.st_mode & 0o777:04o}); put the folder somewhere it can reach or make {d} "
                "searchable (chmod o+x)"
            )


def read_only_refusal(path: str) -> SandboxError:
    """The error a file write gets when the workspace is the user's folder, mounted read-only."""
    return SandboxError(
        f"the workspace is read-only (it is the host folder {path}, mounted read-only); "
        "open the sandbox with workspace_writable=True (CLI: --writable) to allow writes"
    )
