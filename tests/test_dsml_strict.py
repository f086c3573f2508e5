"""Strict mode pinned to DeepSeek's reference parser, corner by corner.

Each row was derived by reading `parse_message_from_completion_text` (its stop-string reads and its two
anchored regexes, where Python's `$` also matches before a final newline). Every row is also run through
the strict stream parser at every two-chunk split, which must agree with the whole-text parser.
"""

from __future__ import annotations

from typing import Any

import pytest

from agentkit.dsml import EOS, DSMLParseError, StreamParser, parse_completion

D = "｜DSML｜"
OPEN = f"\n\n<{D}tool_calls>\n"
CLOSE = f"</{D}tool_calls>"


def inv(name: str, *params: str, header_tail: str = ">\n") -> str:
    body = "\n".join(params)
    return f'<{D}invoke name="{name}"{header_tail}{body}\n</{D}invoke>'


def par(key: str, value: str, string: str = "true") -> str:
    return f'<{D}parameter name="{key}" string="{string}">{value}</{D}parameter>'


OK: list[tuple[str, str, tuple[str, str, list[tuple[str, dict[str, Any]]]]]] = [
    ("chat", "hello" + EOS, ("", "hello", [])),
    ("chat", EOS, ("", "", [])),
    ("thinking", "r</think>c" + EOS, ("r", "c", [])),
    ("thinking", "</think>" + EOS, ("", "", [])),
    ("chat", OPEN + inv("f", par("a", "1")) + "\n" + CLOSE + EOS, ("", "", [("f", {"a": "1"})])),
    # `{}` arguments render as an empty line inside the invoke; the header regex allows ">\n\n".
    ("chat", OPEN + f'<{D}invoke name="f">\n\n</{D}invoke>\n' + CLOSE + EOS, ("", "", [("f", {})])),
    # `^\s*name=` : whitespace (any Unicode whitespace) before the name attribute.
    ("chat", OPEN + f'<{D}invoke \u3000\n name="f">\n</{D}invoke>\n' + CLOSE + EOS, ("", "", [("f", {})])),
    # The name runs to the final `">\n`, quotes included.
    ("chat", OPEN + f'<{D}invoke name="a"b">\n</{D}invoke>\n' + CLOSE + EOS, ("", "", [('a"b', {})])),
    # The parameter name ends at the first `" string="true|false">`; the value at the last `<`.
    (
        "chat",
        OPEN + inv("f", par('k" string="x', "v<")) + "\n" + CLOSE + EOS,
        ("", "", [("f", {'k" string="x': "v<"})]),
    ),
    # `<$` also matches before a final newline: `…value<\n/｜DSML｜parameter>`.
    (
        "chat",
        OPEN
        + f'<{D}invoke name="f">\n<{D}parameter name="k" string="true">v<\n/{D}parameter>\n</{D}invoke>\n'
        + CLOSE
        + EOS,
        ("", "", [("f", {"k": "v"})]),
    ),
    (
        "chat",
        OPEN
        + inv("f", par("n", " 1e3 ", "false"), par("o", '{"a": [1, null]}', "false"))
        + "\n"
        + CLOSE
        + EOS,
        ("", "", [("f", {"n": 1000.0, "o": {"a": [1, None]}})]),
    ),
    # Values may hold anything but the closing sequence, even EOS and other DSML tags.
    (
        "chat",
        OPEN + inv("f", par("v", f"x{EOS}<{D}invoke y")) + "\n" + CLOSE + EOS,
        ("", "", [("f", {"v": f"x{EOS}<{D}invoke y"})]),
    ),
    # Truncations the reference accepts: right after the block opener, after a header, after
    # `</｜DSML｜invoke`, after `</｜DSML｜parameter>\n`, and without the final EOS after the block.
    ("chat", f"\n\n<{D}tool_calls", ("", "", [])),
    ("chat", OPEN + f'<{D}invoke name="f">\n', ("", "", [("f", {})])),
    ("chat", OPEN + f'<{D}invoke name="f">\n{par("a", "b")}\n</{D}invoke', ("", "", [("f", {"a": "b"})])),
    ("chat", OPEN + f'<{D}invoke name="f">\n{par("a", "b")}\n', ("", "", [("f", {"a": "b"})])),
    ("chat", OPEN + inv("f") + "\n" + CLOSE, ("", "", [("f", {})])),
    (
        "thinking",
        "r</think>text with | pipes and <|DSML|invoke> ascii lookalikes" + EOS,
        ("r", "text with | pipes and <|DSML|invoke> ascii lookalikes", []),
    ),
]

BAD: list[tuple[str, str, str]] = [
    ("chat", "no end", "missing end-of-sentence"),
    ("thinking", "no close" + EOS, "think"),
    ("thinking", "never closed", "missing </think>"),
    ("thinking", "r" + OPEN + inv("f") + "\n" + CLOSE + EOS, "missing </think>"),
    ("chat", "a" + EOS + "b", "after the end-of-sentence"),
    ("chat", "a<think>b" + EOS, "special token"),
    ("chat", f"a{D}b" + EOS, "special token"),
    ("chat", OPEN + inv("f") + "\n" + CLOSE + "x" + EOS, "after the tool call block"),
    ("chat", OPEN + inv("f") + CLOSE + EOS, "expected '>\\n'"),
    ("chat", OPEN + inv("f", par("a", "1"), par("a", "2")) + "\n" + CLOSE + EOS, "duplicate"),
    # The one deliberate difference: the reference pastes invalid JSON into the arguments string.
    ("chat", OPEN + inv("f", par("a", "[1,", "false")) + "\n" + CLOSE + EOS, "not valid JSON"),
    ("chat", OPEN + f'<{D}invoke name="f">x\n</{D}invoke>\n' + CLOSE + EOS, "invoke header"),
    (
        "chat",
        OPEN + f'<{D}invoke name="f">\n<{D}parameter name="a">1</{D}parameter>\n</{D}invoke>\n' + CLOSE,
        "parameter",
    ),
    (
        "chat",
        OPEN + f'<{D}invoke name="f">\n<{D}parameter name="a" string="true">1/{D}parameter>\n</{D}invoke>',
        "parameter",
    ),
    ("chat", OPEN + f'<{D}invoke name="f">\n<{D}parameter name="a" string="true">unterminated', "parameter"),
    ("chat", OPEN, "missing"),
    ("chat", OPEN.rstrip("\n"), "expected"),
]


def _summary(msg: Any) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
    return msg.reasoning_content, msg.content, [(c.name, c.arguments) for c in msg.tool_calls]


def _stream(text: str, mode: str, cut: int) -> StreamParser:
    p = StreamParser(mode, strict=True)
    p.feed(text[:cut])
    p.feed(text[cut:])
    p.close()
    return p


@pytest.mark.parametrize(("mode", "text", "want"), OK)
def test_accepted_like_the_reference(mode: str, text: str, want: Any) -> None:
    assert _summary(parse_completion(text, mode)) == want
    for cut in range(len(text) + 1):
        assert _summary(_stream(text, mode, cut).result()) == want, cut


@pytest.mark.parametrize(("mode", "text", "reason"), BAD)
def test_rejected_like_the_reference(mode: str, text: str, reason: str) -> None:
    with pytest.raises(DSMLParseError) as info:
        parse_completion(text, mode)
    assert reason in info.value.reason
    assert 0 <= info.value.position <= len(text)
    for cut in range(len(text) + 1):
        p = _stream(text, mode, cut)
        assert p.error is not None, cut
        with pytest.raises(DSMLParseError):
            p.result()


def test_openai_arguments_string_is_built_like_the_reference() -> None:
    text = OPEN + inv("f", par("s", 'q"\n'), par("n", "1.50", "false")) + "\n" + CLOSE + EOS
    call = parse_completion(text, "chat").to_openai()["tool_calls"][0]
    # String values are JSON-escaped; other values are pasted exactly as written (1.50 stays 1.50).
    assert call["function"]["arguments"] == '{"s": "q\\"\\n", "n": 1.50}'


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(DSMLParseError):
        parse_completion(b"bytes" + b"", "chat")  # type: ignore[arg-type]
    with pytest.raises(DSMLParseError):
        parse_completion("x" + EOS, "reasoning")
