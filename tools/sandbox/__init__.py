"""Sandboxes: where tools run commands and keep files.

`open_sandbox()` picks the safest backend that works here (Docker, then bubblewrap) and refuses rather
than silently running on the host; `LocalSandbox` (no isolation) is used only when asked for by name.
"""

from .base import ExecResult, Sandbox, SandboxError
from .local import LocalSandbox

__all__ = ["ExecResult", "LocalSandbox", "Sandbox", "SandboxError"]
