"""Messages -> V4 prompt text, byte-identical to DeepSeek's `encoding_dsv4.encode_messages`.

The reference's quirks are reproduced on purpose (spec §12): a prompt that differs by one byte from what
the model was trained on costs accuracy, and a remote server's prefix cache only hits on identical text.
Among them: tool results merged into the next user turn and sorted by call order, earlier reasoning
kept whenever any message carries tools, a user turn followed by `latest_reminder` emitting its
assistant transition before the reminder, and `arguments` that are not a JSON-object string rendered as
one parameter named `arguments`.

Beyond `encode_messages`, the `render_*` helpers produce the suffixes an agent loop appends to a
transcript without re-rendering history; tests pin them to `encode_messages` so the two never drift.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .errors import DSMLEncodeError
from .tokens import (
    ASSISTANT,
    BOS,
    DSML,
    EOS,
    LATEST_REMINDER,
    REASONING_EFFORT_MAX,
    REASONING_EFFORTS,
    RESPONSE_FORMAT_TEMPLATE,
    TASK_TOKENS,
    THINK_END,
    THINK_START,
    THINKING_MODES,
    TOOL_CALLS_CLOSE,
    TOOL_CALLS_OPEN,
    TOOL_RESULT_CLOSE,
    TOOL_RESULT_OPEN,
    TOOLS_SECTION_TEMPLATE,
    USER,
)
from .types import ToolCall, to_json

Message = Mapping[str, Any]


def _json(value: Any, what: str) -> str:
    try:
        return to_json(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DSMLEncodeError(f"{what} is not JSON-serializable: {exc}") from exc


def _text(value: Any, what: str) -> str:
    """Where the reference joins strings, a non-string is a TypeError there; say so clearly here."""
    if not isinstance(value, str):
        raise DSMLEncodeError(f"{what} must be a string, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------ fragments


def render_tools_section(tools: Sequence[Mapping[str, Any]]) -> str:
    """The `## Tools` text for OpenAI-style tools (`{"type": "function", "function": {...}}`)."""
    schemas = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, Mapping) or "function" not in tool:
            raise DSMLEncodeError(f"tools[{i}] must be an OpenAI tool object with a 'function' key")
        schemas.append(_json(tool["function"], f"tools[{i}].function"))
    return TOOLS_SECTION_TEMPLATE.format(
        dsml=DSML, think_start=THINK_START, think_end=THINK_END, schemas="\n".join(schemas)
    )


def _render_parameters(arguments: Mapping[str, Any]) -> str:
    lines = []
    for key, value in arguments.items():
        if isinstance(value, str):
            lines.append(f'<{DSML}parameter name="{key}" string="true">{value}</{DSML}parameter>')
        else:
            body = _json(value, f"argument {key!r}")
            lines.append(f'<{DSML}parameter name="{key}" string="false">{body}</{DSML}parameter>')
    return "\n".join(lines)


def _arguments_from_openai(arguments: Any, name: Any) -> Mapping[str, Any]:
    # The reference json.loads the string and falls back to {"arguments": <raw>} on any failure,
    # including a non-string (a dict is then rendered as one JSON parameter named "arguments").
    decoded: Any
    try:
        decoded = json.loads(arguments)
    except Exception:
        return {"arguments": arguments}
    if not isinstance(decoded, dict):
        raise DSMLEncodeError(
            f"tool call {name!r}: arguments must encode a JSON object, got {type(decoded).__name__}"
        )
    return decoded


def _render_invoke(name: Any, arguments: Mapping[str, Any]) -> str:
    return f'<{DSML}invoke name="{name}">\n{_render_parameters(arguments)}\n</{DSML}invoke>'


def render_tool_call_block(calls: Iterable[ToolCall | Mapping[str, Any]]) -> str:
    """Canonical `<｜DSML｜tool_calls>` block (no leading blank line; the assistant turn adds it).

    Accepts typed `ToolCall`s (arguments rendered from the dict) or OpenAI tool-call dicts (arguments
    string decoded as the reference does).
    """
    invokes = []
    for i, call in enumerate(calls):
        if isinstance(call, ToolCall):
            invokes.append(_render_invoke(call.name, call.arguments))
            continue
        try:
            fn = call["function"]
            name, raw = fn["name"], fn["arguments"]
        except (KeyError, TypeError) as exc:
            raise DSMLEncodeError(f"tool_calls[{i}] needs function.name and function.arguments") from exc
        invokes.append(_render_invoke(name, _arguments_from_openai(raw, name)))
    return f"{TOOL_CALLS_OPEN}\n" + "\n".join(invokes) + f"\n{TOOL_CALLS_CLOSE}"


def _render_tool_result_content(content: Any) -> str:
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, Mapping):
                raise DSMLEncodeError("tool result content parts must be objects with a 'type'")
            if part.get("type") == "text":
                parts.append(_text(part.get("text", ""), "tool result text part"))
            else:
                parts.append(f"[Unsupported {part.get('type')}]")
        content = "\n\n".join(parts)
    return f"{TOOL_RESULT_OPEN}{content}{TOOL_RESULT_CLOSE}"


def render_tool_results(results_in_call_order: Iterable[Any]) -> str:
    """One user turn of `<tool_result>` blocks, as encode_messages renders merged tool messages.

    Each item is a tool message's `content` (a string, or a list of OpenAI content parts). Follow it
    with `render_assistant_prefix` to hand the turn back to the model.
    """
    return USER + "\n\n".join(_render_tool_result_content(c) for c in results_in_call_order)


def render_user_turn(text: str) -> str:
    return USER + _text(text, "user content")


def render_assistant_prefix(thinking_mode: str) -> str:
    """The transition after the latest user/tool turn: where generation starts.

    In thinking mode this is always `<think>` for the turn being generated (the reference writes
    `</think>` only for turns before the last user message when old reasoning is dropped).
    """
    _check_mode(thinking_mode)
    return ASSISTANT + (THINK_START if thinking_mode == "thinking" else THINK_END)


def render_assistant_turn(
    message: Message, thinking_mode: str, *, keep_reasoning: bool = True, eos: bool = True
) -> str:
    """An assistant message as it follows its prefix: `{reasoning}</think>{content}{block}<EOS>`.

    This is also exactly the text a model generates for that turn, so it is what the parsers read.
    """
    _check_mode(thinking_mode)
    thinking = ""
    if thinking_mode == "thinking" and keep_reasoning:
        thinking = f"{message.get('reasoning_content') or ''}{THINK_END}"
    block = ""
    tool_calls = message.get("tool_calls")
    if tool_calls:
        block = "\n\n" + render_tool_call_block(tool_calls)
    return f"{thinking}{message.get('content') or ''}{block}" + (EOS if eos else "")


def _check_mode(thinking_mode: str) -> None:
    if thinking_mode not in THINKING_MODES:
        raise DSMLEncodeError(f"thinking_mode must be 'chat' or 'thinking', got {thinking_mode!r}")


# --------------------------------------------------------------------------------- pre-processing


def _merge_tool_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Tool messages become tool_result blocks of a user turn; consecutive user turns merge."""
    merged: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise DSMLEncodeError(f"messages[{i}] must be a mapping, got {type(msg).__name__}")
        role = msg.get("role")
        last = merged[-1] if merged else None
        if role == "tool":
            block = {
                "type": "tool_result",
                "tool_use_id": msg.get("tool_call_id", ""),
                "content": msg.get("content", ""),
            }
            if last is not None and last.get("role") == "user" and "content_blocks" in last:
                last["content_blocks"].append(block)
            else:
                merged.append({"role": "user", "content_blocks": [block]})
        elif role == "user":
            block = {"type": "text", "text": msg.get("content", "")}
            if (
                last is not None
                and last.get("role") == "user"
                and "content_blocks" in last
                and last.get("task") is None
            ):
                last["content_blocks"].append(block)
            else:
                new: dict[str, Any] = {
                    "role": "user",
                    "content": msg.get("content", ""),
                    "content_blocks": [block],
                }
                for key in ("task", "wo_eos", "mask"):
                    if key in msg:
                        new[key] = msg[key]
                merged.append(new)
        else:
            merged.append(dict(msg))
    return merged


def _call_id(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return ""
    fn = call.get("function")
    return call.get("id") or (fn.get("id", "") if isinstance(fn, Mapping) else "")


def _sort_tool_results(messages: Sequence[Mapping[str, Any]], mutate_from: int) -> None:
    """Reorder tool_result blocks of each user turn by the preceding assistant's call order.

    Messages before `mutate_from` only feed the call order (DeepSeek sorts over context + messages).
    Unknown ids sort as position 0, and the sort is stable, as in the reference.
    """
    order: dict[Any, int] = {}
    for i, msg in enumerate(messages):
        role = msg.get("role")
        tool_calls = msg.get("tool_calls")
        if role == "assistant" and tool_calls:
            order = {}
            for idx, call in enumerate(tool_calls):
                cid = _call_id(call)
                if cid:
                    order[cid] = idx
        elif role == "user" and msg.get("content_blocks") and i >= mutate_from:
            blocks = msg["content_blocks"]
            results = [b for b in blocks if b.get("type") == "tool_result"]
            if len(results) > 1 and order:
                ordered = iter(sorted(results, key=lambda b: order.get(b.get("tool_use_id", ""), 0)))
                assert isinstance(msg, dict)
                msg["content_blocks"] = [
                    next(ordered) if b.get("type") == "tool_result" else b for b in blocks
                ]


def _last_user_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for idx in range(len(messages) - 1, -1, -1):
        if messages[idx].get("role") in ("user", "developer"):
            return idx
    return -1


_KEEP_ROLES = frozenset({"user", "system", "tool", "latest_reminder", "direct_search_results"})


def _drop_thinking(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Before the last user turn: assistants lose reasoning, developer (and unknown roles) vanish."""
    last_user = _last_user_index(messages)
    out = []
    for idx, msg in enumerate(messages):
        role = msg.get("role")
        if role in _KEEP_ROLES or idx >= last_user:
            out.append(msg)
        elif role == "assistant":
            out.append({k: v for k, v in msg.items() if k != "reasoning_content"})
    return out


# -------------------------------------------------------------------------------------- rendering


def _with_extras(body: str, msg: Mapping[str, Any], where: str) -> str:
    tools = msg.get("tools")
    if tools:
        body += "\n\n" + render_tools_section(tools)
    if msg.get("response_format"):
        body += "\n\n" + RESPONSE_FORMAT_TEMPLATE.format(
            schema=_json(msg["response_format"], f"{where}.response_format")
        )
    return body


def _render_user(msg: Mapping[str, Any], where: str) -> str:
    blocks = msg.get("content_blocks")
    if not blocks:
        return USER + f"{msg.get('content') or ''}"
    parts = []
    for block in blocks:
        kind = block.get("type")
        if kind == "text":
            parts.append(_text(block.get("text", ""), f"{where}.content"))
        elif kind == "tool_result":
            parts.append(_render_tool_result_content(block.get("content", "")))
        else:  # pragma: no cover - merged user turns only hold text and tool_result blocks
            parts.append(f"[Unsupported {kind}]")
    return USER + "\n\n".join(parts)


def _render_message(
    index: int,
    messages: Sequence[Mapping[str, Any]],
    thinking_mode: str,
    drop_thinking: bool,
    reasoning_effort: str | None,
    last_user: int,
) -> str:
    msg = messages[index]
    role = msg.get("role")
    where = f"message {index} ({role})"
    thinking = thinking_mode == "thinking"
    prompt = REASONING_EFFORT_MAX if index == 0 and thinking and reasoning_effort == "max" else ""

    if role == "system":
        prompt += _with_extras(f"{msg.get('content') or ''}", msg, where)
    elif role == "developer":
        content = msg.get("content")
        if not content:
            raise DSMLEncodeError(f"{where}: a developer message needs non-empty content")
        prompt += _with_extras(USER + _text(content, f"{where}.content"), msg, where)
    elif role == "user":
        prompt += _render_user(msg, where)
    elif role == "latest_reminder":
        prompt += f"{LATEST_REMINDER}{msg.get('content')}"
    elif role == "assistant":
        prev_has_task = index >= 1 and messages[index - 1].get("task") is not None
        keep_reasoning = thinking and not prev_has_task and (not drop_thinking or index > last_user)
        prompt += render_assistant_turn(
            msg, thinking_mode, keep_reasoning=keep_reasoning, eos=not msg.get("wo_eos", False)
        )
    else:
        raise DSMLEncodeError(f"{where}: unknown role {role!r}")

    if index + 1 < len(messages) and messages[index + 1].get("role") not in ("assistant", "latest_reminder"):
        return prompt

    task = msg.get("task")
    if task is not None:
        if task not in TASK_TOKENS:
            raise DSMLEncodeError(f"{where}: invalid task {task!r}; valid: {sorted(TASK_TOKENS)}")
        if task == "action":
            prompt += ASSISTANT + (THINK_START if thinking else THINK_END) + TASK_TOKENS[task]
        else:
            prompt += TASK_TOKENS[task]
    elif role in ("user", "developer"):
        opens_thinking = thinking and (not drop_thinking or index >= last_user)
        prompt += ASSISTANT + (THINK_START if opens_thinking else THINK_END)
    return prompt


def encode_messages(
    messages: Sequence[Message],
    thinking_mode: str,
    *,
    context: Sequence[Message] | None = None,
    drop_thinking: bool = True,
    add_default_bos_token: bool = True,
    reasoning_effort: str | None = None,
) -> str:
    """Render OpenAI-style messages to the V4 prompt (see the module docstring for the rules).

    `context` is history that is already in the caller's prompt: it shapes how `messages` render (call
    order, which reasoning is kept) but is not rendered itself, and no BOS is added.
    """
    try:
        return _encode(
            messages, thinking_mode, context, drop_thinking, add_default_bos_token, reasoning_effort
        )
    except DSMLEncodeError:
        raise
    except (TypeError, AttributeError, KeyError, ValueError, RecursionError) as exc:
        # Shapes the reference would also crash on (e.g. a non-dict content part); name the problem.
        raise DSMLEncodeError(f"malformed message list: {type(exc).__name__}: {exc}") from exc


def _encode(
    messages: Sequence[Message],
    thinking_mode: str,
    context: Sequence[Message] | None,
    drop_thinking: bool,
    add_default_bos_token: bool,
    reasoning_effort: str | None,
) -> str:
    _check_mode(thinking_mode)
    if reasoning_effort not in REASONING_EFFORTS:
        raise DSMLEncodeError(f"reasoning_effort must be None, 'high' or 'max', got {reasoning_effort!r}")
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise DSMLEncodeError("messages must be a list of message mappings")
    raw_context = list(context) if context else []
    for i, msg in enumerate(raw_context):
        if not isinstance(msg, Mapping):
            raise DSMLEncodeError(f"context[{i}] must be a mapping, got {type(msg).__name__}")

    merged = _merge_tool_messages(messages)
    _sort_tool_results([*raw_context, *merged], mutate_from=len(raw_context))
    ctx: list[dict[str, Any]] = []
    if raw_context:
        ctx = _merge_tool_messages(raw_context)
        _sort_tool_results(ctx, mutate_from=0)
    full = ctx + merged

    prompt = BOS if add_default_bos_token and not ctx else ""
    effective_drop = drop_thinking and not any(m.get("tools") for m in full)
    if thinking_mode == "thinking" and effective_drop:
        full = _drop_thinking(full)
        count = len(full) - len(_drop_thinking(ctx))
        start = len(full) - count
    else:
        count = len(merged)
        start = len(ctx)

    last_user = _last_user_index(full)
    parts = [prompt]
    for idx in range(start, start + max(count, 0)):
        parts.append(_render_message(idx, full, thinking_mode, effective_drop, reasoning_effort, last_user))
    return "".join(parts)
