"""Typed tools: a Python function in, a schema for the model and a safe `invoke` out.

One idea: the `Tool` object and the `@tool` decorator that makes it, with the decorator's options
declared once (`ToolOptions`). The parts it is made of live beside it: `agentkit.tools.schema`
(signature + docstring -> JSON schema, lenient argument validation) and `agentkit.tools.invoke`
(model-readable errors, timeouts, retries, `ToolOutcome`). Every name this module exported before
that split is still importable from here.

Contract with the agent loop (kept stable on purpose):

* `Tool.openai_schema()` is the `{"type": "function", "function": {...}}` object the DSML encoder
  prints into the tools section, one compact JSON line per tool.
* `await Tool.invoke(arguments, ctx)` takes the dict the DSML parser produced and never raises for
  anything the model or the tool did wrong: bad arguments, a tool exception, a timeout and a run-wide
  cancel all come back as a `ToolOutcome` whose `content` is written for the model to read and act on.
  The one thing that does propagate is cancellation of the *caller's* task (anyio/asyncio/trio), so a
  loop that is being torn down is not kept alive by its tools.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

from agentkit.tools.context import MIN_OUTPUT_CHARS, RunContext
from agentkit.tools.invoke import (
    DEFAULT_MAX_OUTPUT_CHARS,
    ArgumentsInvalid,
    ErrorKind,
    ToolError,
    ToolOutcome,
    check_arguments,
    invoke_tool,
)
from agentkit.tools.output import render_output, truncate_middle
from agentkit.tools.schema import FunctionSchema, ToolDefinitionError, function_schema
from pydantic import BaseModel

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "ErrorKind",
    "Tool",
    "ToolDefinitionError",
    "ToolError",
    "ToolOptions",
    "ToolOutcome",
    "render_output",
    "tool",
    "truncate_middle",
]

# What OpenAI-compatible servers accept as a function name; DSML itself is looser, but a name that
# round-trips through every backend is worth the restriction.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ToolOptions:
    """Everything `@tool` accepts besides the function: the one declaration of the options.

    `tool(**options)` builds one of these and it is the decorator (calling it on a function makes the
    `Tool`); `tool(fn)` and `Tool(fn, **options)` go through the same class, so a new option is added
    here and nowhere else. Values are checked when a `Tool` is made, not here.

    `name` / `description` override the function's name and docstring description; `timeout`
    (seconds) bounds each attempt; `retries` re-runs after an exception or timeout; `sequential=True`
    asks the loop to run this call alone rather than in parallel with others; `requires_approval=True`
    asks the loop to get a human's yes before invoking it; `max_output_chars` bounds the result text
    (a run's `RunContext.max_output_chars` wins over it); `idempotent=True` says running the same call
    twice does no more than running it once, so a durable run resumed after a crash may run again a
    call that was in flight (otherwise the model is told it was interrupted).
    """

    name: str | None = None
    description: str | None = None
    timeout: float | None = None
    retries: int = 0
    sequential: bool = False
    requires_approval: bool = False
    max_output_chars: int | None = None
    idempotent: bool = False
    allow_untyped: bool = False

    def __call__(self, function: Callable[..., Any], /) -> Tool:
        return Tool(function, self)


_DEFAULT_OPTIONS = ToolOptions()


class Tool:
    """A callable the model can use: schema, validation, execution policy.

    Build one with `@tool`. A `Tool` is still callable like the original function (for tests and
    direct use); `invoke` is the model-facing entry. Defined on a class, it binds like a method:
    `obj.method` is a `Tool` whose schema omits `self`.
    """

    def __init__(
        self, function: Callable[..., Any], options: ToolOptions | None = None, /, **overrides: Any
    ) -> None:
        if not callable(function):
            raise ToolDefinitionError(f"@tool needs a function, got {type(function).__name__}")
        opts = options if options is not None else _DEFAULT_OPTIONS
        if overrides:
            opts = dataclasses.replace(opts, **overrides)
        self.function = function
        self.name: str = opts.name if opts.name is not None else str(getattr(function, "__name__", ""))
        if not _NAME_RE.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} must be 1-64 characters of letters, digits, '_' or '-' "
                "(pass name=... to @tool)"
            )
        timeout = opts.timeout
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ToolDefinitionError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if opts.retries < 0:
            raise ToolDefinitionError(f"retries must be >= 0, got {opts.retries}")
        if opts.max_output_chars is not None and opts.max_output_chars < MIN_OUTPUT_CHARS:
            raise ToolDefinitionError(
                f"max_output_chars must be >= {MIN_OUTPUT_CHARS}, got {opts.max_output_chars}"
            )
        self.timeout = timeout
        self.retries = opts.retries
        self.sequential = opts.sequential
        self.requires_approval = opts.requires_approval
        self.max_output_chars = opts.max_output_chars
        self.idempotent = opts.idempotent
        schema = function_schema(function, self.name, allow_untyped=opts.allow_untyped)
        self.function_schema: FunctionSchema = schema
        self._unbound_method = schema.unbound_method
        self.description = opts.description if opts.description is not None else schema.description
        self.takes_context = schema.takes_context
        self.args_model: type[BaseModel] = schema.args_model
        self.parameters_schema = schema.json_schema

    def openai_schema(self) -> dict[str, Any]:
        """The object the V4 tools section prints (spec §12.4) and chat APIs accept as `tools[i]`."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters_schema,
            },
        }

    def __repr__(self) -> str:
        return f"Tool(name={self.name!r}, timeout={self.timeout}, retries={self.retries})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the wrapped function directly, bypassing validation (for tests and plain Python use)."""
        return self.function(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Tool:
        if instance is None or not self._unbound_method:
            return self
        bound = object.__new__(Tool)
        bound.__dict__.update(self.__dict__)
        bound.function = self.function.__get__(instance, owner)
        bound._unbound_method = False
        return bound

    def validate_arguments(self, arguments: Any) -> BaseModel:
        """Validate DSML arguments, with lax coercion plus one rescue; raise `ValueError` for the model.

        The rules are `FunctionSchema.validate`'s (`agentkit.tools.schema`); the message is the one
        `invoke` would put into the tool result.
        """
        try:
            return check_arguments(self.name, self.function_schema, arguments)
        except ArgumentsInvalid as exc:
            raise ValueError(str(exc)) from None

    async def invoke(
        self,
        arguments: dict[str, Any],
        ctx: RunContext[Any] | None = None,
        *,
        tool_call_id: str | None = None,
    ) -> ToolOutcome:
        """Validate, run (with timeout and retries), render. Never raises for model or tool errors.

        `retries` re-runs the function after an exception or a timeout; `ToolError` and argument
        errors are not retried because the same call would fail the same way. Sync functions run in
        a worker thread; on timeout the thread is abandoned (Python cannot kill it), so blocking sync
        tools should keep their own timeouts. The policy itself is `agentkit.tools.invoke`.
        """
        if ctx is None:
            ctx = RunContext()
        if self._unbound_method:
            return ToolOutcome(
                f"Tool `{self.name}` is a method and was not bound to an instance.", True, "exception"
            )
        return await invoke_tool(self, arguments, ctx, tool_call_id)


@overload
def tool(function: Callable[..., Any], /, **options: Any) -> Tool: ...


@overload
def tool(function: None = None, /, **options: Any) -> ToolOptions: ...


def tool(function: Callable[..., Any] | None = None, /, **options: Any) -> Tool | ToolOptions:
    """Make a tool from a sync or async function (or method), bare (`@tool`) or configured.

    `@tool(timeout=..., retries=..., ...)` takes the fields of `ToolOptions` (see there) and returns
    that `ToolOptions`, which is the decorator; `tool(fn, **options)` makes the `Tool` directly. An
    unknown option is a `TypeError`, as for any misspelt keyword.
    """
    opts = ToolOptions(**options) if options else _DEFAULT_OPTIONS
    if function is not None:
        return Tool(function, opts)
    return opts
