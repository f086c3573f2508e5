"""Docker-specific behaviour: hardening as configured, crash safety (reaper), dead containers, warm pool."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import anyio
import docker
import docker.errors
import pytest
from agentkit.tools.sandbox import DockerSandbox, SandboxError, SandboxPool, SandboxUnavailable
from agentkit.tools.sandbox.reaper import (
    LABEL,
    LABEL_CREATED,
    LABEL_OWNER,
    LABEL_TTL,
    is_stale,
    make_labels,
    owner_token,
    reap_stale,
)

pytestmark = [pytest.mark.anyio, pytest.mark.docker]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def client() -> Any:
    return docker.from_env()


def _exists(client: Any, cid: str) -> bool:
    try:
        client.containers.get(cid)
    except docker.errors.NotFound:
        return False
    return True


async def test_container_is_hardened(client: Any) -> None:
    async with DockerSandbox(memory="300m", pids=77, cpus=0.5) as sb:
        attrs = client.api.inspect_container(sb.container_id)
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["Memory"] == 300 * 1024 * 1024
        assert host["MemorySwap"] == host["Memory"]
        assert host["PidsLimit"] == 77
        assert host["NanoCpus"] == 500_000_000
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["ReadonlyRootfs"] is True
        assert host["Init"] is True
        assert attrs["Config"]["User"] == "1000:1000"
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL] == "1" and labels[LABEL_OWNER] == owner_token()
        r = await sb.exec("id -u; grep CapEff /proc/self/status; cat /proc/self/status | grep NoNewPrivs")
        uid, cap, nnp = r.stdout.split("\n")[:3]
        assert uid == "1000"
        assert cap.split()[1] == "0000000000000000"
        assert nnp.split()[1] == "1"


def test_reaper_removes_containers_of_a_killed_process(client: Any) -> None:
    script = textwrap.dedent(
        """
        import anyio, sys
        from agentkit.tools.sandbox import DockerSandbox
        async def main():
            boxes = [await DockerSandbox().start() for _ in range(2)]
            print(" ".join(b.container_id for b in boxes), flush=True)
            await anyio.sleep(3600)
        anyio.run(main)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ids = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(ids) == 2
    assert all(_exists(client, c) for c in ids)  # control: kill -9 left them behind

    async def reap_next_to_a_live_owner() -> None:
        async with DockerSandbox() as mine:  # a live owner: must survive the reap
            removed = await anyio.to_thread.run_sync(reap_stale, client)
            assert set(ids) <= set(removed)
            assert mine.container_id not in removed
            assert (await mine.exec("echo alive")).stdout == "alive\n"

    anyio.run(reap_next_to_a_live_owner)
    assert not any(_exists(client, c) for c in ids)


def test_next_startup_reaps_a_killed_owner(client: Any) -> None:
    """The real path: nobody calls the reaper; the next process to open a sandbox does, once."""
    opener = textwrap.dedent(
        """
        import anyio, sys
        from agentkit.tools.sandbox import DockerSandbox
        async def main():
            box = await DockerSandbox().start()
            print(box.container_id, flush=True)
            if sys.argv[1] == "hang":
                await anyio.sleep(3600)
            await box.close()
        anyio.run(main)
        """
    )
    victim = subprocess.Popen([sys.executable, "-c", opener, "hang"], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        orphan = victim.stdout.readline().strip()
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    assert _exists(client, orphan)
    subprocess.run([sys.executable, "-c", opener, "exit"], check=True, capture_output=True, timeout=120)
    assert not _exists(client, orphan)


async def test_cancelled_start_leaves_no_container(client: Any) -> None:
    sb = DockerSandbox(client=client)  # client given: the cancel lands during the create itself
    with anyio.move_on_after(0.01) as scope:
        await sb.start()
    assert scope.cancelled_caught
    leftovers = client.containers.list(all=True, filters={"label": f"{LABEL}.session={sb.session}"})
    assert leftovers == []
    with pytest.raises(SandboxError, match="closed"):
        await sb.exec("true")


def test_staleness_rules() -> None:
    now = time.time()
    fresh = make_labels("s", ttl=600)
    assert not is_stale(fresh, now)
    assert is_stale(fresh, now + 601)  # TTL passed, even with a live owner
    dead = {**fresh, LABEL_OWNER: owner_token().rsplit(":", 2)[0] + ":999999999:1"}
    assert is_stale(dead, now)
    recycled = {**fresh, LABEL_OWNER: owner_token().rsplit(":", 1)[0] + ":12345"}  # same pid, other start
    assert is_stale(recycled, now)
    elsewhere = {**fresh, LABEL_OWNER: "some-other-host:1:1"}
    assert not is_stale(elsewhere, now)  # cannot judge another host's pids: TTL only
    assert is_stale({**fresh, LABEL_CREATED: "garbage"}, now)
    assert is_stale({**fresh, LABEL_TTL: "0"}, now)


async def test_ttl_ends_the_container_by_itself(client: Any) -> None:
    async with DockerSandbox(ttl=2) as sb:
        cid = sb.container_id
        with anyio.fail_after(60):
            while _exists(client, cid):  # noqa: ASYNC110 (polling the engine, not our own state)
                await anyio.sleep(0.25)
        with pytest.raises(SandboxError, match=r"gone|not running"):
            await sb.exec("true")


async def test_removed_container_gives_typed_error_not_hang(client: Any) -> None:
    async with DockerSandbox() as sb:
        volume = client.api.inspect_container(sb.container_id)["Mounts"][0]["Name"]
        client.containers.get(sb.container_id).remove(force=True)  # volumes left behind, on purpose
        with anyio.fail_after(30), pytest.raises(SandboxError, match=r"gone|not running"):
            await sb.exec("echo hi")
        with anyio.fail_after(30), pytest.raises(SandboxError):
            await sb.read_file("x")
        with anyio.fail_after(30), pytest.raises(SandboxError):
            await sb.write_file("x", "y")
    client.volumes.get(volume)  # control: the orphaned workspace volume is there...
    assert volume in await anyio.to_thread.run_sync(reap_stale, client)  # ...and the reaper knows it
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get(volume)


async def test_container_dying_during_exec_gives_typed_error(client: Any) -> None:
    async with DockerSandbox() as sb:

        async def kill_soon() -> None:
            await anyio.sleep(0.5)
            await anyio.to_thread.run_sync(lambda: client.containers.get(sb.container_id).remove(force=True))

        caught: list[SandboxError] = []

        async def run() -> None:
            try:
                await sb.exec("echo before; sleep 60", timeout=120)
            except SandboxError as e:
                caught.append(e)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_soon)
                tg.start_soon(run)
        assert len(caught) == 1
        assert re.search(r"gone|not running|stopped|vanished", str(caught[0]))


async def test_missing_image_is_unavailable_with_hint() -> None:
    with pytest.raises(SandboxUnavailable, match="not present"):
        await DockerSandbox(image="agentkit-no-such-image:never").start()


async def test_unreachable_engine_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxUnavailable, match="no Docker engine"):
        await DockerSandbox().start()


async def test_pool_hands_out_fresh_containers_and_refills(client: Any) -> None:
    async with SandboxPool(size=2) as pool:
        with anyio.fail_after(120):
            await pool.wait_ready()
        first = await pool.acquire()
        await first.write_file("left-behind.txt", "secret")
        first_id = first.container_id
        await first.close()
        assert not _exists(client, first_id)  # never reused: closed means removed
        seconds = [await pool.acquire() for _ in range(3)]  # 2 warm, then waits for a refill or cold start
        try:
            ids = {s.container_id for s in seconds}
            assert len(ids) == 3 and first_id not in ids
            for s in seconds:
                r = await s.exec("ls /workspace")
                assert r.exit_code == 0 and r.stdout == ""
            assert pool.stats["warm"] >= 3
            with anyio.fail_after(120):
                await pool.wait_ready()  # refilled in the background
            pooled = [
                c.id
                for c in client.containers.list(filters={"label": f"{LABEL}.pool={pool.config.key()}"})
                if c.id not in ids
            ]
            assert len(pooled) >= 2
        finally:
            for s in seconds:
                await s.close()
    assert not any(_exists(client, c) for c in pooled)  # closing the pool removes what nobody took


async def test_exec_as_another_user_needs_only_sh() -> None:
    # exec needs only /bin/sh in the image (the per-call init is the engine's); file ops add coreutils-
    # or busybox-style head, cat, mkdir, stat and tar. The default image is just the one we build offline
    img = os.environ.get("AGENTKIT_SANDBOX_IMAGE", "agentkit-sandbox:latest")
    async with DockerSandbox(image=img, user="65534:65534") as sb:
        r = await sb.exec("id -u; echo x > f && cat f")
        assert r.stdout == "65534\nx\n", r.stderr
