"""`agentkit chat`: an interactive session with an agent in the terminal.

One conversation is one `RunState` continued message by message (`agent.stream(text, state=...)`), so
everything a library user has works here unchanged: the stream is rendered as it happens (thinking dimmed,
tool calls and their results, sub-agents' calls indented), an approval pause is asked inline and resumed
with the answers, `/save` writes the state (with the embedded backend's KV state beside it) and `/load`
reads it back, in this process or a new one, so a resumed chat prefills only what is new. After each
message a line says what the model processed: prompt tokens, of them served from the kept state or cache,
prefilled, and how many of the tokens already in the conversation were prefilled again ("re-prefilled").

Ctrl-C during a step stops it: the message's run is cancelled (tools included) and the session goes back
to where it was before that message, its KV state kept through `Agent.fork` (a cheap shared copy taken
before each message). Ctrl-C at the prompt clears the line; Ctrl-D or /quit ends the chat.

Each message runs in its own event loop (`anyio.run`) so that reading the keyboard stays plain blocking
`input()` (readline editing, a real Ctrl-C) and only a step in flight listens for SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import signal
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agentkit import events as ev
from agentkit.terminal import CliError, EventRenderer, RunStats

if TYPE_CHECKING:
    from agentkit.agent import Agent, RunResult
    from agentkit.messages import ToolCall
    from agentkit.session import RunState
    from agentkit.tools.tool import Tool

__all__ = ["Chat", "ChatRenderer", "Interrupted", "add_chat_parser", "run_chat"]

DEFAULT_TOOLS = ("calculator", "convert_units", "count_words", "days_between")
INSTRUCTIONS = "You are a helpful assistant that solves tasks with tools. Answer with the final result."
HELP = """\
/save PATH    save the session (with the embedded model's KV state beside it, PATH.kv)
/load PATH    load a saved session and continue it
/model [SPEC] show the model, or switch to another (the conversation goes along)
/tools        list the tools the agent may call
/usage        tokens and calls of the session so far
/help         this list
/quit         end the chat (also Ctrl-D); Ctrl-C stops a step in flight"""


class Interrupted(Exception):
    """Ctrl-C stopped a step (or an approval question): the message's run was cancelled."""


class ChatRenderer(EventRenderer):
    """The terminal renderer, plus sub-agents' calls, results and answers, indented under their call."""

    def __call__(self, event: ev.Event) -> None:
        if not isinstance(event, ev.SubAgentEvent):
            super().__call__(event)
            return
        path, inner = [event.agent], event.event
        while isinstance(inner, ev.SubAgentEvent):
            path.append(inner.agent)
            inner = inner.event
        who = escape("/".join(path))
        self._close_line()
        if isinstance(inner, ev.ToolCallEnd):
            args = json.dumps(inner.call.arguments, ensure_ascii=False)
            self.console.print(f"  [dim]↳ {who}[/] [cyan]call {escape(inner.call.name)}[/] {escape(args)}")
        elif isinstance(inner, ev.ToolResult):
            body = inner.content if len(inner.content) <= 200 else inner.content[:200] + " …"
            style = "red" if inner.is_error else "yellow"
            self.console.print(f"  [dim]↳ {who}[/] [{style}]result[/] {escape(body)}")
        elif isinstance(inner, ev.RunEnd):
            text = escape((inner.output or "").strip()[:200])
            self.console.print(f"  [dim]↳ {who} ended ({escape(inner.status)}):[/] {text}")


class Chat:
    """The chat's state and commands; `repl()` drives it from the keyboard, tests call `handle()`."""

    def __init__(
        self,
        console: Console,
        model: Any,
        tools: Sequence[Tool],
        *,
        model_spec: str,
        instructions: str = INSTRUCTIONS,
        thinking: str = "high",
        sandbox: Any = None,
        max_steps: int = 12,
    ) -> None:
        self.console = console
        self.model_spec = model_spec
        self.tools = list(tools)
        self.instructions = instructions
        self.sandbox = sandbox
        self.max_steps = max_steps
        self.state: RunState | None = None
        self.agent = self._agent(model, thinking)

    def _agent(self, model: Any, thinking: str) -> Agent[None, str]:
        from agentkit.agent import Agent
        from agentkit.limits import Limits

        return Agent(
            model,
            self.tools,
            instructions=self.instructions,
            thinking=thinking,
            sandbox=self.sandbox,
            limits=Limits(max_steps=self.max_steps),
        )

    # -- the prompt -------------------------------------------------------------------------------

    def repl(self) -> int:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401 - line editing and history for input()
        self.console.print("[dim]agentkit chat · /help for commands · Ctrl-C stops a step · Ctrl-D quits[/]")
        while True:
            try:
                line = self.console.input("[bold blue]you>[/] ")
            except KeyboardInterrupt:
                self.console.print("\n[dim](Ctrl-D or /quit ends the chat)[/]")
                continue
            except EOFError:
                self.console.print()
                return 0
            if not self.handle(line):
                return 0

    def handle(self, line: str) -> bool:
        """One line of input: a /command or a message. False when the chat should end."""
        line = line.strip()
        if not line:
            return True
        if not line.startswith("/"):
            self.send(line)
            return True
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name in ("/quit", "/exit"):
            return False
        commands = {
            "/save": self.save,
            "/load": self.load,
            "/model": self.switch_model,
            "/tools": lambda _: self.list_tools(),
            "/usage": lambda _: self.show_usage(),
            "/help": lambda _: self.console.print(HELP, markup=False),
        }
        command = commands.get(name)
        if command is None:
            self.console.print(f"[red]unknown command {escape(name)}[/]; /help lists them")
        else:
            command(arg)
        return True

    # -- messages ---------------------------------------------------------------------------------

    def send(self, text: str) -> None:
        """Run one message to its answer, asking approvals on the way; Ctrl-C or a model error puts the
        session back to where it was before the message."""
        from agentkit.backends.base import ModelError

        before = self.state
        backup = self.agent.fork(before, 1)[0] if before is not None else None
        steps0 = len(before.steps) if before is not None else 0
        context0 = before.usage.context_tokens if before is not None else 0
        run = before if before is not None else self.agent.new_state(text)
        stats = RunStats(text)
        try:
            result = self._stream(text if before is not None else None, run, None, stats)
            while result.status == "paused":
                result = self._stream(None, result.state, self._ask(result.pending_approvals), stats)
        except Exception as exc:  # Ctrl-C, an unreachable server, a tool set that no longer fits...
            if isinstance(exc, Interrupted):
                why = "[yellow]interrupted:[/] the step was stopped"
            elif isinstance(exc, ModelError):
                why = f"[red]model error:[/] {escape(str(exc))}"
            else:
                why = f"[red]error:[/] {escape(type(exc).__name__)}: {escape(str(exc))}"
            self.console.print(f"\n{why}; the session is as it was before this message")
            if stats.tool_calls:  # the conversation goes back; what tools did outside it stays
                started = stats.tool_calls
                self.console.print(f"[dim]({started} tool calls had started; their effects remain)[/]")
            self._forget(run.run_id)  # the abandoned attempt's KV state
            self.state = backup
            return
        if backup is not None:
            self._forget(backup.run_id)
        self.state = result.state
        if result.status != "completed":
            self.console.print(f"[yellow]the run ended with status {escape(result.status)}[/]")
        self._report(result.state, steps0, context0)

    def _forget(self, run_id: str) -> None:
        forget = getattr(self.agent.model, "forget", None)
        if forget is not None:
            forget(run_id)

    def _stream(
        self, task: str | None, state: RunState, approvals: dict[str, bool | str] | None, stats: RunStats
    ) -> RunResult[str]:
        """One `agent.stream` rendered to the terminal; raises `Interrupted` on Ctrl-C."""
        render = ChatRenderer(self.console, stats)
        stopped = False
        result: RunResult[str] | None = None

        async def go() -> None:
            nonlocal stopped, result
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    nonlocal stopped
                    with anyio.open_signal_receiver(signal.SIGINT) as signals:
                        async for _ in signals:
                            stopped = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                stream = cast(
                    AsyncGenerator[ev.Event, None], self.agent.stream(task, state=state, approvals=approvals)
                )
                async with contextlib.aclosing(stream) as events:
                    async for event in events:
                        render(event)
                        if isinstance(event, ev.RunEnd):
                            result = event.result
                tg.cancel_scope.cancel()

        try:
            anyio.run(go)
        except KeyboardInterrupt:  # a Ctrl-C that landed before the step listened for it
            stopped = True
        render._close_line()
        if stopped or result is None:
            raise Interrupted
        return result

    def _ask(self, calls: list[ToolCall]) -> dict[str, bool | str]:
        """Ask about each pending call: y approves, n (or nothing) denies, other text denies with it."""
        decisions: dict[str, bool | str] = {}
        for call in calls:
            args = json.dumps(call.arguments, ensure_ascii=False)
            prompt = (
                f"[magenta bold]approve[/] {escape(call.name)}({escape(args)}) [dim]{escape(call.id)}[/]? "
                "[dim]\\[y/N, or a reason to deny][/] "
            )
            try:
                answer = self.console.input(prompt).strip()
            except (KeyboardInterrupt, EOFError):
                raise Interrupted from None
            if answer.lower() in ("y", "yes"):
                decisions[call.id] = True
            else:
                decisions[call.id] = answer if answer and answer.lower() not in ("n", "no") else False
        return decisions

    def _report(self, state: RunState, steps0: int, context0: int) -> None:
        """What the model processed for this message; "re-prefilled" counts tokens that were already in
        the conversation before it and had to be prefilled again (0 when the kept KV state was used)."""
        records = [s.model for s in state.steps[steps0:] if s.model is not None]
        if not records:
            return
        prompt = sum(r.prompt_tokens for r in records)
        cached = sum(r.cached_tokens for r in records)
        prefilled = sum(r.prefilled_tokens for r in records)
        generated = sum(r.completion_tokens for r in records)
        line = (
            f"tokens: {prompt} prompt ({cached} cached, {prefilled} prefilled), {generated} generated, "
            f"{len(records)} model calls"
        )
        if context0:
            again = max(context0 - records[0].cached_tokens, 0)
            line += f" · re-prefilled {again} of {context0}"
        self.console.print(f"[dim]{line}[/]")

    # -- commands ---------------------------------------------------------------------------------

    def save(self, arg: str) -> None:
        if not arg:
            self.console.print("[red]usage: /save PATH[/]")
        elif self.state is None:
            self.console.print("[red]nothing to save yet: send a message first[/]")
        else:
            try:
                path = self.agent.save_session(Path(arg).expanduser(), self.state)
            except Exception as exc:  # a path we cannot write, a backend without the run's state
                self.console.print(f"[red]cannot save to {escape(arg)}:[/] {escape(str(exc))}")
                return
            kv = path.with_name(path.name + ".kv")
            extra = f" + KV state ({kv.stat().st_size / 1e6:.1f} MB)" if self.state.has_kv else ""
            n = len(self.state.messages)
            self.console.print(f"saved {n} messages to {escape(str(path))}{extra}")

    def load(self, arg: str) -> None:
        from agentkit.backends.base import ModelError
        from agentkit.session import SessionError

        if not arg:
            self.console.print("[red]usage: /load PATH[/]")
            return
        try:
            state = self.agent.load_session(Path(arg).expanduser())
        except (SessionError, ModelError) as exc:
            self.console.print(f"[red]cannot load {escape(arg)}:[/] {escape(str(exc))}")
            return
        if state.thinking != self.agent.thinking:  # the conversation's thinking mode wins (same model,
            self.agent = self._agent(self.agent.model, state.thinking)  # so its imported KV state stays)
        if self.state is not None:
            self._forget(self.state.run_id)
        self.state = state
        saved_tools = {
            t["function"]["name"] for m in state.messages for t in (getattr(m, "tools", None) or [])
        }
        if saved_tools and saved_tools != {t.name for t in self.tools}:
            self.console.print(
                f"[yellow]note:[/] the session was made with tools {', '.join(sorted(saved_tools))}; "
                f"this chat offers {', '.join(t.name for t in self.tools)}"
            )
        if not state.has_kv:
            kv = "none (the next message prefills the conversation)"
        elif getattr(self.agent.model, "import_state", None) is None:
            kv = "saved, but this model cannot use it (the next message prefills the conversation)"
        else:
            kv = "restored"
        self.console.print(
            f"loaded {len(state.messages)} messages, {state.usage.context_tokens} tokens of context; "
            f"KV state: {kv}"
        )
        if state.status == "paused":  # saved elsewhere while waiting for approvals: ask now
            try:
                result = self._stream(None, state, self._ask(state.pending_calls), RunStats(""))
            except Interrupted:
                self.console.print("[yellow]left paused[/]")
                return
            self.state = result.state

    def switch_model(self, arg: str) -> None:
        if not arg:
            self.console.print(f"model: [cyan]{escape(self.model_spec)}[/] (thinking {self.agent.thinking})")
            return
        try:
            model = load_model(self.console, arg)
        except CliError as exc:
            self.console.print(f"[red]{escape(str(exc))}[/]; still on {escape(self.model_spec)}")
            return
        self.model_spec = arg
        self.agent = self._agent(model, self.agent.thinking)
        self.console.print(
            "[dim]the conversation continues on the new model (its context is prefilled once)[/]"
        )

    def list_tools(self) -> None:
        table = Table("tool", "approval", "description", show_edge=False, box=None)
        for t in self.tools:
            first = (t.description or "").strip().splitlines()[0] if (t.description or "").strip() else ""
            table.add_row(t.name, "asks" if t.requires_approval else "-", escape(first))
        self.console.print(table)

    def show_usage(self) -> None:
        if self.state is None:
            self.console.print("no messages yet")
            return
        u = self.state.usage
        self.console.print(
            f"{u.requests} model calls, {u.tool_calls} tool calls, {u.prompt_tokens} prompt tokens "
            f"({u.cached_prompt_tokens} cached, {u.prefilled_tokens} prefilled), "
            f"{u.completion_tokens} generated, context {u.context_tokens}"
        )


# -- the command --------------------------------------------------------------------------------------


def add_chat_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `chat` on the CLI's subparsers (cli.py only registers it; nothing heavy is imported)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "chat",
        help="an interactive session: streamed thinking, tool calls, approvals, /save and /load",
        description="Talk to an agent in the terminal. Commands inside the chat:\n" + HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default=None, help="model string (default: $AGENTKIT_MODEL, else embedded:tiny)"
    )
    p.add_argument(
        "--tools",
        default=",".join(DEFAULT_TOOLS),
        help="comma-separated tools to offer: agentkit-tiny's four (the default) and the sandbox tools "
        "shell, python, files (= read_file, write_file, edit_file, list_dir), grep",
    )
    p.add_argument("--approve", default="", help="comma-separated tools that ask before running, or 'all'")
    p.add_argument("--thinking", default="high", choices=["off", "high", "max"])
    p.add_argument("--instructions", default=INSTRUCTIONS, help="the system prompt")
    p.add_argument(
        "--sandbox",
        default="auto",
        choices=("auto", "docker", "bwrap", "local"),
        help="where sandbox tools run (opened only when one is offered; local is unsafe)",
    )
    p.add_argument("--load", default=None, metavar="PATH", help="start from a saved session")
    p.add_argument("--max-steps", type=int, default=12, help="steps per message (default 12)")
    return p


def load_model(console: Console, spec: str) -> Any:
    """The backend for a model string, loaded behind a spinner; CliError (exit code 2) if it cannot be."""
    from agentkit.backends import resolve
    from agentkit.backends.base import ModelError

    t0 = time.perf_counter()
    try:
        with console.status(f"loading {escape(spec)}…"):
            model = resolve(spec)
    except (ModelError, ValueError) as exc:
        raise CliError(f"cannot load {spec}: {exc}") from exc
    console.print(f"model: [cyan]{escape(spec)}[/] (loaded in {time.perf_counter() - t0:.1f} s)")
    return model


def chat_tools(names: str, approve: str) -> list[Tool]:
    """The tools named, as `agentkit run --tools` names them (the built-ins, `files` for the file tools,
    agentkit-tiny's trained tools), those in `approve` asking first. ValueError names unknown ones."""
    from agentkit.demo import TOOL_GROUPS, known_tools

    def expand(text: str) -> list[str]:
        out: list[str] = []
        for n in (n.strip() for n in text.split(",")):
            out += [m for m in TOOL_GROUPS.get(n, (n,)) if m and m not in out]
        return out

    available = known_tools()
    wanted, asks = expand(names), set(expand(approve))
    unknown = sorted((set(wanted) | (asks - {"all"})) - set(available))
    if unknown:
        known = ", ".join([*sorted(available), *TOOL_GROUPS])
        raise ValueError(f"unknown tools: {', '.join(unknown)}; known: {known}")
    not_offered = sorted(asks - {"all"} - set(wanted))
    if not_offered:
        raise ValueError(f"--approve names tools that are not offered: {', '.join(not_offered)}")
    out = []
    for n in wanted:
        t = available[n]
        if "all" in asks or n in asks:
            t = copy.copy(t)  # the shared definition stays as it is
            t.requires_approval = True
        out.append(t)
    return out


def run_chat(console: Console, args: argparse.Namespace) -> int:
    """`agentkit chat`: set-up failures (unknown tools, a model that cannot load) are `CliError`s, which
    the CLI shows as one line with exit code 2."""
    try:
        tools = chat_tools(args.tools, args.approve)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    spec = args.model or os.environ.get("AGENTKIT_MODEL") or "embedded:tiny"
    model = load_model(console, spec)
    sandbox = None
    if any(t.name not in DEFAULT_TOOLS for t in tools):  # only agentkit-tiny's four need no sandbox
        from agentkit.tools.sandbox import open_sandbox

        with console.status(f"opening a {args.sandbox} sandbox…"):
            sandbox = anyio.run(open_sandbox, args.sandbox)
    try:
        chat = Chat(
            console,
            model,
            tools,
            model_spec=spec,
            instructions=args.instructions,
            thinking=args.thinking,
            sandbox=sandbox,
            max_steps=args.max_steps,
        )
        if args.load:
            chat.load(args.load)
        return chat.repl()
    finally:
        if sandbox is not None:
            anyio.run(sandbox.close)
