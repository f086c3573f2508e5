"""Schema generation: docstring styles and parameter types -> the JSON the model sees."""

from __future__ import annotations

import datetime as dt
import enum
import json
from typing import Annotated, Any, Literal

import anyio
import pytest
from agentkit.tools.context import RunContext
from agentkit.tools.docstrings import parse_docstring
from agentkit.tools.tool import Tool, ToolDefinitionError, tool
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field

# --- docstring styles ------------------------------------------------------------------------------

GOOGLE = """Search the web.

    Returns the best pages first.

    Args:
        query: What to look for;
            may span lines.
        limit (int): How many results.
        *rest: ignored varargs doc.

    Returns:
        A list of pages.

    Raises:
        ValueError: if query is empty.
    """

NUMPY = """Search the web.

    Returns the best pages first.

    Parameters
    ----------
    query : str
        What to look for;
        may span lines.
    limit : int, optional
        How many results.

    Returns
    -------
    list
        A list of pages.
    """

REST = """Search the web.

    Returns the best pages first.

    :param query: What to look for;
        may span lines.
    :param int limit: How many results.
    :type query: str
    :returns: A list of pages.
    :raises ValueError: if query is empty.
    """

EXPECTED_DESC = "Search the web.\n\nReturns the best pages first."
EXPECTED_PARAMS = {"query": "What to look for; may span lines.", "limit": "How many results."}


@pytest.mark.parametrize("doc", [GOOGLE, NUMPY, REST], ids=["google", "numpy", "rest"])
def test_docstring_styles_parse_to_the_same_parts(doc: str) -> None:
    parsed = parse_docstring(doc)
    assert parsed.description == EXPECTED_DESC
    assert {k: parsed.params[k] for k in EXPECTED_PARAMS} == EXPECTED_PARAMS
    assert parsed.returns == "A list of pages."


@pytest.mark.parametrize("doc", [GOOGLE, NUMPY, REST], ids=["google", "numpy", "rest"])
def test_docstring_param_text_lands_in_the_schema(doc: str) -> None:
    def search(query: str, limit: int = 5) -> list[str]:
        return []

    search.__doc__ = doc
    t = tool(search)
    props = t.parameters_schema["properties"]
    assert t.description == EXPECTED_DESC
    assert props["query"]["description"] == EXPECTED_PARAMS["query"]
    assert props["limit"]["description"] == EXPECTED_PARAMS["limit"]


@pytest.mark.parametrize(
    ("doc", "description", "params"),
    [
        (None, "", {}),
        ("", "", {}),
        ("One line only.", "One line only.", {}),
        ("Summary.\n\nArgs:\n    a: first\n    b: second\n", "Summary.", {"a": "first", "b": "second"}),
        ("Summary.\n\nNote:\n    not a param section\n", "Summary.", {}),
        ("a, b : int\n    both things\n-----\n", "", None),  # malformed numpy: must not crash
        ("Numpy pair.\n\nParameters\n----------\na, b : int\n    Both ends.\n", "Numpy pair.", None),
    ],
)
def test_docstring_edge_cases(doc: str | None, description: str, params: dict[str, str] | None) -> None:
    parsed = parse_docstring(doc)
    if params is not None:
        assert parsed.description == description
        assert parsed.params == params
    else:
        assert isinstance(parsed.params, dict)
    if doc and "a, b : int\n    Both" in doc:
        assert parsed.params == {"a": "Both ends.", "b": "Both ends."}


# --- type kinds ------------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Point(BaseModel):
    """A point on the plane."""

    x: int
    y: int = 0


def _prop(annotation: Any, default: Any = ...) -> tuple[dict[str, Any], dict[str, Any]]:
    """Schema of a one-parameter tool `f(v: annotation = default)`: (property, whole parameters)."""
    ns: dict[str, Any] = {}
    if default is ...:
        exec("def f(v): pass", ns)
    else:
        exec("def f(v=_d): pass", {"_d": default} | ns, ns)
    ns["f"].__annotations__ = {"v": annotation}
    t = tool(ns["f"])
    return t.parameters_schema["properties"]["v"], t.parameters_schema


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int, {"type": "integer"}),
        (float, {"type": "number"}),
        (str, {"type": "string"}),
        (bool, {"type": "boolean"}),
        (list[int], {"type": "array", "items": {"type": "integer"}}),
        (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
        (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]}),
        (int | None, {"anyOf": [{"type": "integer"}, {"type": "null"}]}),
        (Literal["a", "b"], {"type": "string", "enum": ["a", "b"]}),
        (Literal[1, 2], {"type": "integer", "enum": [1, 2]}),
        (Color, {"$ref": "#/$defs/Color"}),
        (Point, {"$ref": "#/$defs/Point"}),
        (list[Point], {"type": "array", "items": {"$ref": "#/$defs/Point"}}),
        (dt.date, {"type": "string", "format": "date"}),
        (Any, {}),
        (Annotated[int, Field(ge=0, le=10, description="A score.")], {"type": "integer", "minimum": 0}),
    ],
)
def test_type_kinds(annotation: Any, expected: dict[str, Any]) -> None:
    prop, params = _prop(annotation)
    for key, value in expected.items():
        assert prop[key] == value, (key, prop)
    assert params["required"] == ["v"]
    assert params["additionalProperties"] is False
    assert "title" not in json.dumps(prop)


def test_enum_and_model_definitions_are_included() -> None:
    _, params = _prop(Color)
    assert params["$defs"]["Color"] == {"enum": ["red", "blue"], "type": "string"}
    _, params = _prop(Point)
    point = params["$defs"]["Point"]
    assert point["properties"] == {"x": {"type": "integer"}, "y": {"default": 0, "type": "integer"}}
    assert point["required"] == ["x"]
    assert point["description"] == "A point on the plane."


def test_defaults_make_parameters_optional_and_show_in_schema() -> None:
    prop, params = _prop(int, 3)
    assert prop["default"] == 3
    assert "required" not in params
    prop, params = _prop(Color, Color.BLUE)
    assert prop["default"] == "blue"


def test_annotated_field_description_wins_over_docstring() -> None:
    @tool
    def f(a: Annotated[int, Field(description="from Field")], b: int = Field(default=2, ge=1)) -> int:
        """Doc.

        Args:
            a: from docstring
            b: b from docstring
        """
        return a

    props = f.parameters_schema["properties"]
    assert props["a"]["description"] == "from Field"
    assert props["b"] == {"default": 2, "description": "b from docstring", "minimum": 1, "type": "integer"}


def test_openai_schema_shape_and_key_order() -> None:
    @tool(name="get_weather", description="Weather now.")
    def weather(location: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
        return ""

    schema = weather.openai_schema()
    assert list(schema) == ["type", "function"]
    assert schema["type"] == "function"
    assert list(schema["function"]) == ["name", "description", "parameters"]
    assert schema["function"]["name"] == "get_weather"
    assert schema["function"]["description"] == "Weather now."
    params = schema["function"]["parameters"]
    assert list(params)[:3] == ["type", "properties", "required"]
    # Compact JSON, as the encoder prints one line per tool, must round-trip.
    line = json.dumps(schema["function"], ensure_ascii=False, separators=(",", ":"))
    assert json.loads(line) == schema["function"]


def test_no_parameters() -> None:
    @tool
    async def now() -> str:
        """The time."""
        return ""

    assert now.parameters_schema == {"type": "object", "properties": {}, "additionalProperties": False}


def test_parameter_names_that_clash_with_pydantic_are_fine() -> None:
    @tool
    def f(schema: str, model_config: int, json: bool, title: str) -> str:
        return ""

    props = f.parameters_schema["properties"]
    assert list(props) == ["schema", "model_config", "json", "title"]
    assert props["title"] == {"type": "string"}  # a *property* named title survives title-stripping


def test_run_context_is_injected_not_described() -> None:
    @tool
    def f(ctx: RunContext[int], a: int) -> int:
        return a + ctx.deps

    assert f.takes_context
    assert list(f.parameters_schema["properties"]) == ["a"]


class Calculator:
    def __init__(self, base: int) -> None:
        self.base = base

    @tool
    def add(self, x: int) -> int:
        """Add x to the base.

        Args:
            x: the addend
        """
        return self.base + x

    def plain(self, ctx: RunContext[None], y: int) -> int:
        return self.base * y


def test_methods_bind_and_omit_self() -> None:
    assert isinstance(Calculator.add, Tool)
    bound = Calculator(10).add
    assert isinstance(bound, Tool)
    assert list(bound.parameters_schema["properties"]) == ["x"]
    assert bound.parameters_schema["properties"]["x"]["description"] == "the addend"
    assert bound(5) == 15  # still callable like the method
    t = tool(Calculator(3).plain)
    assert t.takes_context
    assert list(t.parameters_schema["properties"]) == ["y"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def f(*args): pass", "*args"),
        ("def f(**kw): pass", "*args/**kwargs"),
        ("def f(a, ctx: RunContext): pass", "first parameter"),
        ("async def f():\n    yield 1", "async generators"),
        ("def f(a: 'NoSuchType'): pass", "cannot resolve"),
    ],
)
def test_bad_definitions_fail_loudly(source: str, message: str) -> None:
    ns: dict[str, Any] = {"RunContext": RunContext}
    exec(source, ns)
    with pytest.raises(ToolDefinitionError, match=message.replace("*", r"\*")):
        tool(ns["f"])


@pytest.mark.parametrize("name", ["", "has space", "x" * 65, "dots.not.allowed", "ünïcode"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ToolDefinitionError, match="tool name"):
        tool(name=name)(_noop)


@pytest.mark.parametrize(
    "kwargs",
    [{"timeout": 0}, {"timeout": -1}, {"timeout": float("inf")}, {"retries": -1}, {"max_output_chars": 10}],
)
def test_bad_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    key = next(iter(kwargs))
    with pytest.raises(ToolDefinitionError, match=key):
        tool(**kwargs)(_noop)


def _noop() -> None:
    pass


def test_policy_flags_are_exposed() -> None:
    t = tool(timeout=2.5, retries=2, sequential=True, requires_approval=True)(_noop)
    assert (t.timeout, t.retries, t.sequential, t.requires_approval) == (2.5, 2, True, True)
    assert t.name == "_noop"
    d = tool(_noop)
    assert (d.timeout, d.retries, d.sequential, d.requires_approval) == (None, 0, False, False)


# --- docstring round trip (property) -----------------------------------------------------------------

_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
_WORDS = st.lists(st.from_regex(r"[A-Za-z][a-z0-9]{0,7}[.,;]?", fullmatch=True), min_size=1, max_size=12)


def _render(style: str, summary: str, params: dict[str, list[str]]) -> str:
    """Write a docstring in `style`, wrapping each description after its 4th word."""
    out = [summary, ""]
    if style == "google":
        out.append("Args:")
        for name, words in params.items():
            out.append(f"    {name} (int): {' '.join(words[:4])}")
            if words[4:]:
                out.append(f"        {' '.join(words[4:])}")
    elif style == "numpy":
        out += ["Parameters", "----------"]
        for name, words in params.items():
            out += [f"{name} : int", f"    {' '.join(words[:4])}"]
            if words[4:]:
                out.append(f"    {' '.join(words[4:])}")
    else:
        for name, words in params.items():
            out.append(f":param {name}: {' '.join(words[:4])}")
            if words[4:]:
                out.append(f"    {' '.join(words[4:])}")
            out.append(f":type {name}: int")
    out += ["", "Returns:" if style == "google" else ":returns: x" if style == "rest" else "", ""]
    return "\n".join(out)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(["google", "numpy", "rest"]),
    _WORDS,
    st.dictionaries(_IDENT.filter(lambda s: s not in {"self", "cls"}), _WORDS, max_size=4),
)
def test_docstring_round_trip(style: str, summary_words: list[str], params: dict[str, list[str]]) -> None:
    summary = " ".join(summary_words)
    parsed = parse_docstring(_render(style, summary, params))
    assert parsed.description == summary
    assert parsed.params == {name: " ".join(words) for name, words in params.items()}


def test_unannotated_parameters_are_refused_by_name() -> None:
    # a schema without types lets the model's strings through: `add(a, b)` would return '34'
    def add(a, b, c: int = 0):  # type: ignore[no-untyped-def]
        return a + b + c

    with pytest.raises(ToolDefinitionError) as info:
        tool(add)
    msg = str(info.value)
    assert "`a`, `b` have no type annotation" in msg and "`c`" not in msg
    assert "allow_untyped=True" in msg

    def one(x):  # type: ignore[no-untyped-def]
        return x

    with pytest.raises(ToolDefinitionError, match=r"parameter `x` has no type annotation"):
        tool(one)


def test_allow_untyped_takes_json_values() -> None:
    @tool(allow_untyped=True)
    def add(a, b):  # type: ignore[no-untyped-def]
        """Add two values."""
        return a + b

    assert add.parameters_schema["properties"] == {"a": {}, "b": {}}
    assert add.parameters_schema["required"] == ["a", "b"]
    out = anyio.run(add.invoke, {"a": "3", "b": 4})  # text holding JSON is decoded: 7, not '34'
    assert not out.is_error and out.content == "7"
    words = anyio.run(add.invoke, {"a": "sun", "b": "flower"})  # text that is not JSON stays text
    assert words.content == "sunflower"
