"""Raw completions over the engine: a prompt string or token ids in, the generated text out, token-exact.

What agentkit's own `completions:` backend sends (backends/completions.py): the run's whole transcript as
text, `skip_special_tokens=false` so `</think>` and `｜DSML｜` come back, `stream_options.include_usage`.
A string prompt is tokenized with special tokens recognised, as vLLM and SGLang do for a raw prompt; a
list of ids is used as given, id for id. The stop token is not part of the text (the client's loop
appends it, as it does for every server). `return_token_ids` (vLLM's extension) adds the prompt's ids
and each piece's generated ids, so a client can keep the exact tokens instead of re-tokenizing text.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncGenerator
from typing import Any

from agentkit.serve.generation import Generation
from agentkit.serve.requests import CompletionRequest


def _choice(text: str, finish: str | None, ids: list[int] | None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return choice


async def stream_chunks(req: CompletionRequest, gen: Generation) -> AsyncGenerator[dict[str, Any], None]:
    rid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    base = {"id": rid, "object": "text_completion", "created": created, "model": req.model}
    first = True
    async with contextlib.aclosing(gen.pieces()) as pieces:  # closed (request cancelled) if we are
        async for text, ids in pieces:
            chunk = {**base, "choices": [_choice(text, None, ids if req.return_token_ids else None)]}
            if first and req.return_token_ids:
                chunk["prompt_token_ids"] = gen.prompt
            first = False
            yield chunk
    yield {**base, "choices": [_choice("", gen.finish_reason, [] if req.return_token_ids else None)]}
    if req.include_usage:
        yield {**base, "choices": [], "usage": gen.usage().to_openai()}


async def complete(req: CompletionRequest, gen: Generation) -> dict[str, Any]:
    texts: list[str] = []
    all_ids: list[int] = []
    async with contextlib.aclosing(gen.pieces()) as pieces:
        async for text, ids in pieces:
            texts.append(text)
            all_ids += ids
    out: dict[str, Any] = {
        "id": "cmpl-" + secrets.token_hex(12),
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "choices": [_choice("".join(texts), gen.finish_reason, all_ids if req.return_token_ids else None)],
        "usage": gen.usage().to_openai(),
    }
    if req.return_token_ids:
        out["prompt_token_ids"] = gen.prompt
    return out


__all__ = ["complete", "stream_chunks"]
