"""Math shared by the routed-expert kernels, blocked (`moe`) and per pair (`moe_pairs`): how an fp32
accumulator becomes the reference's linear output, the experts' clamped SwiGLU epilogue, and how packed FP4
bytes and their E8M0 scales decode from their bits."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round_act(v, BF16: tl.constexpr):  # type: ignore[no-untyped-def]
    """A linear's fp32 accumulator as the reference sees it: its output in the activation dtype, kept as
    fp32. The bf16 rounding (nearest, ties to even) is done on the bits: Triton's CPU interpreter
    truncates in `.to(tl.bfloat16)`, and one unit of difference here can move a value across an e4m3
    rounding boundary of the next GEMM's input."""
    if BF16:
        bits = v.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)
    return v


@triton.jit
def _swiglu(acc1, acc3, rw, limit, BF16: tl.constexpr):  # type: ignore[no-untyped-def]
    """The expert's hidden value from its two fp32 accumulators: each rounded as the reference's linear
    output, gate clamped above at `limit`, up to [-limit, limit], silu(gate) * up * routing weight rw,
    rounded to the activation dtype (h is stored exactly in it)."""
    # .to(fp32): torch.compile passes the Python float `limit` as fp64, which would promote a and b
    a = tl.minimum(_round_act(acc1, BF16), limit).to(tl.float32)
    b = tl.minimum(tl.maximum(_round_act(acc3, BF16), -limit), limit).to(tl.float32)
    return _round_act((a / (1.0 + tl.exp(-a))) * b * rw, BF16)


@triton.jit
def _fp4_codes(byte):  # type: ignore[no-untyped-def]
    """A packed FP4 byte (int32, 0..255) as its two e2m1 values (low nibble first) times 2^-14, fp32: a code
    (sign, e1 e0 m) with its three low bits placed at fp16's exponent/mantissa boundary reads as
    2^(e-15)(1 + m/2), or m 2^-15 at e = 0 (fp16's subnormal): the e2m1 value times 2^-14, exactly."""
    lo = (((byte & 7) << 9) | ((byte & 8) << 12)).to(tl.int16).to(tl.float16, bitcast=True)
    hi = (((byte & 0x70) << 5) | ((byte & 0x80) << 8)).to(tl.int16).to(tl.float16, bitcast=True)
    return lo.to(tl.float32), hi.to(tl.float32)


@triton.jit
def _fp4_codes_f32(byte):  # type: ignore[no-untyped-def]
    """`_fp4_codes` without a conversion instruction per code, the e2m1 values themselves (not times 2^-14):
    a code's three low bits placed at fp32's exponent/mantissa boundary read as 2^(e-127)(1 + m/2), or
    m 2^-127 at e = 0 (fp32's subnormal), so one multiply by 2^126 gives the value, exactly. Needs fp32
    subnormals kept (no flush to zero): the GPU A/B and `tests/test_runtime_kernels.py` check it."""
    lo = (((byte & 7) << 22) | ((byte & 8) << 28)).to(tl.float32, bitcast=True)
    hi = (((byte & 0x70) << 18) | ((byte & 0x80) << 24)).to(tl.float32, bitcast=True)
    return lo * 8.507059173023462e37, hi * 8.507059173023462e37


@triton.jit
def _e8m0_bits(sb):  # type: ignore[no-untyped-def]
    """2^(s - 127) of an E8M0 scale byte s (int32) from the bits (s = 0: 2^-127, fp32's subnormal)."""
    return tl.where(sb == 0, 0x00400000, sb << 23).to(tl.float32, bitcast=True)
