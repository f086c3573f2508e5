"""Lightning Indexer scores (spec §4.6) for a decode step, as a Triton kernel beside its torch reference.

For each query b and each indexer key e of its sequence, score = sum_h w[b, h] * relu(q[b, h] . key[e]).
The keys live in the static decoder's slab ([slots, capacity, dim], one row per sequence); only entries
below `count[b]` exist. The torch path gathers every query's whole row of keys (a [B, capacity, dim] copy)
and materializes [B, heads, capacity] scores; the kernel reads each existing key once per query, keeps the
[heads, block] products in registers, and never touches the keys beyond `count` (masked loads), so a step's
cost follows the sequence's length, not the slab's capacity.

`topk_stable` is `layers/attention.stable_topk` (the first k of a stable descending sort) for rows of up to
TOPK_MAX scores as one kernel: a bitonic sort of (score, index) keys in registers, instead of the ~16 torch
launches (two top-ks, a cumsum, masks, two sorts, gathers) that avoid a full sort on long rows.
"""

from __future__ import annotations

import os

import torch
from agentkit.runtime.kernels import family_on, tune

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is a dependency on Linux x86-64
    HAVE_TRITON = False


def index_scores_ref(
    q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor, count: torch.Tensor
) -> torch.Tensor:
    """q [B, H, D], w [B, H], keys [S, C, D], slots, count [B] -> scores [B, C] fp32 (-inf from count on)."""
    s = torch.einsum("bhd,bed->bhe", q.float(), keys[slots.long()].float())
    scores = (torch.relu(s) * w.float().unsqueeze(-1)).sum(dim=1)
    e = torch.arange(keys.shape[1], device=q.device)[None]
    return scores.masked_fill(e >= count[:, None], float("-inf"))


if HAVE_TRITON:

    @triton.jit
    def _index_scores(  # type: ignore[no-untyped-def]
        q_ptr, w_ptr, k_ptr, slot_ptr, count_ptr, out_ptr,
        H, D, C,
        stride_qb, stride_qh, stride_wb, stride_ks, stride_ke, stride_ob,
        B, BH: tl.constexpr, BE: tl.constexpr, BD: tl.constexpr, BQ: tl.constexpr, PREC: tl.constexpr,
        UPCAST: tl.constexpr, KEYS: tl.constexpr,
    ):  # fmt: skip
        # BQ consecutive queries per program share one tile of keys (loaded once): with BQ > 1 they must
        # share a slot (one sequence's prefill), which the wrapper guarantees.
        b0 = tl.program_id(0) * BQ
        eb = tl.program_id(1)
        heads = tl.arange(0, BH)
        dims = tl.arange(0, BD)
        ents = eb * BE + tl.arange(0, BE)
        hm = heads < H
        dm = dims < D
        slot = tl.load(slot_ptr + b0).to(tl.int64)
        group = b0 + tl.arange(0, BQ)
        seen = tl.max(tl.load(count_ptr + group, mask=group < B, other=0), axis=0)  # keys past it: unread
        keys = tl.load(k_ptr + slot * stride_ks + ents[:, None] * stride_ke + dims[None, :],
                       mask=(ents < seen)[:, None] & dm[None, :], other=0.0)  # fmt: skip
        if UPCAST:  # Triton's CPU interpreter multiplies bf16 as raw bits: give it the fp32 values
            keys = keys.to(tl.float32)
        for i in range(BQ):
            b = b0 + i
            if b < B:
                cnt = tl.load(count_ptr + b)
                live = ents < cnt
                q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + dims[None, :],
                            mask=hm[:, None] & dm[None, :], other=0.0)  # fmt: skip
                if UPCAST:
                    q = q.to(tl.float32)
                s = tl.dot(q, tl.trans(keys), input_precision=PREC)  # [BH, BE], fp32 accumulation
                wh = tl.load(w_ptr + b * stride_wb + heads, mask=hm, other=0.0).to(tl.float32)
                score = tl.sum(tl.maximum(s, 0.0) * wh[:, None], axis=0)
                score = tl.where(live, score, float("-inf"))
                if KEYS:  # `layers.topk.order_key`: the stable descending order as one int64 per entry
                    bits = tl.where(score == 0.0, 0.0, score).to(tl.int32, bitcast=True)
                    mono = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(tl.int64)
                    low = (tl.full((), 1, tl.int64) << 32) - 1 - ents.to(tl.int64)
                    tl.store(out_ptr + b * stride_ob + ents, (mono << 32) | low, mask=ents < C)
                else:
                    tl.store(out_ptr + b * stride_ob + ents, score, mask=ents < C)


#: Longest row `topk_stable` sorts in one program (its keys live in registers); longer rows keep torch.
TOPK_MAX = 8192

if HAVE_TRITON:

    @triton.jit
    def _topk_stable(  # type: ignore[no-untyped-def]
        s_ptr, o_ptr, N, K, stride_s, stride_o, BLOCK: tl.constexpr
    ):  # fmt: skip
        """One row: the indices of its K largest scores, largest first, ties to the lower index (a stable
        descending sort's first K). Each score becomes an int64 key: its fp32 bits mapped to a signed int of
        the same order (-0 taken as +0, as comparisons do), shifted up, with BLOCK-1-index below it; one
        descending sort of the keys then orders by score and, among equal scores, by ascending index."""
        t = tl.program_id(0).to(tl.int64)
        r = tl.arange(0, BLOCK)
        x = tl.load(s_ptr + t * stride_s + r, mask=r < N, other=float("-inf"))
        x = tl.where(x == 0.0, 0.0, x)
        bits = x.to(tl.int32, bitcast=True)
        mono = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(tl.int64)
        low = (BLOCK - 1 - r).to(tl.int64)
        keys = tl.sort((mono << 32) | low, 0, descending=True)
        idx = (BLOCK - 1) - (keys - ((keys >> 32) << 32))
        tl.store(o_ptr + t * stride_o + r, idx, mask=r < K)


def topk_stable(scores: torch.Tensor, k: int) -> torch.Tensor:
    """`stable_topk(scores, k)` for scores [B, N] fp32 with N <= TOPK_MAX: [B, k] int64 indices."""
    b, n = scores.shape
    s = scores.contiguous()
    out = torch.empty(b, k, dtype=torch.int64, device=scores.device)
    if b and k:
        block = triton.next_power_of_2(n)
        _topk_stable[(b,)](s, out, n, k, s.stride(0), out.stride(0), BLOCK=block,
                           num_warps=4 if block <= 1024 else 8)  # fmt: skip
    return out


def supported(q: torch.Tensor) -> bool:
    return HAVE_TRITON and q.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


def index_scores(
    q: torch.Tensor,
    w: torch.Tensor,
    keys: torch.Tensor,
    slots: torch.Tensor,
    count: torch.Tensor,
    *,
    block_e: int = 64,
    queries_per_program: int = 1,
    num_warps: int = 4,
    keys_out: bool = False,
) -> torch.Tensor:
    """Same contract as `index_scores_ref`; q is cast to the keys' dtype (bf16 products are exact in fp32).

    `queries_per_program` > 1 lets that many consecutive queries reuse each loaded tile of keys; all
    queries must then read the same slot (use `prefill_scores`). `keys_out`: int64 order keys instead of the
    scores (`layers.topk.order_key` of them), so a top-k needs no pass of its own over the scores."""
    bsz, h, d = q.shape
    cap = keys.shape[1]
    out = torch.empty(bsz, cap, dtype=torch.int64 if keys_out else torch.float32, device=q.device)
    if bsz == 0 or cap == 0:
        return out
    q = q.to(keys.dtype).contiguous()
    w = w.float().contiguous()
    assert keys.stride(2) == 1
    bh = max(16, triton.next_power_of_2(h))
    bd = max(16, triton.next_power_of_2(d))
    bq = queries_per_program
    _index_scores[(triton.cdiv(bsz, bq), triton.cdiv(cap, block_e))](
        q, w, keys, slots, count, out,
        h, d, cap,
        q.stride(0), q.stride(1), w.stride(0), keys.stride(0), keys.stride(1), out.stride(0),
        bsz, BH=bh, BE=block_e, BD=bd, BQ=bq, PREC="ieee" if keys.dtype == torch.float32 else "tf32",
        UPCAST=os.environ.get("TRITON_INTERPRET") == "1", KEYS=keys_out, num_warps=num_warps,
    )  # fmt: skip
    return out


def prefill_scores(
    q: torch.Tensor,
    w: torch.Tensor,
    keys: torch.Tensor,
    count: torch.Tensor,
    *,
    queries_per_program: int | None = None,
    keys_out: bool = False,
) -> torch.Tensor:
    """One sequence's queries q [B, H, D] (weights w [B, H]) against its keys [C, D], query b seeing the
    first count[b] -> [B, C] fp32, -inf from count on. A prefill chunk's queries all read the same keys,
    so each program scores `queries_per_program` of them per tile of keys loaded (the key traffic of a long
    context drops by that factor, and no [B, H, C] temporary is made). The tile of keys (`index_be` entries)
    sets how often each query's [H, D] block is re-read: at 1M tokens of context (256K entries) those
    re-reads, not the keys, bound the kernel, so the width is a launch knob (`bench/index_scores.py`)."""
    slots = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    # 256 entries x 32 queries per program, 8 warps: bench/index_scores.py on an H100 (bfe4b1a, results in
    # bench/results/index_scores_h100.json), 64 queries x 256K entries: 1.00 ms (275 TFLOP/s) vs 1.31 ms at
    # the earlier 64 x 16 x 4
    bq = queries_per_program or tune("index_bq", 32)
    be, warps = tune("index_be", 256), tune("index_warps", 8)
    return index_scores(
        q, w, keys[None], slots, count, block_e=be, queries_per_program=bq, num_warps=warps, keys_out=keys_out
    )
