"""Path confinement and tree copies for backends whose workspace is a host directory.

Sandbox paths are POSIX paths as the sandboxed command sees them: relative ones are under the
workspace, absolute ones must name something inside it (`inner_root` is what the workspace is called
inside the sandbox: the host path for LocalSandbox, `/workspace` under bubblewrap). Symlinks are
resolved on the host before the check, so a link planted by a command cannot lead the file API out.
"""

from __future__ import annotations

import os
import posixpath
import shutil
from pathlib import Path

from .base import SandboxError


def resolve_in(host_root: str, path: str, inner_root: str) -> str:
    """Map a sandbox path to a host path inside `host_root`, or refuse with SandboxError."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise SandboxError(f"invalid sandbox path {path!r}")
    inner = posixpath.normpath(posixpath.join(inner_root, path))
    rel = posixpath.relpath(inner, inner_root)
    if rel == ".." or rel.startswith("../"):
        raise SandboxError(f"path {path!r} is outside the sandbox workspace {inner_root}")
    host = os.path.realpath(os.path.join(host_root, rel))
    root = os.path.realpath(host_root)
    if host != root and not host.startswith(root + os.sep):
        raise SandboxError(f"path {path!r} leads outside the sandbox workspace (through a symlink)")
    return host


def copy_tree_in(src: Path, dest: str) -> None:
    """A directory's contents land in `dest`; a file becomes `dest`."""
    if not src.exists():
        raise SandboxError(f"nothing to upload at {src}")
    try:
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(src, dest)
    except OSError as e:
        raise SandboxError(f"upload of {src} failed: {e}") from e


def copy_tree_out(src: str, dest: Path) -> None:
    """Mirror of copy_tree_in; symlinks are copied as links, never followed out of the workspace."""
    if not os.path.lexists(src):
        raise SandboxError(f"nothing to download at {src}")
    try:
        if os.path.isdir(src):
            shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest, follow_symlinks=False)
    except OSError as e:
        raise SandboxError(f"download of {src} failed: {e}") from e
