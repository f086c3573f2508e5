"""Request bodies of `/v1/chat/completions` and `/v1/completions`, validated into typed requests.

Why validate here rather than let the encoder or the engine fail: a failure deep inside would surface as
a 500, or worse as a generation over a prompt the client did not mean; every malformed field is refused
up front with a 400 that names it (`param`), as the OpenAI API does. Fields the server does not
implement (`n` > 1, `logprobs`, images) are refused the same way rather than silently ignored.

The three V4 modes (chat, thinking, thinking with maximum effort) are chosen by whichever switch a client
knows: OpenAI's `reasoning_effort` ("none"/"minimal" = chat, "low"/"medium"/"high" = thinking,
"max"/"xhigh" = maximum), vLLM's `chat_template_kwargs` (`thinking`, `reasoning_effort`; what agentkit's
own `chat:` backend sends) or DeepSeek's `thinking: {"type": "enabled" | "disabled"}`. Without any, the
request thinks (mode "high"), as the agent layer's default does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from agentkit.serve.errors import APIError, bad_request

ToolChoice = Literal["auto", "none", "required", "function"]
_ROLES = ("system", "developer", "user", "assistant", "tool")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_EFFORTS = {
    "none": "off",
    "minimal": "off",
    "low": "high",
    "medium": "high",
    "high": "high",
    "max": "max",
    "xhigh": "max",
}
MAX_STOPS = 4


@dataclass(frozen=True)
class Sampling:
    """What a request asks of the sampler; None means the server's default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    """Normalized for the DSML encoder: string contents, tools on the first system message."""
    tools: list[dict[str, Any]]
    tool_choice: ToolChoice
    tool_name: str | None
    thinking: Literal["off", "high", "max"]
    drop_thinking: bool
    sampling: Sampling
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | list[int]
    sampling: Sampling
    stream: bool
    include_usage: bool
    skip_special_tokens: bool
    return_token_ids: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _get(body: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    bad_bool = isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,))
    if bad_bool or not isinstance(value, kinds):
        names = kinds.__name__ if isinstance(kinds, type) else " or ".join(k.__name__ for k in kinds)
        raise bad_request(f"'{key}' must be {names}, got {type(value).__name__}", key, "invalid_type")
    return value


def _number(body: Mapping[str, Any], key: str, lo: float, hi: float, lo_open: bool = False) -> float | None:
    value = _get(body, key, (int, float))
    if value is None:
        return None
    if not (lo < value <= hi if lo_open else lo <= value <= hi):
        span = f"({lo}, {hi}]" if lo_open else f"[{lo}, {hi}]"
        raise bad_request(f"'{key}' must be in {span}, got {value}", key)
    return float(value)


def _sampling(body: Mapping[str, Any], max_tokens_keys: tuple[str, ...]) -> Sampling:
    if _get(body, "n", int, 1) != 1:
        raise bad_request("only n=1 is supported", "n", "unsupported_value")
    unsupported = {
        "logprobs": body.get("logprobs") not in (None, False, 0),
        "top_logprobs": body.get("top_logprobs") not in (None, 0),
        "echo": body.get("echo") not in (None, False),
        "best_of": body.get("best_of") not in (None, 1),
        "logit_bias": body.get("logit_bias") not in (None, {}),
        "suffix": body.get("suffix") not in (None, ""),
    }
    for key, refused in unsupported.items():
        if refused:
            raise bad_request(f"'{key}' is not supported by this server", key, "unsupported_parameter")
    max_tokens = None
    for key in max_tokens_keys:
        value = _get(body, key, int)
        if value is not None:
            if value < 1:
                raise bad_request(f"'{key}' must be >= 1, got {value}", key)
            max_tokens = value
    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stops = tuple(stop)
    elif stop is not None:
        raise bad_request("'stop' must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > MAX_STOPS or any(not s for s in stops):
        raise bad_request(f"'stop' takes at most {MAX_STOPS} non-empty strings", "stop")
    seed = _get(body, "seed", int)
    if seed is not None and not -(2**63) <= seed < 2**64:
        raise bad_request(f"'seed' must fit in 64 bits, got {seed}", "seed")
    top_k = _get(body, "top_k", int)
    if top_k is not None and top_k < -1:
        raise bad_request(f"'top_k' must be >= -1, got {top_k}", "top_k")
    return Sampling(
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0, lo_open=True),
        top_k=None if top_k is None or top_k <= 0 else top_k,
        seed=seed,
        max_tokens=max_tokens,
        stop=stops,
        ignore_eos=bool(_get(body, "ignore_eos", bool, False)),
    )


def _stream_options(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = bool(_get(body, "stream", bool, False))
    options = _get(body, "stream_options", dict, {})
    if options and not stream:
        raise bad_request("'stream_options' is only allowed with stream=true", "stream_options")
    include = _get(options, "include_usage", bool, False) if options else False
    return stream, bool(include)


def _model(body: Mapping[str, Any], served: tuple[str, ...]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("'model' is required (a string)", "model", "missing_required_parameter")
    if model not in served:
        raise APIError(
            404,
            f"The model '{model}' does not exist; this server serves {', '.join(served)}",
            param="model",
            code="model_not_found",
        )
    return model


# ------------------------------------------------------------------------------------------ messages


def _text_content(content: Any, where: str, *, allow_none: bool = False) -> str:
    """A string, or a list of text parts joined by newlines (as vLLM does); anything else is refused."""
    if content is None and allow_none:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, Mapping)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise bad_request(
                    f"{where}.content[{j}]: only text parts are supported (got {kind!r})",
                    f"{where}.content",
                    "unsupported_content",
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _tool_calls(raw: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise bad_request(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    calls = []
    for j, call in enumerate(raw):
        here = f"{where}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f"{here} needs function.name (a string)", here)
        args = fn.get("arguments", "{}")
        if not isinstance(args, str):
            raise bad_request(f"{here}.function.arguments must be a JSON string", here)
        calls.append(
            {
                "id": str(call.get("id") or ""),
                "type": "function",
                "function": {"name": fn["name"], "arguments": args},
            }
        )
    return calls


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list", "messages", "invalid_type")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise bad_request(f"{where} must be an object", where, "invalid_type")
        role = msg.get("role")
        if role not in _ROLES:
            raise bad_request(
                f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}", f"{where}.role"
            )
        if role == "assistant":
            d: dict[str, Any] = {
                "role": role,
                "content": _text_content(msg.get("content"), where, allow_none=True),
            }
            reasoning = msg.get("reasoning_content", msg.get("reasoning"))
            if reasoning is not None:
                if not isinstance(reasoning, str):
                    raise bad_request(
                        f"{where}.reasoning_content must be a string", f"{where}.reasoning_content"
                    )
                d["reasoning_content"] = reasoning
            if msg.get("tool_calls"):
                d["tool_calls"] = _tool_calls(msg["tool_calls"], where)
        elif role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise bad_request(f"{where}.tool_call_id is required (a string)", f"{where}.tool_call_id")
            d = {"role": "tool", "tool_call_id": call_id, "content": _text_content(msg.get("content"), where)}
        elif role == "developer" and not _text_content(msg.get("content"), where):
            raise bad_request(f"{where}: a developer message needs non-empty content", f"{where}.content")
        else:
            d = {"role": role, "content": _text_content(msg.get("content"), where)}
        out.append(d)
    if out[-1]["role"] not in ("user", "tool", "developer"):
        # the encoder hands the turn to the model only after these; after an assistant or system message
        # the model would be asked to continue a finished turn
        raise bad_request(
            f"the last message must be from the user, a tool or the developer, not {out[-1]['role']!r}",
            "messages",
        )
    return out


# --------------------------------------------------------------------------------------------- tools


def _check_schema(schema: Any, where: str) -> None:
    """A tool's `parameters` must be a valid JSON schema for an object (checked against the metaschema)."""
    if not isinstance(schema, Mapping):
        raise bad_request(f"{where} must be a JSON schema object", where, "invalid_tool_schema")
    if schema.get("type", "object") != "object":
        raise bad_request(
            f"{where}.type must be 'object', got {schema.get('type')!r}", where, "invalid_tool_schema"
        )
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
    except ImportError:  # pragma: no cover - the server extra installs jsonschema
        pass
    except jsonschema.SchemaError as exc:
        raise bad_request(
            f"{where} is not a valid JSON schema: {exc.message}", where, "invalid_tool_schema"
        ) from exc


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list", "tools", "invalid_type")
    out, seen = [], set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function":
            raise bad_request(
                f"{where} must be {{'type': 'function', 'function': {{...}}}}", where, "invalid_tool_schema"
            )
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise bad_request(
                f"{where}.function must be an object", f"{where}.function", "invalid_tool_schema"
            )
        name = fn.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            raise bad_request(
                f"{where}.function.name must match {_TOOL_NAME.pattern}, got {name!r}",
                f"{where}.function.name",
                "invalid_tool_schema",
            )
        if name in seen:
            raise bad_request(
                f"{where}: duplicate tool name {name!r}", f"{where}.function.name", "invalid_tool_schema"
            )
        seen.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise bad_request(
                f"{where}.function.description must be a string", f"{where}.function.description"
            )
        if "parameters" in fn:
            _check_schema(fn["parameters"], f"{where}.function.parameters")
        out.append({"type": "function", "function": dict(fn)})
    return out


def _tool_choice(raw: Any, tools: list[dict[str, Any]]) -> tuple[ToolChoice, str | None]:
    if raw is None:
        return ("auto", None)
    if raw in ("auto", "none", "required"):
        if raw == "required" and not tools:
            raise bad_request("tool_choice 'required' needs tools", "tool_choice")
        return (raw, None)
    if isinstance(raw, Mapping) and raw.get("type") == "function":
        name = (raw.get("function") or {}).get("name") if isinstance(raw.get("function"), Mapping) else None
        names = [t["function"]["name"] for t in tools]
        if name not in names:
            raise bad_request(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return ("function", name)
    raise bad_request(
        "tool_choice must be 'auto', 'none', 'required' or {'type': 'function', 'function': {'name': ...}}",
        "tool_choice",
    )


def _thinking(body: Mapping[str, Any]) -> tuple[Literal["off", "high", "max"], bool]:
    mode: str = "high"
    kwargs = _get(body, "chat_template_kwargs", dict, {})
    drop = _get(kwargs, "drop_thinking", bool, True)
    effort = _get(body, "reasoning_effort", str)
    if effort is not None:
        if effort not in _EFFORTS:
            raise bad_request(
                f"reasoning_effort must be one of {', '.join(_EFFORTS)}; got {effort!r}", "reasoning_effort"
            )
        mode = _EFFORTS[effort]
    thinking = body.get("thinking")
    if isinstance(thinking, Mapping):
        if thinking.get("type") not in ("enabled", "disabled"):
            raise bad_request("thinking.type must be 'enabled' or 'disabled'", "thinking")
        if thinking["type"] == "disabled":
            mode = "off"
        elif mode == "off":
            mode = "high"
    elif thinking is not None:
        raise bad_request("'thinking' must be an object {'type': 'enabled' | 'disabled'}", "thinking")
    if "thinking" in kwargs:
        on = _get(kwargs, "thinking", bool)
        if not on:
            mode = "off"
        elif mode == "off":
            mode = "high"
    if kwargs.get("reasoning_effort") == "max" and mode != "off":
        mode = "max"
    return mode, drop  # type: ignore[return-value]


def _response_format(body: Mapping[str, Any]) -> Any:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise bad_request(
            "response_format.type must be 'text', 'json_object' or 'json_schema'", "response_format"
        )
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "object"}
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise bad_request("response_format.json_schema.schema must be an object", "response_format")
    return spec["schema"]


def parse_chat(body: Any, served: tuple[str, ...]) -> ChatRequest:
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object", None, "invalid_type")
    model = _model(body, served)
    messages = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    choice, name = _tool_choice(body.get("tool_choice"), tools)
    thinking, drop = _thinking(body)
    fmt = _response_format(body)
    if tools or fmt is not None:
        # the V4 encoder renders tools (and an answer schema) as part of the system message
        if messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": ""})
        if tools:
            messages[0]["tools"] = tools
        if fmt is not None:
            messages[0]["response_format"] = fmt
    stream, include_usage = _stream_options(body)
    return ChatRequest(
        model=model,
        messages=messages,
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        thinking=thinking,
        drop_thinking=drop,
        sampling=_sampling(body, ("max_tokens", "max_completion_tokens")),
        stream=stream,
        include_usage=include_usage,
    )


def parse_completion(body: Any, served: tuple[str, ...], vocab_size: int) -> CompletionRequest:
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object", None, "invalid_type")
    model = _model(body, served)
    prompt: Any = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise bad_request(
                "'prompt' must be a string or a non-empty list of token ids (one prompt per request)",
                "prompt",
            )
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise bad_request(
                f"token id {bad} in 'prompt' is outside the vocabulary [0, {vocab_size})", "prompt"
            )
    elif not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string or list of token ids", "prompt")
    sampling = _sampling(body, ("max_tokens",))
    if sampling.max_tokens is None:
        sampling = Sampling(**{**sampling.__dict__, "max_tokens": 16})  # the OpenAI API's default
    stream, include_usage = _stream_options(body)
    return CompletionRequest(
        model=model,
        prompt=prompt,
        sampling=sampling,
        stream=stream,
        include_usage=include_usage,
        skip_special_tokens=bool(_get(body, "skip_special_tokens", bool, True)),
        return_token_ids=bool(_get(body, "return_token_ids", bool, False)),
    )


__all__ = ["ChatRequest", "CompletionRequest", "Sampling", "parse_chat", "parse_completion"]
