"""Tool-layer overheads: what @tool validation and dispatch add to a call, and built-in round trips.

Run: `python bench/bench_tools.py [--backends local,bwrap,docker] [--browser]`. Prints a markdown
table (median and p90 over repeated calls). Numbers depend on the machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import http.server
import socketserver
import statistics
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from agentkit.tools.builtin import read_file, shell, write_file
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import open_sandbox
from agentkit.tools.tool import tool
from pydantic import BaseModel


class Item(BaseModel):
    name: str
    qty: int = 1


@tool
async def noop() -> str:
    return "ok"


@tool
async def typed(a: int, b: float, c: bool, d: list[int], e: Item) -> str:
    """Five typed parameters.

    Args:
        a: an int
        b: a float
        c: a flag
        d: some ints
        e: an item
    """
    return "ok"


@tool
def sync_noop() -> str:
    return "ok"


async def measure(fn: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    for _ in range(min(10, n)):
        await fn()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t0)
    samples.sort()
    return statistics.median(samples), samples[int(0.9 * (len(samples) - 1))]


def row(name: str, med: float, p90: float | None = None) -> str:
    tail = "–" if p90 is None else f"{p90 * 1e6:,.0f}"
    return f"| {name} | {med * 1e6:,.0f} | {tail} |"


async def bench_backend(backend: str) -> list[str]:
    async with await open_sandbox(backend=backend) as sb:
        ctx: RunContext[None] = RunContext(sandbox=sb)
        await write_file.invoke({"path": "f.txt", "content": "x\n" * 100}, ctx)
        sh = await measure(lambda: shell.invoke({"command": "true"}, ctx), 30)
        rd = await measure(lambda: read_file.invoke({"path": "f.txt"}, ctx), 30)
    return [row(f"shell `true` ({backend})", *sh), row(f"read_file 100 lines ({backend})", *rd)]


async def main(backends: list[str], browser: bool) -> None:
    rows: list[str] = []
    good = {"a": "1", "b": "2.5", "c": "true", "d": "[1, 2, 3]", "e": {"name": "x", "qty": "2"}}
    bad = {"a": "one", "b": "x", "c": "maybe", "d": "1,2", "e": {}}
    cases: list[tuple[str, Callable[[], Awaitable[Any]], int]] = [
        ("invoke: async, no args", lambda: noop.invoke({}), 2000),
        ("invoke: async, 5 typed args (lax + JSON rescue)", lambda: typed.invoke(good), 2000),
        ("invoke: 5 args, all invalid (error rendered)", lambda: typed.invoke(bad), 2000),
        ("invoke: sync tool (worker thread hop)", lambda: sync_noop.invoke({}), 1000),
    ]
    for name, fn, n in cases:
        rows.append(row(name, *await measure(fn, n)))
    t0 = time.perf_counter()
    for _ in range(200):
        tool(typed.function)
    rows.append(row("@tool on a 5-parameter function (schema build)", (time.perf_counter() - t0) / 200))

    for backend in backends:
        rows += await bench_backend(backend)

    if browser:
        from agentkit.tools.builtin.browser import Browser

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = b"<html><body><h1>Hi</h1><a href='/b'>next</a></body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        origin = f"http://127.0.0.1:{srv.server_address[1]}"
        t0 = time.perf_counter()
        async with Browser(allow=[origin]) as b:
            rows.append(row("browser start (Chromium + proxy)", time.perf_counter() - t0))
            tools = {t.name: t for t in b.tools()}
            rows.append(
                row(
                    "browser_open local page",
                    *await measure(lambda: tools["browser_open"].invoke({"url": origin + "/"}), 20),
                )
            )
            rows.append(
                row(
                    "browser_click link (navigation)",
                    *await measure(lambda: tools["browser_click"].invoke({"ref": 1}), 20),
                )
            )
        srv.shutdown()

    print("| operation | median µs | p90 µs |")
    print("|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default="local", help="comma list of backends: local,bwrap,docker")
    parser.add_argument("--browser", action="store_true", help="also time the browser tools (real Chromium)")
    args = parser.parse_args()
    anyio.run(main, [b for b in args.backends.split(",") if b], args.browser)
