"""Sub-agents: an analyst agent delegates to a researcher, a calculator and a reporter agent.

    python examples/subagents.py                                     # offline, scripted models
    python examples/subagents.py --decide no                         # deny the reporter's file write
    python examples/subagents.py "What is the population density of Brookfield?" \\
        --model deepseek:deepseek-v4-flash

Each sub-agent is a whole `Agent` (its own instructions, tools and limits) offered to the analyst with
`agent.as_tool(name, description)`. What it shows:

* the analyst asks the researcher two things in one turn: the two child runs go concurrently;
* every child's tokens and calls are added to the analyst's usage (printed per agent and in total);
* the reporter's `write_report` needs a human's OK: the child pauses, so the analyst's run pauses with it
  (`result.pending_approvals` lists the child's call as "<analyst call id>/<reporter call id>"); the
  run is turned into JSON and resumed from it with the decision (`--decide yes|no|ask`), as another
  process would.

The default `scripted` model is a policy per agent that reads the agent's own conversation (its system
prompt, its task, the results it got) and writes canonical DSML; the facts, the arithmetic and the file
come from the real tools. `--model` runs every agent on that model instead.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from agentkit import Agent, Limits, RunResult, tool
from agentkit.backends import Model, ModelError, ModelRequest, ScriptedModel, resolve
from agentkit.backends.scripted import scripted_turn
from agentkit.chat import ChatRenderer
from agentkit.messages import AssistantMessage, ToolMessage, UserMessage
from agentkit.session import RunState
from agentkit.terminal import RunStats
from agentkit.tiny.tools import calculator

FACTS = {
    "lakeview": {"population": "48000", "area in km2": "120"},
    "brookfield": {"population": "91800", "area in km2": "340"},
}
ANALYST = (
    "You are an analyst. Delegate: facts to the researcher, arithmetic to the calculator, "
    "the report to the reporter."
)
RESEARCHER = "You are a researcher. Answer with facts from the lookup tool only."
CALCULATOR = "You are a calculator. Compute with the calculator tool."
REPORTER = "You are a reporter. Save the report you are given with write_report."


@tool
def lookup(topic: str) -> str:
    """Look a fact up in the almanac.

    Args:
        topic: what to look up, e.g. "population of Lakeview" or "area in km2 of Lakeview"
    """
    m = re.match(r"(.+) of (\w+)$", topic.strip())
    if m is None or m[2].lower() not in FACTS or m[1] not in FACTS[m[2].lower()]:
        return f"The almanac has nothing on {topic!r}."
    return FACTS[m[2].lower()][m[1]]


def reporter_tools(out: Path) -> list[Any]:
    @tool(requires_approval=True)
    def write_report(text: str) -> str:
        """Save a report as a file (a human approves each write).

        Args:
            text: the report
        """
        path = out / "report.txt"
        path.write_text(text + "\n")
        return f"saved to {path.name}"

    return [write_report]


# ------------------------------------------------------------------ the offline stand-in for the models


def policy(system: str, task: str, results: list[str]) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(answer, calls) for one turn of whichever agent is asking, from what that agent has seen."""
    if system.startswith("You are a researcher"):
        return (f"{task}: {results[0]}", []) if results else ("", [("lookup", {"topic": task})])
    if system.startswith("You are a calculator"):
        return (f"{task} = {results[0]}", []) if results else ("", [("calculator", {"expression": task})])
    if system.startswith("You are a reporter"):
        return (results[0], []) if results else ("", [("write_report", {"text": task})])
    city = re.search(r"density of (\w+)", task)
    if city is None:
        return "Ask me for the population density of a town.", []
    name = city[1]
    if not results:
        return "", [("researcher", {"task": f"{k} of {name}"}) for k in ("population", "area in km2")]
    facts = [r.rpartition(": ")[2] for r in results]
    if len(results) == 2 and all(f.isdigit() for f in facts):
        return "", [("calculator", {"task": f"{facts[0]} / {facts[1]}"})]
    if len(results) == 1 and " = " in results[0]:
        density = results[0].rpartition(" = ")[2]
        return "", [("reporter", {"task": f"{name}: {density} people per km2"})]
    return f"Done. Reporter: {results[0]}", []


def scripted_policy(req: ModelRequest) -> str:
    """`policy` over the agent's own message list (the last turn's tool results)."""
    tail: list[str] = []
    for m in reversed(req.messages):
        if isinstance(m, (AssistantMessage, UserMessage)):
            break
        if isinstance(m, ToolMessage):
            tail.insert(0, m.content)
    task = next(m.content for m in req.messages if isinstance(m, UserMessage))
    answer, calls = policy(req.messages[0].content, task, tail)
    return scripted_turn("Following my instructions.", answer, calls, thinking=req.thinking)


def make_model(spec: str | Model) -> Model:
    if spec == "scripted":
        return ScriptedModel([scripted_policy] * 64)
    return resolve(spec)


# ------------------------------------------------------------------------------------------ the program


def build(model: Model, out: Path) -> Agent[None, str]:
    """The analyst with its three sub-agents; every agent runs on `model` (one engine when embedded)."""
    researcher: Agent[None, str] = Agent(model, [lookup], instructions=RESEARCHER, limits=Limits(max_steps=4))
    calc: Agent[None, str] = Agent(model, [calculator], instructions=CALCULATOR, limits=Limits(max_steps=4))
    reporter: Agent[None, str] = Agent(model, reporter_tools(out), instructions=REPORTER)
    return Agent(
        model,
        [
            researcher.as_tool("researcher", "Looks one fact up, e.g. 'population of Lakeview'."),
            calc.as_tool("calculator", "Computes an arithmetic expression, e.g. '12 / 4'."),
            reporter.as_tool("reporter", "Saves a one-line report (a human approves the write)."),
        ],
        instructions=ANALYST,
        limits=Limits(max_steps=8),
    )


async def analyse(
    question: str, model: Model, out: Path, decide: str = "yes", console: Console | None = None
) -> RunResult[str]:
    """Run the analyst; a pause for approvals is saved to JSON and resumed from it with `decide`."""
    console = console or Console(highlight=False)
    agent = build(model, out)
    render = ChatRenderer(console, RunStats(question))
    result: RunResult[str] | None = None
    approvals: dict[str, bool | str] | None = None
    state: RunState | str | None = None
    task: str | None = question
    while True:
        async for event in agent.stream(task, state=state, approvals=approvals):
            render(event)
            result = getattr(event, "result", None) or result
        assert result is not None
        if result.status != "paused":
            return result
        approvals = {}
        for call in result.pending_approvals:
            answer = decide
            if decide == "ask":
                answer = console.input(f"approve {call.name}({call.arguments}) [{call.id}]? [y/N] ")
            approvals[call.id] = True if answer.strip().lower() in ("y", "yes") else "the user said no"
        state, task = result.state.to_json(), None  # the paused run is data: resumed from its JSON


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("question", nargs="?", default="What is the population density of Lakeview?")
    p.add_argument("--model", default="scripted", help="scripted | any model string (e.g. deepseek:<name>)")
    p.add_argument("--decide", default="yes", choices=["yes", "no", "ask"], help="the reporter's approval")
    p.add_argument("--out", default=".", help="folder the report is written to")
    args = p.parse_args(argv)
    console = console or Console(highlight=False)
    try:
        model = make_model(args.model)
    except (ValueError, ModelError) as exc:
        p.error(str(exc))
    import anyio

    try:
        result = anyio.run(analyse, args.question, model, Path(args.out), args.decide, console)
    except ModelError as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 1
    u = result.usage
    own = [s.model for s in result.state.steps if s.model is not None]
    console.print(f"status: {result.status}")
    console.print(f"answer: {result.text}")
    console.print(
        f"usage:  {u.requests} model calls ({len(own)} by the analyst, {u.requests - len(own)} by its "
        f"sub-agents), {u.tool_calls} tool calls, {u.prompt_tokens} prompt tokens, "
        f"{u.completion_tokens} completion tokens"
    )
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
