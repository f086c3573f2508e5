"""An MCP server's tool as an agentkit `Tool`: its JSON schema for the prompt, its result as text.

The loop and the dispatcher see an ordinary `Tool` (name, schema, approval and ordering flags, an
`invoke` that never raises for what the model or the server did wrong), so MCP calls take the same
eager path as Python tools. What differs is where the parts come from: the schema is the server's own
JSON schema (not one derived from a Python signature), arguments are checked by the server (agentkit
only coerces DSML's raw-text parameters to the scalar types the schema names), and the result is the
server's content blocks rendered for the model.

Text from a server is not trusted to keep the prompt's structure: names, descriptions and schema strings
have the V4 chat format's special spellings defused before they are printed into the tools section.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Protocol

import anyio

from agentkit.mcp.errors import MCPCallError
from agentkit.tools.context import RunContext
from agentkit.tools.invoke import DEFAULT_MAX_OUTPUT_CHARS, ToolOutcome
from agentkit.tools.output import truncate_middle
from agentkit.tools.tool import Tool


class _Server(Protocol):
    """What a tool needs of its server (`agentkit.mcp.server.MCPServer`)."""

    label: str
    timeout: float | None

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any: ...


__all__ = ["MCPTool", "coerce_arguments", "defuse", "render_result"]

# The V4 format's special strings all use the fullwidth bar (<｜User｜>, ｜DSML｜, ...); the thinking tags
# are the other two. Printed from a server's description they would be read as structure.
_DEFUSE = {"｜": "|", "<think>": "<think >", "</think>": "</think >"}


def defuse(value: Any) -> Any:
    """`value` (a string, or JSON made of them) with the chat format's special spellings broken."""
    if isinstance(value, str):
        for bad, good in _DEFUSE.items():
            if bad in value:
                value = value.replace(bad, good)
        return value
    if isinstance(value, dict):
        return {defuse(k): defuse(v) for k, v in value.items()}
    if isinstance(value, list):
        return [defuse(v) for v in value]
    return value


_SCALARS: dict[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


def coerce_arguments(arguments: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """DSML sends a parameter written with `string="true"` as raw text; where the schema wants a number,
    boolean, array or object and the text is exactly that in JSON, send the decoded value instead.

    Anything else is passed on unchanged: the server validates its own arguments and says what is wrong.
    """
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(props, dict):
        return arguments
    out = dict(arguments)
    for key, value in arguments.items():
        prop = props.get(key)
        if not isinstance(value, str) or not isinstance(prop, dict):
            continue
        kinds = prop.get("type")
        kinds = [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []
        if "string" in kinds or not any(k in _SCALARS for k in kinds):
            continue
        try:
            decoded = json.loads(value)
        except ValueError:
            continue
        for kind in kinds:
            accepted = _SCALARS.get(kind)
            if accepted is None or not isinstance(decoded, accepted):
                continue
            if kind != "boolean" and isinstance(decoded, bool):
                continue
            if kind == "integer" and isinstance(decoded, float):
                continue
            if isinstance(decoded, float) and not math.isfinite(decoded):
                continue
            out[key] = decoded
            break
    return out


def _size(data: str) -> str:
    try:
        n = len(base64.b64decode(data, validate=False))
    except (binascii.Error, ValueError):
        n = len(data) * 3 // 4
    return f"{n} bytes"


def render_block(block: Any) -> str:
    """One content block as text. Binary content is described, never inlined: the model reads text."""
    kind = getattr(block, "type", None)
    if kind == "text":
        return str(block.text)
    if kind in ("image", "audio"):
        return f"[{kind}: {block.mime_type}, {_size(block.data)}]"
    if kind == "resource":
        res = block.resource
        text = getattr(res, "text", None)
        if isinstance(text, str):
            return f"[resource {res.uri}]\n{text}"
        mime = getattr(res, "mime_type", None) or "application/octet-stream"
        return f"[resource {res.uri}: {mime}, {_size(getattr(res, 'blob', ''))}]"
    if kind == "resource_link":
        about = f": {block.description}" if getattr(block, "description", None) else ""
        return f"[resource link {block.name} <{block.uri}>{about}]"
    return f"[{kind or 'unknown'} content]"


def render_result(result: Any) -> str:
    """A `CallToolResult` as the text of a tool result.

    Text blocks are what the server meant the model to read; structured content (the JSON a program
    would use) stands in only when there is no text, since servers also put it into a text block.
    """
    parts = [render_block(b) for b in result.content]
    has_text = any(getattr(b, "type", None) == "text" for b in result.content)
    if not has_text and result.structured_content is not None:
        parts.insert(0, json.dumps(result.structured_content, ensure_ascii=False))
    text = "\n\n".join(p for p in parts if p)
    if not text:
        return "(the tool returned an error and no message)" if result.is_error else "(no output)"
    return text


class MCPTool(Tool):
    """A tool of an `MCPServer`. Made by the server when it lists its tools; not built by hand.

    It keeps `Tool`'s model-facing contract but not its construction (that derives the schema from a
    Python signature), so `Tool.__init__` is not called: the attributes the loop reads are set here.
    """

    def __init__(self, server: _Server, spec: Any, name: str, requires_approval: bool) -> None:
        self.server = server
        self.remote_name: str = spec.name
        self.name = name
        self.description = defuse(spec.description or spec.title or "")
        schema = spec.input_schema if isinstance(spec.input_schema, dict) else {}
        self.parameters_schema = defuse(schema or {"type": "object", "properties": {}})
        self.output_schema: dict[str, Any] | None = spec.output_schema
        hints = spec.annotations
        self.idempotent = bool(hints is not None and (hints.idempotent_hint or hints.read_only_hint))
        self.timeout = None  # the server's call timeout applies (MCPServer(timeout=...))
        self.retries = 0
        self.sequential = False
        self.requires_approval = requires_approval
        self.max_output_chars = None
        self.takes_context = False
        self._unbound_method = False
        self.function = self._call

    def __repr__(self) -> str:
        return f"MCPTool(name={self.name!r}, server={self.server.label!r})"

    async def _call(self, **arguments: Any) -> str:
        """Direct use (`await tool(path="x")`): the rendered result, or `ToolError` when it failed."""
        from agentkit.tools.invoke import ToolError

        outcome = await self.invoke(arguments)
        if outcome.is_error:
            raise ToolError(outcome.content)
        return outcome.content

    def validate_arguments(self, arguments: Any) -> Any:
        if arguments is not None and not isinstance(arguments, dict):
            raise ValueError(
                f"Invalid arguments for tool `{self.name}`: expected named arguments (an object)"
            )
        return coerce_arguments(arguments or {}, self.parameters_schema)

    async def invoke(
        self,
        arguments: dict[str, Any],
        ctx: RunContext[Any] | None = None,
        *,
        tool_call_id: str | None = None,
    ) -> ToolOutcome:
        """Call the server; every failure (bad arguments, the server's error, a timeout, the server's
        end mid-call, a run-wide cancel) comes back as a `ToolOutcome` the model can read."""
        ctx = ctx if ctx is not None else RunContext()
        try:
            args = self.validate_arguments(arguments)
        except ValueError as exc:
            return ToolOutcome(str(exc), True, "validation")
        if ctx.cancellation.cancelled:
            return ToolOutcome(
                f"Tool `{self.name}` was cancelled ({ctx.cancellation.reason}).", True, "cancelled"
            )
        budget = ctx.max_output_chars or DEFAULT_MAX_OUTPUT_CHARS
        scope = anyio.CancelScope()
        ctx.cancellation.register(scope)
        try:
            with scope:
                result = await self.server.call_tool(self.remote_name, args)
        except TimeoutError:
            limit, label = self.server.timeout, self.server.label
            after = f"after {limit:g} s" if limit is not None else "(the MCP client's own read timeout)"
            text = f"Tool `{self.name}` timed out {after} (MCP server `{label}`)."
            return ToolOutcome(text, True, "timeout", attempts=1)
        except MCPCallError as exc:
            content, cut = truncate_middle(f"Tool `{self.name}` failed: {exc}", budget)
            return ToolOutcome(content, True, "exception", None, cut, 1)
        finally:
            ctx.cancellation.unregister(scope)
        if scope.cancelled_caught:
            reason = ctx.cancellation.reason or "cancelled"
            return ToolOutcome(f"Tool `{self.name}` was cancelled ({reason}).", True, "cancelled", attempts=1)
        content, cut = truncate_middle(render_result(result), budget)
        if result.is_error:
            return ToolOutcome(content, True, "error", None, cut, 1)
        return ToolOutcome(content, False, None, result.structured_content, cut, 1)
