"""Tool.invoke: coercion, model-readable validation errors, timeouts, retries, cancellation, output."""

from __future__ import annotations

import enum
import functools
import json
import re
import threading
from typing import Any, Literal

import anyio
import anyio.lowlevel
import pytest
from agentkit.tools.context import Cancellation, NoSandboxError, RunContext
from agentkit.tools.tool import (
    DEFAULT_MAX_OUTPUT_CHARS,
    ToolError,
    ToolOutcome,
    render_output,
    tool,
    truncate_middle,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

pytestmark = pytest.mark.anyio
FAST = settings(max_examples=60, deadline=None)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Mode(enum.Enum):
    FAST = "fast"
    SLOW = "slow"


class Item(BaseModel):
    name: str
    qty: int = 1


@functools.cache
def _echo_tool(annotation: Any) -> Any:
    def echo(v: Any) -> Any:
        return {"v": v.model_dump() if isinstance(v, BaseModel) else v}

    echo.__annotations__ = {"v": annotation}
    return tool(echo)


# --- coercion tables -------------------------------------------------------------------------------

ACCEPTED = [
    (int, "42", 42),
    (int, 42, 42),
    (int, 3.0, 3),
    (float, "2.5", 2.5),
    (float, 2, 2.0),
    (bool, "true", True),
    (bool, "false", False),
    (bool, "True", True),
    (bool, 1, True),
    (str, 'raw <text> & "quotes"', 'raw <text> & "quotes"'),
    (list[int], [1, 2], [1, 2]),
    (list[int], "[1, 2]", [1, 2]),  # JSON list sent as a string
    (list[int], ["1", "2"], [1, 2]),
    (list[str], '["a", "b"]', ["a", "b"]),
    (dict[str, int], '{"a": "1"}', {"a": 1}),
    (Item, '{"name": "x"}', {"name": "x", "qty": 1}),
    (Item, {"name": "x", "qty": "3"}, {"name": "x", "qty": 3}),
    (list[Item], '[{"name": "a"}]', [{"name": "a", "qty": 1}]),
    (int | None, None, None),
    (int | None, "7", 7),
    (Literal["a", "b"], "b", "b"),
    (Mode, "slow", "slow"),
    (str | list[str], "[1]", "[1]"),  # a str is acceptable as is: no JSON decoding
]


@pytest.mark.parametrize(("annotation", "given_", "expected"), ACCEPTED)
async def test_accepted(annotation: Any, given_: Any, expected: Any) -> None:
    out = await _echo_tool(annotation).invoke({"v": given_})
    assert not out.is_error, out.content
    value = out.value["v"]
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, list):
        value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    assert value == expected


REJECTED = [
    (int, "4.5", "valid integer"),
    (int, 4.5, "fractional part"),
    (int, "four", "valid integer"),
    (int, True, None),  # bools are not ints in pydantic's lax mode either? (they are) -> checked below
    (bool, "maybe", "valid boolean"),
    (str, 42, "valid string"),
    (str, None, "valid string"),
    (list[int], "1,2", "valid list"),
    (list[int], '[1, "x"]', "v[1]"),
    (list[int], '{"a": 1}', "valid list"),
    (Item, "name=x", "valid dictionary"),
    (Item, '{"qty": 2}', "v.name"),
    (int | None, "null", None),
    (Literal["a", "b"], "c", "'a' or 'b'"),
    (Mode, "medium", "'fast' or 'slow'"),
]


@pytest.mark.parametrize(("annotation", "given_", "fragment"), REJECTED)
async def test_rejected(annotation: Any, given_: Any, fragment: str | None) -> None:
    adapter = TypeAdapter(annotation)
    try:
        adapter.validate_python(given_)
        lax_accepts = True
    except ValidationError:
        lax_accepts = False
    out = await _echo_tool(annotation).invoke({"v": given_})
    if lax_accepts:  # documented pydantic lax behaviour we follow, not a case we reject
        assert not out.is_error
        return
    assert out.is_error and out.error_kind == "validation"
    assert out.content.startswith("Invalid arguments for tool `echo`:")
    assert "`v" in out.content
    if fragment:
        assert fragment in out.content, out.content
    assert out.value is None


@FAST
@given(st.one_of(st.text(max_size=8), st.integers(), st.floats(allow_nan=False), st.booleans(), st.none()))
async def test_scalar_coercion_matches_pydantic_lax(value: Any) -> None:
    """Differential: for scalars we accept exactly what pydantic's lax mode accepts, with the same value."""
    for annotation in (int, float, bool, str):
        try:
            expected = TypeAdapter(annotation).validate_python(value)
            ok = True
        except ValidationError:
            ok = False
        out = await _echo_tool(annotation).invoke({"v": value})
        assert out.is_error is (not ok), (annotation, value, out.content)
        if ok:
            got = out.value["v"]
            # text like "nan" or "-inf" is a valid float in lax mode, and nan != nan
            assert got == expected or (got != got and expected != expected), (annotation, value)


@FAST
@given(
    st.recursive(
        st.integers() | st.text(max_size=4) | st.none(), lambda c: st.lists(c, max_size=3), max_leaves=6
    )
)
async def test_json_string_rescue_matches_validating_the_decoded_value(value: Any) -> None:
    """A list sent as a JSON string is accepted iff the decoded list itself would be."""
    adapter = TypeAdapter(list[int])
    try:
        expected = adapter.validate_python(value)
        ok = True
    except ValidationError:
        ok = False
    out = await _echo_tool(list[int]).invoke({"v": json.dumps(value)})
    assert out.is_error is (not ok)
    if ok:
        assert out.value["v"] == expected


async def test_error_message_lists_every_problem_for_the_model() -> None:
    @tool
    def book(city: str, nights: int, guests: list[str], breakfast: bool = False) -> str:
        return "ok"

    out = await book.invoke({"nights": "two", "guests": '["ann", 3]', "breakfst": True})
    assert out.error_kind == "validation"
    lines = out.content.splitlines()
    assert lines[0] == "Invalid arguments for tool `book`:"
    assert "- `city`: missing required argument" in lines
    assert any(
        line.startswith("- `nights`: Input should be a valid integer") and '"two"' in line for line in lines
    )
    assert any(line.startswith("- `guests[1]`: Input should be a valid string") for line in lines)
    assert "- `breakfst`: unexpected argument (this tool accepts: city, nights, guests, breakfast)" in lines
    assert lines[-1] == "Call `book` again with corrected arguments."


async def test_non_dict_arguments_are_a_validation_outcome() -> None:
    out = await _echo_tool(int).invoke(["not", "a", "dict"])  # type: ignore[arg-type]
    assert out.error_kind == "validation" and "expected named arguments" in out.content


async def test_long_bad_values_are_abbreviated_in_errors() -> None:
    out = await _echo_tool(int).invoke({"v": "x" * 5000})
    assert out.is_error and len(out.content) < 400


# --- execution -------------------------------------------------------------------------------------


async def test_sync_and_async_functions_and_context_injection() -> None:
    seen: list[str] = []

    @tool
    def sync_add(ctx: RunContext[int], a: int) -> int:
        seen.append(threading.current_thread().name)
        return a + ctx.deps

    @tool
    async def async_add(ctx: RunContext[int], a: int) -> int:
        await anyio.lowlevel.checkpoint()
        assert ctx.tool_name == "async_add" and ctx.tool_call_id == "call-1" and ctx.retry == 0
        return a + ctx.deps

    ctx: RunContext[int] = RunContext(deps=10)
    assert (await sync_add.invoke({"a": 1}, ctx)).content == "11"
    assert (await async_add.invoke({"a": "2"}, ctx, tool_call_id="call-1")).content == "12"
    assert seen and seen[0] != threading.main_thread().name  # sync tools do not block the loop


async def test_tool_exception_becomes_error_outcome() -> None:
    @tool
    def boom(x: int) -> int:
        raise KeyError(f"no such key {x}")

    out = await boom.invoke({"x": 1})
    assert out == ToolOutcome(
        "Tool `boom` failed: KeyError: 'no such key 1'", True, "exception", None, False, 1
    )


async def test_tool_error_is_verbatim_and_not_retried() -> None:
    calls = 0

    @tool(retries=3)
    async def picky(path: str) -> str:
        nonlocal calls
        calls += 1
        raise ToolError(f"file not found: {path}; did you mean b.py?")

    out = await picky.invoke({"path": "a.py"})
    assert (out.content, out.error_kind, out.attempts, calls) == (
        "file not found: a.py; did you mean b.py?",
        "error",
        1,
        1,
    )


async def test_retries_rerun_after_exceptions_and_timeouts() -> None:
    attempts: list[int] = []

    @tool(retries=2, timeout=0.2)
    async def flaky(ctx: RunContext[None]) -> str:
        attempts.append(ctx.retry)
        if ctx.retry == 0:
            raise ConnectionError("reset")
        if ctx.retry == 1:
            await anyio.sleep(30)  # times out
        return "third time lucky"

    out = await flaky.invoke({})
    assert (out.content, out.is_error, out.attempts) == ("third time lucky", False, 3)
    assert attempts == [0, 1, 2]

    @tool(retries=1)
    def always(x: int) -> int:
        raise ValueError("nope")

    out = await always.invoke({"x": 1})
    assert (out.error_kind, out.attempts) == ("exception", 2)


async def test_timeout_outcome() -> None:
    @tool(timeout=0.05)
    async def slow() -> str:
        await anyio.sleep(30)
        return "never"

    out = await slow.invoke({})
    assert (out.is_error, out.error_kind, out.content) == (
        True,
        "timeout",
        "Tool `slow` timed out after 0.05 s.",
    )


async def test_a_tools_own_timeouterror_is_an_exception_not_our_timeout() -> None:
    @tool(timeout=30)
    async def upstream() -> str:
        raise TimeoutError("upstream API timed out")

    out = await upstream.invoke({})
    assert out.error_kind == "exception" and "upstream API timed out" in out.content


async def test_run_cancellation_stops_tools_in_flight() -> None:
    started = anyio.Event()
    finished = False

    @tool
    async def long_job() -> str:
        nonlocal finished
        started.set()
        await anyio.sleep(30)
        finished = True
        return "done"

    ctx: RunContext[None] = RunContext()
    outcomes: list[ToolOutcome] = []

    async def run() -> None:
        outcomes.append(await long_job.invoke({}, ctx))

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await started.wait()
        ctx.cancellation.cancel("user pressed stop")
    assert not finished
    assert outcomes[0].error_kind == "cancelled"
    assert "user pressed stop" in outcomes[0].content
    # Once cancelled, later calls under the same run do not start at all.
    again = await long_job.invoke({}, ctx)
    assert again.error_kind == "cancelled" and again.attempts == 0


async def test_callers_cancellation_propagates() -> None:
    reached_after = False

    @tool(retries=5)
    async def long_job() -> str:
        await anyio.sleep(30)
        return "done"

    with anyio.move_on_after(0.05) as scope:
        await long_job.invoke({})
        reached_after = True
    assert scope.cancelled_caught and not reached_after


async def test_cancellation_objects_are_shared_between_per_call_contexts() -> None:
    c = Cancellation()
    ctx: RunContext[None] = RunContext(cancellation=c)
    assert ctx.for_call("t", None, 1).cancellation is c
    c.cancel()
    assert ctx.cancelled


async def test_missing_sandbox_is_a_clear_error() -> None:
    @tool
    async def needs_box(ctx: RunContext[None]) -> str:
        ctx.require_sandbox()
        return "unreachable"

    out = await needs_box.invoke({}, RunContext())
    assert out.error_kind == "exception"
    assert NoSandboxError.__name__ in out.content and "tool `needs_box` needs a sandbox" in out.content


async def test_bound_method_tool_invokes_with_its_instance() -> None:
    class Counter:
        def __init__(self) -> None:
            self.n = 0

        @tool
        async def bump(self, by: int = 1) -> int:
            self.n += by
            return self.n

    c = Counter()
    assert (await c.bump.invoke({"by": "5"})).content == "5"
    assert c.n == 5
    unbound = await Counter.bump.invoke({"by": 1})
    assert unbound.is_error and "not bound" in unbound.content


# --- output ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        (b"caf\xc3\xa9", "café"),
        (b"\xff\x00", "<binary data, 2 bytes, base64>\n/wA="),
        (None, "(no output)"),
        ({"a": [1, "é"]}, '{"a":[1,"é"]}'),
        ([1, 2], "[1,2]"),
        (Item(name="x"), '{"name":"x","qty":1}'),
        (Mode.FAST, '"fast"'),
        (3.5, "3.5"),
    ],
)
async def test_render_output(value: Any, text: str) -> None:
    assert render_output(value) == text

    @tool
    def give() -> Any:
        return value

    out = await give.invoke({})
    assert out.content == text and out.value is value


async def test_large_output_is_truncated_with_a_note() -> None:
    big = "".join(f"line {i}\n" for i in range(50_000))

    @tool(max_output_chars=1000)
    def dump() -> str:
        return big

    out = await dump.invoke({})
    assert out.truncated and len(out.content) <= 1000
    assert out.content.startswith("line 0\n") and out.content.endswith("line 49999\n")
    assert f"of {len(big)} characters truncated" in out.content
    # A per-run budget overrides the tool's own.
    ctx: RunContext[None] = RunContext(max_output_chars=500)
    assert len((await dump.invoke({}, ctx)).content) <= 500
    assert DEFAULT_MAX_OUTPUT_CHARS >= 1000


@FAST
@given(st.text(max_size=3000), st.integers(min_value=200, max_value=2500))
def test_truncate_middle_properties(text: str, budget: int) -> None:
    out, cut = truncate_middle(text, budget)
    assert len(out) <= budget
    if not cut:
        assert out == text and len(text) <= budget
        return
    splits = []
    for m in re.finditer(r"\n\[\.\.\. (\d+) of (\d+) characters truncated \.\.\.\]\n", out):
        head, tail, dropped = out[: m.start()], out[m.end() :], int(m.group(1))
        if text.startswith(head) and text.endswith(tail) and len(head) + dropped + len(tail) == len(text):
            splits.append((head, tail, int(m.group(2))))
    assert splits, out
    head, tail, total = splits[0]
    assert total == len(text)
    assert abs(len(head) - len(tail)) <= 1


def test_truncate_rejects_tiny_budgets() -> None:
    with pytest.raises(ValueError, match="at least"):
        truncate_middle("x" * 1000, 10)


def test_outcome_helpers_for_the_loop() -> None:
    unknown = ToolOutcome.unknown_tool("serch", ["search", "open"])
    assert unknown.error_kind == "unknown_tool" and "Available tools: open, search." in unknown.content
    denied = ToolOutcome.denied("shell", "user said no")
    assert denied.error_kind == "denied" and denied.content.endswith(": user said no")


async def test_sync_tool_timeout_abandons_the_thread() -> None:
    release = threading.Event()

    @tool(timeout=0.05)
    def blocking() -> str:
        release.wait(10)
        return "late"

    out = await blocking.invoke({})
    release.set()
    assert (out.error_kind, out.attempts) == ("timeout", 1)


async def test_number_for_a_text_parameter_gets_a_dsml_hint() -> None:
    out = await _echo_tool(str).invoke({"v": 3.11})
    assert out.error_kind == "validation"
    assert 'send text parameters as raw text with string="true"' in out.content


async def test_none_arguments_mean_no_arguments() -> None:
    @tool
    async def ping() -> str:
        return "pong"

    assert (await ping.invoke(None)).content == "pong"  # type: ignore[arg-type]
    assert (await _echo_tool(int).invoke(None)).content.endswith(
        "Call `echo` again with corrected arguments."
    )  # type: ignore[arg-type]


def test_run_context_rejects_a_useless_output_budget() -> None:
    with pytest.raises(ValueError, match="max_output_chars"):
        RunContext(max_output_chars=10)
