"""HF transformers' DeepseekV4 holding the same weights as a V4Model (differential tests, benchmarks).

The name map below is the one place that knows how HF's module tree corresponds to the checkpoint names.
"""

from __future__ import annotations

from typing import Any

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model


def hf_config(cfg: ModelConfig) -> Any:
    from transformers.models.deepseek_v4 import DeepseekV4Config

    legacy: dict[str, Any] = {  # folded in by HF's __post_init__; not declared fields
        "compress_ratios": list(cfg.compress_ratios[: cfg.n_layers]),
        "num_hash_layers": cfg.n_hash_layers,
        "qk_rope_head_dim": cfg.rope_head_dim,
    }
    return DeepseekV4Config(
        **legacy,
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.dim,
        moe_intermediate_size=cfg.moe_inter_dim,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=1,
        head_dim=cfg.head_dim,
        q_lora_rank=cfg.q_lora_rank,
        num_experts_per_tok=cfg.n_activated_experts,
        n_routed_experts=cfg.n_routed_experts,
        n_shared_experts=1,
        routed_scaling_factor=cfg.route_scale,
        rope_theta=cfg.rope_theta,
        compress_rope_theta=cfg.compress_rope_theta,
        rope_parameters={
            "rope_type": "yarn",
            "factor": cfg.rope_factor,
            "original_max_position_embeddings": cfg.original_seq_len,
            "beta_fast": cfg.beta_fast,
            "beta_slow": cfg.beta_slow,
        },
        max_position_embeddings=cfg.max_seq_len,
        hc_mult=cfg.hc_mult,
        hc_sinkhorn_iters=cfg.hc_sinkhorn_iters,
        hc_eps=cfg.hc_eps,
        rms_norm_eps=cfg.norm_eps,
        swiglu_limit=cfg.swiglu_limit,
        sliding_window=cfg.window_size,
        o_groups=cfg.o_groups,
        o_lora_rank=cfg.o_lora_rank,
        index_n_heads=cfg.index_n_heads,
        index_head_dim=cfg.index_head_dim,
        index_topk=cfg.index_topk,
        num_nextn_predict_layers=cfg.n_mtp_layers,
    )


def _ours_to_hf_name(name: str) -> list[tuple[str, slice | None]]:
    """Our (checkpoint) name -> HF parameter name(s); experts map into HF's stacked tensors."""
    top = {
        "embed.weight": "model.embed_tokens.weight",
        "head.weight": "lm_head.weight",
        "norm.weight": "model.norm.weight",
        "hc_head_fn": "model.hc_head.hc_fn",
        "hc_head_base": "model.hc_head.hc_base",
        "hc_head_scale": "model.hc_head.hc_scale",
    }
    if name in top:
        return [(top[name], None)]
    _, layer, rest = name.split(".", 2)
    p = f"model.layers.{layer}."
    sub = {
        "hc_attn_fn": "attn_hc.fn",
        "hc_attn_base": "attn_hc.base",
        "hc_attn_scale": "attn_hc.scale",
        "hc_ffn_fn": "ffn_hc.fn",
        "hc_ffn_base": "ffn_hc.base",
        "hc_ffn_scale": "ffn_hc.scale",
        "attn_norm.weight": "input_layernorm.weight",
        "ffn_norm.weight": "post_attention_layernorm.weight",
        "attn.attn_sink": "self_attn.sinks",
        "attn.wq_a.weight": "self_attn.q_a_proj.weight",
        "attn.q_norm.weight": "self_attn.q_a_norm.weight",
        "attn.wq_b.weight": "self_attn.q_b_proj.weight",
        "attn.wkv.weight": "self_attn.kv_proj.weight",
        "attn.kv_norm.weight": "self_attn.kv_norm.weight",
        "attn.wo_a.weight": "self_attn.o_a_proj.weight",
        "attn.wo_b.weight": "self_attn.o_b_proj.weight",
        "attn.compressor.ape": "self_attn.compressor.position_bias",
        "attn.compressor.wkv.weight": "self_attn.compressor.kv_proj.weight",
        "attn.compressor.wgate.weight": "self_attn.compressor.gate_proj.weight",
        "attn.compressor.norm.weight": "self_attn.compressor.kv_norm.weight",
        "attn.indexer.wq_b.weight": "self_attn.compressor.indexer.q_b_proj.weight",
        "attn.indexer.weights_proj.weight": "self_attn.compressor.indexer.scorer.weights_proj.weight",
        "attn.indexer.compressor.ape": "self_attn.compressor.indexer.position_bias",
        "attn.indexer.compressor.wkv.weight": "self_attn.compressor.indexer.kv_proj.weight",
        "attn.indexer.compressor.wgate.weight": "self_attn.compressor.indexer.gate_proj.weight",
        "attn.indexer.compressor.norm.weight": "self_attn.compressor.indexer.kv_norm.weight",
        "ffn.gate.weight": "mlp.gate.weight",
        "ffn.gate.bias": "mlp.gate.e_score_correction_bias",
        "ffn.gate.tid2eid": "mlp.gate.tid2eid",
        "ffn.shared_experts.w1.weight": "mlp.shared_experts.gate_proj.weight",
        "ffn.shared_experts.w3.weight": "mlp.shared_experts.up_proj.weight",
        "ffn.shared_experts.w2.weight": "mlp.shared_experts.down_proj.weight",
    }
    if rest in sub:
        return [(p + sub[rest], None)]
    _, _, e, w, _ = rest.split(".")  # ffn.experts.{e}.w{1,2,3}.weight
    return [
        (
            p + ("mlp.experts.down_proj" if w == "w2" else "mlp.experts.gate_up_proj"),
            slice(int(e), int(e) + 1),
        )
    ]


@torch.no_grad()
def hf_from_ours(model: V4Model) -> Any:
    """A DeepseekV4ForCausalLM (model's dtype, float weights only) holding `model`'s main-stack weights.

    HF has no MTP block, so MTP weights are not mapped.
    """
    from transformers.models.deepseek_v4 import DeepseekV4ForCausalLM

    cfg = model.config
    hf: Any = DeepseekV4ForCausalLM(hf_config(cfg))
    hf = hf.to(model.dtype).eval()
    hf_params = dict(hf.named_parameters()) | dict(hf.named_buffers())
    inter = cfg.moe_inter_dim
    seen: set[str] = set()
    for name, t in model.state_dict().items():
        if name.startswith("mtp."):
            continue
        for hf_name, sl in _ours_to_hf_name(name):
            dst = hf_params[hf_name]
            seen.add(hf_name)
            if sl is None:
                assert dst.shape == t.shape, (name, hf_name, dst.shape, t.shape)
                dst.copy_(t)
            elif name.endswith("w2.weight"):
                dst[sl][0].copy_(t)
            elif name.endswith("w1.weight"):
                dst[sl][0, :inter].copy_(t)
            else:
                dst[sl][0, inter:].copy_(t)
    missing = {n for n in dict(hf.named_parameters())} - seen
    assert not missing, f"HF parameters with no counterpart: {sorted(missing)[:5]}"
    return hf
