"""The compressor's decode update as one kernel: write each sequence's new token into its tail, pool the
block it belongs to (softmax over the block's rows of the gate scores, per feature, times the projected
values; spec §4.2's gated pooling, with CSA's overlapping halves), and roll the tail over where the block
completed. The torch reference is `decode._pool_step` (about 20 launches per call, and a flash-reduced step
calls it for every compressed layer and every indexer).

Tails are fp32 [slots, c*r, c*w] (c = 2 for ratio 4: rows [0, r) hold the previous block, rows [r, 2r)
this one, and columns [0, w) / [w, 2w) the two halves). Each program owns one sequence and a block of
feature columns j in both halves (j and w + j), so the roll moves rows only within the columns it owns and
no two programs touch the same bytes. The pooled sum runs in another order than torch's, so results agree
to fp32 rounding.
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
    def _tile(ptr, rows, cols, cm, stride_r, fill):  # type: ignore[no-untyped-def]
        return tl.load(ptr + rows[:, None] * stride_r + cols[None, :], mask=cm[None, :], other=fill)

    @triton.jit
    def _pool_step(  # type: ignore[no-untyped-def]
        tk_ptr, ts_ptr, kv_ptr, sc_ptr, pos_ptr, slot_ptr, out_ptr,
        W, stride_ts, stride_tr, stride_kv, stride_sc,
        R: tl.constexpr, C: tl.constexpr, BW: tl.constexpr,
    ):  # fmt: skip
        b = tl.program_id(0)
        j = tl.program_id(1) * BW + tl.arange(0, BW)
        jm = j < W
        p = tl.load(pos_ptr + b)
        rem = p % R
        done = rem == R - 1
        tk = tk_ptr + tl.load(slot_ptr + b).to(tl.int64) * stride_ts
        ts = ts_ptr + tl.load(slot_ptr + b).to(tl.int64) * stride_ts
        rows = tl.arange(0, R)
        new = (rows == rem)[:, None]  # the new token's row within this block's rows
        ninf = float("-inf")
        if C == 2:
            # this block's rows [R, 2R) in both halves, the new token put in; the previous block's first half
            hk_a = tl.where(new, tl.load(kv_ptr + b * stride_kv + j, mask=jm, other=0.0)[None, :],
                            _tile(tk + R * stride_tr, rows, j, jm, stride_tr, 0.0))  # fmt: skip
            hs_a = tl.where(new, tl.load(sc_ptr + b * stride_sc + j, mask=jm, other=0.0)[None, :],
                            _tile(ts + R * stride_tr, rows, j, jm, stride_tr, ninf))  # fmt: skip
            hk_b = tl.where(new, tl.load(kv_ptr + b * stride_kv + W + j, mask=jm, other=0.0)[None, :],
                            _tile(tk + R * stride_tr, rows, W + j, jm, stride_tr, 0.0))  # fmt: skip
            hs_b = tl.where(new, tl.load(sc_ptr + b * stride_sc + W + j, mask=jm, other=0.0)[None, :],
                            _tile(ts + R * stride_tr, rows, W + j, jm, stride_tr, ninf))  # fmt: skip
            lk = _tile(tk, rows, j, jm, stride_tr, 0.0)
            ls = _tile(ts, rows, j, jm, stride_tr, ninf)
            mx = tl.maximum(tl.max(ls, axis=0), tl.max(hs_b, axis=0))
            e1 = tl.exp(ls - mx[None, :])
            e2 = tl.exp(hs_b - mx[None, :])
            tot = tl.sum(e1, axis=0) + tl.sum(e2, axis=0)
            pooled = tl.sum(e1 / tot[None, :] * lk, axis=0) + tl.sum(e2 / tot[None, :] * hk_b, axis=0)
            tl.debug_barrier()  # every load above is done before the tail is rewritten
            hi = rows[:, None] * stride_tr + R * stride_tr
            if done:  # roll: this block becomes the previous one, the current rows empty
                lo = rows[:, None] * stride_tr
                tl.store(tk + lo + j[None, :], hk_a, mask=jm[None, :])
                tl.store(tk + lo + W + j[None, :], hk_b, mask=jm[None, :])
                tl.store(ts + lo + j[None, :], hs_a, mask=jm[None, :])
                tl.store(ts + lo + W + j[None, :], hs_b, mask=jm[None, :])
                hk_a = tl.zeros_like(hk_a)
                hk_b = tl.zeros_like(hk_b)
                hs_a = tl.full(hs_a.shape, ninf, tl.float32)
                hs_b = tl.full(hs_b.shape, ninf, tl.float32)
            tl.store(tk + hi + j[None, :], hk_a, mask=jm[None, :])
            tl.store(tk + hi + W + j[None, :], hk_b, mask=jm[None, :])
            tl.store(ts + hi + j[None, :], hs_a, mask=jm[None, :])
            tl.store(ts + hi + W + j[None, :], hs_b, mask=jm[None, :])
        else:
            k = tl.where(new, tl.load(kv_ptr + b * stride_kv + j, mask=jm, other=0.0)[None, :],
                         _tile(tk, rows, j, jm, stride_tr, 0.0))  # fmt: skip
            s = tl.where(new, tl.load(sc_ptr + b * stride_sc + j, mask=jm, other=0.0)[None, :],
                         _tile(ts, rows, j, jm, stride_tr, ninf))  # fmt: skip
            mx = tl.max(s, axis=0)
            e = tl.exp(s - mx[None, :])
            pooled = tl.sum(e / tl.sum(e, axis=0)[None, :] * k, axis=0)
            tl.debug_barrier()
            if done:
                k = tl.zeros_like(k)
                s = tl.full(s.shape, ninf, tl.float32)
            at = rows[:, None] * stride_tr + j[None, :]
            tl.store(tk + at, k, mask=jm[None, :])
            tl.store(ts + at, s, mask=jm[None, :])
        tl.store(out_ptr + b * W + j, pooled, mask=jm)


def supported(tail: torch.Tensor, ratio: int) -> bool:
    return (
        HAVE_TRITON
        and tail.is_cuda
        and tail.dtype == torch.float32
        and ratio & (ratio - 1) == 0
        and not torch.is_grad_enabled()
        and family_on(__name__)
    )


def pool_step(
    tail_kv: torch.Tensor,
    tail_score: torch.Tensor,
    kv: torch.Tensor,
    score: torch.Tensor,
    pos: torch.Tensor,
    slots: torch.Tensor,
    ratio: int,
    width: int,
) -> torch.Tensor:
    """`decode._pool_step`: one new token per slot (kv, score [B, c*width] fp32) -> pooled [B, width] fp32,
    the tails updated in place."""
    c = 2 if ratio == 4 else 1
    b = kv.shape[0]
    kv, score = kv.float().contiguous(), score.float().contiguous()
    out = torch.empty(b, width, dtype=torch.float32, device=kv.device)
    if b:
        bw = max(16, min(128, 4096 // (c * ratio)))
        _pool_step[(b, triton.cdiv(width, bw))](
            tail_kv, tail_score, kv, score, pos, slots, out,
            width, tail_kv.stride(0), tail_kv.stride(1), kv.stride(0), score.stride(0),
            R=ratio, C=c, BW=bw,
        )  # fmt: skip
    return out


__all__ = ["pool_step", "supported"]
