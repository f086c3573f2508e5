"""`parse_completion`: whole-text parsing, strict or tolerant, with lxml as the structural parser.

Both modes split the work the same way. A lexer that knows DSML's textual rules finds the tool call
block, decides where each tag and each raw value lies, and reports them to a `Skeleton`; lxml parses
the skeleton (XML with a placeholder where each value was) and the calls are read off lxml's tree,
values taken back from the placeholder table (see `skeleton.py` for why raw values never go through
XML).

* strict: the lexer is `strict.py`'s stop-string reading of DeepSeek's grammar (its exact acceptance
  set; layout errors are raised there, where the text is).
* tolerant: the lexer is the tolerant repair states (`_tolerant.py`, with `lexer.py` for the tag
  spellings) fed the whole text, reporting to the skeleton instead of assembling calls. Every repair
  that has to be decided tag by tag (an invoke left open, a stray closer, a torn call) is made there,
  so the skeleton handed to lxml is well-formed.

`StreamParser` keeps its incremental machine, because lxml cannot parse a growing text with the same
split-invariance guarantees; the tests run it against this path (a differential test) on every
chunking, so the two cannot drift.
"""

from __future__ import annotations

from .errors import DSMLParseError
from .skeleton import Skeleton
from .stream import StreamParser
from .strict import parse_strict
from .types import AssistantMessage


def parse_completion(text: str, thinking_mode: str, *, strict: bool = True) -> AssistantMessage:
    """Parse the text generated after the prompt (including the final EOS, if any).

    strict=True accepts exactly DeepSeek's reference grammar (see `strict.py`) and raises
    `DSMLParseError` otherwise. strict=False repairs the malformed variants seen in real V4 output and
    reports what it did in `warnings`; it never raises on a `str`.
    """
    if not isinstance(text, str):
        raise DSMLParseError(f"completion must be str, got {type(text).__name__}", 0)
    if thinking_mode not in ("chat", "thinking"):
        raise DSMLParseError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}", 0)
    if strict:
        return parse_strict(text, thinking_mode)
    lexer = _TolerantLexer(thinking_mode)
    lexer.feed(text)
    lexer.close()
    return lexer.message(len(text))


class _TolerantLexer(StreamParser):
    """The tolerant repair states run once over the whole text, reporting tags to a skeleton.

    Text (reasoning, content) and warnings are collected as the stream parser collects them; the
    call-assembly hooks are replaced: each tag goes to the skeleton, and `message()` reads the calls
    off lxml's tree. A call's own warnings (JSON kept as text) are spliced back in where the stream
    parser would report them, when its invoke closes.
    """

    def __init__(self, thinking_mode: str) -> None:
        super().__init__(thinking_mode, strict=False)
        self._sk = Skeleton()
        self._in_block = False
        self._call_warnings_at: list[int] = []

    def _open_block(self, at: int) -> None:
        self._close_block(at)
        self._sk.open_block(self._abs(at))
        self._in_block = True

    def _close_block(self, at: int) -> None:
        if self._in_block:
            self._sk.close_block(self._abs(at))
            self._in_block = False

    def _start_call(self, name: str) -> None:
        super()._start_call(name)
        self._sk.open_invoke(name, self._inv_at)

    def _set_param(self, name: str, raw: str, is_string: bool, at: int) -> None:
        super()._set_param(name, raw, is_string, at)
        self._sk.parameter(name, raw, is_string, at)

    def _end_call(self, at: int) -> bool:
        self._sk.close_invoke(self._abs(at))
        self._call_warnings_at.append(len(self._warnings))
        self._inv_name = None
        self._params = {}
        return True

    def _record_torn(self) -> None:
        if self._inv_name is None:  # cut inside a parameter that was outside any invoke
            self._sk.open_invoke(None, self._inv_at, torn=True)
        elif self._in_value and not self._p_discard:
            self._sk.parameter(self._p_name, "".join(self._p_chunks), self._p_string, self._p_at)
        self._sk.tear_invoke(self._abs(len(self._buf)))

    def message(self, end: int) -> AssistantMessage:
        self._close_block(end - self._base)
        calls, torn = self._sk.build(strict=False)
        warnings: list[str] = []
        done = 0
        for call, at in zip(calls, self._call_warnings_at, strict=True):
            warnings += self._warnings[done:at]
            warnings += call.warnings
            done = at
        warnings += self._warnings[done:]
        return AssistantMessage(
            reasoning_content="".join(self._reasoning),
            content="".join(self._content),
            tool_calls=calls,
            warnings=warnings,
            torn_call=torn,
        )
