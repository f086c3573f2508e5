"""MCP tools and OpenTelemetry tracing: what they cost.

    python bench/mcp_tracing.py                 # all three tables
    python bench/mcp_tracing.py --only prompt   # prompt size by number of MCP tools
    python bench/mcp_tracing.py --only calls    # per-call latency: local tool vs MCP over stdio / HTTP
    python bench/mcp_tracing.py --only tracing  # loop ms/step: no provider vs an SDK provider

The MCP server is the test fixture (tests/fixtures/mcp/server.py, built with the official SDK; `--many N`
adds N generated tools with varied schemas). Prompt sizes are characters of the rendered V4 prompt (the
system prompt with the tools section); no V4 tokenizer ships here, so tokens are given as chars / 4, the
scripted model's estimate. Tracing is measured with bench/loop.py's harness: first with no provider
(what every untraced app runs), then with the SDK's TracerProvider and a span processor that drops
spans (the cost of making them, not of exporting them).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from agentkit.tools.tool import tool

from agentkit.agent import Agent
from agentkit.backends import ScriptedModel
from agentkit.backends.scripted import scripted_turn
from agentkit.mcp import MCPServer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "mcp" / "server.py"
DEVNULL = open(os.devnull, "w")  # noqa: SIM115 (the servers' logs, for the whole process)


def stdio(*extra: str) -> MCPServer:
    return MCPServer.stdio(sys.executable, [str(FIXTURE), *extra], stderr=DEVNULL)


async def prompt_rows(counts: list[int]) -> list[tuple[int, float, int, int, float]]:
    rows = []
    for n in counts:
        server = stdio("--many", str(n)) if n else stdio()
        model = ScriptedModel([scripted_turn("t", "ok")])
        async with Agent(model, tools=[server]) as agent:
            t0 = time.perf_counter()
            await agent.run("size?")
            first = time.perf_counter() - t0
            prompt = model.prompts[0].prompt or ""
            tools = len(agent.tools)
        section = sum(len(ln) + 1 for ln in prompt.splitlines() if ln.startswith('{"name": '))
        rows.append((tools, first * 1e3, len(prompt), section // max(tools, 1), len(prompt) / 4))
    return rows


def http_server() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURE), "--http"], stdout=subprocess.PIPE, stderr=DEVNULL, text=True
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline().split()[1])


async def call_rows(calls: int) -> list[tuple[str, float, float]]:
    @tool
    async def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    async def timed(invoke: Any) -> tuple[float, float]:
        for _ in range(10):
            await invoke({"a": 1, "b": 2})
        samples = []
        for i in range(calls):
            t0 = time.perf_counter()
            out = await invoke({"a": i, "b": 1})
            samples.append(time.perf_counter() - t0)
            assert not out.is_error and out.content == str(i + 1), out
        return statistics.median(samples) * 1e3, statistics.quantiles(samples, n=20)[-1] * 1e3

    rows = [("local @tool (async)", *await timed(add.invoke))]
    async with stdio() as server:
        remote = {t.name: t for t in await server.list_tools()}["add"]
        rows.append(("MCP stdio", *await timed(remote.invoke)))
    proc, port = http_server()
    try:
        async with MCPServer.http(f"http://127.0.0.1:{port}/mcp") as server:
            remote = {t.name: t for t in await server.list_tools()}["add"]
            rows.append(("MCP streamable HTTP", *await timed(remote.invoke)))
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def tracing_rows(steps: list[int], repeat: int) -> list[tuple[str, int, float, float]]:
    sys.path.insert(0, str(ROOT / "bench"))
    import loop as loop_bench  # bench/loop.py: the same harness as the loop table in the README
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    rows = []
    off = anyio.run(loop_bench.bench, steps, repeat, None, False)
    rows += [("no provider (default)", s, mean, tail) for s, mean, tail in off]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    on = anyio.run(loop_bench.bench, steps, repeat, None, False)
    rows += [("SDK provider, spans dropped", s, mean, tail) for s, mean, tail in on]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--only", choices=["prompt", "calls", "tracing"])
    ap.add_argument("--tools", type=int, nargs="+", default=[0, 50, 200])
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.only in (None, "prompt"):
        print("MCP tools in the prompt (fixture server: 9 fixed tools + N generated)")
        print(
            "| tools | first run incl. server start, ms | prompt chars | chars per tool | ~tokens (chars/4) |"
        )
        print("|---:|---:|---:|---:|---:|")
        for tools, ms, chars, per, tokens in anyio.run(prompt_rows, args.tools):
            print(f"| {tools} | {ms:.0f} | {chars} | {per} | {tokens:.0f} |")
    if args.only in (None, "calls"):
        print(f"\none call, {args.calls} sequential calls after 10 warm-up (add(a, b) -> int)")
        print("| tool | median ms | p95 ms |")
        print("|---|---:|---:|")
        for name, med, p95 in anyio.run(call_rows, args.calls):
            print(f"| {name} | {med:.3f} | {p95:.3f} |")
    if args.only in (None, "tracing"):
        print("\nagent loop with tracing (bench/loop.py harness, asyncio, async no-op tool)")
        print("| tracer | steps | mean ms/step (whole run) | ms/step at end (median of last 10) |")
        print("|---|---:|---:|---:|")
        for name, steps, mean, tail in tracing_rows(args.steps, args.repeat):
            print(f"| {name} | {steps} | {mean:.3f} | {tail:.3f} |")


if __name__ == "__main__":
    main()
