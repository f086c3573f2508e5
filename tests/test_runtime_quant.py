"""FP8 e4m3 / FP4 e2m1 / E8M0 codecs against hand-computed values and independent (pure Python) references."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from agentkit.runtime import quant
from agentkit.runtime.quant import (
    E8M0_DTYPE,
    FP8_DTYPE,
    QuantError,
    dequant_fp4,
    dequant_fp8,
    e8m0_from_exponent,
    e8m0_to_float,
    quant_fp4,
    quant_fp8,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# The e2m1 table written out by hand from the format definition (sign bit 3, 2 exponent bits, 1 mantissa bit).
FP4_TABLE = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def e8m0(*exps: int) -> torch.Tensor:
    return torch.tensor([e + 127 for e in exps], dtype=torch.uint8).view(E8M0_DTYPE)


# ------------------------------------------------------------------------------------------------ E8M0


def test_e8m0_hand_values() -> None:
    raw = torch.tensor([0, 1, 126, 127, 128, 130, 254, 255], dtype=torch.uint8)
    got = e8m0_to_float(raw.view(E8M0_DTYPE)).tolist()
    want = [2.0**-127, 2.0**-126, 0.5, 1.0, 2.0, 8.0, 2.0**127]
    assert got[:7] == want
    assert math.isnan(got[7])
    # uint8 bytes decode the same way as the e8m0 dtype
    assert e8m0_to_float(raw).tolist()[:7] == want


def test_e8m0_matches_torch_for_every_byte() -> None:
    raw = torch.arange(256, dtype=torch.uint8)
    ours = e8m0_to_float(raw)  # bytes: decoded from the bit pattern
    theirs = e8m0_to_float(raw.view(torch.float8_e8m0fnu))  # e8m0 dtype: torch's conversion
    assert torch.equal(ours[:255], theirs[:255])
    assert torch.isnan(ours[255]) and torch.isnan(theirs[255])
    assert ours[:255].tolist() == [2.0 ** (e - 127) for e in range(255)]
    # the dequantizers convert e8m0 straight to bf16: exact for every byte too (2^-127 is a bf16 subnormal)
    as_bf16 = raw.view(torch.float8_e8m0fnu).to(torch.bfloat16)
    assert torch.equal(as_bf16[:255].float(), ours[:255]) and torch.isnan(as_bf16[255])


def test_e8m0_encode_round_trip_and_range() -> None:
    k = torch.arange(-127, 128)
    enc = e8m0_from_exponent(k)
    assert enc.dtype == E8M0_DTYPE
    assert enc.view(torch.uint8).tolist() == list(range(255))
    assert e8m0_to_float(enc).tolist() == [2.0**i for i in range(-127, 128)]
    with pytest.raises(QuantError, match="out of range"):
        e8m0_from_exponent(torch.tensor([128]))
    with pytest.raises(QuantError, match="out of range"):
        e8m0_from_exponent(torch.tensor([-128]))


def test_e8m0_rejects_integer_dtypes() -> None:
    with pytest.raises(QuantError, match="E8M0"):
        e8m0_to_float(torch.zeros(2, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ FP8


def test_fp8_edge_values() -> None:
    # e4m3fn bytes: 0x7E = 448 (max), 0x08 = 2^-6 (min normal), 0x01 = 2^-9 (min subnormal), 0x80 = -0,
    # 0xFE = -448, 0x38 = 1.0, 0x3C = 1.5, 0x7F = NaN.
    raw = torch.tensor([0x7E, 0x08, 0x01, 0x80, 0xFE, 0x38, 0x3C, 0x7F], dtype=torch.uint8)
    w = raw.view(FP8_DTYPE).reshape(1, 8)
    for k in (-3, 0, 5):
        got = dequant_fp8(w, e8m0(k).reshape(1, 1), dtype=torch.float32)[0].tolist()
        s = 2.0**k
        assert got[:7] == [448 * s, 2.0**-6 * s, 2.0**-9 * s, -0.0, -448 * s, s, 1.5 * s]
        assert math.copysign(1.0, got[3]) == -1.0
        assert math.isnan(got[7])


def test_fp8_tile_layout_ragged() -> None:
    out_f, in_f = 2 * 128 + 5, 128 + 3
    w = torch.ones(out_f, in_f).to(FP8_DTYPE)
    exps = [[0, 1], [2, 3], [-1, -2]]
    scale = e8m0(*[e for row in exps for e in row]).reshape(3, 2)
    d = dequant_fp8(w, scale, dtype=torch.float32)
    for i in range(out_f):
        for j in (0, 127, 128, in_f - 1):
            assert d[i, j].item() == 2.0 ** exps[i // 128][j // 128]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_fp8_dequant_dtype_exact(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 256, (130, 260), generator=g, dtype=torch.uint8)
    w = torch.where((w & 0x7F) == 0x7F, torch.zeros_like(w), w).view(FP8_DTYPE)  # no NaN
    scale = e8m0(*torch.randint(-4, 4, (6,), generator=g).tolist()).reshape(2, 3)
    d = dequant_fp8(w, scale, dtype=dtype)
    assert d.dtype == dtype
    ref = w.float() * e8m0_to_float(scale).repeat_interleave(128, 0)[:130].repeat_interleave(128, 1)[:, :260]
    assert torch.equal(d.float(), ref)


def _ref_quant_fp8(w: torch.Tensor) -> tuple[torch.Tensor, list[list[int]]]:
    """Independent reference: per-tile exponents via math.log2 in float64, e4m3 rounding by torch's cast."""
    out_f, in_f = w.shape
    exps: list[list[int]] = []
    deq = torch.empty_like(w)
    for ti in range(0, out_f, 128):
        row: list[int] = []
        for tj in range(0, in_f, 128):
            tile = w[ti : ti + 128, tj : tj + 128]
            amax = max(float(tile.abs().max()), 1e-4)
            k = math.ceil(math.log2(amax / 448.0))
            row.append(k)
            q = (tile / 2.0**k).clamp(-448, 448).to(FP8_DTYPE).float()
            deq[ti : ti + 128, tj : tj + 128] = q * 2.0**k
        exps.append(row)
    return deq, exps


@settings(max_examples=25, deadline=None)
@given(
    out_f=st.integers(1, 300),
    in_f=st.integers(1, 300),
    log_scale=st.integers(-20, 20),
    seed=st.integers(0, 2**16),
)
def test_fp8_quant_matches_reference(out_f: int, in_f: int, log_scale: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g) * 2.0**log_scale
    q, s = quant_fp8(w)
    assert q.dtype == FP8_DTYPE and s.dtype == E8M0_DTYPE
    assert tuple(s.shape) == (-(-out_f // 128), -(-in_f // 128))
    deq, exps = _ref_quant_fp8(w)
    assert (s.view(torch.uint8).int() - 127).tolist() == exps
    assert torch.equal(dequant_fp8(q, s, dtype=torch.float32), deq)


def test_fp8_exact_powers_of_two_and_zero_tiles() -> None:
    # amax exactly 448 * 2^k must give exponent k (not k+1): log2 rounding would get this wrong.
    w = torch.zeros(128, 256)
    w[0, 0] = 448.0 * 2.0**-5
    q, s = quant_fp8(w)
    assert (s.view(torch.uint8).int() - 127).tolist() == [[-5, math.ceil(math.log2(1e-4 / 448))]]
    assert dequant_fp8(q, s, dtype=torch.float32)[0, 0].item() == 448.0 * 2.0**-5


def test_fp8_chunked_equals_unchunked(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(3, 300, 200)
    q1, s1 = quant_fp8(w)
    d1 = dequant_fp8(q1, s1)
    monkeypatch.setattr(quant, "_CHUNK_ELEMS", 1000)
    q2, s2 = quant_fp8(w)
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8))
    assert torch.equal(s1.view(torch.uint8), s2.view(torch.uint8))
    assert torch.equal(d1, dequant_fp8(q2, s2))


def test_fp8_batched_matches_per_matrix() -> None:
    w = torch.randn(2, 3, 130, 140)
    q, s = quant_fp8(w)
    assert q.shape == w.shape and s.shape == (2, 3, 2, 2)
    d = dequant_fp8(q, s, dtype=torch.float32)
    for i in range(2):
        for j in range(3):
            qi, si = quant_fp8(w[i, j])
            assert torch.equal(d[i, j], dequant_fp8(qi, si, dtype=torch.float32))


def test_fp8_errors() -> None:
    w = torch.zeros(130, 140).to(FP8_DTYPE)
    with pytest.raises(QuantError, match=r"want \(2, 2\)"):
        dequant_fp8(w, e8m0(0).reshape(1, 1))
    with pytest.raises(QuantError, match="float8_e4m3fn"):
        dequant_fp8(torch.zeros(4, 4), e8m0(0).reshape(1, 1))
    with pytest.raises(QuantError, match="NaN"):
        quant_fp8(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(QuantError, match="at least 2 dims"):
        quant_fp8(torch.ones(4))
    with pytest.raises(QuantError, match="float32/bf16"):
        quant_fp8(torch.ones(4, 4, dtype=torch.int32))


# ------------------------------------------------------------------------------------------------ FP4


def test_fp4_every_code_every_byte() -> None:
    packed = torch.arange(256, dtype=torch.uint8).reshape(16, 16)  # byte b at row b//16, column b%16
    packed = torch.cat([packed, packed], dim=1)  # 32 bytes = 64 values per row, 2 scale groups
    for k in (0, -2, 3):
        scale = e8m0(*([k] * 32)).reshape(16, 2)
        d = dequant_fp4(packed.view(torch.int8), scale, dtype=torch.float32)
        assert d.shape == (16, 64)
        for b in range(256):
            r, c = divmod(b, 16)
            lo, hi = d[r, 2 * c].item(), d[r, 2 * c + 1].item()
            assert lo == FP4_TABLE[b & 0xF] * 2.0**k
            assert hi == FP4_TABLE[b >> 4] * 2.0**k
            assert math.copysign(1.0, lo) == math.copysign(1.0, FP4_TABLE[b & 0xF])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_fp4_dequant_dtype_exact(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    packed = torch.randint(0, 256, (9, 48), generator=g, dtype=torch.uint8)
    scale = e8m0(*torch.randint(-6, 6, (27,), generator=g).tolist()).reshape(9, 3)
    d = dequant_fp4(packed, scale, dtype=dtype)
    assert d.dtype == dtype
    lo = torch.tensor(FP4_TABLE)[(packed & 0xF).long()]
    hi = torch.tensor(FP4_TABLE)[(packed >> 4).long()]
    ref = torch.stack([lo, hi], -1).reshape(9, 96) * e8m0_to_float(scale).repeat_interleave(32, 1)
    assert torch.equal(d.float(), ref.to(dtype).float())


def test_fp4_per32_scale_groups() -> None:
    packed = torch.full((2, 48), 0x22, dtype=torch.uint8)  # every value 1.0; 96 values = 3 groups
    scale = e8m0(0, 1, 2, -1, -2, -3).reshape(2, 3)
    d = dequant_fp4(packed, scale, dtype=torch.float32)
    assert d[0].tolist() == [1.0] * 32 + [2.0] * 32 + [4.0] * 32
    assert d[1].tolist() == [0.5] * 32 + [0.25] * 32 + [0.125] * 32


def test_fp4_round_ties_to_even_hand_table() -> None:
    # One group with amax exactly 6 -> scale 2^0, so values land on the e2m1 grid unscaled.
    vals = [6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 0.1, 0.3, 2.9, -0.75, -5.0, -0.1, 4.5, 5.5]
    want = [6.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 0.0, 0.5, 3.0, -1.0, -4.0, -0.0, 4.0, 6.0]
    w = torch.tensor([vals + [0.0] * 16])
    q, s = quant_fp4(w)
    assert s.view(torch.uint8).tolist() == [[127]]
    d = dequant_fp4(q, s, dtype=torch.float32)[0, :16].tolist()
    assert d == want
    assert math.copysign(1.0, d[13]) == -1.0  # -0.1 keeps its sign as -0
    # low nibble first: element 0 (6.0 = code 7) low, element 1 (0.0 = code 0) high
    assert q.view(torch.uint8)[0, 0].item() == 0x07


def _ref_e2m1(x: float) -> float:
    """Nearest e2m1 value, ties to the even code, from the table alone."""
    mags = FP4_TABLE[:8]
    a = min(abs(x), 6.0)
    best = min(range(8), key=lambda i: (abs(mags[i] - a), i % 2))
    return math.copysign(mags[best], x)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    log_scale=st.integers(-30, 30),
    seed=st.integers(0, 2**16),
)
def test_fp4_quant_matches_reference(rows: int, groups: int, log_scale: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, 32 * groups, generator=g) * 2.0**log_scale
    q, s = quant_fp4(w)
    assert q.dtype == torch.int8 and q.shape == (rows, 16 * groups) and s.shape == (rows, groups)
    d = dequant_fp4(q, s, dtype=torch.float32)
    for r in range(rows):
        for gi in range(groups):
            blk = w[r, 32 * gi : 32 * gi + 32].tolist()
            amax = max(max(abs(v) for v in blk), 6.0 * 2.0**-126)
            k = math.ceil(math.log2(amax / 6.0))
            assert s.view(torch.uint8)[r, gi].item() == k + 127
            want = [_ref_e2m1(v / 2.0**k) * 2.0**k for v in blk]
            assert d[r, 32 * gi : 32 * gi + 32].tolist() == want


def test_fp4_requantize_is_identity() -> None:
    g = torch.Generator().manual_seed(1)
    packed = torch.randint(0, 256, (7, 32), generator=g, dtype=torch.uint8)
    packed[:, 0] = 0x07  # make sure every group reaches amax 6 so the scale is reproduced
    packed[:, 16] = 0x07
    packed = packed.view(torch.int8)
    scale = e8m0(*torch.randint(-10, 10, (14,), generator=g).tolist()).reshape(7, 2)
    d = dequant_fp4(packed, scale, dtype=torch.float32)
    q2, s2 = quant_fp4(d)
    assert torch.equal(s2.view(torch.uint8), scale.view(torch.uint8))
    # signed zeros keep their sign bit, so even the bytes come back identical
    assert torch.equal(q2, packed)


def test_fp4_chunked_and_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    w = torch.randn(2, 40, 96)
    q1, s1 = quant_fp4(w)
    d1 = dequant_fp4(q1, s1)
    monkeypatch.setattr(quant, "_CHUNK_ELEMS", 100)
    q2, s2 = quant_fp4(w)
    assert torch.equal(q1, q2) and torch.equal(s1.view(torch.uint8), s2.view(torch.uint8))
    assert torch.equal(dequant_fp4(q2, s2), d1)
    qa, _sa = quant_fp4(w[1])
    assert torch.equal(qa, q1[1])
    assert d1.dtype == torch.bfloat16 and d1.shape == w.shape


def test_fp4_errors() -> None:
    with pytest.raises(QuantError, match="multiple of 32"):
        quant_fp4(torch.ones(2, 48))
    with pytest.raises(QuantError, match=r"want \(2, 2\)"):
        dequant_fp4(torch.zeros(2, 32, dtype=torch.int8), e8m0(0, 0).reshape(2, 1))
    with pytest.raises(QuantError, match="int8/uint8"):
        dequant_fp4(torch.zeros(2, 32, dtype=torch.float32), e8m0(0, 0).reshape(2, 1))
    with pytest.raises(QuantError, match="NaN"):
        quant_fp4(torch.full((1, 32), float("inf")))


def test_fp32_struct_bits_of_subnormal_scale() -> None:
    # byte 0 is 2^-127, a fp32 subnormal: check the exact bit pattern rather than a float comparison.
    v = e8m0_to_float(torch.tensor([0], dtype=torch.uint8)).item()
    assert struct.pack("<f", v) == struct.pack("<I", 0x00400000)


@pytest.mark.gpu
def test_cuda_matches_cpu() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    g = torch.Generator().manual_seed(5)
    w = torch.randn(2, 300, 260, generator=g)
    for qf, dqf in ((quant_fp8, dequant_fp8), (quant_fp4, dequant_fp4)):
        w_in = w if qf is quant_fp8 else w[..., :256]
        q_cpu, s_cpu = qf(w_in)
        q_gpu, s_gpu = qf(w_in.cuda())
        assert torch.equal(q_gpu.cpu().view(torch.uint8), q_cpu.view(torch.uint8))
        assert torch.equal(s_gpu.cpu().view(torch.uint8), s_cpu.view(torch.uint8))
        for dtype in (torch.bfloat16, torch.float32):
            d_gpu = dqf(q_gpu, s_gpu, dtype=dtype)
            assert d_gpu.is_cuda and torch.equal(d_gpu.cpu(), dqf(q_cpu, s_cpu, dtype=dtype))


@pytest.mark.parametrize("shape", [(256, 64), (130, 96), (3, 200, 160)])
def test_fp4_to_fp8_exact_when_tile_scales_are_close(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(3)
    packed = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).view(torch.int8)
    n_scales = math.prod(shape) * 2 // 32
    exps = torch.randint(-9, 3, (n_scales,), generator=g).tolist()
    scale = e8m0(*exps).reshape(*shape[:-1], shape[-1] * 2 // 32)
    w8, s8 = quant.fp4_to_fp8(packed, scale)
    assert w8.dtype == FP8_DTYPE and s8.dtype == E8M0_DTYPE
    assert w8.shape == (*shape[:-1], shape[-1] * 2)
    assert torch.equal(
        dequant_fp8(w8, s8, dtype=torch.float32), dequant_fp4(packed, scale, dtype=torch.float32)
    )


def test_fp4_to_fp8_tile_scale_rule_and_underflow() -> None:
    packed = torch.full((128, 64), 0x77, dtype=torch.uint8)  # every value 6.0
    exps = torch.zeros(128, 4, dtype=torch.int64)
    exps[0, 0] = 10  # one group 2^10 sets the tile scale to 2^(10 - 6)
    exps[1, 1] = -20  # far below: 6 * 2^-20 underflows e4m3 at tile scale 2^4
    scale = e8m0(*exps.flatten().tolist()).reshape(128, 4)
    w8, s8 = quant.fp4_to_fp8(packed, scale)
    assert s8.view(torch.uint8).tolist() == [[127 + 4]]
    d8 = dequant_fp8(w8, s8, dtype=torch.float32)
    d4 = dequant_fp4(packed, scale, dtype=torch.float32)
    assert d8[0, 0].item() == 6.0 * 2**10 and d8[5, 5].item() == 6.0
    assert d8[1, 32].item() == 0.0 and d4[1, 32].item() == 6.0 * 2.0**-20
    mask = torch.ones_like(d4, dtype=torch.bool)
    mask[1, 32:64] = False
    assert torch.equal(d8[mask], d4[mask])


def test_dequant_accepts_non_contiguous_inputs() -> None:
    w = torch.randn(4, 256, 130)
    q8, s8 = quant_fp8(w)
    q4, s4 = quant_fp4(w[..., :128])
    for dtype in (torch.bfloat16, torch.float16):
        assert torch.equal(
            dequant_fp8(q8[::2], s8[::2], dtype=dtype),
            dequant_fp8(q8[::2].contiguous(), s8[::2].contiguous(), dtype=dtype),
        )
        assert torch.equal(
            dequant_fp4(q4[1::2], s4[1::2], dtype=dtype),
            dequant_fp4(q4[1::2].contiguous(), s4[1::2].contiguous(), dtype=dtype),
        )
    t = q8[0].t()  # a transposed view: [130, 256] with scales [2, 2]
    st = s8[0].t()
    assert torch.equal(dequant_fp8(t, st), dequant_fp8(t.contiguous(), st.contiguous()))
