"""A ready `V4Model` from what a user names: a checkpoint directory, a shipped model, or a preset.

Apart from the checkpoint reader so that the model can use the reader (`V4Model.from_checkpoint`) without
the reader depending on the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint_layout import CheckpointError
from .checkpoint_read import shipped_checkpoint
from .config import ConfigError, ModelConfig
from .model import V4Model
from .random_weights import random_tensors

__all__ = ["load_model"]


def load_model(
    source: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    random_seed: int | None = None,
) -> V4Model:
    """A ready `V4Model` from a checkpoint directory or a preset name.

    A preset name loads its shipped checkpoint when the package has one; otherwise, only if `random_seed` is
    given, a model with random weights in the preset's storage format (benchmarks, tests). Nothing random
    is ever returned silently.
    """
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
        # the layouts benchmarks load: a random checkpoint's values, generated on the target device
        dev = torch.device(device or "cpu")
        model.load_weights(dict(random_tensors(config, random_seed, device=dev)))
    else:
        model.init_random_(random_seed)
    return model
