"""V4 checkpoint layout (census against spec §9.1), writer/loader round trips, typed errors on bad files."""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path

import pytest
import torch
from agentkit.runtime.checkpoint import (
    INDEX_NAME,
    CheckpointError,
    dtype_census,
    load_checkpoint,
    random_tensors,
    save_checkpoint,
    save_random_checkpoint,
    tensor_specs,
    validate_checkpoint,
)
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.quant import E8M0_DTYPE, FP8_DTYPE, dequant_fp4, dequant_fp8, quant_fp4, quant_fp8
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file


def small_quantized(**kw: object) -> ModelConfig:
    """Quantized like the real checkpoint, but tiny; dim 192 makes FP8 tiles ragged (128 + 64)."""
    base: dict[str, object] = {
        "weight_format": "quantized",
        "dtype": "fp8",
        "expert_dtype": "fp4",
        "dim": 192,
        "moe_inter_dim": 64,
    }
    return ModelConfig.preset("tiny-test", **{**base, **kw})


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


# ------------------------------------------------------------------------------------------------ census


def test_flash_census_matches_spec() -> None:
    specs = tensor_specs(ModelConfig.preset("flash"))
    # spec §9.1: 69,187 tensors, 159,609,485,896 bytes, 433 BF16 / 417 F32 / 375 F8_E4M3 / 34,167 F8_E8M0 /
    # 33,792 I8 / 3 I64
    assert len(specs) == 69187
    assert len({s.name for s in specs}) == 69187
    assert sum(s.nbytes for s in specs) == 159_609_485_896
    assert dtype_census(specs) == {
        "BF16": 433,
        "F32": 417,
        "F8_E4M3": 375,
        "F8_E8M0": 34167,
        "I8": 33792,
        "I64": 3,
    }


def test_pro_totals_match_spec() -> None:
    specs = tensor_specs(ModelConfig.preset("pro"))
    assert len(specs) == 145_116
    assert sum(s.nbytes for s in specs) == 864_704_792_696


FLASH_SHAPES = {  # spec §1.2 (logical [out, in]; FP4 experts stored [out, in/2])
    "embed.weight": [129280, 4096],
    "head.weight": [129280, 4096],
    "hc_head_fn": [4, 16384],
    "hc_head_base": [4],
    "hc_head_scale": [1],
    "layers.2.attn.wq_a.weight": [1024, 4096],
    "layers.2.attn.wq_a.scale": [8, 32],
    "layers.2.attn.wq_b.weight": [32768, 1024],
    "layers.2.attn.wkv.weight": [512, 4096],
    "layers.2.attn.wo_a.weight": [8192, 4096],
    "layers.2.attn.wo_b.weight": [4096, 8192],
    "layers.2.attn.attn_sink": [64],
    "layers.2.attn.compressor.wkv.weight": [1024, 4096],
    "layers.2.attn.compressor.wgate.weight": [1024, 4096],
    "layers.2.attn.compressor.ape": [4, 1024],
    "layers.2.attn.compressor.norm.weight": [512],
    "layers.3.attn.compressor.wkv.weight": [512, 4096],
    "layers.3.attn.compressor.ape": [128, 512],
    "layers.2.attn.indexer.wq_b.weight": [8192, 1024],
    "layers.2.attn.indexer.weights_proj.weight": [64, 4096],
    "layers.2.attn.indexer.compressor.wkv.weight": [256, 4096],
    "layers.2.attn.indexer.compressor.ape": [4, 256],
    "layers.2.attn.indexer.compressor.norm.weight": [128],
    "layers.2.hc_attn_fn": [24, 16384],
    "layers.2.hc_ffn_base": [24],
    "layers.2.hc_ffn_scale": [3],
    "layers.2.ffn.gate.weight": [256, 4096],
    "layers.3.ffn.gate.bias": [256],
    "layers.0.ffn.gate.tid2eid": [129280, 6],
    "layers.5.ffn.experts.255.w1.weight": [2048, 2048],
    "layers.5.ffn.experts.255.w1.scale": [2048, 128],
    "layers.5.ffn.experts.0.w2.weight": [4096, 1024],
    "layers.5.ffn.experts.0.w2.scale": [4096, 64],
    "layers.5.ffn.shared_experts.w2.weight": [4096, 2048],
    "layers.5.ffn.shared_experts.w2.scale": [32, 16],
    "mtp.0.e_proj.weight": [4096, 4096],
    "mtp.0.h_proj.scale": [32, 32],
    "mtp.0.hc_head_fn": [4, 16384],
    "mtp.0.ffn.gate.bias": [256],
    "mtp.0.ffn.experts.255.w3.weight": [2048, 2048],
}


def test_flash_shapes_and_layer_types() -> None:
    by = {s.name: s for s in tensor_specs(ModelConfig.preset("flash"))}
    for name, shape in FLASH_SHAPES.items():
        assert list(by[name].shape) == shape, name
    # layers 0-1 and the MTP block are SWA-only: no compressor; HCA layers have no indexer
    for name in ("layers.0.attn.compressor.ape", "layers.1.attn.compressor.ape", "mtp.0.attn.compressor.ape"):
        assert name not in by
    assert "layers.3.attn.indexer.wq_b.weight" not in by
    # hash routing only in layers 0..2; no embed/head copies in the MTP block
    assert [n for n in by if n.endswith("tid2eid")] == [f"layers.{i}.ffn.gate.tid2eid" for i in range(3)]
    assert not [n for n in by if n.startswith("mtp.") and ("embed" in n or n.endswith("head.weight"))]
    assert not [n for n in by if n.startswith("model.")]
    assert by["layers.2.attn.wo_a.weight"].dtype == FP8_DTYPE
    assert by["layers.2.attn.compressor.wkv.weight"].dtype == torch.bfloat16
    assert by["layers.5.ffn.experts.0.w2.scale"].dtype == E8M0_DTYPE


def test_pro_shapes() -> None:
    by = {s.name: s for s in tensor_specs(ModelConfig.preset("pro"))}
    assert list(by["layers.2.attn.wq_b.weight"].shape) == [65536, 1536]
    assert list(by["layers.2.attn.wo_a.weight"].shape) == [16384, 4096]
    assert list(by["layers.2.attn.wo_b.weight"].shape) == [7168, 16384]
    assert list(by["layers.0.hc_attn_fn"].shape) == [24, 28672]
    assert list(by["layers.0.attn.compressor.ape"].shape) == [128, 512]  # Pro layer 0 is HCA
    assert list(by["mtp.0.ffn.experts.383.w2.weight"].shape) == [7168, 1536]


def test_float_format_has_no_quantized_tensors() -> None:
    c = ModelConfig.preset("tiny-test")
    specs = tensor_specs(c)
    assert set(dtype_census(specs)) == {"BF16", "F32", "I64"}
    by = {s.name: s for s in specs}
    assert by["layers.1.ffn.experts.0.w2.weight"].shape == (c.dim, c.moe_inter_dim)
    assert not any(n.endswith(".scale") for n in by)


def test_fp4_needs_divisible_dims() -> None:
    with pytest.raises(CheckpointError, match="divisible by 64"):
        tensor_specs(small_quantized(moe_inter_dim=32))


# ------------------------------------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ck") / "random"
    save_random_checkpoint(small_quantized(), path, seed=7, max_shard_bytes=300_000)
    return path


def test_random_checkpoint_round_trip(random_ckpt: Path) -> None:
    config, tensors = load_checkpoint(random_ckpt)
    assert config == small_quantized()
    want = dict(random_tensors(config, seed=7))
    assert set(tensors) == set(want) == {s.name for s in tensor_specs(config)}
    for name, t in want.items():
        assert tensors[name].dtype == t.dtype, name
        assert torch.equal(as_bytes(tensors[name]), as_bytes(t)), name
    assert set(dtype_census(tensor_specs(config))) == {"BF16", "F32", "F8_E4M3", "F8_E8M0", "I8", "I64"}


def test_writer_output_reads_with_official_safetensors(random_ckpt: Path) -> None:
    _, tensors = load_checkpoint(random_ckpt)
    index = json.loads((random_ckpt / INDEX_NAME).read_text())
    seen: set[str] = set()
    for fname in sorted(set(index["weight_map"].values())):
        for name, t in load_file(str(random_ckpt / fname)).items():
            assert index["weight_map"][name] == fname
            assert torch.equal(as_bytes(t), as_bytes(tensors[name]))
            seen.add(name)
    assert seen == set(tensors)


def test_sharding_and_index(random_ckpt: Path) -> None:
    index = json.loads((random_ckpt / INDEX_NAME).read_text())
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 2
    assert files == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    specs = {s.name: s for s in tensor_specs(small_quantized())}
    assert index["metadata"]["total_size"] == sum(s.nbytes for s in specs.values())
    for f in files:
        size = sum(specs[k].nbytes for k, v in index["weight_map"].items() if v == f)
        largest = max(specs[k].nbytes for k, v in index["weight_map"].items() if v == f)
        assert size <= max(300_000, largest)
    hf = json.loads((random_ckpt / "config.json").read_text())
    assert hf["hidden_size"] == 192 and hf["quantization_config"]["weight_block_size"] == [128, 128]


def test_random_weights_have_forward_scale(random_ckpt: Path) -> None:
    _, t = load_checkpoint(random_ckpt)
    for prefix, fan_in in (("layers.1.attn.wq_a", 192), ("layers.1.ffn.shared_experts.w2", 64)):
        w = dequant_fp8(t[prefix + ".weight"], t[prefix + ".scale"], dtype=torch.float32)
        assert 0.7 < float(w.std()) * fan_in**0.5 < 1.3
    for prefix, fan_in in (("layers.2.ffn.experts.3.w1", 192), ("mtp.0.ffn.experts.0.w2", 64)):
        w = dequant_fp4(t[prefix + ".weight"], t[prefix + ".scale"], dtype=torch.float32)
        assert 0.6 < float(w.std()) * fan_in**0.5 < 1.6
    tid = t["layers.0.ffn.gate.tid2eid"]
    assert tid.min() >= 0 and tid.max() < 8
    assert all(len(set(r)) == len(r) for r in tid.tolist())  # distinct experts per token


def test_random_is_deterministic_per_tensor(tmp_path: Path) -> None:
    c = ModelConfig.preset("tiny-test")
    save_random_checkpoint(c, tmp_path / "a", seed=3)  # one shard
    save_random_checkpoint(c, tmp_path / "b", seed=3, max_shard_bytes=50_000)  # many shards
    save_random_checkpoint(c, tmp_path / "c", seed=4)
    _, a = load_checkpoint(tmp_path / "a")
    _, b = load_checkpoint(tmp_path / "b")
    _, d = load_checkpoint(tmp_path / "c")
    assert len({v for v in json.loads((tmp_path / "b" / INDEX_NAME).read_text())["weight_map"].values()}) > 3
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.weight"], d["embed.weight"])


def test_save_checkpoint_every_dtype_round_trip(tmp_path: Path) -> None:
    config = small_quantized()
    stored = dict(random_tensors(config, seed=1))
    save_checkpoint(config, stored, tmp_path / "ck", max_shard_bytes=200_000)
    config2, loaded = load_checkpoint(tmp_path / "ck")
    assert config2 == config
    for k, v in stored.items():
        assert loaded[k].dtype == v.dtype and torch.equal(as_bytes(loaded[k]), as_bytes(v)), k


def test_save_checkpoint_quantizes_and_casts_floats(tmp_path: Path) -> None:
    config = small_quantized()
    g = torch.Generator().manual_seed(0)
    tensors: dict[str, torch.Tensor] = {}
    for s in tensor_specs(config):
        if s.kind == "scale":
            continue  # derived from the float weight
        if s.kind == "tid2eid":
            tensors[s.name] = torch.randint(0, 8, s.shape, generator=g, dtype=torch.int32)
        else:
            shape = (s.shape[0], s.shape[1] * 2) if s.dtype == torch.int8 else s.shape
            tensors[s.name] = torch.randn(shape, generator=g)  # fp32 everywhere
    save_checkpoint(config, tensors, tmp_path / "ck")
    _, loaded = load_checkpoint(tmp_path / "ck")
    q8, s8 = quant_fp8(tensors["layers.1.attn.wq_b.weight"])
    assert torch.equal(as_bytes(loaded["layers.1.attn.wq_b.weight"]), as_bytes(q8))
    assert torch.equal(as_bytes(loaded["layers.1.attn.wq_b.scale"]), as_bytes(s8))
    q4, s4 = quant_fp4(tensors["layers.1.ffn.experts.2.w2.weight"])
    assert torch.equal(loaded["layers.1.ffn.experts.2.w2.weight"], q4)
    assert torch.equal(as_bytes(loaded["layers.1.ffn.experts.2.w2.scale"]), as_bytes(s4))
    norm = loaded["layers.0.attn_norm.weight"]
    assert norm.dtype == torch.bfloat16
    assert torch.equal(norm, tensors["layers.0.attn_norm.weight"].to(torch.bfloat16))
    assert loaded["layers.0.ffn.gate.tid2eid"].dtype == torch.int64
    assert torch.equal(loaded["layers.0.ffn.gate.tid2eid"], tensors["layers.0.ffn.gate.tid2eid"].long())
    assert loaded["hc_head_fn"].dtype == torch.float32


def test_float_config_round_trip(tmp_path: Path) -> None:
    c = ModelConfig.preset("tiny-test")
    save_random_checkpoint(c, tmp_path / "f", seed=0)
    c2, t = load_checkpoint(tmp_path / "f")
    assert c2 == c and c2.weight_format == "float"
    assert t["layers.1.ffn.experts.0.w1.weight"].dtype == torch.bfloat16


@pytest.mark.gpu
def test_load_to_cuda(random_ckpt: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    _, t = load_checkpoint(random_ckpt, device="cuda")
    w = t["layers.1.attn.wq_a.weight"]
    assert w.is_cuda and w.dtype == FP8_DTYPE
    _, cpu = load_checkpoint(random_ckpt)
    assert all(torch.equal(as_bytes(t[k].cpu()), as_bytes(v)) for k, v in cpu.items())


@pytest.mark.gpu
def test_random_checkpoint_generated_on_cuda(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no GPU")
    config = small_quantized()
    save_random_checkpoint(config, tmp_path / "g", seed=2, device="cuda")
    _, t = load_checkpoint(tmp_path / "g")
    w = dequant_fp8(t["layers.1.attn.wq_a.weight"], t["layers.1.attn.wq_a.scale"], dtype=torch.float32)
    assert 0.7 < float(w.std()) * 192**0.5 < 1.3


# ------------------------------------------------------------------------------------------------ errors


def test_save_checkpoint_rejects_bad_input(tmp_path: Path) -> None:
    config = small_quantized()
    stored = dict(random_tensors(config, seed=1))
    bad = {**stored, "layers.0.attn.extra": torch.zeros(2)}
    with pytest.raises(CheckpointError, match=r"not part of this config's layout: layers.0.attn.extra"):
        save_checkpoint(config, bad, tmp_path / "x")
    missing = {k: v for k, v in stored.items() if k != "norm.weight"}
    with pytest.raises(CheckpointError, match=r"1 tensors missing: norm.weight"):
        save_checkpoint(config, missing, tmp_path / "x")
    wrong = {**stored, "layers.1.attn.wq_a.weight": torch.zeros(5, 5)}
    with pytest.raises(CheckpointError, match=r"layers.1.attn.wq_a.weight: got torch.float32 \(5, 5\)"):
        save_checkpoint(config, wrong, tmp_path / "x")
    nan = {**stored, "norm.weight": torch.full((192,), float("nan"))}
    with pytest.raises(CheckpointError, match=r"norm.weight: contains NaN"):
        save_checkpoint(config, nan, tmp_path / "x")
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def copy_ckpt(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def shard_of(path: Path, name: str) -> Path:
    return path / json.loads((path / INDEX_NAME).read_text())["weight_map"][name]


def test_missing_shard(random_ckpt: Path, tmp_path: Path) -> None:
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    shard = shard_of(p, "norm.weight")
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"missing shard {shard.name}"):
        load_checkpoint(p)


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_shard(random_ckpt: Path, tmp_path: Path, keep: int) -> None:
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    shard = shard_of(p, "layers.1.attn.wq_a.weight")
    data = shard.read_bytes()
    shard.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(p)


def test_corrupt_header(random_ckpt: Path, tmp_path: Path) -> None:
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    shard = shard_of(p, "embed.weight")
    data = bytearray(shard.read_bytes())
    data[8:12] = b"\xff\xfe{]"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        load_checkpoint(p)


def rewrite_shard(p: Path, name: str, change: dict[str, torch.Tensor | None]) -> Path:
    shard = shard_of(p, name)
    tensors = load_file(str(shard))
    for k, v in change.items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    save_file(tensors, str(shard))
    return shard


def test_wrong_dtype_and_shape(random_ckpt: Path, tmp_path: Path) -> None:
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    rewrite_shard(p, "layers.1.attn.wq_a.weight", {"layers.1.attn.wq_a.weight": torch.zeros(32, 192)})
    with pytest.raises(
        CheckpointError, match=r"layers.1.attn.wq_a.weight is F32 \[32, 192\], expected F8_E4M3"
    ):
        load_checkpoint(p)
    p2 = copy_ckpt(random_ckpt, tmp_path / "d")
    rewrite_shard(p2, "norm.weight", {"norm.weight": torch.ones(191, dtype=torch.bfloat16)})
    with pytest.raises(CheckpointError, match=r"norm.weight is BF16 \[191\], expected BF16 \[192\]"):
        load_checkpoint(p2)


def test_unknown_and_missing_tensors(random_ckpt: Path, tmp_path: Path) -> None:
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    shard = rewrite_shard(p, "norm.weight", {"layers.0.attn.bogus": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"stored but not listed: layers.0.attn.bogus"):
        load_checkpoint(p)
    index = json.loads((p / INDEX_NAME).read_text())
    index["weight_map"]["layers.0.attn.bogus"] = shard.name
    (p / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 unknown tensors for this config: layers.0.attn.bogus"):
        load_checkpoint(p)

    p2 = copy_ckpt(random_ckpt, tmp_path / "d")
    rewrite_shard(p2, "norm.weight", {"norm.weight": None})
    with pytest.raises(CheckpointError, match=r"listed but not stored: norm.weight"):
        load_checkpoint(p2)
    index = json.loads((p2 / INDEX_NAME).read_text())
    del index["weight_map"]["norm.weight"]
    (p2 / INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"1 tensors missing: norm.weight"):
        load_checkpoint(p2)


def test_missing_files(random_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    p = copy_ckpt(random_ckpt, tmp_path / "c")
    (p / INDEX_NAME).unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors.index.json or model.safetensors"):
        load_checkpoint(p)
    p2 = copy_ckpt(random_ckpt, tmp_path / "d")
    (p2 / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config file not found"):
        load_checkpoint(p2)
    p3 = copy_ckpt(random_ckpt, tmp_path / "e")
    (p3 / INDEX_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid safetensors index"):
        validate_checkpoint(p3)


def test_single_file_checkpoint(tmp_path: Path) -> None:
    c = ModelConfig.preset("tiny-test")
    save_random_checkpoint(c, tmp_path / "s", seed=0)
    p = tmp_path / "s"
    (p / "model-00001-of-00001.safetensors").rename(p / "model.safetensors")
    (p / INDEX_NAME).unlink()
    c2, t = load_checkpoint(p)
    assert c2 == c and len(t) == len(tensor_specs(c))


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "ck"
    save_random_checkpoint(ModelConfig.preset("tiny-test"), path, seed=0)
    return path


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_header_bytes_give_checkpoint_error(
    tiny_single: Path, tmp_path: Path, data: st.DataObject
) -> None:
    """Whatever bytes of a shard's header are overwritten, loading either works or raises CheckpointError."""
    shard_name = "model-00001-of-00001.safetensors"
    raw = bytearray((tiny_single / shard_name).read_bytes())
    header_len = 8 + int.from_bytes(raw[:8], "little")
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, header_len - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    for f in ("config.json", INDEX_NAME):
        (d / f).write_bytes((tiny_single / f).read_bytes())
    (d / shard_name).write_bytes(bytes(raw))
    with contextlib.suppress(CheckpointError):
        load_checkpoint(d)
