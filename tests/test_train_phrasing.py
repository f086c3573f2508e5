"""Issue 21's data: human phrasings of the task shapes, combined tasks, refusals, and the held-out bank."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from agentkit.tiny.tasks import REFUSAL, answer_content, extract_answer
from agentkit.train.episodes import ALL_FAMILIES, draft_episode, generate
from agentkit.train.families.extra import EXTRA_FAMILIES
from agentkit.train.phrasing import Phrasing, bank, expr_slots, number_words
from agentkit.train.phrasing_heldout import HELDOUT
from agentkit.train.phrasing_train import TRAIN


def _norm(sentence: str) -> str:
    return " ".join(re.sub(r"\{\w+\}|@|[^\w ]", " ", sentence.lower()).split())


def test_the_banks_share_no_sentence() -> None:
    train, held = TRAIN.sentences(), HELDOUT.sentences()
    assert not train & held
    # nor the same words with other slots or punctuation
    normed_train = {_norm(s) for s in train} - {""}
    assert not normed_train & {_norm(s) for s in held}


def test_both_banks_cover_the_same_shapes() -> None:
    assert set(TRAIN.core) == set(HELDOUT.core)
    assert set(TRAIN.expr) == set(HELDOUT.expr) == {"add", "sub", "mul", "div", "addmul", "mulsub"}
    assert set(TRAIN.extra) == set(HELDOUT.extra)


def test_template_worded_episodes_are_unchanged() -> None:
    """Without the phrasing knobs the generator makes data v8's episodes, byte for byte (so the card's
    500 held-out set and the template-worded evaluation set are the ones earlier models were measured on);
    the digest is of the generator before issue 21."""
    h = hashlib.sha256()
    for split in ("heldout", "train"):
        for e in generate(60, split=split, seed=0):
            h.update(e.text.encode())
            h.update(e.answer.encode())
    assert h.hexdigest() == "61e99d57f6fa141566d38fe31b8dfd63bc8dc577f0d11baf557b88fba9636517"


def test_a_paraphrased_episode_is_the_template_one_in_other_words() -> None:
    plain = generate(40, split="heldout", seed=0)
    para = generate(40, split="heldout", seed=0, phrasing="heldout", id_prefix="para-")
    changed = 0
    for a, b in zip(plain, para, strict=True):
        assert (a.family, a.files, a.answer) == (b.family, b.files, b.answer)
        assert b.id == f"para-{a.id}"
        changed += a.task != b.task
    assert changed == len(plain)  # keep=0: every task reworded


@pytest.mark.parametrize("phrasing", ["train", "heldout"])
def test_values_the_model_must_copy_appear_verbatim(phrasing: str) -> None:
    eps = generate(150, split="heldout", seed=1, phrasing=phrasing)
    for e in eps:
        if e.family == "file_grep":
            needle = next(
                line.split(": ")[1] for t in e.files.values() for line in t.splitlines() if "-" in line
            )
            assert needle in e.task or any(needle in t for t in e.files.values())
        if e.family in ("csv", "chain"):
            assert any(name.rsplit(".", 1)[0] in e.task for name in e.files)
        if e.family == "direct" and "list" in e.task.lower():
            assert e.answer in e.task


def test_training_mix_has_template_words_combined_tasks_and_refusals() -> None:
    eps = generate(300, split="train", seed=0, phrasing="train", keep=0.35, extra=0.22)
    families = {e.family for e in eps}
    assert "refuse" in families and {f for f in families if f.startswith("combo_")}
    plain = {e.id: e.task for e in generate(300, split="train", seed=0)}
    kept = sum(plain[e.id] == e.task for e in eps)
    assert 0.15 < kept / len(eps) < 0.5


def test_refusal_episodes_answer_the_refusal_without_a_tool() -> None:
    for e in generate(30, split="train", seed=0, family="refuse", phrasing="train"):
        assert e.answer == REFUSAL
        assistant = [m for m in e.messages if m["role"] == "assistant"]
        assert len(assistant) == 1 and not assistant[0].get("tool_calls")
        assert assistant[0]["content"] == REFUSAL
    assert answer_content(REFUSAL) == REFUSAL
    assert extract_answer(REFUSAL) == REFUSAL
    assert extract_answer(answer_content("42")) == "42"


def test_combined_tasks_use_two_tools_and_reach_their_ground_truth() -> None:
    eps = generate(40, split="heldout", seed=0, family="combo", phrasing="heldout")
    assert {e.family for e in eps} == {
        "combo_file_calc",
        "combo_csv_calc",
        "combo_calc_read",
        "combo_days_calc",
    }
    for e in eps:
        names = {
            c["function"]["name"]
            for m in e.messages
            if m["role"] == "assistant"
            for c in m.get("tool_calls") or []
        }
        assert len(names) == 2
        assert extract_answer(e.messages[-1]["content"]) == e.answer


def test_phrasing_draws_leave_the_episode_draws_alone() -> None:
    for index in range(30):
        a, _ = draft_episode(0, "heldout", index)
        b, _ = draft_episode(0, "heldout", index, phrasing="train")
        assert (a.family, a.answer, a.files) == (b.family, b.answer, b.files)


def test_every_extra_family_is_registered() -> None:
    assert set(EXTRA_FAMILIES) <= set(ALL_FAMILIES)


def test_number_words_and_expression_slots() -> None:
    assert [number_words(n) for n in (0, 7, 13, 20, 42, 99, 100)] == [
        "zero",
        "seven",
        "thirteen",
        "twenty",
        "forty-two",
        "ninety-nine",
        None,
    ]
    assert expr_slots("(1 + 2) * 3") == {"kind": "addmul", "a": "1", "b": "2", "c": "3"}
    assert expr_slots("4 * 5 - 6", "2") == {"kind2": "mulsub", "a2": "4", "b2": "5", "c2": "6"}
    with pytest.raises(ValueError):
        expr_slots("2 ** 3")


def test_typos_never_touch_a_slot_value() -> None:
    ph = Phrasing(bank("train"), random.Random(3), typo=1.0)
    for _ in range(200):
        text = ph.compose("file_grep", {"needle": "zzqx-1234"})
        assert "zzqx-1234" in text
