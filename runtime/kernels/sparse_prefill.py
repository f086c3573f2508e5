"""Sparse attention with the sink for a prefill chunk: many queries of one sequence, each over its own
sliding window and its own compressed entries, in one Triton launch (the decode variant is `sparse_attn`).

The torch path (`Attention._core`) walks the chunk in query blocks and, per block, materializes scores
[block, heads, window + entries], a mask, a concatenation with the sink, a softmax and two products: at a
32K prefill those torch ops (GEMMs with fp32 output, concatenations, gathers, elementwise masks) were about a
third of the GPU time. Here each program takes one query and a block of heads and walks three candidate
lists without building any of them:
- the window: rows `t + w_old - window + 1 .. t + w_old` of `keys_win` (the old window tail then the chunk's
  keys), clipped at 0;
- HCA (`order is None`, `comp` given): the compressed entries visible at the query, the prefix
  `(pos + t + 1) // ratio` of `comp`;
- CSA (`order` given): the indexer's top-k entries `order[t]`, those not yet visible skipped.
One online softmax in fp32 covers all three, with the per-head sink in the denominator only. Like the decode
kernel, unnormalized probabilities are rounded to the keys' dtype before the weighted sum (the torch path
rounds the normalized ones, and sums the window and entry parts in bf16): results agree up to that rounding.
No index list is built: at 1M context an HCA layer's list would be 8K entries per query (1 GB at 32K
queries), and CSA's gathered rows would be copied once per query.
"""

from __future__ import annotations

import os

import torch
from agentkit.runtime.kernels import family_on, tune
from agentkit.runtime.kernels.sparse_attn import sparse_attn_ref

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
    HAVE_TRITON = False


def candidates(
    n: int,
    w_old: int,
    pos: int,
    window: int,
    n_comp: int,
    ratio: int,
    order: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """idx [n, K] into `cat(keys_win, comp)` (-1 = empty): the candidate list each query attends to.

    The literal definition the kernel walks without building, for the reference and the tests."""
    t = torch.arange(n, device=device)
    r = torch.arange(n + w_old, device=device)
    win_ok = (r[None] <= (t + w_old)[:, None]) & (r[None] > (t + w_old - window)[:, None])
    idx = torch.where(win_ok, r.expand(n, -1), -1)
    if n_comp and ratio:
        vis = ((pos + t + 1) // ratio).clamp(max=n_comp)
        ent = torch.arange(n_comp, device=device).expand(n, -1) if order is None else order.long()
        ok = (ent >= 0) & (ent < vis[:, None])
        idx = torch.cat((idx, torch.where(ok, ent + n + w_old, -1)), 1)
    return idx


def sparse_prefill_ref(
    q: torch.Tensor,
    keys_win: torch.Tensor,
    w_old: int,
    pos: int,
    window: int,
    comp: torch.Tensor | None,
    order: torch.Tensor | None,
    ratio: int,
    sink: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [n, H, D], keys_win [w_old + n, D], comp [n_comp, D] or None, order [n, k] or None -> [n, H, D]."""
    n = q.shape[0]
    n_comp = 0 if comp is None else comp.shape[0]
    buf = keys_win if comp is None else torch.cat((keys_win, comp.to(keys_win.dtype)), 0)
    idx = candidates(n, w_old, pos, window, n_comp, ratio, order, q.device)
    return sparse_attn_ref(q, buf, idx, sink, scale)


if HAVE_TRITON:

    @triton.jit
    def _online(  # type: ignore[no-untyped-def]
        q, kvb, valid, m, l_sum, acc, scale, PREC: tl.constexpr, UPCAST: tl.constexpr
    ):
        """One block of candidate rows into the running (max, sum, weighted values); `valid` [M, BK]."""
        kv_ty = kvb.dtype
        if UPCAST:  # Triton's CPU interpreter multiplies bf16 as raw bits: give it the fp32 values
            kvb = kvb.to(tl.float32)
        s = (tl.dot(q, tl.trans(kvb), input_precision=PREC) * scale).to(tl.float32)  # [M, BK]
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        pv = p.to(kv_ty)  # rounded like the torch path rounds probabilities
        if UPCAST:
            pv = pv.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(pv, kvb, input_precision=PREC)
        return m_new, l_sum, acc

    @triton.jit
    def _sparse_prefill(  # type: ignore[no-untyped-def]
        q_ptr, win_ptr, comp_ptr, ord_ptr, sink_ptr, o_ptr,
        n, H, D, w_old, pos, window, ratio, n_comp, k_ord, scale,
        stride_qt, stride_qh, stride_win, stride_comp, stride_ord, stride_ot, stride_oh,
        MODE: tl.constexpr, BQ: tl.constexpr, BH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr,
        PREC: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """MODE 0: window only; 1: window + visible prefix of `comp` (HCA); 2: window + `order[t]` (CSA,
        BQ = 1). A program's M = BQ x BH rows are BQ consecutive queries times BH heads: window and HCA
        rows loaded once serve all of them, each row masked by its own query's position."""
        t0 = tl.program_id(0) * BQ
        hb = tl.program_id(1)
        ri = tl.arange(0, BQ * BH)
        tq = t0 + ri // BH
        heads = hb * BH + ri % BH
        rmask = (tq < n) & (heads < H)
        dims = tl.arange(0, BD)
        dmask = dims < D
        q = tl.load(
            q_ptr + tq[:, None].to(tl.int64) * stride_qt + heads[:, None] * stride_qh + dims[None, :],
            mask=rmask[:, None] & dmask[None, :], other=0.0,
        )  # fmt: skip
        if UPCAST:
            q = q.to(tl.float32)
        m = tl.full((BQ * BH,), -1.0e30, tl.float32)
        l_sum = tl.zeros((BQ * BH,), tl.float32)
        acc = tl.zeros((BQ * BH, BD), tl.float32)
        last = tl.minimum(t0 + BQ, n) - 1
        r_hi = last + w_old + 1
        r_lo = tl.maximum(t0 + w_old + 1 - window, 0)
        for r0 in range(r_lo, r_hi, BK):
            rows = r0 + tl.arange(0, BK)
            kvb = tl.load(
                win_ptr + rows[:, None].to(tl.int64) * stride_win + dims[None, :],
                mask=(rows < r_hi)[:, None] & dmask[None, :], other=0.0,
            )  # fmt: skip
            valid = (rows[None, :] <= (tq + w_old)[:, None]) & (
                rows[None, :] > (tq + w_old - window)[:, None]
            )
            m, l_sum, acc = _online(q, kvb, valid, m, l_sum, acc, scale, PREC, UPCAST)
        if MODE == 1:
            vis = tl.minimum((pos + tq + 1) // ratio, n_comp)  # per row
            top = tl.minimum((pos + last + 1) // ratio, n_comp)
            for e0 in range(0, top, BK):
                ents = e0 + tl.arange(0, BK)
                kvb = tl.load(
                    comp_ptr + ents[:, None].to(tl.int64) * stride_comp + dims[None, :],
                    mask=(ents < top)[:, None] & dmask[None, :], other=0.0,
                )  # fmt: skip
                valid = ents[None, :] < vis[:, None]
                m, l_sum, acc = _online(q, kvb, valid, m, l_sum, acc, scale, PREC, UPCAST)
        if MODE == 2:
            vis1 = tl.minimum((pos + t0 + 1) // ratio, n_comp)
            for j0 in range(0, k_ord, BK):
                js = j0 + tl.arange(0, BK)
                ents = tl.load(ord_ptr + t0.to(tl.int64) * stride_ord + js, mask=js < k_ord, other=-1)
                ok = (ents >= 0) & (ents < vis1)
                safe = tl.where(ok, ents, 0).to(tl.int64)
                kvb = tl.load(
                    comp_ptr + safe[:, None] * stride_comp + dims[None, :],
                    mask=ok[:, None] & dmask[None, :], other=0.0,
                )  # fmt: skip
                valid = ok[None, :] & rmask[:, None]
                m, l_sum, acc = _online(q, kvb, valid, m, l_sum, acc, scale, PREC, UPCAST)
        sk = tl.load(sink_ptr + heads, mask=heads < H, other=0.0).to(tl.float32)
        top_m = tl.maximum(m, sk)
        alpha = tl.exp(m - top_m)
        denom = l_sum * alpha + tl.exp(sk - top_m)
        out = acc * (alpha / denom)[:, None]
        tl.store(
            o_ptr + tq[:, None].to(tl.int64) * stride_ot + heads[:, None] * stride_oh + dims[None, :],
            out.to(o_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :],
        )  # fmt: skip


def supported(q: torch.Tensor) -> bool:
    return HAVE_TRITON and q.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


def sparse_prefill(
    q: torch.Tensor,
    keys_win: torch.Tensor,
    w_old: int,
    pos: int,
    window: int,
    comp: torch.Tensor | None,
    order: torch.Tensor | None,
    ratio: int,
    sink: torch.Tensor,
    scale: float,
    *,
    block_h: int | None = None,
    block_k: int | None = None,
    warps: int | None = None,
    block_q: int | None = None,
) -> torch.Tensor:
    """As `sparse_prefill_ref`; tiles from `AGENTKIT_KERNEL_TUNE`: spf_bq / spf_bh / spf_bk / spf_warps for
    window and HCA layers, spf_csa_bh / spf_csa_bk / spf_csa_warps for CSA layers."""
    n, h, d = q.shape
    if n == 0:
        return q.new_empty(0, h, d)
    dtype = keys_win.dtype
    q = q.to(dtype).contiguous()
    keys_win = keys_win.contiguous()
    n_comp = 0 if comp is None else comp.shape[0]
    mode = 0 if not n_comp or not ratio else (1 if order is None else 2)
    comp_t = keys_win if mode == 0 or comp is None else comp.to(dtype).contiguous()
    ord_t = torch.zeros(1, 1, dtype=torch.int64, device=q.device)
    if mode == 2 and order is not None:
        ord_t = order.contiguous()
    out = torch.empty(n, h, d, dtype=dtype, device=q.device)
    # queries per program: window / HCA rows shared by consecutive queries; CSA's rows are each query's own,
    # so CSA has its own tile (measured on an H200, bench/sparse_prefill.py: all 64 heads in one program)
    if mode == 2:
        bq = 1
        bh = block_h or tune("spf_csa_bh", 64)
        bk = block_k or tune("spf_csa_bk", 16)
        nw = warps or tune("spf_csa_warps", 8)
    else:
        bq = block_q or tune("spf_bq", 4)
        bh = block_h or tune("spf_bh", 16)
        bk = block_k or tune("spf_bk", 32)
        nw = warps or tune("spf_warps", 8)
    _sparse_prefill[(triton.cdiv(n, bq), triton.cdiv(h, bh))](
        q, keys_win, comp_t, ord_t, sink.contiguous(), out,
        n, h, d, w_old, pos, window, max(ratio, 1), n_comp, ord_t.shape[1], scale,
        q.stride(0), q.stride(1), keys_win.stride(0), comp_t.stride(0), ord_t.stride(0), out.stride(0),
        out.stride(1),
        MODE=mode, BQ=bq, BH=bh, BK=bk, BD=max(16, triton.next_power_of_2(d)),
        PREC="ieee" if dtype == torch.float32 else "tf32", UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
        num_warps=nw,
    )  # fmt: skip
    return out
