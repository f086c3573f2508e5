"""Triton kernel for the mHC mixer weights (the reference's `hc_split_sinkhorn`, spec §6.1 steps 3-5).

One program per token computes pre/post and the Sinkhorn-normalized combination matrix in registers: the
PyTorch reference (`agentkit.runtime.layers.mhc.hc_pre`) launches ~80 tiny kernels per call for the 20
Sinkhorn rounds, which dominates batch-1 decode on a GPU. Forward only (no autograd); selected for CUDA
inference, compared against the reference by tests (on CPU through TRITON_INTERPRET=1).
"""

from __future__ import annotations

import torch
from agentkit.runtime.kernels import family_on

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
    HAVE_TRITON = False


if HAVE_TRITON:

    @triton.jit
    def _hc_split_sinkhorn(  # type: ignore[no-untyped-def]
        m_ptr,
        scale_ptr,
        base_ptr,
        pre_ptr,
        post_ptr,
        comb_ptr,
        hc_eps: tl.constexpr,
        HC: tl.constexpr,
        ITERS: tl.constexpr,
    ):
        t = tl.program_id(0)
        j = tl.arange(0, HC)
        row = m_ptr + t * (2 * HC + HC * HC)
        s0 = tl.load(scale_ptr)
        s1 = tl.load(scale_ptr + 1)
        s2 = tl.load(scale_ptr + 2)
        pre = tl.sigmoid(tl.load(row + j) * s0 + tl.load(base_ptr + j)) + hc_eps
        post = 2.0 * tl.sigmoid(tl.load(row + HC + j) * s1 + tl.load(base_ptr + HC + j))
        jj = j[:, None] * HC + j[None, :]
        c = tl.load(row + 2 * HC + jj) * s2 + tl.load(base_ptr + 2 * HC + jj)
        c = tl.exp(c - tl.max(c, axis=1)[:, None])
        c = c / tl.sum(c, axis=1)[:, None] + hc_eps
        c = c / (tl.sum(c, axis=0)[None, :] + hc_eps)
        for _ in tl.static_range(ITERS - 1):
            c = c / (tl.sum(c, axis=1)[:, None] + hc_eps)
            c = c / (tl.sum(c, axis=0)[None, :] + hc_eps)
        tl.store(pre_ptr + t * HC + j, pre)
        tl.store(post_ptr + t * HC + j, post)
        tl.store(comb_ptr + t * HC * HC + jj, c)

    @triton.jit
    def _hc_collapse(x_ptr, pre_ptr, o_ptr, D, HC: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        """o[t] = sum_j pre[t, j] * x[t, j] (fp32), in the output's dtype."""
        t = tl.program_id(0).to(tl.int64)
        rd = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = rd < D
        acc = tl.zeros((BLOCK,), tl.float32)
        for j in tl.static_range(HC):
            w = tl.load(pre_ptr + t * HC + j)
            acc += w * tl.load(x_ptr + (t * HC + j) * D + rd, mask=m, other=0.0).to(tl.float32)
        tl.store(o_ptr + t * D + rd, acc.to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _hc_expand(y_ptr, x_ptr, post_ptr, comb_ptr, o_ptr, D, HC: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        """o[t, k] = post[t, k] * y[t] + sum_j comb[t, j, k] * x[t, j] (fp32), in the output's dtype."""
        t = tl.program_id(0).to(tl.int64)
        rd = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        m = rd < D
        y = tl.load(y_ptr + t * D + rd, mask=m, other=0.0).to(tl.float32)
        for k in tl.static_range(HC):
            acc = tl.zeros((BLOCK,), tl.float32)
            for j in tl.static_range(HC):
                c = tl.load(comb_ptr + (t * HC + j) * HC + k)
                acc += c * tl.load(x_ptr + (t * HC + j) * D + rd, mask=m, other=0.0).to(tl.float32)
            out = tl.load(post_ptr + t * HC + k) * y + acc
            tl.store(o_ptr + (t * HC + k) * D + rd, out.to(o_ptr.dtype.element_ty), mask=m)


def supported(mixes: torch.Tensor, hc: int) -> bool:
    pow2 = hc & (hc - 1) == 0
    return HAVE_TRITON and mixes.is_cuda and pow2 and not torch.is_grad_enabled() and family_on(__name__)


def hc_split_sinkhorn(
    mixes: torch.Tensor, scale: torch.Tensor, base: torch.Tensor, hc: int, iters: int, hc_eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mixes [T, (2+hc)*hc] fp32 -> (pre [T, hc], post [T, hc], comb [T, hc, hc]), all fp32."""
    t = mixes.shape[0]
    m = mixes.float().contiguous()
    pre = torch.empty(t, hc, dtype=torch.float32, device=m.device)
    post = torch.empty_like(pre)
    comb = torch.empty(t, hc, hc, dtype=torch.float32, device=m.device)
    if t:
        _hc_split_sinkhorn[(t,)](
            m,
            scale.float().contiguous(),
            base.float().contiguous(),
            pre,
            post,
            comb,
            hc_eps,
            HC=hc,
            ITERS=iters,
        )
    return pre, post, comb


def hc_collapse(pre: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`layers.mhc.hc_pre`'s collapse: streams x [T, n, D] weighted by pre [T, n] -> [T, D] in x's dtype."""
    t, n, d = x.shape
    x = x.contiguous()
    out = torch.empty(t, d, dtype=x.dtype, device=x.device)
    if t:
        _hc_collapse[(t, triton.cdiv(d, 1024))](x, pre.float().contiguous(), out, d, HC=n, BLOCK=1024)
    return out


def hc_expand(y: torch.Tensor, x: torch.Tensor, post: torch.Tensor, comb: torch.Tensor) -> torch.Tensor:
    """`layers.mhc.hc_post`: the sub-layer output y [T, D] and the streams x [T, n, D] -> new streams."""
    t, n, d = x.shape
    x, y = x.contiguous(), y.contiguous()
    out = torch.empty_like(x)
    if t:
        _hc_expand[(t, triton.cdiv(d, 512))](
            y, x, post.float().contiguous(), comb.float().contiguous(), out, d, HC=n, BLOCK=512
        )
    return out
