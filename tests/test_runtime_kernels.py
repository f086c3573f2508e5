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


_SPARSE_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels.sparse_attn import sparse_attn, sparse_attn_ref
    g = torch.Generator().manual_seed(0)
    # (queries, heads, dim, candidates, rows, splits): odd sizes, one block, many splits, heads < a block
    cases = [(1, 4, 64, 40, 100, None), (3, 20, 48, 37, 57, 2), (2, 16, 32, 5, 9, 1), (1, 8, 64, 70, 200, 3),
             (2, 3, 16, 33, 10, 4)]
    for t, h, d, k, n, splits in cases:
        q, kv = torch.randn(t, h, d, generator=g), torch.randn(n, d, generator=g)
        idx = torch.randint(0, n, (t, k), generator=g)
        idx[:, ::3] = -1  # empty slots
        if t > 1:
            idx[1] = -1  # a query with no candidate at all: only the sink, so zeros
        sink = torch.randn(h, generator=g)
        got = sparse_attn(q, kv, idx, sink, d ** -0.5, splits=splits, block_h=16, block_k=16)
        ref = sparse_attn_ref(q, kv, idx, sink, d ** -0.5)
        err = (got - ref).abs().max()
        assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5), (t, h, d, k, n, splits, err)
        assert t < 2 or torch.all(got[1] == 0)
    q, kv = torch.randn(2, 16, 64, generator=g).bfloat16(), torch.randn(50, 64, generator=g).bfloat16()
    idx, sink = torch.randint(-1, 50, (2, 40), generator=g), torch.randn(16, generator=g)
    got = sparse_attn(q, kv, idx, sink, 0.125, splits=2, block_k=16).float()
    ref = sparse_attn_ref(q, kv, idx, sink, 0.125).float()
    assert torch.allclose(got, ref, rtol=2e-2, atol=2e-2), (got - ref).abs().max()  # bf16 probabilities

    # the model's decode path through the kernel == its torch path (window, CSA with the indexer, HCA)
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import sparse_attn as SA
    from agentkit.runtime.model import V4Model
    model = V4Model(ModelConfig.preset("tiny-test", window_size=16)).init_random_(3).eval()
    ids = torch.randint(0, model.config.vocab_size, (70,), generator=g).tolist()
    def run(kernel):
        SA.supported = (lambda q: True) if kernel else (lambda q: False)
        st, out = model.new_state(), []
        with torch.no_grad():
            model.extend(st, ids[:50])
            for tok in ids[50:]:
                out.append(model.extend(st, [tok])[-1])
        return torch.stack(out)
    a, b = run(True), run(False)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
    print("ok")
    """
)


def test_sparse_attention_kernel_matches_reference_interpreted() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _SPARSE_CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


_LOWP_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels import lowp_gemm as LG
    from agentkit.runtime.layers.lowp import Linear, fp8_roundtrip
    g = torch.Generator().manual_seed(0)
    # e4m3 ties (x.0625 lies half way between 1.0 and 1.125 at scale 1: ties go to the even code) and the
    # amax-floor block, ragged N, several K blocks, with and without the activation rounding
    ties = torch.tensor([448.0, 1.0625, 1.1875, -2.125, 0.0029296875, 1e-3, 240.0, 3.0] * 16)
    shapes = ((1, 130, 256, True), (3, 64, 384, False), (17, 200, 256, True), (2, 128, 128, True),
              (1, 64, 1024, True))  # the last: K split over programs
    for fmt in ("fp8", "fp4"):
        for m, n, k, act in shapes:
            lin = Linear(k, n, fmt)
            lin.set_dense(torch.randn(n, k, generator=g) * 0.05)
            x = torch.randn(m, k, generator=g) * 3
            x[:, :128] *= 1e-6
            x[0, -128:] = ties
            ref = (fp8_roundtrip(x, 128) if act else x) @ lin.dense(torch.float32).t()
            got = LG.lowp_linear(x, lin.weight, lin.scale, fmt, act)
            tol = 1e-5 * ref.abs().max().item()
            assert torch.allclose(got, ref, rtol=1e-5, atol=tol), (fmt, m, n, k, act, (got - ref).abs().max())

    # every code of both formats (subnormals, both zeros, every exponent; scales above and below 1) decodes
    # exactly as the torch dequantization: an identity input reads the weight's columns back
    for fmt in ("fp8", "fp4"):
        lin = Linear(256, 128, fmt)
        codes = torch.arange(256, dtype=torch.int32).repeat(128, 1)
        sc = torch.randint(110, 140, lin.scale.shape, dtype=torch.uint8, generator=g)
        if fmt == "fp8":
            codes = torch.where((codes & 0x7F) == 0x7F, 0, codes)  # no NaN codes
            lin.weight.copy_(codes.to(torch.uint8).view(torch.float8_e4m3fn))
        else:
            lin.weight.copy_(codes[:, :128].to(torch.uint8).view(torch.int8))
        lin.scale.view(torch.uint8).copy_(sc)
        got = LG.lowp_linear(torch.eye(256), lin.weight, lin.scale, fmt, False)
        assert torch.equal(got, lin.dense(torch.float32).t()), fmt
    # the input rounding kernel == the torch reference, bit for bit
    x = torch.randn(5, 384, generator=g) * 10
    x[1, :128] = ties
    assert torch.equal(LG.quant_rows(x), fp8_roundtrip(x, 128))

    # the quantized model's decode with every kernel on == its torch path
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import sparse_attn as SA
    from agentkit.runtime.model import V4Model
    cfg = ModelConfig.preset("tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4",
                             moe_inter_dim=64, window_size=16)
    model = V4Model(cfg).init_random_(4).eval()
    ids = torch.randint(0, cfg.vocab_size, (40,), generator=g).tolist()
    def run(kernels):
        SA.supported = LG.supported = (lambda x: True) if kernels else (lambda x: False)
        st, out = model.new_state(), []
        with torch.no_grad():
            model.extend(st, ids[:30])
            for tok in ids[30:]:
                out.append(model.extend(st, [tok])[-1])
        return torch.stack(out)
    a, b = run(True), run(False)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
    print("ok")
    """
)


def test_fp8_fp4_linear_kernels_match_reference_interpreted() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _LOWP_CHILD], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
