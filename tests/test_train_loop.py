"""Training text == what the real agent loop produces: no drift between train and eval formats.

A model forced (through the embedded backend's logits processor) to emit an episode's reference turns
is run through the real `Agent` loop with the real tools in a real sandbox (bubblewrap and Docker; the
generator itself ran the tools in a LocalSandbox). The loop's transcript must then be byte-identical to
the episode text the model is trained on, every generated turn must pass the strict DSML parser, and the
answer must match.
"""

from __future__ import annotations

import anyio
import pytest
import torch
from _forcing import forcer, reference_turns

from agentkit.backends.embedded import EmbeddedModel
from agentkit.tiny.tools import all_tools
from agentkit.train.bpe import train_bpe
from agentkit.train.episodes import Episode, generate
from agentkit.train.families import FAMILIES
from agentkit.train.loop_eval import Outcome, run_episode
from agentkit.train.trainer import build_model, micro_config


@pytest.mark.parametrize(
    ("split", "sandbox"),
    [
        pytest.param("train", "bwrap", marks=pytest.mark.bwrap),
        pytest.param("heldout", "docker", marks=pytest.mark.docker),
    ],
)
def test_loop_transcript_equals_training_text(split: str, sandbox: str) -> None:
    eps: list[Episode] = [generate(1, split=split, seed=21, family=f)[0] for f in FAMILIES]
    # both kinds of recovered error: a rejected calculator expression and a file that is not there
    errors = generate(12, split=split, seed=22, family="error")
    for offered in ("calculator", "read_file"):
        eps.append(next(e for e in errors if e.messages[0]["tools"][0]["function"]["name"] == offered))
    tok = train_bpe([e.text for e in eps], 300)
    model = build_model(micro_config(tok.vocab_size), 0, torch.device("cpu"))
    tools = all_tools()

    async def main() -> list[Outcome]:
        rows = []
        for e in eps:
            # every assistant turn, the untrained mistake of an error episode included
            turns = reference_turns(tok.encode, [e])
            backend = EmbeddedModel(
                model=model, tokenizer=tok, logits_processor=forcer(turns), max_tokens=400
            )
            rows.append(await run_episode(backend, e, tools, sandbox))
        return rows

    rows = anyio.run(main)
    assert {r.family.split("_")[0] for r in rows} == {f.split("_")[0] for f in FAMILIES}
    for r in rows:
        assert r.status == "completed", r
        assert r.same_transcript, r
        assert r.ok, r
        assert r.turns >= 1 and r.strict_turns == r.turns, r
