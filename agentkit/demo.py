"""What `agentkit demo` and `agentkit run` do.

The demo is a real agent run on a model (the shipped embedded `agentkit-tiny`, or any `--model`): a
handful of tasks of different kinds, each in a fresh real sandbox holding the task's files, through the
real loop, DSML parser and tools, streamed to the terminal. The tasks are held-out episodes of the episode
generator, at indices the evaluation never uses, so a model trained on the generator has never seen their
names or values; each has an expected answer computed by the generator from the real tools, and a wrong
answer fails the demo (exit code 1). They ship as data (`agentkit/tiny/demo_tasks.json`, written by
`python -m agentkit.train.demo_tasks`; a test checks it still equals the generator's output) so that the
CLI never imports the training code.

`agentkit run "<task>"` gives one task to a model. With agentkit-tiny (the default) it first asks the
scope check (`agentkit.tiny.scope`) whether the task is one of the shapes the model was trained on: a task
that is not is refused with what to use instead, and one that is gets the toolbox the model learned it
with. Everything a run needs is checked before anything heavy happens (tools, folder, model string,
credentials, server), and every expected failure is a `CliError` with one line for the user.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape

from agentkit.terminal import CliError, RunStats, stream_run, summary_table
from agentkit.tiny.tasks import DEMO_TASKS, Task, load_tasks

DEFAULT_MODEL = "embedded:tiny"
RUN_INSTRUCTIONS = "You help users by calling tools and reporting the result."
TINY_MODELS = ("embedded:tiny",)
TOOL_GROUPS = {"files": ("read_file", "write_file", "edit_file", "list_dir")}
DEFAULT_TOOLS = ("shell", "python", "read_file", "write_file", "edit_file", "list_dir", "grep")
EXIT_OUT_OF_SCOPE = 3


def model_spec(model: Any) -> Any:
    """The model to use: the one given, else $AGENTKIT_MODEL, else the shipped agentkit-tiny."""
    return model if model is not None else os.environ.get("AGENTKIT_MODEL") or DEFAULT_MODEL


def _tiny_dir() -> Path | None:
    """The shipped agentkit-tiny folder, found without importing the runtime (and torch): the scope
    check answers before anything heavy loads."""
    found = importlib.util.find_spec("agentkit.runtime")
    for root in (found.submodule_search_locations or []) if found else []:
        d = Path(root) / "weights" / "agentkit-tiny"
        if d.is_dir():
            return d
    return None


def _check_spec(spec: Any) -> None:
    """Fail fast, in one line, on a model string that cannot work (before anything is loaded)."""
    if not isinstance(spec, str):
        return
    from agentkit.preflight import PreflightError, check_model

    if spec in TINY_MODELS:
        from agentkit.runtime.checkpoint import shipped_checkpoint

        if shipped_checkpoint("tiny") is None:
            # only a broken install gets here: the checkpoint is package data
            raise CliError(
                "the agentkit-tiny checkpoint is missing from the package "
                "(agentkit/runtime/weights/agentkit-tiny); reinstall agentkit or pass --model"
            )
        return
    try:
        check_model(spec)
    except PreflightError as e:
        raise CliError(str(e)) from None


def _load(console: Console, spec: Any) -> Any:
    """A backend from a spec string (loaded behind a spinner) or a ready Model object."""
    from agentkit.backends import resolve
    from agentkit.backends.base import ModelError

    if not isinstance(spec, str):
        return spec
    t0 = time.perf_counter()
    try:
        with console.status(f"loading {escape(spec)}…"):
            model = resolve(spec)
    except (ModelError, ValueError, OSError) as exc:
        raise CliError(f"cannot load {spec}: {exc}") from None
    except Exception as exc:
        if type(exc).__name__ != "CheckpointError":
            raise
        raise CliError(f"cannot load {spec}: {exc}") from None
    console.print(f"model: [cyan]{escape(spec)}[/] (loaded in {time.perf_counter() - t0:.1f} s)")
    return model


def demo_tasks() -> list[Task]:
    """The demo's tasks: one held-out episode per family, always the same ones (see the module docstring)."""
    return load_tasks(DEMO_TASKS)


async def run_demo(console: Console, model: Any, sandbox_backend: str) -> int:
    """`model`: a spec string, a Model object, or None for $AGENTKIT_MODEL or the shipped model."""
    from agentkit.tiny.tasks import task_agent, task_sandbox
    from agentkit.tiny.tools import all_tools

    spec = model_spec(model)
    _check_spec(spec)
    console.print(
        "[bold]agentkit demo[/] — real model, real loop, real DSML parser, real tools, real sandbox"
    )
    backend = _load(console, spec)
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


@dataclass
class RunOptions:
    """What `agentkit run` was asked for (one field per command-line option)."""

    task: str
    model: Any = None
    sandbox: str = "auto"
    thinking: str = "high"
    tools: list[str] | None = None
    workspace: str | None = None
    writable: bool = False
    allow: list[str] = field(default_factory=list)
    expect: str | None = None
    max_steps: int | None = None
    scope_check: bool = True


def known_tools() -> dict[str, Any]:
    """Every tool `--tools` can name: the public built-ins and agentkit-tiny's trained tools."""
    from agentkit.tiny.tools import EPISODE_TOOLS
    from agentkit.tools.builtin import builtin_tools

    out: dict[str, Any] = {t.name: t for t in builtin_tools()}
    out.update(EPISODE_TOOLS)
    return out


def _tool_names(asked: list[str] | None) -> list[str] | None:
    """`--tools` with groups expanded and names checked (an unknown one is a CliError naming the known)."""
    if asked is None:
        return None
    known = known_tools()
    names: list[str] = []
    for n in asked:
        for m in TOOL_GROUPS.get(n, (n,)):
            if m not in names:
                names.append(m)
    unknown = [n for n in names if n not in known and n != "browser"]
    if unknown:
        offered = ", ".join([*sorted(known), *TOOL_GROUPS, "browser"])
        raise CliError(f"unknown tools: {', '.join(unknown)}; known: {offered}")
    if not names:
        raise CliError("--tools names no tool; leave it out for the default tools")
    return names


def _scope_refusal(task: str, reason: str) -> CliError:
    from agentkit.tiny.scope import shape_summary, suggest

    spelling = suggest(task)
    instead = f'Did you mean "{spelling}" (the spelling it was trained on)? Else u' if spelling else "U"
    return CliError(
        f"agentkit-tiny was not trained for this task ({reason}), so its answer would be a guess. "
        f"{instead}se a real model with --model, or --no-scope-check to run it anyway",
        EXIT_OUT_OF_SCOPE,
        "real models: --model deepseek:deepseek-v4-flash (needs DEEPSEEK_API_KEY), "
        "--model completions:http://HOST:8000#MODEL (vLLM / SGLang), --model embedded:<checkpoint dir>\n"
        "the task shapes agentkit-tiny was trained on:\n" + shape_summary(),
    )


async def run_one(console: Console, opts: RunOptions) -> int:
    """One task, streamed; 0 when it was answered (or answered right against `expect`), else 1."""
    from agentkit.agent import Agent
    from agentkit.limits import Limits
    from agentkit.tiny.tasks import MAX_STEPS
    from agentkit.tools.sandbox import open_sandbox

    names = _tool_names(opts.tools)
    if opts.writable and opts.workspace is None:
        raise CliError("--writable needs --workspace DIR (the folder the run may write to)")
    if opts.workspace is not None and not await anyio.Path(opts.workspace).is_dir():
        raise CliError(f"--workspace {opts.workspace}: no such folder")
    if names is not None and "browser" in names and not opts.allow:
        raise CliError("the browser tool needs --allow URL (each URL prefix it may visit)")
    spec = model_spec(opts.model)
    tiny = isinstance(spec, str) and spec in TINY_MODELS
    scope_note = None
    if tiny and opts.scope_check:  # first: the check needs no torch, so a refusal comes at once
        from agentkit.tiny.scope import check_scope, trained_on_paraphrases

        # a checkpoint trained on tasks in people's wording (its training.json says so) is also given
        # the tasks the intent matcher places in a shape; the model's own trained refusal covers the rest
        wording = trained_on_paraphrases(_tiny_dir())
        tools = [n for n in names if n != "browser"] if names else None
        verdict = check_scope(opts.task, tools, paraphrases=wording)
        if not verdict.in_scope:
            raise _scope_refusal(opts.task, verdict.reason)
        names = list(verdict.tools)
        scope_note = f"scope: {verdict.reason} (a shape agentkit-tiny was trained on); tools: "
        scope_note += ", ".join(names)
    elif names is None:
        from agentkit.tiny.tools import all_tools

        names = list(all_tools()) if tiny else list(DEFAULT_TOOLS)
    _check_spec(spec)
    if scope_note is not None:
        console.print(f"[dim]{escape(scope_note)}[/]")
    known = known_tools()
    offered = [known[n] for n in names if n != "browser"]
    options: dict[str, Any] = {}
    if opts.workspace is not None:
        options = {"host_workspace": opts.workspace, "workspace_writable": opts.writable}
    with console.status(f"opening a {opts.sandbox} sandbox…"):
        sandbox = await open_sandbox(opts.sandbox, **options)  # type: ignore[arg-type]
    async with sandbox:  # opened before the model loads: a sandbox that cannot start fails in a second
        if opts.workspace is not None:
            mode = "writable" if opts.writable else "read-only"
            console.print(f"[dim]workspace: {escape(opts.workspace)} ({mode}) at /workspace[/]")
        backend = _load(console, spec)
        browser = None
        if names is not None and "browser" in names:
            from agentkit.tools.builtin.browser import Browser

            browser = Browser(allow=opts.allow)
            offered += browser.tools()
        try:
            agent: Agent[None, str] = Agent(
                backend,
                tools=offered,
                instructions=RUN_INSTRUCTIONS,
                sandbox=sandbox,
                thinking=opts.thinking,
                limits=Limits(max_steps=opts.max_steps or (MAX_STEPS if tiny else 50)),
            )
            stats: RunStats = await stream_run(agent, opts.task, console, expected=opts.expect)
        finally:
            if browser is not None:
                await browser.close()
    return 0 if stats.verdict in ("answered", "ok") else 1
