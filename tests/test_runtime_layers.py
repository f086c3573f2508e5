"""Layer checks against the spec's own definitions and worked examples (spec §3, §4.2, §4.5, §5, §15)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from agentkit.runtime import quant
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.layers.compressor import Compressor
from agentkit.runtime.layers.lowp import fp4_roundtrip, fp8_roundtrip, hadamard
from agentkit.runtime.layers.mhc import split_sinkhorn
from agentkit.runtime.layers.rope import apply_rope, rope_frequencies
from agentkit.runtime.model import V4Model
from agentkit.runtime.state import fresh_tail


def naive_entries(kv: torch.Tensor, score: torch.Tensor, r: int, w: int) -> torch.Tensor:
    """Spec §4.5 literally: entry i pools (A of block i-1) and (B of block i) for r=4, block i for r=128."""
    n_entries = kv.shape[0] // r
    out = []
    for i in range(n_entries):
        blk = range(i * r, (i + 1) * r)
        if r == 4:
            vals = [kv[s, w:] for s in blk]
            logits = [score[s, w:] for s in blk]
            if i > 0:
                prev = range((i - 1) * r, i * r)
                vals = [kv[s, :w] for s in prev] + vals
                logits = [score[s, :w] for s in prev] + logits
        else:
            vals = [kv[s] for s in blk]
            logits = [score[s] for s in blk]
        v, z = torch.stack(vals), torch.stack(logits)
        out.append((torch.softmax(z, dim=0) * v).sum(0))
    return torch.stack(out) if out else kv.new_zeros(0, w)


@pytest.mark.parametrize(("ratio", "n"), [(4, 10), (4, 37), (128, 300), (128, 128)])
def test_compressor_chunked_pooling_equals_spec_definition(ratio: int, n: int) -> None:
    w = 8
    comp = Compressor(16, w, ratio, 1e-6, torch.float32, torch.float32)
    c = comp.c
    g = torch.Generator().manual_seed(n)
    kv, score = torch.randn(n, c * w, generator=g), torch.randn(n, c * w, generator=g)
    ref = naive_entries(kv, score, ratio, w)
    rng = random.Random(ratio * n)
    tail_kv, tail_sc = fresh_tail(ratio, w, None)
    got, pos = [], 0
    while pos < n:
        m = min(n - pos, rng.randint(1, 2 * ratio))
        pooled, first, tail_kv, tail_sc = comp.pool(
            tail_kv, tail_sc, kv[pos : pos + m], score[pos : pos + m], pos
        )
        assert first == (pos - pos % ratio) // ratio
        got.append(pooled)
        pos += m
    assert torch.allclose(torch.cat(got), ref, atol=1e-6)
    # tail layout (spec §5.4): CSA rows 0-3 = last complete block, 4.. = partial block; HCA 0.. = partial
    rem, cut = n % ratio, n - n % ratio
    off = ratio if ratio == 4 else 0
    assert torch.equal(tail_kv[off : off + rem], kv[cut:])
    assert torch.isinf(tail_sc[off + rem :]).all() and (tail_kv[off + rem :] == 0).all()
    if ratio == 4:
        if cut >= 4:
            assert torch.equal(tail_kv[:4], kv[cut - 4 : cut]) and torch.equal(
                tail_sc[:4], score[cut - 4 : cut]
            )
        else:
            assert torch.isinf(tail_sc[:4]).all()


def test_worked_example_csa_prefill_of_10_tokens() -> None:
    """Spec §15.1: entries 0 and 1 exist after 10 tokens; query t2 sees none, t3..t6 entry 0, t7..t9 both."""
    cfg = ModelConfig.preset("tiny-test", n_layers=1, compress_ratios=(4, 0), index_topk=8)
    m = V4Model(cfg).init_random_(0)
    st = m.new_state()
    m.extend(st, torch.arange(10))
    ls = st.layers[0]
    assert ls.comp is not None and ls.idx is not None
    assert st.snapshot().layers[0].comp.shape[0] == 2 and st.snapshot().layers[0].idx.shape[0] == 2
    visible = [(t + 1) // 4 for t in range(10)]
    assert visible == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    m.extend(st, [10, 11])  # t11 completes block 2
    assert st.snapshot().layers[0].comp.shape[0] == 3


def test_worked_example_hca_ring_after_300_tokens() -> None:
    """Spec §15.2: two HCA entries; the ring holds positions 172..299 at slot p mod 128."""
    cfg = ModelConfig.preset("tiny-test", n_layers=1, compress_ratios=(128, 0), sim_fp8_kv=False)
    m = V4Model(cfg).init_random_(1)
    ids = torch.randint(0, 256, (300,), generator=torch.Generator().manual_seed(1))
    st = m.new_state()
    m.extend(st, ids)
    snap = st.snapshot().layers[0]
    assert snap.comp is not None and snap.comp.shape[0] == 2
    # recompute raw keys by running each position alone from a fresh state is not possible (context), so check
    # the ring against a chunked run that stops at 172: slot (p mod 128) for p in 172..299 must hold key p
    st2 = m.new_state()
    m.extend(st2, ids[:172])
    keys = []
    for p in range(172, 300):
        m.extend(st2, ids[p : p + 1])
        keys.append(st2.layers[0].window[p % 128].clone())
    for p, k in zip(range(172, 300), keys, strict=True):
        assert torch.allclose(st.layers[0].window[p % 128], k, atol=1e-5)


def test_yarn_frequencies_match_spec_section_3() -> None:
    cfg = ModelConfig.preset("flash")
    plain, yarn = rope_frequencies(cfg, False), rope_frequencies(cfg, True)
    base = 1.0 / (160000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64))
    assert torch.allclose(plain.double(), 1.0 / (10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)))
    assert torch.allclose(yarn[:16].double(), base[:16])  # pairs 0-15 keep their frequency (low = 15)
    assert torch.allclose(yarn[25:].double(), base[25:] / 16)  # pairs >= 25 divided by 16 (high = 25)
    mid = yarn[16:25].double() / base[16:25]
    assert ((mid < 1) & (mid > 1 / 16)).all()


def test_rope_is_interleaved_on_trailing_dims_and_inverse_undoes_it() -> None:
    freqs = torch.tensor([0.5, 0.25])
    x = torch.randn(3, 2, 10)
    pos = torch.tensor([0, 1, 7])
    y = apply_rope(x, pos, freqs)
    assert torch.equal(y[..., :6], x[..., :6]) and torch.equal(y[0], x[0])
    ang = 7 * 0.5
    a, b = x[2, 0, 6], x[2, 0, 7]
    want = torch.stack((a * math.cos(ang) - b * math.sin(ang), a * math.sin(ang) + b * math.cos(ang)))
    assert torch.allclose(y[2, 0, 6:8], want, atol=1e-6)
    assert torch.allclose(apply_rope(y, pos, freqs, inverse=True), x, atol=1e-6)


def test_fake_quant_simulations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 128, generator=g) * 3
    # FP4: same rule as the checkpoint's weight codec (per 32 values, pow2 scale, RNE) -> identical values
    q, s = quant.quant_fp4(x)
    assert torch.equal(fp4_roundtrip(x), quant.dequant_fp4(q, s, dtype=torch.float32))
    # FP8: per 64 values, scale 2^ceil(log2(amax/448)), e4m3 grid
    y = fp8_roundtrip(x)
    for blk in range(2):
        xb, yb = x[:, 64 * blk : 64 * (blk + 1)], y[:, 64 * blk : 64 * (blk + 1)]
        scale = torch.exp2(torch.ceil(torch.log2(xb.abs().amax(-1, keepdim=True) / 448)))
        assert torch.equal(yb, (xb / scale).to(torch.float8_e4m3fn).float() * scale)
    h = hadamard(torch.eye(8))
    assert torch.allclose(h @ h.t(), torch.eye(8), atol=1e-6)
    assert torch.equal(torch.sign(h[1]), torch.tensor([1.0, -1] * 4))  # Sylvester order
    # straight-through gradients when training with the simulation on
    xr = x.clone().requires_grad_(True)
    fp8_roundtrip(xr).sum().backward()
    assert xr.grad is not None and torch.equal(xr.grad, torch.ones_like(x))


def test_sinkhorn_is_doubly_stochastic_and_sink_only_adds_mass() -> None:
    g = torch.Generator().manual_seed(0)
    _, post, comb = split_sinkhorn(
        torch.randn(5, 24, generator=g), torch.ones(3), torch.zeros(24), 4, 20, 1e-6
    )
    assert torch.allclose(comb.sum(-2), torch.ones(5, 4), atol=1e-4)
    assert torch.allclose(comb.sum(-1), torch.ones(5, 4), atol=1e-2)
    assert ((post > 0) & (post < 2)).all()
    # a single visible key with logit s and a sink z: output = k * e^s / (e^s + e^z)
    cfg = ModelConfig.preset("tiny-test", n_layers=1, compress_ratios=(0, 0))
    attn = V4Model(cfg).init_random_(0).layers[0].attn
    with torch.no_grad():
        attn.attn_sink.copy_(torch.tensor([0.0, 1.0, -2.0, 30.0]))
    q = torch.randn(1, 4, cfg.head_dim, generator=g)
    k = torch.randn(1, cfg.head_dim, generator=g)
    out = attn._core(q, k, 0, 0, None, None, None, None)
    s = (q[0] @ k[0]) / math.sqrt(cfg.head_dim)
    w = torch.exp(s) / (torch.exp(s) + torch.exp(attn.attn_sink.detach()))
    assert torch.allclose(out[0], w[:, None] * k[0], atol=1e-6)


def test_routing_bias_selects_but_does_not_weight() -> None:
    cfg = ModelConfig.preset("tiny-test", n_layers=1, compress_ratios=(0, 0), n_hash_layers=0)
    gate = V4Model(cfg).init_random_(0).layers[0].ffn.gate
    x = torch.randn(6, cfg.dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gate.bias.zero_()
        w0, _ = gate(x, torch.zeros(6, dtype=torch.long))
        gate.bias[3] = 100.0  # expert 3 is now always selected
        w1, i1 = gate(x, torch.zeros(6, dtype=torch.long))
    assert (i1 == 3).any(-1).all()
    scores = torch.sqrt(torch.nn.functional.softplus(x @ gate.weight.t()))
    picked = scores.gather(1, i1)
    assert torch.allclose(w1, picked / picked.sum(-1, keepdim=True) * cfg.route_scale)
    assert torch.allclose(w0.sum(-1), torch.full((6,), cfg.route_scale))
