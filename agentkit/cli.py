"""The `agentkit` command: `demo`, `run "<task>"`, `sandbox gc`, `serve`.

Argument parsing and dispatch only: what `demo` and `run` do is `agentkit.demo`, imported when one of them
is asked for, and the terminal view of a run is `agentkit.terminal` (re-exported here, where the examples
import it from).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import anyio
from rich.console import Console
from rich.markup import escape

from agentkit.terminal import EventRenderer, RunStats, stream_run, summary_table

__all__ = ["EventRenderer", "RunStats", "main", "stream_run", "summary_table"]

SANDBOXES = ("auto", "docker", "bwrap", "local")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentkit", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a handful of varied tasks, streamed to the terminal")
    demo.add_argument("--model", default=None, help="model spec (default: the shipped embedded model)")
    demo.add_argument("--sandbox", default="auto", choices=SANDBOXES, help="local is unsafe (no isolation)")
    run = sub.add_parser("run", help="run one task")
    run.add_argument("task")
    run.add_argument("--model", default=None, help="model spec (default: the shipped embedded model)")
    run.add_argument("--sandbox", default="auto", choices=SANDBOXES, help="local is unsafe (no isolation)")
    run.add_argument("--thinking", default="high", choices=["off", "high", "max"])
    run.add_argument(
        "--tools",
        default=None,
        help="comma-separated tools to offer (default: all; agentkit-tiny does best with few)",
    )
    sandbox = sub.add_parser("sandbox", help="operate on sandboxes left behind by killed processes")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", required=True)
    gc = sandbox_sub.add_parser(
        "gc",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(highlight=False)
    if args.command == "sandbox":
        return _sandbox_gc(console, args)
    if args.command == "serve":
        from agentkit.serve.command import run_serve

        return run_serve(args)
    if args.command == "chat":
        from agentkit.chat import run_chat

        return run_chat(console, args)
    from agentkit import demo

    if args.command == "demo":
        return anyio.run(demo.run_demo, console, args.model, args.sandbox)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()] if args.tools else None
    return anyio.run(demo.run_one, console, args.task, args.model, args.sandbox, args.thinking, tools)


if __name__ == "__main__":
    sys.exit(main())
