"""Muon: hybrid Newton-Schulz reaches the polar factor, the step is an orthogonal update, V4's split."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.train.muon import UPDATE_RMS, Muon, build_optimizers, newton_schulz, uses_adamw
from agentkit.train.trainer import build_model, micro_config


def _polar(g: torch.Tensor) -> torch.Tensor:
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    return u @ vh


@settings(max_examples=30, deadline=None)
@given(
    st.integers(2, 48),
    st.integers(2, 48),
    st.integers(0, 2**31),
    st.sampled_from([(), (3,)]),
)
def test_newton_schulz_is_the_polar_factor(m: int, n: int, seed: int, batch: tuple[int, ...]) -> None:
    """Differential against the SVD: U V^T for matrices whose singular values are not tiny."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=torch.float64))[0]
    s = torch.rand(*batch, k, generator=g, dtype=torch.float64) * 9 + 1  # condition number <= 10
    x = (u * s.unsqueeze(-2)) @ v.mT * 3.7
    o = newton_schulz(x, dtype=torch.float64)
    assert o.shape == x.shape
    err = (o - _polar(x)).norm() / _polar(x).norm()
    assert err < 5e-3
    sv = torch.linalg.svdvals(o)
    assert float(sv.min()) > 0.99 and float(sv.max()) < 1.01


def test_settle_steps_matter() -> None:
    """The fast quintic alone leaves singular values oscillating away from 1; V4's 2 settle steps fix it."""
    g = torch.randn(64, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fast_only = torch.linalg.svdvals(newton_schulz(g, fast_steps=10, settle_steps=0, dtype=torch.float64))
    hybrid = torch.linalg.svdvals(newton_schulz(g, dtype=torch.float64))
    assert float((fast_only - 1).abs().max()) > 0.1
    assert float((hybrid - 1).abs().max()) < 0.01


def test_muon_step_is_scaled_orthogonal_nesterov_update() -> None:
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 40, dtype=torch.float64))
    w0 = w.detach().clone()
    lr, mu = 0.01, 0.9
    opt = Muon([w], lr=lr, momentum=mu, weight_decay=0.0)
    grad = torch.randn(24, 40, dtype=torch.float64)
    w.grad = grad.clone()
    opt.step()
    delta = w.detach() - w0
    # first step: buffer = g, nesterov direction = g + mu * g
    want = -lr * UPDATE_RMS * math.sqrt(40) * newton_schulz(grad * (1 + mu), dtype=torch.float64)
    torch.testing.assert_close(delta, want)
    sv = torch.linalg.svdvals(delta)
    torch.testing.assert_close(sv, torch.full_like(sv, lr * UPDATE_RMS * math.sqrt(40)), rtol=1e-2, atol=0)
    # the update's RMS is what AdamW's typically is (0.18 x lr), whatever the shape
    rms = float(delta.pow(2).mean().sqrt()) / lr
    assert abs(rms - UPDATE_RMS) < 1e-3


def test_weight_decay_is_decoupled() -> None:
    w = torch.nn.Parameter(torch.ones(4, 4))
    opt = Muon([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.zeros(4, 4)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((4, 4), 0.95))


def test_muon_refuses_vectors_and_bad_settings() -> None:
    with pytest.raises(ValueError, match="only takes matrices"):
        Muon([torch.nn.Parameter(torch.ones(3))])
    with pytest.raises(ValueError, match="bad Muon"):
        Muon([torch.nn.Parameter(torch.ones(3, 3))], lr=-1)
    with pytest.raises(ValueError, match="batch of matrices"):
        newton_schulz(torch.ones(5))


def test_v4_parameter_split() -> None:
    model = build_model(micro_config(300), 0, torch.device("cpu"))
    muon, adamw = build_optimizers(model, lr=1e-3)
    assert muon is not None
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    in_adam = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}  # gate.bias: balanced, not learned
    assert in_muon.isdisjoint(in_adam)
    assert in_muon | in_adam == {id(p) for p in names.values()}
    for name, p in names.items():
        if name in ("embed.weight", "head.weight") or p.ndim == 1:
            assert id(p) in in_adam, name
        if name.endswith(("attn.wq_a.weight", "ffn.gate.weight", "hc_attn_fn", "hc_head_fn")):
            assert id(p) in in_muon, name
    assert uses_adamw("layers.0.attn_norm.weight", torch.ones(3))
    assert not uses_adamw("layers.0.hc_ffn_fn", torch.ones(3, 3))
