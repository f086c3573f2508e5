"""Model configuration for the embedded DeepSeek-V4 runtime.

One frozen pydantic model holds every hyper-parameter of spec §1.1 (reference `inference/config.json`
names) plus the runtime switches that are not part of the published architecture but decide how the
model is *run*: whether weights are stored quantized (FP8/FP4 as in the real checkpoint) or as plain
float tensors (small trainable models), and whether the quantization-aware numerics of the reference
(FP8 KV rounding, FP4 indexer rounding, Hadamard rotation) are simulated. A model trained without that
simulation must run without it, so the switches travel with the config rather than being global flags.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

LayerKind = Literal["swa", "csa", "hca"]
WeightFormat = Literal["quantized", "float"]

_RATIO_KIND: dict[int, LayerKind] = {0: "swa", 4: "csa", 128: "hca"}


class ConfigError(ValueError):
    """A configuration (preset name, JSON file, field value) is not a valid V4 configuration."""


def _flash_ratios() -> tuple[int, ...]:
    return (0, 0, *tuple(4 if i % 2 == 0 else 128 for i in range(2, 43)), 0)


def _pro_ratios() -> tuple[int, ...]:
    return (128, 128, *tuple(4 if i % 2 == 0 else 128 for i in range(2, 61)), 0)


class ModelConfig(BaseModel):
    """Hyper-parameters of a DeepSeek-V4-architecture model (spec §1.1) and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- architecture (spec §1.1; defaults = V4-Flash) ---
    vocab_size: int = 129280
    dim: int = 4096
    n_layers: int = 43
    n_mtp_layers: int = 1
    n_hash_layers: int = 3
    n_heads: int = 64
    n_kv_heads: int = 1
    head_dim: int = 512
    rope_head_dim: int = 64
    q_lora_rank: int = 1024
    o_groups: int = 8
    o_lora_rank: int = 1024
    window_size: int = 128
    compress_ratios: tuple[int, ...] = _flash_ratios()
    index_n_heads: int = 64
    index_head_dim: int = 128
    index_topk: int = 512
    n_routed_experts: int = 256
    n_shared_experts: int = 1
    n_activated_experts: int = 6
    moe_inter_dim: int = 2048
    score_func: Literal["sqrtsoftplus"] = "sqrtsoftplus"
    route_scale: float = 1.5
    swiglu_limit: float = 10.0
    rope_theta: float = 10000.0
    compress_rope_theta: float = 160000.0
    original_seq_len: int = 65536
    rope_factor: float = 16.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    hc_mult: int = 4
    hc_sinkhorn_iters: int = 20
    hc_eps: float = 1e-6
    norm_eps: float = 1e-6
    dtype: Literal["fp8", "bf16"] = "fp8"
    scale_fmt: Literal["ue8m0"] | None = "ue8m0"
    expert_dtype: Literal["fp4", "fp8"] | None = "fp4"
    max_seq_len: int = 1048576
    bos_token_id: int = 0
    eos_token_id: int = 1

    # --- how to run it (not architecture) ---
    weight_format: WeightFormat = "quantized"
    """`quantized`: weights kept as in the real checkpoint (FP8 + E8M0 tiles, packed FP4 experts) and
    dequantized per use; `float`: plain float parameters (trainable small models, HF differential)."""
    sim_fp8_kv: bool = True
    """FP8 e4m3 quantize->dequantize of the non-RoPE dims of window and compressed KV (spec §4.8)."""
    sim_fp4_indexer: bool = True
    """FP4 e2m1 quantize->dequantize of indexer queries and keys (spec §4.8)."""
    sim_fp8_act: bool = True
    """Round the input of every FP8 / FP4 linear to e4m3 in 1x128 blocks with power-of-two scales, as the
    reference's `linear()` does (`act_quant` before `fp8_gemm` / `fp4_gemm`, spec §10). Only linears whose
    weights are stored FP8 or FP4 (`weight_format="quantized"`) have it; float-stored models never do."""
    hadamard: bool = True
    """Walsh-Hadamard rotation of indexer queries and keys (only changes results through FP4 rounding)."""

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        problems: list[str] = []
        if len(self.compress_ratios) != self.n_layers + self.n_mtp_layers:
            problems.append(
                f"compress_ratios has {len(self.compress_ratios)} entries, expected n_layers + n_mtp_layers "
                f"= {self.n_layers + self.n_mtp_layers}"
            )
        bad = sorted({r for r in self.compress_ratios if r not in _RATIO_KIND})
        if bad:
            problems.append(f"compress_ratios may only contain 0, 4, 128; got {bad}")
        if self.n_kv_heads != 1:
            problems.append(f"V4 attention has exactly one shared KV head; got n_kv_heads={self.n_kv_heads}")
        if self.n_shared_experts != 1:
            problems.append(f"V4 has exactly one shared expert; got {self.n_shared_experts}")
        if not 0 < self.rope_head_dim <= self.head_dim or self.rope_head_dim % 2:
            problems.append(f"rope_head_dim must be even and in (0, head_dim]; got {self.rope_head_dim}")
        if self.index_head_dim < self.rope_head_dim or self.index_head_dim % 2:
            problems.append(f"index_head_dim ({self.index_head_dim}) must be even and >= rope_head_dim")
        if self.n_heads % self.o_groups:
            problems.append(f"n_heads ({self.n_heads}) must be divisible by o_groups ({self.o_groups})")
        if not 0 < self.n_activated_experts <= self.n_routed_experts:
            problems.append("n_activated_experts must be in [1, n_routed_experts]")
        if self.n_hash_layers > self.n_layers:
            problems.append("n_hash_layers exceeds n_layers")
        if self.hc_mult < 1 or self.hc_sinkhorn_iters < 1:
            problems.append("hc_mult and hc_sinkhorn_iters must be >= 1")
        if self.window_size < 1 or self.index_topk < 1:
            problems.append("window_size and index_topk must be >= 1")
        if self.hadamard and self.index_head_dim & (self.index_head_dim - 1):
            problems.append("hadamard needs index_head_dim to be a power of two")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived facts ---
    @property
    def nope_head_dim(self) -> int:
        return self.head_dim - self.rope_head_dim

    @property
    def n_blocks(self) -> int:
        """Main-stack layers plus MTP blocks (each has its own compress ratio entry)."""
        return self.n_layers + self.n_mtp_layers

    def ratio(self, layer: int) -> int:
        return self.compress_ratios[layer]

    def layer_kind(self, layer: int) -> LayerKind:
        return _RATIO_KIND[self.compress_ratios[layer]]

    def is_hash_layer(self, layer: int) -> bool:
        """MTP blocks (layer >= n_layers) are never hash-routed."""
        return layer < self.n_hash_layers

    def with_(self, **changes: Any) -> ModelConfig:
        """A validated copy with some fields changed (model_copy would skip validation)."""
        return ModelConfig.model_validate({**self.model_dump(), **changes})

    # --- construction ---
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """`flash`, `pro` (published numbers) or a small preset for tests and training."""
        try:
            base = _PRESETS[name]
        except KeyError:
            raise ConfigError(f"unknown preset {name!r}; known: {sorted(_PRESETS)}") from None
        try:
            return cls.model_validate({**base, **overrides})
        except ValidationError as e:
            raise ConfigError(f"preset {name!r} with overrides {overrides}: {e}") from e

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], **overrides: Any) -> ModelConfig:
        """Accept either a reference `inference/config.json` dict or a HF `config.json` dict."""
        fields: dict[str, Any] = {}
        if "hidden_size" in raw or "num_hidden_layers" in raw:
            fields = _from_hf(raw)
        else:
            fields = {k: v for k, v in raw.items() if k in cls.model_fields}
        if "compress_ratios" in fields:
            fields["compress_ratios"] = tuple(int(r) for r in fields["compress_ratios"])
            n_layers = int(fields.get("n_layers", cls.model_fields["n_layers"].default))
            if "n_mtp_layers" not in fields:
                fields["n_mtp_layers"] = max(len(fields["compress_ratios"]) - n_layers, 0)
        fields.update(overrides)
        try:
            return cls.model_validate(fields)
        except ValidationError as e:
            raise ConfigError(f"not a valid V4 configuration: {e}") from e

    @classmethod
    def from_json(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        p = Path(path)
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p} is not valid JSON: {e}") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: expected a JSON object, got {type(raw).__name__}")
        return cls.from_dict(raw, **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """HF-style `config.json` content (legacy V4 key names, as the published checkpoints ship)."""
        return {
            "architectures": ["DeepseekV4ForCausalLM"],
            "model_type": "deepseek_v4",
            "vocab_size": self.vocab_size,
            "hidden_size": self.dim,
            "num_hidden_layers": self.n_layers,
            "num_nextn_predict_layers": self.n_mtp_layers,
            "num_hash_layers": self.n_hash_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "qk_rope_head_dim": self.rope_head_dim,
            "q_lora_rank": self.q_lora_rank,
            "o_groups": self.o_groups,
            "o_lora_rank": self.o_lora_rank,
            "sliding_window": self.window_size,
            "compress_ratios": list(self.compress_ratios),
            "index_n_heads": self.index_n_heads,
            "index_head_dim": self.index_head_dim,
            "index_topk": self.index_topk,
            "n_routed_experts": self.n_routed_experts,
            "n_shared_experts": self.n_shared_experts,
            "num_experts_per_tok": self.n_activated_experts,
            "moe_intermediate_size": self.moe_inter_dim,
            "scoring_func": self.score_func,
            "routed_scaling_factor": self.route_scale,
            "swiglu_limit": self.swiglu_limit,
            "rope_theta": self.rope_theta,
            "compress_rope_theta": self.compress_rope_theta,
            "rope_scaling": {
                "type": "yarn",
                "factor": self.rope_factor,
                "original_max_position_embeddings": self.original_seq_len,
                "beta_fast": self.beta_fast,
                "beta_slow": self.beta_slow,
            },
            "hc_mult": self.hc_mult,
            "hc_sinkhorn_iters": self.hc_sinkhorn_iters,
            "hc_eps": self.hc_eps,
            "rms_norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_seq_len,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tie_word_embeddings": False,
            "expert_dtype": self.expert_dtype,
            "agentkit_runtime": {
                "weight_format": self.weight_format,
                "sim_fp8_kv": self.sim_fp8_kv,
                "sim_fp4_indexer": self.sim_fp4_indexer,
                "sim_fp8_act": self.sim_fp8_act,
                "hadamard": self.hadamard,
                "dtype": self.dtype,
            },
        }


_HF_RENAMES = {
    "vocab_size": "vocab_size",
    "hidden_size": "dim",
    "num_hidden_layers": "n_layers",
    "num_nextn_predict_layers": "n_mtp_layers",
    "num_hash_layers": "n_hash_layers",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads",
    "head_dim": "head_dim",
    "qk_rope_head_dim": "rope_head_dim",
    "q_lora_rank": "q_lora_rank",
    "o_groups": "o_groups",
    "o_lora_rank": "o_lora_rank",
    "sliding_window": "window_size",
    "compress_ratios": "compress_ratios",
    "index_n_heads": "index_n_heads",
    "index_head_dim": "index_head_dim",
    "index_topk": "index_topk",
    "n_routed_experts": "n_routed_experts",
    "n_shared_experts": "n_shared_experts",
    "num_experts_per_tok": "n_activated_experts",
    "moe_intermediate_size": "moe_inter_dim",
    "scoring_func": "score_func",
    "routed_scaling_factor": "route_scale",
    "swiglu_limit": "swiglu_limit",
    "rope_theta": "rope_theta",
    "compress_rope_theta": "compress_rope_theta",
    "hc_mult": "hc_mult",
    "hc_sinkhorn_iters": "hc_sinkhorn_iters",
    "hc_eps": "hc_eps",
    "rms_norm_eps": "norm_eps",
    "max_position_embeddings": "max_seq_len",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "expert_dtype": "expert_dtype",
}


def _from_hf(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {new: raw[old] for old, new in _HF_RENAMES.items() if old in raw}
    rs = raw.get("rope_scaling") or {}
    if isinstance(rs, dict) and rs:
        for old, new in (
            ("factor", "rope_factor"),
            ("original_max_position_embeddings", "original_seq_len"),
            ("beta_fast", "beta_fast"),
            ("beta_slow", "beta_slow"),
        ):
            if old in rs:
                out[new] = rs[old]
    if "compress_ratios" not in out and isinstance(raw.get("layer_types"), list):
        inv = {"sliding_attention": 0, "compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
        ratios = [inv[t] for t in raw["layer_types"]]
        out["compress_ratios"] = ratios + [0] * int(out.get("n_mtp_layers", 1))
    q = raw.get("quantization_config")
    if isinstance(q, dict):
        out["dtype"] = "fp8"
        out["scale_fmt"] = "ue8m0" if q.get("scale_fmt", "ue8m0") == "ue8m0" else None
        if "expert_dtype" in q and "expert_dtype" not in out:
            out["expert_dtype"] = q["expert_dtype"]
    else:
        out.setdefault("dtype", "bf16")
        out.setdefault("expert_dtype", None)
        out.setdefault("weight_format", "float")
    if isinstance(out.get("eos_token_id"), list):
        out["eos_token_id"] = out["eos_token_id"][0]
    ak = raw.get("agentkit_runtime")
    if isinstance(ak, dict):
        out.update({k: v for k, v in ak.items() if k in ModelConfig.model_fields})
    return out


_FLASH: dict[str, Any] = {}
_PRO: dict[str, Any] = {
    "dim": 7168,
    "n_layers": 61,
    "n_heads": 128,
    "q_lora_rank": 1536,
    "o_groups": 16,
    "index_topk": 1024,
    "n_routed_experts": 384,
    "moe_inter_dim": 3072,
    "route_scale": 2.5,
    "compress_ratios": _pro_ratios(),
}
# Small configs keep the structural constants that the state logic depends on (ratios 4 and 128, the
# 128-token window) so tests exercise partial blocks and window wrap-around at realistic boundaries.
_TINY_TEST: dict[str, Any] = {
    "vocab_size": 256,
    "dim": 64,
    "n_layers": 4,
    "n_mtp_layers": 1,
    "n_hash_layers": 1,
    "n_heads": 4,
    "head_dim": 32,
    "rope_head_dim": 16,
    "q_lora_rank": 32,
    "o_groups": 2,
    "o_lora_rank": 16,
    "window_size": 128,
    "compress_ratios": (0, 4, 128, 4, 0),
    "index_n_heads": 4,
    "index_head_dim": 16,
    "index_topk": 8,
    "n_routed_experts": 8,
    "n_activated_experts": 2,
    "moe_inter_dim": 32,
    "max_seq_len": 65536,
    "weight_format": "float",
    "dtype": "bf16",
    "expert_dtype": None,
}
_TINY: dict[str, Any] = {
    **_TINY_TEST,
    "vocab_size": 129280,
    "dim": 256,
    "n_layers": 6,
    "n_hash_layers": 2,
    "n_heads": 8,
    "head_dim": 128,
    "rope_head_dim": 64,
    "q_lora_rank": 128,
    "o_lora_rank": 128,
    "compress_ratios": (0, 4, 128, 4, 128, 4, 0),
    "index_n_heads": 8,
    "index_head_dim": 64,
    "index_topk": 64,
    "n_routed_experts": 16,
    "n_activated_experts": 4,
    "moe_inter_dim": 128,
}
# Same shape family as Flash (dims that are multiples of 128 so the FP8 tiles/FP4 blocks line up),
# fewer layers and experts: for CUDA benchmarks of the quantized path without 160 GB of weights.
_FLASH_REDUCED: dict[str, Any] = {
    "n_layers": 6,
    "n_hash_layers": 2,
    "compress_ratios": (0, 0, 4, 128, 4, 128, 0),
    "n_routed_experts": 16,
}
_PRESETS: dict[str, dict[str, Any]] = {
    "flash": _FLASH,
    "pro": _PRO,
    "tiny-test": _TINY_TEST,
    "tiny": _TINY,
    "flash-reduced": _FLASH_REDUCED,
}

__all__ = ["ConfigError", "LayerKind", "ModelConfig", "WeightFormat"]
