"""Recognising DSML tags in the spellings real V4 output uses (tolerant mode).

Canonical tags are `<｜DSML｜invoke name="x">`. Observed drift (research §5.2): ASCII `|DSML|`, doubled
`｜｜DSML｜｜`, `‖DSML‖`, spaces inside (`< | DSML | tool_calls`), a trailing pipe instead of `>`
(`<|DSML|tool_calls|`), a missing `>` before the next tag or newline, self-closing tags, and
typographic quotes around attribute values (`name=“get_pages”`).

`match_tag` answers three ways so a streaming caller can hold back exactly the text that could still
become a tag: a `Tag`, `PARTIAL` (the buffer ends inside something that is still a tag prefix), or
None (not a tag; the `<` is ordinary text). A tag is capped at `MAX_TAG_CHARS`, which bounds both
hold-back and rescanning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

DELIMS: Final = "｜|‖"
MAX_TAG_CHARS: Final = 4096
_GAP = " \t\n"  # allowed between the pieces of a tag's prefix, at most two characters per gap
_QUOTE_CLOSERS: Final = {
    '"': '"”“',
    "“": '”“"',
    "”": '”“"',
    "'": "'’‘",
    "‘": "’‘'",
    "’": "’‘'",
}


class _Partial:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PARTIAL"


PARTIAL: Final = _Partial()


@dataclass(slots=True)
class Tag:
    start: int
    end: int  # index just past the tag
    closing: bool
    name: str  # lower-cased
    delim: str  # normalised delimiter, e.g. "｜DSML｜" or "|DSML|": the block's dialect
    attrs: dict[str, str] = field(default_factory=dict)
    self_closing: bool = False
    canonical: bool = True  # spelled exactly as DeepSeek's encoder writes it
    notes: list[str] = field(default_factory=list)


def _is_name_char(c: str) -> bool:
    return c.isalnum() or c in "_-."


def _skip_gap(s: str, j: int, limit: int) -> int:
    k = 0
    while j < limit and k < 2 and s[j] in _GAP:
        j += 1
        k += 1
    return j


def match_tag(s: str, i: int, final: bool) -> Tag | _Partial | None:
    """Match a DSML tag starting at s[i] == "<"."""
    n = len(s)
    limit = min(n, i + MAX_TAG_CHARS)
    more = PARTIAL if (not final and limit == n) else None
    j = _skip_gap(s, i + 1, limit)
    if j >= limit:
        return more
    closing = s[j] == "/"
    if closing:
        j = _skip_gap(s, j + 1, limit)
    d1 = j
    while j < limit and j - d1 < 2 and s[j] in DELIMS:
        j += 1
    if j == d1:
        return None if j < limit else more
    left = s[d1:j]
    j = _skip_gap(s, j, limit)
    word = s[j : j + 4]
    if word.upper() != "DSML":
        if j + 4 > limit and "DSML".startswith(word.upper()):
            return more
        return None
    j = _skip_gap(s, j + 4, limit)
    d2 = j
    while j < limit and j - d2 < 2 and s[j] in DELIMS:
        j += 1
    if j == d2:
        return None if j < limit else more
    right = s[d2:j]
    j = _skip_gap(s, j, limit)
    if j < limit and s[j] == "/" and not closing:
        closing = True
        j += 1
    name_at = j
    while j < limit and _is_name_char(s[j]):
        j += 1
    if j >= limit and more is not None:
        return more
    if j == name_at:
        return None
    name = s[name_at:j].lower()
    tag = Tag(start=i, end=j, closing=closing, name=name, delim=f"{left}DSML{right}")
    tag.canonical = s[i:name_at] == ("</｜DSML｜" if closing else "<｜DSML｜")
    return _finish_tag(s, tag, j, limit, final)


def _finish_tag(s: str, tag: Tag, j: int, limit: int, final: bool) -> Tag | _Partial | None:
    """Attributes and terminator. Unquoted junk is skipped; a `<` ends an unterminated tag."""
    more = PARTIAL if (not final and limit == len(s)) else None
    while True:
        while j < limit and s[j].isspace():
            j += 1
        if j >= limit:
            if more is not None:
                return more
            tag.end, tag.canonical = j, False
            tag.notes.append("tag not terminated")
            return tag
        c = s[j]
        if c == ">":
            tag.end = j + 1
            return tag
        if c == "/" and s.startswith(">", j + 1):
            tag.end, tag.self_closing = j + 2, True
            return tag
        if c == "/" and j + 1 >= limit and more is not None:
            return more
        if c in DELIMS:
            if j + 1 >= limit and more is not None:
                return more
            tag.canonical = False
            if j + 1 < limit and s[j + 1] == ">":
                tag.end = j + 2
            else:
                tag.end = j + 1
                tag.notes.append("trailing pipe ends the tag")
            return tag
        if c == "<":
            # `<｜DSML｜tool_calls\n<｜DSML｜invoke …`: the `>` was never written.
            tag.end, tag.canonical = j, False
            tag.notes.append("tag has no '>'")
            return tag
        if c.isalpha() or c == "_":
            k = j
            while k < limit and _is_name_char(s[k]):
                k += 1
            key = s[j:k].lower()
            while k < limit and s[k] in " \t":
                k += 1
            if k >= limit:
                if more is not None:
                    return more
                tag.canonical = False
                tag.end = k
                return tag
            if s[k] != "=":
                tag.attrs.setdefault(key, "")
                j = k
                continue
            k += 1
            while k < limit and s[k] in " \t":
                k += 1
            if k >= limit:
                if more is not None:
                    return more
                tag.attrs[key] = ""
                tag.end, tag.canonical = k, False
                return tag
            q = s[k]
            if q in _QUOTE_CLOSERS:
                closers = _QUOTE_CLOSERS[q]
                e = k + 1
                while e < limit and s[e] not in closers and s[e] not in "\n<":
                    e += 1
                if e >= limit and more is not None:
                    return more
                tag.attrs[key] = s[k + 1 : e]
                if q != '"' or e >= limit or s[e] != '"':
                    tag.canonical = False
                    tag.notes.append("non-ASCII or unbalanced quotes")
                j = e + 1 if e < limit and s[e] in closers else e
            else:
                e = k
                while e < limit and not s[e].isspace() and s[e] not in ">/<" and s[e] not in DELIMS:
                    e += 1
                if e >= limit and more is not None:
                    return more
                tag.attrs[key] = s[k:e]
                tag.canonical = False
                j = e
            continue
        # Any other character inside a tag: skip it.
        tag.canonical = False
        j += 1
