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
from .parallel import Parallel, holds, local_tensor_reader, shard_tensors
from .random_weights import random_tensors

__all__ = ["load_model"]


def load_model(
    source: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    random_seed: int | None = None,
    parallel: Parallel | None = None,
) -> V4Model:
    """A ready `V4Model` from a checkpoint directory or a preset name.

    A preset name loads its shipped checkpoint when the package has one; otherwise, only if `random_seed` is
    given, a model with random weights in the preset's storage format (benchmarks, tests). Nothing random
    is ever returned silently. With `parallel` the model is this rank's part of a tensor + expert parallel
    group (runtime/parallel.py), and a checkpoint is read only for this rank's slices.
    """
    p = Path(source)
    name = str(source)
    root = p if p.is_dir() else shipped_checkpoint(name)
    if root is not None:
        if parallel is None:
            return V4Model.from_checkpoint(str(root), dtype=dtype, device=device)
        config, tensors = local_tensor_reader(root, parallel)  # validated now, read as loaded
        model = V4Model(config, dtype=dtype, device=device, parallel=parallel)
        model.load_weights(tensors)
        return model
    try:
        config = ModelConfig.preset(name)
    except ConfigError:
        raise CheckpointError(f"{source!r} is neither a checkpoint directory nor a preset name") from None
    if random_seed is None:
        raise CheckpointError(f"no shipped weights for preset {name!r}; pass random_seed= for random weights")
    model = V4Model(config, dtype=dtype, device=device, parallel=parallel)
    if config.weight_format == "quantized":
        # the layouts benchmarks load: a random checkpoint's values, generated on the target device
        dev = torch.device(device or "cpu")
        if parallel is None:
            drawn = random_tensors(config, random_seed, device=dev)
        else:  # only what this rank holds is drawn (other ranks' experts never exist here)
            keep = holds(config, parallel)
            drawn = shard_tensors(
                config, random_tensors(config, random_seed, device=dev, keep=keep), parallel
            )
        model.load_weights(dict(drawn))
    else:
        model.init_random_(random_seed)
    return model
