"""Triton kernels of the runtime, each a second implementation of a torch reference it is tested against.

Every module offers `supported(x)` (a CUDA tensor, Triton importable, no autograd: the kernels have no
backward) and the shared switch below, so one environment variable turns them all off for A/B runs.
"""

from __future__ import annotations

import os


def enabled() -> bool:
    """`AGENTKIT_KERNELS=0` keeps every op on its torch reference (for A/B runs and debugging)."""
    return os.environ.get("AGENTKIT_KERNELS", "1") != "0"


__all__ = ["enabled"]
