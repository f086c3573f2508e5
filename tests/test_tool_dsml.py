"""End to end through the real DSML codec: schema into the tools section, calls out of the parser.

Round trip: arguments a model could send are rendered as a DSML tool-call block (as V4 writes it),
parsed back by the strict and the tolerant parser, and must validate to the same values. Slips a model
makes in DSML (a number or a list written with string="true") must still land.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from agentkit.tools.builtin import builtin_tools
from agentkit.tools.tool import tool
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agentkit.dsml import EOS, ToolCall, parse_completion, render_tool_call_block, render_tools_section

pytestmark = pytest.mark.anyio


class Item(BaseModel):
    name: str
    qty: int = 1


@tool
def order(
    customer: str,
    count: int,
    price: float,
    express: bool,
    tags: list[str],
    items: list[Item],
    note: str | None = None,
    size: Literal["S", "M", "L"] = "M",
) -> dict[str, Any]:
    """Place an order.

    Args:
        customer: Who orders.
        count: How many parcels.
        price: Total price.
        express: Ship express.
        tags: Free-form labels.
        items: What is in it.
        note: A note for the courier.
        size: Parcel size.
    """
    return {
        "customer": customer,
        "count": count,
        "price": price,
        "express": express,
        "tags": tags,
        "items": [i.model_dump() for i in items],
        "note": note,
        "size": size,
    }


def completion(block: str) -> str:
    return "reasoning</think>\n\n" + block + EOS


_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).filter(
    lambda s: "<" not in s and "｜" not in s  # DSML markup inside raw text is the codec's concern
)
ARGS = st.fixed_dictionaries(
    {
        "customer": _TEXT,
        "count": st.integers(-(10**12), 10**12),
        "price": st.floats(allow_nan=False, allow_infinity=False, width=32),
        "express": st.booleans(),
        "tags": st.lists(_TEXT, max_size=3),
        "items": st.lists(
            st.builds(lambda n, q: {"name": n, "qty": q}, _TEXT, st.integers(0, 99)), max_size=2
        ),
    },
    optional={"note": st.none() | _TEXT, "size": st.sampled_from(["S", "M", "L"])},
)


@settings(max_examples=50, deadline=None)
@given(ARGS, st.booleans())
async def test_dsml_round_trip_validates_to_the_sent_values(args: dict[str, Any], strict: bool) -> None:
    block = render_tool_call_block([ToolCall(name="order", arguments=args)])
    message = parse_completion(completion(block), "thinking", strict=strict)
    assert len(message.tool_calls) == 1
    out = await order.invoke(message.tool_calls[0].arguments)
    assert not out.is_error, out.content
    expected = {"note": None, "size": "M"} | args
    assert out.value == expected


async def test_model_slips_in_dsml_are_coerced() -> None:
    p = '<｜DSML｜parameter name="{}" string="{}">{}</｜DSML｜parameter>'
    params = [
        p.format("customer", "true", "[not a list]"),  # text that looks like JSON stays text
        p.format("count", "true", "3"),  # number written as a string
        p.format("price", "true", "9.5"),
        p.format("express", "true", "true"),  # bool written as a string
        p.format("tags", "true", '["a", "b"]'),  # list written as a string
        p.format("items", "true", '[{"name": "tea", "qty": "2"}]'),
    ]
    block = (
        '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="order">\n'
        + "\n".join(params)
        + "\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
    )
    call = parse_completion(completion(block), "thinking").tool_calls[0]
    out = await order.invoke(call.arguments)
    assert not out.is_error, out.content
    assert out.value == {
        "customer": "[not a list]",
        "count": 3,
        "price": 9.5,
        "express": True,
        "tags": ["a", "b"],
        "items": [{"name": "tea", "qty": 2}],
        "note": None,
        "size": "M",
    }


async def test_a_real_mistake_comes_back_as_a_readable_result() -> None:
    block = (
        '<｜DSML｜tool_calls>\n<｜DSML｜invoke name="order">\n'
        '<｜DSML｜parameter name="customer" string="true">ann</｜DSML｜parameter>\n'
        '<｜DSML｜parameter name="count" string="true">three</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>\n</｜DSML｜tool_calls>"
    )
    call = parse_completion(completion(block), "thinking").tool_calls[0]
    out = await order.invoke(call.arguments)
    assert out.error_kind == "validation"
    assert out.content.splitlines() == [
        "Invalid arguments for tool `order`:",
        '- `count`: Input should be a valid integer, unable to parse string as an integer (got "three")',
        "- `price`: missing required argument",
        "- `express`: missing required argument",
        "- `tags`: missing required argument",
        "- `items`: missing required argument",
        "Call `order` again with corrected arguments.",
    ]


def test_schemas_print_into_the_tools_section() -> None:
    tools = [order, *builtin_tools()]
    section = render_tools_section([t.openai_schema() for t in tools])
    for t in tools:
        line = json.dumps(t.openai_schema()["function"], ensure_ascii=False)
        assert line in section.splitlines(), t.name
