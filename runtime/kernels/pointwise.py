"""Row-wise ops of the decode step as one kernel each: RMSNorm (weighted and not), interleaved RoPE, and the
FP8 / FP4 quantize-dequantize simulations of the KV cache and the indexer (`layers/lowp.py`).

Why: a batch-1 decode step is a few thousand launches, not bytes. In torch each of these is 6-16 small ops
(`float()`, square, mean, rsqrt, multiply, cast; cos, sin, two strided slices, four products, stack, cat;
block view, amax, log2, ceil, exp2, divide, clamp, cast, multiply, slice), and on a flash-reduced step they
issued about half of all launches. Here each call is one program per row that reads the row once.

Numerics follow the torch references (fp32 math, results cast to the input's dtype): the norm's sum of
squares is accumulated in another order and rsqrt / cos / sin are the device's, so values agree to fp32
rounding, not bit for bit; the quantization simulations are exact (power-of-two scales taken from the bits,
round-to-nearest-even done explicitly), so they equal the reference's bits.
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
    from agentkit.runtime.kernels.lowp_gemm import _e4m3_round

    @triton.jit
    def _rms_norm(  # type: ignore[no-untyped-def]
        x_ptr,
        w_ptr,
        o_ptr,
        D,
        stride_x,
        stride_o,
        eps: tl.constexpr,
        HAS_W: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        r = tl.program_id(0).to(tl.int64)
        acc = tl.zeros((BLOCK,), tl.float32)
        for d0 in range(0, D, BLOCK):
            rd = d0 + tl.arange(0, BLOCK)
            x = tl.load(x_ptr + r * stride_x + rd, mask=rd < D, other=0.0).to(tl.float32)
            acc += x * x
        inv = 1.0 / tl.sqrt(tl.sum(acc, axis=0) / D + eps)
        for d0 in range(0, D, BLOCK):
            rd = d0 + tl.arange(0, BLOCK)
            m = rd < D
            y = tl.load(x_ptr + r * stride_x + rd, mask=m, other=0.0).to(tl.float32) * inv
            if HAS_W:
                y = y * tl.load(w_ptr + rd, mask=m, other=0.0).to(tl.float32)
            tl.store(o_ptr + r * stride_o + rd, y.to(o_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _rope(  # type: ignore[no-untyped-def]
        x_ptr, pos_ptr, f_ptr, o_ptr, D, NOPE, HALF, PER_T, stride_x, stride_o,
        SIGN: tl.constexpr, BLOCK: tl.constexpr, BHALF: tl.constexpr,
    ):  # fmt: skip
        r = tl.program_id(0).to(tl.int64)
        t = r // PER_T
        for d0 in range(0, NOPE, BLOCK):  # the dims without rotation, copied
            rd = d0 + tl.arange(0, BLOCK)
            m = rd < NOPE
            tl.store(o_ptr + r * stride_o + rd, tl.load(x_ptr + r * stride_x + rd, mask=m), mask=m)
        i = tl.arange(0, BHALF)
        m = i < HALF
        ang = tl.load(pos_ptr + t).to(tl.float32) * tl.load(f_ptr + i, mask=m, other=0.0)
        c = tl.cos(ang)
        s = tl.sin(ang) * SIGN
        pa = NOPE + 2 * i
        a = tl.load(x_ptr + r * stride_x + pa, mask=m, other=0.0).to(tl.float32)
        b = tl.load(x_ptr + r * stride_x + pa + 1, mask=m, other=0.0).to(tl.float32)
        ty = o_ptr.dtype.element_ty
        tl.store(o_ptr + r * stride_o + pa, (a * c - b * s).to(ty), mask=m)
        tl.store(o_ptr + r * stride_o + pa + 1, (a * s + b * c).to(ty), mask=m)

    @triton.jit
    def _fp4_round(a):  # type: ignore[no-untyped-def]
        """|y| <= 6 -> the nearest e2m1 magnitude (0, .5, 1, 1.5, 2, 3, 4, 6), ties to the even code."""
        r = tl.where(
            a < 2.0, tl.floor(a * 2.0), tl.where(a < 4.0, tl.floor(a) + 2.0, tl.floor(a * 0.5) + 4.0)
        )
        lo = tl.where(r < 4.0, r * 0.5, tl.where(r < 6.0, r - 2.0, (r - 4.0) * 2.0))  # code r -> its value
        hi = tl.where(r + 1.0 < 4.0, (r + 1.0) * 0.5, tl.where(r + 1.0 < 6.0, r - 1.0, (r - 3.0) * 2.0))
        hi = tl.where(r >= 7.0, lo, hi)
        mid = (lo + hi) * 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        up = (a > mid) | ((a == mid) & odd)
        return tl.where(up & (r < 7.0), hi, lo)

    @triton.jit
    def _roundtrip(  # type: ignore[no-untyped-def]
        x_ptr, o_ptr, D, KEEP, stride_x, stride_o,
        FP4: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
    ):  # fmt: skip
        """One row: dims [0, D - KEEP) quantized and dequantized per BLOCK values, the last KEEP copied."""
        r = tl.program_id(0).to(tl.int64)
        q_len = D - KEEP
        rb = tl.arange(0, NB)
        rc = tl.arange(0, BLOCK)
        rd = rb[:, None] * BLOCK + rc[None, :]
        m = rd < q_len
        x = tl.load(x_ptr + r * stride_x + rd, mask=m, other=0.0).to(tl.float32)
        if FP4:
            amax = tl.maximum(tl.max(tl.abs(x), axis=1), 6.0 * 1.1754943508222875e-38)
            ratio = amax / 6.0
        else:
            amax = tl.maximum(tl.max(tl.abs(x), axis=1), 1.0e-4)
            ratio = amax / 448.0
        bits = ratio.to(tl.int32, bitcast=True)  # 2^ceil(log2(ratio)), exactly, from the bits
        ex = ((bits >> 23) & 0xFF) - 127 + ((bits & 0x7FFFFF) != 0).to(tl.int32)
        scale = tl.exp2(ex.to(tl.float32))[:, None]
        if FP4:
            y = tl.minimum(tl.maximum(x / scale, -6.0), 6.0)
            a = _fp4_round(tl.abs(y))
            q = tl.where(y < 0, -a, a) * scale
        else:
            q = _e4m3_round(tl.minimum(tl.maximum(x / scale, -448.0), 448.0)) * scale
        ty = o_ptr.dtype.element_ty
        tl.store(o_ptr + r * stride_o + rd, q.to(ty), mask=m)
        rk = tl.arange(0, 64)
        for k0 in range(0, KEEP, 64):
            km = k0 + rk < KEEP
            v = tl.load(x_ptr + r * stride_x + q_len + k0 + rk, mask=km)
            tl.store(o_ptr + r * stride_o + q_len + k0 + rk, v, mask=km)


if HAVE_TRITON:

    @triton.jit
    def _swiglu(a_ptr, b_ptr, o_ptr, N, limit: tl.constexpr, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < N
        a = tl.minimum(tl.load(a_ptr + i, mask=m, other=0.0).to(tl.float32), limit)
        b = tl.minimum(tl.maximum(tl.load(b_ptr + i, mask=m, other=0.0).to(tl.float32), -limit), limit)
        h = a / (1.0 + tl.exp(-a)) * b
        tl.store(o_ptr + i, h.to(o_ptr.dtype.element_ty), mask=m)


def swiglu(a: torch.Tensor, b: torch.Tensor, limit: float, out_dtype: torch.dtype) -> torch.Tensor:
    """`moe.Expert`'s activation: silu(min(a, limit)) * clamp(b, +-limit) in fp32, cast to out_dtype."""
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty(a.shape, dtype=out_dtype, device=a.device)
    n = a.numel()
    if n:
        _swiglu[(triton.cdiv(n, 1024),)](a, b, out, n, limit=float(limit), BLOCK=1024)
    return out


def supported(x: torch.Tensor) -> bool:
    return HAVE_TRITON and x.is_cuda and not torch.is_grad_enabled() and family_on(__name__)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as [rows, last dim] with unit stride along the last dim (a view when it can be)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor | None, eps: float, out_dtype: torch.dtype
) -> torch.Tensor:
    """`norms.RMSNorm` (weight given) or `norms.rms_unweighted` (None) over the last dim."""
    x2 = _rows(x)
    d = x2.shape[1]
    out = torch.empty(x2.shape, dtype=out_dtype, device=x.device)
    if x2.shape[0]:
        w = weight if weight is not None else x2
        _rms_norm[(x2.shape[0],)](
            x2, w, out, d, x2.stride(0), out.stride(0), float(eps),
            HAS_W=weight is not None, BLOCK=min(2048, triton.next_power_of_2(d)),
        )  # fmt: skip
    return out.view(x.shape)


def rope(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor, inverse: bool) -> torch.Tensor:
    """`rope.apply_rope`: rotate pairs of the trailing 2 * len(freqs) dims of each x[t] by positions[t]."""
    x2 = _rows(x)
    d, half = x2.shape[1], freqs.shape[0]
    out = torch.empty_like(x2)
    t = x.shape[0]
    if x2.shape[0]:
        _rope[(x2.shape[0],)](
            x2, positions, freqs, out, d, d - 2 * half, half, x2.shape[0] // t, x2.stride(0), out.stride(0),
            SIGN=-1.0 if inverse else 1.0, BLOCK=min(1024, triton.next_power_of_2(max(d - 2 * half, 1))),
            BHALF=triton.next_power_of_2(half),
        )  # fmt: skip
    return out.view(x.shape)


def roundtrip(x: torch.Tensor, fmt: str, block: int, keep: int = 0) -> torch.Tensor:
    """`lowp.fp8_roundtrip` (fmt "fp8") / `lowp.fp4_roundtrip` ("fp4") of all but the last `keep` dims,
    which are copied (`lowp.fp8_kv_roundtrip` keeps the RoPE dims)."""
    x2 = _rows(x)
    d = x2.shape[1]
    out = torch.empty_like(x2)
    if x2.shape[0]:
        nb = triton.next_power_of_2(triton.cdiv(d - keep, block))
        _roundtrip[(x2.shape[0],)](
            x2, out, d, keep, x2.stride(0), out.stride(0), FP4=fmt == "fp4", BLOCK=block, NB=nb
        )
    return out.view(x.shape)


__all__ = ["rms_norm", "rope", "roundtrip", "supported", "swiglu"]
