"""ModelConfig: published presets, both config.json dialects, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from agentkit.runtime.config import ConfigError, ModelConfig

# The published V4-Flash `inference/config.json` (reference key names; spec §1.1), as data.
FLASH_REFERENCE_JSON = {
    "vocab_size": 129280, "dim": 4096, "moe_inter_dim": 2048, "n_layers": 43, "n_hash_layers": 3,
    "n_heads": 64, "n_routed_experts": 256, "n_routed_experts_score": 128, "n_shared_experts": 1,
    "n_activated_experts": 6, "score_func": "sqrtsoftplus", "route_scale": 1.5, "swiglu_limit": 10.0,
    "q_lora_rank": 1024, "head_dim": 512, "rope_head_dim": 64, "o_groups": 8, "o_lora_rank": 1024,
    "window_size": 128, "original_seq_len": 65536, "rope_theta": 10000, "rope_factor": 16, "beta_fast": 32,
    "beta_slow": 1, "index_n_heads": 64, "index_head_dim": 128, "index_topk": 512, "hc_mult": 4,
    "hc_sinkhorn_iters": 20, "dtype": "fp8", "scale_fmt": "ue8m0", "expert_dtype": "fp4",
    "compress_rope_theta": 160000,
    "compress_ratios": [0, 0] + [4, 128] * 20 + [4, 0],
}  # fmt: skip


def test_flash_and_pro_presets_have_published_numbers() -> None:
    f, p = ModelConfig.preset("flash"), ModelConfig.preset("pro")
    assert (f.dim, f.n_layers, f.n_heads, f.q_lora_rank, f.o_groups, f.index_topk) == (
        4096,
        43,
        64,
        1024,
        8,
        512,
    )
    assert (p.dim, p.n_layers, p.n_heads, p.q_lora_rank, p.o_groups, p.index_topk) == (
        7168,
        61,
        128,
        1536,
        16,
        1024,
    )
    assert (f.n_routed_experts, f.moe_inter_dim, f.route_scale) == (256, 2048, 1.5)
    assert (p.n_routed_experts, p.moe_inter_dim, p.route_scale) == (384, 3072, 2.5)
    assert [f.layer_kind(i) for i in range(f.n_blocks)].count("csa") == 21
    assert [f.layer_kind(i) for i in range(f.n_blocks)].count("hca") == 20
    assert f.compress_ratios[:3] == (0, 0, 4) and f.compress_ratios[-1] == 0 and len(f.compress_ratios) == 44
    assert (
        p.compress_ratios[:3] == (128, 128, 4) and p.compress_ratios[-1] == 0 and len(p.compress_ratios) == 62
    )
    assert [p.layer_kind(i) for i in range(p.n_layers)].count("hca") == 31
    assert f.sim_fp8_kv and f.sim_fp4_indexer and f.hadamard and f.weight_format == "quantized"
    for small in ("tiny-test", "tiny", "flash-reduced"):
        ModelConfig.preset(small)


def test_reference_json_loads_as_flash(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(FLASH_REFERENCE_JSON))
    assert ModelConfig.from_json(path) == ModelConfig.preset("flash")


def test_hf_json_round_trip(tmp_path: Path) -> None:
    for name in ("flash", "pro", "tiny-test"):
        cfg = ModelConfig.preset(name)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg.to_hf_dict()))
        assert ModelConfig.from_json(path) == cfg
    hf_plain = {k: v for k, v in ModelConfig.preset("pro").to_hf_dict().items() if k != "agentkit_runtime"}
    hf_plain["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    assert ModelConfig.from_dict(hf_plain) == ModelConfig.preset("pro")


def test_invalid_configs_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="compress_ratios"):
        ModelConfig.preset("tiny-test", compress_ratios=(0, 4))
    with pytest.raises(ConfigError, match="0, 4, 128"):
        ModelConfig.preset("tiny-test", compress_ratios=(0, 8, 4, 4, 0))
    with pytest.raises(ConfigError, match="o_groups"):
        ModelConfig.preset("tiny-test", o_groups=3)
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        ModelConfig.from_json(bad)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({**FLASH_REFERENCE_JSON, "n_heads": "many"})
