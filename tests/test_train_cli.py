"""examples/train_tiny.py end to end at micro scale: prepare -> train -> checkpoint -> eval report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from agentkit.train.bpe import BPETokenizer
from agentkit.train.export import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train_tiny


def test_prepare_train_eval(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--episodes", "20", "--heldout", "3", "--train-eval", "2"]
    argv += [
        "--merges",
        "300",
        "--micro",
        "--steps",
        "2",
        "--batch",
        "1",
        "--seq-len",
        "2048",
        "--log-every",
        "1",
    ]
    argv += ["--eval-heldout", "3", "--eval-train", "2", "--replay", "1"]
    assert train_tiny.main(["all", *argv]) == 0

    # the compact token file holds exactly the tokenized episodes
    z = np.load(data / "train_tokens.npz")
    assert len(z["lengths"]) == 20 and int(z["lengths"].sum()) == len(z["ids"])
    meta = json.loads((data / "meta.json").read_text())
    assert meta["episodes"] == 20 and sum(meta["families"].values()) == 20

    model, tok = load_model(out)
    assert tok.merges == BPETokenizer.load(data / "tokenizer.json").merges
    assert model.config.vocab_size >= tok.vocab_size
    loss = json.loads((out / "loss.json").read_text())
    assert [r["step"] for r in loss["records"]] == [0.0, 1.0]
    assert (out / "loss.png").stat().st_size > 1000
    report = json.loads((out / "eval.json").read_text())
    assert report["heldout"]["episodes"] == 3 and report["train"]["episodes"] == 2
    assert report["replay_check"]["replay"] == report["replay_check"]["forced"]


def test_resume_continues_from_the_checkpoint(tmp_path: Path) -> None:
    data, out, out2 = tmp_path / "data", tmp_path / "out", tmp_path / "out2"
    common = ["--data", str(data), "--micro", "--batch", "1", "--seq-len", "2048", "--log-every", "1"]
    common += ["--eval-heldout", "0", "--eval-train", "0", "--replay", "0"]
    prep = ["--episodes", "6", "--heldout", "1", "--train-eval", "1", "--merges", "200"]
    # a large step first, so the checkpoint is far from the seed's fresh initialization
    first = ["--out", str(out), "--steps", "2", "--lr", "0.05", "--warmup", "1"]
    assert train_tiny.main(["all", *common, *prep, *first]) == 0
    # a near-zero learning rate: the resumed run's weights must stay those of the checkpoint
    assert (
        train_tiny.main(
            ["train", *common, "--out", str(out2), "--resume", str(out), "--steps", "1", "--lr", "1e-9"]
        )
        == 0
    )
    a, _ = load_model(out)
    b, _ = load_model(out2)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        if pa.is_floating_point():
            torch.testing.assert_close(pb, pa, rtol=0, atol=1e-2, msg=name)
        else:
            assert torch.equal(pa, pb), name


def test_copy_stage_then_training_with_copy_rows_and_checkpoints(tmp_path: Path) -> None:
    data, first, copied, last = (tmp_path / n for n in ("data", "first", "copied", "last"))
    common = ["--data", str(data), "--micro", "--batch", "1", "--seq-len", "2048", "--log-every", "1"]
    common += ["--eval-heldout", "0", "--eval-train", "0", "--replay", "0"]
    prep = ["--episodes", "6", "--heldout", "1", "--train-eval", "1", "--merges", "200"]
    assert train_tiny.main(["all", *common, *prep, "--out", str(first), "--steps", "1"]) == 0
    copy_args = ["--resume", str(first), "--out", str(copied), "--copy-steps", "2", "--copy-vocab", "40"]
    assert train_tiny.main(["copy", *common, *copy_args]) == 0
    meta = json.loads((copied / "training.json").read_text())
    assert meta["resumed_from"] == str(first) and [r["step"] for r in meta["copy_phase"]] == [0.0, 1.0]
    a, _ = load_model(first)
    b, _ = load_model(copied)
    assert any(
        not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )

    more = ["--resume", str(copied), "--out", str(last), "--steps", "2", "--copy-rows", "3"]
    assert train_tiny.main(["train", *common, *more, "--checkpoint-every", "1"]) == 0
    assert json.loads((last / "partial" / "training.json").read_text()) == {"step": 2}
    load_model(last / "partial")
