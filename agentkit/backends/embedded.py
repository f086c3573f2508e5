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
import inspect
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio

from agentkit.backends.base import Chunk, Finish, ModelError, ModelRequest, RawText
from agentkit.dsml.tokens import EOS
from agentkit.limits import Pricing
from agentkit.messages import Segment, Transcript

KV_FORMAT = "agentkit-embedded-kv/1"


class Tokenizer(Protocol):
    """What the backend needs: `encode` (with `allow_special=`, like the runtime's tokenizer, or an
    `encode_ordinary` for plain text) and `decode`."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def text_encoder(tok: Any) -> Callable[[str, bool], list[int]]:
    """encode(text, trusted): special tokens are recognised only in trusted (framework-written) text."""
    try:
        params = inspect.signature(tok.encode).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "allow_special" in params:
        return lambda text, trusted: list(tok.encode(text, allow_special=trusted))
    plain = getattr(tok, "encode_ordinary", None)
    if plain is not None:
        return lambda text, trusted: list(tok.encode(text) if trusted else plain(text))
    return lambda text, trusted: list(tok.encode(text))


def encode_segments(tok: Any, segments: Sequence[Segment]) -> list[list[int]]:
    """Ids for consecutive transcript segments, one list per segment, tokenized as the text they form
    together rather than piece by piece.

    Why: a V4 server (and our training data) tokenizes the rendered prompt in one piece, so where
    framework text meets tool output BPE merges across the seam (`<tool_result>./records` holds the
    token `>./`); encoding the pieces apart gave the embedded backend other ids than the model was
    trained on, and agentkit-tiny copied paths out of tool results wrongly in the real loop only.
    Special tokens are still recognised only in trusted text: untrusted text joins the plain run it
    sits in. A token goes to the segment holding its first byte, so a segment may get no ids.
    Tokenizers without `added` / `id_to_bytes` (the runtime's have both) are encoded per segment.
    """
    enc = text_encoder(tok)
    added = getattr(tok, "added", None)
    if not added or not hasattr(tok, "id_to_bytes"):
        return [enc(seg.text, seg.trusted) for seg in segments]
    specials = {t.content: t.id for t in added}
    split = re.compile("(" + "|".join(re.escape(c) for c in sorted(specials, key=len, reverse=True)) + ")")
    out: list[list[int]] = [[] for _ in segments]
    run: list[tuple[int, str]] = []  # (segment index, plain text) pieces of the current plain run

    def flush() -> None:
        if not run:
            return
        ids = list(tok.encode("".join(t for _, t in run), allow_special=False))
        bounds, total = [], 0  # byte offset at which each piece ends
        for _, t in run:
            total += len(t.encode("utf-8"))
            bounds.append(total)
        pos = piece = 0
        for i in ids:
            while piece < len(run) - 1 and pos >= bounds[piece]:
                piece += 1
            out[run[piece][0]].append(i)
            pos += len(tok.id_to_bytes(i))
        run.clear()

    for k, seg in enumerate(segments):
        parts = split.split(seg.text) if seg.trusted else [seg.text]
        for j, part in enumerate(parts):
            if j % 2:  # a special token (only trusted text is split)
                flush()
                out[k].append(specials[part])
            elif part:
                run.append((k, part))
    flush()
    return out


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
    """The tokenizer stored with a checkpoint (tokenizer.json or *.tiktoken), via the runtime's loader."""
    from agentkit.runtime.tokenizer import Tokenizer as RuntimeTokenizer

    try:
        return RuntimeTokenizer.from_file(directory)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {directory}: {exc}") from exc


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
        random_seed: int | None = None,
        pricing: Pricing | None = None,
        logits_processor: Callable[[list[int], Any], Any] | None = None,
    ) -> None:
        """`target`: a checkpoint directory or a preset name (its shipped checkpoint; random weights
        only when `random_seed` is given). `logits_processor(generated_ids, logits) -> logits` can
        constrain decoding (grammar, bans, or forcing an exact output in tests)."""
        self.logits_processor = logits_processor
        if model is None:
            if not target:
                raise ValueError("embedded backend needs a preset name, a checkpoint directory or model=...")
            model, tok_dir = self._build(target, device, random_seed)
            if tokenizer is None and tok_dir is not None:
                tokenizer = load_tokenizer(tok_dir)
        if tokenizer is None:
            raise ModelError(
                f"the embedded backend {target!r} has no tokenizer; pass tokenizer=... "
                "(a checkpoint directory with tokenizer.json provides one)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self._encode = text_encoder(tokenizer)
        self.name = f"embedded:{target or type(model).__name__}"
        from agentkit.runtime.generate import SamplingParams

        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, seed=seed)
        self.seed = seed
        self.default_max_tokens = max_tokens
        self.pricing = pricing
        eos = self._encode(EOS, True)
        if len(eos) != 1:
            raise ModelError(f"tokenizer does not map {EOS!r} to one token (got {eos}); not a V4 tokenizer?")
        self.eos_id = eos[0]
        self._sessions: dict[str, _Session] = {}

    @staticmethod
    def _build(target: str, device: str | None, random_seed: int | None) -> tuple[Any, Path | None]:
        from agentkit.runtime.checkpoint import load_model, shipped_checkpoint

        try:
            model = load_model(target, device=device, random_seed=random_seed)
        except Exception as exc:
            raise ModelError(f"cannot load the embedded model {target!r}: {exc}") from exc
        path = Path(target)
        return model, path if path.is_dir() else shipped_checkpoint(target)

    # -- state management -------------------------------------------------------------------------

    def _session(self, run_id: str, transcript: Transcript) -> _Session:
        sess = self._sessions.get(run_id)
        if sess is not None and sess.transcript is not transcript and not self._same_prefix(sess, transcript):
            sess = None  # a fork: the run was resumed from an earlier saved point
        if sess is None or sess.epoch != transcript.epoch or sess.segments > len(transcript.segments):
            sess = _Session(self.model.new_state(), transcript.epoch)
            self._sessions[run_id] = sess
        return sess

    def _same_prefix(self, sess: _Session, transcript: Transcript) -> bool:
        """Whether `transcript` (a different object, e.g. loaded from JSON) starts with exactly the
        tokens already in the state; checked only when the transcript object changes."""
        if sess.segments > len(transcript.segments):
            return False
        ids: list[int] = []
        for seg in transcript.segments[: sess.segments]:
            ids.extend(seg.token_ids if seg.token_ids is not None else self._encode(seg.text, seg.trusted))
        return ids == sess.ids

    def _fold(self, sess: _Session, transcript: Transcript) -> None:
        """Add the ids of new transcript segments, tokenizing only framework-written text (and keeping
        those ids on the segment, so the transcript carries exact ids from then on)."""
        new = transcript.segments[sess.segments :]
        k = 0
        while k < len(new):
            if new[k].token_ids is not None:
                k += 1
                continue
            end = k
            while end < len(new) and new[end].token_ids is None:
                end += 1
            for seg, ids in zip(new[k:end], encode_segments(self.tokenizer, new[k:end]), strict=True):
                seg.token_ids = ids
            k = end
        for seg in new:
            assert seg.token_ids is not None
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
        try:
            logits = self.model.extend(sess.state, ids, last_only=True)
        except Exception as exc:  # bad ids, sequence too long, device errors: one typed error for the loop
            raise ModelError(
                f"the embedded model could not extend the run: {type(exc).__name__}: {exc}"
            ) from exc
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
        make_decoder = getattr(self.tokenizer, "stream_decoder", None)
        decoder = make_decoder() if make_decoder is not None else None
        emitted = ""
        ids_sent = 0
        reason = "length"
        while len(out) < limit:
            if self.logits_processor is not None:
                logits = self.logits_processor(out, logits)
            tok = sample(logits, self.sampling, gen)
            out.append(tok)
            done = tok == self.eos_id
            # text is handed out only in whole characters; ids ride along with the text they complete
            if decoder is not None:
                piece = decoder.push(tok)
            else:
                text = self.tokenizer.decode(out)
                piece = "" if text.endswith("\ufffd") and not done else text[len(emitted) :]
                emitted += piece
            if piece:
                yield RawText(piece, tuple(out[ids_sent:]))
                ids_sent = len(out)
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
            rest = decoder.flush() if decoder is not None else self.tokenizer.decode(out)[len(emitted) :]
            yield RawText(rest, tuple(out[ids_sent:]))
        yield Finish(reason, prompt_tokens, prompt_tokens - prefilled, prefilled, len(out))

    async def aclose(self) -> None:
        self._sessions.clear()


__all__ = ["KV_FORMAT", "EmbeddedModel", "Tokenizer", "load_tokenizer"]
