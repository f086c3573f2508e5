"""Writing V4 checkpoints: a trained model's tensors, or random weights, in the real safetensors layout.

Shards and the safetensors headers are planned from `tensor_specs` before a single weight exists, and
tensors are produced and written one at a time, so a random multi-GB checkpoint is never held whole. A
trained model's tensors are validated against the layout before anything is written (a bad tensor must not
leave half a checkpoint behind) and quantized here where the layout stores FP8/FP4.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint_layout import (
    CONFIG_NAME,
    INDEX_NAME,
    CheckpointError,
    TensorSpec,
    few,
    stored_specs,
    tensor_specs,
)
from .checkpoint_manifest import write_manifest
from .config import ModelConfig
from .quant import E8M0_DTYPE, FP8_DTYPE, quant_fp4, quant_fp8
from .random_weights import random_tensors
from .safetensors_io import SafetensorsFormatError, write_streaming

__all__ = ["DEFAULT_MAX_SHARD_BYTES", "config_json", "save_checkpoint", "save_random_checkpoint"]

DEFAULT_MAX_SHARD_BYTES = 4 << 30


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
    write_manifest(out)  # SHA256SUMS: the loader and `agentkit verify` check the files against it
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
    specs = stored_specs(config, float_dtype)
    by_name = {s.name: s for s in specs}
    unknown = sorted(set(tensors) - set(by_name))
    if unknown:
        raise CheckpointError(f"{len(unknown)} tensors are not part of this config's layout: {few(unknown)}")
    missing = [s.name for s in specs if s.name not in tensors and not _derived_scale(s, tensors)]
    if missing:
        raise CheckpointError(f"{len(missing)} tensors missing: {few(missing)}")
    for s in specs:  # validate everything up front: a bad tensor must not leave half a checkpoint behind
        if s.name in tensors:
            _check_source(s, tensors[s.name])
    return _write_checkpoint(config, specs, _stored_tensors(specs, tensors), path, max_shard_bytes)


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
