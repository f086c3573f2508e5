"""Incremental parsing of a completion as it streams in: `StreamParser`.

Split invariance is the design constraint: for any division of a text into chunks, the events (after
merging adjacent deltas of one kind) are the same as for the whole text. Two rules give it:

1. Decisions are made only on complete evidence. Text that could still turn into a marker (a proper
   prefix of `</think>`, of the EOS token, of a DSML tag...) is held back, and a complete marker is not
   acted on while an earlier, still-growing marker prefix could swallow it.
2. Whatever is held back is released the same way whether it arrived in one piece or many: on an error,
   the text before the offending marker is emitted first, then the error.

A call is assembled by the machine as soon as its invoke closes, so it can be dispatched before the
rest of the output exists.

Strict mode is DeepSeek's grammar (see `strict.py`; tests run both against each other on every chunking).
Tolerant mode recognises tags with the lexer in `lexer.py` and repairs the drift seen in real V4 output:
delimiter spellings, missing wrapper, missing `</think>`, unclosed invokes, self-closing invokes, CDATA
values, missing EOS, truncation (the cut invoke is reported torn and never dispatched), and JSON that
does not parse (kept as text). No piece of content the tolerant parser passes on contains a DSML tag
or special token (text on both sides of a dropped tag is not re-scanned as one string).

Whole-text parsing (`parse.py`) is a different path: a lexer (`strict.py`'s in strict mode, the
tolerant states below in tolerant mode) reports the tags of the whole text to an XML skeleton whose
values are placeholders, and lxml parses that skeleton into the block structure. lxml cannot do that
incrementally with these guarantees (it would have to be restarted on every chunk, or its push parser
would decide on incomplete evidence), so the stream keeps this machine; the tests run the two against
each other on random texts and chunkings (`parse_completion` equals the stream's result, strict and
tolerant), so they cannot drift. The tolerant states are shared: whole-text parsing runs them once with
the call-assembly hooks (`_set_param`, `_end_call`, `_record_torn`, `_open_block`/`_close_block`)
pointed at the skeleton.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ._machine import held_suffix
from ._tolerant import _TolerantStates
from .errors import DSMLParseError
from .strict import invoke_name
from .tokens import (
    BOS,
    DSML,
    EOS,
    INVOKE_CLOSE,
    INVOKE_OPEN,
    PARAM_CLOSE,
    PARAM_OPEN,
    THINK_END,
    THINK_START,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_START,
)
from .types import (
    AssistantMessage,
    ContentDelta,
    Event,
    ParameterDelta,
    ParseError,
    ReasoningDelta,
)

__all__ = ["StreamParser", "held_suffix", "merge_deltas"]

_STR_PREFIX = '" string="'
_HEADER_MARKS = ('" string="true">', '" string="false">')
_PARAM_END_MARKS = (PARAM_CLOSE, "<" + PARAM_CLOSE, "<\n" + PARAM_CLOSE)


def _contains(*needles: str) -> Callable[[str], bool]:
    return lambda window: any(n in window for n in needles)


def merge_deltas(events: Iterable[Event]) -> list[Event]:
    """Join adjacent deltas of the same stream (and parameter); drop empty ones. For comparisons/UIs."""
    out: list[Event] = []
    for ev in events:
        prev = out[-1] if out else None
        if isinstance(ev, ReasoningDelta) and isinstance(prev, ReasoningDelta):
            out[-1] = ReasoningDelta(prev.text + ev.text)
        elif isinstance(ev, ContentDelta) and isinstance(prev, ContentDelta):
            out[-1] = ContentDelta(prev.text + ev.text)
        elif (
            isinstance(ev, ParameterDelta)
            and isinstance(prev, ParameterDelta)
            and (prev.index, prev.name) == (ev.index, ev.name)
        ):
            out[-1] = ParameterDelta(ev.index, ev.name, ev.string, prev.text + ev.text)
        elif isinstance(ev, (ReasoningDelta, ContentDelta)) and not ev.text:
            continue
        else:
            out.append(ev)
    return out


class StreamParser(_TolerantStates):
    """Feed text as it arrives; get events. `result()` after `close()` gives the whole message.

    A `ToolCallEnd` is emitted as soon as its invoke closes, so a caller can dispatch before the rest
    of the block (or the turn) has been generated.
    """

    def __init__(self, thinking_mode: str, strict: bool = False) -> None:
        super().__init__(thinking_mode, strict)
        if strict:
            self._state = self._s_reasoning if thinking_mode == "thinking" else self._s_content
        else:
            self._state = self._t_reasoning if thinking_mode == "thinking" else self._t_content

    # --------------------------------------------------------------------------------- public API

    def feed(self, text: str) -> list[Event]:
        if self._closed:
            raise ValueError("feed() after close()")
        if not isinstance(text, str):
            raise TypeError(f"feed() takes str, got {type(text).__name__}")
        if self._error is None and text:
            if self._wait is not None:
                window = self._wait_tail + text
                if not self._wait(window):
                    self._parked.append(text)
                    if self._wait_overlap:
                        self._wait_tail = window[len(window) - self._wait_overlap :]
                    return self._take()
                self._unpark()
                self._buf += text
                self._run(final=False)
            elif self._buf or not self._fast_path(text):
                self._buf += text
                self._run(final=False)
        return self._take()

    def _unpark(self) -> None:
        self._wait = None
        if self._parked:
            self._buf += "".join(self._parked)
            self._parked = []

    def _fast_path(self, text: str) -> bool:
        """A token-sized chunk that cannot touch a marker goes straight out (nothing is held back)."""
        state = self._state
        if state in (self._s_reasoning, self._s_content):
            if "<" in text or "\n" in text or "｜" in text:
                return False
            (self._reason if state == self._s_reasoning else self._say)(text)
        elif state in (self._t_reasoning, self._t_content):
            if "<" in text or text[-1].isspace() or self._at_start or self._after_block:
                return False
            self._emit_text(text, state == self._t_reasoning)
        elif state == self._t_value or state == self._s_param_value:
            if "<" in text or (state == self._s_param_value and "/" in text):
                return False
            self._value(text)
        else:
            return False
        self._base += len(text)
        return True

    def close(self) -> list[Event]:
        if not self._closed:
            self._closed = True
            self._unpark()
            if self._error is None:
                self._run(final=True)
            if self._error is None:
                self._end_of_input()
        return self._take()

    @property
    def error(self) -> ParseError | None:
        return self._error

    def result(self) -> AssistantMessage:
        """The parsed message (after close). Strict mode raises the parse error instead."""
        if not self._closed:
            raise ValueError("result() before close()")
        if self._error is not None:
            raise DSMLParseError(self._error.reason, self._error.position)
        return AssistantMessage(
            reasoning_content="".join(self._reasoning),
            content="".join(self._content),
            tool_calls=list(self._calls),
            warnings=list(self._warnings),
            torn_call=self._torn,
        )

    # ------------------------------------------------------------------------------- strict states

    _S_REASONING_STOPS = (THINK_END, "\n\n<" + DSML + "tool_calls", BOS, EOS, THINK_START, DSML)
    _S_CONTENT_STOPS = (EOS, TOOL_CALLS_START, BOS, THINK_START, THINK_END, DSML)

    def _s_reasoning(self, final: bool) -> bool:
        hit, which, until = self._scan_text(self._S_REASONING_STOPS, final)
        self._reason(self._buf[self._pos : until])
        self._pos = until
        if which == THINK_END:
            return self._goto(self._s_content, hit + len(THINK_END))
        if which == TOOL_CALLS_START:
            return self._fail("missing </think> before the tool call block", hit)
        if which is not None:
            return self._fail(f"special token {which!r} inside reasoning", hit)
        if final:
            return self._fail("missing </think>", len(self._buf))
        return False

    def _s_content(self, final: bool) -> bool:
        hit, which, until = self._scan_text(self._S_CONTENT_STOPS, final)
        self._say(self._buf[self._pos : until])
        self._pos = until
        if which == EOS:
            return self._goto(self._s_done, hit + len(EOS))
        if which == TOOL_CALLS_START:
            return self._goto(self._s_block, hit + len(TOOL_CALLS_START))
        if which is not None:
            return self._fail(f"special token {which!r} inside content", hit)
        if final:
            return self._fail("missing end-of-sentence token", len(self._buf))
        return False

    def _s_done(self, final: bool) -> bool:
        if self._pos < len(self._buf):
            return self._fail("unexpected text after the end-of-sentence token", self._pos)
        return False

    def _expect(self, targets: tuple[str, ...], final: bool) -> str | None:
        """Which target the unconsumed text starts with; '' while undecided; None when impossible."""
        rest = self._buf[self._pos : self._pos + max(len(t) for t in targets)]
        for t in targets:
            if rest.startswith(t):
                return t
        if not final and any(t.startswith(rest) for t in targets):
            return ""
        return None

    def _s_block(self, final: bool) -> bool:
        opened, closed = ">\n" + INVOKE_OPEN, ">\n" + TOOL_CALLS_CLOSE
        got = self._expect((opened, closed), final)
        if got == opened:
            self._inv_at = self._abs(self._pos + 2)
            return self._goto(self._s_header, self._pos + len(opened))
        if got == closed:
            return self._goto(self._s_after_block, self._pos + len(closed))
        if got is None and not (final and self._pos == len(self._buf)):
            return self._fail("tool call block: expected '>\\n' then an invoke or the closing tag", self._pos)
        return False

    def _s_header(self, final: bool) -> bool:
        hit, which, _ = self._scan_text((PARAM_OPEN, INVOKE_CLOSE), final)
        if which is None and not final:
            return self._wait_for(_contains(PARAM_OPEN, INVOKE_CLOSE), len(PARAM_OPEN))
        name = invoke_name(self._buf[self._pos : hit])
        if name is None:
            return self._fail('invoke header must be name="…"> followed by a newline', self._pos)
        self._start_call(name)
        if which == PARAM_OPEN:
            return self._goto(self._s_param_head, hit + len(PARAM_OPEN))
        if not self._end_call(self._pos):
            return False
        if which is None:  # the text ended right after the header: the reference accepts the call
            return self._goto(self._s_block, len(self._buf))
        return self._goto(self._s_block, hit + len(INVOKE_CLOSE))

    def _s_param_head(self, final: bool) -> bool:
        buf, pos = self._buf, self._pos
        lead = ' name="'
        if not buf.startswith(lead, pos):
            if not final and len(buf) - pos < len(lead) and lead.startswith(buf[pos:]):
                return False
            return self._fail('parameter must start with name="', pos)
        close = buf.find(PARAM_CLOSE, max(pos, self._scan - len(PARAM_CLOSE)))
        limit = close if close != -1 else len(buf)
        at = buf.find(_STR_PREFIX, max(pos + len(lead), self._scan - len(_STR_PREFIX) - 7), limit)
        while at != -1:
            tail = buf[at : at + 17]
            mark = next((m for m in _HEADER_MARKS if tail.startswith(m)), None)
            if mark is not None:
                name = buf[pos + len(lead) : at]
                if name in self._params:
                    return self._fail(f"duplicate parameter name {name!r}", pos)
                self._p_at = self._abs(pos - len(PARAM_OPEN))
                self._start_param(name, mark == _HEADER_MARKS[0], None)
                return self._goto(self._s_param_value, at + len(mark))
            if close == -1 and not final and any(m.startswith(tail) for m in _HEADER_MARKS):
                self._scan = at
                return False
            at = buf.find(_STR_PREFIX, at + 1, limit)
        if close != -1 or final:
            return self._fail('parameter must be name="…" string="true|false">…', pos)
        self._scan = len(buf)
        return self._wait_for(_contains(*_HEADER_MARKS, PARAM_CLOSE), len(_HEADER_MARKS[1]))

    def _s_param_value(self, final: bool) -> bool:
        _, which, until = self._scan_text(_PARAM_END_MARKS, final)
        if which is None:
            if final:
                self._value(self._buf[self._pos : until])
                return self._fail("the text ends inside a parameter value", len(self._buf))
            self._value(self._buf[self._pos : until])
            self._pos = until
            return False
        # The value ends at the first `/｜DSML｜parameter`; it must be preceded by `<` or `<\n`.
        close = self._buf.find(PARAM_CLOSE, self._pos)
        body = self._buf[self._pos : close]
        if body.endswith("<"):
            keep = len(body) - 1
        elif body.endswith("<\n"):
            keep = len(body) - 2
        else:
            self._value(body)
            return self._fail("parameter value must end with '<' before /｜DSML｜parameter", close)
        self._value(body[:keep])
        self._set_param(self._p_name, "".join(self._p_chunks), self._p_string, self._p_at)
        self._in_value = False
        return self._goto(self._s_after_param, close + len(PARAM_CLOSE))

    def _s_after_param(self, final: bool) -> bool:
        more, done = ">\n" + PARAM_OPEN, ">\n" + INVOKE_CLOSE
        got = self._expect((more, done), final)
        if got == more:
            return self._goto(self._s_param_head, self._pos + len(more))
        if got == done:
            if not self._end_call(self._pos):
                return False
            return self._goto(self._s_block, self._pos + len(done))
        if got is None:
            if final and self._buf[self._pos :] == ">\n":  # the reference accepts this truncation
                return self._end_call(self._pos) and self._goto(self._s_block, len(self._buf))
            return self._fail("parameter: expected '>\\n' then a parameter or </｜DSML｜invoke", self._pos)
        return False

    def _s_after_block(self, final: bool) -> bool:
        got = self._expect((EOS,), final)
        if got == EOS:
            return self._goto(self._s_done, self._pos + len(EOS))
        if got is None and not (final and self._pos == len(self._buf)):
            return self._fail("unexpected text after the tool call block", self._pos)
        return False

    def _end_of_input(self) -> None:
        if self.strict:
            return
        if self._in_value or self._inv_name is not None:
            self._tear(len(self._buf))
        if self._state == self._t_block and self._block_invokes == 0:
            self._warn("tool call block holds no call", len(self._buf), "empty_block")
        if self._state in (self._t_reasoning,):
            self._warn("output ended without </think>", len(self._buf))
        if self._state in (self._t_reasoning, self._t_content, self._t_block, self._t_value):
            self._warn("output ended without the end-of-sentence token", len(self._buf))
