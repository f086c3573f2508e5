"""examples/mcp_agent.py with examples/mcp_files_server.py: a real MCP server process, stdio and HTTP.

Where a word is hidden is random per test, so a right answer can only come from what the server's tools
returned; the server's folder confinement is checked through the MCP client as any client would see it.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import anyio
from _examples import EXAMPLES, ROOT, load

from agentkit.mcp import MCPServer


def notes(tmp: Path, seed: int) -> tuple[str, dict[str, int]]:
    """A folder of notes with a random word hidden on random lines of random files: (word, {file: line})."""
    rng = random.Random(seed)
    word = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(8))
    hidden: dict[str, int] = {}
    for i in range(6):
        rel = f"{rng.choice(['a', 'b'])}/note{i}.md"
        lines = [f"line {n} of note {i}" for n in range(1, 8)]
        if i in (1, 4):
            n = rng.randrange(len(lines))
            lines[n] = f"here the {word} is mentioned"
            hidden[rel] = n + 1
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text("\n".join(lines) + "\n")
    return word, hidden


def check_answer(result: object, word: str, hidden: dict[str, int]) -> None:
    assert result.status == "completed"  # type: ignore[attr-defined]
    text = result.text or ""  # type: ignore[attr-defined]
    for rel, line in hidden.items():
        assert f"- {rel} (line {line}): here the {word} is mentioned" in text
    assert f"appears in {len(hidden)} place(s) (I read {len(hidden)} file(s))" in text
    assert result.usage.tool_calls == 1 + len(hidden)  # type: ignore[attr-defined]


def test_offline_answer_comes_from_the_server(tmp_path: Path) -> None:
    ex = load("mcp_agent")
    word, hidden = notes(tmp_path, seed=11)
    check_answer(ex.ask(f"Where is '{word}' mentioned?", tmp_path), word, hidden)


def test_runs_as_a_program() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "mcp_agent.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "status: completed" in proc.stdout
    assert "meetings/2026-03-02.md (line 2): We agreed the budget for Q2 is 42k EUR." in proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_over_http(tmp_path: Path) -> None:
    ex = load("mcp_agent")
    word, hidden = notes(tmp_path, seed=23)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "mcp_files_server.py"), str(tmp_path), "--http", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "server did not start"
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}/mcp"
        check_answer(ex.ask(f"Who mentions '{word}'?", tmp_path, url=url), word, hidden)
    finally:
        server.terminate()
        server.wait(10)


def test_the_server_stays_inside_its_folder(tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "ok.txt").write_text("fine\n")
    (tmp_path / "secret.txt").write_text("do not show\n")
    os.symlink(tmp_path / "secret.txt", served / "link.txt")

    async def main() -> None:
        server = MCPServer.stdio(sys.executable, [str(EXAMPLES / "mcp_files_server.py"), str(served)])
        async with server:
            tools = {t.name: t for t in await server.list_tools()}
            assert set(tools) == {"list_files", "read_file", "search"}  # read-only without --writable
            listed = await tools["list_files"].invoke({})
            assert listed.content == "ok.txt"
            for path in ("../secret.txt", "link.txt", str(tmp_path / "secret.txt")):
                out = await tools["read_file"].invoke({"path": path})
                assert out.is_error and "outside the served folder" in out.content, path
            assert (await tools["read_file"].invoke({"path": "ok.txt"})).content == "fine\n"

    anyio.run(main)
