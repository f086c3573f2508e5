"""The XML skeleton of a DSML block, parsed by lxml: the structural parser of whole-text parsing.

The lexer (strict: `strict.py`; tolerant: the repair states in `_tolerant.py`) decides where each tag
and each value lies and reports them here in order. This module writes one line of XML per tag, keeping
the DSML tag names (`｜` is a legal XML name character), with every raw value replaced by a numbered
placeholder element `<value ref="N"/>`:

    <completion>
    <｜DSML｜tool_calls at="2">
    <｜DSML｜invoke name="shell" at="21">
    <｜DSML｜parameter name="cmd" string="true" at="49"><value ref="0"/></｜DSML｜parameter>
    </｜DSML｜invoke>
    </｜DSML｜tool_calls>
    </completion>

Raw values never pass through the XML parser: XML 1.0 cannot hold most control characters (not even as
character references) and rewrites CR LF, and a tool string is allowed both. Names are XML-escaped into
attributes; a name XML cannot carry at all goes into the value table too (`name-ref`). lxml then parses
the skeleton with a non-recovering parser and the tree, not the lexer's bookkeeping, says which
parameters belong to which invoke, in which order, with which flags. A syntax error (a closer without
its opener, an unclosed element) or a tree that breaks the block schema becomes `DSMLParseError` at the
offset in the original text of the offending tag: every element carries that offset as `at`, and for
a syntax error skeleton line k is tag k, so lxml's line number maps straight back.

The lexers only hand over sequences they have already repaired or checked, so on real input the
skeleton is well-formed; the checks here are what guarantees that stays true.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from .calls import build_call
from .errors import DSMLParseError
from .tokens import DSML
from .types import ToolCall, TornCall

BLOCK_TAG = f"{DSML}tool_calls"
INVOKE_TAG = f"{DSML}invoke"
PARAM_TAG = f"{DSML}parameter"
VALUE_TAG = "value"
ROOT_TAG = "completion"

_SKELETON_LINES = re.compile(r",? line \d+(, column \d+)?")
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
# Character references survive attribute-value normalisation; literal tabs/newlines would not.
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}
)
_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "huge_tree": True,
    "recover": False,
    "remove_blank_text": False,
}


def _parser() -> etree.XMLParser:
    # One parser per parse: lxml parsers are not thread-safe and the agent loop may parse concurrently.
    return etree.XMLParser(**_PARSER_OPTIONS)


class Skeleton:
    """The skeleton of one completion's blocks, built tag by tag; `build()` parses it with lxml."""

    __slots__ = ("_at", "_invoke_line", "_lines", "values")

    def __init__(self) -> None:
        self._lines: list[str] = [f"<{ROOT_TAG}>"]
        self._at: list[int] = [0]  # source offset of each skeleton line
        self.values: list[str] = []  # the placeholder table: raw values (and names XML cannot hold)
        self._invoke_line = -1

    def _emit(self, line: str, at: int) -> None:
        self._lines.append(line)
        self._at.append(at)

    def _name_attr(self, name: str | None, key: str = "name") -> str:
        if name is None:
            return ""
        if _XML_ILLEGAL.search(name) is None:
            return f' {key}="{name.translate(_ATTR_ESCAPES)}"'
        self.values.append(name)
        return f' {key}-ref="{len(self.values) - 1}"'

    # ----------------------------------------------------------------- what the lexers report, in order

    def open_block(self, at: int) -> None:
        self._emit(f'<{BLOCK_TAG} at="{at}">', at)

    def close_block(self, at: int) -> None:
        self._emit(f"</{BLOCK_TAG}>", at)

    def open_invoke(self, name: str | None, at: int, *, torn: bool = False) -> None:
        flag = ' torn="1"' if torn else ""
        self._invoke_line = len(self._lines)
        self._emit(f'<{INVOKE_TAG}{self._name_attr(name)} at="{at}"{flag}>', at)

    def close_invoke(self, at: int) -> None:
        self._emit(f"</{INVOKE_TAG}>", at)

    def tear_invoke(self, at: int) -> None:
        """The output ended inside the last opened invoke: mark it torn and close it."""
        line = self._lines[self._invoke_line]
        if not line.endswith(' torn="1">'):
            self._lines[self._invoke_line] = line[:-1] + ' torn="1">'
        self.close_invoke(at)

    def parameter(self, name: str, raw: str, is_string: bool, at: int) -> None:
        self.values.append(raw)
        ref = len(self.values) - 1
        flag = "true" if is_string else "false"
        head = f'<{PARAM_TAG}{self._name_attr(name)} string="{flag}" at="{at}">'
        self._emit(f'{head}<{VALUE_TAG} ref="{ref}"/></{PARAM_TAG}>', at)

    def mark(self) -> int:
        """A point to cut back to with `truncate` (strict mode: drop an invoke that failed to lex)."""
        return len(self._lines)

    def truncate(self, mark: int) -> None:
        del self._lines[mark:]
        del self._at[mark:]

    # ------------------------------------------------------------------------------------------ parse

    def text(self) -> str:
        return "\n".join([*self._lines, f"</{ROOT_TAG}>"])

    def _source_at(self, line: int | None) -> int:
        if not line:
            return self._at[-1]
        return self._at[min(max(line, 1), len(self._at)) - 1]

    def tree(self) -> etree._Element:
        """lxml's tree of the skeleton; a syntax error is a DSMLParseError at the tag's source offset."""
        try:
            return etree.fromstring(self.text().encode("utf-8"), _parser())
        except etree.XMLSyntaxError as exc:
            # libxml2's message names skeleton lines; the position is what points into the text.
            msg = _SKELETON_LINES.sub("", exc.msg).replace(f" {ROOT_TAG}", " the end of the output")
            raise DSMLParseError(
                f"DSML block is not well-formed: {msg}", self._source_at(exc.lineno)
            ) from None

    def build(self, *, strict: bool) -> tuple[list[ToolCall], TornCall | None]:
        """(calls in order, the torn call if any) from lxml's tree.

        A complete invoke becomes a `ToolCall` (JSON decoded by `build_call`, which raises in strict
        mode); a torn one becomes the `TornCall` with its raw values.
        """
        root = self.tree()
        calls: list[ToolCall] = []
        torn: TornCall | None = None
        for block in root:
            self._expect(block, BLOCK_TAG, "a tool call block")
            for invoke in block:
                self._expect(invoke, INVOKE_TAG, "an invoke inside the tool call block")
                name = self._name(invoke)
                at = self._position(invoke)
                params: dict[str, tuple[str, bool]] = {}
                for param in invoke:
                    self._expect(param, PARAM_TAG, "a parameter inside an invoke")
                    key = self._name(param)
                    if key is None:
                        raise self._error(param, "parameter without a name")
                    flag = param.get("string")
                    if flag not in ("true", "false"):
                        raise self._error(param, 'parameter without string="true|false"')
                    params[key] = (self._value(param), flag == "true")
                if invoke.get("torn") == "1":
                    if torn is not None:
                        raise self._error(invoke, "more than one torn invoke")
                    args: dict[str, Any] = {k: raw for k, (raw, _s) in params.items()}
                    torn = TornCall(name=name, arguments=args, position=at)
                    continue
                if torn is not None:
                    raise self._error(invoke, "an invoke after the torn one")
                if name is None:
                    raise self._error(invoke, "invoke without a name")
                calls.append(build_call(name, params, strict=strict, position=at))
        return calls, torn

    def _position(self, el: etree._Element) -> int:
        # Each element carries its source offset: libxml2 caps element line numbers at 65535.
        at = el.get("at", "")
        return int(at) if at.isdigit() else self._source_at(el.sourceline)

    def _error(self, el: etree._Element, reason: str) -> DSMLParseError:
        return DSMLParseError(f"DSML block structure: {reason}", self._position(el))

    def _expect(self, el: etree._Element, tag: str, what: str) -> None:
        if el.tag != tag:
            raise self._error(el, f"expected {what}, found <{el.tag}>")

    def _ref(self, el: etree._Element, key: str) -> str | None:
        ref = el.get(key)
        if ref is None:
            return None
        if not ref.isdigit() or int(ref) >= len(self.values):
            raise self._error(el, f"placeholder {key}={ref!r} out of range")
        return self.values[int(ref)]

    def _name(self, el: etree._Element) -> str | None:
        name = el.get("name")
        return name if name is not None else self._ref(el, "name-ref")

    def _value(self, param: etree._Element) -> str:
        holders = list(param)
        if len(holders) != 1 or holders[0].tag != VALUE_TAG or (param.text or "").strip():
            raise self._error(param, "a parameter holds exactly one value placeholder")
        value = self._ref(holders[0], "ref")
        if value is None:
            raise self._error(param, "value placeholder without ref")
        return value
