"""One request on the engine: prompt ids in, text pieces out, usage at the end.

Shared by both endpoints, so chat and raw completions get the same sampling defaults, context checks,
stop strings, cancellation and cached-token accounting.

Why the server keeps finished states (`KeptStates`): a client that sends a conversation turn by turn
re-sends its whole history each time. The engine's prefix cache restores 128-token-aligned snapshots of
prompts, so a turn would re-prefill the previous turn's answer and the tail of its prompt. The server
instead keeps each finished request's final state (the engine's `keep_state=True`; the last token is
fed, so it covers prompt + completion) under its token ids, and a request whose prompt extends one of
them continues that state with only its new tokens: `usage.prompt_tokens_details.cached_tokens` is then
the whole history. That is exactly what the embedded backend does per run (backends/embedded.py), here
keyed by token ids because HTTP clients carry no run id. A byte budget (LRU) bounds what is kept.

Cancellation: the handle is cancelled in a `finally` that never awaits, so a client that disconnects
(the task streaming to it is cancelled) frees its sequence at the engine's next step boundary.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import torch

from agentkit.runtime.engine import Engine
from agentkit.runtime.engine_request import EngineClosed, EngineError, EngineResult, RequestError
from agentkit.runtime.generate import SamplingParams
from agentkit.runtime.state import SequenceState
from agentkit.serve.errors import APIError, bad_request
from agentkit.serve.requests import Sampling

Processor = Callable[[list[int], torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Defaults:
    """Sampling for fields a request leaves out. Greedy by default, as the embedded backend samples, so a
    client and an embedded run of the same conversation agree; `max_tokens=None` = the rest of the context."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int | None = None


class KeptStates:
    """Finished requests' final states by their token ids, least recently used first (see module doc)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[int, tuple[list[int], SequenceState, int]] = OrderedDict()
        self._bytes = 0
        self._next = 0

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def longest_prefix(self, ids: list[int]) -> tuple[SequenceState, int] | None:
        """The kept state covering the longest proper prefix of `ids` (a token must remain to extend)."""
        best: tuple[int, int] | None = None
        for key, (kept, _state, _n) in self._items.items():
            n = len(kept)
            if n < len(ids) and (best is None or n > best[1]) and ids[:n] == kept:
                best = (key, n)
        if best is None:
            return None
        self._items.move_to_end(best[0])
        return self._items[best[0]][1], best[1]

    def put(self, ids: list[int], state: SequenceState) -> None:
        size = state.nbytes()
        if size > self.max_bytes or not ids:
            return
        for key in [k for k, (kept, _s, _n) in self._items.items() if ids[: len(kept)] == kept]:
            self._drop(key)  # superseded: this state covers it and more
        while self._items and self._bytes + size > self.max_bytes:
            self._drop(next(iter(self._items)))
        self._next += 1
        self._items[self._next] = (list(ids), state, size)
        self._bytes += size

    def _drop(self, key: int) -> None:
        _ids, _state, size = self._items.pop(key)
        self._bytes -= size


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int

    def to_openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens},
        }


class Runner:
    """Submits requests to one engine with one tokenizer; yields `Generation`s."""

    def __init__(self, engine: Engine, tokenizer: Any, defaults: Defaults, kept_bytes: int) -> None:
        self.engine, self.tokenizer, self.defaults = engine, tokenizer, defaults
        self.kept = KeptStates(kept_bytes)
        self.eos_id: int = tokenizer.eos_id
        self.limit: int = engine.decoder.max_len if engine.decoder is not None else engine.config.max_seq_len
        n_vocab = getattr(tokenizer, "n_vocab", None)
        vocab = engine.config.vocab_size
        # a vocabulary may be padded past its tokenizer: those ids have no text, never sample them
        self.padded_from: int | None = n_vocab if isinstance(n_vocab, int) and n_vocab < vocab else None

    def encode(self, text: str) -> list[int]:
        """The server's prompt text is framework-rendered (or a raw prompt): special tokens are tokens."""
        return list(self.tokenizer.encode(text, allow_special=True))

    def params(self, s: Sampling, prompt_len: int, default_max: int | None) -> SamplingParams:
        room = self.limit - prompt_len
        if room < 1:
            raise bad_request(
                f"the prompt is {prompt_len} tokens; this model's context is {self.limit} tokens",
                "messages",
                "context_length_exceeded",
            )
        if s.max_tokens is not None and s.max_tokens > room:
            raise bad_request(
                f"prompt ({prompt_len} tokens) + max_tokens ({s.max_tokens}) exceeds the model's context of "
                f"{self.limit} tokens",
                "max_tokens",
                "context_length_exceeded",
            )
        max_tokens = s.max_tokens or min(default_max or room, room)
        return SamplingParams(
            temperature=self.defaults.temperature if s.temperature is None else s.temperature,
            top_p=self.defaults.top_p if s.top_p is None else s.top_p,
            top_k=s.top_k or 0,
            seed=s.seed,
            max_tokens=max_tokens,
            stop_token_ids=() if s.ignore_eos else (self.eos_id,),
            stop_sequences=(),
            stop_strings=s.stop,
            feed_last=True,
        )

    def processor(self, extra: Processor | None = None) -> Processor | None:
        start = self.padded_from
        if start is None:
            return extra

        def mask_padding(generated: list[int], logits: torch.Tensor) -> torch.Tensor:
            logits = logits.clone()
            logits[start:] = float("-inf")
            return logits if extra is None else extra(generated, logits)

        return mask_padding

    def start(
        self,
        ids: list[int],
        params: SamplingParams,
        *,
        skip_special: bool = False,
        processor: Processor | None = None,
    ) -> Generation:
        kept = self.kept.longest_prefix(ids)
        try:
            handle = self.engine.submit(
                ids[kept[1] :] if kept else ids,
                params,
                decode=self.tokenizer.decode if params.stop_strings else None,
                keep_state=self.kept.max_bytes > 0,
                state=kept[0] if kept else None,
                logits_processor=self.processor(processor),
            )
        except EngineClosed as exc:
            raise APIError(503, f"the engine is closed: {exc}", code="engine_closed") from exc
        except RequestError as exc:
            raise bad_request(f"the engine refused the request: {exc}", None, "invalid_request") from exc
        return Generation(self, handle, ids, params, skip_special)


class Generation:
    """One running request: `pieces()` streams its text (stop strings cut, the stop token left out)."""

    def __init__(self, runner: Runner, handle: Any, prompt: list[int], params: SamplingParams, skip: bool):
        self.runner, self.handle, self.prompt, self.params = runner, handle, prompt, params
        self.decoder = runner.tokenizer.stream_decoder(skip_special=skip)
        self.tokens: list[int] = []
        self.result: EngineResult | None = None
        self.stopped = False  # by one of the request's stop strings

    @property
    def finish_reason(self) -> str:
        """OpenAI's: "stop" (stop token or string) or "length"."""
        r = self.result
        return "stop" if r is not None and r.finish_reason in ("stop_token", "stop_string") else "length"

    @property
    def ended_on_eos(self) -> bool:
        return self.result is not None and self.result.finish_reason == "stop_token"

    def usage(self) -> Usage:
        cached = self.result.cached_tokens if self.result is not None else 0
        return Usage(len(self.prompt), len(self.tokens), cached)

    async def pieces(self) -> AsyncGenerator[tuple[str, list[int]], None]:
        """(text, the token ids it completes) as tokens arrive; the request is cancelled if not finished."""
        stops = self.params.stop_strings
        hold = max((len(s) for s in stops), default=1) - 1
        text = ""  # decoded but not yet handed out (held back while it could start a stop string)
        ids: list[int] = []
        try:
            async for tok in self.handle:
                self.tokens.append(tok)
                if tok == self.runner.eos_id and tok in self.params.stop_token_ids:
                    continue  # the stop token ends the turn; like vLLM, it is not part of the text
                ids.append(tok)
                text += self.decoder.push(tok)
                if stops:
                    cut = min((i for i in (text.find(s) for s in stops) if i != -1), default=-1)
                    if cut != -1:
                        self.stopped = True
                        if cut:
                            yield text[:cut], ids
                        text, ids = "", []
                        break
                    if len(text) > hold:
                        yield text[: len(text) - hold], ids
                        text, ids = text[len(text) - hold :], []
                elif text:
                    yield text, ids
                    text, ids = "", []
            if not self.stopped:
                text += self.decoder.flush()
                if text or ids:
                    yield text, ids
            else:  # the engine ends the request on the same token; only a mismatch would leave it running
                with anyio.move_on_after(1.0):
                    await self.handle.aresult()
                if not self.handle.done:
                    self.handle.cancel()
            self.result = await self.handle.aresult()
        except EngineError as exc:
            raise APIError(500, f"generation failed: {exc}", code="engine_error") from exc
        finally:
            if not self.handle.done:
                self.handle.cancel()
        r = self.result
        if r.state is not None:
            self.runner.kept.put((self.prompt + r.token_ids)[: r.state.pos], r.state)


__all__ = ["Defaults", "Generation", "KeptStates", "Runner", "Usage"]
