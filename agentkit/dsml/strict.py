"""Whole-text strict parsing: exactly the completions DeepSeek's reference parser accepts.

The reference (`parse_message_from_completion_text`) reads the text with "find the next stop string"
steps and two anchored regexes. Its acceptance set has corners a grammar would not guess, and strict
mode reproduces them because they decide what counts as valid output:

* an invoke header is `<ws>name="NAME">\n` with an optional second newline; NAME is everything up to
  that ending, quotes and newlines included;
* a parameter is ` name="K" string="true|false">VALUE<` where K ends at the first `" string="…">`, and
  VALUE may be followed by one newline before `/｜DSML｜parameter`;
* the text may stop anywhere a stop string was about to be searched for (e.g. right after an invoke
  header, or after `</｜DSML｜invoke`): what was read so far is the result.

One deliberate difference: a `string="false"` value must be a single valid JSON value. The reference
pastes it into the arguments string unchecked, producing invalid JSON (or smuggling extra keys); a typed
`arguments` dict cannot carry that, so strict mode rejects it and tolerant mode keeps it as text.

This module is the strict *lexer*: it cuts the block into tags, names and raw values by the reference's
stop strings and checks the layout where the text is; it reports each tag to a `Skeleton`
(`skeleton.py`), and lxml's tree of that skeleton gives the calls. Every search remembers where its stop
string next occurs, so a text with many invokes and no closing tag stays linear instead of rescanning to
the end once per invoke.
"""

from __future__ import annotations

from .errors import DSMLParseError
from .skeleton import Skeleton
from .tokens import (
    EOS,
    FORBIDDEN_IN_TEXT,
    INVOKE_CLOSE,
    INVOKE_OPEN,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_END,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_START,
)
from .types import AssistantMessage, ToolCall

_STR_TRUE = '" string="true">'
_STR_FALSE = '" string="false">'
_STR_PREFIX = '" string="'


class _Finder:
    """`str.find` for a fixed set of needles with a per-needle cache of the next hit."""

    __slots__ = ("_next", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._next: dict[str, int] = {}

    def find(self, needle: str, start: int) -> int:
        # Starts only move forward, so a cached hit at or after `start` is still the first one, and a
        # cached miss (-1) stays a miss.
        hit = self._next.get(needle)
        if hit is not None and (hit == -1 or hit >= start):
            return hit
        hit = self.text.find(needle, start)
        self._next[needle] = hit
        return hit

    def first(self, start: int, *needles: str) -> tuple[int, str | None]:
        """Earliest hit among needles (ties go to the first listed); (len, None) when none."""
        best, which = len(self.text), None
        for needle in needles:
            hit = self.find(needle, start)
            if hit != -1 and hit < best:
                best, which = hit, needle
        return best, which


def invoke_name(header: str) -> str | None:
    """NAME from the text between `<｜DSML｜invoke` and the next stop, or None if malformed."""
    body = header.lstrip()
    if not body.startswith('name="'):
        return None
    rest = body[6:]
    if rest.endswith('">\n\n'):
        return rest[:-4]
    if rest.endswith('">\n'):
        return rest[:-3]
    return None


def split_parameter(content: str) -> tuple[str, bool, str] | None:
    """(name, is_string, raw value) from the text between `<｜DSML｜parameter` and `/｜DSML｜parameter`."""
    if not content.startswith(' name="'):
        return None
    at = 7
    while True:
        at = content.find(_STR_PREFIX, at)
        if at == -1:
            return None
        if content.startswith(_STR_TRUE, at):
            is_string, body = True, content[at + len(_STR_TRUE) :]
            break
        if content.startswith(_STR_FALSE, at):
            is_string, body = False, content[at + len(_STR_FALSE) :]
            break
        at += 1
    if body.endswith("<"):
        value = body[:-1]
    elif body.endswith("<\n"):
        value = body[:-2]
    else:
        return None
    return content[7:at], is_string, value


def _lex_block(f: _Finder, at: int, pos: int, sk: Skeleton) -> int:
    """Cut the block at `at` into tags by the reference's stop strings and report them to `sk`.

    Layout (the `>\n` between tags, header and parameter shapes, duplicate names) is checked here,
    where the text is; the structure goes to lxml through the skeleton. Returns where the block ends.
    """
    text, n = f.text, len(f.text)
    sk.open_block(at)
    complete = sk.mark()
    try:
        while pos < n:
            hit, stop = f.first(pos, INVOKE_OPEN, TOOL_CALLS_CLOSE)
            if text[pos:hit] != ">\n":
                raise DSMLParseError("tool call block: expected '>\\n' before the next tag", pos)
            if stop == TOOL_CALLS_CLOSE:
                sk.close_block(hit)
                return hit + len(TOOL_CALLS_CLOSE)
            if stop is None:
                raise DSMLParseError("tool call block: missing <｜DSML｜invoke or </｜DSML｜tool_calls>", n)
            call_at = hit
            pos = hit + len(INVOKE_OPEN)
            hit, stop = f.first(pos, PARAM_OPEN, INVOKE_CLOSE)
            name = invoke_name(text[pos:hit])
            if name is None:
                raise DSMLParseError('invoke header must be name="…"> followed by a newline', pos)
            sk.open_invoke(name, call_at)
            keys: set[str] = set()
            while stop == PARAM_OPEN:
                param_at, pos = hit, hit + len(PARAM_OPEN)
                hit, close = f.first(pos, PARAM_CLOSE)
                parts = split_parameter(text[pos:hit])
                if parts is None:
                    raise DSMLParseError(
                        'parameter must be name="…" string="true|false">…</｜DSML｜parameter>', pos
                    )
                key, is_string, value = parts
                if key in keys:
                    raise DSMLParseError(f"duplicate parameter name {key!r}", pos)
                keys.add(key)
                sk.parameter(key, value, is_string, param_at)
                pos = hit + len(PARAM_CLOSE) if close else n
                hit, stop = f.first(pos, PARAM_OPEN, INVOKE_CLOSE)
                if text[pos:hit] != ">\n":
                    raise DSMLParseError("parameter: expected '>\\n' after </｜DSML｜parameter", pos)
            sk.close_invoke(hit)
            complete = sk.mark()
            pos = hit + len(stop) if stop else n
    except DSMLParseError:
        # The reference decodes each invoke as it closes, so an error in an earlier invoke's values
        # comes first: build what was complete before re-raising the layout error.
        sk.truncate(complete)
        sk.close_block(n)
        sk.build(strict=True)
        raise
    sk.close_block(n)
    return pos


def parse_strict(text: str, thinking_mode: str) -> AssistantMessage:
    if thinking_mode not in ("chat", "thinking"):
        raise DSMLParseError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}", 0)
    f = _Finder(text)
    n = len(text)
    pos = 0
    reasoning = ""
    if thinking_mode == "thinking":
        hit, stop = f.first(0, THINK_END, TOOL_CALLS_START)
        if stop != THINK_END:
            raise DSMLParseError("missing </think>", hit)
        reasoning = text[:hit]
        pos = hit + len(THINK_END)
    hit, stop = f.first(pos, EOS, TOOL_CALLS_START)
    content_at = pos
    content = text[pos:hit]
    calls: list[ToolCall] = []
    if stop is None:
        raise DSMLParseError("missing end-of-sentence token", n)
    if stop == EOS:
        pos = hit + len(EOS)
    else:
        sk = Skeleton()
        pos = _lex_block(f, hit + 2, hit + len(TOOL_CALLS_START), sk)
        calls = sk.build(strict=True)[0]
        hit, stop = f.first(pos, EOS)
        if hit != pos:
            raise DSMLParseError("unexpected text after the tool call block", pos)
        pos = hit + len(EOS) if stop else n
    if pos != n:
        raise DSMLParseError("unexpected text after the end-of-sentence token", pos)
    for label, part, base in (("content", content, content_at), ("reasoning", reasoning, 0)):
        for token in FORBIDDEN_IN_TEXT:
            at = part.find(token)
            if at != -1:
                raise DSMLParseError(f"special token {token!r} inside {label}", base + at)
    return AssistantMessage(reasoning_content=reasoning, content=content, tool_calls=calls)
