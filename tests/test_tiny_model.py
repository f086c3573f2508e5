"""The shipped `agentkit-tiny` checkpoint: its format, and its behaviour through the real system.

Under CI a missing checkpoint fails the suite: the package must ship the model its demo runs.

The behaviour test is the issue's CI bar: a fixed, family-stratified subset of held-out episodes (names
and values never seen in training, at indices the full 500-episode evaluation does not use) runs through
the real agent loop, the embedded backend, the strict DSML check and the real tools in a real bubblewrap
sandbox, and at least 90% must end with exactly the expected answer. The full evaluation is
`examples/eval_tiny.py`; its numbers are in the model card.
"""

from __future__ import annotations

import json
from pathlib import Path

import anyio
from agentkit.runtime.checkpoint import CONFIG_NAME, load_model, shipped_checkpoint
from agentkit.runtime.config import ModelConfig

from agentkit.tiny.tools import all_tools
from agentkit.train.episodes import Episode, generate_async
from agentkit.train.families import FAMILIES
from agentkit.train.loop_eval import evaluate

PER_FAMILY = 4
SUBSET_START = 2_000_000


def _shipped() -> Path:
    path = shipped_checkpoint("tiny")
    assert path is not None, "agentkit-tiny is not in the package (runtime/weights/agentkit-tiny)"
    return path


def test_shipped_checkpoint_is_a_small_v4_checkpoint() -> None:
    path = _shipped()
    hf = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    cfg = ModelConfig.from_dict(hf)
    assert hf["model_type"] == "deepseek_v4"
    assert {4, 128} <= set(cfg.compress_ratios)
    assert cfg.window_size == 128 and cfg.hc_mult == 4 and cfg.n_mtp_layers == 1 and cfg.n_hash_layers >= 1
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert 0 < weights <= 40 * 2**20
    model = load_model("tiny")  # the loader any V4 checkpoint goes through
    assert sum(p.numel() for p in model.parameters()) < 50_000_000
    assert (path / "README.md").is_file() and (path / "loss.png").is_file()


def test_shipped_model_solves_a_heldout_subset_through_the_real_loop() -> None:
    from agentkit.backends.embedded import EmbeddedModel

    _shipped()

    async def main() -> float:
        eps: list[Episode] = []
        for k, family in enumerate(sorted(FAMILIES)):
            eps += await generate_async(
                PER_FAMILY, split="heldout", seed=0, start=SUBSET_START + 1000 * k, family=family
            )
        backend = EmbeddedModel("tiny", temperature=0.0, max_tokens=400)
        report = await evaluate(backend, eps, all_tools(), sandbox="bwrap")
        print(report.table())
        assert report.strict_rate >= 0.95, report.to_json()["failures"]
        return report.success_rate()

    rate = anyio.run(main)
    assert rate >= 0.9, rate
