"""extend() semantics: any chunking of a sequence gives the logits and the state of a single prefill.

Random small configs mix window-only, CSA (ratio 4, overlapping, indexer top-k below the candidate count) and
HCA (ratio 128) layers; sequences are long enough to wrap the 128-slot window and complete several 128-blocks,
and random chunk boundaries fall inside partial blocks of both ratios.
"""

from __future__ import annotations

import random

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import ModelInputError, V4Model
from agentkit.runtime.state import SequenceState


def random_config(seed: int, sims: bool) -> ModelConfig:
    rng = random.Random(seed)
    n_layers = rng.randint(2, 4)
    ratios = [rng.choice([0, 4, 128]) for _ in range(n_layers)]
    ratios[rng.randrange(n_layers)] = 4  # always at least one CSA layer
    if n_layers > 2:
        ratios[(ratios.index(4) + 1) % n_layers] = 128  # and one HCA layer
    return ModelConfig.preset(
        "tiny-test",
        n_layers=n_layers,
        n_hash_layers=rng.randint(0, 2),
        compress_ratios=(*ratios, 0),
        index_topk=rng.choice([2, 5, 8]),
        sim_fp8_kv=sims,
        sim_fp4_indexer=sims,
        hadamard=sims,
    )


def chunks_of(n: int, rng: random.Random, max_chunk: int) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < n:
        k = rng.randint(1, max_chunk)
        out.append((i, min(n, i + k)))
        i += k
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().amax(-1) / b.abs().amax(-1)


def assert_states_close(a: SequenceState, b: SequenceState, tol: float) -> None:
    assert a.pos == b.pos
    for la, lb in zip(a.snapshot().layers, b.snapshot().layers, strict=True):
        ta, tb = la.tensors(), lb.tensors()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert ta[k].shape == tb[k].shape, k
            fin = torch.isfinite(tb[k])
            assert torch.equal(fin, torch.isfinite(ta[k])), k  # same -inf rows in the tails
            assert torch.allclose(ta[k][fin], tb[k][fin], rtol=tol, atol=tol), k


@pytest.mark.parametrize(("seed", "sims"), [(0, False), (1, False), (2, False), (3, True)])
def test_chunked_equals_prefill_equals_token_by_token(seed: int, sims: bool) -> None:
    cfg = random_config(seed, sims)
    model = V4Model(cfg).init_random_(seed)
    n = 300
    ids = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(seed))
    prefill_state = model.new_state()
    prefill = model.extend(prefill_state, ids)
    assert isinstance(prefill, torch.Tensor) and prefill.shape == (n, cfg.vocab_size)

    rng = random.Random(seed)
    chunk_state = model.new_state()
    chunked = torch.cat([model.extend(chunk_state, ids[a:b]) for a, b in chunks_of(n, rng, 70)])  # type: ignore[misc]

    tok_state = model.new_state()
    n_tok = 140 if seed % 2 else n  # token-by-token is the slow path: the full length on half the seeds
    tok = torch.cat([model.extend(tok_state, ids[i : i + 1]) for i in range(n_tok)])  # type: ignore[misc]
    if n_tok < n:
        tok = torch.cat((tok, model.extend(tok_state, ids[n_tok:])))  # type: ignore[arg-type]

    for other in (chunked, tok):
        err = rel_err(other, prefill)
        if sims:
            # FP8/FP4 rounding can flip one step on an input that differs by an ulp between chunkings
            assert err.max() <= 1e-2 and err.quantile(0.95) <= 1e-4
        else:
            assert err.max() <= 1e-4
    assert_states_close(chunk_state, prefill_state, 1e-2 if sims else 1e-4)
    assert_states_close(tok_state, prefill_state, 1e-2 if sims else 1e-4)


def test_batched_extend_equals_separate_runs() -> None:
    """Sequences at different positions with different chunk lengths in one call == one call each."""
    cfg = random_config(7, sims=False)
    model = V4Model(cfg).init_random_(7)
    g = torch.Generator().manual_seed(7)
    prefixes = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (0, 131, 258)]
    chunks = [torch.randint(0, cfg.vocab_size, (n,), generator=g) for n in (140, 1, 9)]
    batch_states, solo_states = [], []
    for p in prefixes:
        s1, s2 = model.new_state(), model.new_state()
        if p.numel():
            model.extend(s1, p)
            model.extend(s2, p)
        batch_states.append(s1)
        solo_states.append(s2)
    batched = model.extend(batch_states, chunks)
    assert isinstance(batched, list)
    for st, ch, out in zip(solo_states, chunks, batched, strict=True):
        solo = model.extend(st, ch)
        assert isinstance(solo, torch.Tensor)
        assert out.shape == solo.shape
        assert rel_err(out, solo).max() <= 1e-4
    for a, b in zip(batch_states, solo_states, strict=True):
        assert_states_close(a, b, 1e-4)
    last = model.extend([s.snapshot() for s in solo_states], [c[:3] for c in chunks], last_only=True)
    assert [t.shape for t in last] == [(cfg.vocab_size,)] * 3


def test_training_forward_is_extend_and_trains() -> None:
    cfg = ModelConfig.preset("tiny-test", compress_ratios=(0, 4, 128, 4, 0))
    model = V4Model(cfg).init_random_(11)
    ids = torch.randint(0, cfg.vocab_size, (2, 160), generator=torch.Generator().manual_seed(11))
    labels = torch.cat((ids[:, 1:], torch.full((2, 1), -100)), 1)
    out = model(ids, labels, mtp=True)
    assert out.logits.shape == (2, 160, cfg.vocab_size)
    assert out.mtp_logits is not None and out.mtp_logits.shape == (2, 159, cfg.vocab_size)
    for b in range(2):
        ext = model.extend(model.new_state(), ids[b])
        assert isinstance(ext, torch.Tensor)
        assert rel_err(out.logits[b].detach(), ext).max() <= 1e-5
    assert out.loss is not None
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # gradients reach every continuous part of the main path and the MTP block
    for name in (
        "embed.weight",
        "layers.1.attn.compressor.wgate.weight",
        "layers.2.attn.compressor.ape",
        "layers.0.hc_attn_fn",
        "layers.3.attn.attn_sink",
        "mtp.0.e_proj.weight",
        "head.weight",
    ):
        g = grads[name]
        assert g is not None and g.abs().sum() > 0, name
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(out.loss.detach())
    for _ in range(8):
        opt.zero_grad()
        loss = model(ids, labels, mtp=True).loss
        assert loss is not None
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_bad_inputs_raise_typed_errors_and_leave_state_untouched() -> None:
    cfg = ModelConfig.preset("tiny-test")
    model = V4Model(cfg).init_random_(0)
    st = model.new_state()
    model.extend(st, [1, 2, 3, 4, 5])
    before = st.snapshot()
    for bad in ([], [cfg.vocab_size], [-1], [[1, 2]], torch.tensor([1.5])):
        with pytest.raises(ModelInputError):
            model.extend(st, bad)  # type: ignore[arg-type]
    with pytest.raises(ModelInputError):
        model.extend([st, st], [[1], [2]])
    small = ModelConfig.preset("tiny-test", max_seq_len=8)
    m2 = V4Model(small).init_random_(0)
    s2 = m2.new_state()
    m2.extend(s2, [1] * 6)
    with pytest.raises(ModelInputError, match="max_seq_len"):
        m2.extend(s2, [1, 2, 3])
    assert st.pos == 5
    assert_states_close(st, before, 0.0)


def test_quantized_storage_equals_float_model_on_dequantized_weights() -> None:
    """FP8 tiles + packed FP4 experts, dequantized per use, compute the same function as float weights
    (storage alone: the activation rounding before FP8/FP4 GEMMs, a separate simulation checked in
    test_runtime_act_quant.py, is off here)."""
    qcfg = ModelConfig.preset(
        "tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4", sim_fp8_act=False
    )
    qm = V4Model(qcfg).init_random_(5)
    fm = V4Model(qcfg.with_(weight_format="float"))
    qsd = qm.state_dict()
    with torch.no_grad():
        for name, mod in fm.named_modules():
            qmod = qm.get_submodule(name) if name else qm
            if hasattr(mod, "dense") and hasattr(qmod, "dense"):
                mod.weight.copy_(qmod.dense(torch.float32))
        for name, t in fm.state_dict().items():
            if not name.endswith(".weight") or name.rsplit(".", 2)[-2] not in {
                "wq_a",
                "wq_b",
                "wkv",
                "wo_a",
                "wo_b",
                "w1",
                "w2",
                "w3",
                "e_proj",
                "h_proj",
            }:
                t.copy_(qsd[name])
    assert qm.layers[0].attn.wq_a.weight.dtype == torch.float8_e4m3fn
    assert qm.layers[0].ffn.experts[0].w1.weight.dtype == torch.int8
    ids = torch.randint(0, qcfg.vocab_size, (150,), generator=torch.Generator().manual_seed(5))
    a = qm.extend(qm.new_state(), ids)
    b = fm.extend(fm.new_state(), ids)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert rel_err(a, b).max() <= 1e-5
    extra = qm.materialize_weights()  # dequantized copies: same function, more memory
    assert extra > 0
    c = qm.extend(qm.new_state(), ids)
    assert isinstance(c, torch.Tensor) and torch.equal(a, c)
    assert qm.materialize_weights(False) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: CUDA bf16 path")
def test_cuda_bf16_matches_cpu_fp32() -> None:
    cfg = ModelConfig.preset("tiny-test")
    cpu = V4Model(cfg).init_random_(2)
    gpu = V4Model(cfg, dtype=torch.bfloat16, device="cuda")
    gpu.load_state_dict(cpu.state_dict())
    ids = torch.randint(0, cfg.vocab_size, (200,), generator=torch.Generator().manual_seed(2))
    a = cpu.extend(cpu.new_state(), ids)
    b = gpu.extend(gpu.new_state(), ids.cuda())
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert (a.argmax(-1) == b.cpu().argmax(-1)).float().mean() > 0.9


def test_query_block_size_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny score budgets force one-query blocks (the long-prefix path): same logits as large blocks."""
    from agentkit.runtime.layers import attention

    cfg = random_config(5, sims=False)
    model = V4Model(cfg).init_random_(5)
    ids = torch.randint(0, cfg.vocab_size, (200,), generator=torch.Generator().manual_seed(5))
    ref = model.extend(model.new_state(), ids)
    monkeypatch.setattr(attention, "SCORE_BUDGET", {"cpu": 1})
    small = model.extend(model.new_state(), ids)
    assert isinstance(ref, torch.Tensor) and isinstance(small, torch.Tensor)
    assert rel_err(small, ref).max() <= 1e-4


def test_indexer_distillation_loss_trains_only_the_indexer() -> None:
    cfg = ModelConfig.preset("tiny-test", compress_ratios=(4, 4, 0, 0, 0), index_topk=3)
    model = V4Model(cfg).init_random_(12)
    ids = torch.randint(0, cfg.vocab_size, (2, 64), generator=torch.Generator().manual_seed(12))
    out = model(ids, indexer_loss=True)
    assert out.indexer_loss is not None and float(out.indexer_loss.detach()) > 0
    out.indexer_loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None and bool(p.grad.abs().sum() > 0):
            assert ".indexer." in name, name
    assert any(p.grad is not None for n, p in model.named_parameters() if ".indexer.wq_b" in n)
    assert model(ids).indexer_loss is None
    params = [p for n, p in model.named_parameters() if ".indexer." in n]
    opt = torch.optim.Adam(params, lr=1e-2)
    first = float(out.indexer_loss.detach())
    for _ in range(10):
        opt.zero_grad()
        loss = model(ids, indexer_loss=True).indexer_loss
        assert loss is not None
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_failed_extend_marks_state_broken_until_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentkit.runtime.layers import moe
    from agentkit.runtime.state import StateError

    cfg = ModelConfig.preset("tiny-test")
    model = V4Model(cfg).init_random_(0)
    st = model.new_state()
    model.extend(st, [1, 2, 3])
    snap = st.snapshot()

    def boom(self: object, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        raise MemoryError("simulated out of memory")

    monkeypatch.setattr(moe.MoE, "forward", boom)
    with pytest.raises(MemoryError):
        model.extend(st, [4, 5])
    monkeypatch.undo()
    assert st.broken
    with pytest.raises(StateError, match="broken"):
        model.extend(st, [4, 5])
    with pytest.raises(StateError):
        st.to_bytes()
    st.restore(snap)
    out = model.extend(st, [4, 5])
    ref = model.extend(model.new_state(), [1, 2, 3, 4, 5])
    assert isinstance(out, torch.Tensor) and isinstance(ref, torch.Tensor)
    assert rel_err(out, ref[3:]).max() <= 1e-4


def test_csa_query_blocks_stay_large_at_long_contexts() -> None:
    """A CSA layer's temporaries per query are its window + top-k scores per head plus the indexer's rows
    over the entries, not a score per head for every entry (HCA's): at 1M tokens of context (256K CSA
    entries) V4-Flash's shapes keep >= 32-query blocks on a GPU (the per-head count gave 8: 4,096 Python
    steps per layer for a 32K extend)."""
    from types import SimpleNamespace

    from agentkit.runtime.layers import attention

    layer = SimpleNamespace(window=128, cfg=SimpleNamespace(index_topk=512))
    per_query = attention.Attention._temp_per_query
    iq = torch.empty(1, 64, 128)  # [T, indexer heads, indexer dim]
    budget = attention.SCORE_BUDGET["cuda"]
    entries = (1 << 20) // 4
    csa = per_query(layer, 64, entries, iq, True)
    assert budget // csa >= 32
    assert per_query(layer, 64, entries, iq, False) > csa  # without the kernel: one row per indexer head
    hca = per_query(layer, 64, (1 << 20) // 128, None, False)
    assert hca == 64 * (128 + (1 << 20) // 128)
