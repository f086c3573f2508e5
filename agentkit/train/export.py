"""Write a trained model as a V4 checkpoint directory (weights, config, tokenizer) and read it back.

The directory is the same shape as a published V4 checkpoint: safetensors shards + index + HF
`config.json` written by the runtime's `save_checkpoint`, and `tokenizer.json` +
`tokenizer_config.json` next to them, so the runtime loads the tiny model and a real V4 the same way;
a `SHA256SUMS` manifest of all of them lets the loader and `agentkit verify` catch a changed byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from agentkit.runtime.checkpoint import load_checkpoint, save_checkpoint
from agentkit.runtime.checkpoint_manifest import write_manifest
from agentkit.runtime.model import V4Model
from agentkit.train.bpe import BPETokenizer


def save_model(
    model: V4Model,
    tokenizer: BPETokenizer,
    out_dir: str | Path,
    *,
    meta: dict[str, Any] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Checkpoint + tokenizer (+ `training.json` with whatever `meta` holds) into `out_dir`."""
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.vocab_size} rows"
        )
    out = Path(out_dir)
    tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if max_shard_bytes is None:
        save_checkpoint(model.config, tensors, out)
    else:
        save_checkpoint(model.config, tensors, out, max_shard_bytes=max_shard_bytes)
    tokenizer.save(out)
    write_manifest(out)  # again, now with the tokenizer files: SHA256SUMS covers what the model is made of
    if meta is not None:
        (out / "training.json").write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
    return out


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[V4Model, BPETokenizer]:
    """The model (fp32 compute, weights as stored) and its tokenizer from a directory `save_model` wrote."""
    config, tensors = load_checkpoint(path, device=device)
    model = V4Model(config, dtype=torch.float32, device=device)
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model, BPETokenizer.load(Path(path) / "tokenizer.json")
