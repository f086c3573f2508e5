"""The batched training forward (all rows from position 0, equal length) is the per-sequence extend path.

Differential: `V4Model.forward(batched=True)` against `forward(batched=False)` (which runs the same
SeqSlice/state machinery as `extend`) on configs that exercise window wrap-around, partial HCA and CSA blocks,
top-k smaller than the candidate count and chunking of the query loop; values and gradients must agree.

The FP8/FP4 simulations are off for the 1e-5 comparisons: they round to coarse grids, so a last-bit difference
in fp32 summation order (the batched path bands the window differently) can flip one rounded value and move a
logit by more than 1e-5. One case keeps them on with a looser bound.
"""

from __future__ import annotations

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.layers import attention
from agentkit.runtime.model import V4Model

CASES = [
    # (seed, batch, seq, window, topk, compress_ratios, sims, tolerance)
    (0, 3, 301, 16, 5, (0, 4, 128, 4, 0), False, 1e-5),  # wrap, partial blocks of both ratios, top-k << cands
    (1, 2, 293, 128, 8, (4, 128, 0, 4, 0), False, 1e-5),  # band (64) < window, length not a multiple of 64
    (2, 1, 130, 8, 3, (128, 4, 4, 0, 0), False, 1e-5),  # one complete HCA block + 2 tokens, window 8
    (3, 2, 3, 16, 5, (0, 4, 128, 4, 0), False, 1e-5),  # shorter than every block: no compressed entries
    (4, 2, 200, 16, 16, (4, 0, 128, 0, 0), False, 1e-5),  # top-k >= candidates / 4: dense CSA branch
    (0, 3, 301, 16, 5, (0, 4, 128, 4, 0), True, 1e-3),  # FP8 KV / FP4 indexer simulation on
]


def _run(
    model: V4Model, ids: torch.Tensor, batched: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    labels = torch.cat((ids[:, 1:], torch.full((ids.shape[0], 1), -100)), 1)
    model.zero_grad(set_to_none=True)
    out = model(ids, labels, mtp=True, indexer_loss=True, batched=batched)
    assert out.loss is not None and out.mtp_logits is not None
    total = out.loss if out.indexer_loss is None else out.loss + out.indexer_loss
    total.backward()
    vals = {"logits": out.logits.detach(), "mtp": out.mtp_logits.detach(), "loss": out.loss.detach()}
    if out.indexer_loss is not None:
        vals["indexer_loss"] = out.indexer_loss.detach()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return vals, grads


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(floor)) if b.numel() else 0.0


def _grads_agree(ga: dict[str, torch.Tensor], gb: dict[str, torch.Tensor], tol: float) -> None:
    """Per tensor, relative to its own scale, but never below 1e-3 of the largest gradient: a tensor whose
    gradient is a near-cancelling sum (a scalar scale, say) is only as exact as the terms it sums."""
    assert ga.keys() == gb.keys()
    floor = 1e-3 * max(float(g.abs().max()) for g in gb.values())
    for name in ga:
        assert _rel(ga[name], gb[name], floor) <= tol, name


@pytest.mark.parametrize(("seed", "batch", "seq", "window", "topk", "ratios", "sims", "tol"), CASES)
def test_batched_forward_equals_per_sequence_path(
    seed: int,
    batch: int,
    seq: int,
    window: int,
    topk: int,
    ratios: tuple[int, ...],
    sims: bool,
    tol: float,
) -> None:
    cfg = ModelConfig.preset(
        "tiny-test",
        window_size=window,
        index_topk=topk,
        compress_ratios=ratios,
        sim_fp8_kv=sims,
        sim_fp4_indexer=sims,
    )
    model = V4Model(cfg).init_random_(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))
    (va, ga), (vb, gb) = _run(model, ids, True), _run(model, ids, False)
    assert va.keys() == vb.keys()
    assert ("indexer_loss" in va) == (seq >= 4)  # CSA layers have visible entries once a block completes
    for name in va:
        assert va[name].shape == vb[name].shape, name
        assert _rel(va[name], vb[name]) <= tol, name
    _grads_agree(ga, gb, 10 * tol)
    # the continuous parts of attention really get gradient through the batched path
    hca = ratios.index(128)
    if seq >= 128:
        assert ga[f"layers.{hca}.attn.compressor.wgate.weight"].abs().sum() > 0
    csa = ratios.index(4)
    if seq >= 8:
        assert ga[f"layers.{csa}.attn.indexer.wq_b.weight"].abs().sum() > 0  # via the distillation loss


def test_query_chunking_does_not_change_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny score budget forces one band per chunk (many chunks); the function must stay the same."""
    cfg = ModelConfig.preset(
        "tiny-test", window_size=16, index_topk=4, sim_fp8_kv=False, sim_fp4_indexer=False
    )
    model = V4Model(cfg).init_random_(5)
    ids = torch.randint(0, cfg.vocab_size, (2, 150), generator=torch.Generator().manual_seed(5))
    (va, ga) = _run(model, ids, True)
    monkeypatch.setattr(attention, "SCORE_BUDGET", {"cpu": 1})
    (vb, gb) = _run(model, ids, True)
    for name in va:
        assert _rel(va[name], vb[name]) <= 1e-5, name
    _grads_agree(ga, gb, 1e-4)


def test_batched_forward_matches_extend_rows() -> None:
    """Each row of the batched training forward is what `extend` computes for that sequence alone."""
    cfg = ModelConfig.preset(
        "tiny-test", window_size=16, index_topk=5, sim_fp8_kv=False, sim_fp4_indexer=False
    )
    model = V4Model(cfg).init_random_(9)
    ids = torch.randint(0, cfg.vocab_size, (3, 141), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        logits = model(ids).logits
    for b in range(3):
        ext = model.extend(model.new_state(), ids[b])
        assert isinstance(ext, torch.Tensor)
        assert _rel(logits[b], ext) <= 1e-5
