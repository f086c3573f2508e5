"""Shared machinery of the stream parser: buffer, events, and assembling calls.

The states themselves live in `stream.py` (strict) and `_tolerant.py` (tolerant); this base keeps the
buffer with a consumed-index (compacted once per feed, so many small decisions on a large chunk stay
linear), the accumulated message, and the one place where an invoke becomes a `ToolCall`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .calls import build_call
from .errors import DSMLParseError
from .tokens import DSML
from .types import (
    ContentDelta,
    Event,
    ParameterDelta,
    ParseError,
    ParseWarning,
    ReasoningDelta,
    ToolCall,
    ToolCallEnd,
    ToolCallStart,
    ToolCallTorn,
    TornCall,
)


def held_suffix(text: str, start: int, markers: Iterable[str]) -> int:
    """Index in `text` where the longest suffix that is a proper prefix of a marker begins."""
    best = len(text)
    for m in markers:
        lo = max(start, len(text) - len(m) + 1)
        at = text.find(m[0], lo)
        while at != -1:
            if at >= best:
                break
            if m.startswith(text[at:]):
                best = at
                break
            at = text.find(m[0], at + 1)
    return best


class _Base:
    def __init__(self, thinking_mode: str, strict: bool = False) -> None:
        if thinking_mode not in ("chat", "thinking"):
            raise ValueError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")
        self.strict = strict
        self.thinking_mode = thinking_mode
        self._buf = ""
        self._pos = 0  # consumed up to here (index into _buf)
        self._base = 0  # absolute offset of _buf[0]
        self._scan = 0  # where the current state's search may resume (index into _buf)
        self._out: list[Event] = []
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._warnings: list[str] = []
        self._torn: TornCall | None = None
        self._error: ParseError | None = None
        self._closed = False
        # current invoke / parameter
        self._inv_name: str | None = None
        self._inv_at = 0
        self._params: dict[str, tuple[str, bool]] = {}
        self._p_name = ""
        self._p_string: bool = True
        self._p_chunks: list[str] = []
        self._p_flag: str | None = None
        self._p_discard = False
        self._p_at = 0  # absolute offset of the current parameter's tag
        # tolerant block context
        self._dialect = DSML
        self._explicit = True
        self._in_reasoning_block = False
        self._after_block = False
        self._block_invokes = 0  # invokes started in the current tool-call block
        self._pending_ws_from = -1
        self._at_start = True
        self._stray_warned = False
        self._variant_warned = False
        self._layout_warned = False
        self._ws_run = ""
        self._ws_at = -1
        self._in_value = False
        self._wait: Callable[[str], bool] | None = None
        self._wait_overlap = 0
        self._wait_tail = ""
        self._parked: list[str] = []
        self._state: Callable[[bool], bool]

    # ------------------------------------------------------------------------------------ plumbing

    def _take(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _run(self, final: bool) -> None:
        while self._error is None and self._state(final):
            pass
        if self._pos > 0:
            self._buf = self._buf[self._pos :]
            self._base += self._pos
            self._scan = max(0, self._scan - self._pos)
            self._pending_ws_from = max(-1, self._pending_ws_from - self._pos)
            self._pos = 0

    def _abs(self, i: int) -> int:
        return self._base + i

    def _goto(self, state: Callable[[bool], bool], pos: int) -> bool:
        self._state = state
        self._pos = pos
        self._scan = pos
        return True

    def _wait_for(self, may_progress: Callable[[str], bool], overlap: int) -> bool:
        """Park the state: until `may_progress(window)` holds for new text, chunks are only collected.

        Appending every chunk to a buffer that is waiting for a far-away terminator (a huge header, a
        long whitespace run) would copy the buffer once per chunk, i.e. quadratic time.
        """
        self._wait = may_progress
        self._wait_overlap = overlap
        self._wait_tail = self._buf[len(self._buf) - overlap :] if overlap else ""
        return False

    def _fail(self, reason: str, at: int) -> bool:
        self._error = ParseError(reason, self._abs(at))
        self._out.append(self._error)
        return False

    def _warn(self, message: str, at: int, code: str = "repair") -> None:
        self._warnings.append(message)
        self._out.append(ParseWarning(message, self._abs(at), code))

    def _reason(self, text: str) -> None:
        if text:
            self._reasoning.append(text)
            self._out.append(ReasoningDelta(text))

    def _say(self, text: str) -> None:
        if text:
            self._content.append(text)
            self._out.append(ContentDelta(text))

    def _value(self, text: str) -> None:
        if text and not self._p_discard:
            self._p_chunks.append(text)
            self._out.append(ParameterDelta(len(self._calls), self._p_name, self._p_string, text))

    def _earliest(self, start: int, needles: Iterable[str]) -> tuple[int, str | None]:
        best, which = len(self._buf), None
        for needle in needles:
            hit = self._buf.find(needle, start, best + len(needle))
            if hit != -1 and hit < best:
                best, which = hit, needle
        return best, which

    def _scan_text(self, stops: tuple[str, ...], final: bool) -> tuple[int, str | None, int]:
        """(hit, marker, emit_until): the first complete marker, unless a growing prefix precedes it."""
        buf, pos = self._buf, self._pos
        hit, which = self._earliest(max(pos, self._scan), stops)
        hold = len(buf) if final else held_suffix(buf, pos, stops)
        if which is not None and hold < hit:
            which, hit = None, len(buf)
        emit_until = hit if which is not None else hold
        self._scan = max(pos, min(hold, len(buf) - max(len(s) for s in stops) + 1))
        return hit, which, emit_until

    # ------------------------------------------------------------------------------- call assembly

    def _start_call(self, name: str) -> None:
        self._block_invokes += 1
        self._inv_name = name
        self._params = {}
        self._out.append(ToolCallStart(len(self._calls), name))

    def _start_param(self, name: str, string: bool, flag: str | None, discard: bool = False) -> None:
        self._p_name, self._p_string, self._p_flag, self._p_discard = name, string, flag, discard
        self._p_chunks = []
        self._in_value = True
        if not discard:
            self._out.append(ParameterDelta(len(self._calls), name, string, ""))

    def _set_param(self, name: str, raw: str, is_string: bool, at: int) -> None:
        """A parameter of the open invoke is complete (`at`: absolute offset of its tag)."""
        self._params[name] = (raw, is_string)

    def _open_block(self, at: int) -> None:
        """A tool call block starts at buffer index `at` (whole-text parsing builds its skeleton here)."""

    def _close_block(self, at: int) -> None:
        """The tool call block ends at buffer index `at`."""

    def _end_call(self, at: int) -> bool:
        assert self._inv_name is not None
        try:
            call = build_call(self._inv_name, self._params, strict=self.strict, position=self._inv_at)
        except DSMLParseError as exc:
            self._error = ParseError(exc.reason, exc.position)
            self._out.append(self._error)
            return False
        for w in call.warnings:
            self._warn(w, at, "invalid_json")
        self._out.append(ToolCallEnd(len(self._calls), call))
        self._calls.append(call)
        self._inv_name = None
        self._params = {}
        return True

    def _tear(self, at: int) -> None:
        self._record_torn()
        self._warn(f"output ended inside tool call {self._inv_name!r}; it was not dispatched", at)
        self._inv_name = None
        self._params = {}

    def _record_torn(self) -> None:
        args: dict[str, Any] = {}
        for key, (raw, _s) in self._params.items():
            args[key] = raw
        if self._in_value and not self._p_discard:
            args[self._p_name] = "".join(self._p_chunks)
        self._torn = TornCall(name=self._inv_name, arguments=args, position=self._inv_at)
        self._out.append(ToolCallTorn(len(self._calls), self._torn))
