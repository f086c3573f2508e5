"""The DeepSeek-V4 checkpoint: tensor names, shapes and dtypes; writing and validated loading.

`tensor_specs` is the one place that knows the HF safetensors layout of spec §9.1 (reference naming, no
`model.` prefix). Everything else here derives from it: the writer plans shards and the safetensors header
from the specs before a single weight exists (so random multi-GB checkpoints are generated tensor by tensor,
never held whole), and the loader checks every stored name, dtype and shape against the specs before it
reads data, so a broken checkpoint fails with a `CheckpointError` that names the file and tensor instead of
a shape error deep in a forward pass.

Loading keeps the stored precision (FP8 stays e4m3, experts stay packed bytes, scales stay E8M0): the model
decides when to dequantize (`agentkit.runtime.quant`).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch

from .config import ConfigError, ModelConfig
from .quant import (
    E8M0_DTYPE,
    FP8_DTYPE,
    FP8_MAX,
    e8m0_from_exponent,
    fp4_scale_shape,
    fp8_scale_shape,
    quant_fp4,
    quant_fp8,
)
from .safetensors_io import (
    SAFETENSORS_DTYPES,
    HeaderEntry,
    SafetensorsFormatError,
    read_header,
    write_streaming,
)

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "CheckpointError",
    "TensorKind",
    "TensorSpec",
    "dtype_census",
    "load_checkpoint",
    "load_model",
    "random_tensors",
    "save_checkpoint",
    "save_random_checkpoint",
    "shipped_checkpoint",
    "tensor_specs",
    "validate_checkpoint",
]

CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 4 << 30

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


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """Every tensor of a V4 checkpoint for `config`, in a stable order (top level, blocks, MTP blocks)."""
    c = config
    dense, expert = _formats(c)
    if expert == "fp4" and (c.dim % 64 or c.moe_inter_dim % 64):
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


# ---------------------------------------------------------------------------------------- random weights


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """One stream per (seed, tensor name): values do not depend on shard layout or generation order."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _rows_per_chunk(cols: int, multiple: int) -> int:
    return max(multiple, (1 << 22) // max(cols, 1) // multiple * multiple)


# RMS of e2m1 values when all 16 codes are equally likely: sqrt(mean(0, .25, 1, 2.25, 4, 9, 16, 36)).
_FP4_CODE_RMS = math.sqrt(68.5 / 8)


def _random_linear(specs: list[TensorSpec], seed: int, device: torch.device) -> list[torch.Tensor]:
    """A weight (and its scale) in stored format with std about 1/sqrt(in), so activations keep their scale.

    Written straight in the stored format with one power-of-two scale for the whole tensor: FP8 from normal
    samples (one fp32 chunk at a time), FP4 as uniformly random codes (no fp32 at all). Running the full
    quantizers over billions of random values would cost minutes for nothing a forward pass can tell apart.
    """
    w = specs[0]
    g = _generator(seed, w.name, device)
    out_f = w.shape[0]
    in_f = w.shape[1] * (2 if w.dtype == torch.int8 else 1)
    std = in_f**-0.5
    if w.dtype == torch.int8:
        k = round(math.log2(std / _FP4_CODE_RMS))
        weight = torch.randint(-128, 128, w.shape, generator=g, device=device, dtype=torch.int8)
    else:
        k = math.ceil(math.log2(8 * std / FP8_MAX))  # 8 sigma still inside the e4m3 range
        weight = torch.empty(w.shape, dtype=w.dtype, device=device)
        step = _rows_per_chunk(in_f, 1)
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            chunk = torch.randn((r1 - r0, in_f), generator=g, device=device)
            if w.dtype == FP8_DTYPE:
                weight[r0:r1] = chunk.mul_(std * 2.0**-k).clamp_(-FP8_MAX, FP8_MAX).to(w.dtype)
            else:
                weight[r0:r1] = chunk.mul_(std).to(w.dtype)
    if len(specs) == 1:
        return [weight]
    scale = e8m0_from_exponent(torch.full(specs[1].shape, k, dtype=torch.int32, device=device))
    return [weight, scale]


def _random_plain(spec: TensorSpec, config: ModelConfig, seed: int, device: torch.device) -> torch.Tensor:
    g = _generator(seed, spec.name, device)
    kind = spec.kind
    if kind == "norm":
        return torch.ones(spec.shape, dtype=spec.dtype, device=device)
    if kind in ("sink", "bias"):
        return torch.zeros(spec.shape, dtype=spec.dtype, device=device)
    if kind == "tid2eid":
        vocab, k = spec.shape
        out = torch.empty(spec.shape, dtype=torch.int64, device=device)
        step = _rows_per_chunk(config.n_routed_experts, 1)
        for r0 in range(0, vocab, step):
            r1 = min(r0 + step, vocab)
            # k distinct experts per token id, uniformly at random
            rnd = torch.rand((r1 - r0, config.n_routed_experts), generator=g, device=device)
            out[r0:r1] = rnd.topk(k, dim=-1).indices
        return out
    std = {
        "embed": 1.0,
        "head": config.dim**-0.5,
        "gate": config.dim**-0.5,
        "hc_fn": 0.1 * spec.shape[-1] ** -0.5,
        "hc_base": 0.1,
        "hc_scale": 0.1,
        "ape": 0.1,
    }[kind]
    out = torch.empty(spec.shape, dtype=spec.dtype, device=device)
    flat = out.view(-1)
    step = 1 << 22
    for i in range(0, flat.numel(), step):
        j = min(i + step, flat.numel())
        flat[i:j] = (torch.randn(j - i, generator=g, device=device) * std).to(spec.dtype)
    if kind == "hc_scale":
        out.abs_()
    return out


def random_tensors(
    config: ModelConfig, seed: int = 0, *, device: str | torch.device = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, stored tensor) for every spec in order, generated lazily with deterministic per-tensor seeds."""
    dev = torch.device(device)
    specs = tensor_specs(config)
    i = 0
    while i < len(specs):
        s = specs[i]
        if s.kind == "linear":
            group = specs[i : i + 2] if i + 1 < len(specs) and specs[i + 1].kind == "scale" else [s]
            for spec, t in zip(group, _random_linear(group, seed, dev), strict=True):
                yield spec.name, t
            i += len(group)
        else:
            yield s.name, _random_plain(s, config, seed, dev)
            i += 1


# --------------------------------------------------------------------------------------- safetensors I/O


def _write_shard(path: Path, specs: list[TensorSpec], tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
    try:
        write_streaming(path, [(s.name, s.dtype, s.shape) for s in specs], tensors)
    except SafetensorsFormatError as e:
        raise CheckpointError(f"internal: {e}") from e


def _plan_shards(specs: list[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    if max_shard_bytes <= 0:
        raise CheckpointError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    return shards


def config_json(config: ModelConfig) -> dict[str, Any]:
    """HF `config.json` content; quantized checkpoints also carry the published `quantization_config`."""
    d = config.to_hf_dict()
    if config.weight_format == "quantized" and config.dtype == "fp8":
        d["quantization_config"] = {
            "activation_scheme": "dynamic",
            "fmt": "e4m3",
            "quant_method": "fp8",
            "scale_fmt": "ue8m0",
            "weight_block_size": [128, 128],
        }
    return d


def _write_checkpoint(
    config: ModelConfig,
    specs: list[TensorSpec],
    tensors: Iterator[tuple[str, torch.Tensor]],
    path: str | Path,
    max_shard_bytes: int,
) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    shards = _plan_shards(specs, max_shard_bytes)
    n = len(shards)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{n:05d}.safetensors"
        _write_shard(out / fname, shard, tensors)
        weight_map.update({s.name: fname for s in shard})
    index = {"metadata": {"total_size": sum(s.nbytes for s in specs)}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / CONFIG_NAME).write_text(json.dumps(config_json(config), indent=2) + "\n", encoding="utf-8")
    return out


def save_random_checkpoint(
    config: ModelConfig,
    path: str | Path,
    seed: int = 0,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    device: str | torch.device = "cpu",
) -> Path:
    """A complete random-weight checkpoint in the real layout, generated and written one tensor at a time."""
    return _write_checkpoint(
        config, tensor_specs(config), random_tensors(config, seed, device=device), path, max_shard_bytes
    )


def save_checkpoint(
    config: ModelConfig,
    tensors: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    float_dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write a trained model's tensors in the V4 layout for `config`.

    Tensors may already be in stored format, or plain floats: a float weight whose spec is FP8/FP4 is
    quantized here (unless its `.scale` is given too), and floats are cast to the spec's float dtype (fp32 ->
    bf16 for norms, for example). Missing, unknown, misshapen or non-finite tensors raise `CheckpointError`
    before anything is written.

    `float_dtype=torch.float32` keeps full precision in a float-format checkpoint (the bf16 tensors of the
    layout are stored as fp32; the loader accepts that widening for float-format configs only), so a
    training run can save and resume exactly.
    """
    specs = tensor_specs(config)
    if float_dtype != torch.bfloat16:
        if float_dtype != torch.float32 or config.weight_format != "float":
            raise CheckpointError(
                f"float_dtype={float_dtype} needs a float-format config and float32 "
                f"(quantized checkpoints keep the real bf16 layout)"
            )
        specs = [replace(s, dtype=torch.float32) if s.dtype == torch.bfloat16 else s for s in specs]
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(tensors) - set(by_name))
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors are not part of this config's layout: {_few(unknown)}")
    missing = [s.name for s in specs if s.name not in tensors and not _derived_scale(s, tensors)]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {_few(missing)}")
    for s in specs:  # validate everything up front: a bad tensor must not leave half a checkpoint behind
        if s.name in tensors:
            _check_source(s, tensors[s.name])
    return _write_checkpoint(config, specs, _stored_tensors(specs, tensors), path, max_shard_bytes)


def _few(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (f", ... ({len(names) - k} more)" if len(names) > k else "")


def _derived_scale(spec: TensorSpec, tensors: Mapping[str, torch.Tensor]) -> bool:
    """A `.scale` may be omitted when its weight is given as floats (it is then produced by quantization)."""
    if spec.kind != "scale":
        return False
    w = tensors.get(spec.name[: -len(".scale")] + ".weight")
    return w is not None and w.dtype.is_floating_point and w.dtype not in (FP8_DTYPE, E8M0_DTYPE)


def _logical_shape(spec: TensorSpec) -> tuple[int, ...]:
    if spec.kind == "linear" and spec.dtype == torch.int8:
        return (spec.shape[0], spec.shape[1] * 2)
    return spec.shape


def _check_source(spec: TensorSpec, t: torch.Tensor) -> None:
    is_float = t.dtype.is_floating_point and t.dtype not in (FP8_DTYPE, E8M0_DTYPE)
    quantize = spec.kind == "linear" and spec.dtype in (FP8_DTYPE, torch.int8) and is_float
    if t.dtype == spec.dtype:
        ok = tuple(t.shape) == spec.shape
    elif quantize:
        ok = tuple(t.shape) == _logical_shape(spec)
    elif spec.dtype.is_floating_point and spec.dtype not in (FP8_DTYPE, E8M0_DTYPE):
        ok = is_float and tuple(t.shape) == spec.shape
    else:  # tid2eid: any integer dtype converts exactly
        ok = spec.kind == "tid2eid" and not t.dtype.is_floating_point and tuple(t.shape) == spec.shape
    if not ok:
        raise CheckpointError(
            f"{spec.name}: got {t.dtype} {tuple(t.shape)}, expected {spec.dtype} {spec.shape}"
            + (f" (or floats of shape {_logical_shape(spec)} to quantize)" if spec.kind == "linear" else "")
        )
    if is_float and not bool(torch.isfinite(t).all()):
        raise CheckpointError(f"{spec.name}: contains NaN or infinite values")


def _stored_tensors(
    specs: list[TensorSpec], tensors: Mapping[str, torch.Tensor]
) -> Iterator[tuple[str, torch.Tensor]]:
    pending: dict[str, torch.Tensor] = {}
    for s in specs:
        if s.name in pending:
            yield s.name, pending.pop(s.name)
            continue
        t = tensors[s.name]
        if t.dtype == s.dtype:
            yield s.name, t
        elif s.kind == "linear" and s.dtype in (FP8_DTYPE, torch.int8):
            q, scale = quant_fp8(t) if s.dtype == FP8_DTYPE else quant_fp4(t)
            scale_name = s.name[: -len(".weight")] + ".scale"
            if scale_name not in tensors:
                pending[scale_name] = scale
            yield s.name, q
        else:
            yield s.name, t.to(s.dtype)


# ----------------------------------------------------------------------------------------------- loading


def _read_header(file: Path) -> dict[str, HeaderEntry]:
    try:
        return read_header(file)
    except SafetensorsFormatError as e:
        raise CheckpointError(str(e)) from e


def read_config(path: str | Path) -> ModelConfig:
    try:
        return ModelConfig.from_json(Path(path) / CONFIG_NAME)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def _weight_map(root: Path) -> dict[str, str]:
    index = root / INDEX_NAME
    if index.is_file():
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
            wm = raw["weight_map"]
            if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
                raise TypeError("weight_map must map tensor names to file names")
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{index}: not a valid safetensors index: {e}") from e
        return dict(wm)
    single = root / SINGLE_NAME
    if single.is_file():
        return {name: SINGLE_NAME for name in _read_header(single)}
    raise CheckpointError(f"{root}: no {INDEX_NAME} or {SINGLE_NAME}")


def validate_checkpoint(path: str | Path) -> tuple[ModelConfig, dict[str, str]]:
    """Check a checkpoint directory without reading tensor data; returns (config, name -> shard file)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {root}")
    config = read_config(root)
    weight_map = _weight_map(root)
    by_file: dict[str, set[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, set()).add(name)
    stored: dict[str, HeaderEntry] = {}
    for fname, names in sorted(by_file.items()):
        file = root / fname
        if not file.is_file():
            raise CheckpointError(
                f"{root}: missing shard {fname} (the index puts {len(names)} tensors there)"
            )
        entries = _read_header(file)
        if set(entries) != names:
            absent, extra = sorted(names - set(entries)), sorted(set(entries) - names)
            raise CheckpointError(
                f"{file}: does not match the index"
                + (f"; listed but not stored: {_few(absent)}" if absent else "")
                + (f"; stored but not listed: {_few(extra)}" if extra else "")
            )
        stored.update(entries)
    specs = tensor_specs(config)
    spec_names = {s.name for s in specs}
    unknown = sorted(set(stored) - spec_names)
    if unknown:
        raise CheckpointError(f"{root}: {len(unknown)} unknown tensors for this config: {_few(unknown)}")
    missing = [s.name for s in specs if s.name not in stored]
    if missing:
        raise CheckpointError(f"{root}: {len(missing)} tensors missing: {_few(missing)}")
    for s in specs:
        e = stored[s.name]
        widened = config.weight_format == "float" and s.dtype == torch.bfloat16 and e.dtype == "F32"
        if (e.dtype != s.st_dtype and not widened) or e.shape != s.shape:
            raise CheckpointError(
                f"{root / weight_map[s.name]}: tensor {s.name} is {e.dtype} {list(e.shape)}, "
                f"expected {s.st_dtype} {list(s.shape)}"
            )
    return config, weight_map


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, name -> tensor) in stored precision, after checking every name, dtype and shape."""
    from safetensors import SafetensorError, safe_open

    config, weight_map = validate_checkpoint(path)
    root = Path(path)
    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(name)
    out: dict[str, torch.Tensor] = {}
    for fname, names in sorted(by_file.items()):
        try:
            with safe_open(str(root / fname), framework="pt", device=str(torch.device(device))) as f:
                for name in names:
                    out[name] = f.get_tensor(name)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{root / fname}: cannot load: {e}") from e
    return config, out


SHIPPED_NAMES = {"tiny": "agentkit-tiny"}  # model-string name -> folder under weights/


def shipped_checkpoint(name: str) -> Path | None:
    """The package-data checkpoint for a name (`agentkit/runtime/weights/<folder>/`), if one ships.

    `embedded:tiny` means the shipped agentkit-tiny model, whose folder carries the full name.
    """
    d = Path(__file__).resolve().parent / "weights" / SHIPPED_NAMES.get(name, name)
    return d if (d / CONFIG_NAME).is_file() else None


def load_model(
    source: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    random_seed: int | None = None,
) -> Any:
    """A ready `V4Model` from a checkpoint directory or a preset name.

    A preset name loads its shipped checkpoint when the package has one; otherwise, only if `random_seed` is
    given, a model with random weights in the preset's storage format (benchmarks, tests). Nothing random
    is ever returned silently.
    """
    from .model import V4Model

    p = Path(source)
    if p.is_dir():
        return V4Model.from_checkpoint(str(p), dtype=dtype, device=device)
    name = str(source)
    shipped = shipped_checkpoint(name)
    if shipped is not None:
        return V4Model.from_checkpoint(str(shipped), dtype=dtype, device=device)
    try:
        config = ModelConfig.preset(name)
    except ConfigError:
        raise CheckpointError(f"{source!r} is neither a checkpoint directory nor a preset name") from None
    if random_seed is None:
        raise CheckpointError(f"no shipped weights for preset {name!r}; pass random_seed= for random weights")
    model = V4Model(config, dtype=dtype, device=device)
    if config.weight_format == "quantized":
        dev = torch.device(device or "cpu")
        model.load_weights(dict(random_tensors(config, random_seed, device=dev)))
    else:
        model.init_random_(random_seed)
    return model
