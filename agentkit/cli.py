"""The `agentkit` command: `demo`, `run "<task>"`, `verify DIR`, `sandbox gc`, `serve`.

Argument parsing, dispatch and the command line's contract with its user: what `demo` and `run` do is
`agentkit.demo` (imported when one of them is asked for), the terminal view of a run is
`agentkit.terminal` (re-exported here, where the examples import it from). The contract lives here, in
`main`: every expected failure is one line on stderr saying what failed and what to do, with a
non-zero exit code (`EXIT_*`; `--debug` adds the traceback); Ctrl-C ends the command with one line and
exit code 130 after the run's sandbox is gone; log notes from the sandbox layer (the Docker ->
bubblewrap fallback) are shown as one-line notes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Sequence

import anyio
from rich.console import Console
from rich.markup import escape

from agentkit.terminal import CliError, EventRenderer, RunStats, stream_run, summary_table

__all__ = ["EventRenderer", "RunStats", "main", "stream_run", "summary_table"]

SANDBOXES = ("auto", "docker", "bwrap", "local")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OUT_OF_SCOPE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_MODEL_HELP = "model string (default: $AGENTKIT_MODEL, else embedded:tiny)"
PRESETS = ("tiny", "flash", "pro", "flash-reduced", "tiny-test")
"""The runtime's config presets (runtime/config.py; a test keeps this list equal to it)."""

_EPILOG = """\
model strings (--model, else the AGENTKIT_MODEL environment variable, else embedded:tiny):
  embedded:tiny                    the shipped agentkit-tiny: CPU, ten trained task shapes (see
                                   `agentkit run --help`); tasks outside them are refused, not guessed
  embedded:<checkpoint dir>        any V4 checkpoint in the real layout, run in-process
  deepseek:<model>                 the DeepSeek API, e.g. deepseek:deepseek-v4-flash (DEEPSEEK_API_KEY)
  completions:<base_url>#<model>   a vLLM / SGLang server's /v1/completions, the framework's own prompt
  chat:<base_url>#<model>          any OpenAI-compatible /v1/chat/completions server
runtime presets: {presets} (weights ship only for tiny; `agentkit verify` checks a checkpoint)
exit codes: 0 answered (ok against --expect), 1 the run failed or answered wrong, 2 bad usage or
  set-up (model, credentials, server, sandbox), 3 outside agentkit-tiny's scope, 130 interrupted
"""


def _version() -> str:
    from agentkit import __version__

    return __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentkit",
        description="agentkit: agents on DeepSeek-V4 tool calls, with an embedded V4 runtime.",
        epilog=_EPILOG.format(presets=", ".join(PRESETS)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"agentkit {_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo", parents=[common], help="run a handful of varied tasks, streamed to the terminal"
    )
    demo.add_argument(
        "--model", default=None, help="model string (default: $AGENTKIT_MODEL or embedded:tiny)"
    )
    demo.add_argument("--sandbox", default="auto", choices=SANDBOXES, help="local is unsafe (no isolation)")
    _add_run_parser(sub, common)
    verify = sub.add_parser(
        "verify",
        parents=[common],
        help="check a checkpoint folder: structure, shapes, dtypes, scales, NaN/Inf, SHA-256 manifest",
    )
    verify.add_argument("checkpoint", metavar="CHECKPOINT_DIR")
    sandbox = sub.add_parser(
        "sandbox", parents=[common], help="operate on sandboxes left behind by killed processes"
    )
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    gc = sandbox_sub.add_parser(
        "gc",
        parents=[common],
        help="remove sandboxes whose owner process is gone: Docker containers and volumes, "
        "bubblewrap folders, mounts and cgroups",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    gc.add_argument("--no-docker", action="store_true", help="leave the Docker engine alone")
    gc.add_argument("--no-bwrap", action="store_true", help="leave bubblewrap leftovers alone")
    from agentkit.serve.command import add_serve_parser

    add_serve_parser(sub)
    from agentkit.chat import add_chat_parser

    add_chat_parser(sub)
    return p


_RUN_EPILOG = """\
tools (--tools, comma-separated): shell, python, files (= read_file, write_file, edit_file, list_dir),
  read_file, write_file, edit_file, list_dir, grep, browser (needs --allow URL), and agentkit-tiny's
  trained tools calculator, convert_units, count_words, days_between. Default: the built-ins (shell,
  python, files, grep); for agentkit-tiny, the toolbox it learned the task's shape with.

agentkit-tiny's scope: it answers only the task shapes it was trained on (below, each with an
example); any other task is refused with exit code 3 before it runs (--no-scope-check runs it anyway).
{shapes}
"""


def _add_run_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    from agentkit.tiny.scope import shape_summary

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run one task",
        epilog=_RUN_EPILOG.format(shapes=shape_summary()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("task")
    run.add_argument("--model", default=None, help=_MODEL_HELP)
    run.add_argument("--sandbox", default="auto", choices=SANDBOXES, help="local is unsafe (no isolation)")
    run.add_argument("--thinking", default="high", choices=["off", "high", "max"])
    run.add_argument("--tools", default=None, help="comma-separated tools to offer (see below)")
    run.add_argument(
        "--workspace", metavar="DIR", default=None, help="your folder as the sandbox's /workspace (read-only)"
    )
    run.add_argument("--writable", action="store_true", help="let the run write to --workspace DIR")
    run.add_argument(
        "--allow", action="append", default=[], metavar="URL", help="a URL prefix the browser may visit"
    )
    run.add_argument("--expect", default=None, metavar="ANSWER", help="judge the answer: ok or wrong")
    run.add_argument("--max-steps", type=int, default=None, help="step limit (default: 8 for tiny, else 50)")
    run.add_argument(
        "--no-scope-check",
        dest="scope_check",
        action="store_false",
        help="run agentkit-tiny even on a task outside its trained shapes",
    )


def _sandbox_gc(console: Console, args: argparse.Namespace) -> int:
    """Sweep now what the in-process reaper would sweep eventually; print what went (or would go)."""
    from agentkit.tools.sandbox.reaper import collect_garbage

    report = collect_garbage(docker=not args.no_docker, bwrap=not args.no_bwrap, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    rows = [
        ("Docker containers", [c[:12] for c in report.containers]),
        ("Docker volumes", [v[:12] for v in report.volumes]),
        ("bubblewrap folders", report.folders),
        ("cgroups", report.cgroups),
    ]
    for what, items in rows:
        console.print(f"{verb} {len(items)} {what}" + (": " + ", ".join(items) if items else ""))
    for note in report.notes:
        console.print(f"[dim]{escape(note)}[/dim]")
    return 0


def _verify(console: Console, args: argparse.Namespace) -> int:
    """`agentkit verify DIR`: every check's line, then the verdict; 0 sound, 1 problems found."""
    from pathlib import Path

    if not Path(args.checkpoint).is_dir():
        raise CliError(f"{args.checkpoint}: no such folder (agentkit verify takes a checkpoint folder)")
    from agentkit.runtime.checkpoint_verify import verify_checkpoint

    report = verify_checkpoint(args.checkpoint)
    for line in report.lines:
        console.print(escape(line), soft_wrap=True)
    if report.ok:
        console.print(f"[green]ok[/]: {escape(str(args.checkpoint))} passed every check")
        return EXIT_OK
    for problem in report.problems:
        console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)
    console.print(f"[red]{len(report.problems)} problem(s)[/] in {escape(str(args.checkpoint))}")
    return EXIT_FAILED


class _NoteHandler(logging.Handler):
    """Log records as one-line notes on stderr: sandbox INFO notes ("note: ...") and any warning."""

    def __init__(self, err: Console, debug: bool) -> None:
        super().__init__(logging.DEBUG if debug else logging.INFO)
        self.err = err
        self.debug = debug

    def emit(self, record: logging.LogRecord) -> None:
        if (
            not self.debug
            and record.levelno < logging.WARNING
            and not record.name.startswith("agentkit.sandbox")
        ):
            return
        word = {logging.INFO: "note", logging.DEBUG: "debug"}.get(record.levelno, record.levelname.lower())
        self.err.print(f"[dim]{word}: {escape(record.getMessage())}[/]", soft_wrap=True)


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that are a user's set-up, not a bug: shown as one line, exit code 2."""
    from agentkit.backends.base import ModelError
    from agentkit.tools.sandbox.base import SandboxError

    errors: list[type[BaseException]] = [ModelError, SandboxError, OSError]
    runtime = sys.modules.get("agentkit.runtime.checkpoint_layout")
    if runtime is not None:
        errors.append(runtime.CheckpointError)
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False)
    debug = bool(getattr(args, "debug", False))
    handler = _NoteHandler(err, debug)
    pkg_log = logging.getLogger("agentkit")
    pkg_log.addHandler(handler)
    levels = {name: logging.getLogger(name).level for name in ("agentkit", "agentkit.sandbox")}
    logging.getLogger("agentkit.sandbox").setLevel(logging.INFO)
    if debug:
        pkg_log.setLevel(logging.DEBUG)
    try:
        return _dispatch(args, console)
    except KeyboardInterrupt:
        # the run is already stopped and its sandbox gone: another Ctrl-C now would only turn the
        # exit into a traceback from the interpreter's shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        err.print("interrupted (the run and its sandbox were stopped)")
        return EXIT_INTERRUPTED
    except CliError as e:
        _one_line(err, str(e), debug)
        if e.details:
            err.print(f"[dim]{escape(e.details)}[/]", soft_wrap=True)
        return e.code
    except Exception as e:
        if isinstance(e, _expected_errors()):
            _one_line(err, f"{type(e).__name__}: {e}", debug)
            return EXIT_USAGE
        _one_line(
            err, f"internal error: {type(e).__name__}: {e} (please report it; --debug shows where)", debug
        )
        return EXIT_FAILED
    finally:
        pkg_log.removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _one_line(err: Console, message: str, debug: bool) -> None:
    if debug:
        err.print(escape(traceback.format_exc()), end="")
    err.print(f"[red]agentkit: error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)


def _dispatch(args: argparse.Namespace, console: Console) -> int:
    if args.command == "sandbox":
        return _sandbox_gc(console, args)
    if args.command == "verify":
        return _verify(console, args)
    if args.command == "serve":
        from agentkit.serve.command import run_serve

        return run_serve(args)
    if args.command == "chat":
        from agentkit.chat import run_chat

        return run_chat(console, args)
    from agentkit import demo

    if args.command == "demo":
        return anyio.run(demo.run_demo, console, args.model, args.sandbox)
    opts = demo.RunOptions(
        task=args.task,
        model=args.model,
        sandbox=args.sandbox,
        thinking=args.thinking,
        tools=[t.strip() for t in args.tools.split(",") if t.strip()] if args.tools is not None else None,
        workspace=args.workspace,
        writable=args.writable,
        allow=list(args.allow),
        expect=args.expect,
        max_steps=args.max_steps,
        scope_check=args.scope_check,
    )
    return anyio.run(demo.run_one, console, opts)


if __name__ == "__main__":
    sys.exit(main())
