"""Triton kernels == their PyTorch references (CPU: TRITON_INTERPRET=1 in a child process; CUDA: natively)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from agentkit.runtime.layers.mhc import split_sinkhorn

_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels import mhc as K
    from agentkit.runtime.layers.mhc import split_sinkhorn
    g = torch.Generator().manual_seed(0)
    for t, iters in ((1, 20), (7, 20), (3, 1), (0, 20)):
        m = torch.randn(t, 24, generator=g) * 3
        scale, base = torch.rand(3, generator=g) + 0.5, torch.randn(24, generator=g)
        got = K.hc_split_sinkhorn(m, scale, base, 4, iters, 1e-6)
        ref = split_sinkhorn(m, scale, base, 4, iters, 1e-6)
        for a, b in zip(got, ref):
            assert a.shape == b.shape, (a.shape, b.shape)
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (a - b).abs().max()
    print("ok")
    """
)


def test_hc_sinkhorn_kernel_matches_reference_interpreted() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: native Triton kernel")
def test_hc_sinkhorn_kernel_matches_reference_cuda() -> None:
    from agentkit.runtime.kernels import mhc as K

    g = torch.Generator().manual_seed(1)
    m = torch.randn(33, 24, generator=g) * 3
    scale, base = torch.rand(3, generator=g) + 0.5, torch.randn(24, generator=g)
    ref = split_sinkhorn(m, scale, base, 4, 20, 1e-6)
    with torch.no_grad():
        got = K.hc_split_sinkhorn(m.cuda(), scale.cuda(), base.cuda(), 4, 20, 1e-6)
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a.cpu(), b, rtol=1e-5, atol=1e-6)
