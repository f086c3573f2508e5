"""Reading V4 checkpoints: validated before any tensor data is read, loaded in stored precision.

Every stored name, dtype and shape is checked against `tensor_specs` of the checkpoint's own config first,
so a broken checkpoint fails with a `CheckpointError` that names the file and tensor instead of a shape error
deep in a forward pass. Loading keeps the stored precision (FP8 stays e4m3, experts stay packed bytes, scales
stay E8M0): the model decides when to dequantize (`agentkit.runtime.quant`). A ready model from a checkpoint
or a preset name is `agentkit.runtime.loader.load_model`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint_layout import CONFIG_NAME, INDEX_NAME, SINGLE_NAME, CheckpointError, few, tensor_specs
from .checkpoint_manifest import AUTO_VERIFY_BYTES, check_files, read_manifest
from .config import ConfigError, ModelConfig
from .safetensors_io import HeaderEntry, SafetensorsFormatError, read_header

__all__ = [
    "SHIPPED_NAMES",
    "load_checkpoint",
    "read_config",
    "shipped_checkpoint",
    "validate_checkpoint",
]


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
                + (f"; listed but not stored: {few(absent)}" if absent else "")
                + (f"; stored but not listed: {few(extra)}" if extra else "")
            )
        stored.update(entries)
    specs = tensor_specs(config)
    spec_names = {s.name for s in specs}
    unknown = sorted(set(stored) - spec_names)
    if unknown:
        raise CheckpointError(f"{root}: {len(unknown)} unknown tensors for this config: {few(unknown)}")
    missing = [s.name for s in specs if s.name not in stored]
    if missing:
        raise CheckpointError(f"{root}: {len(missing)} tensors missing: {few(missing)}")
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
    path: str | Path, *, device: str | torch.device = "cpu", verify: bool | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, name -> tensor) in stored precision, after checking every name, dtype and shape.

    With a `SHA256SUMS` manifest in the folder, each file is checked against it as it is read: always
    for `verify=True`, never for False, and by default when the checkpoint is small enough to hash
    cheaply (`AUTO_VERIFY_BYTES`: agentkit-tiny takes milliseconds; a 300 GB V4 would take minutes, so
    it is checked on request, or by `agentkit verify`). A mismatch is a CheckpointError naming the file.
    """
    from safetensors import SafetensorError, safe_open

    config, weight_map = validate_checkpoint(path)
    root = Path(path)
    by_file: dict[str, list[str]] = {}
    for name, fname in weight_map.items():
        by_file.setdefault(fname, []).append(name)
    manifest = read_manifest(root) if verify is not False else None
    if verify and manifest is None:
        raise CheckpointError(f"{root}: verify=True, but the folder has no SHA256SUMS to check against")
    if manifest and verify is None:
        size = sum((root / f).stat().st_size for f in by_file)
        manifest = manifest if size <= AUTO_VERIFY_BYTES else None
    if manifest:
        check_files(root, [n for n in (CONFIG_NAME, INDEX_NAME) if (root / n).is_file()], manifest)
    out: dict[str, torch.Tensor] = {}
    for fname, names in sorted(by_file.items()):
        if manifest:
            check_files(root, [fname], manifest)  # lazily, shard by shard, just before it is read
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
