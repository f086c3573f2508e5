"""The allow-list proxy on its own, spoken to over raw sockets (no browser): what it lets through."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from agentkit.tools.builtin._allowlist import AllowListProxy, UrlAllowList
from test_browser import Site  # tests/ is on sys.path under pytest's default import mode

pytestmark = pytest.mark.anyio
Proxy = tuple[AllowListProxy, int]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def inside() -> Iterator[Site]:
    s = Site({"/": "inside page", "/form": "ok"})
    yield s
    s.close()


@pytest.fixture(scope="module")
def outside() -> Iterator[Site]:
    s = Site({"/secret": "SECRET"})
    yield s
    s.close()


@pytest.fixture
async def proxy(inside: Site, outside: Site, anyio_backend: str) -> AsyncIterator[tuple[AllowListProxy, int]]:
    inside.hits.clear()
    outside.hits.clear()
    p = AllowListProxy(UrlAllowList([inside.origin]))
    port = await p.start()
    yield p, port
    await p.close()


async def exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return data


async def test_allowed_request_is_forwarded(proxy: tuple[AllowListProxy, int], inside: Site) -> None:
    _, port = proxy
    data = await exchange(port, f"GET {inside.origin}/?q=1 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.0 200") or data.startswith(b"HTTP/1.1 200")
    assert data.endswith(b"inside page")
    assert inside.hits == ["/?q=1"]


async def test_refused_request_never_reaches_the_server(
    proxy: tuple[AllowListProxy, int], outside: Site
) -> None:
    p, port = proxy
    data = await exchange(port, f"GET {outside.origin}/secret HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 403 Forbidden")
    assert b"blocked by the agentkit browser allow-list" in data
    assert outside.hits == [] and p.refused == [f"{outside.origin}/secret"]


async def test_connect_tunnels_are_checked(
    proxy: tuple[AllowListProxy, int], inside: Site, outside: Site
) -> None:
    _, port = proxy
    outside_hostport = outside.origin.removeprefix("http://")
    data = await exchange(port, f"CONNECT {outside_hostport} HTTP/1.1\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 403")
    # An allowed host:port gets a tunnel; the bytes inside it are the client's business (TLS normally).
    inside_hostport = inside.origin.removeprefix("http://")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"CONNECT {inside_hostport} HTTP/1.1\r\n\r\n".encode())
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).endswith(b"inside page")
    writer.close()
    assert outside.hits == []


async def test_a_second_request_on_one_connection_cannot_reach_another_host(
    proxy: tuple[AllowListProxy, int], inside: Site, outside: Site
) -> None:
    _, port = proxy
    pipelined = (
        f"GET {inside.origin}/ HTTP/1.1\r\nHost: a\r\n\r\n"
        f"GET {outside.origin}/secret HTTP/1.1\r\nHost: b\r\n\r\n"
    ).encode()
    data = await exchange(port, pipelined)
    assert b"inside page" in data and b"SECRET" not in data
    assert outside.hits == []


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"GET ftp://x/ HTTP/1.1\r\n\r\n",
        b"CONNECT nowhere HTTP/1.1\r\n\r\n",
        b"GET /relative HTTP/1.1\r\n\r\n",
    ],
)
async def test_malformed_requests_are_refused_and_the_proxy_survives(
    proxy: tuple[AllowListProxy, int], inside: Site, raw: bytes
) -> None:
    _, port = proxy
    data = await exchange(port, raw)
    assert not data.startswith(b"HTTP/1.0 200") and b"inside page" not in data
    ok = await exchange(port, f"GET {inside.origin}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert ok.endswith(b"inside page")
