"""The DeepSeek-V4 checkpoint (spec §9.1): the names the rest of the code imports, from seven modules.

- `checkpoint_layout`: `tensor_specs(config)`, the one list of V4 tensor names, shapes, dtypes and kinds;
- `checkpoint_read`: validation against that layout before any data is read, loading in stored precision,
  the shipped checkpoints;
- `loader`: `load_model`, a ready model from a checkpoint directory, a shipped name or a preset;
- `checkpoint_manifest`: the SHA-256 manifest (`SHA256SUMS`) the writers write and the loader checks;
- `checkpoint_verify`: `verify_checkpoint`, every check there is (`agentkit verify`);
- `checkpoint_write`: saving a trained model's tensors, or random weights, in the real safetensors layout;
- `random_weights`: `random_tensors`, the one random-weight generator (random checkpoints and
  `V4Model.init_random_` both use it).
"""

from __future__ import annotations

from .checkpoint_layout import (
    CONFIG_NAME,
    INDEX_NAME,
    SINGLE_NAME,
    CheckpointError,
    TensorKind,
    TensorSpec,
    dtype_census,
    tensor_specs,
)
from .checkpoint_manifest import MANIFEST_NAME, read_manifest, write_manifest
from .checkpoint_read import (
    SHIPPED_NAMES,
    load_checkpoint,
    read_config,
    shipped_checkpoint,
    validate_checkpoint,
)
from .checkpoint_verify import VerifyReport, verify_checkpoint
from .checkpoint_write import DEFAULT_MAX_SHARD_BYTES, config_json, save_checkpoint, save_random_checkpoint
from .loader import load_model
from .random_weights import random_tensors

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_MAX_SHARD_BYTES",
    "INDEX_NAME",
    "MANIFEST_NAME",
    "SHIPPED_NAMES",
    "SINGLE_NAME",
    "CheckpointError",
    "TensorKind",
    "TensorSpec",
    "VerifyReport",
    "config_json",
    "dtype_census",
    "load_checkpoint",
    "load_model",
    "random_tensors",
    "read_config",
    "read_manifest",
    "save_checkpoint",
    "save_random_checkpoint",
    "shipped_checkpoint",
    "tensor_specs",
    "validate_checkpoint",
    "verify_checkpoint",
    "write_manifest",
]
