"""A Python function seen as a tool's interface: JSON schema out, validated arguments in.

One idea: the mapping between a function's signature (+ docstring) and what the model sees and sends.
`function_schema` reads the signature once, builds a pydantic arguments model (parameters become
fields `f_<i>` aliased to their real names, so no parameter name can clash with pydantic's own
attributes) and the cleaned JSON schema the DSML encoder prints. `FunctionSchema.validate` is the
lenient half of the same mapping (pydantic lax mode plus one JSON rescue) and `FunctionSchema.bind`
its inverse, back to `*args, **kwargs` for the call. Nothing here runs a tool or writes text for the
model; that is `agentkit.tools.invoke`.
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, get_args, get_origin

from agentkit.tools.context import RunContext
from agentkit.tools.docstrings import parse_docstring
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model
from pydantic.fields import FieldInfo

__all__ = ["FunctionSchema", "Param", "ToolDefinitionError", "function_schema"]


class ToolDefinitionError(TypeError):
    """A function cannot become a tool (bad name, *args, unresolvable annotation, ...)."""


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    field: str  # internal attribute name on the arguments model (`f_<i>`), immune to name clashes
    kind: inspect._ParameterKind


@dataclass(frozen=True, slots=True)
class FunctionSchema:
    """What `function_schema` learned about one function; immutable, shared by bound copies of a tool."""

    description: str  # the docstring's description ("" without one)
    takes_context: bool  # the first parameter (after self/cls) is a RunContext, injected per call
    unbound_method: bool  # defined in a class body: the first parameter is the receiver, not an argument
    is_async: bool
    params: tuple[Param, ...]
    args_model: type[BaseModel]
    json_schema: dict[str, Any]  # cleaned: no auto titles, usual keys first
    property_names: frozenset[str]  # every property name anywhere in json_schema (error locations)

    def validate(self, arguments: dict[str, Any]) -> BaseModel:
        """Validate with lax coercion plus one rescue; raise pydantic's `ValidationError` otherwise.

        Pydantic's lax mode already accepts `"3"` for an int and `"true"` for a bool. The one slip it
        does not cover is a list or object sent as a JSON string (a `string="true"` parameter holding
        `[1, 2]`): such a value is JSON-decoded, and only if it decodes to a list or object and the
        argument failed as a string. Nothing looser: `"1,2"` is still not a list. The error raised is
        the one from the last attempt.
        """
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
            if isinstance(key, str) and isinstance(value, str):
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
        raise first

    def bind(self, ctx: RunContext[Any], validated: BaseModel) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments that call the function with `validated` (and `ctx`)."""
        args: list[Any] = [ctx] if self.takes_context else []
        kwargs: dict[str, Any] = {}
        for p in self.params:
            value = getattr(validated, p.field)
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        return args, kwargs


def function_schema(
    function: Callable[..., Any], name: str, *, allow_untyped: bool = False
) -> FunctionSchema:
    """Read `function` once; raise `ToolDefinitionError` for anything a model could not call.

    `name` is the tool's name, used in messages and to name the arguments model. A parameter without an
    annotation is refused (naming every such parameter, as a type checker would) unless `allow_untyped`,
    which types it as a JSON value (`untyped_value`).
    """
    is_async = _is_async_callable(function)
    doc = parse_docstring(inspect.getdoc(function))
    takes_context, unbound_method, params, model = _build_model(function, name, doc.params, allow_untyped)
    json_schema = _clean_schema(model.model_json_schema(by_alias=True))
    return FunctionSchema(
        description=doc.description,
        takes_context=takes_context,
        unbound_method=unbound_method,
        is_async=is_async,
        params=tuple(params),
        args_model=model,
        json_schema=json_schema,
        property_names=_property_names(json_schema),
    )


def _build_model(
    fn: Callable[..., Any], name: str, docs: dict[str, str], allow_untyped: bool = False
) -> tuple[bool, bool, list[Param], type[BaseModel]]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"cannot read the signature of {fn!r}: {exc}") from exc
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolDefinitionError(
            f"cannot resolve the type annotations of tool `{name}`: {exc} "
            "(types used in a tool's signature must be importable from its module)"
        ) from exc
    params = list(sig.parameters.values())
    unbound_method = False
    if params and params[0].name in ("self", "cls") and params[0].annotation is inspect.Parameter.empty:
        # A function defined in a class body: `__get__` binds it; the receiver is not an argument.
        if not inspect.ismethod(fn):
            unbound_method = True
        params = params[1:]
    takes_context = False
    if params and _is_run_context(hints.get(params[0].name)):
        takes_context = True
        params = params[1:]
    fields: dict[str, Any] = {}
    out: list[Param] = []
    for i, p in enumerate(params):
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ToolDefinitionError(
                f"tool `{name}`: *args/**kwargs (`{p.name}`) cannot be described to a model; "
                "name each parameter"
            )
        annotation = hints.get(p.name, UNTYPED)
        if _is_run_context(annotation):
            raise ToolDefinitionError(f"tool `{name}`: RunContext must be the first parameter")
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
        out.append(Param(p.name, field_name, p.kind))
    untyped = [
        p.name
        for p in params
        if p.name not in hints
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    ]
    if untyped and not allow_untyped:
        names = ", ".join(f"`{n}`" for n in untyped)
        raise ToolDefinitionError(
            f"tool `{name}`: parameter{'s' if len(untyped) > 1 else ''} {names} "
            f"{'have' if len(untyped) > 1 else 'has'} no type annotation; annotate "
            f"{'them' if len(untyped) > 1 else 'it'} (e.g. `{untyped[0]}: int`) so the model's arguments "
            "are validated and converted, or pass @tool(allow_untyped=True) to take them as JSON values"
        )
    try:
        model = create_model(
            f"{name}_arguments",
            __config__=ConfigDict(extra="forbid", populate_by_name=False, arbitrary_types_allowed=False),
            **fields,
        )
        model.model_json_schema(by_alias=True)
    except Exception as exc:
        raise ToolDefinitionError(f"tool `{name}`: parameter types are not schema-able: {exc}") from exc
    return takes_context, unbound_method, out, model


def _json_or_text(value: Any) -> Any:
    """An untyped parameter's value: a string holding JSON is decoded (the model writes `3`, `[1, 2]` or
    `true` as text), anything else is kept as sent."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


UNTYPED: Any = Annotated[Any, BeforeValidator(_json_or_text)]
"""What `allow_untyped=True` types an unannotated parameter as: any JSON value (schema `{}`)."""


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
