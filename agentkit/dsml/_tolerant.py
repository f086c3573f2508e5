"""Tolerant states of the stream parser: the repairs, each tied to output seen in the wild.

Repairs (research §5.2 and the issues cited in tests/fixtures/dsml/variants/): any delimiter spelling
the lexer accepts; a block that starts inside the reasoning (no `</think>`); an `invoke` without the
`tool_calls` wrapper; an invoke left open before the next one or before `</tool_calls>`; self-closing
invokes (zero-argument calls, or a parameter whose value sits in the `string` attribute); parameters
without a `string` flag; CDATA-wrapped values; JSON that does not parse (kept as text); stray closers
and unknown DSML tags (dropped, never shown as content); text after the block; missing EOS; output cut
inside a call (reported torn, never dispatched).

These states are the tolerant lexer/repair layer of both paths: the stream parser assembles calls from
them directly, whole-text parsing (`parse.py`) has them report every tag to the lxml skeleton. Each
repair is decided here, tag by tag, so the skeleton is always well-formed.

Agreement with strict mode: on every text strict mode accepts, tolerant mode returns the same message,
except (a) texts whose content, names or values contain a DSML tag in a non-canonical spelling (tolerant
reads it as markup), and (b) text cut off inside an invoke, which the reference still dispatches but
tolerant mode reports as torn, because a call cut short may be missing arguments.
"""

from __future__ import annotations

import json

from ._machine import _Base
from .calls import decode_json_value
from .lexer import PARTIAL, Tag, match_tag
from .policy import valid_tool_name
from .tokens import BOS, EOS, THINK_END, THINK_START
from .types import ParameterDelta

_SPECIALS = (THINK_END, EOS, BOS, THINK_START)
_BLOCK_NAMES = ("tool_calls", "function_calls")
_CDATA_OPEN, _CDATA_CLOSE = "<![CDATA[", "]]>"


def _has_lt(window: str) -> bool:
    return "<" in window


def _not_blank(window: str) -> bool:
    return not window.isspace()


def unwrap_cdata(value: str) -> str | None:
    """The text of a value made only of CDATA sections (and whitespace around), else None."""
    body = value.strip()
    if not body.startswith(_CDATA_OPEN) or not body.endswith(_CDATA_CLOSE):
        return None
    parts = []
    at = 0
    while at < len(body):
        if not body.startswith(_CDATA_OPEN, at):
            return None
        end = body.find(_CDATA_CLOSE, at + len(_CDATA_OPEN))
        if end == -1:
            return None
        parts.append(body[at + len(_CDATA_OPEN) : end])
        at = end + len(_CDATA_CLOSE)
    return "".join(parts)


class _TolerantStates(_Base):
    # ------------------------------------------------------------------------ reasoning / content

    def _t_reasoning(self, final: bool) -> bool:
        return self._t_text(final, reasoning=True)

    def _t_content(self, final: bool) -> bool:
        return self._t_text(final, reasoning=False)

    def _emit_text(self, text: str, reasoning: bool) -> None:
        if reasoning:
            self._reason(text)
            return
        if text and self._after_block and not text.isspace():
            self._after_block = False
            self._warn("text after the tool call block kept as content", self._pos)
        self._say(text)

    def _t_text(self, final: bool, reasoning: bool) -> bool:
        buf, pos = self._buf, self._pos
        if reasoning and self._at_start:
            if buf.startswith(THINK_START, pos):
                self._warn("completion repeats <think>; dropped", pos)
                self._at_start = False
                return self._goto(self._state, pos + len(THINK_START))
            if not final and len(buf) - pos < len(THINK_START) and THINK_START.startswith(buf[pos:]):
                return False
            self._at_start = False
        if not reasoning and self._after_block:
            j = pos
            while j < len(buf) and buf[j].isspace():
                j += 1
            if j > pos:
                # Whitespace after the block: dropped before the end of the turn, kept before more text.
                if j == len(buf) and not final:
                    return self._wait_for(_not_blank, 0)
                if j == len(buf) or buf.startswith(EOS, j):
                    return self._goto(self._state, j)
                if not final and len(buf) - j < len(EOS) and EOS.startswith(buf[j:]):
                    return False
                self._emit_text(buf[pos:j], reasoning)
                return self._goto(self._state, j)
        i = max(pos, self._scan)
        hold = len(buf)
        while True:
            lt = buf.find("<", i)
            if lt == -1:
                break
            special = next((sp for sp in _SPECIALS if buf.startswith(sp, lt)), None)
            if special is None:
                if not final and any(len(buf) - lt < len(sp) and sp.startswith(buf[lt:]) for sp in _SPECIALS):
                    hold = lt
                    break
                m = match_tag(buf, lt, final)
                if m is PARTIAL:
                    hold = lt
                    break
                if m is None:
                    i = lt + 1
                    continue
                assert isinstance(m, Tag)
                return self._t_tag_in_text(m, reasoning)
            return self._t_special_in_text(special, lt, reasoning)
        # No decision yet: emit what cannot belong to a marker, keeping trailing whitespace back
        # (it is dropped if a tool call block follows).
        until = len(buf) if final else hold
        seg = buf[pos:until]
        keep = len(seg) if final else len(seg.rstrip())
        self._emit_text(seg[:keep], reasoning)
        self._pos = pos + keep
        self._scan = until
        if not final and until == len(buf) and keep < len(seg):
            return self._wait_for(_not_blank, 0)  # only whitespace is held
        return False

    def _t_special_in_text(self, special: str, at: int, reasoning: bool) -> bool:
        self._emit_text(self._buf[self._pos : at], reasoning)
        after = at + len(special)
        if special == EOS:
            if reasoning:
                self._warn("output ended without </think>", at)
            return self._goto(self._t_done, after)
        if special == THINK_END:
            if reasoning:
                return self._goto(self._t_content, after)
            if not self._in_reasoning_block:
                self._warn("stray </think> in content dropped", at)
            return self._goto(self._state, after)
        self._warn(f"stray {special} dropped", at)
        return self._goto(self._state, after)

    def _t_tag_in_text(self, tag: Tag, reasoning: bool) -> bool:
        seg = self._buf[self._pos : tag.start]
        opens_block = not tag.closing and (tag.name in _BLOCK_NAMES or tag.name == "invoke")
        if not opens_block:
            self._emit_text(seg, reasoning)
            self._warn(f"stray DSML tag <{'/' if tag.closing else ''}{tag.name}> dropped", tag.start)
            return self._goto(self._state, tag.end)
        if tag.name == "invoke" and (not tag.canonical or "name" not in tag.attrs):
            name = tag.attrs.get("name", "")
            if not valid_tool_name(name):
                # Not a call: prose that quotes (part of) a DSML tag. It stays text, word for word.
                self._emit_text(self._buf[self._pos : tag.start + 1], reasoning)
                return self._goto(self._state, tag.start + 1)
        # The canonical block follows a blank line that belongs to neither side; other whitespace is text.
        self._emit_text(seg[:-2] if seg.endswith("\n\n") else seg, reasoning)
        if reasoning:
            self._in_reasoning_block = True
            self._warn(
                "tool call block inside the reasoning (no </think> before it)", tag.start, "call_in_reasoning"
            )
        self._block_invokes = 0
        self._open_block(tag.start)
        self._dialect = tag.delim
        self._explicit = tag.name != "invoke"
        self._variant_warned = False
        self._layout_warned = False
        if tag.name == "invoke":
            self._warn("invoke without a tool_calls wrapper", tag.start)
        elif tag.name != "tool_calls":
            self._warn(f"V3.2 wrapper name {tag.name!r} read as tool_calls", tag.start)
        self._goto(self._t_block, tag.end)
        if tag.name == "invoke":
            return self._t_handle_block_tag(tag)
        self._note_variant(tag)
        return True

    # -------------------------------------------------------------------------------------- block

    def _note_variant(self, tag: Tag) -> None:
        if not tag.canonical and not self._variant_warned:
            self._variant_warned = True
            detail = "; ".join(tag.notes) or f"delimiter {tag.delim!r}"
            self._warn(f"non-canonical DSML spelling repaired ({detail})", tag.start)

    def _t_block(self, final: bool) -> bool:
        buf = self._buf
        j = self._pos
        while j < len(buf) and buf[j].isspace():
            j += 1
        if j > self._pos:
            if self._ws_at < 0:
                self._ws_at = self._abs(self._pos)
            self._ws_run += buf[self._pos : j][:3]
        self._pos = j
        if j >= len(buf):
            return False
        ws_run, ws_at = self._ws_run, self._ws_at if self._ws_at >= 0 else self._abs(j)
        if buf[j] != "<":
            self._ws_run, self._ws_at = "", -1
            return self._t_stray(j, final)
        if buf.startswith(EOS, j):
            self._ws_run, self._ws_at = "", -1
            if self._inv_name is not None:
                self._tear(j)
            if self._explicit:
                self._warn("tool call block not closed before the end-of-sentence token", j)
            self._finish_block(j)
            return self._goto(self._t_done, j + len(EOS))
        if buf.startswith(THINK_END, j):
            self._ws_run, self._ws_at = "", -1
            if not self._in_reasoning_block:
                self._warn("stray </think> in the tool call block dropped", j)
            return self._goto(self._t_block, j + len(THINK_END))
        if (
            not final
            and len(buf) - j < len(EOS)
            and (EOS.startswith(buf[j:]) or THINK_END.startswith(buf[j:]))
        ):
            return False
        m = match_tag(buf, j, final)
        if m is PARTIAL:
            return False
        if m is None:
            self._ws_run, self._ws_at = "", -1
            return self._t_stray(j, final)
        assert isinstance(m, Tag)
        self._ws_run, self._ws_at = "", -1
        # Between tags the encoder writes one newline (two after an argument-less header).
        if ws_run not in ("\n", "\n\n") and not self._layout_warned:
            self._layout_warned = True
            self._warn("non-canonical whitespace between DSML tags", ws_at - self._base)
        self._pos = m.end
        return self._t_handle_block_tag(m)

    def _t_stray(self, j: int, final: bool) -> bool:
        if not self._explicit and self._inv_name is None:
            # A wrapper-less block ends where ordinary text resumes.
            self._finish_block(j)
            self._after_block = True
            return self._goto(self._t_content, j)
        k = self._buf.find("<", j + 1)
        if k == -1:
            if not final:
                return self._wait_for(_has_lt, 0)
            k = len(self._buf)
        if self._json_body(self._buf[j:k], j):
            return self._goto(self._t_block, k)
        self._warn("stray text inside the tool call block ignored", j, "lost_text")
        return self._goto(self._t_block, k)

    def _finish_block(self, at: int) -> None:
        if self._block_invokes == 0:
            self._warn("tool call block holds no call", at, "empty_block")
        self._close_block(at)

    def _json_body(self, text: str, at: int) -> bool:
        """An invoke whose body is a JSON object instead of parameters (a variant SGLang accepts):
        its members become the arguments, exactly as written. Anything else is not a body."""
        if self._inv_name is None or self._params or self._in_value:
            return False
        ok, value = decode_json_value(text.strip())
        if not ok or not isinstance(value, dict) or not value:
            return False
        for key, v in value.items():
            raw, is_string = (v, True) if isinstance(v, str) else (json.dumps(v, ensure_ascii=False), False)
            self._set_param(str(key), raw, is_string, self._abs(at))
            self._out.append(ParameterDelta(len(self._calls), str(key), is_string, raw))
        self._warn("invoke body written as a JSON object; read as its arguments", at, "json_body")
        return True

    def _t_handle_block_tag(self, tag: Tag) -> bool:
        self._note_variant(tag)
        attrs = tag.attrs
        if tag.name == "invoke" and not tag.closing:
            flag = attrs.get("string")
            if tag.self_closing and self._inv_name is not None and flag not in (None, "true", "false"):
                # `<｜｜DSML｜｜invoke name="cmd" string="echo alpha" />` inside an invoke: a parameter.
                self._warn("parameter written as a self-closing invoke", tag.start)
                name = attrs.get("name", "")
                self._set_param(name, flag or "", True, self._abs(tag.start))
                self._out.append(ParameterDelta(len(self._calls), name, True, flag or ""))
                return True
            if self._inv_name is not None:
                self._warn(f"invoke {self._inv_name!r} not closed before the next one", tag.start)
                self._end_call(tag.start)
            self._inv_at = self._abs(tag.start)
            self._start_call(attrs.get("name", ""))
            if "name" not in attrs:  # after the start: the warning belongs to this call
                self._warn("invoke without a name attribute", tag.start, "no_name")
            if tag.self_closing:
                self._warn("self-closing invoke read as a call without arguments", tag.start)
                self._end_call(tag.end)
            return True
        if tag.name == "parameter" and not tag.closing:
            discard = self._inv_name is None
            if discard:
                self._warn("parameter outside an invoke ignored", tag.start, "lost_text")
            name, flag = attrs.get("name", ""), attrs.get("string")
            if name in self._params and not discard:
                self._warn(
                    f"duplicate parameter {name!r}: the later value wins", tag.start, "duplicate_parameter"
                )
            if tag.self_closing:
                if not discard:
                    self._set_param(name, attrs.get("value", ""), flag != "false", self._abs(tag.start))
                return True
            self._p_at = self._abs(tag.start)
            self._start_param(name, flag != "false", flag, discard)
            return self._goto(self._t_value, tag.end)
        if tag.closing and tag.name == "invoke":
            if self._inv_name is None:
                self._warn("stray </invoke> dropped", tag.start)
                return True
            return self._end_call(tag.end)
        if tag.closing and tag.name in _BLOCK_NAMES:
            if self._inv_name is not None:
                self._warn(f"invoke {self._inv_name!r} closed by </tool_calls>", tag.start)
                self._end_call(tag.start)
            self._finish_block(tag.start)
            self._after_block = True
            return self._goto(self._t_content, tag.end)
        self._warn(
            f"unexpected DSML tag <{'/' if tag.closing else ''}{tag.name}> ignored", tag.start, "unknown_tag"
        )
        return True

    # -------------------------------------------------------------------------------------- value

    def _t_value(self, final: bool) -> bool:
        buf, pos = self._buf, self._pos
        i = max(pos, self._scan)
        hold = len(buf)
        while True:
            lt = buf.find("<", i)
            if lt == -1:
                break
            m = match_tag(buf, lt, final)
            if m is PARTIAL:
                hold = lt
                break
            if isinstance(m, Tag) and m.closing and m.name == "parameter" and m.delim == self._dialect:
                self._value(buf[pos:lt])
                self._finish_value(lt)
                return self._goto(self._t_block, m.end)
            i = lt + 1
        self._value(buf[pos:hold])
        self._pos = hold
        self._scan = hold
        return False

    def _finish_value(self, at: int) -> None:
        self._in_value = False
        if self._p_discard:
            return
        raw = "".join(self._p_chunks)
        flag = self._p_flag
        if flag == "true":
            self._set_param(self._p_name, raw, True, self._p_at)
            return
        if flag == "false":
            ok, _ = decode_json_value(raw)
            inner = None if ok else unwrap_cdata(raw)
            if inner is not None and decode_json_value(inner)[0]:
                self._warn(f"parameter {self._p_name!r}: CDATA wrapper removed", at)
                raw = inner
            self._set_param(self._p_name, raw, False, self._p_at)
            return
        inner = unwrap_cdata(raw)
        if inner is not None:
            raw = inner
        self._warn(f'parameter {self._p_name!r} has no string="true|false"; kept as text', at)
        self._set_param(self._p_name, raw, True, self._p_at)

    # --------------------------------------------------------------------------------------- done

    def _t_done(self, final: bool) -> bool:
        if self._pos < len(self._buf):
            if not self._stray_warned:
                self._stray_warned = True
                self._warn("text after the end-of-sentence token ignored", self._pos)
            self._pos = len(self._buf)
        return False
