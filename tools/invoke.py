"""One tool call, run under its policy and turned into something the model can read: a `ToolOutcome`.

One idea: dispatch. Given a tool and the argument dict the DSML parser produced, `invoke_tool` checks
the arguments (rendering a validation failure as a short list the model can act on), runs the function
(async directly, sync in a worker thread) under a per-attempt timeout and the run-wide cancellation,
retries after an exception or timeout, and bounds the output. It never raises for anything the model
or the tool did wrong; only cancellation of the caller's own task propagates. What the arguments *are*
(schema, lax validation, binding back to a call) is `agentkit.tools.schema`; the `Tool` object and
`@tool` are `agentkit.tools.tool`.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
from agentkit.tools.context import RunContext
from agentkit.tools.output import render_output, truncate_middle
from agentkit.tools.schema import FunctionSchema
from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from agentkit.tools.tool import Tool

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "ArgumentsInvalid",
    "ErrorKind",
    "ToolError",
    "ToolOutcome",
    "check_arguments",
    "invoke_tool",
    "render_validation_error",
]

DEFAULT_MAX_OUTPUT_CHARS = 20_000

ErrorKind = Literal["validation", "exception", "error", "timeout", "cancelled", "unknown_tool", "denied"]


class ToolError(Exception):
    """Raised by a tool to tell the model something went wrong, in the tool's own words.

    Unlike other exceptions it is not retried and its message is passed on verbatim (no exception
    type name), so a tool can say "file not found: x.py; did you mean y.py?" and nothing else.
    """


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """The result of one tool call as the loop and the model see it.

    `content` is what goes into the `<tool_result>`; `value` keeps the raw return value for code that
    wants it (None on errors); `attempts` counts executions, including retries.
    """

    content: str
    is_error: bool = False
    error_kind: ErrorKind | None = None
    value: Any = None
    truncated: bool = False
    attempts: int = 0

    @classmethod
    def unknown_tool(cls, name: str, available: typing.Iterable[str]) -> ToolOutcome:
        names = ", ".join(sorted(available)) or "(none)"
        return cls(f"Unknown tool `{name}`. Available tools: {names}.", True, "unknown_tool")

    @classmethod
    def denied(cls, name: str, reason: str = "") -> ToolOutcome:
        why = f": {reason}" if reason else "."
        return cls(f"The call to `{name}` was not approved{why}", True, "denied")


# -- arguments, as the model is told about them ------------------------------------------------------


class ArgumentsInvalid(Exception):
    """The arguments were rejected; the message is already written for the model."""


def check_arguments(name: str, schema: FunctionSchema, arguments: Any) -> BaseModel:
    """Validate DSML arguments for tool `name`; raise `ArgumentsInvalid` with a model-readable message."""
    if arguments is None:  # some parsers hand over None for a call without parameters
        arguments = {}
    if not isinstance(arguments, dict):
        raise ArgumentsInvalid(
            f"Invalid arguments for tool `{name}`: expected named arguments (an object), "
            f"got {type(arguments).__name__}."
        )
    try:
        return schema.validate(arguments)
    except ValidationError as exc:
        error = exc
    raise ArgumentsInvalid(render_validation_error(name, schema, error))


def render_validation_error(name: str, schema: FunctionSchema, exc: ValidationError) -> str:
    """At most three lines per argument, real parameter names, and what the tool accepts."""
    lines = [f"Invalid arguments for tool `{name}`:"]
    accepted = ", ".join(p.name for p in schema.params) or "(no arguments)"
    per_arg: dict[str, int] = {}
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        top = str(loc[0]) if loc else ""
        if per_arg.get(top, 0) >= 3:
            continue
        per_arg[top] = per_arg.get(top, 0) + 1
        path = _render_loc(loc, schema.property_names)
        if err["type"] == "missing":
            lines.append(f"- `{path}`: missing required argument")
        elif err["type"] == "extra_forbidden" and len(loc) == 1:
            lines.append(f"- `{path}`: unexpected argument (this tool accepts: {accepted})")
        else:
            hint = ""
            if err["type"] == "string_type" and isinstance(err.get("input"), int | float | bool):
                hint = '; send text parameters as raw text with string="true"'
            lines.append(f"- `{path}`: {err['msg']} (got {_short_repr(err.get('input'))}){hint}")
    lines.append(f"Call `{name}` again with corrected arguments.")
    return "\n".join(lines)


def _render_loc(loc: tuple[int | str, ...], property_names: frozenset[str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = part
        elif part in property_names:
            # Skip union-member tags ("int", "list[int]") that pydantic puts into the location.
            out += f".{part}"
    return out


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- execution ----------------------------------------------------------------------------------------


async def invoke_tool(
    tool: Tool, arguments: Any, ctx: RunContext[Any], tool_call_id: str | None = None
) -> ToolOutcome:
    """Validate, run (with timeout and retries), render. Never raises for model or tool errors.

    `retries` re-runs the function after an exception or a timeout; `ToolError` and argument errors
    are not retried because the same call would fail the same way. Sync functions run in a worker
    thread; on timeout the thread is abandoned (Python cannot kill it), so blocking sync tools should
    keep their own timeouts.
    """
    schema = tool.function_schema
    try:
        validated = check_arguments(tool.name, schema, arguments)
    except ArgumentsInvalid as exc:
        return ToolOutcome(str(exc), True, "validation")
    budget = ctx.max_output_chars or tool.max_output_chars or DEFAULT_MAX_OUTPUT_CHARS
    timeout = tool.timeout
    attempt = 0
    while True:
        if ctx.cancellation.cancelled:
            return _cancelled(tool.name, ctx, attempt)
        attempt += 1
        call_ctx = ctx.for_call(tool.name, tool_call_id, attempt - 1)
        scope = anyio.CancelScope(
            deadline=anyio.current_time() + timeout if timeout is not None else math.inf
        )
        ctx.cancellation.register(scope)
        failure: ToolOutcome
        try:
            with scope:
                value = await _run(tool.function, schema, call_ctx, validated)
            if not scope.cancelled_caught:
                content, cut = truncate_middle(render_output(value), budget)
                return ToolOutcome(content, False, None, value, cut, attempt)
            if ctx.cancellation.cancelled:
                return _cancelled(tool.name, ctx, attempt)
            text = f"Tool `{tool.name}` timed out after {timeout:g} s."
            failure = ToolOutcome(text, True, "timeout", attempts=attempt)
        except ToolError as exc:
            content, cut = truncate_middle(str(exc) or type(exc).__name__, budget)
            return ToolOutcome(content, True, "error", None, cut, attempt)
        except Exception as exc:
            text = f"Tool `{tool.name}` failed: {type(exc).__name__}: {exc}"
            content, cut = truncate_middle(text, budget)
            failure = ToolOutcome(content, True, "exception", None, cut, attempt)
        finally:
            ctx.cancellation.unregister(scope)
        if attempt > tool.retries:
            return failure


def _cancelled(name: str, ctx: RunContext[Any], attempts: int) -> ToolOutcome:
    reason = ctx.cancellation.reason or "cancelled"
    text = f"Tool `{name}` was cancelled ({reason})."
    return ToolOutcome(text, True, "cancelled", attempts=attempts)


async def _run(
    function: Callable[..., Any], schema: FunctionSchema, ctx: RunContext[Any], validated: BaseModel
) -> Any:
    args, kwargs = schema.bind(ctx, validated)
    if schema.is_async:
        return await function(*args, **kwargs)
    call = functools.partial(function, *args, **kwargs)
    result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
    if inspect.isawaitable(result):  # a sync wrapper that hands back a coroutine
        return await result
    return result
