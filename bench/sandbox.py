"""Sandbox latency table: cold start, warm-pool acquire, exec round trip, 1 MB write/read.

Run: `python bench/sandbox.py [--n 20]`. Rows: Docker, bubblewrap, and the floor (LocalSandbox, a
host subprocess behind the same API, plus a bare `subprocess.run`). Medians and p90 in milliseconds.
Needs a Docker engine with agentkit-sandbox:latest (scripts/build-sandbox-image) and bwrap.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio
from agentkit.tools.sandbox import BwrapSandbox, DockerSandbox, LocalSandbox, Sandbox, SandboxPool

MB = b"\xa5" * (1 << 20)


def fmt(samples: list[float]) -> str:
    if not samples:
        return "-"
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return f"{statistics.median(ms):8.2f} / {p90:8.2f}"


async def timed(n: int, fn: Callable[[], Awaitable[object]]) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def per_sandbox(sb: Sandbox, n: int) -> dict[str, list[float]]:
    await sb.exec("true")  # warm caches once
    rows = {"exec `true`": await timed(n, lambda: sb.exec("true"))}
    rows["write 1 MB"] = await timed(n, lambda: sb.write_file("bench.bin", MB))
    rows["read 1 MB"] = await timed(n, lambda: sb.read_file("bench.bin"))
    return rows


async def cold(n: int, make: Callable[[], Sandbox]) -> tuple[list[float], list[float]]:
    """Open (ready for a first exec) and close times of fresh sandboxes."""
    opened, closed = [], []
    for _ in range(n):
        t = time.perf_counter()
        sb = make()
        await sb.__aenter__()
        opened.append(time.perf_counter() - t)
        t = time.perf_counter()
        await sb.close()
        closed.append(time.perf_counter() - t)
    return opened, closed


async def main(n: int) -> None:
    results: dict[str, dict[str, list[float]]] = {}

    results["subprocess.run"] = {"exec `true`": [await anyio.to_thread.run_sync(_run_true) for _ in range(n)]}

    for name, make in (
        ("local (host)", lambda: LocalSandbox()),
        ("bwrap", lambda: BwrapSandbox()),
        ("docker", lambda: DockerSandbox()),
    ):
        opened, closed = await cold(max(3, n // 4) if name == "docker" else n, make)
        async with make() as sb:
            rows = await per_sandbox(sb, n)
        results[name] = {"cold start": opened, "close": closed, **rows}

    async with SandboxPool(size=4) as pool:
        acquired = []
        for _ in range(max(3, n // 4)):
            await pool.wait_ready()
            t = time.perf_counter()
            sb = await pool.acquire()
            acquired.append(time.perf_counter() - t)
            await sb.close()
        results["docker"]["warm-pool acquire"] = acquired

    cols = ["cold start", "warm-pool acquire", "exec `true`", "write 1 MB", "read 1 MB", "close"]
    print(f"\nsandbox latency, ms (median / p90), n={n}\n")
    header = f"| {'backend':<15} | " + " | ".join(f"{c:^19}" for c in cols) + " |"
    print(header)
    print("|" + "|".join(["-" * 17] + ["-" * 21] * len(cols)) + "|")
    for name, rows in results.items():
        print(f"| {name:<15} | " + " | ".join(f"{fmt(rows.get(c, [])):^19}" for c in cols) + " |")


def _run_true() -> float:
    t = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=20, help="samples per cell")
    anyio.run(main, ap.parse_args().n)
