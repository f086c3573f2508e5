"""Differential test: agentkit's V4Model against Hugging Face transformers' DeepseekV4 on the same weights.

Both run in fp32 with the low-precision simulation switched off (HF has none), on small random configs whose
sequences cross the 128-token window, complete several HCA blocks and give the indexer more candidates than
its top-k. Per-position logits must agree to 1e-4 relative error.

Known semantic differences (spec §16), and why they do not show here:
* HF simulates no FP8 KV / FP4 indexer rounding and no Hadamard rotation -> switched off on our side.
* HF computes indexer scores in fp32 (reference: bf16) -> we run fp32 too.
* HF applies the routing weight after the expert down-projection (reference: before, in fp32) -> equal up to
  rounding because the projection is linear.
* HF's sliding cache keeps 127 past tokens + the current one, ours 128 ring slots -> same visible keys.
* Top-k ties: when indexer scores tie exactly at the k-th place (e.g. every ReLU is 0), the two pick
  different entries. With 16 indexer heads and these seeds no exact tie occurs (one would fail the test).
* HF has no MTP block, so the MTP block is not compared.
"""

from __future__ import annotations

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.hf_compat import hf_from_ours
from agentkit.runtime.model import V4Model

CASES = [
    # (ratios incl. MTP entry, hash layers, index_topk, seq len, seed)
    ((0, 4, 128, 4, 0), 1, 8, 300, 0),
    ((128, 128, 4, 128, 0), 2, 5, 290, 1),
    ((0, 0, 4, 4, 0), 0, 16, 263, 2),
]


@pytest.mark.parametrize(("ratios", "n_hash", "topk", "seq", "seed"), CASES)
def test_logits_match_transformers(
    ratios: tuple[int, ...], n_hash: int, topk: int, seq: int, seed: int
) -> None:
    cfg = ModelConfig.preset(
        "tiny-test",
        compress_ratios=ratios,
        n_hash_layers=n_hash,
        index_topk=topk,
        index_n_heads=16,
        sim_fp8_kv=False,
        sim_fp4_indexer=False,
        hadamard=False,
    )
    model = V4Model(cfg).init_random_(seed)
    hf = hf_from_ours(model)
    ids = torch.randint(0, cfg.vocab_size, (1, seq), generator=torch.Generator().manual_seed(100 + seed))
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits[0].float()
    ours = model.extend(model.new_state(), ids[0])
    assert isinstance(ours, torch.Tensor)
    rel = (ours - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert rel.max().item() <= 1e-4, (
        f"first bad position {int((rel > 1e-4).nonzero()[0])}, max rel {rel.max():.3g}"
    )
    # the case must actually exercise top-k selection beyond the candidate count
    if 4 in ratios[: cfg.n_layers]:
        assert seq // 4 > topk


def test_hf_mapping_detects_a_changed_weight() -> None:
    """The comparison is sensitive: perturbing one of our weights after mapping breaks agreement."""
    cfg = ModelConfig.preset(
        "tiny-test", index_n_heads=16, sim_fp8_kv=False, sim_fp4_indexer=False, hadamard=False
    )
    model = V4Model(cfg).init_random_(3)
    hf = hf_from_ours(model)
    with torch.no_grad():
        model.layers[2].attn.compressor.ape[5].add_(1.0)  # HCA slot 5: matters once a 128-block completes
    ids = torch.randint(0, cfg.vocab_size, (1, 140), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids, use_cache=False).logits[0]
    ours = model.extend(model.new_state(), ids[0])
    assert isinstance(ours, torch.Tensor)
    rel = (ours - ref).abs().amax(-1) / ref.abs().amax(-1)
    assert rel[:127].max() <= 1e-4 < rel[127:].max()
