"""Turning one invoke's raw parameters into a `ToolCall`, shared by every parsing path.

The arguments string is assembled the way DeepSeek's reference assembles it, so `to_openai()` stays
byte-compatible; whether invalid JSON is an error (strict) or kept as text (tolerant) is the one
difference between the modes here.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import DSMLParseError
from .types import ToolCall, to_json


def decode_json_value(raw: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(raw)
    except (ValueError, RecursionError):
        return False, None


def build_call(name: str, params: dict[str, tuple[str, bool]], *, strict: bool, position: int) -> ToolCall:
    """Decode parameters; the arguments string is assembled the way the reference assembles it."""
    arguments: dict[str, Any] = {}
    pieces = []
    warnings: list[str] = []
    string_params = []
    for key, (raw, is_string) in params.items():
        if is_string:
            arguments[key] = raw
            string_params.append(key)
            pieces.append(f"{to_json(key)}: {to_json(raw)}")
            continue
        ok, value = decode_json_value(raw)
        if not ok:
            if strict:
                raise DSMLParseError(
                    f'parameter {key!r} of {name!r} has string="false" but is not valid JSON', position
                )
            warnings.append(
                f'parameter {key!r} of {name!r}: string="false" value is not valid JSON; kept as text'
            )
            arguments[key] = raw
            pieces.append(f"{to_json(key)}: {to_json(raw)}")
            continue
        arguments[key] = value
        pieces.append(f"{to_json(key)}: {raw}")
    return ToolCall(
        name=name,
        arguments=arguments,
        arguments_json="{" + ", ".join(pieces) + "}",
        string_params=frozenset(string_params),
        warnings=tuple(warnings),
    )
