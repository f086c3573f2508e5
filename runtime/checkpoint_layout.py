"""The DeepSeek-V4 checkpoint layout: every stored tensor's name, shape, dtype and kind (spec §9.1).

`tensor_specs(config)` is the one place that knows the HF safetensors layout (reference naming, no `model.`
prefix). The reader checks a checkpoint against it before reading data, the writer plans shards and headers
from it before a weight exists, and the random-weight generator walks it; none of them lists names itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from .config import ModelConfig
from .quant import E8M0_DTYPE, FP8_DTYPE, fp4_scale_shape, fp8_scale_shape
from .safetensors_io import SAFETENSORS_DTYPES

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "SINGLE_NAME",
    "CheckpointError",
    "LinearFormat",
    "TensorKind",
    "TensorSpec",
    "dtype_census",
    "few",
    "stored_specs",
    "tensor_specs",
]

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

TensorKind = Literal[
    "linear",  # a matmul weight [out, in], stored bf16, FP8 e4m3 or packed FP4
    "scale",  # the E8M0 scales of the linear named by the same prefix
    "embed",
    "head",
    "norm",  # RMSNorm weight
    "hc_fn",
    "hc_base",
    "hc_scale",
    "sink",  # attention sink logits
    "gate",  # MoE router weight
    "bias",  # router selection bias
    "tid2eid",  # hash-routing table
    "ape",  # compressor absolute position embedding
]


class CheckpointError(ValueError):
    """A checkpoint on disk (or a tensor dict being saved) does not match the V4 layout its config implies."""


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: HF name, shape, storage dtype and what it is (which decides random init)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: TensorKind

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()

    @property
    def st_dtype(self) -> str:
        """The safetensors dtype string, e.g. `F8_E4M3` (what spec §9.1's census counts)."""
        return SAFETENSORS_DTYPES[self.dtype]


LinearFormat = Literal["fp8", "fp4", "bf16"]


def _linear(prefix: str, out_f: int, in_f: int, fmt: LinearFormat) -> list[TensorSpec]:
    if fmt == "fp8":
        return [
            TensorSpec(f"{prefix}.weight", (out_f, in_f), FP8_DTYPE, "linear"),
            TensorSpec(f"{prefix}.scale", fp8_scale_shape(out_f, in_f), E8M0_DTYPE, "scale"),
        ]
    if fmt == "fp4":
        # Packed two e2m1 values per byte; HF stores these bytes as I8.
        return [
            TensorSpec(f"{prefix}.weight", (out_f, in_f // 2), torch.int8, "linear"),
            TensorSpec(f"{prefix}.scale", fp4_scale_shape(out_f, in_f), E8M0_DTYPE, "scale"),
        ]
    return [TensorSpec(f"{prefix}.weight", (out_f, in_f), torch.bfloat16, "linear")]


def _formats(config: ModelConfig) -> tuple[LinearFormat, LinearFormat]:
    """(format of FP8-class linears, format of routed experts) under the config's weight-storage switch."""
    if config.weight_format != "quantized":
        return "bf16", "bf16"
    dense: LinearFormat = "fp8" if config.dtype == "fp8" else "bf16"
    expert: LinearFormat = dense if config.expert_dtype is None else config.expert_dtype
    return dense, expert


def _hc(prefix: str, config: ModelConfig, fn: str) -> list[TensorSpec]:
    """mHC mixer parameters: sub-layer mixers make pre/post/comb ((2 + hc) * hc rows, 3 scales), the head
    mixer only pre (hc rows, 1 scale) (spec §6)."""
    hc, d = config.hc_mult, config.dim
    mix, n_scale = (hc, 1) if fn == "hc_head" else ((2 + hc) * hc, 3)
    return [
        TensorSpec(f"{prefix}{fn}_fn", (mix, hc * d), torch.float32, "hc_fn"),
        TensorSpec(f"{prefix}{fn}_base", (mix,), torch.float32, "hc_base"),
        TensorSpec(f"{prefix}{fn}_scale", (n_scale,), torch.float32, "hc_scale"),
    ]


def _compressor(prefix: str, config: ModelConfig, ratio: int, head_dim: int) -> list[TensorSpec]:
    width = (2 if ratio == 4 else 1) * head_dim  # the overlapping (r = 4) compressor carries two halves
    return [
        TensorSpec(f"{prefix}.ape", (ratio, width), torch.float32, "ape"),
        TensorSpec(f"{prefix}.wkv.weight", (width, config.dim), torch.bfloat16, "linear"),
        TensorSpec(f"{prefix}.wgate.weight", (width, config.dim), torch.bfloat16, "linear"),
        TensorSpec(f"{prefix}.norm.weight", (head_dim,), torch.bfloat16, "norm"),
    ]


def _block(prefix: str, config: ModelConfig, layer: int) -> list[TensorSpec]:
    c = config
    d = c.dim
    dense, expert = _formats(c)
    specs = [*_hc(prefix, c, "hc_attn"), *_hc(prefix, c, "hc_ffn")]
    specs += [
        TensorSpec(f"{prefix}attn_norm.weight", (d,), torch.bfloat16, "norm"),
        TensorSpec(f"{prefix}ffn_norm.weight", (d,), torch.bfloat16, "norm"),
    ]
    a = f"{prefix}attn"
    specs.append(TensorSpec(f"{a}.attn_sink", (c.n_heads,), torch.float32, "sink"))
    specs += _linear(f"{a}.wq_a", c.q_lora_rank, d, dense)
    specs.append(TensorSpec(f"{a}.q_norm.weight", (c.q_lora_rank,), torch.bfloat16, "norm"))
    specs += _linear(f"{a}.wq_b", c.n_heads * c.head_dim, c.q_lora_rank, dense)
    specs += _linear(f"{a}.wkv", c.head_dim, d, dense)
    specs.append(TensorSpec(f"{a}.kv_norm.weight", (c.head_dim,), torch.bfloat16, "norm"))
    specs += _linear(f"{a}.wo_a", c.o_groups * c.o_lora_rank, c.n_heads * c.head_dim // c.o_groups, dense)
    specs += _linear(f"{a}.wo_b", d, c.o_groups * c.o_lora_rank, dense)
    ratio = c.ratio(layer)
    if ratio:
        specs += _compressor(f"{a}.compressor", c, ratio, c.head_dim)
    if ratio == 4:
        ix = f"{a}.indexer"
        specs += _linear(f"{ix}.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, dense)
        specs.append(TensorSpec(f"{ix}.weights_proj.weight", (c.index_n_heads, d), torch.bfloat16, "linear"))
        specs += _compressor(f"{ix}.compressor", c, 4, c.index_head_dim)
    f = f"{prefix}ffn"
    specs.append(TensorSpec(f"{f}.gate.weight", (c.n_routed_experts, d), torch.bfloat16, "gate"))
    if c.is_hash_layer(layer):
        specs.append(
            TensorSpec(f"{f}.gate.tid2eid", (c.vocab_size, c.n_activated_experts), torch.int64, "tid2eid")
        )
    else:
        specs.append(TensorSpec(f"{f}.gate.bias", (c.n_routed_experts,), torch.float32, "bias"))
    inter = c.moe_inter_dim
    for w, (o, i) in (("w1", (inter, d)), ("w2", (d, inter)), ("w3", (inter, d))):
        specs += _linear(f"{f}.shared_experts.{w}", o, i, dense)
    for e in range(c.n_routed_experts):
        for w, (o, i) in (("w1", (inter, d)), ("w2", (d, inter)), ("w3", (inter, d))):
            specs += _linear(f"{f}.experts.{e}.{w}", o, i, expert)
    return specs


def tensor_specs(config: ModelConfig, *, checkpoint: bool = True) -> list[TensorSpec]:
    """Every tensor of a V4 checkpoint for `config`, in a stable order (top level, blocks, MTP blocks).

    `checkpoint=False` lists the same tensors for a model that is only held in memory, which may use FP4
    experts on dims the checkpoint format does not allow (any multiple of 32 instead of 64).
    """
    c = config
    dense, expert = _formats(c)
    if checkpoint and expert == "fp4" and (c.dim % 64 or c.moe_inter_dim % 64):
        raise CheckpointError(
            f"FP4 experts need dim and moe_inter_dim divisible by 64; got {c.dim}, {c.moe_inter_dim}"
        )
    specs = [
        TensorSpec("embed.weight", (c.vocab_size, c.dim), torch.bfloat16, "embed"),
        TensorSpec("norm.weight", (c.dim,), torch.bfloat16, "norm"),
        TensorSpec("head.weight", (c.vocab_size, c.dim), torch.bfloat16, "head"),
        *_hc("", c, "hc_head"),
    ]
    for layer in range(c.n_layers):
        specs += _block(f"layers.{layer}.", c, layer)
    for m in range(c.n_mtp_layers):
        p = f"mtp.{m}."
        specs += _block(p, c, c.n_layers + m)
        specs += _linear(f"{p}e_proj", c.dim, c.dim, dense)
        specs += _linear(f"{p}h_proj", c.dim, c.dim, dense)
        specs += [
            TensorSpec(f"{p}enorm.weight", (c.dim,), torch.bfloat16, "norm"),
            TensorSpec(f"{p}hnorm.weight", (c.dim,), torch.bfloat16, "norm"),
            TensorSpec(f"{p}norm.weight", (c.dim,), torch.bfloat16, "norm"),
            *_hc(p, c, "hc_head"),
        ]
    return specs


def dtype_census(specs: list[TensorSpec]) -> dict[str, int]:
    """Tensor count per safetensors dtype string: the check of spec §9.1 / §15.3 item 1."""
    out: dict[str, int] = {}
    for s in specs:
        out[s.st_dtype] = out.get(s.st_dtype, 0) + 1
    return out


def stored_specs(
    config: ModelConfig, float_dtype: torch.dtype = torch.bfloat16, *, checkpoint: bool = True
) -> list[TensorSpec]:
    """`tensor_specs` with the bf16 tensors stored as `float_dtype`: bf16 (the real layout) or float32.

    float32 keeps full precision in a float-format checkpoint (a training run saves and resumes exactly);
    quantized checkpoints keep the real bf16 layout.
    """
    specs = tensor_specs(config, checkpoint=checkpoint)
    if float_dtype == torch.bfloat16:
        return specs
    if float_dtype != torch.float32 or config.weight_format != "float":
        raise CheckpointError(
            f"float_dtype={float_dtype} needs a float-format config and float32 "
            f"(quantized checkpoints keep the real bf16 layout)"
        )
    return [replace(s, dtype=torch.float32) if s.dtype == torch.bfloat16 else s for s in specs]


def few(names: list[str], k: int = 5) -> str:
    """The first `k` names of a list for an error message, and how many more there are."""
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")
