"""What the kernel sweeps (`index_scores.py`, `moe_pairs.py`, `moe_prefill.py`, `sparse_prefill.py`) share:
timing one call, and running it under one `AGENTKIT_KERNEL_TUNE` setting.

Why one place: each sweep times a call the same way (CUDA events, the best of a few repetitions after one
warm-up, so compiles and cold caches stay out) and must restore the environment whatever the setting did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def timed(fn: Any, reps: int = 5) -> float:
    """Milliseconds of `fn()`: the best of `reps` runs after a warm-up (wall time without CUDA: a CPU dry
    run of a sweep under TRITON_INTERPRET=1)."""
    if not torch.cuda.is_available():
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b))
    return best


@contextmanager
def tuned(spec: str) -> Iterator[None]:
    """Run the body with `AGENTKIT_KERNEL_TUNE=spec` (over the kernels' defaults), then unset it."""
    os.environ["AGENTKIT_KERNEL_TUNE"] = spec
    try:
        yield
    finally:
        del os.environ["AGENTKIT_KERNEL_TUNE"]
