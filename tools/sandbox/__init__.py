"""Sandboxes: where tools run commands and keep files.

`open_sandbox()` picks the safest backend that works here (Docker, then bubblewrap) and refuses rather
than silently running on the host; `LocalSandbox` (no isolation) is used only when asked for by name.
"""

from .base import DEFAULT_READ_LIMIT, ExecResult, FileTooLarge, Sandbox, SandboxError, SandboxUnavailable
from .bubblewrap import BwrapConfig, BwrapSandbox
from .docker import DEFAULT_IMAGE, DockerConfig, DockerSandbox
from .local import LocalSandbox
from .pool import SandboxPool
from .select import open_sandbox

__all__ = [
    "DEFAULT_IMAGE",
    "DEFAULT_READ_LIMIT",
    "BwrapConfig",
    "BwrapSandbox",
    "DockerConfig",
    "DockerSandbox",
    "ExecResult",
    "FileTooLarge",
    "LocalSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxPool",
    "SandboxUnavailable",
    "open_sandbox",
]
