"""Per-step records (`RunResult.steps`): what each model call and each tool call cost, as plain data.

Driven by the scripted model with real tools; the records are checked against what the run did (the
tokens the backend reported, the calls made, which failed and why) and survive a JSON round trip.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from agentkit.tools.tool import ToolError, tool

from agentkit.agent import Agent
from agentkit.backends import ScriptedModel
from agentkit.dsml import render_assistant_turn
from agentkit.session import RunState

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def out(content: str = "", calls: list[tuple[str, dict[str, Any]]] = ()) -> str:  # type: ignore[assignment]
    msg = {
        "reasoning_content": "thinking it over",
        "content": content,
        "tool_calls": [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}} for n, a in calls
        ],
    }
    return render_assistant_turn(msg, "thinking")


@tool
async def nap(seconds: float) -> str:
    """Sleep a little.

    Args:
        seconds: how long
    """
    await anyio.sleep(seconds)
    return "rested"


@tool
def fail(why: str) -> str:
    """Always fails.

    Args:
        why: the reason to give
    """
    raise ToolError(why)


async def test_steps_record_model_calls_and_tool_outcomes() -> None:
    model = ScriptedModel(
        [
            out(calls=[("nap", {"seconds": 0.05}), ("fail", {"why": "no"}), ("missing", {})]),
            out(calls=[("nap", {"seconds": "not a number"})]),
            out(content="done"),
        ]
    )
    result = await Agent(model, [nap, fail]).run("go")
    assert result.ok and result.text == "done"
    steps = result.steps
    assert [s.step for s in steps] == [1, 2, 3]
    first = steps[0]
    assert first.model is not None and first.model.finish_reason == "stop"
    assert first.model.completion_tokens > 0 and first.model.latency_s >= 0
    by_name = {t.name: t for t in first.tools}
    assert set(by_name) == {"nap", "fail", "missing"}
    assert not by_name["nap"].is_error and by_name["nap"].duration_s >= 0.05
    assert by_name["nap"].arguments == {"seconds": 0.05}
    assert by_name["fail"].is_error and by_name["missing"].is_error
    assert by_name["missing"].error_kind == "unknown_tool"
    assert [t.error_kind for t in steps[1].tools] == ["validation"]
    assert steps[2].tools == []
    # the records add up to the run's usage
    assert sum(s.model.completion_tokens for s in steps if s.model) == result.usage.completion_tokens
    assert sum(s.model.prompt_tokens for s in steps if s.model) == result.usage.prompt_tokens
    assert sum(len(s.tools) for s in steps) == 4
    # plain data: a saved run keeps them
    again = RunState.from_json(result.state.to_json())
    assert again.steps == steps
