"""Sparse attention with the attention sink: the reference's `sparse_attn(q, kv, sink, idx, scale)`
(spec §4.2, §10), as a split-K flash-decoding Triton kernel beside its PyTorch reference.

V4 attends each query to a short list of rows of one shared-KV buffer (MQA: the key of a row is also its
value): the sliding window's rows and the compressed entries the indexer selected (CSA) or all visible ones
(HCA). `idx[t]` lists those rows for query t, -1 where a slot is empty. One softmax covers all of them, with
the per-head sink in the denominator only (it has no value: it only takes probability mass away).

The kernel gives each program one query, a block of heads and one slice of the candidate list (split-K, so a
batch-1 decode step still fills the GPU when the list is long), keeps an online softmax in fp32 and writes the
slice's running max, sum and weighted values; a small combine folds the slices and the sink together. Reading
the candidate rows once per head block instead of materializing [T, H, K] scores is the point: decode is
memory-bound, and the scores never leave registers.
"""

from __future__ import annotations

import functools
import math
import os

import torch
from agentkit.runtime.kernels import family_on

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
    HAVE_TRITON = False


def sparse_attn_ref(
    q: torch.Tensor, kv: torch.Tensor, idx: torch.Tensor, sink: torch.Tensor, scale: float
) -> torch.Tensor:
    """q [T, H, D], kv [N, D], idx [T, K] (int, -1 = empty), sink [H] -> out [T, H, D] in q's dtype.

    The spec's fallback, literally: gather rows, scaled dot products in fp32, softmax over the candidates
    and the sink, weighted sum of the same rows.
    """
    t, h, _ = q.shape
    valid = idx >= 0
    rows = kv[idx.clamp_min(0).long()].float()  # [T, K, D]
    logits = torch.einsum("thd,tkd->thk", q.float(), rows) * scale
    logits = logits.masked_fill(~valid[:, None, :], float("-inf"))
    full = torch.cat((logits, sink.float().view(1, h, 1).expand(t, h, 1)), dim=-1)
    probs = torch.softmax(full, dim=-1)[..., :-1]
    return torch.einsum("thk,tkd->thd", probs, rows).to(q.dtype)


if HAVE_TRITON:

    @triton.jit
    def _sparse_attn_split(  # type: ignore[no-untyped-def]
        q_ptr, kv_ptr, idx_ptr, m_ptr, l_ptr, acc_ptr,
        H, K, D, per_split, scale,
        stride_qt, stride_qh, stride_kv, stride_it,
        BH: tl.constexpr, BK: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        t = tl.program_id(0)
        hb = tl.program_id(1)
        sp = tl.program_id(2)
        n_splits = tl.num_programs(2)
        heads = hb * BH + tl.arange(0, BH)
        dims = tl.arange(0, BD)
        hmask = heads < H
        dmask = dims < D
        q = tl.load(
            q_ptr + t * stride_qt + heads[:, None] * stride_qh + dims[None, :],
            mask=hmask[:, None] & dmask[None, :], other=0.0,
        )  # fmt: skip
        m = tl.full((BH,), -1.0e30, tl.float32)
        l_sum = tl.zeros((BH,), tl.float32)
        acc = tl.zeros((BH, BD), tl.float32)
        k_lo = sp * per_split
        k_hi = tl.minimum(k_lo + per_split, K)
        for k0 in range(k_lo, k_hi, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < k_hi
            rows = tl.load(idx_ptr + t * stride_it + ks, mask=kmask, other=-1)
            valid = rows >= 0
            safe = tl.where(valid, rows, 0).to(tl.int64)
            kvb = tl.load(
                kv_ptr + safe[:, None] * stride_kv + dims[None, :],
                mask=valid[:, None] & dmask[None, :], other=0.0,
            )  # fmt: skip
            if UPCAST:  # Triton's CPU interpreter multiplies bf16 as raw bits: give it the fp32 values
                kvb = kvb.to(tl.float32)
                q = q.to(tl.float32)
            # bf16 rows: products exact in fp32, fp32 accumulation; fp32 rows: IEEE, not TF32
            # fp32 even where torch.compile passes `scale` as an fp64 scalar
            s = (tl.dot(q, tl.trans(kvb), input_precision=PREC) * scale).to(tl.float32)  # [BH, BK]
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            l_sum = l_sum * alpha + tl.sum(p, axis=1)
            pv = p.to(kv_ptr.dtype.element_ty)  # rounded like the torch path rounds probabilities
            if UPCAST:
                pv = pv.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(pv, kvb, input_precision=PREC)
            m = m_new
        base = (t * n_splits + sp) * H + heads
        tl.store(m_ptr + base, m, mask=hmask)
        tl.store(l_ptr + base, l_sum, mask=hmask)
        tl.store(acc_ptr + base[:, None] * D + dims[None, :], acc, mask=hmask[:, None] & dmask[None, :])


@functools.cache
def _sms(device: torch.device) -> int:
    return int(torch.cuda.get_device_properties(device).multi_processor_count)


def supported(q: torch.Tensor) -> bool:
    return HAVE_TRITON and q.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


if HAVE_TRITON:

    @triton.jit
    def _combine_splits(  # type: ignore[no-untyped-def]
        m_ptr, l_ptr, acc_ptr, sink_ptr, o_ptr, S, H, D, BS: tl.constexpr, BD: tl.constexpr
    ):
        """`_combine` for one (query, head, block of dims): one launch instead of a dozen small ones."""
        t = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        rd = tl.program_id(2) * BD + tl.arange(0, BD)
        dm = rd < D
        sk = tl.load(sink_ptr + h).to(tl.float32)
        top = sk
        for s0 in range(0, S, BS):
            rs = s0 + tl.arange(0, BS)
            top = tl.maximum(
                top, tl.max(tl.load(m_ptr + (t * S + rs) * H + h, mask=rs < S, other=-float("inf")))
            )
        denom = tl.exp(sk - top)
        out = tl.zeros((BD,), tl.float32)
        for s0 in range(0, S, BS):
            rs = s0 + tl.arange(0, BS)
            sm = rs < S
            w = tl.exp(tl.load(m_ptr + (t * S + rs) * H + h, mask=sm, other=-float("inf")) - top)
            denom += tl.sum(tl.load(l_ptr + (t * S + rs) * H + h, mask=sm, other=0.0) * w)
            a = tl.load(
                acc_ptr + ((t * S + rs[:, None]) * H + h) * D + rd[None, :],
                mask=sm[:, None] & dm[None, :],
                other=0.0,
            )
            out += tl.sum(a * w[:, None], axis=0)
        tl.store(o_ptr + (t * H + h) * D + rd, (out / denom).to(o_ptr.dtype.element_ty), mask=dm)


def _combine(m: torch.Tensor, l_sum: torch.Tensor, acc: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """Fold the splits [T, S, H] and the sink into one softmax: out = sum_i acc_i e^(m_i - M) / L."""
    top = torch.maximum(m.amax(dim=1), sink.float().view(1, -1))  # [T, H]: the sink keeps it finite
    w = torch.exp(m - top[:, None])  # [T, S, H]
    denom = (l_sum * w).sum(dim=1) + torch.exp(sink.float().view(1, -1) - top)
    return (acc * w[..., None]).sum(dim=1) / denom[..., None]


def sparse_attn(
    q: torch.Tensor,
    kv: torch.Tensor,
    idx: torch.Tensor,
    sink: torch.Tensor,
    scale: float,
    *,
    splits: int | None = None,
    block_h: int = 16,
    block_k: int = 32,
    combine_kernel: bool = True,
) -> torch.Tensor:
    """Same contract as `sparse_attn_ref` (the probabilities are rounded to kv's dtype before the
    weighted sum, as the runtime's torch path does for bf16). `splits`: slices of the candidate list
    per query (default: ~4 programs per SM for a decode step, at least one block of candidates each)."""
    t, h, d = q.shape
    k = idx.shape[1]
    if t == 0:
        return q.new_empty(t, h, d)
    if k == 0:
        return torch.zeros_like(q)
    q = q.to(kv.dtype).contiguous()
    kv = kv.contiguous()
    idx = idx.to(torch.int32).contiguous()
    head_blocks = triton.cdiv(h, block_h)
    if splits is None:
        sms = _sms(q.device) if q.is_cuda else 4
        splits = max(1, min(triton.cdiv(k, block_k), math.ceil(4 * sms / max(1, t * head_blocks))))
    per_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    splits = triton.cdiv(k, per_split)
    m = torch.empty(t, splits, h, dtype=torch.float32, device=q.device)
    l_sum = torch.empty_like(m)
    acc = torch.empty(t, splits, h, d, dtype=torch.float32, device=q.device)
    bd = max(16, triton.next_power_of_2(d))
    _sparse_attn_split[(t, head_blocks, splits)](
        q, kv, idx, m, l_sum, acc,
        h, k, d, per_split, scale,
        q.stride(0), q.stride(1), kv.stride(0), idx.stride(0),
        BH=block_h, BK=block_k, BD=bd, PREC="ieee" if kv.dtype == torch.float32 else "tf32",
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1",
    )  # fmt: skip
    if combine_kernel:  # the same fold in one launch (sums in another order: fp32 rounding apart)
        out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
        _combine_splits[(t, h, triton.cdiv(d, 128))](
            m,
            l_sum,
            acc,
            sink.contiguous(),
            out,
            splits,
            h,
            d,
            BS=min(32, triton.next_power_of_2(splits)),
            BD=128,
        )
        return out
    return _combine(m, l_sum, acc, sink).to(q.dtype)
