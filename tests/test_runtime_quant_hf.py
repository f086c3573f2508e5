"""Differential: our FP8/FP4 dequantization against the independent implementations in HF transformers.

`Fp8Dequantize` is what transformers runs to dequantize block-FP8 checkpoints (128x128 tiles) and packed-FP4
MoE experts ([1, 32] blocks) on load; `_convert_moe_packed_tensors` is its MXFP4 (gpt-oss) unpacker, which
shares V4's byte layout (low nibble first, E8M0 per 32 values). Agreement pins nibble order, the e2m1 table,
E8M0 decoding and the tile layout against code we did not write.
"""

from __future__ import annotations

import pytest
import torch
from agentkit.runtime.quant import E8M0_DTYPE, FP8_DTYPE, dequant_fp4, dequant_fp8
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.integrations.finegrained_fp8 import Fp8Dequantize
from transformers.integrations.mxfp4 import _convert_moe_packed_tensors


def random_fp8(g: torch.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    raw = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    return torch.where((raw & 0x7F) == 0x7F, raw & 0xF0, raw).view(FP8_DTYPE)  # no NaN codes


def random_e8m0(g: torch.Generator, shape: tuple[int, ...], lo: int = 100, hi: int = 150) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=g, dtype=torch.uint8).view(E8M0_DTYPE)


@settings(max_examples=20, deadline=None)
@given(ob=st.integers(1, 3), ib=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_fp8_tiles_match_transformers(ob: int, ib: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = random_fp8(g, (ob * 128, ib * 128))
    s = random_e8m0(g, (ob, ib))
    theirs = Fp8Dequantize(None)._dequantize_one(w, s, torch.float32)
    assert torch.equal(dequant_fp8(w, s, dtype=torch.float32), theirs)
    assert torch.equal(dequant_fp8(w, s, dtype=torch.bfloat16), theirs.to(torch.bfloat16))


@settings(max_examples=20, deadline=None)
@given(rows=st.integers(1, 64), groups=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_fp4_experts_match_transformers(rows: int, groups: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    packed = torch.randint(-128, 128, (rows, groups * 16), generator=g, dtype=torch.int8)
    s = random_e8m0(g, (rows, groups))
    ours = dequant_fp4(packed, s, dtype=torch.float32)
    assert torch.equal(ours, Fp8Dequantize(None)._dequantize_one(packed, s, torch.float32))
    # gpt-oss MXFP4 layout: blocks [experts, rows, groups, 16 bytes], raw exponent bytes; output transposed
    mx = _convert_moe_packed_tensors(
        packed.view(torch.uint8).reshape(1, rows, groups, 16),
        s.view(torch.uint8).reshape(1, rows, groups),
        dtype=torch.float32,
    )
    assert torch.equal(ours, mx[0].T)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_real_flash_expert_shape(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    packed = torch.randint(-128, 128, (2048, 2048), generator=g, dtype=torch.int8)  # w1: [2048, 4096 / 2]
    s = random_e8m0(g, (2048, 128))
    theirs = Fp8Dequantize(None)._dequantize_one(packed, s, torch.float32).to(dtype)
    assert torch.equal(dequant_fp4(packed, s, dtype=dtype), theirs)
