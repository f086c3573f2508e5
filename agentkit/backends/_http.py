"""Shared HTTP plumbing for the remote backends: one client per event loop, SSE parsing, retries.

Retries (429, 5xx, connection failures) happen only before the first byte of a stream reached the loop:
a half-streamed turn cannot be taken back, so a failure after that is reported, not silently redone.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
from anyio.lowlevel import RunVar

from agentkit.backends.base import ModelAuthError, ModelError, ModelHTTPError, ModelResponseError
from agentkit.limits import Pricing

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


def api_root(base_url: str) -> str:
    """`http://host:8000` and `http://host:8000/v1` both mean the server's /v1 root."""
    base = base_url.rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")
    if parts.path in ("", "/"):
        base += "/v1"
    return base


class HTTPBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        pricing: Pricing | None = None,
        headers: dict[str, str] | None = None,
        require_key: bool = False,
    ) -> None:
        if not model:
            raise ValueError("a model name is required (spec form: '<kind>:<base_url>#<model>')")
        self.root = api_root(base_url)
        self.model = model
        self.api_key = (
            api_key if api_key is not None else (os.environ.get(api_key_env) if api_key_env else None)
        )
        self.api_key_env = api_key_env
        self.require_key = require_key
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.pricing = pricing
        self.headers = dict(headers or {})
        self._client_var: RunVar[httpx.AsyncClient] = RunVar(f"agentkit-http-{id(self)}")

    def _client(self) -> httpx.AsyncClient:
        try:
            client = self._client_var.get()
            if not client.is_closed:
                return client
        except LookupError:
            pass
        client = httpx.AsyncClient(timeout=self.timeout)
        self._client_var.set(client)
        return client

    async def aclose(self) -> None:
        try:
            client = self._client_var.get()
        except LookupError:
            return
        await client.aclose()

    def _request_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", **self.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff_s * (2**attempt)
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), 60.0))
        await anyio.sleep(delay)

    async def sse(self, path: str, payload: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST and yield each `data:` JSON object of the event stream until `[DONE]`."""
        url = self.root + path
        if self.require_key and not self.api_key:
            where = f"set ${self.api_key_env}" if self.api_key_env else "pass api_key=..."
            raise ModelAuthError(f"{url} needs an API key and none was given ({where})")
        attempt = 0
        while True:
            started = False
            try:
                async with self._client().stream(
                    "POST", url, json=payload, headers=self._request_headers()
                ) as resp:
                    status = resp.status_code
                    if status in (401, 403):
                        body = (await resp.aread()).decode("utf-8", "replace")
                        hint = f" (set ${self.api_key_env})" if self.api_key_env and not self.api_key else ""
                        raise ModelAuthError(
                            f"HTTP {status} from {url}: authentication failed{hint}: {body[:300]}"
                        )
                    if status in RETRY_STATUS and attempt < self.max_retries:
                        await resp.aread()
                        await self._sleep_before_retry(attempt, resp.headers.get("retry-after"))
                        attempt += 1
                        continue
                    if status >= 400:
                        body = (await resp.aread()).decode("utf-8", "replace")
                        raise ModelHTTPError(status, body, url)
                    ctype = resp.headers.get("content-type", "")
                    if "text/event-stream" not in ctype:
                        body = (await resp.aread()).decode("utf-8", "replace")
                        raise ModelResponseError(
                            f"expected an event stream from {url}, got content-type {ctype!r}: {body[:300]}"
                        )
                    async for line in resp.aiter_lines():
                        if not line or line.startswith(":") or not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            return
                        try:
                            obj = json.loads(data)
                        except json.JSONDecodeError as exc:
                            raise ModelResponseError(
                                f"malformed JSON in event stream from {url}: {data[:300]}"
                            ) from exc
                        if not isinstance(obj, dict):
                            raise ModelResponseError(f"event from {url} is not a JSON object: {data[:300]}")
                        if "error" in obj and not obj.get("choices"):
                            raise ModelResponseError(f"server error in stream from {url}: {obj['error']}")
                        started = True
                        yield obj
                    raise ModelResponseError(f"event stream from {url} ended without [DONE]")
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                if started or attempt >= self.max_retries:
                    raise ModelError(f"request to {url} failed: {type(exc).__name__}: {exc}") from exc
                await self._sleep_before_retry(attempt, None)
                attempt += 1


def usage_numbers(usage: dict[str, Any] | None) -> tuple[int, int, int]:
    """(prompt, cached, completion) from either DeepSeek's or OpenAI's usage shape."""
    if not usage:
        return 0, 0, 0
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = usage.get("prompt_cache_hit_tokens")
    if cached is None:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return prompt, int(cached), int(usage.get("completion_tokens") or 0)


def first_choice(obj: dict[str, Any], url_hint: str) -> dict[str, Any] | None:
    choices = obj.get("choices")
    if choices is None:
        if "usage" in obj:
            return None
        raise ModelResponseError(f"stream event without 'choices' from {url_hint}: {str(obj)[:300]}")
    if not isinstance(choices, list):
        raise ModelResponseError(f"'choices' is not a list in event from {url_hint}")
    if not choices:
        return None
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ModelResponseError(f"choice is not an object in event from {url_hint}")
    return choice


__all__ = ["HTTPBackend", "api_root", "first_choice", "usage_numbers"]
