"""The smallest real agentkit program: one typed tool, one agent, one answer.

    python examples/quickstart.py                                   # offline, scripted model
    python examples/quickstart.py "Ship 12 kg to the world zone?" --model deepseek:deepseek-v4-flash
    python examples/quickstart.py --model completions:http://127.0.0.1:8000#deepseek-v4-flash

`--model deepseek:<name>` talks to DeepSeek's API (set DEEPSEEK_API_KEY); `completions:<url>#<name>`
talks to a vLLM or SGLang server's raw completions endpoint, where agentkit renders the DSML prompt
itself. The default, `scripted`, stands in for a model so the program runs anywhere without a network:
it reads the question with a regex and phrases its answer from the tool's real result, so everything
between the "model" and the tool (DSML parsing, argument validation, the call, the result) is real.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import Field

from agentkit import Agent, RunResult, tool
from agentkit.backends import Model, ModelError, ModelRequest, ScriptedModel, resolve
from agentkit.backends.scripted import scripted_turn
from agentkit.messages import ToolMessage

Zone = Literal["domestic", "eu", "world"]
# Base price and price per started kilogram, in euro cents, by zone.
RATES: dict[str, tuple[int, int]] = {"domestic": (450, 90), "eu": (900, 150), "world": (1500, 400)}


@tool
def shipping_cost(weight_kg: Annotated[float, Field(gt=0, le=30)], zone: Zone) -> str:
    """Price of sending one parcel, in euros.

    Args:
        weight_kg: Parcel weight in kilograms (at most 30).
        zone: Where it goes: "domestic", "eu" or "world".
    """
    base, per_kg = RATES[zone]
    started_kg = -int(-weight_kg // 1)  # every started kilogram is charged
    return f"{(base + per_kg * started_kg) / 100:.2f} EUR"


# ------------------------------------------------------------------ the offline stand-in for a model


def say(req: ModelRequest, reasoning: str, content: str = "", calls: Sequence[tuple[str, Any]] = ()) -> str:
    """One assistant turn as the model would write it: canonical DSML, in the run's thinking mode."""
    return scripted_turn(reasoning, content, calls, thinking=req.thinking)


def scripted_policy(req: ModelRequest) -> str:
    """Call the tool with what the question says, then answer with exactly what the tool returned."""
    last = req.messages[-1]
    if isinstance(last, ToolMessage):
        if last.is_error:
            return say(req, "The tool refused those arguments.", f"I cannot price that: {last.content}")
        return say(req, "The tool priced it.", f"Shipping costs {last.content}.")
    question = next(m.content for m in req.messages if m.role == "user")
    weight = re.search(r"(\d+(?:\.\d+)?)\s*kg", question)
    zone = next((z for z in ("domestic", "eu", "world") if z in question.lower()), None)
    if weight is None or zone is None:
        return say(req, "The question lacks a weight or a zone.", "Please give a weight in kg and a zone.")
    args = {"weight_kg": float(weight.group(1)), "zone": zone}
    return say(req, "A pricing question: ask the shipping tool.", calls=[("shipping_cost", args)])


def make_model(spec: str | Model) -> Model:
    """`scripted` is this file's offline stand-in; any other string goes to `agentkit.backends.resolve`
    (a malformed spec raises ValueError there, before anything starts)."""
    if spec == "scripted":
        return ScriptedModel([scripted_policy] * 8)
    return resolve(spec)


# ------------------------------------------------------------------------------------------ the program


def ask(question: str, model: str | Model = "scripted", thinking: str = "high") -> RunResult[str]:
    agent: Agent[None, str] = Agent(
        make_model(model),
        tools=[shipping_cost],
        instructions="You answer questions about parcel prices. Use the shipping_cost tool; never guess.",
        thinking=thinking,
    )
    return agent.run_sync(question)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("question", nargs="?", default="How much is it to ship a 2.5 kg parcel to the EU?")
    p.add_argument(
        "--model", default="scripted", help="scripted | deepseek:<name> | completions:<url>#<name>"
    )
    p.add_argument("--thinking", default="high", choices=["off", "high", "max"])
    args = p.parse_args(argv)
    try:
        model = make_model(args.model)
    except (ValueError, ModelError) as exc:
        p.error(str(exc))
    try:
        result = ask(args.question, model, args.thinking)
    except ModelError as exc:  # the server is unreachable, refused the key, or broke the protocol
        print(f"model error: {exc}", file=sys.stderr)
        return 1
    u = result.usage
    print(f"status: {result.status}")
    print(f"answer: {result.text}")
    print(
        f"usage:  {u.requests} model calls, {u.tool_calls} tool calls, {u.prompt_tokens} prompt tokens "
        f"({u.cached_prompt_tokens} cached), {u.completion_tokens} completion tokens, ${u.cost_usd:.6f}"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
