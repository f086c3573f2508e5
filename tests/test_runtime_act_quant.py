"""Activation rounding before FP8 / FP4 GEMMs, as DeepSeek's reference `linear()` does it (spec §10).

The expected values are computed here from the spec's formula, written independently of
`runtime/layers/lowp.py`: split the last dim into blocks of 128, amax per block with a floor of 1e-4,
scale = 2^ceil(log2(amax / 448)), e4m3(clamp(x / scale, ±448)) * scale; then the reference's fallback
product, both operands dequantized, in fp32.
"""

from __future__ import annotations

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.layers.lowp import Linear
from agentkit.runtime.model import V4Model
from hypothesis import given, settings
from hypothesis import strategies as st


def quantized_config(**kw: object) -> ModelConfig:
    return ModelConfig.preset(
        "tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4", moe_inter_dim=64, **kw
    )


def reference_act_quant(x: torch.Tensor) -> torch.Tensor:
    rows, k = x.shape
    xb = x.float().reshape(rows, k // 128, 128)
    amax = xb.abs().amax(-1, keepdim=True).clamp_min(1e-4)
    scale = torch.exp2(torch.ceil(torch.log2(amax / 448.0)))
    q = (xb / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn).float() * scale
    return q.reshape(rows, k)


@settings(max_examples=25, deadline=None)
@given(fmt=st.sampled_from(["fp8", "fp4"]), blocks=st.integers(1, 3), rows=st.integers(1, 5),
       log_mag=st.integers(-20, 12), seed=st.integers(0, 2**16))  # fmt: skip
def test_quantized_linear_rounds_its_input_like_the_reference(
    fmt: str, blocks: int, rows: int, log_mag: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    k, n = 128 * blocks, 128
    lin = Linear(k, n, fmt)  # type: ignore[arg-type]
    lin.set_dense(torch.randn(n, k, generator=g) / k**0.5)
    x = torch.randn(rows, k, generator=g) * 2.0**log_mag
    x[:, :128] *= 1e-6  # a block under the amax floor
    lin.act_quant = True
    expected = reference_act_quant(x) @ lin.dense(torch.float32).t()
    got = lin(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-30)
    lin.act_quant = False
    plain = lin(x)
    assert torch.allclose(plain, x @ lin.dense(torch.float32).t(), rtol=1e-5)
    if log_mag > -10:  # control: the rounding changes the product of ordinary activations
        assert not torch.equal(plain, got)


@pytest.mark.parametrize("sim", [True, False])
def test_the_model_turns_it_on_for_quantized_layers_only(sim: bool) -> None:
    cfg = quantized_config(sim_fp8_act=sim)
    model = V4Model(cfg)
    linears = {name: m for name, m in model.named_modules() if isinstance(m, Linear)}
    quantized = {name for name, m in linears.items() if m.fmt != "float"}
    assert quantized  # control: FP8 and FP4 layers exist
    assert {name for name, m in linears.items() if m.act_quant} == (quantized if sim else set())
    assert any(".experts." in name for name in quantized) and any(".wq_a" in name for name in quantized)
    plain = V4Model(ModelConfig.preset("tiny-test"))
    assert not any(m.act_quant for m in plain.modules() if isinstance(m, Linear))


def test_it_changes_the_quantized_models_logits_and_only_through_the_rounding() -> None:
    cfg = quantized_config()
    on = V4Model(cfg).init_random_(0)
    off = V4Model(cfg.model_copy(update={"sim_fp8_act": False})).init_random_(0)
    tokens = torch.arange(40) % cfg.vocab_size
    with torch.no_grad():
        a = on.extend([on.new_state()], [tokens.tolist()])[0]
        b = off.extend([off.new_state()], [tokens.tolist()])[0]
    assert not torch.equal(a, b)
    rel = (a - b).norm() / b.norm()
    assert rel < 0.1, rel  # an FP8 rounding of activations, not a different model
