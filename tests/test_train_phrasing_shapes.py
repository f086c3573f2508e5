"""The training bank's wider wordings of calc, parallel, direct and the combined tasks (issue 21): every
generated task still names the values its ground truth is computed from, order-sensitive wordings keep
their operands the right way round, and the held-out evaluation sets are untouched by the training
bank's knobs."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from agentkit.train.episodes import Episode, generate
from agentkit.train.phrasing import _ONES, _TENS, big_number_words, number_words
from agentkit.train.phrasing_train import TRAIN

_SMALL = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if i >= 2}
_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+|[a-z]+|[^\sa-z\d]")


def spoken_numbers(text: str) -> list[int]:
    """The numbers a reader finds in `text`, in order: digits ("12", "12,345") and English words
    ("forty-two", "three hundred and twelve", "fifteen hundred", "a hundred and five")."""
    toks = _TOKEN.findall(re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower()))
    out: list[int] = []
    phrase: list[str] = []

    def close() -> None:
        if phrase:
            total = cur = 0
            for t in phrase:
                if t in _SMALL:
                    cur += _SMALL[t]
                elif t == "hundred":
                    cur = (cur or 1) * 100
                elif t == "thousand":
                    total, cur = total + (cur or 1) * 1000, 0
            out.append(total + cur)
            phrase.clear()

    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t[0].isdigit():
            close()
            out.append(int(t.replace(",", "")))
        elif t in _SMALL or (t in ("hundred", "thousand") and phrase):
            if t in _SMALL and phrase and phrase[-1] in _SMALL and _SMALL[phrase[-1]] < 10 <= _SMALL[t]:
                close()  # "five twelve": two numbers
            phrase.append(t)
        elif t == "a" and nxt == "hundred":
            phrase.append(t)
        elif t == "and" and phrase and phrase[-1] in ("hundred", "thousand") and nxt in _SMALL:
            continue
        else:
            close()
    close()
    return out


def test_number_words_read_back() -> None:
    rng = random.Random(0)
    for n in range(0, 10000):
        for _ in range(3):
            words = number_words(n) if n < 100 else big_number_words(n, rng)
            if words is None:
                assert n >= 100 and n % 100 == 0
                continue
            assert spoken_numbers(f"what is {words} and 7?") == [n, 7], words
    assert spoken_numbers("add 12,345 to 6") == [12345, 6]
    assert big_number_words(105, random.Random(1)) in (
        "a hundred and five",
        "one hundred and five",
        "one hundred five",
        "a hundred five",
    )


_CUES = r"\b(from|than|off|go into|goes into|fit into|fits into|out of|there in)\b"


def _order_ok(template: str, first: str, second: str) -> bool:
    """`first` is the minuend/dividend: it comes first unless an order cue ("take 3 from 10",
    "5 less than 9", "how many 4s go into 20") stands between them with `second` first."""
    i, j = template.find(first), template.find(second)
    if i < 0 or j < 0:
        return True
    between = template[min(i, j) : max(i, j)]
    cue = re.search(_CUES, between) is not None
    return (i < j and not cue) or (j < i and cue)


@pytest.mark.parametrize(
    ("group", "key", "first", "second"),
    [
        ("expr", "sub", "{a}", "{b}"),
        ("expr", "div", "{a}", "{b}"),
        ("core", "calc_sub", "{a}", "{b}"),
        ("core", "calc_div", "{a}", "{b}"),
        ("expr", "mulsub", "{b}", "{c}"),
        ("core", "calc_mulsub", "{b}", "{c}"),
    ],
)
def test_order_sensitive_wordings_keep_their_operands_the_right_way_round(
    group: str, key: str, first: str, second: str
) -> None:
    templates = getattr(TRAIN, group)[key]
    wrong = [t for t in templates if not _order_ok(t, first, second)]
    assert not wrong
    for t in TRAIN.extra["op_sub"]:  # "subtract {n} from it", never "subtract it from {n}"
        assert not re.search(r"\bfrom\b.*\{n\}", t), t


def _expressions(e: Episode) -> list[str]:
    return [
        str(json.loads(c["function"]["arguments"])["expression"])
        for m in e.messages
        if m["role"] == "assistant"
        for c in m.get("tool_calls") or []
        if c["function"]["name"] == "calculator"
    ]


def _operands(expr: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", expr)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calc_and_parallel_tasks_name_every_operand(seed: int) -> None:
    """Over many wordings, the calculator's operands (the ground truth) are all in the task, in digits,
    with thousands commas or in words; two calculations come in the order the answer lists them."""
    for family in ("calc", "parallel"):
        for e in generate(150, split="train", seed=seed, family=family, phrasing="train"):
            assert not re.search(r"[{}]|@", e.task), e.task
            said = spoken_numbers(e.task)
            exprs = _expressions(e)
            if e.family == "parallel" and len(e.files) == 2:  # two files' values, then their sum
                assert all(name.rsplit(".", 1)[0] in e.task for name in e.files)
                continue
            for expr in exprs:
                assert set(_operands(expr)) <= set(said), (e.task, expr)
            if len(exprs) == 2 and set(_operands(exprs[0])).isdisjoint(_operands(exprs[1])):
                first = [said.index(x) for x in _operands(exprs[0])]
                last = [len(said) - 1 - said[::-1].index(x) for x in _operands(exprs[1])]
                assert min(first) < max(last), (e.task, exprs)


def test_direct_tasks_hold_the_word_to_copy() -> None:
    for e in generate(300, split="train", seed=3, family="direct", phrasing="train"):
        assert e.answer in e.task, (e.task, e.answer)
        if re.fullmatch(r"[a-z]+-[a-z]+-\d+", e.answer):  # a code word: the only hyphenated token
            assert e.task.count(e.answer) == 1, e.task


def test_combined_tasks_name_their_operands() -> None:
    for e in generate(200, split="train", seed=4, family="combo", phrasing="train"):
        said = set(spoken_numbers(e.task))
        exprs = _expressions(e)
        if e.family == "combo_calc_read":
            assert set(_operands(exprs[0])) <= said, e.task
        elif e.family in ("combo_file_calc", "combo_csv_calc"):
            assert _operands(exprs[-1])[-1] in said, e.task  # "... and multiply it by {n}"


def test_held_out_sets_are_the_ones_earlier_models_were_measured_on() -> None:
    """The training bank's knobs (quotes, large numbers in words, digit groups) draw only for a bank
    that sets them: the held-out paraphrase, combined and refusal sets stay byte for byte as before."""
    h = hashlib.sha256()
    for family in (None, "combo", "refuse"):
        for e in generate(120, split="heldout", seed=0, phrasing="heldout", family=family):
            h.update(e.text.encode())
            h.update(e.answer.encode())
    assert h.hexdigest() == "f4336a088a91a2c0b32d205b8f03bd9d9cb3b67f993bca66b5ad2773d8c994c2"
