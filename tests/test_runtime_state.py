"""SequenceState: snapshots, byte format (survives a new process), corruption handling, KV accounting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.model import V4Model
from agentkit.runtime.state import (
    SequenceState,
    StateError,
    StateFormatError,
    fixed_state_bytes,
    kv_bytes_per_token,
)


def _model(seed: int = 0) -> V4Model:
    return V4Model(ModelConfig.preset("tiny-test", compress_ratios=(4, 128, 0, 4, 0))).init_random_(seed)


def test_snapshot_is_independent_and_restore_replays_exactly() -> None:
    m = _model()
    g = torch.Generator().manual_seed(0)
    prefix, a, b = (torch.randint(0, 256, (n,), generator=g) for n in (203, 37, 11))
    st = m.new_state()
    m.extend(st, prefix)
    snap = st.snapshot()
    out_a = m.extend(st, a)
    assert st.pos == 240 and snap.pos == 203
    st.restore(snap)
    assert torch.equal(m.extend(st, a), out_a)  # type: ignore[arg-type]
    st.restore(snap)  # the snapshot stays reusable
    out_b = m.extend(st, b)
    fresh = m.new_state()
    ref = m.extend(fresh, torch.cat((prefix, b)))
    assert isinstance(ref, torch.Tensor) and isinstance(out_b, torch.Tensor)
    assert (out_b - ref[203:]).abs().max() <= 1e-4 * ref.abs().max()
    other = V4Model(ModelConfig.preset("tiny-test")).new_state()
    with pytest.raises(StateError):
        other.restore(snap)


_CHILD = textwrap.dedent(
    """
    import sys, torch
    torch.set_num_threads(1)
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.model import V4Model
    from agentkit.runtime.state import SequenceState
    d = sys.argv[1]
    cfg = ModelConfig.model_validate_json(open(d + "/config.json").read())
    m = V4Model(cfg)
    m.load_state_dict(torch.load(d + "/weights.pt"))
    st = SequenceState.from_bytes(open(d + "/state.bin", "rb").read())
    nxt = torch.load(d + "/next.pt")
    torch.save({"logits": m.extend(st, nxt), "pos": st.pos}, d + "/out.pt")
    """
)


def test_state_survives_a_new_process(tmp_path: Path) -> None:
    m = _model(1)
    g = torch.Generator().manual_seed(1)
    prefix, nxt = torch.randint(0, 256, (261,), generator=g), torch.randint(0, 256, (9,), generator=g)
    st = m.new_state()
    m.extend(st, prefix)
    (tmp_path / "config.json").write_text(m.config.model_dump_json())
    torch.save(m.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "state.bin").write_bytes(st.to_bytes())
    torch.save(nxt, tmp_path / "next.pt")
    expected = m.extend(st, nxt)
    subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path)], check=True, timeout=300)
    got = torch.load(tmp_path / "out.pt")
    assert got["pos"] == 270
    assert torch.equal(got["logits"], expected)


def test_round_trip_preserves_every_tensor_and_meta() -> None:
    m = _model(2)
    st = m.new_state()
    m.extend(st, torch.arange(150) % 256)
    st.meta["session"] = "abc"
    back = SequenceState.from_bytes(st.to_bytes())
    assert back.pos == st.pos and back.meta == {"session": "abc"} and back.config_key == st.config_key
    for la, lb in zip(st.snapshot().layers, back.layers, strict=True):
        ta, tb = la.tensors(), lb.tensors()
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), k
    assert back.nbytes() == st.nbytes()


def test_corrupt_truncated_or_foreign_blobs_raise_typed_errors() -> None:
    m = _model(3)
    st = m.new_state()
    m.extend(st, torch.arange(40))
    blob = st.to_bytes()
    flipped = bytearray(blob)
    flipped[-100] ^= 0x40  # inside the tensor data
    cases = [bytes(flipped), blob[: len(blob) // 2], blob[:5], b"", b"\x00" * 64, b"garbage" * 20]
    for bad in cases:
        with pytest.raises(StateFormatError):
            SequenceState.from_bytes(bad)
    from safetensors.torch import save

    with pytest.raises(StateFormatError, match="not a sequence state"):
        SequenceState.from_bytes(save({"x": torch.zeros(2)}, metadata={"format": "other"}))
    assert SequenceState.from_bytes(blob).pos == 40  # the intact blob still loads


def test_kv_bytes_per_token_match_spec() -> None:
    flash, pro = ModelConfig.preset("flash"), ModelConfig.preset("pro")
    assert kv_bytes_per_token(flash) == 6880
    assert kv_bytes_per_token(pro) == 9848
    assert round(kv_bytes_per_token(flash) * 2**20 / 2**30, 2) == 6.72
    assert round(kv_bytes_per_token(pro) * 2**20 / 2**30, 2) == 9.62
    # FP8 serving layout: 584 B main entry, 68 B MXFP4 indexer key
    assert kv_bytes_per_token(flash, "fp8") == pytest.approx(21 * (584 / 4 + 68 / 4) + 20 * 584 / 128)
    assert round(kv_bytes_per_token(flash, "fp8") / 1000, 2) == 3.51
    assert round(kv_bytes_per_token(pro, "fp8") / 1000, 2) == 5.03
    # fixed extras: rings 43 x 128 KiB and tails (CSA 64+16 KiB, HCA 512 KiB) for Flash
    assert fixed_state_bytes(flash) == 43 * 128 * 1024 + 21 * (64 + 16) * 1024 + 20 * 512 * 1024
    with pytest.raises(ValueError):
        kv_bytes_per_token(flash, "fp4")


def test_measured_state_growth_matches_accounting() -> None:
    """The bytes a real state adds per token equal the accounting for its config (bf16 state)."""
    cfg = ModelConfig.preset("tiny-test", compress_ratios=(4, 128, 0, 4, 0))
    m = V4Model(cfg, dtype=torch.bfloat16).init_random_(0)
    st = m.new_state()
    m.extend(st, torch.arange(256) % 256)
    base = st.nbytes()
    m.extend(st, torch.arange(256) % 256)
    assert st.nbytes() - base == kv_bytes_per_token(cfg) * 256
    assert base == fixed_state_bytes(cfg) + kv_bytes_per_token(cfg) * 256
