"""Docstring parsing for tool schemas: Google, NumPy and reST (Sphinx) styles.

The model sees only the schema, so whatever a developer wrote about a parameter in the docstring has
to travel into the JSON schema; otherwise the model is left guessing from a bare name. The parser is
deliberately forgiving: a docstring that matches no style still yields its text as the description,
and an unknown section never loses the summary.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

__all__ = ["ParsedDocstring", "parse_docstring"]


@dataclass(frozen=True, slots=True)
class ParsedDocstring:
    """The parts of a docstring that a tool schema uses."""

    description: str
    params: dict[str, str] = field(default_factory=dict)
    returns: str = ""


# Google style: a section header alone on its line ending with a colon.
_GOOGLE_PARAM_HEADERS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments"}
_GOOGLE_RETURN_HEADERS = {"returns", "return", "yields", "yield"}
_GOOGLE_OTHER_HEADERS = {
    "raises",
    "raise",
    "examples",
    "example",
    "note",
    "notes",
    "see also",
    "warning",
    "warnings",
    "attributes",
    "todo",
    "references",
}
_GOOGLE_HEADER = re.compile(r"^([A-Za-z][A-Za-z ]*):\s*$")
# `name (type): text`, `name: text`, `*args: text`
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")

# NumPy style: a header line followed by a line of dashes of at least 3.
_NUMPY_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")

# reST style: `:param name:`, `:param type name:`, `:returns:`, `:raises X:`, `:type name:`.
_REST_FIELD = re.compile(r"^:(\w+)(?:\s+([^:]*?))?\s*:\s*(.*)$")
_REST_PARAM_KINDS = {"param", "parameter", "arg", "argument", "key", "keyword"}
_REST_RETURN_KINDS = {"returns", "return"}


def parse_docstring(doc: str | None) -> ParsedDocstring:
    """Split a docstring into description, per-parameter text and return text, whatever its style."""
    if not doc or not doc.strip():
        return ParsedDocstring(description="")
    lines = inspect.cleandoc(doc).splitlines()
    if any(_REST_FIELD.match(line.strip()) for line in lines):
        return _parse_rest(lines)
    if any(_NUMPY_UNDERLINE.match(lines[i + 1]) and lines[i].strip() for i in range(len(lines) - 1)):
        return _parse_numpy(lines)
    return _parse_google(lines)


def _join(parts: list[str]) -> str:
    """Join wrapped lines into one paragraph-preserving string (blank lines keep paragraph breaks)."""
    text = "\n".join(p.rstrip() for p in parts).strip("\n")
    paragraphs = [" ".join(s.strip() for s in para.splitlines()) for para in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _parse_google(lines: list[str]) -> ParsedDocstring:
    description: list[str] = []
    params: dict[str, list[str]] = {}
    returns: list[str] = []
    section: str | None = None  # None = description, "params", "returns", "other"
    current: str | None = None
    item_indent = -1
    for line in lines:
        header = _GOOGLE_HEADER.match(line)
        if header and _indent(line) == 0:
            name = header.group(1).strip().lower()
            if name in _GOOGLE_PARAM_HEADERS:
                section, current, item_indent = "params", None, -1
                continue
            if name in _GOOGLE_RETURN_HEADERS:
                section = "returns"
                continue
            if name in _GOOGLE_OTHER_HEADERS:
                section = "other"
                continue
        if section is None:
            description.append(line)
        elif section == "returns":
            returns.append(line)
        elif section == "params":
            if not line.strip():
                if current is not None:
                    params[current].append("")
                continue
            indent = _indent(line)
            item = _GOOGLE_ITEM.match(line.strip())
            if item and (item_indent < 0 or indent <= item_indent):
                item_indent = indent
                current = item.group(1)
                params[current] = [item.group(3)]
            elif current is not None:
                params[current].append(line)
    return ParsedDocstring(
        description=_join(description),
        params={k: _join(v) for k, v in params.items()},
        returns=_join(returns),
    )


def _parse_numpy(lines: list[str]) -> ParsedDocstring:
    description: list[str] = []
    params: dict[str, list[str]] = {}
    returns: list[str] = []
    section: str | None = None
    current: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and line.strip() and _NUMPY_UNDERLINE.match(lines[i + 1]):
            name = line.strip().lower()
            if name in ("parameters", "other parameters", "keyword arguments", "params"):
                section = "params"
            elif name in ("returns", "yields"):
                section = "returns"
            else:
                section = "other"
            current = None
            i += 2
            continue
        if section is None:
            description.append(line)
        elif section == "returns":
            returns.append(line)
        elif section == "params":
            if line.strip() and _indent(line) == 0:
                # `a, b : int` documents several parameters at once.
                for name in re.split(r"\s*,\s*", line.split(":", 1)[0].strip()):
                    params[name.lstrip("*")] = []
                current = line.split(":", 1)[0].strip()
            elif current is not None:
                for name in re.split(r"\s*,\s*", current):
                    params[name.lstrip("*")].append(line)
        i += 1
    return ParsedDocstring(
        description=_join(description),
        params={k: _join(v) for k, v in params.items()},
        returns=_join(_strip_numpy_return_type(returns)),
    )


def _strip_numpy_return_type(lines: list[str]) -> list[str]:
    """NumPy `Returns` starts with a type line (`str`, `out : str`); the prose is indented below it."""
    if lines and lines[0].strip() and _indent(lines[0]) == 0 and len(lines) > 1:
        return lines[1:]
    return lines


def _parse_rest(lines: list[str]) -> ParsedDocstring:
    description: list[str] = []
    params: dict[str, list[str]] = {}
    returns: list[str] = []
    target: list[str] | None = description
    seen_field = False
    for line in lines:
        m = _REST_FIELD.match(line.strip())
        if m and _indent(line) == 0:
            seen_field = True
            kind, arg, text = m.group(1).lower(), (m.group(2) or "").strip(), m.group(3)
            if kind in _REST_PARAM_KINDS and arg:
                name = arg.split()[-1].lstrip("*")  # `:param int x:` names x
                params[name] = [text]
                target = params[name]
            elif kind in _REST_RETURN_KINDS:
                returns[:] = [text]
                target = returns
            else:
                target = None  # :type:, :raises:, :rtype: ... not wanted in the schema
            continue
        if target is not None and (not seen_field or line.strip()):
            target.append(line)
    return ParsedDocstring(
        description=_join(description),
        params={k: _join(v) for k, v in params.items()},
        returns=_join(returns),
    )
