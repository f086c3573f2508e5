"""Routed FP4 experts for decode's few (token, expert) pairs: `moe.fused_moe` dispatches here.

`moe`'s kernels group pairs into blocks of 16+ rows per expert for tensor-core tiles. At batch-1 decode every
selected expert has one row: the tile wastes 15 of its 16 rows, and converting decoded FP4 weights into
bf16 dot operands cost more than reading the bytes (the blocked FP4 path ran at ~150 GB/s on an H100).
Here each pair gets its own programs, one row multiplied on the CUDA cores: a K block's bytes load as
[BN, 4, 16] (4 scale groups of 16 bytes, 32 codes each), decode to fp32 from their bits (`moe_math`),
multiply the input's even / odd columns, and each group's partial sum takes its E8M0 scale (exact: a
power of two). The epilogues (`moe_math._swiglu`, the down GEMM's 1x128 input rounding, `moe`'s
expert-ordered combine) are the blocked path's, so results equal the torch reference up to summation order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from agentkit.runtime.kernels import tune
from agentkit.runtime.kernels.lowp_gemm import _act_scale, _e4m3_by
from agentkit.runtime.kernels.moe_math import _e8m0_bits, _fp4_codes, _fp4_codes_f32, _round_act, _swiglu


@triton.jit
def _fp4_gemv(xe, xo, wp, sp, rn, k0, K, nm, stride_wn, stride_sn, G: tl.constexpr, DEC: tl.constexpr):  # type: ignore[no-untyped-def]
    """One K block (G scale groups of 32 columns) of W x for one input row: W's packed FP4 rows rn (expert
    base wp / sp), x as its even and odd columns [G, 16] (each group's 16 bytes hold 32 codes). fp32
    products and sums on the CUDA cores, no tensor-core tile: a decode pair multiplies one row, so a dot's
    16-row tile wasted 15/16 of it and its bf16 operand conversions cost more than the bytes (the FP4 dot
    path ran at ~150 GB/s). Codes decode by `DEC`: 0 through fp16 (`moe_math._fp4_codes`, then the group's
    partial sum takes 2^14), 1 through fp32's own subnormals (`moe_math._fp4_codes_f32`: no conversion
    instruction per code). Each group's E8M0 scale multiplies its partial sum (exact: a power of two)."""
    g = tl.arange(0, G)
    rb = k0 // 2 + g[:, None] * 16 + tl.arange(0, 16)[None, :]  # [G, 16] byte columns
    bm = nm[:, None, None] & (rb * 2 < K)[None, :, :]
    byte = tl.load(wp + rn[:, None, None] * stride_wn + rb[None, :, :], mask=bm, other=0).to(tl.int32) & 0xFF
    if DEC == 1:
        lo, hi = _fp4_codes_f32(byte)
    else:
        lo, hi = _fp4_codes(byte)
    part = tl.sum(lo * xe[None, :, :] + hi * xo[None, :, :], axis=2)  # [BN, G]
    sg = k0 // 32 + g
    sb = tl.load(sp + rn[:, None] * stride_sn + sg[None, :], mask=nm[:, None] & (sg * 32 < K)[None, :],
                 other=127).to(tl.int32) & 0xFF  # fmt: skip
    scale = _e8m0_bits(sb) * (1.0 if DEC == 1 else 16384.0)
    return tl.sum(part * scale, axis=1)


@triton.jit
def _row_halves(row_ptr, k0, K, G: tl.constexpr):  # type: ignore[no-untyped-def]
    """One input row's even and odd columns of the K block at k0 as fp32 [G, 16] each (see _fp4_gemv)."""
    ke = k0 + 2 * (tl.arange(0, G)[:, None] * 16 + tl.arange(0, 16)[None, :])
    m = ke < K
    return (tl.load(row_ptr + ke, mask=m, other=0.0).to(tl.float32),
            tl.load(row_ptr + ke + 1, mask=m, other=0.0).to(tl.float32))  # fmt: skip


@triton.jit
def _moe_up_pairs(  # type: ignore[no-untyped-def]
    x_ptr, w1_ptr, s1_ptr, w3_ptr, s3_ptr, rw_ptr, idx_ptr, h_ptr, N, K, E, limit,
    stride_x, stride_we, stride_wn, stride_se, stride_sn, stride_h,
    TOPK: tl.constexpr, BF16: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, DEC: tl.constexpr,
):  # fmt: skip
    """`_moe_up` for packed FP4 experts, one (token, expert) pair per program row: decode's few pairs."""
    pair = tl.program_id(0)
    e = tl.load(idx_ptr + pair)
    if e < E:  # E: another rank's expert (expert parallelism), skipped
        xrow = x_ptr + (pair // TOPK).to(tl.int64) * stride_x
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        nm = rn < N
        w1p, w3p = w1_ptr + e.to(tl.int64) * stride_we, w3_ptr + e.to(tl.int64) * stride_we
        s1p, s3p = s1_ptr + e.to(tl.int64) * stride_se, s3_ptr + e.to(tl.int64) * stride_se
        acc1 = tl.zeros((BN,), tl.float32)
        acc3 = tl.zeros((BN,), tl.float32)
        for k0 in range(0, K, 32 * G):
            xe, xo = _row_halves(xrow, k0, K, G)
            acc1 += _fp4_gemv(xe, xo, w1p, s1p, rn, k0, K, nm, stride_wn, stride_sn, G, DEC)
            acc3 += _fp4_gemv(xe, xo, w3p, s3p, rn, k0, K, nm, stride_wn, stride_sn, G, DEC)
        h = _swiglu(acc1, acc3, tl.load(rw_ptr + pair), limit, BF16)
        tl.store(h_ptr + pair.to(tl.int64) * stride_h + rn, h.to(h_ptr.dtype.element_ty), mask=nm)


@triton.jit
def _moe_down_pairs(  # type: ignore[no-untyped-def]
    h_ptr, w2_ptr, s2_ptr, idx_ptr, y_ptr, N, K, E,
    stride_h, stride_we, stride_wn, stride_se, stride_sn, stride_y,
    ACT: tl.constexpr, BF16: tl.constexpr, BN: tl.constexpr, G: tl.constexpr, DEC: tl.constexpr,
):  # fmt: skip
    """`_moe_down` for packed FP4 experts, one pair per program row; h rounded per 1x128 block (ACT)."""
    pair = tl.program_id(0)
    e = tl.load(idx_ptr + pair)
    if e < E:
        hrow = h_ptr + pair.to(tl.int64) * stride_h
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        nm = rn < N
        wp, sp = w2_ptr + e.to(tl.int64) * stride_we, s2_ptr + e.to(tl.int64) * stride_se
        acc = tl.zeros((BN,), tl.float32)
        for k0 in range(0, K, 32 * G):
            he, ho = _row_halves(hrow, k0, K, G)
            if ACT:  # the down GEMM's input rounding: one power-of-two scale per 1x128 block (4 groups)
                gmax = tl.maximum(tl.max(tl.abs(he), 1), tl.max(tl.abs(ho), 1))  # [G]
                bmax = tl.max(tl.reshape(gmax, (G // 4, 4)), 1)  # [G / 4]
                sc = _act_scale(tl.reshape(tl.broadcast_to(bmax[:, None], (G // 4, 4)), (G,)))
                he, ho = _e4m3_by(he, sc[:, None]), _e4m3_by(ho, sc[:, None])
            acc += _fp4_gemv(he, ho, wp, sp, rn, k0, K, nm, stride_wn, stride_sn, G, DEC)
        tl.store(y_ptr + pair.to(tl.int64) * stride_y + rn, _round_act(acc, BF16), mask=nm)


def pairs_fp4(
    x2: torch.Tensor,
    rw: torch.Tensor,
    idx: torch.Tensor,
    w: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    s: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    h: torch.Tensor,
    act_quant: bool,
    limit: float,
    partial: bool,
) -> torch.Tensor:
    """`fused_moe` for packed FP4 experts and few (token, expert) pairs: `_moe_up_pairs` / `_moe_down_pairs`
        over the pairs as they come (no expert blocks to build). Returns each pair's term y [T*k, D] fp32 for
    `moe`'s expert-ordered combine."""
    (w1, w3, w2), (s1, s3, s2) = w, s
    t, k = idx.shape
    n_exp, inter, d = w1.shape[0], w1.shape[1], x2.shape[1]
    idx_c = idx.contiguous()
    bf16 = x2.dtype == torch.bfloat16
    # 8 rows x 1 warp: the per-pair kernels are bound by bytes in flight, not by arithmetic (the fp32 code
    # decode, moe_pairs_dec=1, and wider K steps, moe_pairs_groups=8/16, changed little), so narrow 1-warp
    # programs, more of them per SM, read fastest: bench/moe_pairs.py on an H100 (267b3fc, results in
    # bench/results/moe_pairs_h100.json) at V4-Flash's shapes, 6 pairs: 0.112 ms (716 GB/s) vs 0.189 ms
    # (424 GB/s) at the earlier default 16 x 2 and 0.366 ms at 32 x 4
    bn = tune("moe_pairs_bn", 8)
    launch = {"num_warps": tune("moe_pairs_warps", 1), "num_stages": tune("moe_pairs_stages", 3)}
    # groups of 32 columns per loop step (4: one 1x128 block; 8 / 16 put more bytes in flight per program)
    # and the code decode (0: via fp16, 1: via fp32 subnormals); see _fp4_gemv
    grp, dec = tune("moe_pairs_groups", 4), tune("moe_pairs_dec", 0)
    if grp not in (4, 8, 16):
        raise ValueError(f"moe_pairs_groups must be 4, 8 or 16, not {grp}")
    _moe_up_pairs[(t * k, triton.cdiv(inter, bn))](
        x2, w1, s1, w3, s3, rw, idx_c, h, inter, d, n_exp, limit,
        x2.stride(0), w1.stride(0), w1.stride(1), s1.stride(0), s1.stride(1), h.stride(0),
        TOPK=k, BF16=bf16, BN=bn, G=grp, DEC=dec, **launch,
    )  # fmt: skip
    y = (torch.zeros if partial else torch.empty)(t * k, d, dtype=torch.float32, device=x2.device)
    _moe_down_pairs[(t * k, triton.cdiv(d, bn))](
        h, w2, s2, idx_c, y, d, inter, n_exp,
        h.stride(0), w2.stride(0), w2.stride(1), s2.stride(0), s2.stride(1), y.stride(0),
        ACT=act_quant, BF16=bf16, BN=bn, G=grp, DEC=dec, **launch,
    )  # fmt: skip
    return y
