"""Episodes through the real system: the agent loop, the embedded backend, the DSML parser, real tools and
a real sandbox. One place for this, used by `examples/eval_tiny.py` and the CI test; each episode runs as
its `Task` (`agentkit.tiny.tasks`), set up exactly as `agentkit demo` sets up its tasks.

An episode's run is judged only by what a user would see: the run completed and its final message states
exactly the episode's expected answer. Two diagnostics come along: whether every generated turn parses
under the *strict* DSML grammar (the loop itself parses tolerantly, so a sloppy but repairable call would
otherwise go unnoticed), and whether the run's transcript is byte-identical to the episode's reference
text, which tells a formatting drift between training data and the loop apart from a model mistake.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import anyio

from agentkit.dsml.errors import DSMLParseError
from agentkit.dsml.parse import parse_completion
from agentkit.messages import Transcript
from agentkit.tiny.tasks import REFUSAL, extract_answer, task_agent, task_sandbox
from agentkit.tools.tool import Tool
from agentkit.train.episodes import Episode


@dataclass(frozen=True, slots=True)
class Outcome:
    id: str
    family: str
    status: str
    ok: bool
    answer: str | None
    expected: str
    steps: int
    turns: int
    strict_turns: int
    completion_tokens: int
    seconds: float
    same_transcript: bool
    refused: bool = False
    """The run's final message was the refusal (`REFUSAL`)."""


def generated_turns(transcript: Transcript) -> list[str]:
    """The text of each model turn (runs of consecutive generated segments)."""
    turns: list[str] = []
    open_run = False
    for seg in transcript.segments:
        if seg.generated:
            if open_run:
                turns[-1] += seg.text
            else:
                turns.append(seg.text)
            open_run = True
        else:
            open_run = False
    return turns


def strict_ok(turn: str, thinking_mode: str = "thinking") -> bool:
    try:
        parse_completion(turn, thinking_mode, strict=True)
    except DSMLParseError:
        return False
    return True


async def run_episode(backend: Any, episode: Episode, tools: Mapping[str, Tool], sandbox: str) -> Outcome:
    task = episode.as_task()
    t0 = time.perf_counter()
    async with await task_sandbox(task, sandbox) as sb:
        result = await task_agent(backend, task, tools, sb).run(task.prompt)
    seconds = time.perf_counter() - t0
    answer = extract_answer(result.text or "")
    turns = generated_turns(result.transcript)
    return Outcome(
        id=episode.id,
        family=episode.family,
        status=result.status,
        ok=result.ok and answer == episode.answer,
        answer=answer,
        expected=episode.answer,
        steps=result.usage.requests,
        turns=len(turns),
        strict_turns=sum(strict_ok(t) for t in turns),
        completion_tokens=result.usage.completion_tokens,
        seconds=seconds,
        same_transcript=result.transcript.text == episode.text,
        refused=answer == REFUSAL,
    )


@dataclass
class Report:
    rows: list[Outcome]

    def success_rate(self, family: str | None = None) -> float:
        rows = [r for r in self.rows if family is None or r.family == family]
        return sum(r.ok for r in rows) / len(rows) if rows else 0.0

    @property
    def refusal_rate(self) -> float:
        return sum(r.refused for r in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def strict_rate(self) -> float:
        turns = sum(r.turns for r in self.rows)
        return sum(r.strict_turns for r in self.rows) / turns if turns else 0.0

    def summary(self) -> dict[str, Any]:
        n = len(self.rows)
        seconds = sum(r.seconds for r in self.rows)
        tokens = sum(r.completion_tokens for r in self.rows)
        fams = sorted({r.family for r in self.rows})
        return {
            "episodes": n,
            "success_rate": self.success_rate(),
            "strict_parse_rate": self.strict_rate,
            "refusal_rate": self.refusal_rate,
            "same_transcript_rate": sum(r.same_transcript for r in self.rows) / n if n else 0.0,
            "mean_steps": sum(r.steps for r in self.rows) / n if n else 0.0,
            "completion_tokens_per_s": tokens / seconds if seconds else 0.0,
            "seconds": seconds,
            "by_family": {
                f: {
                    "episodes": sum(r.family == f for r in self.rows),
                    "success_rate": self.success_rate(f),
                    "strict_parse_rate": Report([r for r in self.rows if r.family == f]).strict_rate,
                    "refusal_rate": Report([r for r in self.rows if r.family == f]).refusal_rate,
                }
                for f in fams
            },
        }

    def table(self) -> str:
        """Markdown: one row per family and an overall row."""
        lines = [
            "| family | episodes | success | strict DSML | refused | mean steps | tok/s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        groups = [(f, [r for r in self.rows if r.family == f]) for f in sorted({r.family for r in self.rows})]
        for name, rows in [*groups, ("**overall**", self.rows)]:
            sub = Report(rows)
            secs = sum(r.seconds for r in rows)
            toks = sum(r.completion_tokens for r in rows)
            lines.append(
                f"| {name} | {len(rows)} | {sub.success_rate():.1%} | {sub.strict_rate:.1%} | "
                f"{sub.refusal_rate:.1%} | "
                f"{sum(r.steps for r in rows) / max(1, len(rows)):.2f} | {toks / secs if secs else 0:.1f} |"
            )
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "failures": [asdict(r) for r in self.rows if not r.ok],
        }


async def evaluate(
    backend: Any,
    episodes: Sequence[Episode],
    tools: Mapping[str, Tool],
    *,
    sandbox: str = "auto",
    on_progress: Callable[[int, Report], Awaitable[None] | None] | None = None,
    concurrency: int = 1,
) -> Report:
    """Run every episode (one backend, so one model in memory) and collect the outcomes, in episode order.

    `concurrency` > 1 runs that many episodes at once as tasks of this event loop: on the embedded backend
    their model requests meet in one engine, which batches their steps together (why one process with a
    shared engine can replace a process per job). `on_progress` gets the number finished and their rows."""
    rows: list[Outcome | None] = [None] * len(episodes)
    done = Report([])
    limiter = anyio.CapacityLimiter(max(1, concurrency))

    async def one(i: int, e: Episode) -> None:
        async with limiter:
            rows[i] = outcome = await run_episode(backend, e, tools, sandbox)
        done.rows.append(outcome)
        if on_progress is not None:
            maybe = on_progress(len(done.rows), done)
            if maybe is not None:
                await maybe

    if concurrency <= 1:
        for i, e in enumerate(episodes):
            await one(i, e)
    else:
        async with anyio.create_task_group() as tg:
            for i, e in enumerate(episodes):
                tg.start_soon(one, i, e)
    return Report([r for r in rows if r is not None])
