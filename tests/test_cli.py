"""The command line as a user meets it: real processes, real exit codes, a real terminal for Ctrl-C.

Every case runs `python -m agentkit.cli ...` in a subprocess (so exit codes, stdout/stderr and what is
printed at exit are the real ones) against real parts: the shipped agentkit-tiny, bubblewrap and Docker
sandboxes, a user's folder, a closed port for an unreachable server, a Docker address nobody listens on.
Ctrl-C is typed into a pseudo-terminal, as a user's terminal delivers it (SIGINT to the foreground
process group), and what the run left behind is looked for by its owner pid afterwards.

The table (`CASES`) holds the cases that need no model run; the runs of agentkit-tiny follow it.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentkit.tools.sandbox._hostroot import PREFIX

from agentkit.backends.scripted import scripted_turn

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "runtime" / "weights" / "agentkit-tiny"
NO_DOCKER = "unix:///nonexistent/agentkit-test/docker.sock"
BOTH = [pytest.param("bwrap", marks=pytest.mark.bwrap), pytest.param("docker", marks=pytest.mark.docker)]
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def _env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("AGENTKIT_MODEL", "DEEPSEEK_API_KEY", "OPENAI_API_KEY")
    }
    env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1", **extra})
    return env


def agentkit(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentkit.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
        cwd=REPO,
    )


def _one_line_error(err: str) -> str:
    """The stderr of an expected failure: exactly one `agentkit: error:` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("agentkit: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Scripted models (JSON lists of turns) for cases that need a model but not a trained one."""
    d = tmp_path_factory.mktemp("scripts")
    turns = {
        "answer": [scripted_turn("No tool needed.", "The answer is 42.")],
        "write": [
            scripted_turn(
                "Write it.", calls=[("write_file", {"path": "out.txt", "content": "from the run\n"})]
            ),
            scripted_turn("Done.", "The answer is written."),
        ],
        "loop": [
            scripted_turn("Echo.", calls=[("shell", {"command": "echo hi"})]),
            scripted_turn("Again.", calls=[("shell", {"command": "echo hi"})]),
            scripted_turn("Done.", "The answer is done."),
        ],
        "sleep": [
            scripted_turn("Wait.", calls=[("shell", {"command": "sleep 4321"})]),
            scripted_turn("Done.", "The answer is done."),
        ],
    }
    out = {}
    for name, t in turns.items():
        (d / f"{name}.json").write_text(json.dumps(t), encoding="utf-8")
        out[name] = f"scripted:{d / f'{name}.json'}"
    return out


@pytest.fixture
def project() -> Iterator[Path]:
    """A user's folder where a sandbox user can reach it, owned by an ordinary uid (not root)."""
    top = Path(tempfile.mkdtemp(prefix="agentkit-cli-test-"))
    top.chmod(0o755)
    d = top / "project"
    (d / "notes").mkdir(parents=True)
    (d / "notes" / "quiet_server.cfg").write_text("owner: Amara\nport: 8731\n")
    for p in (d, d / "notes", d / "notes" / "quiet_server.cfg"):
        os.chown(p, 4242, 4242)
    yield d
    shutil.rmtree(top, ignore_errors=True)


# ---- the table: (id, argv, env, exit code, what stdout+stderr must hold) ---------------------------

# fmt: off
CASES = [
    ("version", ["--version"], {}, 0, [r"^agentkit \d+\.\d+\.\d+$"]),
    ("help", ["--help"], {}, 0,
     ["demo", "run", "verify", "sandbox", "serve", "embedded:tiny", "deepseek:<model>",
      "completions:<base_url>#<model>", "AGENTKIT_MODEL", "130 interrupted"]),
    ("run help lists shapes", ["run", "--help"], {}, 0,
     ["--workspace DIR", "--writable", "--no-scope-check", "file_grep", "browser"]),
    ("no command", [], {}, 2, ["usage: agentkit"]),
    ("out of scope", ["run", "summarize README.md"], {}, 3,
     [r"not trained for this task \(it matches none", "--model deepseek:", "shapes agentkit-tiny was"]),
    ("out of scope, in other words", ["run", "what's the weather in Paris?"], {}, 3,
     [r"not trained for this task \(it matches none"]),
    ("tools not trained with", ["run", "What is 417 * 36?", "--tools", "shell"], {}, 3,
     ["learned that shape with the tools calculator"]),
    ("unknown tool", ["run", "x", "--tools", "calculator,teleport", "--model", "scripted"], {}, 2,
     ["unknown tools: teleport; known: .*calculator.*files.*browser"]),
    ("browser needs --allow", ["run", "x", "--tools", "browser", "--model", "scripted"], {}, 2,
     ["--allow URL"]),
    ("writable without workspace", ["run", "x", "--writable", "--model", "scripted"], {}, 2,
     ["--writable needs --workspace"]),
    ("missing workspace", ["run", "x", "--workspace", "/nonexistent/agentkit", "--model", "scripted"], {}, 2,
     ["--workspace /nonexistent/agentkit: no such folder"]),
    ("deepseek without key", ["run", "x", "--model", "deepseek:deepseek-v4-flash"], {}, 2,
     ["DEEPSEEK_API_KEY is not set"]),
    ("server unreachable", ["run", "x", "--model", "completions:http://127.0.0.1:9#v4"], {}, 2,
     ["cannot reach http://127.0.0.1:9 .*is the server running"]),
    ("bad model string", ["run", "x", "--model", "nonsense"], {}, 2, ["not a model string"]),
    ("preset without weights", ["run", "x", "--model", "embedded:flash"], {}, 2,
     ["no weights ship for the 'flash' preset"]),
    ("missing checkpoint folder", ["demo", "--model", "embedded:/nonexistent/ckpt"], {}, 2,
     ["no checkpoint folder at /nonexistent/ckpt"]),
    ("AGENTKIT_MODEL is the default", ["run", "x"], {"AGENTKIT_MODEL": "deepseek:deepseek-v4-flash"}, 2,
     ["DEEPSEEK_API_KEY is not set"]),
    ("docker asked for, none there", ["run", "x", "--model", "scripted", "--sandbox", "docker"],
     {"DOCKER_HOST": NO_DOCKER}, 2, ["SandboxUnavailable: no Docker engine"]),
    ("verify the shipped model", ["verify", str(TINY)], {}, 0,
     [r"manifest: 6 file\(s\) match SHA256SUMS", "^ok: "]),
    ("verify no folder", ["verify", "/nonexistent/ckpt"], {}, 2, ["no such folder"]),
]
# fmt: on


@pytest.mark.parametrize(
    ("argv", "env", "code", "patterns"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_cli_table(argv: list[str], env: dict[str, str], code: int, patterns: list[str]) -> None:
    r = agentkit(*argv, **env)
    out = r.stdout + r.stderr
    assert r.returncode == code, out[-3000:]
    for p in patterns:
        assert re.search(p, out, re.M), (p, out[-3000:])
    if code == 2 and argv:
        _one_line_error(r.stderr)
    if code in (2, 3):
        assert "model: " not in r.stdout  # failed before loading any model


def test_debug_shows_the_traceback_behind_the_one_line() -> None:
    r = agentkit("--debug", "run", "x", "--model", "scripted", "--sandbox", "docker", DOCKER_HOST=NO_DOCKER)
    assert r.returncode == 2
    assert "Traceback (most recent call last)" in r.stderr and "agentkit: error:" in r.stderr


def test_verify_finds_a_flipped_byte(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(TINY, tmp_path / "tiny", ignore=shutil.ignore_patterns("run-*", "*.png")))
    shard = copy / "model-00002-of-00002.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10
    shard.write_bytes(bytes(data))
    r = agentkit("verify", str(copy))
    assert r.returncode == 1, r.stdout
    assert "model-00002-of-00002.safetensors: SHA-256 differs" in r.stdout
    run = agentkit("run", "What is 417 * 36?", "--model", f"embedded:{copy}", "--sandbox", "local")
    assert run.returncode == 2 and "SHA-256 differs from SHA256SUMS" in _one_line_error(run.stderr)


# ---- agentkit-tiny runs ------------------------------------------------------------------------------


@pytest.mark.bwrap
def test_tiny_answers_the_issues_task_in_its_shape_and_says_answered() -> None:
    r = agentkit("run", "Please calculate the product of 417 and 36.", "--sandbox", "bwrap")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scope: a calc task" in r.stdout and "tools: calculator" in r.stdout
    assert 'call calculator(expression="417 * 36")' in r.stdout
    assert re.search(r"^answered  \d+ steps", r.stdout, re.M)  # no expected answer: no verdict
    assert "The answer is 15012." in r.stdout
    # a near miss of a template, for a checkpoint trained on people's wording, runs (no "did you mean")
    near = agentkit("run", "what is 17*23?", "--sandbox", "bwrap")
    assert near.returncode == 0, near.stdout + near.stderr
    assert "scope: a calc task (in other words)" in near.stdout and "391" in near.stdout
    # "ok" against an expected answer is the demo's verdict (test_cli_demo); here, a wrong one
    wrong = agentkit("run", "What is 417 * 36?", "--sandbox", "bwrap", "--expect", "15013")
    assert wrong.returncode == 1 and re.search(r"^wrong \(expected 15013\)", wrong.stdout, re.M), wrong.stdout


@pytest.mark.bwrap
def test_a_failed_run_exits_1_and_says_failed(scripts: dict[str, str]) -> None:
    # the step limit trips before the model's answer: the run did not complete, whatever came after
    r = agentkit(
        "run", "x", "--model", scripts["loop"], "--sandbox", "bwrap", "--max-steps", "1", "--tools", "shell"
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"^FAILED \(status limit:max_steps\)", r.stdout, re.M), r.stdout


@pytest.mark.parametrize("backend", BOTH)
def test_tiny_reads_the_users_folder_read_only(backend: str, project: Path) -> None:
    r = agentkit(
        "run",
        "What is the port in notes/quiet_server.cfg?",
        "--workspace",
        str(project),
        "--sandbox",
        backend,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"workspace: {project} (read-only) at /workspace" in r.stdout
    assert "The answer is 8731." in r.stdout


@pytest.mark.parametrize("backend", BOTH)
def test_writes_reach_the_folder_only_with_writable(
    backend: str, project: Path, scripts: dict[str, str]
) -> None:
    args = (
        "run",
        "x",
        "--model",
        scripts["write"],
        "--tools",
        "files",
        "--workspace",
        str(project),
        "--sandbox",
        backend,
    )
    ro = agentkit(*args)
    assert ro.returncode == 0, ro.stdout + ro.stderr
    assert "read-only" in ro.stdout and not (project / "out.txt").exists()
    rw = agentkit(*args, "--writable")
    assert rw.returncode == 0, rw.stdout + rw.stderr
    assert (project / "out.txt").read_text() == "from the run\n"
    assert (project / "out.txt").stat().st_uid == 4242  # written as the folder's owner, not root


@pytest.mark.bwrap
def test_readme_command_1_without_docker_solves_8_of_8_and_notes_the_fallback_once() -> None:
    # `agentkit demo` as on a fresh machine without Docker: 8 sandboxes, each "auto" -> bubblewrap
    r = agentkit("demo", DOCKER_HOST=NO_DOCKER, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert len(re.findall(r"^ok  \d+ steps", r.stdout, re.M)) == 8, r.stdout[-3000:]
    notes = [ln for ln in r.stderr.splitlines() if "using bubblewrap, not Docker" in ln]
    assert len(notes) == 1, r.stderr
    assert notes[0].startswith("note: ") and "no Docker engine" in notes[0] and "--sandbox bwrap" in notes[0]
    assert "use bwrap" not in notes[0]  # no advice to do what it is already doing
    assert "warning" not in r.stderr.lower() or "cgroup" in r.stderr  # nothing else is shouted


# ---- Ctrl-C in a real terminal ---------------------------------------------------------------------


def _left_behind(pid: int) -> list[str]:
    """Sandboxes owned by process `pid`: bubblewrap folders (owner file) and Docker containers (label)."""
    found = []
    tmp = Path(tempfile.gettempdir())
    for d in tmp.glob(PREFIX + "*"):
        try:
            owner = json.loads((d / "owner").read_text())["owner"]
        except (OSError, ValueError, KeyError):
            continue
        if owner.split(":")[-2] == str(pid):
            found.append(str(d))
    if shutil.which("docker"):
        ps = subprocess.run(
            ["docker", "ps", "-a", "--format", "{{.ID}} {{.Label \"io.agentkit.sandbox.owner\"}}"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        found += [ln for ln in ps.stdout.splitlines() if ln.split(" ")[-1].split(":")[-2:-1] == [str(pid)]]
    return found


def _ctrl_c(
    argv: list[str], trigger: str, settle: float, presses: int = 1
) -> tuple[int, str, list[str], list[str], float]:
    """Run in a pty; type Ctrl-C `settle` s after `trigger` shows (`presses` times, 50 ms apart: an
    impatient user). (exit code, output, sandboxes seen just before the Ctrl-C, sandboxes left after
    exit, seconds from the first Ctrl-C to exit)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal, it is the foreground group
        os.chdir(REPO)
        os.execve(sys.executable, [sys.executable, "-m", "agentkit.cli", *argv], _env())
    buf, seen, t_sent = b"", [], 0.0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
            if not t_sent and trigger in ANSI.sub("", buf.decode(errors="replace")):
                time.sleep(settle)
                seen = _left_behind(pid)
                t_sent = time.monotonic()
                for i in range(presses):
                    os.write(fd, b"\x03")
                    time.sleep(0.05 if i + 1 < presses else 0)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    took = time.monotonic() - t_sent if t_sent else -1.0
    return (
        os.waitstatus_to_exitcode(status),
        ANSI.sub("", buf.decode(errors="replace")),
        seen,
        _left_behind(pid),
        took,
    )


def _no_sleeper() -> bool:
    return not any(
        "4321" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        for p in os.listdir("/proc")
        if p.isdigit()
        and Path(f"/proc/{p}/cmdline").exists()
        and "sleep" in Path(f"/proc/{p}/comm").read_text()
    )


@pytest.mark.parametrize("presses", [1, 2])
@pytest.mark.parametrize("backend", BOTH)
def test_ctrl_c_during_a_tool_call_stops_cleanly_and_leaves_no_sandbox(
    backend: str, presses: int, scripts: dict[str, str]
) -> None:
    code, out, seen, left, took = _ctrl_c(
        ["run", "x", "--model", scripts["sleep"], "--tools", "shell", "--sandbox", backend],
        "call shell(",
        1.0,
        presses,
    )
    assert took >= 0, out[-2000:]
    assert seen, "the run's sandbox should exist while the tool runs"
    assert code == 130, out[-2000:]
    assert left == [] and _no_sleeper()
    assert out.count("interrupted (the run and its sandbox were stopped)") == 1
    assert "Traceback" not in out and "Error" not in out
    assert took < 20


@pytest.mark.bwrap
def test_ctrl_c_while_tiny_generates_stops_cleanly() -> None:
    code, out, seen, left, took = _ctrl_c(
        ["run", "What is 417 * 36?", "--sandbox", "bwrap"], "thinking:", 0.05
    )
    assert code == 130 and seen and left == [], out[-2000:]
    assert out.count("interrupted") == 1 and "Traceback" not in out and took < 20


def test_help_names_every_runtime_preset() -> None:
    # the CLI keeps its own list so that --help needs no torch; it must stay the runtime's list
    from agentkit.runtime.config import _PRESETS

    from agentkit import cli

    assert sorted(cli.PRESETS) == sorted(_PRESETS)
    assert f"runtime presets: {', '.join(cli.PRESETS)}" in agentkit("--help").stdout


@pytest.mark.browser
@pytest.mark.bwrap
def test_tools_browser_drives_chromium_within_allow(tmp_path: Path) -> None:
    # `--tools browser --allow URL`: the public browser tools, limited to the allowed prefix
    import http.server
    import threading

    (tmp_path / "index.html").write_text("<html><title>Shop</title><body>valves cost 17</body></html>")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **kw)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    turns = [
        scripted_turn("Open it.", calls=[("browser_open", {"url": f"{url}/index.html"})]),
        scripted_turn("Elsewhere.", calls=[("browser_open", {"url": "http://example.com/"})]),
        scripted_turn("Done.", "The answer is 17."),
    ]
    script = tmp_path / "turns.json"
    script.write_text(json.dumps(turns), encoding="utf-8")
    try:
        r = agentkit("run", "x", "--model", f"scripted:{script}", "--tools", "browser", "--allow", url,
                     "--sandbox", "bwrap")  # fmt: skip
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valves cost 17" in r.stdout
    assert "URL not allowed: http://example.com/" in r.stdout


def test_expect_judges_the_answer_ok_or_wrong(scripts: dict[str, str]) -> None:
    # the answer "The answer is 42." judged against --expect: its value or the whole text counts
    base = ("run", "x", "--model", scripts["answer"], "--sandbox", "local")
    for expect, code, word in (("42", 0, "ok"), ("The answer is 42.", 0, "ok"), ("41", 1, "wrong")):
        r = agentkit(*base, "--expect", expect)
        assert r.returncode == code, r.stdout + r.stderr
        assert re.search(rf"^{word}\b", r.stdout, re.M), r.stdout
    plain = agentkit(*base)
    assert plain.returncode == 0 and re.search(r"^answered  1 steps", plain.stdout, re.M), plain.stdout
