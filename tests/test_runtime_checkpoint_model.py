"""The checkpoint layout and V4Model agree on names, shapes and dtypes; weights survive a save."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from agentkit.runtime.checkpoint import (
    CheckpointError,
    dtype_census,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_random_checkpoint,
    tensor_specs,
)
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model


def small_quantized() -> ModelConfig:
    return ModelConfig.preset(
        "tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4", dim=192, moe_inter_dim=64
    )


def assert_layout_matches(model: V4Model, config: ModelConfig, *, dtypes: bool) -> None:
    sd = model.state_dict()
    specs = {s.name: s for s in tensor_specs(config)}
    assert set(sd) == set(specs)
    for name, s in specs.items():
        assert tuple(sd[name].shape) == s.shape, name
        if dtypes:
            assert sd[name].dtype == s.dtype, name


def test_flash_model_parameters_are_the_checkpoint_layout() -> None:
    """The real Flash layout (built on the meta device: no memory) is exactly what the model declares."""
    config = ModelConfig.preset("flash")
    assert_layout_matches(V4Model(config, device="meta"), config, dtypes=True)


@pytest.mark.parametrize("preset", ["tiny-test", "tiny"])
def test_small_model_parameters_are_the_checkpoint_layout(preset: str) -> None:
    config = ModelConfig.preset(preset)
    assert_layout_matches(V4Model(config, device="meta"), config, dtypes=False)
    q = small_quantized()
    assert_layout_matches(V4Model(q, device="meta"), q, dtypes=True)


def test_random_quantized_checkpoint_runs_a_forward(tmp_path: Path) -> None:
    config = small_quantized()
    save_random_checkpoint(config, tmp_path / "ck", seed=0)
    model = V4Model.from_checkpoint(str(tmp_path / "ck"))
    logits = model.extend(model.new_state(), list(range(1, 40)))
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (39, config.vocab_size) and bool(torch.isfinite(logits).all())
    # random weights of the right scale: logits neither vanish nor explode
    assert 0.05 < float(logits.std()) < 20.0
    # stored precision survives the load into the model (no upcast)
    w = model.state_dict()["layers.1.ffn.experts.0.w1.weight"]
    assert w.dtype == torch.int8


def test_trained_float_model_round_trip_fp32_exact(tmp_path: Path) -> None:
    config = ModelConfig.preset("tiny-test")
    model = V4Model(config).init_random_(3)
    save_checkpoint(config, model.state_dict(), tmp_path / "fp32", float_dtype=torch.float32)
    _, tensors = load_checkpoint(tmp_path / "fp32")
    assert tensors["layers.0.attn.wq_a.weight"].dtype == torch.float32
    again = V4Model.from_checkpoint(str(tmp_path / "fp32"))
    ids = [5, 17, 99, 3, 250, 7, 7, 1]
    a = model.extend(model.new_state(), ids)
    b = again.extend(again.new_state(), ids)
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert torch.equal(a, b)


def test_trained_float_model_bf16_checkpoint(tmp_path: Path) -> None:
    config = ModelConfig.preset("tiny-test")
    model = V4Model(config).init_random_(4)
    save_checkpoint(config, model.state_dict(), tmp_path / "bf16")
    assert set(dtype_census(tensor_specs(config))) == {"BF16", "F32", "I64"}
    _, tensors = load_checkpoint(tmp_path / "bf16")
    assert tensors["layers.0.attn.wq_a.weight"].dtype == torch.bfloat16
    again = V4Model.from_checkpoint(str(tmp_path / "bf16"))
    for name, t in again.state_dict().items():
        want = model.state_dict()[name]
        if want.dtype == torch.float32 and tensor_specs_dtype(config, name) == torch.bfloat16:
            want = want.to(torch.bfloat16).float()
        assert torch.equal(t, want), name


def tensor_specs_dtype(config: ModelConfig, name: str) -> torch.dtype:
    return next(s.dtype for s in tensor_specs(config) if s.name == name)


def test_fp32_storage_only_for_float_configs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="needs a float-format config"):
        save_checkpoint(small_quantized(), {}, tmp_path / "x", float_dtype=torch.float32)


def test_quantized_model_state_saves_as_is(tmp_path: Path) -> None:
    """A quantized model's own buffers (e4m3, packed FP4, E8M0) are already the stored format."""
    config = small_quantized()
    save_random_checkpoint(config, tmp_path / "a", seed=1)
    model = V4Model.from_checkpoint(str(tmp_path / "a"))
    save_checkpoint(config, model.state_dict(), tmp_path / "b")
    _, a = load_checkpoint(tmp_path / "a")
    _, b = load_checkpoint(tmp_path / "b")
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8)), k


def test_load_model_sources(tmp_path: Path) -> None:
    save_random_checkpoint(ModelConfig.preset("tiny-test"), tmp_path / "ck", seed=0)
    m = load_model(tmp_path / "ck")
    assert isinstance(m, V4Model) and m.config == ModelConfig.preset("tiny-test")
    r = load_model("tiny-test", random_seed=1)
    assert isinstance(r, V4Model)
    with pytest.raises(CheckpointError, match="pass random_seed"):
        load_model("flash-reduced")
    with pytest.raises(CheckpointError, match="neither a checkpoint directory nor a preset"):
        load_model(tmp_path / "nothing-here")
