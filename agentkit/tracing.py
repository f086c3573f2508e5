"""OpenTelemetry spans for a run: run -> step -> model call / tool calls, in GenAI semantic conventions.

Only `opentelemetry-api` is used: spans go to whatever tracer provider the app installed (its SDK, its
exporter); agentkit bundles none. When no provider is installed a run gets `NO_TRACE`, whose methods hand
back one shared do-nothing context manager, so an untraced loop pays an attribute lookup and a call per
span site, not the API's no-op span machinery (bench/loop.py shows no difference). The check is made at
each run's start, so a provider installed later is picked up by the next run.

Span tree (names and `gen_ai.operation.name` from the GenAI conventions where one exists):

    invoke_agent <agent>             one run (or one resumption of it); totals, final status
      agentkit.step                  one step: the model call and the tools it started
        chat <model>                 from the request until the model's Finish: usage, finish reason
        execute_tool <tool>          one per call, siblings when they run in parallel

Content (prompts, the model's output, tool arguments and results) is recorded only when asked for:
`Agent.trace_content = True`, or the conventional environment variable
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true. It is off by default because prompts and tool
results routinely carry data an exporter should not receive.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentkit.backends.assembly import Turn
    from agentkit.backends.base import ModelRequest
    from agentkit.messages import ToolCall
    from agentkit.session import RunState

__all__ = ["NO_TRACE", "RunTrace", "for_run"]

CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_REMOTE = frozenset({"deepseek", "chat", "completions"})  # backends that call a server
TRACER_NAME = "agentkit"


class _Null:
    """The do-nothing span context: entering gives itself, `finish` ignores the turn."""

    def __enter__(self) -> _Null:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def finish(self, turn: Turn) -> None:
        return None


_NULL = _Null()


class _NoTrace:
    """What an untraced run uses: every span site gets the shared `_NULL`."""

    enabled = False

    def run(self) -> Any:
        return _NULL

    def step(self, number: int) -> Any:
        return _NULL

    def model_call(self, request: ModelRequest) -> Any:
        return _NULL

    def tool_call(self, index: int, call: ToolCall) -> Any:
        return _NULL


NO_TRACE = _NoTrace()


def _tracer() -> Any:
    """The global provider's tracer, or None when none is installed (the API's proxy or no-op).

    An app that installed a provider has imported `opentelemetry.trace` (or names one in
    OTEL_PYTHON_TRACER_PROVIDER); otherwise there is none, and the API's import (~25 ms) is skipped."""
    if "opentelemetry.trace" not in sys.modules and "OTEL_PYTHON_TRACER_PROVIDER" not in os.environ:
        return None
    try:
        from opentelemetry import trace
    except ImportError:  # opentelemetry-api is a dependency, but a trimmed install must still run
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from agentkit import __version__

    return trace.get_tracer(TRACER_NAME, __version__)


def for_run(spec: Any, state: RunState) -> RunTrace | _NoTrace:
    """The trace for one run of `spec` (an agent or its per-run view)."""
    tracer = _tracer()
    if tracer is None:
        return NO_TRACE
    capture = getattr(spec, "trace_content", None)
    if capture is None:
        capture = os.environ.get(CAPTURE_ENV, "").strip().lower() in ("1", "true", "yes")
    return RunTrace(tracer, spec, state, bool(capture))


def _model_names(name: str) -> tuple[str, str]:
    """(provider, model) from a backend name: `deepseek:deepseek-v4-flash`, `completions:<url>#m`, ..."""
    kind, _, rest = name.partition(":")
    if not rest:
        return "agentkit", name
    model = rest.rsplit("#", 1)[1] if "#" in rest else rest
    return kind, model


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        parts.append({"type": "reasoning", "content": message["reasoning_content"]})
    if message.get("content"):
        parts.append({"type": "text", "content": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": fn.get("name"),
                "arguments": fn.get("arguments"),
            }
        )
    return parts


def _messages_json(messages: Sequence[Any]) -> str:
    """Messages in the conventions' shape: [{"role", "parts": [...]}], tool results as their own parts."""
    from agentkit.messages import message_to_dict

    out: list[dict[str, Any]] = []
    for m in messages:
        d = message_to_dict(m)
        role = d.get("role")
        if role == "system":
            continue  # recorded once, as gen_ai.system_instructions
        if role == "tool":
            part = {"type": "tool_call_response", "id": d.get("tool_call_id"), "response": d.get("content")}
            out.append({"role": "tool", "parts": [part]})
        else:
            out.append({"role": role, "parts": _parts(d)})
    return json.dumps(out, ensure_ascii=False, default=str)


def _fail(span: Any, exc: BaseException, kind: str | None = None) -> None:
    import anyio
    from opentelemetry.trace import Status, StatusCode

    cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
    error_type = kind or ("cancelled" if cancelled else type(exc).__qualname__)
    span.set_attribute("error.type", error_type)
    if not cancelled:
        span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, str(exc) or error_type))


class _ModelSpan:
    def __init__(self, span: Any, capture: bool) -> None:
        self.span = span
        self.capture = capture

    def finish(self, turn: Turn) -> None:
        f = turn.finish
        span = self.span
        if f is not None:
            span.set_attribute("gen_ai.usage.input_tokens", f.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", f.completion_tokens)
            span.set_attribute("gen_ai.usage.cache_read.input_tokens", f.cached_tokens)
            span.set_attribute("agentkit.usage.prefilled_tokens", f.prefilled_tokens)
            span.set_attribute("gen_ai.response.finish_reasons", [f.reason])
        if turn.first_chunk_s is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", turn.first_chunk_s)
        span.set_attribute("agentkit.tool_calls", len(turn.calls))
        if self.capture:
            calls = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
                }
                for c in turn.calls
            ]
            msg = {
                "reasoning_content": "".join(turn.reasoning),
                "content": "".join(turn.content),
                "tool_calls": calls,
            }
            out = [{"role": "assistant", "parts": _parts(msg), "finish_reason": f.reason if f else None}]
            span.set_attribute("gen_ai.output.messages", json.dumps(out, ensure_ascii=False))


class RunTrace:
    """The spans of one run. Each context is entered and left in one task, as context attach needs."""

    enabled = True

    def __init__(self, tracer: Any, spec: Any, state: RunState, capture: bool) -> None:
        self.tracer = tracer
        self.spec = spec
        self.state = state
        self.capture = capture
        self.provider, self.model = _model_names(str(getattr(spec.model, "name", "model")))
        self.agent_name = str(getattr(spec, "name", None) or "agentkit")
        self.run_span: Any = None
        self.step_span: Any = None

    def _parent(self) -> Any:
        from opentelemetry import trace

        span = self.step_span or self.run_span
        return trace.set_span_in_context(span) if span is not None else None

    @contextlib.contextmanager
    def _span(
        self, name: str, attributes: dict[str, Any], current: bool = True, client: bool = False
    ) -> Iterator[Any]:
        from opentelemetry import context as otel_context
        from opentelemetry import trace

        kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
        span = self.tracer.start_span(name, context=self._parent(), kind=kind, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span)) if current else None
        try:
            yield span
        except BaseException as exc:
            _fail(span, exc)
            raise
        finally:
            if token is not None:
                otel_context.detach(token)
            span.end()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        st = self.state
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": self.agent_name,
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "gen_ai.conversation.id": st.run_id,
        }
        if self.capture:
            instructions = getattr(self.spec, "instructions", "")
            if instructions:
                attrs["gen_ai.system_instructions"] = json.dumps([{"type": "text", "content": instructions}])
        base = dict(st.baseline)
        with self._span(f"invoke_agent {self.agent_name}", attrs) as span:
            self.run_span = span
            try:
                yield
            finally:
                u = st.usage
                span.set_attribute(
                    "gen_ai.usage.input_tokens", u.prompt_tokens - int(base.get("prompt_tokens", 0))
                )
                span.set_attribute(
                    "gen_ai.usage.output_tokens", u.completion_tokens - int(base.get("completion_tokens", 0))
                )
                span.set_attribute(
                    "gen_ai.usage.cache_read.input_tokens",
                    u.cached_prompt_tokens - int(base.get("cached_prompt_tokens", 0)),
                )
                span.set_attribute("agentkit.run.status", st.status)
                span.set_attribute("agentkit.run.steps", st.step)
                self.run_span = None

    @contextlib.contextmanager
    def step(self, number: int) -> Iterator[None]:
        attrs = {"agentkit.step": number, "gen_ai.conversation.id": self.state.run_id}
        with self._span("agentkit.step", attrs) as span:
            self.step_span = span
            try:
                yield
            finally:
                self.step_span = None

    @contextlib.contextmanager
    def model_call(self, request: ModelRequest) -> Iterator[_ModelSpan]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": self.provider,
            "gen_ai.request.model": self.model,
            "gen_ai.conversation.id": request.run_id,
            "agentkit.step": self.state.step,
        }
        if request.max_tokens is not None:
            attrs["gen_ai.request.max_tokens"] = request.max_tokens
        if self.capture:
            attrs["gen_ai.input.messages"] = _messages_json(request.messages)
        # not made current: tools the model's block starts are the step's children, not the call's
        remote = self.provider in _REMOTE  # the conventions: CLIENT for a model over the network
        with self._span(f"chat {self.model}", attrs, current=False, client=remote) as span:
            yield _ModelSpan(span, self.capture)

    @contextlib.contextmanager
    def tool_call(self, index: int, call: ToolCall) -> Iterator[None]:
        tool = self.spec.tools.get(call.name)
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": call.name,
            "gen_ai.tool.call.id": call.id,
            "gen_ai.tool.type": "extension" if getattr(tool, "remote_name", None) else "function",
            "agentkit.step": self.state.step,
        }
        if tool is not None and tool.description:
            attrs["gen_ai.tool.description"] = tool.description[:1000]
        if self.capture:
            attrs["gen_ai.tool.call.arguments"] = json.dumps(call.arguments, ensure_ascii=False, default=str)
        with self._span(f"execute_tool {call.name}", attrs) as span:
            yield
            result = self.state.block_results.get(index)
            if result is None:
                if index in self.state.pending:
                    span.set_attribute("agentkit.tool.pending_approval", True)
                return
            if self.capture:
                span.set_attribute("gen_ai.tool.call.result", result.content)
            if result.is_error:
                from opentelemetry.trace import Status, StatusCode

                span.set_attribute("error.type", result.error_kind or "tool_error")
                span.set_status(Status(StatusCode.ERROR, result.content[:200]))
