"""Fused routed experts (spec §7): the selected experts' clamped SwiGLU as two grouped GEMMs over the
(token, expert) pairs, reading the experts' stored weights (bf16/fp32, FP8 + 128x128 E8M0 tiles, or packed
FP4 + E8M0 per 32) in the kernel, beside the torch loop of `layers/moe.MoE` that is its reference.

The torch loop visits each selected expert with a host sync to learn which ones are selected, so it cannot be
captured in a CUDA graph, and it launches a dozen kernels per expert. Here the grouping is computed on the
device with fixed shapes: pairs sorted by expert, each expert's pairs cut into blocks of BM rows, a static
upper bound on the number of blocks (ceil(P / BM) + min(E, P)) with unused blocks doing nothing. Then:

- `_moe_up`: per (block, tile of the hidden dim), x rows of the block's tokens times w1 and w3 of its expert;
  each product rounded to the activation dtype (the reference's linear output), the gate clamped above at L,
  the up projection to [-L, L], silu(gate) * up * routing weight, stored in the activation dtype;
- `_moe_down`: per (block, tile of the model dim), those rows times w2, rounded likewise, stored per pair;
- the combine adds each token's pairs in ascending expert order, the order in which the reference's
  `index_add` accumulates them (fp32, starting from the first term).

Packed FP4 experts with few pairs (batch-1 decode) take `moe_pairs` instead: one program row per pair.

With `act_quant` (FP8/FP4 experts) both GEMMs first round their input to e4m3 in 1x128 blocks with
power-of-two scales, as DeepSeek's reference does before `fp4_gemm`: x once before `_moe_up`, h inside
`_moe_down` (each K step holds whole 1x128 blocks of h, so `_moe_up` may use tiles of any width). Every
decoded weight value is exact in bf16, so results equal the torch path up to the summation order inside a
dot product.
"""

from __future__ import annotations

import os

import torch
from agentkit.runtime.kernels import family_on, tune

try:
    import triton
    import triton.language as tl
    from agentkit.runtime.kernels.lowp_gemm import (
        _act_quant,
        _act_quant_halves,
        _fp4_tile,
        _fp8_tile,
        quant_rows,
    )
    from agentkit.runtime.kernels.moe_math import _e8m0_bits, _fp4_codes, _round_act, _swiglu
    from agentkit.runtime.kernels.moe_pairs import pairs_fp4

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
    HAVE_TRITON = False

FORMATS = {"float": 0, "fp8": 1, "fp4": 2}


if HAVE_TRITON:

    @triton.jit
    def _w_tile(w_ptr, s_ptr, e, rn, rk, k0, K, nm, km,  # type: ignore[no-untyped-def]
                stride_we, stride_wn, stride_se, stride_sn, FMT: tl.constexpr):  # fmt: skip
        """Expert e's weight rows rn x columns rk (one 128-wide K block at k0), decoded to fp32 (float
        weights: as stored; `_mm` casts)."""
        wm = nm[:, None] & km[None, :]
        wp = w_ptr + e.to(tl.int64) * stride_we
        sp = s_ptr + e.to(tl.int64) * stride_se
        if FMT == 0:
            w = tl.load(wp + rn[:, None] * stride_wn + rk[None, :], mask=wm, other=0.0)  # as stored
        elif FMT == 1:
            w = _fp8_tile(wp, sp, rn, rk, k0, nm, wm, stride_wn, stride_sn)
        else:
            w = _fp4_tile(wp, sp, rn, rk, k0, K, nm, wm, stride_wn, stride_sn)
        return w

    @triton.jit
    def _fp4_halves(w_ptr, s_ptr, e, rn, k0, K, nm,  # type: ignore[no-untyped-def]
                    stride_we, stride_wn, stride_se, stride_sn):  # fmt: skip
        """Expert e's packed FP4 rows rn over the 128-wide K block at k0, as two [BN, 64] fp32 halves: the
        even columns (low nibbles) and the odd ones (high nibbles). Each byte is loaded once and no tile is
        reshaped (a layout change through shared memory per K step): the caller multiplies the halves with
        the input's even and odd columns. Codes decode through fp16 bits (`moe_math._fp4_codes`: the value
        times 2^-14), then times 2^14 and the E8M0 scale (one per 32 values: per 16 bytes), both exact."""
        wp = w_ptr + e.to(tl.int64) * stride_we
        sp = s_ptr + e.to(tl.int64) * stride_se
        j = tl.arange(0, 64)
        rb = k0 // 2 + j
        bm = nm[:, None] & (rb * 2 < K)[None, :]
        byte = tl.load(wp + rn[:, None] * stride_wn + rb[None, :], mask=bm, other=0).to(tl.int32) & 0xFF
        sg = k0 // 32 + j // 16
        sb = tl.load(sp + rn[:, None] * stride_sn + sg[None, :], mask=bm, other=127).to(tl.int32) & 0xFF
        scale = _e8m0_bits(sb)
        lo, hi = _fp4_codes(byte)
        return (lo * 16384.0) * scale, (hi * 16384.0) * scale

    @triton.jit
    def _mm(x, w, F32: tl.constexpr):  # type: ignore[no-untyped-def]
        """x [BM, 128] @ w [BN, 128]^T with fp32 accumulation: IEEE fp32 for fp32 activations, else bf16
        operands (exact for bf16 values and for every decoded FP8/FP4 weight)."""
        if F32:
            return tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        return tl.dot(x.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)))

    @triton.jit
    def _in_halves(row_ptr, rm, k0, K):  # type: ignore[no-untyped-def]
        """The input rows' (row_ptr [BM, 1]) even and odd columns of the K block at k0, fp32 [BM, 64] each."""
        ke = k0 + 2 * tl.arange(0, 64)
        m = rm[:, None] & (ke < K)[None, :]
        p = row_ptr + ke[None, :]
        return tl.load(p, mask=m, other=0.0).to(tl.float32), tl.load(p + 1, mask=m, other=0.0).to(tl.float32)

    @triton.jit
    def _fp4_mm(xe, xo, w_ptr, s_ptr, e, rn, k0, K, nm,  # type: ignore[no-untyped-def]
                stride_we, stride_wn, stride_se, stride_sn, F32: tl.constexpr):  # fmt: skip
        """One K block's product with a packed FP4 expert weight: even columns by the low nibbles, odd
        columns by the high ones."""
        we, wo = _fp4_halves(w_ptr, s_ptr, e, rn, k0, K, nm, stride_we, stride_wn, stride_se, stride_sn)
        return _mm(xe, we, F32) + _mm(xo, wo, F32)

    @triton.jit
    def _moe_up(  # type: ignore[no-untyped-def]
        x_ptr, w1_ptr, s1_ptr, w3_ptr, s3_ptr, rw_ptr, order_ptr, bexp_ptr, blo_ptr, bhi_ptr, h_ptr,
        N, K, limit,
        stride_x, stride_we, stride_wn, stride_se, stride_sn, stride_h,
        TOPK: tl.constexpr, FMT: tl.constexpr, F32: tl.constexpr, BF16: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0)
        lo = tl.load(blo_ptr + blk)
        hi = tl.load(bhi_ptr + blk)
        if lo < hi:
            e = tl.load(bexp_ptr + blk)
            rows = lo + tl.arange(0, BM)
            rm = rows < hi
            pair = tl.load(order_ptr + rows, mask=rm, other=0)
            tok = (pair // TOPK).to(tl.int64)
            rn = tl.program_id(1) * BN + tl.arange(0, BN)
            nm = rn < N
            acc1 = tl.zeros((BM, BN), tl.float32)
            acc3 = tl.zeros((BM, BN), tl.float32)
            for k0 in range(0, K, 128):
                if FMT == 2:  # packed FP4: even and odd columns apart (see _fp4_halves)
                    xe, xo = _in_halves(x_ptr + tok[:, None] * stride_x, rm, k0, K)
                    acc1 += _fp4_mm(xe, xo, w1_ptr, s1_ptr, e, rn, k0, K, nm,
                                    stride_we, stride_wn, stride_se, stride_sn, F32)  # fmt: skip
                    acc3 += _fp4_mm(xe, xo, w3_ptr, s3_ptr, e, rn, k0, K, nm,
                                    stride_we, stride_wn, stride_se, stride_sn, F32)  # fmt: skip
                else:
                    rk = k0 + tl.arange(0, 128)
                    km = rk < K
                    x = tl.load(x_ptr + tok[:, None] * stride_x + rk[None, :],
                                mask=rm[:, None] & km[None, :], other=0.0)  # fmt: skip
                    if F32:  # else bf16 rows stay bf16 for the dot (no fp32 copy in registers)
                        x = x.to(tl.float32)
                    w1 = _w_tile(
                        w1_ptr, s1_ptr, e, rn, rk, k0, K, nm, km, stride_we, stride_wn, stride_se, stride_sn,
                        FMT,
                    )  # fmt: skip
                    acc1 += _mm(x, w1, F32)
                    w3 = _w_tile(
                        w3_ptr, s3_ptr, e, rn, rk, k0, K, nm, km, stride_we, stride_wn, stride_se, stride_sn,
                        FMT,
                    )  # fmt: skip
                    acc3 += _mm(x, w3, F32)
            rw = tl.load(rw_ptr + pair, mask=rm, other=0.0)
            h = _swiglu(acc1, acc3, rw[:, None], limit, BF16)
            tl.store(h_ptr + pair.to(tl.int64)[:, None] * stride_h + rn[None, :],
                     h.to(h_ptr.dtype.element_ty), mask=rm[:, None] & nm[None, :])  # fmt: skip

    @triton.jit
    def _moe_down(  # type: ignore[no-untyped-def]
        h_ptr, w2_ptr, s2_ptr, order_ptr, bexp_ptr, blo_ptr, bhi_ptr, y_ptr,
        N, K,
        stride_h, stride_we, stride_wn, stride_se, stride_sn, stride_y,
        FMT: tl.constexpr, ACT: tl.constexpr, F32: tl.constexpr, BF16: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        blk = tl.program_id(0)
        lo = tl.load(blo_ptr + blk)
        hi = tl.load(bhi_ptr + blk)
        if lo < hi:
            e = tl.load(bexp_ptr + blk)
            rows = lo + tl.arange(0, BM)
            rm = rows < hi
            pair = tl.load(order_ptr + rows, mask=rm, other=0).to(tl.int64)
            rn = tl.program_id(1) * BN + tl.arange(0, BN)
            nm = rn < N
            acc = tl.zeros((BM, BN), tl.float32)
            for k0 in range(0, K, 128):
                if FMT == 2:  # packed FP4: even and odd columns apart (see _fp4_halves)
                    he, ho = _in_halves(h_ptr + pair[:, None] * stride_h, rm, k0, K)
                    he, ho = _act_quant_halves(he, ho, ACT)  # this GEMM's input rounding, per 1x128 block
                    acc += _fp4_mm(he, ho, w2_ptr, s2_ptr, e, rn, k0, K, nm,
                                   stride_we, stride_wn, stride_se, stride_sn, F32)  # fmt: skip
                else:
                    rk = k0 + tl.arange(0, 128)
                    km = rk < K
                    h = tl.load(h_ptr + pair[:, None] * stride_h + rk[None, :],
                                mask=rm[:, None] & km[None, :], other=0.0)  # fmt: skip
                    if F32 or ACT:
                        h = h.to(tl.float32)
                    h = _act_quant(h, ACT)  # this GEMM's input rounding: whole 1x128 blocks of h per K step
                    w2 = _w_tile(
                        w2_ptr, s2_ptr, e, rn, rk, k0, K, nm, km, stride_we, stride_wn, stride_se, stride_sn,
                        FMT,
                    )  # fmt: skip
                    acc += _mm(h, w2, F32)
            tl.store(y_ptr + pair[:, None] * stride_y + rn[None, :], _round_act(acc, BF16),
                     mask=rm[:, None] & nm[None, :])  # fmt: skip


if HAVE_TRITON:

    @triton.jit
    def _ordered_sum(  # type: ignore[no-untyped-def]
        y_ptr, idx_ptr, o_ptr, D, K: tl.constexpr, KP: tl.constexpr, BD: tl.constexpr
    ):
        """o[t] = token t's K expert terms y[t*K + slot] added left to right in ascending expert order (ties
        by slot: a stable sort), the order the reference's index_add sums them in."""
        t = tl.program_id(0).to(tl.int64)
        rd = tl.program_id(1) * BD + tl.arange(0, BD)
        dm = rd < D
        ar = tl.arange(0, KP)
        ids = tl.load(idx_ptr + t * K + ar, mask=ar < K, other=0)
        ranks = tl.full((KP,), KP, tl.int32)
        for s in tl.static_range(K):
            e = tl.load(idx_ptr + t * K + s)
            before = ((ids < e) | ((ids == e) & (ar < s))) & (ar < K)
            ranks = tl.where(ar == s, tl.sum(before.to(tl.int32)), ranks)
        acc = tl.zeros((BD,), tl.float32)
        for r in tl.static_range(K):
            slot = tl.sum(tl.where(ranks == r, ar, 0))
            acc += tl.load(y_ptr + (t * K + slot) * D + rd, mask=dm, other=0.0)
        tl.store(o_ptr + t * D + rd, acc, mask=dm)


if HAVE_TRITON:

    @triton.jit
    def _log1p(y):  # type: ignore[no-untyped-def]
        """log(1 + y) to a few ulp for small y too (log(u) * y / (u - 1), u = 1 + y), as torch's log1p."""
        u = 1.0 + y
        return tl.where(u == 1.0, y, tl.log(u) * (y / (u - 1.0)))

    @triton.jit
    def _route(  # type: ignore[no-untyped-def]
        raw_ptr, bias_ptr, tid_ptr, tok_ptr, w_ptr, idx_ptr, bexp_ptr, blo_ptr, bhi_ptr,
        E, stride_raw, stride_tid, route_scale,
        K: tl.constexpr, KP: tl.constexpr, BE: tl.constexpr, HASH: tl.constexpr, BLOCKS: tl.constexpr,
    ):  # fmt: skip
        """Gate.forward after its product, one token per program: s = sqrt(softplus(raw)) (softplus as
        torch's: x above 20 as is), experts = top-K of s + bias (ties to the lower index) or the token's
        hash row, weights = their s normalized to sum 1, times route_scale. BLOCKS (one token): also the
        fused MoE's block tables for it (`route_blocks`' one-token form)."""
        t = tl.program_id(0).to(tl.int64)
        re = tl.arange(0, BE)
        em = re < E
        raw = tl.load(raw_ptr + t * stride_raw + re, mask=em, other=0.0)
        s = tl.sqrt(tl.where(raw > 20.0, raw, _log1p(tl.exp(raw))))
        rk = tl.arange(0, KP)
        iv = tl.zeros((KP,), tl.int32)
        wv = tl.zeros((KP,), tl.float32)
        if HASH:
            tok = tl.load(tok_ptr + t)
            iv = tl.load(tid_ptr + tok * stride_tid + rk, mask=rk < K, other=0).to(tl.int32)
            for j in tl.static_range(K):
                i = tl.sum(tl.where(rk == j, iv, 0))
                wv = tl.where(rk == j, tl.sum(tl.where(re == i, s, 0.0)), wv)
        else:
            v = tl.where(em, s + tl.load(bias_ptr + re, mask=em, other=0.0), float("-inf"))
            for j in tl.static_range(K):
                m = tl.max(v, 0)
                i = tl.min(tl.where(v == m, re, BE), 0)
                iv = tl.where(rk == j, i, iv)
                wv = tl.where(rk == j, tl.sum(tl.where(re == i, s, 0.0)), wv)
                v = tl.where(re == i, float("-inf"), v)
        wv = wv / tl.sum(wv) * route_scale
        km = rk < K
        tl.store(w_ptr + t * K + rk, wv, mask=km)
        tl.store(idx_ptr + t * K + rk, iv.to(idx_ptr.dtype.element_ty), mask=km)
        if BLOCKS:  # one token: each pair is a block of its own (its K experts are distinct)
            tl.store(bexp_ptr + rk, tl.minimum(iv, E - 1), mask=km)
            tl.store(blo_ptr + rk, rk, mask=km)
            tl.store(bhi_ptr + rk, tl.where(iv < E, rk + 1, rk), mask=km)


def route(
    raw: torch.Tensor,
    topk: int,
    route_scale: float,
    bias: torch.Tensor | None = None,
    tid2eid: torch.Tensor | None = None,
    token_ids: torch.Tensor | None = None,
    blocks: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """The router after its product `raw` [T, E] fp32 (`Gate.forward`'s torch ops, one launch): returns
    (weights [T, k] fp32, expert indices [T, k] int64, and with `blocks` for one token the fused MoE's
    (order, block_expert, block_lo, block_hi) as `route_blocks` gives them). Hash layers pass `tid2eid` and
    `token_ids`, the others `bias`. Scores agree with torch's to fp32 rounding; the top-k picks the same
    experts unless two scores are within that rounding of each other."""
    t, e = raw.shape
    dev = raw.device
    w = torch.empty(t, topk, dtype=torch.float32, device=dev)
    idx = torch.empty(t, topk, dtype=torch.int64, device=dev)
    one = blocks and t == 1
    tabs = tuple(torch.empty(topk, dtype=torch.int32, device=dev) for _ in range(3)) if one else None
    hashed = tid2eid is not None
    if t:
        b = bias if bias is not None else raw
        tid = tid2eid if tid2eid is not None else raw
        tok = token_ids if token_ids is not None else raw
        bx, lo, hi = tabs if tabs is not None else (idx, idx, idx)
        _route[(t,)](
            raw, b, tid, tok, w, idx, bx, lo, hi,
            e, raw.stride(0), tid.stride(0), route_scale,
            K=topk, KP=triton.next_power_of_2(topk), BE=triton.next_power_of_2(e), HASH=hashed,
            BLOCKS=tabs is not None,
        )  # fmt: skip
    if tabs is None:
        return w, idx, None
    order = tabs[1]  # a block per pair: the pair order is the identity, each block_lo its own pair
    return w, idx, (order, tabs[0], tabs[1], tabs[2])


def supported(x: torch.Tensor) -> bool:
    return HAVE_TRITON and x.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """1-byte weights as raw bytes (FP8 codes are decoded in the kernel); other dtypes as they are."""
    return t.view(torch.uint8) if t.element_size() == 1 else t


def route_blocks(
    idx: torch.Tensor, n_experts: int, block_m: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group the T*k (token, slot) pairs by expert on the device, without a host sync.

    Returns (order [P]: pair ids sorted by expert, stable; block_expert, block_lo, block_hi [NB]: block b
    covers order[lo:hi] of one expert). NB = ceil(P / BM) + min(E, P) bounds the blocks whatever the
    routing; blocks past the real ones have lo == hi and do nothing. A pair whose expert index is E (one
    past the last) sorts after all others and is in no block: it is skipped."""
    flat = idx.reshape(-1)
    p = flat.numel()
    if idx.shape[0] == 1:
        # one token (batch-1 decode): its k pairs name k different experts, so each pair is a block of its
        # own and sorting buys nothing; 4 launches instead of ~30 (a skipped pair's block is empty)
        i32 = torch.int32
        one = torch.arange(p, device=idx.device, dtype=i32)
        return one, flat.to(i32).clamp(max=n_experts - 1), one, torch.where(flat < n_experts, one + 1, one)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(n_experts + 1, dtype=torch.long, device=idx.device)
    counts.scatter_add_(0, flat.long(), torch.ones_like(flat, dtype=torch.long))
    counts = counts[:n_experts]
    n_blocks = (counts + block_m - 1) // block_m
    blk_end = torch.cumsum(n_blocks, 0)
    row_end = torch.cumsum(counts, 0)
    nb = -(-p // block_m) + min(n_experts, p)
    b = torch.arange(nb, device=idx.device)
    e = torch.searchsorted(blk_end, b, right=True)
    used = e < n_experts
    ec = e.clamp(max=n_experts - 1)
    lo = row_end[ec] - counts[ec] + (b - (blk_end[ec] - n_blocks[ec])) * block_m
    hi = row_end[ec]
    lo = torch.where(used, lo, 0)
    hi = torch.where(used, torch.minimum(hi, lo + block_m), 0)
    i32 = torch.int32
    return order.to(i32), ec.to(i32), lo.to(i32), hi.to(i32)


def fused_moe(
    x: torch.Tensor,
    weights: torch.Tensor,
    idx: torch.Tensor,
    w: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    scales: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    fmt: str,
    *,
    act_quant: bool,
    limit: float,
    block_n: int | None = None,
    partial: bool = False,
    ordered_kernel: bool = True,
    blocks: tuple[torch.Tensor, ...] | None = None,
) -> torch.Tensor:
    """Sum over each token's routed experts of weight * expert(x), fp32 [T, D].

    x [T, D]; weights [T, k] fp32 and idx [T, k] from the gate; w = (w1, w3, w2) stacked over experts
    ([E, I, D], [E, I, D], [E, D, I]; FP8 e4m3 or packed FP4 int8 for quantized formats) with their stacked
    E8M0 `scales`. `partial`: idx may hold E for a pair of an expert not stacked here (expert parallelism:
    another rank's); such pairs are skipped and add an exact zero. `blocks`: `route_blocks`' tables when the
    router already made them (`route(..., blocks=True)`, one token)."""
    t, d = x.shape
    k = idx.shape[1]
    w1, w3, w2 = w
    n_exp, inter = w1.shape[0], w1.shape[1]
    if t == 0:
        return torch.zeros(0, d, dtype=torch.float32, device=x.device)
    x2 = x.contiguous()
    # fp32 dot for fp32 activations, and under Triton's CPU interpreter (which cannot multiply bf16)
    f32 = x.dtype == torch.float32 or os.environ.get("TRITON_INTERPRET") == "1"
    bf16 = x.dtype == torch.bfloat16
    if x.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"fused_moe: activations must be fp32 or bf16, got {x.dtype}")
    fcode = FORMATS[fmt]
    if scales is None:
        s1 = s3 = s2 = torch.zeros(1, 1, 1, dtype=torch.uint8, device=x.device)
    else:
        s1, s3, s2 = (s.view(torch.uint8) for s in scales)
    w1, w3, w2 = (_bytes(t_) for t_ in (w1, w3, w2))
    rw = weights.reshape(-1).float().contiguous()
    if act_quant:  # the up GEMM's input rounded once (exact in x's dtype), not in every hidden tile
        x2 = quant_rows(x2)
    h = torch.empty(t * k, inter, dtype=x.dtype, device=x.device)
    if fcode == 2 and t * k <= tune("moe_pairs_max", 8):  # decode: one row per pair, CUDA-core products
        y = pairs_fp4(x2, rw, idx, (w1, w3, w2), (s1, s3, s2), h, act_quant, limit, partial)
        return _expert_order_sum(y, idx, ordered_kernel)
    # prefill (many pairs): tiles and launch from `moe_bm` / `moe_bn` / `moe_big_warps` / `moe_big_stages`
    big = t * k > 512
    # float experts: 128x128 tiles, 8 warps, 2 stages (bench/moe_prefill.py on an H100, 4,096 tokens x 6 of 16
    # experts: 4.66 vs 5.59 ms at 64x64 / 4 warps / 3 stages); the stored formats' register-heavy decode keeps
    # the swept 64x64 (FP4 tiles of 128 spilled registers in decode; prefill FP4 tiles were not swept)
    wide = big and fcode == 0
    bm = 16 if t * k <= 64 else 32 if not big else tune("moe_bm", 128 if wide else 64)
    order, bexp, blo, bhi = blocks if blocks is not None else route_blocks(idx, n_exp, bm)
    nb = bexp.shape[0]
    # decode (few pairs): narrow tiles, so that the few experts' weights spread over every SM; the packed
    # FP4 tiles' decoded halves must also fit the registers (at 128 they spilled: 9x slower than bf16)
    few = t * k <= 64
    bn_big = 128 if wide else 64
    bn_up = block_n or (tune("moe_up_bn", 32) if few else tune("moe_bn", bn_big))
    bn_down = block_n or (tune("moe_down_bn", 64) if few else tune("moe_bn", bn_big))
    launch = {"num_warps": tune("moe_warps", 4), "num_stages": tune("moe_stages", 3)}
    if big:
        warps, stages = (8, 2) if wide else (4, 3)
        launch = {"num_warps": tune("moe_big_warps", warps), "num_stages": tune("moe_big_stages", stages)}
    _moe_up[(nb, triton.cdiv(inter, bn_up))](
        x2, w1, s1, w3, s3, rw, order, bexp, blo, bhi, h,
        inter, d, limit,
        x2.stride(0), w1.stride(0), w1.stride(1), s1.stride(0), s1.stride(1), h.stride(0),
        TOPK=k, FMT=fcode, F32=f32, BF16=bf16, BM=bm, BN=bn_up, **launch,
    )  # fmt: skip
    # skipped pairs' rows are never written: zeros, not garbage, go into their tokens' sums
    y = (torch.zeros if partial else torch.empty)(t * k, d, dtype=torch.float32, device=x.device)
    _moe_down[(nb, triton.cdiv(d, bn_down))](
        h, w2, s2, order, bexp, blo, bhi, y,
        d, inter,
        h.stride(0), w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1), y.stride(0),
        FMT=fcode, ACT=act_quant, F32=f32, BF16=bf16, BM=bm, BN=bn_down, **launch,
    )  # fmt: skip
    return _expert_order_sum(y, idx, ordered_kernel)


def _expert_order_sum(y: torch.Tensor, idx: torch.Tensor, ordered_kernel: bool) -> torch.Tensor:
    """Each token's k expert terms (y [T*k, D] fp32) in ascending expert order, summed left to right like
    the reference's index_add."""
    t, k = idx.shape
    d = y.shape[1]
    if ordered_kernel:
        out = torch.empty(t, d, dtype=torch.float32, device=y.device)
        idx_c = idx.contiguous()
        _ordered_sum[(t, triton.cdiv(d, 512))](y, idx_c, out, d, K=k, KP=triton.next_power_of_2(k), BD=512)
        return out
    by_expert = torch.argsort(idx, dim=1, stable=True)
    terms = y.view(t, k, d).gather(1, by_expert.unsqueeze(-1).expand(-1, -1, d))
    out = terms[:, 0]
    for j in range(1, k):
        out = out + terms[:, j]
    return out
