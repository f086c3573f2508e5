"""The in-process V4 runtime as a text backend, with one persistent `SequenceState` per run.

Each step extends the run's state by only what is new: the framework-written suffix (tool results,
assistant prefix) plus the last sampled token, which was never fed. Generated tokens are handed back
with their ids and stored verbatim in the transcript, so they are never re-tokenized. Exporting the
state (`export_state`) and importing it in another process (`import_state`) lets a saved session resume
without re-prefilling a single old token; each `Finish` reports how many tokens it had to prefill.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from agentkit.dsml.tokens import EOS
from agentkit.limits import Pricing
from agentkit.messages import Transcript
from agentkit.models.base import Chunk, Finish, ModelError, ModelRequest, RawText

KV_FORMAT = "agentkit-embedded-kv/1"


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


@dataclass(slots=True)
class _Session:
    state: Any  # agentkit.runtime.state.SequenceState
    epoch: int
    ids: list[int] = field(default_factory=list)  # every transcript token id known so far
    segments: int = 0  # transcript segments already folded into `ids`
    fed: int = 0  # ids already inside `state` (== state.pos)
    transcript: Transcript | None = None


def _digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """A checkpoint directory's tokenizer: the runtime's loader when it exists, else byte-level BPE."""
    d = Path(directory)
    if not (d / "tokenizer.json").exists():
        raise ModelError(f"no tokenizer.json in {d}; pass tokenizer=... to the embedded backend")
    try:
        rt_tok = importlib.import_module("agentkit.runtime.tokenizer")
    except ImportError:
        rt_tok = None
    loader = getattr(rt_tok, "load_tokenizer", None)
    if loader is not None:
        return loader(d)
    from agentkit.train.bpe import BPETokenizer

    return BPETokenizer.load(d)


class EmbeddedModel:
    protocol: Literal["text"] = "text"

    def __init__(
        self,
        target: str | None = None,
        *,
        model: Any = None,
        tokenizer: Tokenizer | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_tokens: int = 1024,
        device: str | None = None,
        pricing: Pricing | None = None,
        logits_processor: Callable[[list[int], Any], Any] | None = None,
    ) -> None:
        """`logits_processor(generated_ids, logits) -> logits` can constrain decoding (grammar, bans,
        or forcing an exact output in tests)."""
        self.logits_processor = logits_processor
        if model is None:
            if not target:
                raise ValueError("embedded backend needs a preset name, a checkpoint directory or model=...")
            model = self._build(target, device)
            if tokenizer is None and Path(target).is_dir():
                tokenizer = load_tokenizer(target)
        if tokenizer is None:
            raise ModelError(
                f"the embedded backend {target!r} has no tokenizer; pass tokenizer=... "
                "(a checkpoint directory with tokenizer.json provides one)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.name = f"embedded:{target or type(model).__name__}"
        from agentkit.runtime.generate import SamplingParams

        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
        self.seed = seed
        self.default_max_tokens = max_tokens
        self.pricing = pricing
        eos = tokenizer.encode(EOS)
        if len(eos) != 1:
            raise ModelError(
                f"tokenizer does not map {EOS!r} to one token (got {eos}); not a V4 tokenizer?"
            )
        self.eos_id = eos[0]
        self._sessions: dict[str, _Session] = {}

    @staticmethod
    def _build(target: str, device: str | None) -> Any:
        from agentkit.runtime.config import ModelConfig
        from agentkit.runtime.model import V4Model

        if Path(target).is_dir():
            return V4Model.from_checkpoint(target, device=device)
        try:
            config = ModelConfig.preset(target)
        except Exception as exc:
            raise ValueError(
                f"{target!r} is neither a checkpoint directory nor a runtime preset: {exc}"
            ) from exc
        return V4Model(config, device=device).init_random_(0)

    # -- state management -------------------------------------------------------------------------

    def _session(self, run_id: str, transcript: Transcript) -> _Session:
        sess = self._sessions.get(run_id)
        if sess is None or sess.epoch != transcript.epoch or sess.segments > len(transcript.segments):
            sess = _Session(self.model.new_state(), transcript.epoch)
            self._sessions[run_id] = sess
        return sess

    def _fold(self, sess: _Session, transcript: Transcript) -> None:
        """Add the ids of new transcript segments, tokenizing only framework-written text (and keeping
        those ids on the segment, so the transcript carries exact ids from then on)."""
        for seg in transcript.segments[sess.segments :]:
            if seg.token_ids is None:
                seg.token_ids = self.tokenizer.encode(seg.text)
            sess.ids.extend(seg.token_ids)
        sess.segments = len(transcript.segments)

    def export_state(self, run_id: str) -> bytes:
        """The run's KV state plus the bookkeeping that ties it to the transcript (for save_session)."""
        sess = self._sessions.get(run_id)
        if sess is None:
            raise ModelError(f"no embedded state for run {run_id!r}")
        if sess.transcript is not None:
            self._fold(sess, sess.transcript)
        if sess.fed > len(sess.ids):
            raise ModelError("internal error: the KV state is ahead of the transcript")
        header = json.dumps(
            {"format": KV_FORMAT, "fed": sess.fed, "epoch": sess.epoch, "ids": _digest(sess.ids[: sess.fed])}
        ).encode()
        return len(header).to_bytes(4, "big") + header + sess.state.to_bytes()

    def import_state(self, run_id: str, blob: bytes, transcript: Transcript) -> None:
        from agentkit.runtime.state import SequenceState

        try:
            n = int.from_bytes(blob[:4], "big")
            header = json.loads(blob[4 : 4 + n])
            if header.get("format") != KV_FORMAT:
                raise ValueError(f"format {header.get('format')!r}")
            state = SequenceState.from_bytes(blob[4 + n :], device=self.model.device)
        except Exception as exc:
            raise ModelError(f"cannot import embedded KV state: {exc}") from exc
        if header["epoch"] != transcript.epoch or state.pos != header["fed"]:
            raise ModelError("KV state does not belong to this transcript (epoch or position differ)")
        sess = _Session(state, transcript.epoch, transcript=transcript)
        self._fold(sess, transcript)
        if state.pos > len(sess.ids) or _digest(sess.ids[: state.pos]) != header.get("ids"):
            raise ModelError("KV state does not belong to this transcript (its token ids differ)")
        sess.fed = state.pos
        self._sessions[run_id] = sess

    def forget(self, run_id: str) -> None:
        self._sessions.pop(run_id, None)

    # -- generation -------------------------------------------------------------------------------

    def _extend(self, sess: _Session, ids: list[int]) -> Any:
        logits = self.model.extend(sess.state, ids, last_only=True)
        sess.fed += len(ids)
        return logits

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        import torch

        from agentkit.runtime.generate import sample

        tr = request.transcript
        sess = self._session(request.run_id, tr)
        sess.transcript = tr
        self._fold(sess, tr)
        prompt_tokens = len(sess.ids)
        todo = sess.ids[sess.fed :]
        if not todo:
            raise ModelError("nothing new to extend: the transcript must end with an assistant prefix")
        prefilled = len(todo)
        logits = await anyio.to_thread.run_sync(functools.partial(self._extend, sess, todo))
        gen = torch.Generator().manual_seed(self.seed + prompt_tokens)
        limit = request.max_tokens or self.default_max_tokens
        out: list[int] = []
        emitted = ""
        ids_sent = 0
        reason = "length"
        while len(out) < limit:
            if self.logits_processor is not None:
                logits = self.logits_processor(out, logits)
            tok = sample(logits, self.sampling, gen)
            out.append(tok)
            text = self.tokenizer.decode(out)
            done = tok == self.eos_id
            if done or not text.endswith("\ufffd"):  # hold back a partial UTF-8 character
                yield RawText(text[len(emitted) :], tuple(out[ids_sent:]))
                emitted, ids_sent = text, len(out)
            if done:
                reason = "stop"
                break
            if len(out) < limit:
                logits = await anyio.to_thread.run_sync(functools.partial(self._extend, sess, [tok]))
        if out:
            # Feed the last token too, so the saved state covers every generated token (the next
            # turn would have to feed it anyway; this only moves that work earlier).
            await anyio.to_thread.run_sync(functools.partial(self._extend, sess, [out[-1]]))
        if ids_sent < len(out):
            yield RawText(self.tokenizer.decode(out)[len(emitted) :], tuple(out[ids_sent:]))
        yield Finish(reason, prompt_tokens, prompt_tokens - prefilled, prefilled, len(out))

    async def aclose(self) -> None:
        self._sessions.clear()


__all__ = ["KV_FORMAT", "EmbeddedModel", "Tokenizer", "load_tokenizer"]
