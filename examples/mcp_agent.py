"""An agent whose tools come from an MCP server: the filesystem server in examples/mcp_files_server.py.

    python examples/mcp_agent.py                     # offline: scripted model, sample notes
    python examples/mcp_agent.py --root ~/notes "Which note mentions 'budget'?" --model deepseek:<name>
    python examples/mcp_files_server.py ~/notes --http 8000 &        # the same server over HTTP ...
    python examples/mcp_agent.py --url http://127.0.0.1:8000/mcp "Which note mentions 'budget'?"

The server is started by the agent (`MCPServer.stdio`) on the first run and stopped when the agent is
closed (`with agent:`); `--url` connects to one already running over streamable HTTP instead. The
server's tools (list_files, read_file, search) appear in the model's prompt with the server's own
schemas, and their calls run on agentkit's normal path, in parallel where the model writes several.

`--model scripted` (the default) stands in for a model: it searches for the quoted word in the question,
reads every file that matched (parallel calls) and answers from what the tools returned. `--trace`
prints the run's OpenTelemetry spans (needs opentelemetry-sdk).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentkit import Agent, RunResult
from agentkit.backends import Model, ModelError, ModelRequest, ScriptedModel, resolve
from agentkit.backends.scripted import scripted_turn
from agentkit.mcp import MCPServer
from agentkit.messages import ToolMessage

HERE = Path(__file__).resolve().parent
SAMPLE_NOTES = {
    "meetings/2026-03-02.md": "# Planning\nWe agreed the budget for Q2 is 42k EUR.\nNext: hiring.",
    "meetings/2026-03-09.md": "# Retro\nThe release slipped a week; the demo went well.",
    "ideas.txt": "A CLI for the tracker.\nAsk finance whether the budget covers a second GPU.",
    "todo.md": "- renew the domain\n- write the README",
}


def files_server(root: Path, url: str | None = None) -> MCPServer:
    if url is not None:
        return MCPServer.http(url)
    return MCPServer.stdio(sys.executable, [str(HERE / "mcp_files_server.py"), str(root)])


# ------------------------------------------------------------------ the offline stand-in for a model


def say(req: ModelRequest, reasoning: str, content: str = "", calls: Sequence[tuple[str, Any]] = ()) -> str:
    return scripted_turn(reasoning, content, calls, thinking=req.thinking)


def json_values(text: str) -> list[Any]:
    """The JSON values in a tool result: a server sends a list as one text block per item."""
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        try:
            value, i = decoder.raw_decode(text, i)
        except ValueError:
            return values
        values.extend(value if isinstance(value, list) else [value])
    return values


def scripted_policy(req: ModelRequest) -> str:
    """search for the quoted word -> read the files that matched (in parallel) -> answer from them."""
    question = next(m.content for m in req.messages if m.role == "user")
    results = [m for m in req.messages if isinstance(m, ToolMessage)]
    word = re.search(r"['\"]([^'\"]+)['\"]", question)
    if word is None:
        return say(req, "Nothing to look for.", "Put the word to look for in quotes, e.g. 'budget'.")
    if not results:
        return say(req, "Search the folder first.", calls=[("search", {"text": word.group(1)})])
    search = results[0]
    if search.is_error:
        return say(req, "The search failed.", f"I could not search the folder: {search.content}")
    matches = json_values(search.content)
    if not matches:
        return say(req, "No match.", f"No file mentions '{word.group(1)}'.")
    if len(results) == 1:
        paths = sorted({m["path"] for m in matches})
        return say(req, "Read each file that matched.", calls=[("read_file", {"path": p}) for p in paths])
    lines = [f"- {m['path']} (line {m['line']}): {m['text']}" for m in matches]
    read = sum(1 for r in results[1:] if not r.is_error)
    answer = f"'{word.group(1)}' appears in {len(lines)} place(s) (I read {read} file(s)):\n" + "\n".join(
        lines
    )
    return say(req, "Answer from the search hits, checked against the files.", answer)


def make_model(spec: str | Model) -> Model:
    if spec == "scripted":
        return ScriptedModel([scripted_policy] * 6)
    return resolve(spec)


# ------------------------------------------------------------------------------------------ the program


def ask(question: str, root: Path, model: str | Model = "scripted", url: str | None = None) -> RunResult[str]:
    with Agent(
        make_model(model),
        tools=[files_server(root, url)],
        instructions="You answer questions about the files in a folder. Use the tools; quote what you find.",
    ) as agent:
        return agent.run_sync(question)


def trace_to_stdout() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(
            ConsoleSpanExporter(formatter=lambda s: f"span {s.name} {dict(s.attributes or {})}\n")
        )
    )
    trace.set_tracer_provider(provider)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("question", nargs="?", default="Which files mention the word 'budget'?")
    p.add_argument("--root", type=Path, help="the folder to serve (default: sample notes in a temp folder)")
    p.add_argument("--url", help="use a running server over streamable HTTP instead of starting one")
    p.add_argument(
        "--model", default="scripted", help="scripted | deepseek:<name> | completions:<url>#<name>"
    )
    p.add_argument("--trace", action="store_true", help="print the run's OpenTelemetry spans")
    args = p.parse_args(argv)
    try:
        model = make_model(args.model)
    except (ValueError, ModelError) as exc:
        p.error(str(exc))
    if args.trace:
        trace_to_stdout()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp)
            for rel, text in SAMPLE_NOTES.items():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_text(text + "\n")
        try:
            result = ask(args.question, root, model, args.url)
        except ModelError as exc:
            print(f"model error: {exc}", file=sys.stderr)
            return 1
    u = result.usage
    print(f"status: {result.status}")
    print(f"answer: {result.text}")
    print(f"usage:  {u.requests} model calls, {u.tool_calls} tool calls, {u.prompt_tokens} prompt tokens")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
