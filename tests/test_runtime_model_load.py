"""A checkpoint in the real V4 layout (written by agentkit.runtime.checkpoint) loads into V4Model by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from agentkit.runtime.checkpoint import load_checkpoint, save_checkpoint, save_random_checkpoint
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import ModelInputError, V4Model


def test_random_quantized_checkpoint_loads_and_runs(tmp_path: Path) -> None:
    cfg = ModelConfig.preset(
        "tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4", moe_inter_dim=64
    )
    save_random_checkpoint(cfg, tmp_path / "ck", seed=3)
    model = V4Model.from_checkpoint(str(tmp_path / "ck"))
    assert model.config == cfg
    _, tensors = load_checkpoint(tmp_path / "ck")
    sd = model.state_dict()
    for name, t in tensors.items():  # stored precision kept bit for bit (FP8, packed FP4, E8M0 scales)
        assert sd[name].dtype == t.dtype, name
        assert (
            torch.equal(sd[name].view(torch.uint8), t.view(torch.uint8))
            if t.element_size() == 1
            else torch.equal(sd[name], t)
        ), name
    out = model.extend(model.new_state(), torch.arange(20))
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()


def test_trained_float_model_round_trips_through_checkpoint(tmp_path: Path) -> None:
    cfg = ModelConfig.preset("tiny-test")
    model = V4Model(cfg).init_random_(4)
    save_checkpoint(cfg, model.state_dict(), tmp_path / "ck")
    back = V4Model.from_checkpoint(str(tmp_path / "ck"))
    assert back.config == cfg
    ours, theirs = model.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name, t in ours.items():
        if t.dtype.is_floating_point:  # float weights are stored as bf16 or fp32, like the real checkpoint
            assert ((t - theirs[name]).abs() <= t.abs() * 2**-8).all(), name
        else:
            assert torch.equal(t, theirs[name]), name
    out = back.extend(back.new_state(), torch.arange(150) % cfg.vocab_size)
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()
    with pytest.raises(ModelInputError, match="missing"):
        back.load_weights({k: v for k, v in model.state_dict().items() if k != "head.weight"})
