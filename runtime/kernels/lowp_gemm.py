"""FP8 and FP4 linears straight from the stored weights: the reference's `act_quant` + `fp8_gemm` / `fp4_gemm`
(spec §10) as Triton kernels, beside the torch path (`layers/lowp.Linear`: round the input, dequantize the
weight, multiply).

Decode is memory-bound, and the torch path reads each FP8 weight as a dequantized bf16 copy it first wrote
(1 byte stored, 5 moved per parameter) and rounds the activation in a dozen small kernels. Here each program
reads its weight tile once in its stored bytes (FP8 e4m3 with one E8M0 scale per 128x128 tile, or packed FP4
e2m1 with one E8M0 per 32 values of a row), decodes it in registers, rounds its slice of the input to e4m3
in 1x128 blocks with power-of-two scales (when the layer asks for it), and accumulates in fp32.

Every decoded value is exact in bf16 (3 or 1 mantissa bits times a power of two), so the bf16 dot products
with fp32 accumulation are the reference's fp32 products up to summation order. The codes are decoded from
their bits with integer arithmetic, and the e4m3 rounding is done explicitly (nearest, ties to even), so the
same code runs natively and under Triton's CPU interpreter (which cannot multiply bf16 or fp8 itself).
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


if HAVE_TRITON:

    @triton.jit
    def _e4m3_round(v):  # type: ignore[no-untyped-def]
        """fp32 (already clamped to +-448) -> the nearest e4m3 value, ties to even, as fp32."""
        a = tl.abs(v)
        bits = a.to(tl.int32, bitcast=True)
        e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2^-6: the subnormal step 2^-9
        step = tl.exp2((e - 3).to(tl.float32))
        t = a / step
        f = tl.floor(t)
        d = t - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
        r = tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(odd, f + 1.0, f)))
        return tl.where(v < 0, -r * step, r * step)

    @triton.jit
    def _act_quant(x, ACT: tl.constexpr):  # type: ignore[no-untyped-def]
        """x [BM, 128] fp32 -> its e4m3 rounding per row with a power-of-two scale (amax floor 1e-4)."""
        if ACT:
            x = _e4m3_scaled(x, _act_scale(tl.max(tl.abs(x), axis=1)))
        return x

    @triton.jit
    def _act_scale(amax):  # type: ignore[no-untyped-def]
        """A 1x128 block's power-of-two scale from its absolute maximum (floored at 1e-4): 2^ceil(log2(r)),
        r = amax / 448, from the bits (the exponent, plus one unless r is already a power of two)."""
        abits = (tl.maximum(amax, 1.0e-4) / 448.0).to(tl.int32, bitcast=True)
        ex = ((abits >> 23) & 0xFF) - 127 + ((abits & 0x7FFFFF) != 0).to(tl.int32)
        return tl.exp2(ex.to(tl.float32))

    @triton.jit
    def _e4m3_scaled(x, scale):  # type: ignore[no-untyped-def]
        """x [BM, n] rounded to e4m3 with its rows' scales [BM], back in fp32."""
        return _e4m3_by(x, scale[:, None])

    @triton.jit
    def _e4m3_by(x, s):  # type: ignore[no-untyped-def]
        """x rounded to e4m3 at scale s (broadcastable to x), back in fp32."""
        return _e4m3_round(tl.minimum(tl.maximum(x / s, -448.0), 448.0)) * s

    @triton.jit
    def _act_quant_halves(xe, xo, ACT: tl.constexpr):  # type: ignore[no-untyped-def]
        """`_act_quant` of 1x128 blocks held as their even and odd columns ([BM, 64] each): one scale per
        block, from both halves' maximum."""
        if ACT:
            scale = _act_scale(tl.maximum(tl.max(tl.abs(xe), axis=1), tl.max(tl.abs(xo), axis=1)))
            xe, xo = _e4m3_scaled(xe, scale), _e4m3_scaled(xo, scale)
        return xe, xo

    @triton.jit
    def _e8m0(b):  # type: ignore[no-untyped-def]
        return tl.exp2((b.to(tl.int32) - 127).to(tl.float32))

    @triton.jit
    def _fp8_tile(w_ptr, s_ptr, rn, rk, k0, nm, wm, stride_wn, stride_sn):  # type: ignore[no-untyped-def]
        """Rows rn x columns rk (one 128-wide K block starting at k0) of an FP8 e4m3 weight with 128x128
        E8M0 tile scales, decoded to fp32 (exact: 3 mantissa bits times a power of two). The code is turned
        into fp32 bits with integer operations (no exp2 per element: decode is ALU-bound otherwise)."""
        b = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=wm, other=0)
        b = b.to(tl.int32) & 0xFF
        e = (b >> 3) & 15
        m = b & 7
        normal = ((e + 120) << 23) | (m << 20)  # 2^(e-7) * (1 + m/8)
        mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125, normal.to(tl.float32, bitcast=True))
        w = tl.where(b >= 128, -mag, mag)  # e == 0: subnormal m/8 * 2^-6 = m * 2^-9
        s = _e8m0(tl.load(s_ptr + (rn // 128) * stride_sn + k0 // 128, mask=nm, other=127))
        return w * s[:, None]

    @triton.jit
    def _fp4_tile(w_ptr, s_ptr, rn, rk, k0, K, nm, wm, stride_wn, stride_sn):  # type: ignore[no-untyped-def]
        """Rows rn x columns rk (the 128-wide K block at k0) of a packed FP4 e2m1 weight (two codes per
        byte, low nibble first) with one E8M0 scale per 32 values of a row, decoded to fp32 from the bits;
        the four scales of each row's block are loaded once and broadcast over their 32 values."""
        byte = tl.load(w_ptr + rn[:, None] * stride_wn + (rk // 2)[None, :], mask=wm, other=0)
        byte = byte.to(tl.int32) & 0xFF
        c = tl.where((rk % 2 == 0)[None, :], byte & 15, (byte >> 4) & 15)  # low nibble first
        e = (c >> 1) & 3
        m = c & 1
        bits = tl.where(e == 0, m * 0x3F000000, ((e + 126) << 23) | (m << 22))  # 0, 0.5 | 2^(e-1)(1 + m/2)
        w = (bits | ((c & 8) << 28)).to(tl.float32, bitcast=True)  # with the sign bit
        BN: tl.constexpr = w.shape[0]
        kg = k0 // 32 + tl.arange(0, 4)
        s = _e8m0(tl.load(s_ptr + rn[:, None] * stride_sn + kg[None, :],
                          mask=nm[:, None] & (kg * 32 < K)[None, :], other=127))  # fmt: skip
        return tl.reshape(tl.reshape(w, (BN, 4, 32)) * s[:, :, None], (BN, 128))

    @triton.jit
    def _quant_rows(x_ptr, o_ptr, K, stride_x, stride_o):  # type: ignore[no-untyped-def]
        """One row x one 128-block of x rounded to e4m3 with its power-of-two scale (`_act_quant`), stored
        in o's dtype: the rounded values are exact in bf16 (4 significant bits times a power of two), so the
        GEMMs read a rounded copy instead of rounding the same input again in every output tile."""
        r = tl.program_id(0).to(tl.int64)
        rk = tl.program_id(1) * 128 + tl.arange(0, 128)
        km = rk < K
        x = tl.load(x_ptr + r * stride_x + rk, mask=km, other=0.0).to(tl.float32)
        q = tl.reshape(_act_quant(tl.reshape(x, (1, 128)), True), (128,))
        tl.store(o_ptr + r * stride_o + rk, q.to(o_ptr.dtype.element_ty), mask=km)

    @triton.jit
    def _lowp_linear(  # type: ignore[no-untyped-def]
        x_ptr, w_ptr, s_ptr, o_ptr, M, N, K, K_PER,
        stride_xm, stride_wn, stride_sn, stride_os, stride_om,
        FP4: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, UPCAST: tl.constexpr,
        RAW: tl.constexpr = False, GROUP_N: tl.constexpr = 0, CVT: tl.constexpr = False,
    ):  # fmt: skip
        """o[split] = x[:, split's K range] W[:, same]^T; x already rounded (or not asked to be). RAW: W is a
        plain float matrix (bf16 / fp32), read as stored. GROUP_N: a grouped product, output rows
        [g * GROUP_N, (g + 1) * GROUP_N) read input columns [g * K, (g + 1) * K) (BN divides GROUP_N).
        CVT (FP8, bf16 dots): the codes go to bf16 through the hardware's e4m3 conversion (two per
        instruction, instead of a dozen integer operations per code) and the tile's power-of-two scale
        multiplies the block's dot product (exact: scaling by 2^s commutes with every rounding)."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_s = tl.program_id(2)
        if GROUP_N > 0:
            x_ptr += ((pid_n * BN) // GROUP_N).to(tl.int64) * K
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        mm, nm = rm < M, rn < N
        acc = tl.zeros((BM, BN), tl.float32)
        k_lo = pid_s * K_PER
        for k0 in range(k_lo, tl.minimum(k_lo + K_PER, K), 128):
            rk = k0 + tl.arange(0, 128)
            km = rk < K
            x = tl.load(
                x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=mm[:, None] & km[None, :], other=0.0
            )
            wm = nm[:, None] & km[None, :]
            if CVT:
                b = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=wm, other=0)
                wb = b.to(tl.float8e4nv, bitcast=True).to(tl.bfloat16)
                sc = _e8m0(tl.load(s_ptr + (rn // 128) * stride_sn + k0 // 128, mask=nm, other=127))
                if UPCAST:
                    d = tl.dot(x.to(tl.float32), tl.trans(wb.to(tl.float32)), input_precision="ieee")
                else:
                    d = tl.dot(x.to(tl.bfloat16), tl.trans(wb))
                acc += d * sc[None, :]
            else:
                if RAW:
                    w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=wm, other=0.0).to(
                        tl.float32
                    )
                elif FP4:
                    w = _fp4_tile(w_ptr, s_ptr, rn, rk, k0, K, nm, wm, stride_wn, stride_sn)
                else:
                    w = _fp8_tile(w_ptr, s_ptr, rn, rk, k0, nm, wm, stride_wn, stride_sn)
                if UPCAST:
                    acc += tl.dot(x.to(tl.float32), tl.trans(w), input_precision="ieee")
                else:
                    acc += tl.dot(x.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)))
        o = o_ptr + pid_s.to(tl.int64) * stride_os
        tl.store(o + rm[:, None] * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=mm[:, None] & nm[None, :])  # fmt: skip

    @triton.jit
    def _sum_splits(p_ptr, o_ptr, MN, SPLIT: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        """o = the split-K partials p [SPLIT, M*N] (fp32) added in split order, in o's dtype: one launch
        where a sum and a dtype cast took two."""
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = r < MN
        acc = tl.load(p_ptr + r, mask=m, other=0.0)
        for j in tl.static_range(1, SPLIT):
            acc += tl.load(p_ptr + j * MN + r, mask=m, other=0.0)
        tl.store(o_ptr + r, acc.to(o_ptr.dtype.element_ty), mask=m)


def supported(x: torch.Tensor) -> bool:
    return HAVE_TRITON and x.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


def quant_rows(x: torch.Tensor) -> torch.Tensor:
    """x [M, K] rounded to e4m3 in 1x128 blocks with power-of-two scales (the reference's `act_quant`),
    in x's dtype (exact)."""
    out = torch.empty_like(x)
    if x.numel():
        _quant_rows[(x.shape[0], triton.cdiv(x.shape[1], 128))](
            x, out, x.shape[1], x.stride(0), out.stride(0)
        )
    return out


#: SMs of the device, for the split-K choice (a decode GEMV has one row of tiles: without a split along K,
#: a small N leaves most of the GPU idle).
_SMS: dict[int, int] = {}


def _split_k(tiles: int, k_blocks: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1 if k_blocks < 4 else 2  # the interpreter: exercise the split, cheaply
    idx = device.index if device.index is not None else torch.cuda.current_device()
    sms = _SMS.setdefault(idx, torch.cuda.get_device_properties(idx).multi_processor_count)
    split = 1
    while tiles * split * 2 <= 2 * sms and k_blocks // (split * 2) >= 4:
        split *= 2
    return split


def lowp_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor | None,
    fmt: str,
    act_quant: bool,
    out_dtype: torch.dtype | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """y = x W^T for an FP8 (`weight` e4m3 [N, K], `scale` E8M0 [ceil(N/128), ceil(K/128)]) or FP4 (`weight`
    int8 [N, K/2] packed low nibble first, `scale` E8M0 [N, K/32]) linear, or ("float", no scale) a plain
    bf16 / fp32 weight read as stored; y in `out_dtype` (default x's dtype).

    The "float" form with an fp32 result is the fp32 product `x.float() @ W.float().T` of the torch path
    without the fp32 copies of x and W that path makes on every call (an fp32 W is multiplied in fp32, a
    bf16 W with bf16 x in bf16 products with fp32 sums: exact either way, only the summation order differs).

    The input is rounded once (`quant_rows`) when `act_quant`; small M (decode) splits K over more programs
    and sums the fp32 partials in a fixed order (deterministic, unlike atomics).

    `groups` > 1: a grouped product (attention's wo_a): x [..., groups * K], W [groups * N_g, K], and output
    group g = x's group g times W's rows of group g: y [..., groups * N_g]."""
    lead, k = x.shape[:-1], x.shape[-1] // groups
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    m = x2.shape[0]
    n = weight.shape[0]
    odt = out_dtype or x.dtype
    if m == 0:
        return torch.empty(m, n, dtype=odt, device=x.device).view(*lead, n)
    if act_quant:
        x2 = quant_rows(x2)
    raw = fmt == "float"
    if raw:
        w = s = weight
    else:
        assert scale is not None
        w = weight.view(torch.uint8) if weight.dtype != torch.int8 else weight
        s = scale.view(torch.uint8)
    bm = 16 if m <= 16 else 32 if m <= 32 else 64
    bn = tune("lowp_bn", 32) if m <= 16 else 64
    if groups > 1 and (n % groups or (n // groups) % bn or act_quant):
        raise ValueError(f"grouped lowp_linear: {n} rows, {groups} groups of {bn}-row tiles, no act_quant")
    tiles = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    k_blocks = triton.cdiv(k, 128)
    split = _split_k(tiles, k_blocks, x.device)
    k_per = triton.cdiv(k_blocks, split) * 128
    split = triton.cdiv(k, k_per)
    # one split: the kernel stores the result in its dtype; else fp32 partials, summed in split order
    out = torch.empty(split, m, n, dtype=torch.float32 if split > 1 else odt, device=x.device)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn), split)
    upcast = (
        x.dtype == torch.float32
        or (raw and weight.dtype == torch.float32)
        or os.environ.get("TRITON_INTERPRET") == "1"
    )
    _lowp_linear[grid](
        x2, w, s, out, m, n, k, k_per,
        x2.stride(0), w.stride(0), s.stride(0), out.stride(0), out.stride(1),
        FP4=fmt == "fp4", BM=bm, BN=bn, RAW=raw, GROUP_N=n // groups if groups > 1 else 0,
        UPCAST=upcast, CVT=fmt == "fp8" and not raw and bool(tune("lowp_cvt", 1)),
        num_warps=tune("lowp_warps", 4), num_stages=tune("lowp_stages", 4),
    )  # fmt: skip
    if split == 1:
        return out[0].view(*lead, n)
    y = torch.empty(m, n, dtype=odt, device=x.device)
    _sum_splits[(triton.cdiv(m * n, 1024),)](out, y, m * n, SPLIT=split, BLOCK=1024)
    return y.view(*lead, n)
