"""Synthetic episodes: deterministic, split-disjoint, rendered by the real encoder, tool results real."""

from __future__ import annotations

import json
import re

import anyio
import pytest
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import LocalSandbox
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkit.dsml.encode import encode_messages
from agentkit.dsml.parse import parse_completion
from agentkit.tiny.tasks import extract_answer
from agentkit.tiny.tools import all_tools
from agentkit.train import vocab
from agentkit.train.episodes import Episode, generate, load_jsonl, save_jsonl
from agentkit.train.families import FAMILIES

EXPECTED_FAMILIES = {
    "calc",
    "file_read",
    "file_list",
    "file_grep",
    "csv",
    "chain",
    "choose",
    "direct",
    "error",
    "parallel",
}


@pytest.fixture(scope="module")
def train_eps() -> list[Episode]:
    return generate(60, split="train", seed=7)


@pytest.fixture(scope="module")
def heldout_eps() -> list[Episode]:
    return generate(60, split="heldout", seed=7)


def test_same_seed_same_episodes(train_eps: list[Episode]) -> None:
    again = generate(60, split="train", seed=7)
    assert [e.to_json() for e in again] == [e.to_json() for e in train_eps]
    other = generate(10, split="train", seed=8)
    assert [e.text for e in other] != [e.text for e in train_eps[:10]]


def test_start_offset_gives_the_same_episode() -> None:
    """Episode k depends only on (seed, split, k): shards generated apart concatenate to the whole."""
    whole = generate(6, seed=3)
    parts = generate(3, seed=3) + generate(3, seed=3, start=3)
    assert [e.to_json() for e in parts] == [e.to_json() for e in whole]


def test_every_family_appears(train_eps: list[Episode], heldout_eps: list[Episode]) -> None:
    assert {e.family for e in train_eps} == EXPECTED_FAMILIES
    assert {e.family for e in heldout_eps} == EXPECTED_FAMILIES
    for fam in FAMILIES:
        eps = generate(2, seed=1, family=fam)
        assert all(e.family.startswith(fam) for e in eps)


def test_text_is_encode_messages_and_segments_partition_it(train_eps: list[Episode]) -> None:
    for e in train_eps:
        assert e.text == encode_messages(e.messages, "thinking")
        assistants = [m for m in e.messages if m["role"] == "assistant"]
        trained = [s for s in e.segments if s.loss]
        # Only deliberate mistakes are untrained, and only error episodes make them.
        assert len(trained) == len(assistants) - (1 if len(trained) < len(assistants) else 0)
        if len(trained) < len(assistants):
            assert e.family == "error"
        for s in trained:
            assert s.text.endswith("<｜end▁of▁sentence｜>")
        for a, _ in e.loss_spans():
            assert e.text[:a].endswith("<｜Assistant｜><think>")


def test_assistant_spans_parse_back_to_the_messages(train_eps: list[Episode]) -> None:
    """What the model is trained to write is exactly what the project's parser turns into the calls."""
    for e in train_eps:
        assistants = [m for m in e.messages if m["role"] == "assistant"]
        spans = [
            s for s in e.segments if s.text.endswith("<｜end▁of▁sentence｜>") and "<｜User｜>" not in s.text
        ]
        assert len(spans) == len(assistants)
        for msg, seg in zip(assistants, spans, strict=True):
            parsed = parse_completion(seg.text, "thinking")
            assert parsed.reasoning_content == msg["reasoning_content"]
            assert parsed.content == msg["content"]
            want = [
                (c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in msg.get("tool_calls", [])
            ]
            got = [(c.name, c.arguments) for c in parsed.tool_calls]
            assert got == want


def test_final_answer_matches_ground_truth(train_eps: list[Episode], heldout_eps: list[Episode]) -> None:
    for e in train_eps + heldout_eps:
        final = e.messages[-1]
        assert final["role"] == "assistant" and not final.get("tool_calls")
        assert extract_answer(final["content"]) == e.answer


def test_tool_results_are_what_the_real_tools_return(train_eps: list[Episode]) -> None:
    """Re-run every recorded call, one at a time, in a fresh sandbox: the transcript must match."""
    tools = all_tools()

    async def check(e: Episode) -> None:
        async with LocalSandbox() as sb:
            for path, text in e.files.items():
                await sb.write_file(path, text)
            ctx: RunContext[None] = RunContext(sandbox=sb)
            results = {m["tool_call_id"]: m["content"] for m in e.messages if m["role"] == "tool"}
            for m in e.messages:
                for call in m.get("tool_calls") or []:
                    args = json.loads(call["function"]["arguments"])
                    outcome = await tools[call["function"]["name"]].invoke(args, ctx)
                    assert outcome.content == results[call["id"]], (e.id, call)

    async def main() -> None:
        for e in train_eps[:30]:
            await check(e)

    anyio.run(main)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


def test_heldout_uses_no_training_names(heldout_eps: list[Episode], train_eps: list[Episode]) -> None:
    tr, ho = vocab.pools("train"), vocab.pools("heldout")
    kinds = ("noun", "adj", "person", "city", "item", "dir")
    train_names = {w for k in kinds for w in getattr(tr, k)}
    heldout_names = {w for k in kinds for w in getattr(ho, k)}
    assert not train_names & heldout_names
    for e in heldout_eps:
        seen = _words(e.task) | {w for text in e.files.values() for w in _words(text)}
        seen |= {w for p in e.files for w in _words(p)}
        assert not seen & train_names, (e.id, seen & train_names)
    # and the training split really uses its own names (the check above is not vacuous)
    assert any(_words(e.task) & train_names for e in train_eps)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=10**6))
def test_number_pools_are_disjoint(seed: int, lo: int) -> None:
    import random

    rng = random.Random(seed)
    for split in vocab.SPLITS:
        n = vocab.pools(split).number(rng, lo, lo + 100)
        assert vocab.split_of_number(n) == split
        assert lo <= n <= lo + 100


def test_both_number_splits_are_populated() -> None:
    counts = {s: 0 for s in vocab.SPLITS}
    for n in range(10_000):
        counts[vocab.split_of_number(n)] += 1
    assert 1500 < counts["heldout"] < 2500


def test_jsonl_round_trip(tmp_path, train_eps: list[Episode]) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "eps.jsonl"
    save_jsonl(train_eps[:5], path)
    back = list(load_jsonl(path))
    assert [e.to_json() for e in back] == [e.to_json() for e in train_eps[:5]]
    assert [e.text for e in back] == [e.text for e in train_eps[:5]]


def test_unknown_family_and_split_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown family"):
        generate(1, family="nope")
    with pytest.raises(ValueError, match="unknown split"):
        generate(1, split="test")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**20),
    st.sampled_from(sorted(FAMILIES)),
    st.sampled_from(vocab.SPLITS),
)
def test_any_seed_family_split_gives_a_consistent_episode(seed: int, family: str, split: str) -> None:
    (e,) = generate(1, seed=seed, family=family, split=split, start=seed % 97)  # type: ignore[arg-type]
    assert e.text == encode_messages(e.messages, "thinking")
    assert extract_answer(e.messages[-1]["content"]) == e.answer
    trained = [s for s in e.segments if s.loss]
    assert trained and trained[-1].text.endswith("The answer is " + e.answer + ".<｜end▁of▁sentence｜>")
    for s in trained:
        parse_completion(s.text, "thinking")  # what the model learns to write is valid strict DSML


def _invented(seed: int, index: int) -> list[str]:
    kinds = ("noun", "adj", "person", "city", "item", "dir")
    real = {w for k in kinds for w in getattr(vocab.pools("train"), k)}
    ep = vocab.episode_pools(seed, "train", index)
    return [w for k in kinds for w in getattr(ep, k) if w not in real]


def test_invented_training_names_cover_heldout_letters(train_eps: list[Episode]) -> None:
    """A held-out name must break into pieces the training split also contains: with real words only,
    every training name was one whole BPE token and the pieces of a held-out name ("z", "ep", "h" of
    "zephyr") never occurred in training, so they could not be learned (agentkit-tiny: 0% on every
    family that copies a name). Checked on characters and character pairs, tokenizer-independently."""
    kinds = ("noun", "adj", "person", "city", "item", "dir")
    heldout_names = [w.lower() for k in kinds for w in getattr(vocab.pools("heldout"), k)]
    invented = [w.lower() for i in range(40) for w in _invented(0, i)]
    train_pairs = {w[i : i + 2] for w in invented for i in range(len(w) - 1)}
    assert set("abcdefghijklmnopqrstuvwxyz") <= set("".join(invented))
    pairs = [w[i : i + 2] for w in heldout_names for i in range(len(w) - 1)]
    covered = sum(p in train_pairs for p in pairs) / len(pairs)
    assert covered > 0.95, covered
    # the invented words are really drawn: training tasks name things with their episode's invented words
    hits = 0
    for e in train_eps:
        seed, index = (int(x) for x in e.id.split("-")[1:])
        hits += bool({w.lower() for w in _invented(seed, index)} & {w.lower() for w in _words(e.task)})
    assert hits > len(train_eps) // 4, hits


def test_invented_names_are_fresh_per_episode_and_never_template_words() -> None:
    """Invented names are seeded by the episode (the same data on every machine) but differ between
    episodes (so they cannot be memorized, only copied), and never collide with a held-out name or a
    word of the templates (or a held-out task's wording would count as a leak)."""
    banned = vocab._banned_words()
    a, b = _invented(0, 1), _invented(0, 2)
    assert a == _invented(0, 1)
    assert len(set(a) & set(b)) < len(a) // 10
    assert not {w.lower() for w in a + b} & banned
    assert vocab.episode_pools(0, "heldout", 1) == vocab.pools("heldout")


def test_error_family_questions_also_have_trained_first_turns() -> None:
    """The error family's first (mistaken) turn is context, not trained; a question like "What is 12 x
    5?" must also appear in trained turns (the calc family, answered with * at once), or the model
    meets it in the real loop with no trained first turn (measured: 4% of the error family there)."""
    eps = generate(200, split="train", seed=3, family="calc")
    direct = [e for e in eps if re.search(r"\d (x|×) \d", e.task)]
    assert direct
    for e in direct:
        call = next(m for m in e.messages if m["role"] == "assistant")["tool_calls"][0]
        assert " * " in call["function"]["arguments"] and " x " not in call["function"]["arguments"]


def test_small_numbers_spread_operands_over_their_digit_counts() -> None:
    """`small` (data v12) draws a share of numbers log-uniformly: calc tasks then hold one- and two-digit
    operands, which the uniform draw all but never gives; without it the draws are unchanged, and every
    episode still matches its ground truth (generate checks the scripted answer against the tools)."""
    import re

    from agentkit.train.episodes import draft_episode, generate

    def small_operands(eps: list) -> int:
        return sum(any(int(n) < 100 for n in re.findall(r"\d+", e.task)) for e in eps)

    plain = generate(60, split="train", seed=3, family="calc")
    spread = generate(60, split="train", seed=3, family="calc", small=0.5)
    assert small_operands(spread) >= small_operands(plain) + 10
    assert {e.answer for e in spread} != {e.answer for e in plain}
    for index in range(20):  # the knob off is the old generator, draw for draw
        a, _ = draft_episode(3, "train", index)
        b, _ = draft_episode(3, "train", index, small=0.0)
        assert (a.family, a.answer, a.files) == (b.family, b.answer, b.files)


def test_handwritten_tasks_parse_and_run_as_the_cli_runs_them() -> None:
    """The hand-written set (`agentkit.train.handwritten_eval`): every line a task and an answer, the
    refusal spelled as the model's sentence, no task twice; one of them through the CLI's path (scope
    check's toolbox, the real loop, a local sandbox) with the shipped model."""
    import anyio

    from agentkit.backends.embedded import EmbeddedModel
    from agentkit.tiny.scope import check_scope
    from agentkit.tiny.tasks import REFUSAL
    from agentkit.train.handwritten_eval import answer_as_cli, tasks

    rows = tasks()
    assert len(rows) >= 40 and len({t for t, _ in rows}) == len(rows)
    assert all(t.strip() and a.strip() and "\t" not in t for t, a in rows)
    assert sum(a == REFUSAL for _, a in rows) >= 5
    task = "Repeat this exactly: blue-fox-77"
    assert (task, "blue-fox-77") in rows
    verdict = check_scope(task, paraphrases=True)
    assert verdict.in_scope
    backend = EmbeddedModel("tiny", temperature=0.0, max_tokens=256)
    status, answer = anyio.run(answer_as_cli, backend, task, verdict.tools)
    assert (status, answer) == ("completed", "blue-fox-77")
