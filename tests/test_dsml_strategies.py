"""Hypothesis strategies shared by the DSML tests (this module holds no tests).

What the format cannot carry is excluded on purpose and nothing else: a string value may not contain
`/｜DSML｜parameter` (the one sequence that ends a value), content and reasoning may not contain the
special tokens, and names stay free of quotes/angle brackets/newlines (tolerant mode reads attributes
like XML). Values otherwise cover code with `<`, `&`, `]]>`, quotes, newlines, unicode and nested JSON.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from agentkit.dsml import ASSISTANT, BOS, DSML, EOS, THINK_END, THINK_START, USER

NASTY = ["<", "&", "]]>", '"', "'", "\n", "\r\n", "\t", "<![CDATA[", "</", "<｜", "｜", "|", "{", "}", "\\"]
NASTY += ["é", "中文", "🙂", "\x00", "\u2028"]
_FORBIDDEN = (BOS, EOS, THINK_START, THINK_END, DSML, USER, ASSISTANT, "/" + DSML + "parameter", "DSML")

text_piece = st.one_of(st.sampled_from(NASTY), st.text(max_size=8))


def _clean(s: str) -> str:
    for bad in _FORBIDDEN:
        s = s.replace(bad, "")
    # After removals new forbidden sequences may have formed; repeat until stable.
    return s if not any(b in s for b in _FORBIDDEN) else _clean(s)


free_text = st.lists(text_piece, max_size=8).map(lambda parts: _clean("".join(parts)))
names = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_-.中文é"), min_size=1, max_size=12
)

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    free_text,
)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(free_text, inner, max_size=4)),
    max_leaves=12,
)


@st.composite
def tool_calls(draw: st.DrawFn, max_calls: int = 3) -> list[dict[str, Any]]:
    calls = []
    for i in range(draw(st.integers(0, max_calls))):
        args = draw(st.dictionaries(names, st.one_of(free_text, json_value), max_size=4))
        calls.append(
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": draw(names), "arguments": json.dumps(args, ensure_ascii=False)},
            }
        )
    return calls


@st.composite
def assistant_turns(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "role": "assistant",
        "reasoning_content": draw(free_text),
        "content": draw(free_text),
        "tool_calls": draw(tool_calls()),
    }


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "run",
            "description": "Run <code> & 'quote' \"dq\" 中文",
            "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
        },
    }
]


@st.composite
def agent_conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """system(+tools), user, then rounds of assistant(calls) + tool results, ending on an assistant."""
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": draw(free_text), "tools": TOOLS},
        {"role": "user", "content": draw(free_text)},
    ]
    for _ in range(draw(st.integers(1, 3))):
        turn = draw(assistant_turns())
        msgs.append(turn)
        calls = turn["tool_calls"]
        order = draw(st.permutations(list(range(len(calls))))) if calls else []
        for i in order:
            msgs.append({"role": "tool", "tool_call_id": calls[i]["id"], "content": draw(free_text)})
        if not calls:
            msgs.append({"role": "user", "content": draw(free_text)})
    msgs.append(draw(assistant_turns()))
    return msgs


def expected_calls(turn: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in turn["tool_calls"]]
