"""The terminal view of a run: its event stream rendered with rich, and what was measured on the way.

A thin consumer of the same events a library user gets from `agent.stream()` (thinking dimmed, tool calls
as calls with their arguments, tool results, the final answer, tokens/s); nothing here knows which backend
produced them. Its own module so that the CLI, the demo and the examples share it without importing
each other.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from agentkit import events as ev


class CliError(Exception):
    """An expected failure of a command: its message is the one line the user sees, `code` the exit code
    (2: usage or set-up; 3: a task outside agentkit-tiny's scope)."""

    def __init__(self, message: str, code: int = 2, details: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.details = details
        """Lines shown after the one line (what to do instead), never needed to understand it."""


def _answer_value(text: str) -> str:
    """The value of agentkit-tiny's "The answer is X." format, or the text itself."""
    from agentkit.tiny.tasks import extract_answer

    return extract_answer(text) or text.strip()


@dataclass(slots=True)
class RunStats:
    """What the renderer measured for one run (shown per task and summed in the demo's table)."""

    task: str
    status: str = "?"
    answer: str | None = None
    expected: str | None = None
    steps: int = 0
    tool_calls: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Completed, and (when an expected answer is known) right: the answer equals it, whole or as
        the value of "The answer is X."."""
        if self.status != "completed":
            return False
        if self.expected is None:
            return True
        answer, want = (self.answer or "").strip(), self.expected.strip()
        return answer == want or _answer_value(answer) == _answer_value(want)

    @property
    def verdict(self) -> str:
        """What the run's line says: "answered" (no expected answer, so no judgement), "ok" / "wrong"
        (judged against the expected answer), or "failed" (the run did not complete)."""
        if self.status != "completed":
            return "failed"
        if self.expected is None:
            return "answered"
        return "ok" if self.ok else "wrong"

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0


class EventRenderer:
    """Streams one run's events to the console as they arrive."""

    def __init__(self, console: Console, stats: RunStats) -> None:
        self.console = console
        self.stats = stats
        self._mode: str | None = None  # "reasoning" | "text" while a delta run is open

    def _close_line(self) -> None:
        if self._mode is not None:
            self.console.print()
            self._mode = None

    def _delta(self, mode: str, text: str, style: str) -> None:
        if self._mode != mode:
            self._close_line()
            label = "thinking" if mode == "reasoning" else "answer"
            self.console.print(f"[{style} bold]{label}:[/] ", end="")
            self._mode = mode
        self.console.print(escape(text), style=style, end="", soft_wrap=True, highlight=False)

    def __call__(self, event: ev.Event) -> None:
        s = self.stats
        if isinstance(event, ev.StepStart):
            self._close_line()
            self.console.rule(f"[dim]step {event.step}", style="dim")
        elif isinstance(event, ev.ReasoningDelta):
            self._delta("reasoning", event.text, "dim italic")
        elif isinstance(event, ev.TextDelta):
            self._delta("text", event.text, "bold green")
        elif isinstance(event, ev.ToolCallEnd):
            self._close_line()
            args = ", ".join(
                f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in event.call.arguments.items()
            )
            self.console.print(f"[bold cyan]call[/] [cyan]{escape(event.call.name)}[/]({escape(args)})")
            s.tool_calls += 1
        elif isinstance(event, ev.ToolResult):
            self._close_line()
            style = "red" if event.is_error else "yellow"
            body = event.content if len(event.content) <= 400 else event.content[:400] + " …"
            self.console.print(f"[{style}]result[/] [dim]{escape(event.name)}:[/] {escape(body)}")
        elif isinstance(event, ev.ApprovalRequired):
            self._close_line()
            self.console.print(f"[magenta]approval needed[/] for {escape(event.call.name)} ({event.call.id})")
        elif isinstance(event, ev.ErrorEvent):
            self._close_line()
            self.console.print(f"[red]error ({escape(event.error_kind)}):[/] {escape(event.message)}")
            s.errors.append(f"{event.error_kind}: {event.message}")
        elif isinstance(event, ev.UsageUpdate):
            s.completion_tokens = event.usage.completion_tokens
        elif isinstance(event, ev.StepEnd):
            s.steps = max(s.steps, event.step)
        elif isinstance(event, ev.RunEnd):
            self._close_line()
            s.status = event.status
            s.answer = event.output


async def stream_run(agent: Any, task: str, console: Console, expected: str | None = None) -> RunStats:
    """Run one task through `agent.stream`, rendering every event; returns what was measured."""
    stats = RunStats(task=task, expected=expected)
    render = EventRenderer(console, stats)
    console.print(Panel(escape(task), title="task", border_style="blue"))
    t0 = time.perf_counter()
    async for event in agent.stream(task):
        render(event)
    stats.seconds = time.perf_counter() - t0
    verdict = {
        "answered": "[green]answered[/]",
        "ok": "[green]ok[/]",
        "wrong": f"[red]wrong[/] (expected {escape(stats.expected or '')})",
        "failed": f"[red]FAILED[/] (status {escape(stats.status)})",
    }[stats.verdict]
    console.print(
        f"{verdict}  {stats.steps} steps, {stats.tool_calls} tool calls, "
        f"{stats.completion_tokens} tokens in {stats.seconds:.2f}s ({stats.tokens_per_s:.1f} tok/s)\n"
    )
    return stats


def summary_table(rows: Sequence[RunStats]) -> Table:
    table = Table(title="agentkit demo")
    for col in ("task", "result", "answer", "steps", "tools", "tok/s"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            escape(r.task[:48]),
            f"[green]{r.verdict}[/]" if r.verdict in ("ok", "answered") else f"[red]{r.verdict}[/]",
            escape((r.answer or "").strip()[:30]),
            str(r.steps),
            str(r.tool_calls),
            f"{r.tokens_per_s:.1f}",
        )
    return table
