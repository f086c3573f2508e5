"""DeepSeek-V4 weight codecs: FP8 e4m3 with E8M0 128x128 tile scales, packed FP4 e2m1 with E8M0 per-32 scales.

These are the storage formats of the real checkpoint (spec §7.3, §9.1), so every random or trained checkpoint
this project writes uses the same bytes the real one does. Dequantization is exact (an e4m3/e2m1 value times a
power of two is representable in bf16/fp32 unless it leaves the exponent range), and it works chunk by
chunk so that a large weight never needs an fp32 copy of itself next to the output.

E8M0 scales are always reinterpreted from their raw bytes (byte e means 2^(e-127), 255 is NaN): a numeric
cast of an e8m0 tensor into another dtype is the loader pitfall vLLM documents, so nothing here relies on one.
"""

from __future__ import annotations

import torch

__all__ = [
    "E8M0_DTYPE",
    "FP4_BLOCK",
    "FP4_MAX",
    "FP4_VALUES",
    "FP8_BLOCK",
    "FP8_DTYPE",
    "FP8_MAX",
    "QuantError",
    "dequant_fp4",
    "dequant_fp8",
    "e8m0_from_exponent",
    "e8m0_to_float",
    "fp4_scale_shape",
    "fp4_to_fp8",
    "fp8_scale_shape",
    "quant_fp4",
    "quant_fp8",
]

FP8_DTYPE = torch.float8_e4m3fn
# torch < 2.7 has no float8_e8m0fnu; raw uint8 bytes carry the same information.
E8M0_DTYPE: torch.dtype = getattr(torch, "float8_e8m0fnu", torch.uint8)
FP8_BLOCK = 128
FP4_BLOCK = 32
FP8_MAX = 448.0
FP4_MAX = 6.0
# e2m1 magnitude codes 0..7; bit 3 is the sign.
FP4_VALUES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
# Same floors as the reference's activation quantizers: an all-zero block still gets a finite scale.
_FP8_AMAX_FLOOR = 1e-4
_FP4_AMAX_FLOOR = FP4_MAX * 2.0**-126
# Elements per chunk when (de)quantizing: bounds temporaries to a few tens of MiB whatever the weight size.
_CHUNK_ELEMS = 1 << 22


class QuantError(ValueError):
    """A tensor does not have the shape, dtype or values a V4 weight codec requires."""


def fp8_scale_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """One scale per 128x128 tile, ragged edge tiles included."""
    return (-(-out_features // FP8_BLOCK), -(-in_features // FP8_BLOCK))


def fp4_scale_shape(out_features: int, in_features: int) -> tuple[int, int]:
    """One scale per 32 consecutive input values of a row."""
    return (out_features, in_features // FP4_BLOCK)


def e8m0_to_float(scale: torch.Tensor) -> torch.Tensor:
    """Decode E8M0 scales to fp32 from their bytes; float inputs are taken as already-decoded scales.

    Raw uint8 bytes are decoded by building the fp32 bit pattern; the e8m0 dtype uses torch's own conversion,
    which a test checks against that construction for all 256 bytes (one kernel instead of five).
    """
    if scale.dtype == E8M0_DTYPE and scale.dtype != torch.uint8:
        return scale.float()
    if scale.dtype.is_floating_point:
        return scale.float()
    if scale.dtype != torch.uint8:
        raise QuantError(f"E8M0 scales must be {E8M0_DTYPE} or uint8 bytes, got {scale.dtype}")
    e = scale.to(torch.int32)
    # Build the fp32 bits directly: exponent field e for e >= 1, the subnormal 2^-127 for e == 0, NaN for 255.
    bits = torch.where(e == 0, torch.full_like(e, 0x00400000), e << 23)
    bits = torch.where(e == 255, torch.full_like(e, 0x7FC00000), bits)
    return bits.view(torch.float32)


def _scales_as(scale: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Decoded scales in `dtype` (bf16 or fp32: both hold every E8M0 value exactly) on `device`."""
    if scale.dtype == E8M0_DTYPE and scale.dtype != torch.uint8:
        return scale.to(device=device, dtype=dtype)  # one conversion kernel; exactness is tested per byte
    return e8m0_to_float(scale).to(device=device, dtype=dtype)


def e8m0_from_exponent(exponent: torch.Tensor) -> torch.Tensor:
    """Encode integer power-of-two exponents (2^k) as E8M0 bytes, raising on values E8M0 cannot hold."""
    k = exponent.to(torch.int32)
    if k.numel() and (int(k.min()) < -127 or int(k.max()) > 127):
        raise QuantError(f"E8M0 exponent out of range [-127, 127]: min {int(k.min())}, max {int(k.max())}")
    return (k + 127).to(torch.uint8).view(E8M0_DTYPE)


def _pow2(k: torch.Tensor) -> torch.Tensor:
    """Exact 2^k in fp32 for integer k in [-127, 127] (via the E8M0 bit pattern, never through pow/log)."""
    return e8m0_to_float(e8m0_from_exponent(k))


def _ceil_log2(x: torch.Tensor) -> torch.Tensor:
    """Exact ceil(log2(x)) for positive finite fp32 x (frexp avoids log2 rounding at exact powers of two)."""
    mantissa, exp = torch.frexp(x)
    return torch.where(mantissa == 0.5, exp - 1, exp)


def _check_finite(w: torch.Tensor) -> None:
    if not bool(torch.isfinite(w).all()):
        raise QuantError("cannot quantize a tensor with NaN or infinite values")


def _row_chunk(rows: int, cols: int, multiple: int, device: torch.device | None = None) -> int:
    """Rows per chunk: a multiple of the scale block height so chunks never split a tile.

    GPUs get 16x larger chunks: their memory is larger and every chunk is a kernel launch."""
    limit = _CHUNK_ELEMS * (16 if device is not None and device.type == "cuda" else 1)
    per = max(1, limit // max(cols, 1))
    per = max(multiple, per // multiple * multiple)
    return min(per, max(rows, 1))


def _as_3d(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.dim() < 2:
        raise QuantError(f"{name} must have at least 2 dims [..., out, in], got shape {tuple(t.shape)}")
    return t.reshape(-1, t.shape[-2], t.shape[-1])


# ------------------------------------------------------------------------------------------------ FP8


def dequant_fp8(
    weight: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """FP8 e4m3 weight [..., out, in] with E8M0 tile scales [..., ceil(out/128), ceil(in/128)] -> `dtype`."""
    if weight.dtype != FP8_DTYPE:
        raise QuantError(f"FP8 weight must be {FP8_DTYPE}, got {weight.dtype}")
    if weight.dim() < 2:
        raise QuantError(
            f"FP8 weight must have at least 2 dims [..., out, in], got shape {tuple(weight.shape)}"
        )
    out_f, in_f = weight.shape[-2], weight.shape[-1]
    want = (*weight.shape[:-2], *fp8_scale_shape(out_f, in_f))
    if tuple(scale.shape) != want:
        raise QuantError(
            f"FP8 scale shape {tuple(scale.shape)} does not match weight {tuple(weight.shape)}: want {want}"
        )
    if dtype in _EXACT_DTYPES:
        return _dequant_fp8_in_place(weight, scale, dtype)
    s = e8m0_to_float(scale).to(weight.device).reshape(-1, want[-2], want[-1])
    w3 = _as_3d(weight, "FP8 weight")
    out = torch.empty(w3.shape, dtype=dtype, device=weight.device)
    n_ib = want[-1]
    full_in = in_f // FP8_BLOCK * FP8_BLOCK
    step = _row_chunk(out_f, in_f, FP8_BLOCK)
    for b in range(w3.shape[0]):
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            # Per-row scales for this chunk: [rows, n_ib] (1/128 of the chunk's size).
            s_rows = s[b, r0 // FP8_BLOCK : -(-r1 // FP8_BLOCK)].repeat_interleave(FP8_BLOCK, 0)[: r1 - r0]
            blk = w3[b, r0:r1].float()
            if full_in:
                core = blk[:, :full_in].view(r1 - r0, full_in // FP8_BLOCK, FP8_BLOCK)
                core.mul_(s_rows[:, : full_in // FP8_BLOCK, None])
            if full_in < in_f:
                blk[:, full_in:].mul_(s_rows[:, n_ib - 1 : n_ib])
            out[b, r0:r1] = blk
    return out.reshape(weight.shape)


# Output dtypes with fp32's exponent range: an e4m3/e2m1 value times an E8M0 power of two is computed (in fp32
# registers) and rounded once, exactly as an fp32 detour would, so the product can be formed in place.
_EXACT_DTYPES = (torch.bfloat16, torch.float32)


def _dequant_fp8_in_place(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast to `dtype`, then scale in place by row: no temporary beyond the output and per-row scales."""
    out = weight.to(dtype, memory_format=torch.contiguous_format)
    out_f, in_f = weight.shape[-2], weight.shape[-1]
    ob, ib = fp8_scale_shape(out_f, in_f)
    o = out.view(-1, out_f, in_f)
    s = _scales_as(scale, dtype, weight.device).reshape(-1, ob, ib)
    rows = s.repeat_interleave(FP8_BLOCK, dim=1)[:, :out_f]  # [n, out, ib]: 1/128 of the weight
    fi = in_f // FP8_BLOCK * FP8_BLOCK
    if fi:
        o[:, :, :fi].view(o.shape[0], out_f, fi // FP8_BLOCK, FP8_BLOCK).mul_(
            rows[:, :, : fi // FP8_BLOCK, None]
        )
    if fi < in_f:  # ragged last column of tiles
        o[:, :, fi:].mul_(rows[:, :, -1:])
    return out


def quant_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [..., out, in] to e4m3 with power-of-two (E8M0) 128x128 tile scales.

    The scale of a tile is 2^ceil(log2(amax/448)), the rule the reference uses for its own FP8 quantization,
    so every tile uses the smallest power of two that cannot overflow e4m3. Round trip:
    dequant_fp8(*quant_fp8(w)) is the nearest e4m3 value of w/scale times scale.
    """
    if not w.dtype.is_floating_point or w.dtype in (FP8_DTYPE, E8M0_DTYPE):
        raise QuantError(f"quant_fp8 needs a float32/bf16/fp16 tensor, got {w.dtype}")
    w3 = _as_3d(w, "weight")
    _check_finite(w3)
    out_f, in_f = w3.shape[-2], w3.shape[-1]
    ob, ib = fp8_scale_shape(out_f, in_f)
    q = torch.empty(w3.shape, dtype=FP8_DTYPE, device=w.device)
    scale = torch.empty((w3.shape[0], ob, ib), dtype=torch.uint8, device=w.device)
    pad_in = ib * FP8_BLOCK - in_f
    step = _row_chunk(out_f, in_f, FP8_BLOCK)
    for b in range(w3.shape[0]):
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            rows = r1 - r0
            blk = w3[b, r0:r1].float()
            pad_out = -(-rows // FP8_BLOCK) * FP8_BLOCK - rows
            padded = torch.nn.functional.pad(blk.abs(), (0, pad_in, 0, pad_out))
            amax = padded.view(-1, FP8_BLOCK, ib, FP8_BLOCK).amax(dim=(1, 3)).clamp_min(_FP8_AMAX_FLOOR)
            k = _ceil_log2(amax / FP8_MAX)
            scale[b, r0 // FP8_BLOCK : r0 // FP8_BLOCK + k.shape[0]] = e8m0_from_exponent(k).view(torch.uint8)
            inv = _pow2(-k).repeat_interleave(FP8_BLOCK, 0)[:rows]
            inv = inv.repeat_interleave(FP8_BLOCK, 1)[:, :in_f]
            q[b, r0:r1] = (blk * inv).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q.reshape(w.shape), scale.view(E8M0_DTYPE).reshape(*w.shape[:-2], ob, ib)


# ------------------------------------------------------------------------------------------------ FP4


_PAIR_LUTS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _fp4_pair_lut(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[256, 2]: the two e2m1 values of every byte (low nibble, high nibble), exact in any float dtype.

    Cached per device: building it there on every call costs a host-to-device copy per dequantization."""
    key = (device, dtype)
    lut = _PAIR_LUTS.get(key)
    if lut is None:
        mags = torch.tensor(FP4_VALUES, dtype=torch.float32)
        codes = torch.cat([mags, -mags])
        b = torch.arange(256)
        lut = torch.stack([codes[b & 0xF], codes[b >> 4]], dim=-1).to(device=device, dtype=dtype)
        _PAIR_LUTS[key] = lut
    return lut


def _check_fp4(packed: torch.Tensor, scale: torch.Tensor) -> tuple[int, int]:
    """(out, in) of a packed FP4 weight after checking its dtype and its scales' shape."""
    if packed.dtype not in (torch.int8, torch.uint8) and packed.dtype != getattr(
        torch, "float4_e2m1fn_x2", None
    ):
        raise QuantError(f"packed FP4 weight must be int8/uint8 bytes, got {packed.dtype}")
    if packed.dim() < 2:
        raise QuantError(f"packed FP4 weight must have at least 2 dims, got shape {tuple(packed.shape)}")
    out_f, in_f = packed.shape[-2], packed.shape[-1] * 2
    if in_f % FP4_BLOCK:
        raise QuantError(f"FP4 input dim {in_f} is not a multiple of {FP4_BLOCK}")
    want = (*packed.shape[:-2], *fp4_scale_shape(out_f, in_f))
    if tuple(scale.shape) != want:
        raise QuantError(
            f"FP4 scale shape {tuple(scale.shape)} does not match packed {tuple(packed.shape)}: want {want}"
        )
    return out_f, in_f


def dequant_fp4(
    packed: torch.Tensor, scale: torch.Tensor, *, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Packed e2m1 [..., out, in/2] (int8/uint8, element 2k in the low nibble) -> dtype.

    Scales are E8M0 [..., out, in/32].
    """
    out_f, in_f = _check_fp4(packed, scale)
    exact = dtype in _EXACT_DTYPES
    work = dtype if exact else torch.float32
    s = _scales_as(scale, work, packed.device).reshape(-1, out_f, in_f // FP4_BLOCK)
    p3 = packed.view(torch.uint8).reshape(-1, out_f, in_f // 2)
    # The two values of a byte, viewed as one integer twice their width: one gather per byte writes both.
    wide = torch.int32 if work == torch.bfloat16 else torch.int64
    lut = _fp4_pair_lut(packed.device, work).view(wide).view(-1)
    out = torch.empty((p3.shape[0], out_f, in_f), dtype=dtype, device=packed.device)
    step = _row_chunk(out_f, in_f, 1, packed.device)
    for b in range(p3.shape[0]):
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            idx = p3[b, r0:r1].reshape(-1).to(torch.int32)
            if exact:  # gather straight into the output, then scale in place
                dst = out[b, r0:r1]
                torch.index_select(lut, 0, idx, out=dst.view(wide).view(-1))
            else:
                dst = torch.index_select(lut, 0, idx).view(work).view(r1 - r0, in_f)
            dst.view(r1 - r0, in_f // FP4_BLOCK, FP4_BLOCK).mul_(s[b, r0:r1, :, None])
            if not exact:
                out[b, r0:r1] = dst
    return out.reshape(*packed.shape[:-1], in_f)


def _round_e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """Round fp32 values scaled into [-6, 6] to e2m1 codes, nearest with ties to even (the hardware cast).

    The e2m1 grid has spacing 0.5 below 2, 1 in [2, 4) and 2 in [4, 6]; within each range the code is an
    offset plus the rounded grid index, and torch.round's half-to-even picks the even code at every tie.
    """
    a = x.abs()
    code = torch.where(
        a < 2.0, torch.round(a * 2.0), torch.where(a < 4.0, torch.round(a) + 2.0, torch.round(a * 0.5) + 4.0)
    )
    code = code.to(torch.uint8)
    return code | (torch.signbit(x).to(torch.uint8) << 3)


def quant_fp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize [..., out, in] to packed e2m1 bytes (int8, like the checkpoint) and E8M0 per-32 scales.

    Scale per 32 values is 2^ceil(log2(amax/6)) (the reference's FP4 rule); values round to nearest even.
    """
    if not w.dtype.is_floating_point or w.dtype in (FP8_DTYPE, E8M0_DTYPE):
        raise QuantError(f"quant_fp4 needs a float32/bf16/fp16 tensor, got {w.dtype}")
    w3 = _as_3d(w, "weight")
    out_f, in_f = w3.shape[-2], w3.shape[-1]
    if in_f % FP4_BLOCK:
        raise QuantError(f"FP4 input dim {in_f} is not a multiple of {FP4_BLOCK}")
    _check_finite(w3)
    nb = in_f // FP4_BLOCK
    packed = torch.empty((w3.shape[0], out_f, in_f // 2), dtype=torch.uint8, device=w.device)
    scale = torch.empty((w3.shape[0], out_f, nb), dtype=torch.uint8, device=w.device)
    step = _row_chunk(out_f, in_f, 1)
    for b in range(w3.shape[0]):
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            blk = w3[b, r0:r1].float().view(r1 - r0, nb, FP4_BLOCK)
            amax = blk.abs().amax(dim=-1).clamp_min(_FP4_AMAX_FLOOR)
            k = _ceil_log2(amax / FP4_MAX)
            scale[b, r0:r1] = e8m0_from_exponent(k).view(torch.uint8)
            scaled = (blk * _pow2(-k)[..., None]).clamp_(-FP4_MAX, FP4_MAX)
            codes = _round_e2m1_codes(scaled).view(r1 - r0, in_f // 2, 2)
            packed[b, r0:r1] = codes[..., 0] | (codes[..., 1] << 4)
    return (
        packed.view(torch.int8).reshape(*w.shape[:-1], in_f // 2),
        scale.view(E8M0_DTYPE).reshape(*w.shape[:-1], nb),
    )


def fp4_to_fp8(packed: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-encode packed FP4 experts (per-32 scales) as e4m3 with 128x128 tile scales (spec §7.3).

    The path for hardware or kernels without FP4: a tile's scale is its largest per-32 scale over 2^6, and
    each value absorbs the ratio of its own scale to that (a power of two <= 2^6, so |value| <= 6 * 64 = 384
    stays inside e4m3). Exact unless the scales inside one tile span so widely that the smallest values
    underflow e4m3, as the reference's `convert.py --expert-dtype fp8` does.
    """
    out_f, in_f = _check_fp4(packed, scale)
    ob, ib = fp8_scale_shape(out_f, in_f)
    groups = in_f // FP4_BLOCK
    per_tile = FP8_BLOCK // FP4_BLOCK
    p3 = packed.view(torch.uint8).reshape(-1, out_f, in_f // 2)
    k = scale.view(torch.uint8).reshape(-1, out_f, groups).to(torch.int32) - 127
    # tile exponent = max over the tile's per-32 exponents, minus 6
    pad = torch.full(
        (k.shape[0], ob * FP8_BLOCK, ib * per_tile), -(1 << 20), dtype=torch.int32, device=k.device
    )
    pad[:, :out_f, :groups] = k
    kt = (pad.view(-1, ob, FP8_BLOCK, ib, per_tile).amax(dim=(2, 4)) - 6).clamp_(min=-127)
    lut = _fp4_pair_lut(packed.device, torch.float32)
    weight = torch.empty((p3.shape[0], out_f, in_f), dtype=FP8_DTYPE, device=packed.device)
    step = _row_chunk(out_f, in_f, FP8_BLOCK, packed.device)
    for b in range(p3.shape[0]):
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            rows = r1 - r0
            vals = lut[p3[b, r0:r1].to(torch.int32)].view(rows, groups, FP4_BLOCK)
            tile = kt[b, r0 // FP8_BLOCK : -(-r1 // FP8_BLOCK)].repeat_interleave(FP8_BLOCK, 0)[:rows]
            tile = tile.repeat_interleave(per_tile, 1)[:, :groups]
            vals.mul_(_pow2((k[b, r0:r1] - tile).clamp_(min=-127))[..., None])
            weight[b, r0:r1] = vals.view(rows, in_f).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return (
        weight.reshape(*packed.shape[:-1], in_f),
        e8m0_from_exponent(kt).reshape(*packed.shape[:-2], ob, ib),
    )
