"""Triton kernels of the runtime, each a second implementation of a torch reference it is tested against.

Every module offers `supported(x)` (a CUDA tensor, Triton importable, no autograd: the kernels have no
backward) and the shared switch below, so one environment variable turns them all off for A/B runs.
"""

from __future__ import annotations

import functools
import os


def enabled() -> bool:
    """`AGENTKIT_KERNELS=0` keeps every op on its torch reference (for A/B runs and debugging)."""
    return os.environ.get("AGENTKIT_KERNELS", "1") != "0"


def family_on(module: str) -> bool:
    """`AGENTKIT_KERNELS_OFF=moe,indexer` turns single kernel files off (by module name) and keeps the rest.

    Why: a kernel that fails or misbehaves on one GPU can be isolated in a single run by turning its
    family off, instead of losing every kernel's speed with `AGENTKIT_KERNELS=0`.
    """
    off = os.environ.get("AGENTKIT_KERNELS_OFF", "")
    return not off or module.rsplit(".", 1)[-1] not in _parse(off)


@functools.lru_cache(maxsize=8)
def _parse(off: str) -> frozenset[str]:
    return frozenset(x.strip() for x in off.split(",") if x.strip())


def tune(name: str, default: int) -> int:
    """A launch parameter (tile width, warps, pipeline stages) from `AGENTKIT_KERNEL_TUNE=name=value,...`,
    else `default`.

    Why: the lent GPU is measured in few, short calls; a benchmark sweeps several settings in one process
    (`bench/runtime.py --tune`) and the best measured one becomes the default here. A setting changes only
    the tiling: every result stays the reference's up to summation order."""
    return _tuning(os.environ.get("AGENTKIT_KERNEL_TUNE", "")).get(name, default)


@functools.lru_cache(maxsize=16)
def _tuning(spec: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in spec.split(","):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = int(v)
    return out


__all__ = ["enabled", "family_on", "tune"]
