"""examples/train_tiny.py end to end at micro scale: prepare -> train -> checkpoint -> eval report."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from agentkit.train.bpe import BPETokenizer
from agentkit.train.export import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import train_tiny


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
