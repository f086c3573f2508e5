"""Attacks from inside the sandbox on what the host exposes, judged from the host.

Each test plays the hostile side for real (a symlink-swap loop, many processes holding memory, a full
/tmp, a FIFO, a setsid daemon, a killed owner process) and then looks at what the *host* sees: its files,
its process table, its memory counters, its Docker engine. Nothing here trusts what the sandbox prints
about itself. Every test also checks a control (the attack really ran), so a broken probe cannot pass.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import docker
import docker.errors
import pytest
from agentkit.tools.builtin import read_file as read_file_tool
from agentkit.tools.context import RunContext
from agentkit.tools.sandbox import (
    BwrapSandbox,
    DockerSandbox,
    FileTooLarge,
    LocalSandbox,
    Sandbox,
    SandboxError,
    open_sandbox,
)

pytestmark = pytest.mark.anyio

ISOLATED = [
    pytest.param("docker", marks=pytest.mark.docker),
    pytest.param("bwrap", marks=pytest.mark.bwrap),
]
FILE_API = [*ISOLATED, pytest.param("local")]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=FILE_API)
async def any_sb(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    async with await open_sandbox(request.param, default_timeout=120) as box:
        yield box


@pytest.fixture(params=ISOLATED)
async def iso(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    async with await open_sandbox(request.param, default_timeout=120, memory_mb=512) as box:
        yield box


@pytest.fixture(params=[*ISOLATED, pytest.param("docker-remote", marks=pytest.mark.docker)])
async def tree_sb(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Sandbox]:
    """`iso`, plus Docker as if its engine were remote: the host can see none of the container's pids,
    so every kill must be done from inside the container."""
    backend = request.param
    if backend == "docker-remote":
        from agentkit.tools.sandbox import _docker_exec

        monkeypatch.setattr(_docker_exec, "_host_kill", lambda *_: False)
        monkeypatch.setattr(_docker_exec.Keeper, "find", classmethod(lambda cls, *_: None))
        backend = "docker"
    async with await open_sandbox(backend, default_timeout=120, memory_mb=512) as box:
        yield box


# ---------------------------------------------------------------- host-side views of a sandbox


def _docker_client() -> Any:
    return docker.from_env()


def _root_exec(sb: DockerSandbox, script: str) -> str:
    """Run as root in the container (no capabilities): plants what the sandbox user must not reach."""
    api = _docker_client().api
    exec_id = api.exec_create(sb.container_id, ["/bin/sh", "-c", script], user="0")["Id"]
    out = api.exec_start(exec_id)
    assert api.exec_inspect(exec_id)["ExitCode"] == 0, out
    return out.decode()


def _host_pids(sb: Sandbox) -> list[int]:
    """The host's pids of every process running for this sandbox (its container, or its host uid)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            if isinstance(sb, DockerSandbox):
                with open(f"/proc/{name}/cgroup") as f:
                    if sb.container_id in f.read():
                        pids.append(int(name))
            elif isinstance(sb, BwrapSandbox) and os.stat(f"/proc/{name}").st_uid == sb.host_uid:
                pids.append(int(name))
        except OSError:
            continue
    return pids


def _anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _host_cmdlines_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(name))
            except OSError:
                continue
    return found


def _shmem_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    raise AssertionError("no Shmem in /proc/meminfo")


async def _sample_while(task: Callable[[], Any], probe: Callable[[], int], every: float = 0.02) -> int:
    """Run `task` and return the largest value `probe` gave (on the host) while it ran."""
    peak = 0
    done = anyio.Event()

    async def run() -> None:
        try:
            await task()
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        while not done.is_set():
            peak = max(peak, await anyio.to_thread.run_sync(probe))
            await anyio.sleep(every)
    return peak


# ---------------------------------------------------------------- 1. the symlink-swap race

SWAP = r"""
import ctypes, os, platform, sys, time
nr = {"x86_64": 316, "aarch64": 276}[platform.machine()]
libc = ctypes.CDLL(None, use_errno=True)
decoy = "d/" + sys.argv[1]
os.makedirs(os.path.dirname(decoy), exist_ok=True)
with open(decoy, "w") as f:
    f.write("decoy")
os.symlink("/", "l")
n, end = 0, time.time() + 180
while time.time() < end and not os.path.exists("stop"):
    libc.syscall(nr, -100, b"d", -100, b"l", 2)  # renameat2(AT_FDCWD, d, AT_FDCWD, l, RENAME_EXCHANGE)
    n += 1
print(n)
"""


async def test_file_api_cannot_be_raced_out_of_the_workspace(any_sb: Sandbox, tmp_path: Path) -> None:
    """`d` flips between a real folder and a link to / as fast as the sandbox can rename; the host
    calls the file API thousands of times through it. A read may see the decoy or be refused, a write
    may land in the decoy tree or be refused; nothing may ever reach the real target outside."""
    assert platform.machine() in ("x86_64", "aarch64")
    docker_box = isinstance(any_sb, DockerSandbox)
    if docker_box:
        # root-only inside the container: the sandbox user cannot read or write there, root could
        secret_dir = "/tmp/rootonly"
        _root_exec(any_sb, f"mkdir -m 700 {secret_dir} && echo CANARY > {secret_dir}/canary && chmod 600 "
                   f"{secret_dir}/canary")  # fmt: skip
        reads, writes, copies = 1000, 500, 25  # each ~50 ms: an exec in the container
    else:
        secret = tmp_path / "secret"
        secret.mkdir(mode=0o700)
        (secret / "canary").write_text("CANARY\n")
        (secret / "canary").chmod(0o600)
        secret_dir = str(secret)
        reads, writes, copies = 3000, 1000, 150
    rel = secret_dir.lstrip("/")
    outcome = {"decoy": 0, "refused": 0, "leak": 0, "written": 0}

    async def attack() -> None:
        r = await any_sb.exec(["python3", "-c", SWAP, f"{rel}/canary"], timeout=300)
        assert r.exit_code == 0, r.stderr
        assert int(r.stdout) > 1000  # control: the swap really ran, fast

    async def host_side() -> None:
        with anyio.fail_after(60):
            while True:  # wait for the decoy: the swap loop is running
                try:
                    await any_sb.read_file(f"d/{rel}/canary")
                    break
                except SandboxError:
                    await anyio.sleep(0.05)
        for _ in range(reads):
            try:
                data = await any_sb.read_file(f"d/{rel}/canary")
            except SandboxError:
                outcome["refused"] += 1
                continue
            outcome["leak" if b"CANARY" in data else "decoy"] += 1
        for i in range(writes):
            try:
                await any_sb.write_file(f"d/{rel}/pwned-{i}", "x")
                outcome["written"] += 1
            except SandboxError:
                outcome["refused"] += 1
        src = tmp_path / "upload.txt"
        src.write_text("uploaded")
        for i in range(copies):
            out = tmp_path / f"down-{i}"
            with contextlib.suppress(SandboxError):
                await any_sb.download("d", out)
            for f in out.rglob("*") if out.exists() else []:
                if f.is_file() and not f.is_symlink():
                    assert b"CANARY" not in f.read_bytes(), f"download copied {f} from outside"
            with contextlib.suppress(SandboxError):
                await any_sb.upload(src, f"d/{rel}/up-{i}")
        await any_sb.write_file("stop", "")

    async with anyio.create_task_group() as tg:
        tg.start_soon(attack)
        tg.start_soon(host_side)
    assert outcome["leak"] == 0, outcome
    assert outcome["decoy"] > 0 and outcome["refused"] > 0, outcome  # control: both states were hit
    if docker_box:
        left = _root_exec(any_sb, f"ls -A {secret_dir}")
        assert left.split() == ["canary"], left
    else:
        assert sorted(os.listdir(secret_dir)) == ["canary"]


async def test_file_api_follows_links_that_stay_inside(any_sb: Sandbox) -> None:
    await any_sb.exec("mkdir -p a/b && echo deep > a/b/f && ln -s a/b in && ln -s ../a up-and-back")
    await any_sb.exec(f"ln -s {any_sb.workspace}/a/b/f absolute-inside && ln -s in/../b rel-chain")
    assert await any_sb.read_file("in/f") == b"deep\n"
    assert await any_sb.read_file("absolute-inside") == b"deep\n"
    await any_sb.write_file("in/new.txt", "through a link")
    assert (await any_sb.exec("cat a/b/new.txt")).stdout == "through a link"
    await any_sb.exec("ln -s loop1 loop2 && ln -s loop2 loop1")
    with pytest.raises(SandboxError):
        await any_sb.read_file("loop1")


# ---------------------------------------------------------------- 2-3. limits for the whole sandbox

HOLD = "import time; b = bytearray({mb} << 20); time.sleep({s})"


async def test_memory_limit_holds_for_all_processes_together(iso: Sandbox) -> None:
    """Six processes of 150 MiB each under a 512 MiB sandbox: the host never sees more than 512 MiB of
    anonymous memory in the sandbox's processes at once."""
    limit_kib = 512 << 10
    script = "; ".join(
        ["for i in 1 2 3 4 5 6; do python3 -c '" + HOLD.format(mb=150, s=4) + "' & done", "wait"]
    )

    def total() -> int:
        return sum(_anon_kib(p) for p in _host_pids(iso))

    peak = await _sample_while(lambda: iso.exec(script, timeout=120), total)
    assert peak > 200 << 10  # control: several of them really held their memory at once
    assert peak <= limit_kib * 1.02, f"{peak >> 10} MiB held under a 512 MiB limit"
    one = await iso.exec(["python3", "-c", HOLD.format(mb=150, s=0) + "; print('fits')"])
    assert one.stdout == "fits\n", one.stderr  # a single process within the limit still works


async def test_tmp_is_a_size_limited_tmpfs(iso: Sandbox) -> None:
    """600 MB written to /tmp: refused at the /tmp size, and the host's shared memory barely moves."""
    before = _shmem_kib()
    result: list[Any] = []

    async def fill() -> None:
        result.append(await iso.exec("head -c 600M /dev/zero > /tmp/fill; echo rc=$?; sleep 2", timeout=120))

    peak = await _sample_while(fill, _shmem_kib)
    r = result[0]
    assert "rc=1" in r.stdout and "No space left" in r.stderr, (r.stdout, r.stderr)
    assert peak - before < 400 << 10, f"/tmp took {(peak - before) >> 10} MiB of host memory"


@pytest.mark.bwrap
async def test_bwrap_workspace_has_a_quota() -> None:
    async with BwrapSandbox(workspace_size_mb=32) as sb:
        r = await sb.exec("head -c 100M /dev/zero > big; echo rc=$?; stat -c %s big")
        assert "rc=1" in r.stdout and "No space left" in r.stderr
        assert int(r.stdout.split()[-1]) <= 32 << 20
        host = anyio.Path(sb.host_workspace) / "big"
        assert (await host.stat()).st_size <= 32 << 20  # the host's view of the same file


@pytest.mark.bwrap
async def test_bwrap_cgroup_require_refuses_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentkit.tools.sandbox import _cgroup

    def unavailable() -> Any:
        raise _cgroup.CgroupUnavailable("no cgroup filesystem is mounted")

    monkeypatch.setattr(_cgroup, "_layout", unavailable)
    with pytest.raises(SandboxError, match="needs a cgroup"):
        await BwrapSandbox(cgroup="require").start()
    async with BwrapSandbox(cgroup="auto", memory_mb=256) as weak:  # the documented weaker mode
        assert weak.cgroup is None
        r = await weak.exec(["python3", "-c", "bytearray(400 << 20)"])
        assert r.exit_code != 0 and "memory" in r.stderr.lower()


# ---------------------------------------------------------------- 4-5. reads: capped, regular files only


async def test_read_file_is_capped_and_incremental(tmp_path: Path) -> None:
    for backend in ("local", "bwrap", "docker"):
        async with await open_sandbox(backend, read_limit=4 << 20) as sb:  # type: ignore[arg-type]
            await sb.exec("yes 'a line of text' | head -c 64M > big.log", timeout=120)
            tracemalloc.start()
            try:
                with pytest.raises(FileTooLarge) as caught:
                    await sb.read_file("big.log")
                head = await sb.read_file("big.log", partial=True)
                outcome = await read_file_tool.invoke({"path": "big.log", "limit": 5}, RunContext(sandbox=sb))
                shown = outcome.content
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert caught.value.size == 64 << 20 and caught.value.limit == 4 << 20
            assert len(head) == 4 << 20 and head.startswith(b"a line of text\n")
            assert "1\ta line of text" in shown and "5\ta line of text" in shown, shown
            assert "6\t" not in shown
            # bounded by a small multiple of the cap, not by the file (the whole file alone is 64 MiB)
            assert peak < 8 * (4 << 20), f"{backend}: host memory grew {peak >> 20} MiB reading a 64 MiB file"


async def test_read_file_refuses_fifos_and_devices_at_once(any_sb: Sandbox) -> None:
    await any_sb.exec("mkfifo pipe")
    host_fifo = (
        os.path.join(any_sb.host_workspace, "pipe")
        if isinstance(any_sb, BwrapSandbox)
        else os.path.join(any_sb.workspace, "pipe")
        if isinstance(any_sb, LocalSandbox)
        else None
    )
    unblocked = threading.Event()

    def unblock_a_hung_reader() -> None:
        # if a read did block on the FIFO, a writer after 20 s frees it, so the test fails, not hangs
        if host_fifo is not None and not unblocked.wait(20):
            fd = os.open(host_fifo, os.O_WRONLY | os.O_NONBLOCK) if os.path.exists(host_fifo) else -1
            unblocked.set()
            if fd >= 0:
                os.close(fd)

    watchdog = threading.Thread(target=unblock_a_hung_reader, daemon=True)
    watchdog.start()
    with pytest.raises(SandboxError, match="FIFO"):
        await any_sb.read_file("pipe")
    assert not unblocked.is_set(), "read_file waited on a FIFO"
    unblocked.set()
    with pytest.raises(SandboxError, match="regular file"):
        await any_sb.write_file("pipe", "data")
    if isinstance(any_sb, DockerSandbox):  # the only backend whose file API reaches /dev
        with pytest.raises(SandboxError, match="device"):
            await any_sb.read_file("/dev/zero")


# ---------------------------------------------------------------- 6. a call's whole tree dies


@pytest.mark.parametrize(
    "shape",
    [
        "setsid sh -c 'while :; do sleep 0.05; done; : {m}' & sleep 60",
        "(setsid sh -c 'while :; do sleep 0.05; done; : {m}' &); sleep 60",
        "sh -c 'sh -c \"setsid sleep 300 {m} & \" & wait'; sleep 60",
        # the call kills its own init (same uid) to slip out of the tree before daemonizing
        "read -r _ _ _ i _ </proc/$PPID/stat; kill -9 ${{i#0}} 1; setsid sh -c 'sleep 300; : {m}' & sleep 60",
    ],
    ids=["setsid-child", "double-fork", "nested-setsid", "init-killed"],
)
async def test_timed_out_call_kills_its_whole_tree(tree_sb: Sandbox, shape: str) -> None:
    marker = f"agentkit-tree-{uuid.uuid4().hex}"
    call = tree_sb.exec(shape.format(m=marker), timeout=1.5)
    survivors: list[int] = []

    async def watch() -> None:
        with anyio.fail_after(30):
            while not _host_cmdlines_with(marker):  # noqa: ASYNC110 (polling the host, not our state)
                await anyio.sleep(0.05)  # control: the descendant really started

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        r = await call
    assert r.timed_out and r.exit_code == 124
    await anyio.sleep(0.5)
    survivors = _host_cmdlines_with(marker)
    assert survivors == [], f"processes outlived their timed-out call: {survivors}"


@pytest.mark.parametrize("kill_init", [False, True], ids=["plain", "init-killed"])
async def test_finished_call_leaves_no_daemon(tree_sb: Sandbox, kill_init: bool) -> None:
    marker = f"agentkit-daemon-{uuid.uuid4().hex}"
    daemons = f"setsid -f sh -c 'sleep 300; : {marker}'; (setsid sleep 301 {marker} &)"
    if kill_init:
        daemons = f"read -r _ _ _ i _ </proc/$PPID/stat; kill -9 ${{i#0}} 1 2>/dev/null; {daemons}"
    r = await tree_sb.exec(f"{daemons}; sleep 0.3; echo ok >&2", timeout=30)
    assert "ok" in r.stderr, r.stderr
    await anyio.sleep(0.3)
    assert _host_cmdlines_with(marker) == []
    assert len(_host_pids(tree_sb)) <= 2  # Docker: its init and `sleep <ttl>`; bwrap: nothing
    assert (await tree_sb.exec("echo alive")).stdout == "alive\n"  # and the sandbox still works


# ---------------------------------------------------------------- 7. orphans of killed processes

OPENER = textwrap.dedent(
    """
    import anyio, json, sys
    from agentkit.tools.sandbox import open_sandbox
    async def main():
        box = await open_sandbox(sys.argv[1])
        info = {"id": getattr(box, "container_id", None)}
        if sys.argv[1] == "bwrap":
            info.update(root=box._host.path, cgroup=box.cgroup.paths if box.cgroup else [])
        print(json.dumps(info), flush=True)
        await anyio.sleep(3600)
    anyio.run(main)
    """
)


def _open_and_kill(backend: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", OPENER, backend],
        stdout=subprocess.PIPE,
        text=True,
        env=env or os.environ.copy(),
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return info


def _container_exists(cid: str) -> bool:
    try:
        _docker_client().containers.get(cid)
    except docker.errors.NotFound:
        return False
    return True


@pytest.mark.docker
def test_long_lived_process_reaps_a_killed_neighbours_containers() -> None:
    """An app that keeps running (and opens nothing new) removes the containers of a worker killed
    with kill -9 next to it, long before their TTL."""
    env = {**os.environ, "AGENTKIT_REAP_INTERVAL": "1"}
    app = subprocess.Popen(
        [sys.executable, "-c", OPENER, "docker"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert app.stdout is not None
        app.stdout.readline()  # the app is up, holding a sandbox of its own, and will only sleep
        victim = _open_and_kill("docker")["id"]
        assert _container_exists(victim)  # control: kill -9 left it behind
        deadline = time.monotonic() + 60
        while _container_exists(victim) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not _container_exists(victim), "the killed worker's container is still there"
    finally:
        app.kill()
        app.wait()


@pytest.mark.bwrap
def test_sandbox_gc_removes_bwrap_leftovers_of_a_killed_process() -> None:
    info = _open_and_kill("bwrap", {**os.environ, "AGENTKIT_REAP_INTERVAL": "0"})
    root, groups = info["root"], info["cgroup"]
    assert os.path.isdir(root) and groups and all(os.path.isdir(g) for g in groups)  # control
    out = subprocess.run(
        [sys.executable, "-m", "agentkit.cli", "sandbox", "gc", "--no-docker"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert root in out.stdout, out.stdout
    assert not os.path.exists(root)
    assert not any(os.path.exists(g) for g in groups)
    with open("/proc/self/mountinfo") as f:
        assert root not in f.read()


@pytest.mark.bwrap
def test_long_lived_process_reaps_bwrap_leftovers() -> None:
    env = {**os.environ, "AGENTKIT_REAP_INTERVAL": "1"}
    app = subprocess.Popen(
        [sys.executable, "-c", OPENER, "bwrap"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert app.stdout is not None
        app.stdout.readline()
        info = _open_and_kill("bwrap", {**os.environ, "AGENTKIT_REAP_INTERVAL": "0"})
        assert os.path.isdir(info["root"])  # control
        deadline = time.monotonic() + 60
        while os.path.exists(info["root"]) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not os.path.exists(info["root"])
        assert not any(os.path.exists(g) for g in info["cgroup"])
    finally:
        app.kill()
        app.wait()


# ---------------------------------------------------------------- 8. the default image


@pytest.mark.docker
def test_default_image_has_no_setuid_or_setgid_programs() -> None:
    image = os.environ.get("AGENTKIT_SANDBOX_IMAGE", "agentkit-sandbox:latest")
    out = _docker_client().containers.run(
        image, ["find", "/", "-xdev", "-type", "f", "-perm", "/6000"], user="0", remove=True,
        network_mode="none", stderr=True,
    )  # fmt: skip
    assert out.decode().split() == []
    control = _docker_client().containers.run(
        image, ["find", "/usr/bin", "-name", "su", "-o", "-name", "passwd"], user="0", remove=True,
        network_mode="none",
    )  # fmt: skip
    assert control.decode().split()  # the programs are there, only without the bits
