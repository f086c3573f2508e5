"""The browser's URL allow-list and the filtering proxy that enforces it below the page.

Why a proxy and not only Playwright routing: a route handler sees the first URL of a redirect chain
and nothing after it (the browser follows 3xx hops internally), so `allowed -> 302 -> anywhere` would
escape. Every connection Chromium makes goes through this proxy instead (loopback included), so each
redirect hop, subresource, popup and WebSocket is checked. HTTPS is tunnelled (CONNECT host:port), so
rules are origins and host names: a path can't be checked inside TLS and is refused as a rule.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["AllowListProxy", "UrlAllowList"]

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_WEB_SCHEME = {"http": "http", "https": "https", "ws": "http", "wss": "https"}
_HOST_RE = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_HEAD_LIMIT = 64 * 1024
_IDLE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class _Rule:
    scheme: str | None  # None: any of http/https (a bare host name rule)
    host: str  # "example.com", or "*.example.com" for subdomains
    port: int | None  # None: any port (host rules)

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if self.scheme is not None and self.scheme != scheme:
            return False
        if self.port is not None and self.port != port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


class UrlAllowList:
    """Which URLs the browser may load. Empty means nothing: the safe default.

    Entries are origins (`https://docs.python.org`, `http://127.0.0.1:8000`) or host names
    (`example.com`, `*.example.com` for subdomains; any port, http or https).
    """

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns)
        self._rules = tuple(self._parse(p) for p in self.patterns)

    @staticmethod
    def _parse(pattern: str) -> _Rule:
        text = pattern.strip().lower()
        if "://" not in text:
            if not _HOST_RE.match(text) and not re.fullmatch(r"[0-9.]+", text):
                raise ValueError(f"allow-list entry {pattern!r} is not a host name, *.domain or origin")
            return _Rule(None, text, None)
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https"):
            raise ValueError(
                f"allow-list entry {pattern!r}: only http:// and https:// origins can be allowed"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(
                f"allow-list entry {pattern!r} has a path or credentials; entries are origins "
                "(scheme://host[:port]) or host names, because paths cannot be enforced inside HTTPS"
            )
        if not parts.hostname:
            raise ValueError(f"allow-list entry {pattern!r} has no host")
        return _Rule(parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])

    def allows(self, url: str) -> bool:
        """May the browser request `url`? Only http(s)/ws(s) URLs can ever be allowed."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        scheme = _WEB_SCHEME.get(parts.scheme)
        if scheme is None or not parts.hostname:
            return False
        port = port or _DEFAULT_PORTS[parts.scheme]
        return any(r.matches(scheme, parts.hostname.lower(), port) for r in self._rules)

    def allows_tunnel(self, host: str, port: int) -> bool:
        """May the browser open a CONNECT tunnel (HTTPS or WebSocket) to host:port?"""
        host = host.lower()
        return any(r.matches(r.scheme or "https", host, port) for r in self._rules)

    def __repr__(self) -> str:
        return f"UrlAllowList({list(self.patterns)!r})"


class AllowListProxy:
    """A minimal HTTP/1.1 forward proxy on 127.0.0.1 that refuses whatever the allow-list does not allow.

    One request per client connection for plain HTTP (the request is forwarded with
    `Connection: close` and the client is never read again), so a kept-alive proxy connection cannot
    smuggle a second request to another host. Refusals are 403 responses naming the URL.
    """

    def __init__(self, allow: UrlAllowList, refused: list[str] | None = None) -> None:
        self.allow = allow
        self.refused: list[str] = [] if refused is None else refused
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, limit=_HEAD_LIMIT)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except Exception:  # one broken connection (peer gone, garbage request) must not stop the proxy
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _IDLE_TIMEOUT_S)
        request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        if method.upper() == "CONNECT":
            host, port = _split_host_port(target)
            if not self.allow.allows_tunnel(host, port):
                await self._refuse(writer, f"{host}:{port}")
                return
            up_reader, up_writer = await asyncio.open_connection(host, port)
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await _splice(reader, writer, up_reader, up_writer)
            return
        parts = urlsplit(target)
        if parts.scheme != "http" or not parts.hostname or not self.allow.allows(target):
            await self._refuse(writer, target)
            return
        headers = [h for h in header_lines if h.split(":", 1)[0].strip().lower() not in _HOP_BY_HOP]
        if any(h.lower().startswith("transfer-encoding:") for h in headers):
            await self._respond(
                writer, 411, "chunked request bodies are not supported by the allow-list proxy"
            )
            return
        length = next(
            (int(h.split(":", 1)[1]) for h in headers if h.lower().startswith("content-length:")), 0
        )
        body = await reader.readexactly(length) if length else b""
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
        try:
            out = "\r\n".join([f"{method} {path} {version}", *headers, "Connection: close", "", ""])
            up_writer.write(out.encode("latin-1") + body)
            await up_writer.drain()
            while data := await asyncio.wait_for(up_reader.read(65536), _IDLE_TIMEOUT_S):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()

    async def _refuse(self, writer: asyncio.StreamWriter, what: str) -> None:
        self.refused.append(what)
        await self._respond(writer, 403, f"blocked by the agentkit browser allow-list: {what}")

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, status: int, text: str) -> None:
        body = text.encode("utf-8")
        reason = {403: "Forbidden", 411: "Length Required"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        await writer.drain()


_HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade"}
)


def _split_host_port(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"bad CONNECT target {target!r}")
    return host.strip("[]"), int(port)


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> None:
    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    tasks = [asyncio.ensure_future(pump(a_reader, b_writer)), asyncio.ensure_future(pump(b_reader, a_writer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        b_writer.close()
