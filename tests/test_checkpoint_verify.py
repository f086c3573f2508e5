"""Checkpoint integrity: the SHA-256 manifest (written by the writers, checked by the loader) and verify.

Damage is done for real, to the bytes on disk: one data byte flipped, a float turned into NaN, an FP8
weight into its NaN code, an E8M0 scale into NaN (byte 255) or far out of range. The manifest is also
checked by coreutils' own `sha256sum -c`, so it is the format users already know.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch
from agentkit.runtime.checkpoint import (
    MANIFEST_NAME,
    CheckpointError,
    load_checkpoint,
    read_manifest,
    save_random_checkpoint,
    shipped_checkpoint,
    verify_checkpoint,
)
from agentkit.runtime.config import ModelConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _quantized() -> ModelConfig:
    return ModelConfig.preset(
        "tiny-test", weight_format="quantized", dtype="fp8", expert_dtype="fp4", dim=192, moe_inter_dim=64
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_checkpoint(
        _quantized(), tmp_path_factory.mktemp("ck") / "q", seed=5, max_shard_bytes=200_000
    )


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _locate(root: Path, dtype: str) -> tuple[Path, str, int]:
    """(shard, tensor name, absolute byte offset of its data) of the first tensor stored as `dtype`."""
    for shard in sorted(root.glob("*.safetensors")):
        raw = shard.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        for name, e in sorted(header.items()):
            if name != "__metadata__" and e["dtype"] == dtype:
                return shard, name, 8 + n + e["data_offsets"][0]
    raise AssertionError(f"no {dtype} tensor")


def _poke(shard: Path, offset: int, data: bytes) -> None:
    with open(shard, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_writers_write_a_manifest_that_sha256sum_accepts(ckpt: Path) -> None:
    manifest = read_manifest(ckpt)
    assert manifest is not None
    shards = sorted(p.name for p in ckpt.glob("*.safetensors"))
    assert len(shards) > 1 and sorted(manifest) == sorted(
        ["config.json", "model.safetensors.index.json", *shards]
    )
    run = subprocess.run(["sha256sum", "-c", MANIFEST_NAME], cwd=ckpt, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    report = verify_checkpoint(ckpt)
    assert report.ok, report.problems
    assert any("FP8 weights" in line and "E8M0 scale" in line for line in report.lines)


def test_the_shipped_tiny_model_carries_a_manifest_and_verifies() -> None:
    root = shipped_checkpoint("tiny")
    assert root is not None
    manifest = read_manifest(root)
    assert manifest is not None and {"tokenizer.json", "model.safetensors.index.json"} <= set(manifest)
    assert verify_checkpoint(root).ok


def test_a_flipped_data_byte_is_caught_by_the_loader_and_by_verify(ckpt: Path, tmp_path: Path) -> None:
    root = _copy(ckpt, tmp_path / "flipped")
    shard, _, offset = _locate(root, "BF16")
    raw = shard.read_bytes()
    _poke(shard, offset + 1, bytes([raw[offset + 1] ^ 0x01]))  # a value still finite: only the hash sees it
    with pytest.raises(CheckpointError, match=rf"{shard.name}: SHA-256 differs from SHA256SUMS"):
        load_checkpoint(root)
    load_checkpoint(root, verify=False)  # the user's explicit opt-out still loads
    report = verify_checkpoint(root)
    assert not report.ok
    assert any(shard.name in p and "SHA-256 differs" in p for p in report.problems), report.problems
    with pytest.raises(CheckpointError, match="no SHA256SUMS"):
        (root / MANIFEST_NAME).unlink()
        load_checkpoint(root, verify=True)


@pytest.mark.parametrize(
    ("dtype", "data", "message"),
    [
        ("BF16", b"\xc0\x7f", "NaN or infinite"),
        ("F8_E4M3", b"\x7f", "NaN value(s) in FP8"),
        ("F8_E8M0", b"\xff", "NaN scale(s)"),
        ("F8_E8M0", b"\xf0", "outside 2^-100..2^32"),
    ],
)
def test_bad_values_are_named_without_a_manifest(
    ckpt: Path, tmp_path: Path, dtype: str, data: bytes, message: str
) -> None:
    root = _copy(ckpt, tmp_path / "bad")
    (root / MANIFEST_NAME).unlink()
    shard, name, offset = _locate(root, dtype)
    _poke(shard, offset, data)
    report = verify_checkpoint(root)
    assert any("manifest: none" in line for line in report.lines)
    assert [p for p in report.problems if name in p and message in p], report.problems


def test_structure_problems_are_reported_not_raised(ckpt: Path, tmp_path: Path) -> None:
    root = _copy(ckpt, tmp_path / "short")
    next(iter(sorted(root.glob("*.safetensors")))).unlink()
    report = verify_checkpoint(root)
    assert (
        not report.ok
        and report.problems[0].startswith("structure: ")
        and "missing shard" in report.problems[0]
    )
    assert torch.__version__  # torch stays importable after a failed verify (no global state touched)


def test_the_tiny_models_export_writes_a_manifest_with_its_tokenizer(tmp_path: Path) -> None:
    # agentkit-tiny's own export (agentkit.train.export.save_model) covers the tokenizer files too
    from agentkit.train.bpe import train_bpe
    from agentkit.train.export import save_model
    from agentkit.train.trainer import build_model, micro_config

    tok = train_bpe(["The answer is 42. I will use the calculator."] * 4, 280)
    model = build_model(micro_config(tok.vocab_size), 0, torch.device("cpu"))
    out = save_model(model, tok, tmp_path / "export", meta={"note": "test"})
    manifest = read_manifest(out)
    assert manifest is not None and {"tokenizer.json", "tokenizer_config.json", "config.json"} <= set(
        manifest
    )
    assert "training.json" not in manifest  # a record about the model, not part of it
    assert verify_checkpoint(out).ok
    load_checkpoint(out, verify=True)
