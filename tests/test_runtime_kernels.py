"""Triton kernels == their PyTorch references (CPU: TRITON_INTERPRET=1 in a child process; CUDA: natively)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from agentkit.runtime.layers.mhc import split_sinkhorn


def _interpreted(child: str, timeout: int = 600) -> None:
    """Run a child script under Triton's CPU interpreter; it prints "ok" (last) once its asserts held."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-c", child]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


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
    _interpreted(_CHILD, timeout=300)


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
             (2, 3, 16, 33, 10, 4), (1, 4, 16, 1200, 1300, 60)]  # the last: more splits than one fold block
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
    _interpreted(_SPARSE_CHILD, timeout=600)


_PREFILL_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels.sparse_prefill import candidates, sparse_prefill, sparse_prefill_ref
    from agentkit.runtime.kernels.sparse_attn import sparse_attn_ref
    g = torch.Generator().manual_seed(0)
    # (queries, w_old, pos, window, entries, ratio, top-k, heads, dim): window only from position 0 and
    # mid-sequence, a full old window, HCA at ratio 4 and 8 with entries becoming visible inside the chunk,
    # CSA with a top-k longer than the visible entries (invisible ones skipped), odd sizes, heads < a block
    cases = [(37, 0, 0, 16, 0, 0, 0, 4, 32), (19, 15, 100, 16, 0, 0, 0, 3, 48),
             (40, 15, 100, 16, 35, 4, 0, 5, 32), (33, 7, 7, 8, 5, 8, 0, 4, 16),
             (41, 15, 300, 16, 85, 4, 9, 6, 32), (23, 0, 0, 16, 5, 4, 8, 4, 64)]
    for dtype in (torch.float32, torch.bfloat16):
        for n, w_old, pos, window, n_comp, ratio, k, h, d in cases:
            q = torch.randn(n, h, d, generator=g).to(dtype)
            kw = torch.randn(w_old + n, d, generator=g).to(dtype)
            comp = torch.randn(n_comp, d, generator=g).to(dtype) if n_comp else None
            order = None
            if k:  # distinct entries per query, some beyond what the query can see yet
                order = torch.stack([torch.randperm(n_comp, generator=g)[:k] for _ in range(n)])
            sink = torch.randn(h, generator=g)
            for bh, bk, bq in ((4, 16, 1), (16, 32, 1), (4, 16, 4), (2, 16, 8)):  # bq: queries per program
                got = sparse_prefill(q, kw, w_old, pos, window, comp, order, ratio, sink, d ** -0.5,
                                     block_h=bh, block_k=bk, block_q=bq)
                ref = sparse_prefill_ref(q, kw, w_old, pos, window, comp, order, ratio, sink, d ** -0.5)
                tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: probabilities rounded before the sum
                err = (got.float() - ref.float()).abs().max()
                assert got.dtype == dtype and torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol), (
                    dtype, n, w_old, pos, n_comp, k, bh, bk, bq, err)
    # the candidate lists themselves: the window is the query and the window-1 keys before it
    idx = candidates(3, 2, 10, 4, 0, 0, None, torch.device("cpu"))
    assert idx.tolist() == [[0, 1, 2, -1, -1], [0, 1, 2, 3, -1], [-1, 1, 2, 3, 4]], idx.tolist()

    # the model's chunked prefill through the kernel == its torch path (window, CSA with the indexer, HCA),
    # chunks longer than the decode kernel's rows, from position 0 and mid-sequence
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import sparse_prefill as SP
    from agentkit.runtime.model import V4Model
    model = V4Model(ModelConfig.preset("tiny-test", window_size=16)).init_random_(3).eval()
    ids = torch.randint(0, model.config.vocab_size, (140,), generator=g).tolist()
    def run(kernel):
        SP.supported = (lambda q: True) if kernel else (lambda q: False)
        st, out = model.new_state(), []
        with torch.no_grad():
            for a, b in ((0, 37), (37, 100), (100, 140)):
                out.append(model.extend(st, ids[a:b]))
        return torch.cat(out)
    a, b = run(True), run(False)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), (a - b).abs().max()
    print("ok")
    """
)


def test_sparse_prefill_kernel_matches_reference_interpreted() -> None:
    _interpreted(_PREFILL_CHILD, timeout=900)


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
    # fp32 results without fp32 copies: plain bf16 / fp32 weights read as stored (the RAW form), and the
    # quantized ones through Linear.fp32 (the compressor's math: no input rounding)
    from agentkit.runtime.layers.lowp import matmul_t_fp32
    real_supported, LG.supported = LG.supported, lambda x: True  # the layers' CUDA branch, interpreted
    for xdt, wdt in ((torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float32,) * 2):
        for m, n, k in ((1, 24, 64), (3, 130, 300), (1, 64, 1024)):
            x = (torch.randn(m, k, generator=g) * 2).to(xdt)
            w = (torch.randn(n, k, generator=g) * 0.1).to(wdt)
            ref = x.float() @ w.float().t()
            got = LG.lowp_linear(x, w, None, "float", False, torch.float32)
            assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (xdt, wdt)
            assert torch.allclose(matmul_t_fp32(x, w), ref, rtol=1e-5, atol=1e-5)
    for fmt in ("fp8", "fp4"):
        lin = Linear(256, 96, fmt)
        lin.set_dense(torch.randn(96, 256, generator=g) * 0.05)
        x = torch.randn(2, 256, generator=g).bfloat16()
        ref = x.float() @ lin.dense(torch.float32).t()
        assert torch.allclose(lin.fp32(x), ref, rtol=1e-5, atol=1e-5), fmt
    # the grouped form (attention's wo_a): output group j = input group j times W's rows of group j, as
    # attention's bmm over the dequantized weight; groups of one and several tiles, one and several rows
    for groups, rows, k, m in ((4, 64, 256, 1), (2, 128, 384, 3), (8, 64, 128, 2)):
        lin = Linear(k, groups * rows, "fp8")
        lin.set_dense(torch.randn(groups * rows, k, generator=g) * 0.05)
        o = torch.randn(m, groups * k, generator=g)
        wa = lin.dense(torch.float32).view(groups, rows, k)
        ref = torch.bmm(o.view(m, groups, k).transpose(0, 1), wa.transpose(1, 2))
        ref = ref.transpose(0, 1).reshape(m, -1)
        got = LG.lowp_linear(o, lin.weight, lin.scale, "fp8", False, groups=groups)
        assert got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-5, atol=1e-5), (groups, rows, k, m)
    LG.supported = real_supported
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
    _interpreted(_LOWP_CHILD, timeout=900)


_POINTWISE_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels import pointwise as P
    from agentkit.runtime.layers import lowp, norms, rope
    P.supported = lambda x: False  # the references below stay torch; the kernels are called directly
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        # norms: odd widths, one row, no rows, a width over one block, a strided view
        for shape in ((1, 64), (3, 5, 33), (0, 16), (2, 4100), (7, 1)):
            x = (torch.randn(shape, generator=g) * 3).to(dtype)
            w = (torch.rand(shape[-1], generator=g) + 0.5).to(dtype)
            ref = norms.rms_unweighted(x, 1e-6)
            got = P.rms_norm(x, None, 1e-6, dtype)
            assert got.shape == ref.shape and got.dtype == ref.dtype
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            assert torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol), (shape, dtype)
            rn = norms.RMSNorm(shape[-1], 1e-6, dtype)
            rn.weight.data.copy_(w)
            for od in (None, torch.float32):
                ref = rn(x, od)
                got = P.rms_norm(x, w, 1e-6, od or dtype)
                assert got.dtype == ref.dtype
                assert torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol), (shape, dtype, od)
        xv = torch.randn(6, 40, generator=g).to(dtype)[:, 3:35]  # rows not contiguous in memory
        ref, got = norms.rms_unweighted(xv, 1e-6), P.rms_norm(xv, None, 1e-6, dtype)
        assert torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)
        # rope: heads or not, no nope dims, far positions, inverse (undoes the forward)
        cases = (((3, 64), 8, False), ((5, 4, 48), 16, True), ((2, 3, 32), 16, False), ((1, 2, 16), 4, True))
        for shape, half, far in cases:
            x = torch.randn(shape, generator=g).to(dtype)
            pos = torch.randint(0, 1 << 20 if far else 300, (shape[0],), generator=g)
            f = torch.rand(half, generator=g)
            for inv in (False, True):
                ref = rope.apply_rope(x, pos, f, inverse=inv)
                got = P.rope(x, pos, f, inv)
                assert got.dtype == ref.dtype
                err = (got.float() - ref.float()).abs().max().item()
                bound = (1e-4 if dtype == torch.float32 else 2e-2) * max(1.0, x.abs().max().item())
                assert err <= bound, (shape, inv, err)
            back = P.rope(P.rope(x.float(), pos, f, False), pos, f, True)
            assert torch.allclose(back, x.float(), atol=1e-4), shape
        # quantization simulations: bit-exact, incl. zeros, tiny values, exact ties, a padded last block
        for shape in ((4, 448), (3, 2, 96), (1, 70), (2, 512)):
            mag = torch.exp2(torch.randint(-20, 12, shape, generator=g).float())
            x = torch.randn(shape, generator=g) * mag
            x.view(-1)[:5] = torch.tensor([0.0, 448.0, -0.25, 2.0**-12, 1.5])
            x = x.to(dtype)
            for ref, got in (
                (lowp.fp8_roundtrip(x), P.roundtrip(x, "fp8", 64)),
                (lowp.fp4_roundtrip(x), P.roundtrip(x, "fp4", 32)),
                (lowp.fp8_kv_roundtrip(x, 16), P.roundtrip(x, "fp8", 64, keep=16)),
            ):
                assert got.dtype == ref.dtype and torch.equal(got, ref), (shape, dtype)
        ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, -0.75, -2.5, 0.1, 4.9]
        ties = torch.tensor([ties + [0.0] * 20])
        assert torch.equal(P.roundtrip(ties, "fp4", 32), lowp.fp4_roundtrip(ties))
        # the experts' clamped SwiGLU
        import torch.nn.functional as F
        for n in (1, 7, 3000):
            a = (torch.randn(2, n, generator=g) * 8).to(dtype)
            b = (torch.randn(2, n, generator=g) * 8).to(dtype)
            ref = (F.silu(a.float().clamp(max=10.0)) * b.float().clamp(-10.0, 10.0)).to(dtype)
            got = P.swiglu(a, b, 10.0, dtype)
            assert got.dtype == ref.dtype and torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol), n
        # mHC: the streams collapsed by pre and expanded by post / comb (hc_pre's last step, hc_post)
        from agentkit.runtime.kernels import mhc as MK
        from agentkit.runtime.layers import mhc
        MK.supported = lambda *a: False
        for t, d in ((1, 64), (3, 1500), (0, 8)):
            x = torch.randn(t, 4, d, generator=g).to(dtype)
            y = torch.randn(t, d, generator=g).to(dtype)
            pre, post = torch.rand(t, 4, generator=g), torch.rand(t, 4, generator=g) * 2
            comb = torch.rand(t, 4, 4, generator=g)
            ref = (pre.unsqueeze(-1) * x.float()).sum(dim=1).to(dtype)
            got = MK.hc_collapse(pre, x)
            assert got.dtype == ref.dtype and torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)
            ref, got = mhc.hc_post(y, x, post, comb), MK.hc_expand(y, x, post, comb)
            assert got.dtype == ref.dtype and torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)
    print("ok")
    """
)


def test_pointwise_kernels_match_references_interpreted() -> None:
    """RMSNorm, RoPE, the FP8 / FP4 roundtrips, SwiGLU and the mHC collapse / expand as kernels == the torch
    references (the roundtrips bit for bit; the rest to fp32 rounding, since sum orders and the device's
    cos / sin / rsqrt differ)."""
    _interpreted(_POINTWISE_CHILD, timeout=600)


_POOL_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.decode import _pool_step, _tails
    from agentkit.runtime.kernels import compressor as K
    from agentkit.runtime.layers.compressor import Compressor
    K.supported = lambda *a: False  # _pool_step stays the torch reference; the kernel is called directly
    g = torch.Generator().manual_seed(0)
    for ratio, width in ((4, 48), (4, 16), (8, 40), (128, 24)):
        comp = Compressor(16, width, ratio, 1e-6, torch.float32, torch.float32)
        c = comp.c
        ref_kv, ref_sc = _tails(3, ratio, width, torch.device("cpu"))
        got_kv, got_sc = ref_kv.clone(), ref_sc.clone()
        slots = torch.tensor([2, 0])  # two sequences, in other slots, at other positions
        pos = torch.tensor([0, 5])
        for step in range(2 * ratio + 3):  # crosses block ends (the roll) for both
            kv = torch.randn(2, c * width, generator=g)
            sc = torch.randn(2, c * width, generator=g) * 3
            ref = _pool_step(comp, ref_kv, ref_sc, kv, sc, pos, slots)
            got = K.pool_step(got_kv, got_sc, kv, sc, pos, slots, ratio, width)
            assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6), (ratio, step, (got - ref).abs().max())
            assert torch.equal(got_kv, ref_kv) and torch.equal(got_sc, ref_sc), (ratio, step)
            pos = pos + 1
    print("ok")
    """
)


def test_compressor_pool_step_kernel_matches_reference_interpreted() -> None:
    """The compressor's decode update (write, gated pooling, roll) as a kernel == `decode._pool_step`: the
    pooled entries to fp32 rounding, the tails it leaves byte for byte, across block ends, two slots."""
    _interpreted(_POOL_CHILD, timeout=600)


_MOE_SUM_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels import moe as MK
    g = torch.Generator().manual_seed(0)
    # ties in expert index (hash layers may repeat one), the skipped index E, odd k, one and several tokens
    for t, k, d, e in ((1, 6, 100, 16), (5, 3, 600, 8), (2, 2, 64, 4)):
        x = torch.randn(t, d, generator=g)
        w1, w3 = torch.randn(e, 32, d, generator=g) * 0.1, torch.randn(e, 32, d, generator=g) * 0.1
        w2 = torch.randn(e, d, 32, generator=g) * 0.1
        idx = torch.randint(0, e, (t, k), generator=g)
        idx[0, -1] = idx[0, 0]
        weights = torch.rand(t, k, generator=g)
        args = (x, weights, idx, (w1, w3, w2), None, "float")
        a = MK.fused_moe(*args, act_quant=False, limit=10.0, ordered_kernel=True)
        b = MK.fused_moe(*args, act_quant=False, limit=10.0, ordered_kernel=False)
        assert torch.equal(a, b), (t, k, (a - b).abs().max())
        idx[-1, 1] = e  # another rank's expert (expert parallel): an exact zero term
        a = MK.fused_moe(*args, act_quant=False, limit=10.0, partial=True, ordered_kernel=True)
        b = MK.fused_moe(*args, act_quant=False, limit=10.0, partial=True, ordered_kernel=False)
        assert torch.equal(a, b), (t, k)
    print("ok")
    """
)


def test_moe_ordered_sum_kernel_equals_sorted_sum_interpreted() -> None:
    """Each token's expert terms summed in ascending expert order by one kernel == argsort + gather + adds,
    bit for bit (the same fp32 additions in the same order), with repeated and skipped experts."""
    _interpreted(_MOE_SUM_CHILD, timeout=600)


_ROUTE_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import moe as MK
    from agentkit.runtime.layers.moe import Gate
    g = torch.Generator().manual_seed(0)
    cfg = ModelConfig.preset("tiny-test")
    for e, k, hashed in ((16, 6, False), (8, 2, True), (12, 3, False), (5, 5, True)):
        c = ModelConfig.preset("tiny-test", n_routed_experts=e, n_activated_experts=k)
        gate = Gate(c, hashed, torch.float32)
        with torch.no_grad():
            gate.weight.copy_(torch.randn(gate.weight.shape, generator=g) * 0.3)
            if hashed:
                rows = [torch.randperm(e, generator=g)[:k] for _ in range(c.vocab_size)]
                gate.tid2eid.copy_(torch.stack(rows))
            else:
                gate.bias.copy_(torch.randn(e, generator=g) * 0.5)
        for t in (1, 3, 7):
            mag = torch.tensor([0.01, 1.0, 40.0])[torch.arange(t) % 3, None]
            x = torch.randn(t, c.dim, generator=g) * mag
            ids = torch.randint(0, c.vocab_size, (t,), generator=g)
            with torch.no_grad():
                rw, ri = gate._reference(x, ids)
                raw = x @ gate.weight.t()
                bias, tid, tok = (None, gate.tid2eid, ids) if hashed else (gate.bias, None, None)
                w, i, blocks = MK.route(raw, k, c.route_scale, bias, tid, tok, blocks=True)
            assert i.dtype == ri.dtype and torch.equal(i, ri), (e, k, t, i, ri)
            assert torch.allclose(w, rw, rtol=1e-6, atol=1e-7), (e, k, t, (w - rw).abs().max())
            if t == 1:
                ref_blocks = MK.route_blocks(ri, e, 16)
                assert all(torch.equal(a, b) for a, b in zip(blocks, ref_blocks)), (blocks, ref_blocks)
            else:
                assert blocks is None
    # scores far below zero: softplus(x) ~ exp(x) must not collapse to 0 (log1p, not log(1 + y))
    raw = torch.tensor([[-30.0, -31.0, -35.0, -40.0]])
    w, i, _ = MK.route(raw, 2, 1.0, torch.zeros(4))
    ref = torch.sqrt(torch.nn.functional.softplus(raw))[0, :2]
    assert torch.allclose(w[0], ref / ref.sum(), rtol=1e-5), (w, ref / ref.sum())
    print("ok")
    """
)


def test_router_kernel_matches_gate_reference_interpreted() -> None:
    """The router after its product (sqrt-softplus, bias or hash selection, normalization) as one kernel ==
    `Gate`'s torch ops: the same experts in the same order, weights to fp32 rounding, scores from tiny to
    above softplus' threshold of 20, and one token's block tables == `route_blocks`'."""
    _interpreted(_ROUTE_CHILD, timeout=600)


_TOPK_CHILD = textwrap.dedent(
    """
    import torch
    from agentkit.runtime.kernels import indexer as IK
    g = torch.Generator().manual_seed(0)
    # (length, score kind, k): the interpreter sorts slowly, so few long rows
    cases = ((1, "ties", 1), (5, "ties", 2), (5, "fine", 5), (300, "ties", 1), (300, "ties", 64),
             (300, "ties", 300), (300, "fine", 64), (600, "fine", 512))  # fmt: skip
    for n, kind, k in cases:
        rows = 2
        if kind == "ties":  # exact ties, as ReLU makes them; -0.0 next to +0.0 in the first row
            scores = torch.randint(-3, 4, (rows, n), generator=g).float().clamp_min(0)
            scores[0] = -scores[0]
        else:
            scores = torch.randn(rows, n, generator=g)
        visible = torch.randint(0, n + 1, (rows, 1), generator=g)
        visible[-1] = n
        scores = scores.masked_fill(torch.arange(n)[None] >= visible, float("-inf"))
        want = torch.sort(scores, dim=-1, descending=True, stable=True).indices[:, :k]
        got = IK.topk_stable(scores, k)
        finite = scores.gather(1, want).isfinite()
        assert got.dtype == torch.int64 and got.shape == (rows, k)
        assert torch.equal(scores.gather(1, got), scores.gather(1, want)), (n, k)
        assert torch.equal(got[finite], want[finite]), (n, k)
        assert all(len(set(r.tolist())) == k for r in got)
    print("ok")
    """
)


def test_stable_topk_kernel_equals_the_stable_sort_prefix_interpreted() -> None:
    """The one-kernel top-k (a bitonic sort of (score, index) keys) == the first k of torch's stable
    descending sort: same entries in the same order wherever the score is finite, on rows of exact ties
    (zeros of both signs), random scores, invisible -inf tails and lengths that are not powers of two."""
    _interpreted(_TOPK_CHILD, timeout=600)


_TUNE_CHILD = textwrap.dedent(
    """
    import os, torch
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.kernels import lowp_gemm as LG, moe as MK
    from agentkit.runtime.layers.lowp import Linear, fp8_roundtrip
    from agentkit.runtime.model import V4Model
    g = torch.Generator().manual_seed(0)
    def tuned(spec, fn):
        os.environ["AGENTKIT_KERNEL_TUNE"] = spec
        try:
            return fn()
        finally:
            del os.environ["AGENTKIT_KERNEL_TUNE"]
    # FP4 experts: decode's per-pair programs == the expert blocks (moe_pairs_max=0), whatever their tile
    # width, warps, groups per loop step (8, 16: a 1x128 input block's scale from 4 of them) and code
    # decode; a skipped pair (another rank's expert) adds an exact zero on both paths
    q = dict(weight_format="quantized", dtype="fp8", expert_dtype="fp4")
    cfg = ModelConfig.preset("tiny-test", dim=256, moe_inter_dim=192, n_routed_experts=8,
                             n_activated_experts=3, **q)
    for dtype in (torch.float32, torch.bfloat16):
        moe = V4Model(cfg, dtype=dtype).init_random_(1).layers[3].ffn
        st, first = moe.stacked(), next(iter(moe.experts))
        w, s = (st["w1"], st["w3"], st["w2"]), (st["s1"], st["s3"], st["s2"])
        for t in (1, 2):
            x = (torch.randn(t, cfg.dim, generator=g) * 2).to(dtype)
            weights = torch.rand(t, 3, generator=g)
            idx = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(t)])
            for partial in (False, True):
                if partial:
                    idx[-1, 1] = 8
                def run():
                    return MK.fused_moe(x, weights, idx, w, s, "fp4", act_quant=True, limit=first.limit,
                                        partial=partial)
                ref = tuned("moe_pairs_max=0", run)
                for spec in ("", "moe_pairs_bn=16,moe_pairs_warps=2", "moe_pairs_bn=64,moe_pairs_warps=8",
                             "moe_pairs_groups=8,moe_pairs_dec=1", "moe_pairs_groups=16"):
                    got = tuned(spec, run)
                    tol = 1e-6 * ref.abs().max().item()
                    assert torch.allclose(got, ref, rtol=1e-6, atol=tol), (dtype, t, partial, spec)
    # a prefill's expert blocks (> 512 pairs): every tile (rows, width, warps, stages) gives the same sums,
    # FP4 experts (fp32 activations) and bf16 ones (bf16 rows and weights straight to the dot)
    for dtype, fmt in ((torch.float32, "fp4"), (torch.bfloat16, "float")):
        moe = V4Model(cfg, dtype=dtype).init_random_(1).layers[3].ffn
        st, first = moe.stacked(), next(iter(moe.experts))
        w, s = (st["w1"], st["w3"], st["w2"]), (st["s1"], st["s3"], st["s2"])
        t = 172  # 516 pairs: the prefill blocks
        x = (torch.randn(t, cfg.dim, generator=g) * 2).to(dtype)
        weights = torch.rand(t, 3, generator=g)
        idx = torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(t)])
        wf = tuple(m.to(dtype) for m in (torch.randn(8, 192, 256, generator=g) * 0.05,
                                         torch.randn(8, 192, 256, generator=g) * 0.05,
                                         torch.randn(8, 256, 192, generator=g) * 0.05))
        ww, ss = (w, s) if fmt == "fp4" else (wf, None)
        def run():
            return MK.fused_moe(x, weights, idx, ww, ss, fmt, act_quant=fmt == "fp4", limit=first.limit)
        ref = tuned("", run)
        for spec in ("moe_bm=128,moe_bn=32,moe_big_warps=8", "moe_bm=32,moe_bn=128,moe_big_stages=2"):
            got = tuned(spec, run)
            # bf16: a tile's summation order flips some hidden values' rounding (an ulp each; a bad tile ~1)
            rel = 1e-6 if dtype == torch.float32 else 1e-2
            err = (got - ref).abs().max().item() / ref.abs().max().item()
            assert err < rel, (dtype, fmt, spec, err)
    # FP8 linears: every launch setting (tile width, the hardware-conversion path or the bit decode, warps,
    # stages) gives the reference's product
    lin = Linear(384, 200, "fp8")
    lin.set_dense(torch.randn(200, 384, generator=g) * 0.05)
    for m in (1, 20):
        x = torch.randn(m, 384, generator=g) * 3
        for act in (False, True):
            ref = (fp8_roundtrip(x, 128) if act else x) @ lin.dense(torch.float32).t()
            for spec in ("", "lowp_cvt=0", "lowp_bn=16", "lowp_bn=64,lowp_warps=8,lowp_stages=2"):
                got = tuned(spec, lambda: LG.lowp_linear(x, lin.weight, lin.scale, "fp8", act))
                assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item()), (m, act, spec)
    print("ok")
    """
)


def test_kernel_launch_settings_change_only_the_tiling_interpreted() -> None:
    """`AGENTKIT_KERNEL_TUNE` (the GPU sweep's knobs) and the FP4 decode path choice never change a result
    beyond summation order: per-pair FP4 experts == expert blocks; FP8 linears == the reference."""
    _interpreted(_TUNE_CHILD, timeout=600)


def test_kernel_tune_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentkit.runtime.kernels import tune

    monkeypatch.setenv("AGENTKIT_KERNEL_TUNE", "moe_pairs_bn=64, lowp_bn = 16,junk")
    assert (tune("moe_pairs_bn", 32), tune("lowp_bn", 32), tune("lowp_cvt", 1)) == (64, 16, 1)
    monkeypatch.setenv("AGENTKIT_KERNEL_TUNE", "lowp_bn=x")
    with pytest.raises(ValueError):
        tune("lowp_bn", 32)
    monkeypatch.delenv("AGENTKIT_KERNEL_TUNE")
    assert tune("lowp_bn", 32) == 32
