"""The ASGI app: routes, API-key check, JSON errors, server-sent events, disconnects.

Why a hand-written event-stream response rather than Starlette's `StreamingResponse`: a client that goes
away mid-stream must free its engine sequence at once, and under ASGI spec 2.4 servers Starlette only
notices a disconnect when a write fails (which may be many tokens later, or never for a stalled stream).
Here a watcher task waits for `http.disconnect` and cancels the stream, whose generator cancels the
engine request in a `finally`. A non-streamed request is watched the same way.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agentkit.runtime.engine import Engine
from agentkit.serve import chat, completions
from agentkit.serve.errors import APIError, bad_request
from agentkit.serve.generation import Defaults, Runner
from agentkit.serve.requests import parse_chat, parse_completion

_log = logging.getLogger(__name__)


async def _watch_disconnect(receive: Receive, scope: anyio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


class EventStream:
    """`data: {json}` events, then `data: [DONE]`; cancelled the moment the client disconnects."""

    def __init__(self, events: AsyncGenerator[dict[str, Any], None]) -> None:
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream; charset=utf-8"),
                    (b"cache-control", b"no-cache"),
                ],
            }
        )

        async def write(data: str) -> None:
            await send({"type": "http.response.body", "body": data.encode("utf-8"), "more_body": True})

        with contextlib.suppress(OSError):  # the client went away between the watcher's checks
            async with anyio.create_task_group() as tg:
                tg.start_soon(_watch_disconnect, receive, tg.cancel_scope)
                try:
                    async with contextlib.aclosing(self.events) as events:
                        async for obj in events:
                            await write(f"data: {json.dumps(obj, ensure_ascii=False)}\n\n")
                except APIError as exc:  # headers are out: the error travels as an event
                    await write(f"data: {json.dumps(exc.body())}\n\n")
                except Exception as exc:
                    _log.exception("stream failed")
                    err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="server_error")
                    await write(f"data: {json.dumps(err.body())}\n\n")
                await write("data: [DONE]\n\n")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                tg.cancel_scope.cancel()


def app(
    engine: Engine,
    *,
    model: str = "agentkit-tiny",
    tokenizer: Any = None,
    api_key: str | None = None,
    defaults: Defaults | None = None,
    kept_state_bytes: int = 256 << 20,
) -> Starlette:
    """An OpenAI-compatible ASGI app over `engine` (mount it in your own app, or run it with uvicorn).

    `model`: the id clients name (the only one served). `tokenizer`: defaults to the engine's own
    (`Engine.load` carries the checkpoint's). `api_key`: if set, every /v1 request must send
    `Authorization: Bearer <key>`. `defaults`: sampling for fields a request omits. `kept_state_bytes`:
    budget for finished conversations' states, so the next turn continues them (0 turns it off)."""
    tok = tokenizer if tokenizer is not None else engine.tokenizer
    if tok is None:
        raise ValueError("the engine carries no tokenizer; pass tokenizer=...")
    runner = Runner(engine, tok, defaults or Defaults(), kept_state_bytes)
    served = (model,)
    started = int(time.time())

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise APIError(
                401,
                "Incorrect or missing API key (send 'Authorization: Bearer <key>')",
                code="invalid_api_key",
            )

    async def body_of(request: Request) -> Any:
        check_key(request)
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", None, "invalid_json") from exc

    async def answer(request: Request, work: Callable[[], Awaitable[dict[str, Any]]]) -> Response:
        """Run a non-streamed request, abandoning it (and its engine sequence) if the client leaves."""
        result: dict[str, Any] | None = None
        error: BaseException | None = None
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                nonlocal result, error
                try:
                    result = await work()
                except Exception as exc:  # raised here, outside the task group, so handlers see it as is
                    error = exc
                tg.cancel_scope.cancel()

            tg.start_soon(_watch_disconnect, request.receive, tg.cancel_scope)
            tg.start_soon(run)
        if error is not None:
            raise error
        if result is None:  # the client disconnected; nobody reads this
            return Response(status_code=499)
        return JSONResponse(result)

    async def models(request: Request) -> Response:
        check_key(request)
        return JSONResponse({"object": "list", "data": [_model_card(model, started, runner.limit)]})

    async def model_info(request: Request) -> Response:
        check_key(request)
        name = request.path_params["name"]
        if name != model:
            raise APIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
        return JSONResponse(_model_card(model, started, runner.limit))

    async def chat_completions(request: Request) -> Response | EventStream:
        req = parse_chat(await body_of(request), served)
        text, mode = chat.render(req)
        ids = await anyio.to_thread.run_sync(runner.encode, text)
        params = runner.params(req.sampling, len(ids), runner.defaults.max_tokens)
        gen = runner.start(ids, params, processor=chat.tool_choice_processor(runner, req, mode))
        if req.stream:
            return EventStream(chat.stream_chunks(req, gen, mode))
        return await answer(request, lambda: chat.complete(req, gen, mode))

    async def text_completions(request: Request) -> Response | EventStream:
        req = parse_completion(await body_of(request), served, engine.config.vocab_size)
        if isinstance(req.prompt, str):
            ids = await anyio.to_thread.run_sync(runner.encode, req.prompt)
        else:
            ids = list(req.prompt)
        params = runner.params(req.sampling, len(ids), None)
        gen = runner.start(ids, params, skip_special=req.skip_special_tokens)
        if req.stream:
            return EventStream(completions.stream_chunks(req, gen))
        return await answer(request, lambda: completions.complete(req, gen))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return JSONResponse(exc.body(), status_code=exc.status)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code)

    async def on_error(request: Request, exc: Exception) -> Response:
        _log.exception("request failed")
        err = APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="server_error")
        return JSONResponse(err.body(), status_code=500)

    routes = [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model_info, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", text_completions, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    out = Starlette(
        routes=routes,
        exception_handlers={APIError: on_api_error, HTTPException: on_http_error, Exception: on_error},
    )
    out.state.runner = runner
    out.state.engine = engine
    return out


def _model_card(name: str, created: int, limit: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "agentkit", "max_model_len": limit}


def serve(
    model: str = "tiny",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_concurrency: int = 32,
    served_name: str | None = None,
    device: str | None = None,
    default_max_tokens: int | None = None,
) -> None:
    """Load `model` (a preset such as "tiny", a checkpoint directory, or "embedded:<either>") into an engine
    decoding up to `max_concurrency` sequences together (more requests wait in its queue), and serve it
    with uvicorn until interrupted."""
    import uvicorn

    target = model.removeprefix("embedded:")
    engine = Engine.load(target, device=device, max_seqs=max_concurrency)
    name = served_name or default_name(target)
    asgi = app(engine, model=name, api_key=api_key, defaults=Defaults(max_tokens=default_max_tokens))
    try:
        uvicorn.run(asgi, host=host, port=port, log_level="info")
    finally:
        engine.close()


def default_name(target: str) -> str:
    """The model id clients send: "agentkit-tiny" for the shipped model, else the preset or folder name."""
    from pathlib import Path

    if target == "tiny":
        return "agentkit-tiny"
    return Path(target).name or target


__all__ = ["EventStream", "app", "default_name", "serve"]
