"""The scripted `agentkit demo`: what the demo shows while no trained embedded model ships.

Its "model" is a scripted one whose outputs are canonical DSML computed from the tool results it
receives: the loop, parser, dispatch and sandbox are the real ones, only the text generator is replaced.
Every task has an expected answer computed independently of the run, so a wrong tool result or a parsing
slip fails the demo (exit code 1).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from rich.console import Console

from agentkit.cli import RunStats, stream_run, summary_table
from agentkit.models.base import ModelRequest
from agentkit.models.scripted import scripted_turn
from agentkit.tools.sandbox.select import Backend
from agentkit.tools.tool import tool

_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}


def _eval(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return int(_OPS[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand)
    raise ValueError(f"unsupported expression element: {ast.dump(node)[:60]}")


@tool
def calculator(expression: str) -> str:
    """Evaluate an integer arithmetic expression exactly.

    Args:
        expression: Integers with + - * // % and parentheses, e.g. "(17 * 23) + 4".
    """
    return str(_eval(ast.parse(expression, mode="eval")))


def _say(reasoning: str, content: str = "", calls: list[dict[str, Any]] | None = None) -> str:
    return scripted_turn(reasoning, content, [(c["name"], c["arguments"]) for c in calls or []])


def _last_results(req: ModelRequest) -> list[str]:
    """Contents of the tool results the model has just been given, in call order."""
    out: list[str] = []
    for m in reversed(req.messages):
        if m.role != "tool":
            break
        out.append(m.content)
    return out[::-1]


@dataclass(frozen=True, slots=True)
class DemoTask:
    task: str
    expected: str
    script: list[str | Callable[[ModelRequest], str]]


CSV = "city,visits\nLisbon,12\nOslo,7\nLisbon,30\nKyoto,5\nOslo,11\n"


def scripted_tasks() -> list[DemoTask]:
    csv_code = (
        "import csv\nrows = list(csv.DictReader(open('visits.csv')))\n"
        "print(sum(int(r['visits']) for r in rows if r['city'] == 'Lisbon'))"
    )
    return [
        DemoTask(
            "What is (17 * 23) + 4?",
            "395",
            [
                _say(
                    "Exact arithmetic: use the calculator.",
                    calls=[{"name": "calculator", "arguments": {"expression": "(17 * 23) + 4"}}],
                ),
                lambda r: _say("The calculator answered.", _last_results(r)[0]),
            ],
        ),
        DemoTask(
            "How many visits did Lisbon get in total, according to visits.csv?",
            "42",
            [
                _say(
                    "Sum the Lisbon rows of the CSV with Python in the sandbox.",
                    calls=[{"name": "python", "arguments": {"code": csv_code}}],
                ),
                lambda r: _say("The script printed the total.", _last_results(r)[0].split()[0]),
            ],
        ),
        DemoTask(
            "Which file in the workspace mentions a password, and what is the first word of notes.txt?",
            "secrets.txt, Remember",
            [
                _say(
                    "Two independent look-ups: grep and read at once.",
                    calls=[
                        {"name": "grep", "arguments": {"pattern": "password", "path": "."}},
                        {"name": "read_file", "arguments": {"path": "notes.txt"}},
                    ],
                ),
                lambda r: _say(
                    "grep gives the file; the note's first word follows.",
                    f"{_first_path(_last_results(r)[0])}, {_first_word(_last_results(r)[1])}",
                ),
            ],
        ),
        DemoTask("Say hello in French, one word.", "Bonjour", [_say("No tool needed.", "Bonjour")]),
    ]


def _first_path(grep_output: str) -> str:
    line = grep_output.strip().splitlines()[0]
    return line.split(":", 1)[0].removeprefix("./")


def _first_word(read_output: str) -> str:
    for line in read_output.splitlines():
        words = [w for w in line.split() if w.isalpha()]
        if words:
            return words[0]
    return ""


async def _seed(sandbox: Any) -> None:
    await sandbox.write_file("visits.csv", CSV)
    await sandbox.write_file("notes.txt", "Remember to water the plants.\n")
    await sandbox.write_file("secrets.txt", "the wifi password is on the fridge\n")


async def run_scripted_demo(console: Console, sandbox_backend: str) -> int:
    from agentkit.agent import Agent
    from agentkit.models import ScriptedModel
    from agentkit.tools.builtin import builtin_tools
    from agentkit.tools.sandbox import open_sandbox

    with console.status(f"opening a {sandbox_backend} sandbox…"):
        sandbox = await open_sandbox(cast(Backend, sandbox_backend))
    rows: list[RunStats] = []
    async with sandbox:
        await _seed(sandbox)
        console.print(f"sandbox: [cyan]{type(sandbox).__name__}[/] workspace {sandbox.workspace}\n")
        for t in scripted_tasks():
            agent: Agent[None, str] = Agent(
                ScriptedModel(t.script), tools=[calculator, *builtin_tools()], sandbox=sandbox
            )
            rows.append(await stream_run(agent, t.task, console, expected=t.expected))
    console.print(summary_table(rows))
    return 0 if all(r.ok for r in rows) else 1
