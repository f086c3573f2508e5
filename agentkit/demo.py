"""What `agentkit demo` and `agentkit run` do.

The demo is a real agent run on a model (the shipped embedded `agentkit-tiny`, or any `--model`): a
handful of tasks of different kinds, each in a fresh real sandbox holding the task's files, through the
real loop, DSML parser and tools, streamed to the terminal. The tasks are held-out episodes of the episode
generator, at indices the evaluation never uses, so a model trained on the generator has never seen their
names or values; each has an expected answer computed by the generator from the real tools, and a wrong
answer fails the demo (exit code 1). They ship as data (`agentkit/tiny/demo_tasks.json`, written by
`python -m agentkit.train.demo_tasks`; a test checks it still equals the generator's output) so that the
CLI never imports the training code.

`agentkit run "<task>"` gives one task to the model with every tool the episodes use.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape

from agentkit.terminal import RunStats, stream_run, summary_table
from agentkit.tiny.tasks import DEMO_TASKS, Task, load_tasks

DEFAULT_MODEL = "embedded:tiny"
RUN_INSTRUCTIONS = "You help users by calling tools and reporting the result."


def _shipped_model(console: Console) -> str | None:
    from agentkit.runtime.checkpoint import shipped_checkpoint

    if shipped_checkpoint("tiny") is None:
        # only a broken install gets here: the checkpoint is package data
        console.print(
            "[red]the agentkit-tiny checkpoint is missing from the package "
            "(agentkit/runtime/weights/agentkit-tiny); reinstall agentkit or pass --model[/]"
        )
        return None
    return DEFAULT_MODEL


def _load(console: Console, spec: Any) -> Any | None:
    """A backend from a spec string (loaded behind a spinner, errors shown) or a ready Model object."""
    from agentkit.backends import resolve
    from agentkit.backends.base import ModelError

    if not isinstance(spec, str):
        return spec
    t0 = time.perf_counter()
    try:
        with console.status(f"loading {escape(spec)}…"):
            model = resolve(spec)
    except (ModelError, ValueError) as exc:
        console.print(f"[red]cannot load {escape(spec)}:[/] {escape(str(exc))}")
        return None
    console.print(f"model: [cyan]{escape(spec)}[/] (loaded in {time.perf_counter() - t0:.1f} s)")
    return model


def demo_tasks() -> list[Task]:
    """The demo's tasks: one held-out episode per family, always the same ones (see the module docstring)."""
    return load_tasks(DEMO_TASKS)


async def run_demo(console: Console, model: Any, sandbox_backend: str) -> int:
    """`model`: a spec string, a Model object, or None for the shipped model."""
    from agentkit.tiny.tasks import task_agent, task_sandbox
    from agentkit.tiny.tools import all_tools

    spec = model if model is not None else _shipped_model(console)
    if spec is None:
        return 2
    console.print(
        "[bold]agentkit demo[/] — real model, real loop, real DSML parser, real tools, real sandbox"
    )
    backend = _load(console, spec)
    if backend is None:
        return 2
    tasks = demo_tasks()
    tools = all_tools()
    rows: list[RunStats] = []
    for t in tasks:
        with console.status(f"opening a {sandbox_backend} sandbox…"):
            sandbox = await task_sandbox(t, sandbox_backend)
        async with sandbox:
            files = ", ".join(sorted(t.files)) or "none"
            console.print(
                f"[dim]{t.family} task · sandbox {type(sandbox).__name__} · files: {escape(files)}[/]"
            )
            agent = task_agent(backend, t, tools, sandbox)
            rows.append(await stream_run(agent, t.prompt, console, expected=t.expected))
    console.print(summary_table(rows))
    failed = [r for r in rows if not r.ok]
    if failed:
        console.print(f"[red]{len(failed)} of {len(rows)} tasks failed[/]")
    return 0 if not failed else 1


async def run_one(
    console: Console,
    task: str,
    model: str | None,
    sandbox_backend: str,
    thinking: str,
    tool_names: list[str] | None = None,
) -> int:
    """One task; `tool_names` limits the tools offered (a small model was trained with 1-3 of them)."""
    from agentkit.agent import Agent
    from agentkit.tiny.tools import all_tools

    available = all_tools()
    unknown = sorted(set(tool_names or ()) - set(available))
    if unknown:
        console.print(f"[red]unknown tools: {', '.join(unknown)}; known: {', '.join(sorted(available))}[/]")
        return 2
    offered = [available[n] for n in tool_names] if tool_names else list(available.values())
    spec = model if model is not None else _shipped_model(console)
    if spec is None:
        return 2
    backend = _load(console, spec)
    if backend is None:
        return 2
    agent: Agent[None, str] = Agent(
        backend,
        tools=offered,
        instructions=RUN_INSTRUCTIONS,
        sandbox=sandbox_backend,
        thinking=thinking,
    )
    stats: RunStats = await stream_run(agent, task, console)
    return 0 if stats.status == "completed" else 1
