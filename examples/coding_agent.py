"""A coding agent: built-in tools in a real sandbox, told to make a failing test pass.

    python examples/coding_agent.py                          # demo repo, scripted model, auto sandbox
    python examples/coding_agent.py --model deepseek:deepseek-v4-flash --repo ./myproj \\
        --task "make the failing test pass" --test-command "python3 -m pytest -q"

A repository (the bundled demo repo, or `--repo DIR`) is uploaded into a fresh Docker or bubblewrap
sandbox; the agent reads, edits and runs tests there with `shell`, `python`, `read_file`, `write_file`,
`edit_file`, `list_dir` and `grep`, and every event is streamed to the terminal. Afterwards the test
command is run once more, outside the agent, so the verdict printed last is not the model's word.

Human-in-the-loop and persistence:

    python examples/coding_agent.py --approve-writes                 # asks y/n before each file write
    python examples/coding_agent.py --approve-writes --save-session run.json   # pauses, saves, exits
    python examples/coding_agent.py --resume run.json --decide yes   # another process approves, resumes

A paused run is plain JSON (`agent.save_session`), resumed with `agent.stream(state=...,
approvals={call_id: True | False | "reason"})`. The sandbox is not part of the session, so this example
saves the workspace next to it (`run.json.workspace/`) and uploads it again on resume.

`--model scripted` (the default) stands in for a model offline: a policy that decides each turn from
the tool results it has received (which tests fail, the source it read, whether the edit went through)
and writes canonical DSML. It knows the fix for the demo repo only; everything else is real.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from agentkit.tools.builtin import builtin_tools
from agentkit.tools.sandbox import ExecResult, Sandbox
from agentkit.tools.tool import Tool, tool
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

from agentkit import Agent, RunResult, open_sandbox
from agentkit import events as ev
from agentkit.backends import Model, ModelError, ModelRequest, ScriptedModel, resolve
from agentkit.backends.scripted import scripted_turn
from agentkit.cli import EventRenderer, RunStats
from agentkit.messages import AssistantMessage, ToolMessage, UserMessage
from agentkit.session import RunState

TEST_COMMAND = "python3 -m unittest -v"
TASK = "The test suite fails. Find the bug and fix the code (not the tests) so that `{test_command}` passes."
INSTRUCTIONS = (
    "You are a careful software engineer working in a sandboxed checkout. Run the tests, read the code, "
    "make the smallest correct fix with edit_file, run the tests again, then say what you changed."
)

DEMO_REPO: dict[str, str] = {
    "wordcount.py": '''"""Word statistics for plain text."""

PUNCTUATION = ".,;:!?\\"'()"


def word_frequencies(text: str) -> dict[str, int]:
    """How often each word occurs, ignoring case and surrounding punctuation."""
    counts: dict[str, int] = {}
    for raw in text.split():
        word = raw.strip(PUNCTUATION)
        if word:
            counts[word] = counts.get(word, 0) + 1
    return counts


def most_common(text: str) -> str:
    freqs = word_frequencies(text)
    return max(sorted(freqs), key=freqs.__getitem__)
''',
    "test_wordcount.py": """import unittest

from wordcount import most_common, word_frequencies


class WordFrequencies(unittest.TestCase):
    def test_punctuation_is_ignored(self):
        self.assertEqual(word_frequencies("red, green; red!"), {"red": 2, "green": 1})

    def test_case_is_ignored(self):
        self.assertEqual(word_frequencies("The cat saw the dog"), {"the": 2, "cat": 1, "saw": 1, "dog": 1})

    def test_most_common(self):
        self.assertEqual(most_common("Rose is a rose is a ROSE"), "rose")


if __name__ == "__main__":
    unittest.main()
""",
}


def write_demo_repo(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name, text in DEMO_REPO.items():
        (dest / name).write_text(text, encoding="utf-8")
    return dest


def make_tools(approve_writes: bool) -> list[Tool]:
    """The built-in tools; with `approve_writes`, the two that change files need a human's yes first."""
    tools = builtin_tools()
    if not approve_writes:
        return tools
    gated = {"write_file", "edit_file"}
    return [
        tool(t.function, sequential=True, requires_approval=True) if t.name in gated else t for t in tools
    ]


# ------------------------------------------------------------------ the offline stand-in for a model


def say(req: ModelRequest, reasoning: str, content: str = "", calls: Sequence[tuple[str, Any]] = ()) -> str:
    """One assistant turn as the model would write it: canonical DSML, in the run's thinking mode."""
    return scripted_turn(reasoning, content, calls, thinking=req.thinking)


def _this_task(req: ModelRequest) -> list[tuple[str, dict[str, Any], str]]:
    """(tool, arguments, result) for every call since the last user message, so that a follow-up task
    on a resumed session starts its own investigation."""
    msgs = list(req.messages)
    last_user = max(i for i, m in enumerate(msgs) if isinstance(m, UserMessage))
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    done: list[tuple[str, dict[str, Any], str]] = []
    for m in msgs[last_user + 1 :]:
        if isinstance(m, AssistantMessage):
            calls.update({c.id: (c.name, c.arguments) for c in m.tool_calls})
        elif isinstance(m, ToolMessage) and m.call_id in calls:
            done.append((*calls[m.call_id], m.content))
    return done


def _exit_code(shell_output: str) -> int | None:
    found = re.findall(r"\[exit code: (-?\d+)\]", shell_output)
    return int(found[-1]) if found else None


def _summary_line(test_output: str) -> str:
    lines = [ln.strip() for ln in test_output.splitlines() if ln.strip().startswith(("Ran ", "OK", "FAILED"))]
    return "; ".join(lines) or test_output.strip().splitlines()[-1]


def scripted_policy(req: ModelRequest) -> str:
    """Run the tests; if they fail, read the non-test sources; apply the fix it recognises; re-test."""
    done = _this_task(req)
    if not done:
        return say(
            req,
            "Look at the checkout and run the test suite to see what fails.",
            calls=[("list_dir", {"path": "."}), ("shell", {"command": TEST_COMMAND})],
        )
    name, _, result = done[-1]
    edits = [d for d in done if d[0] == "edit_file"]
    if name == "shell" and edits:
        code = _exit_code(result)
        verdict = "now pass" if code == 0 else f"still fail (exit code {code})"
        path = edits[-1][1]["path"]
        answer = f"Edited {path}; the tests {verdict}: {_summary_line(result)}."
        return say(req, "Re-ran the suite after the edit.", answer)
    if name == "edit_file":
        if not result.startswith("Replaced"):
            return say(req, "The edit did not go through.", f"I could not apply the fix: {result}")
        return say(req, "Edit applied; run the tests again.", calls=[("shell", {"command": TEST_COMMAND})])
    if name == "shell":  # the first test run, next to list_dir
        if _exit_code(result) == 0:
            return say(req, "Nothing fails.", f"The tests already pass: {_summary_line(result)}.")
        listing = next(r for n, _, r in done if n == "list_dir")
        files = [ln.rsplit(" (", 1)[0] for ln in listing.splitlines() if ln.endswith(" bytes)")]
        sources = [f for f in files if f.endswith(".py") and not Path(f).name.startswith("test_")]
        if not sources:
            return say(req, "No source files found.", "I found no Python sources next to the tests.")
        return say(
            req, "Tests fail; read the code under test.", calls=[("read_file", {"path": p}) for p in sources]
        )
    if name == "read_file":
        # The one insight the script carries: the words are counted before being lower-cased.
        for path_args, text in ((a, r) for n, a, r in done if n == "read_file"):
            for numbered in text.splitlines():
                line = numbered.split("\t", 1)[-1]
                if re.fullmatch(r"\s*word = raw\.strip\(PUNCTUATION\)", line):
                    fixed = line + ".lower()"
                    edit = {"path": path_args["path"], "old_string": line, "new_string": fixed}
                    return say(
                        req,
                        "test_case_is_ignored fails: words are counted without lower-casing them.",
                        calls=[("edit_file", edit)],
                    )
        give_up = (
            "The scripted model only knows the demo repo's bug; use a real model "
            "(--model deepseek:deepseek-v4-flash) for this one."
        )
        return say(req, "No fix recognised.", give_up)
    return say(req, "Unexpected state.", f"Stopping after an unexpected {name} result.")


def make_model(spec: str | Model) -> Model:
    """`scripted` is this file's offline stand-in; any other string goes to `agentkit.backends.resolve`
    (a malformed spec raises ValueError there, before anything starts)."""
    if spec == "scripted":
        return ScriptedModel([scripted_policy] * 20)
    return resolve(spec)


# ------------------------------------------------------------------------------------ running it


class UsageError(ValueError):
    """The command line asks for something this run cannot do."""


@dataclass(slots=True)
class Outcome:
    """What one invocation did: the run's result and the independent re-run of the test command."""

    result: RunResult[str]
    check: ExecResult | None


def decide(call: Any, mode: str, console: Console) -> bool | str:
    """A human's decision on one gated call: from `--decide`, or asked on the terminal."""
    if mode == "yes":
        return True
    if mode == "no":
        return "the user said no"
    args = ", ".join(f"{k}={json.dumps(v)[:200]}" for k, v in call.arguments.items())
    console.print(f"[bold magenta]approve[/] {escape(call.name)}({escape(args)})? [y/N] ", end="")
    try:
        answer = input().strip().lower()
    except EOFError:
        return "no one was there to approve it"
    return True if answer in ("y", "yes") else "the user said no"


def show_decisions(approvals: dict[str, bool | str], console: Console) -> None:
    for call_id, d in approvals.items():
        verdict = "[green]approved[/]" if d is True else f"[red]denied[/] ({escape(str(d))})"
        console.print(f"resuming: call {escape(call_id)} {verdict}")


async def stream(
    agent: Agent[None, str],
    console: Console,
    task: str | None = None,
    state: RunState | None = None,
    approvals: dict[str, bool | str] | None = None,
) -> RunResult[str]:
    """One `agent.stream(...)` rendered by agentkit's own terminal renderer; returns the RunResult."""
    render = EventRenderer(console, RunStats(task=task or "(resumed)"))
    result: RunResult[str] | None = None
    async for event in agent.stream(task, state=state, approvals=approvals):
        render(event)
        if isinstance(event, ev.ApprovalRequired):
            console.print(f"[magenta]needs approval:[/] {escape(event.call.name)} (call {event.call.id})")
        elif isinstance(event, ev.RunEnd):
            result = event.result
    assert result is not None, "a stream always ends with RunEnd"
    return result


async def run_coding_agent(
    sandbox: Sandbox,
    *,
    model: str | Model = "scripted",
    task: str | None = TASK.format(test_command=TEST_COMMAND),
    resume: Path | None = None,
    approve_writes: bool = False,
    decide_mode: str = "ask",
    save_session: Path | None = None,
    test_command: str = TEST_COMMAND,
    console: Console | None = None,
) -> Outcome:
    """Run the agent in `sandbox`, whose workspace already holds the repository, or resume the run
    saved at `resume` (a paused one gets its decisions; a finished one needs a follow-up `task`).

    Pending approvals are decided here and the run resumed in this process, unless `save_session` is
    given: then a paused run is saved (with a copy of the workspace) for another process to resume.
    """
    console = console or Console(highlight=False)
    agent: Agent[None, str] = Agent(
        make_model(model), make_tools(approve_writes), instructions=INSTRUCTIONS, sandbox=sandbox
    )
    state = agent.load_session(resume) if resume is not None else None
    approvals: dict[str, bool | str] | None = None
    if state is not None and state.status != "paused" and task is None:
        raise UsageError(f"the saved run has ended ({state.status}); give a follow-up task to continue it")
    if state is not None and state.status == "paused":
        approvals = {c.id: decide(c, decide_mode, console) for c in state.pending_calls}
        task = None
    if task is not None:
        console.print(Panel(escape(task), title="task", border_style="blue"))
    elif approvals:
        show_decisions(approvals, console)
    result = await stream(agent, console, task, state, approvals)
    while result.status == "paused" and save_session is None:
        approvals = {c.id: decide(c, decide_mode, console) for c in result.pending_approvals}
        show_decisions(approvals, console)
        result = await stream(agent, console, None, result.state, approvals)
    if save_session is not None:
        agent.save_session(save_session, result)
        await sandbox.download(".", workspace_copy(save_session))
        console.print(f"[blue]session saved:[/] {save_session} (workspace in {workspace_copy(save_session)})")
    if result.status == "paused":
        console.print(
            f"[magenta]paused on {len(result.pending_approvals)} approval(s); resume with[/] python "
            f"examples/coding_agent.py --resume {save_session} --decide yes|no"
        )
        return Outcome(result, None)
    check = await sandbox.exec(test_command, timeout=300)
    verdict = "[green]pass[/]" if check.exit_code == 0 else f"[red]fail (exit code {check.exit_code})[/]"
    console.print(f"status: {result.status}   independent re-run of `{escape(test_command)}`: {verdict}")
    return Outcome(result, check)


def workspace_copy(session: Path) -> Path:
    """Where a saved session's workspace lives: next to its JSON."""
    return session.with_name(session.name + ".workspace")


async def amain(args: argparse.Namespace, console: Console) -> int:
    resume = Path(args.resume) if args.resume is not None else None
    if resume is not None:
        repo = workspace_copy(resume)
    else:
        repo = Path(args.repo) if args.repo else write_demo_repo(Path(tempfile.mkdtemp()) / "repo")
    if not repo.is_dir():
        console.print(f"[red]no repository at {repo}[/]")
        return 2
    with console.status(f"opening a {args.sandbox} sandbox…"):
        sandbox = await open_sandbox(args.sandbox)
    async with sandbox:
        await sandbox.upload(repo, ".")
        console.print(f"sandbox: [cyan]{type(sandbox).__name__}[/], workspace {sandbox.workspace} ← {repo}")
        try:
            outcome = await run_coding_agent(
                sandbox,
                model=args.model_obj,
                task=args.task
                or (None if resume is not None else TASK.format(test_command=args.test_command)),
                resume=resume,
                approve_writes=args.approve_writes,
                decide_mode=args.decide,
                save_session=Path(args.save_session) if args.save_session else None,
                test_command=args.test_command,
                console=console,
            )
        except UsageError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            return 2
        except ModelError as exc:  # the server is unreachable, refused the key, or broke the protocol
            console.print(f"[red]model error:[/] {escape(str(exc))}")
            return 1
    if outcome.result.status == "paused":
        return 0
    return 0 if outcome.result.ok and outcome.check is not None and outcome.check.exit_code == 0 else 1


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--model", default="scripted", help="scripted | deepseek:<name> | completions:<url>#<name>"
    )
    p.add_argument("--sandbox", default="auto", choices=["auto", "docker", "bwrap", "local"])
    p.add_argument("--repo", default=None, help="directory to upload (default: the bundled demo repo)")
    p.add_argument("--task", default=None, help="what to do (default: make the failing tests pass)")
    p.add_argument("--test-command", default=TEST_COMMAND, help="re-run after the agent, as the verdict")
    p.add_argument("--approve-writes", action="store_true", help="write_file/edit_file need approval")
    p.add_argument("--decide", default="ask", choices=["ask", "yes", "no"], help="how approvals are given")
    p.add_argument("--save-session", default=None, help="save the run (paused or finished) to this JSON")
    p.add_argument("--resume", default=None, help="resume a run saved with --save-session")
    return p


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.model_obj = make_model(args.model)
    except (ValueError, ModelError) as exc:
        p.error(str(exc))
    return anyio.run(amain, args, console or Console(highlight=False))


if __name__ == "__main__":
    sys.exit(main())
