"""Fuzz: malformed input of every kind gives a result or DSMLParseError, never another exception.

It is also a differential test: each input goes through the stream parser's incremental machine and
through the lxml skeleton path of `parse_completion`, whose results must be equal; tolerant parsing must
never raise, so the skeleton the repair layer hands to lxml is well-formed on every input.

Over 10,000 generated inputs per run (mutated fixtures, random marker soup, random bytes decoded with
replacement). The seed changes per run to widen coverage and is printed on failure; set DSML_FUZZ_SEED
to replay one. Large and deep inputs are checked separately.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from agentkit.dsml import (
    BOS,
    EOS,
    THINK_END,
    THINK_START,
    ContentDelta,
    DSMLParseError,
    ReasoningDelta,
    StreamParser,
    merge_deltas,
    parse_completion,
)
from agentkit.dsml.lexer import match_tag

FIXTURES = Path(__file__).parent / "fixtures" / "dsml"
SEEDS = [
    json.loads(p.read_text(encoding="utf-8"))["text"] for p in sorted((FIXTURES / "variants").glob("*.json"))
]
PIECES = [
    "</think>", "<think>", EOS, BOS, "\n\n", "\n", " ", "<", ">", "/", '"', "“", "|", "｜", "‖", "DSML",
    "a", "<!",
    "<｜DSML｜tool_calls>", "</｜DSML｜tool_calls>", '<｜DSML｜invoke name="f">', "</｜DSML｜invoke>", "/>",
    '<｜DSML｜parameter name="k" string="true">', '<｜DSML｜parameter name="n" string="false">', "string=",
    "</｜DSML｜parameter>", "<|DSML|invoke", "< | DSML | ", "<![CDATA[", "]]>", "1", "{", "}", "[", "\x00",
]  # fmt: skip
N_INPUTS = 10_000


def _inputs(rng: random.Random) -> list[str]:
    out = []
    for i in range(N_INPUTS):
        kind = i % 3
        if kind == 0:
            text = rng.choice(SEEDS)
            for _ in range(rng.randint(1, 4)):
                a = rng.randint(0, len(text))
                b = min(len(text), a + rng.randint(0, 8))
                text = text[:a] + rng.choice(["", *rng.sample(PIECES, 2)]) + text[b:]
        elif kind == 1:
            text = "".join(rng.choice(PIECES) for _ in range(rng.randint(0, 30)))
        else:
            text = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60))).decode("utf-8", "replace")
        out.append(text)
    return out


def _check_clean(text: str, seed: int, source: str) -> None:
    for token in (EOS, BOS, THINK_START, THINK_END):
        assert token not in text, (seed, source, text)
    at = text.find("<")
    while at != -1:
        assert match_tag(text, at, True) is None, (seed, source, text)
        at = text.find("<", at + 1)


def test_fuzz_never_crashes_and_never_leaks_markup() -> None:
    seed = int(os.environ.get("DSML_FUZZ_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    for n, text in enumerate(_inputs(rng)):
        mode = "thinking" if n % 2 else "chat"
        try:
            parse_completion(text, mode)
        except DSMLParseError as exc:
            assert 0 <= exc.position <= len(text), (seed, text)
        whole = StreamParser(mode)
        whole_events = whole.feed(text) + whole.close()
        # Each piece of text the parser passes on is free of markup. (Pieces on both sides of a dropped
        # tag are not re-scanned together: adversarial input can still spell a tag across the cut.)
        for ev in whole_events:
            if isinstance(ev, (ContentDelta, ReasoningDelta)):
                _check_clean(ev.text, seed, text)
        assert whole.result() == parse_completion(text, mode, strict=False)
        if n % 4 == 0:
            cut = rng.randint(0, len(text))
            p = StreamParser(mode)
            events = p.feed(text[:cut]) + p.feed(text[cut:]) + p.close()
            assert merge_deltas(events) == merge_deltas(whole_events), (seed, text, cut)


def test_huge_parameter_streams_in_small_chunks() -> None:
    value = "x<y&z]]>\n" * (10_000_000 // 9)
    text = (
        '</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="w">\n'
        '<｜DSML｜parameter name="v" string="true">'
        + value
        + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
        + EOS
    )
    assert parse_completion(text, "thinking").tool_calls[0].arguments["v"] == value
    for strict in (True, False):
        p = StreamParser("thinking", strict=strict)
        step = 65_536
        for i in range(0, len(text), step):
            p.feed(text[i : i + step])
        p.close()
        assert p.result().tool_calls[0].arguments["v"] == value


@pytest.mark.parametrize("strict", [True, False])
def test_many_invokes_and_deep_json(strict: bool) -> None:
    one = (
        '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="false">1</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>"
    )
    many = "\n\n<｜DSML｜tool_calls>\n" + "\n".join([one] * 20_000) + "\n</｜DSML｜tool_calls>" + EOS
    assert len(parse_completion(many, "chat", strict=strict).tool_calls) == 20_000
    # Unclosed: the strict reference grammar searches for the block end after every invoke.
    unclosed = "\n\n<｜DSML｜tool_calls>\n" + "\n".join([one] * 20_000) + "\n"
    try:
        parse_completion(unclosed, "chat", strict=strict)
    except DSMLParseError:
        assert strict
    deep = "[" * 100_000 + "]" * 100_000
    text = (
        '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="d" string="false">'
        + deep
        + "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
        + EOS
    )
    if strict:
        with pytest.raises(DSMLParseError, match="not valid JSON"):
            parse_completion(text, "chat")
    else:
        msg = parse_completion(text, "chat", strict=False)
        assert msg.tool_calls[0].arguments["d"] == deep and msg.warnings


def test_huge_and_unrepresentable_names_go_through_the_skeleton() -> None:
    """Names become XML attributes of the skeleton: a 2 MB one full of markup characters, and one XML
    cannot hold at all (it travels in the placeholder table), both come back unchanged."""
    for name in ('a&<"\t\r\n' * 300_000, "nul\x00 and \ud800"):
        invoke = f'<｜DSML｜invoke name="{name}">\n</｜DSML｜invoke>'
        text = f"\n\n<｜DSML｜tool_calls>\n{invoke}\n</｜DSML｜tool_calls>{EOS}"
        assert parse_completion(text, "chat").tool_calls[0].name == name
        p = StreamParser("chat", strict=True)
        p.feed(text)
        p.close()
        assert p.result() == parse_completion(text, "chat")
