"""Typed tools: a Python function in, a schema for the model and a safe `invoke` out.

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

import functools
import inspect
import json
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, overload

import anyio
from agentkit.tools.context import MIN_OUTPUT_CHARS, RunContext
from agentkit.tools.docstrings import parse_docstring
from agentkit.tools.output import render_output, truncate_middle
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

__all__ = [
    "DEFAULT_MAX_OUTPUT_CHARS",
    "ErrorKind",
    "Tool",
    "ToolDefinitionError",
    "ToolError",
    "ToolOutcome",
    "render_output",
    "tool",
    "truncate_middle",
]

DEFAULT_MAX_OUTPUT_CHARS = 20_000
# What OpenAI-compatible servers accept as a function name; DSML itself is looser, but a name that
# round-trips through every backend is worth the restriction.
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

ErrorKind = Literal["validation", "exception", "error", "timeout", "cancelled", "unknown_tool", "denied"]


class ToolDefinitionError(TypeError):
    """A function cannot become a tool (bad name, *args, unresolvable annotation, ...)."""


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


class _ArgumentsInvalid(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    field: str  # internal attribute name on the arguments model (`f_<i>`), immune to name clashes
    kind: inspect._ParameterKind


class Tool:
    """A callable the model can use: schema, validation, execution policy.

    Build one with `@tool`. A `Tool` is still callable like the original function (for tests and
    direct use); `invoke` is the model-facing entry. Defined on a class, it binds like a method:
    `obj.method` is a `Tool` whose schema omits `self`.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout: float | None = None,
        retries: int = 0,
        sequential: bool = False,
        requires_approval: bool = False,
        max_output_chars: int | None = None,
    ) -> None:
        if not callable(function):
            raise ToolDefinitionError(f"@tool needs a function, got {type(function).__name__}")
        self.function = function
        self.name: str = name if name is not None else str(getattr(function, "__name__", ""))
        if not _NAME_RE.match(self.name):
            raise ToolDefinitionError(
                f"tool name {self.name!r} must be 1-64 characters of letters, digits, '_' or '-' "
                "(pass name=... to @tool)"
            )
        if timeout is not None and not (timeout > 0 and math.isfinite(timeout)):
            raise ToolDefinitionError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retries < 0:
            raise ToolDefinitionError(f"retries must be >= 0, got {retries}")
        if max_output_chars is not None and max_output_chars < MIN_OUTPUT_CHARS:
            raise ToolDefinitionError(
                f"max_output_chars must be >= {MIN_OUTPUT_CHARS}, got {max_output_chars}"
            )
        self.timeout = timeout
        self.retries = retries
        self.sequential = sequential
        self.requires_approval = requires_approval
        self.max_output_chars = max_output_chars
        self._unbound_method = False
        self._is_async = _is_async_callable(function)
        doc = parse_docstring(inspect.getdoc(function))
        self.description = description if description is not None else doc.description
        self.takes_context, self._params, self.args_model = self._build_model(doc.params)
        self.parameters_schema = _clean_schema(self.args_model.model_json_schema(by_alias=True))
        self._property_names = _property_names(self.parameters_schema)

    # -- definition ---------------------------------------------------------------------------------

    def _build_model(self, docs: dict[str, str]) -> tuple[bool, list[_Param], type[BaseModel]]:
        fn = self.function
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError) as exc:
            raise ToolDefinitionError(f"cannot read the signature of {fn!r}: {exc}") from exc
        try:
            hints = typing.get_type_hints(fn, include_extras=True)
        except Exception as exc:
            raise ToolDefinitionError(
                f"cannot resolve the type annotations of tool `{self.name}`: {exc} "
                "(types used in a tool's signature must be importable from its module)"
            ) from exc
        params = list(sig.parameters.values())
        if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
            # A function defined in a class body: `__get__` binds it; the receiver is not an argument.
            if not inspect.ismethod(fn):
                self._unbound_method = True
            params = params[1:]
        takes_context = False
        if params and _is_run_context(hints.get(params[0].name)):
            takes_context = True
            params = params[1:]
        fields: dict[str, Any] = {}
        out: list[_Param] = []
        for i, p in enumerate(params):
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                raise ToolDefinitionError(
                    f"tool `{self.name}`: *args/**kwargs (`{p.name}`) cannot be described to a model; "
                    "name each parameter"
                )
            annotation = hints.get(p.name, Any)
            if _is_run_context(annotation):
                raise ToolDefinitionError(f"tool `{self.name}`: RunContext must be the first parameter")
            field_name = f"f_{i}"
            extra: dict[str, Any] = {"alias": p.name}
            if p.name in docs and docs[p.name] and not _has_description(annotation):
                extra["description"] = docs[p.name]
            if isinstance(p.default, FieldInfo):
                info = FieldInfo.merge_field_infos(p.default, Field(**extra))
            elif p.default is inspect.Parameter.empty:
                info = Field(**extra)
            else:
                info = Field(default=p.default, **extra)
            fields[field_name] = (annotation, info)
            out.append(_Param(p.name, field_name, p.kind))
        try:
            model = create_model(
                f"{self.name}_arguments",
                __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
                **fields,
            )
            model.model_json_schema(by_alias=True)
        except Exception as exc:
            raise ToolDefinitionError(
                f"tool `{self.name}`: parameter types are not schema-able: {exc}"
            ) from exc
        return takes_context, out, model

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

    # -- validation ---------------------------------------------------------------------------------

    def validate_arguments(self, arguments: Any) -> BaseModel:
        """Validate DSML arguments, with lax coercion plus one rescue; raise `ValueError` for the model.

        Pydantic's lax mode already accepts `"3"` for an int and `"true"` for a bool. The one slip it
        does not cover is a list or object sent as a JSON string (a `string="true"` parameter holding
        `[1, 2]`): such a value is JSON-decoded, and only if it decodes to a list or object and the
        argument failed as a string. Nothing looser: `"1,2"` is still not a list.
        """
        try:
            return self._validate(arguments)
        except _ArgumentsInvalid as exc:
            raise ValueError(str(exc)) from None

    def _validate(self, arguments: Any) -> BaseModel:
        if arguments is None:  # some parsers hand over None for a call without parameters
            arguments = {}
        if not isinstance(arguments, dict):
            raise _ArgumentsInvalid(
                f"Invalid arguments for tool `{self.name}`: expected named arguments (an object), "
                f"got {type(arguments).__name__}."
            )
        try:
            return self.args_model.model_validate(arguments)
        except ValidationError as exc:
            first = exc
        patched = dict(arguments)
        for err in first.errors():
            loc = err["loc"]
            if not loc or err["type"] in ("missing", "extra_forbidden"):
                continue
            key = loc[0]
            value = arguments.get(key) if isinstance(key, str) else None
            if isinstance(value, str):
                try:
                    decoded = json.loads(value)
                except ValueError:
                    continue
                if isinstance(decoded, list | dict):
                    patched[key] = decoded
        if patched != arguments:
            try:
                return self.args_model.model_validate(patched)
            except ValidationError as exc:
                first = exc
        raise _ArgumentsInvalid(self._render_validation_error(first))

    def _render_validation_error(self, exc: ValidationError) -> str:
        lines = [f"Invalid arguments for tool `{self.name}`:"]
        accepted = ", ".join(p.name for p in self._params) or "(no arguments)"
        per_arg: dict[str, int] = {}
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            top = str(loc[0]) if loc else ""
            if per_arg.get(top, 0) >= 3:
                continue
            per_arg[top] = per_arg.get(top, 0) + 1
            path = self._render_loc(loc)
            if err["type"] == "missing":
                lines.append(f"- `{path}`: missing required argument")
            elif err["type"] == "extra_forbidden" and len(loc) == 1:
                lines.append(f"- `{path}`: unexpected argument (this tool accepts: {accepted})")
            else:
                hint = ""
                if err["type"] == "string_type" and isinstance(err.get("input"), int | float | bool):
                    hint = '; send text parameters as raw text with string="true"'
                lines.append(f"- `{path}`: {err['msg']} (got {_short_repr(err.get('input'))}){hint}")
        lines.append(f"Call `{self.name}` again with corrected arguments.")
        return "\n".join(lines)

    def _render_loc(self, loc: tuple[int | str, ...]) -> str:
        out = ""
        for part in loc:
            if isinstance(part, int):
                out += f"[{part}]"
            elif not out:
                out = part
            elif part in self._property_names:
                # Skip union-member tags ("int", "list[int]") that pydantic puts into the location.
                out += f".{part}"
        return out

    # -- execution ----------------------------------------------------------------------------------

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
        tools should keep their own timeouts.
        """
        if ctx is None:
            ctx = RunContext()
        if self._unbound_method:
            return ToolOutcome(
                f"Tool `{self.name}` is a method and was not bound to an instance.", True, "exception"
            )
        try:
            validated = self._validate(arguments)
        except _ArgumentsInvalid as exc:
            return ToolOutcome(str(exc), True, "validation")
        budget = ctx.max_output_chars or self.max_output_chars or DEFAULT_MAX_OUTPUT_CHARS
        attempt = 0
        while True:
            if ctx.cancellation.cancelled:
                return self._cancelled(ctx, attempt)
            attempt += 1
            call_ctx = ctx.for_call(self.name, tool_call_id, attempt - 1)
            scope = anyio.CancelScope(
                deadline=anyio.current_time() + self.timeout if self.timeout is not None else math.inf
            )
            ctx.cancellation.register(scope)
            failure: ToolOutcome
            try:
                with scope:
                    value = await self._run(call_ctx, validated)
                if not scope.cancelled_caught:
                    content, cut = truncate_middle(render_output(value), budget)
                    return ToolOutcome(content, False, None, value, cut, attempt)
                if ctx.cancellation.cancelled:
                    return self._cancelled(ctx, attempt)
                text = f"Tool `{self.name}` timed out after {self.timeout:g} s."
                failure = ToolOutcome(text, True, "timeout", attempts=attempt)
            except ToolError as exc:
                content, cut = truncate_middle(str(exc) or type(exc).__name__, budget)
                return ToolOutcome(content, True, "error", None, cut, attempt)
            except Exception as exc:
                text = f"Tool `{self.name}` failed: {type(exc).__name__}: {exc}"
                content, cut = truncate_middle(text, budget)
                failure = ToolOutcome(content, True, "exception", None, cut, attempt)
            finally:
                ctx.cancellation.unregister(scope)
            if attempt > self.retries:
                return failure

    def _cancelled(self, ctx: RunContext[Any], attempts: int) -> ToolOutcome:
        reason = ctx.cancellation.reason or "cancelled"
        text = f"Tool `{self.name}` was cancelled ({reason})."
        return ToolOutcome(text, True, "cancelled", attempts=attempts)

    async def _run(self, ctx: RunContext[Any], validated: BaseModel) -> Any:
        args: list[Any] = [ctx] if self.takes_context else []
        kwargs: dict[str, Any] = {}
        for p in self._params:
            value = getattr(validated, p.field)
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        if self._is_async:
            return await self.function(*args, **kwargs)
        call = functools.partial(self.function, *args, **kwargs)
        result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        if inspect.isawaitable(result):  # a sync wrapper that hands back a coroutine
            return await result
        return result


def _is_async_callable(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isasyncgenfunction(fn):
        raise ToolDefinitionError("async generators cannot be tools; return the collected value instead")
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _is_run_context(annotation: Any) -> bool:
    if annotation is None:
        return False
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    target = get_origin(annotation) or annotation
    return isinstance(target, type) and issubclass(target, RunContext)


def _has_description(annotation: Any) -> bool:
    if get_origin(annotation) is not typing.Annotated:
        return False
    return any(isinstance(m, FieldInfo) and m.description for m in get_args(annotation)[1:])


_DATA_KEYS = frozenset({"default", "enum", "const", "examples"})
_NAME_MAP_KEYS = frozenset({"properties", "$defs", "definitions", "patternProperties"})


def _clean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's auto titles (tokens the model does not need) and put the usual keys first."""

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(x) for x in node]
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key == "title" and isinstance(value, str):
                continue
            if key in _DATA_KEYS:
                out[key] = value
            elif key in _NAME_MAP_KEYS and isinstance(value, dict):
                out[key] = {name: walk(sub) for name, sub in value.items()}
            else:
                out[key] = walk(value)
        return out

    cleaned = walk(schema)
    order = ["type", "properties", "required", "additionalProperties", "$defs"]
    result = {k: cleaned[k] for k in order if k in cleaned}
    result.update({k: v for k, v in cleaned.items() if k not in result})
    result.setdefault("properties", {})
    return result


def _property_names(schema: Any) -> frozenset[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for x in node:
                walk(x)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _DATA_KEYS:
                    continue
                if key == "properties" and isinstance(value, dict):
                    names.update(value)
                walk(value)

    walk(schema)
    return frozenset(names)


def _short_repr(value: Any, limit: int = 80) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@overload
def tool(function: Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    function: None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    sequential: bool = False,
    requires_approval: bool = False,
    max_output_chars: int | None = None,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    function: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout: float | None = None,
    retries: int = 0,
    sequential: bool = False,
    requires_approval: bool = False,
    max_output_chars: int | None = None,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a tool from a sync or async function (or method), bare (`@tool`) or configured.

    `timeout` (seconds) bounds each attempt; `retries` re-runs after an exception or timeout;
    `sequential=True` asks the loop to run this call alone rather than in parallel with others;
    `requires_approval=True` asks the loop to get a human's yes before invoking it.
    """

    def make(fn: Callable[..., Any]) -> Tool:
        return Tool(
            fn,
            name=name,
            description=description,
            timeout=timeout,
            retries=retries,
            sequential=sequential,
            requires_approval=requires_approval,
            max_output_chars=max_output_chars,
        )

    if function is not None:
        return make(function)
    return make
