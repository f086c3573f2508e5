"""The in-process V4 runtime as a text backend: each model call is a request to a shared `Engine`.

Why an engine, not the model: many agents run at once in one process (sub-agents, an app's users, an
evaluation's episodes) and most share long prefixes; the engine batches their decode steps together and
serves shared prompt prefixes from its prefix cache (agentkit.runtime.engine). Which engine:

- `EmbeddedModel("tiny")` / `Agent("embedded:tiny")`: the process-wide engine for that model string
  (target, device, random seed), created on first use, shared by every backend made from the same string,
  and closed when the last of them is gone (`_shared_engine`).
- `EmbeddedModel(engine=eng)` / `Agent(model=eng)`: that engine; the tokenizer is `tokenizer=...` or the
  one the engine carries (`Engine.load(...)` and `Engine(model, tokenizer=...)` set it).
- `EmbeddedModel(model=v4model, tokenizer=tok)`: a private engine over that model for this backend.

A run keeps its last turn's final state (`keep_state=True`); the next turn is a request that continues it
(`submit(suffix, state=kept)`) with only what is new: the framework-written suffix (tool results, assistant
prefix). The last sampled token is fed before a turn ends, so the kept state covers everything generated.
A run's first turn is its whole prompt, so the prefix cache serves the part other runs share (system
prompt, tool schemas). Kept states are never written, which is what makes `fork_state` free: branches of a
run share its state, and each branch's request restores it into a state of its own.

Generated tokens are handed back with their ids and stored verbatim in the transcript, so they are never
re-tokenized. Exporting the state (`export_state`) and importing it in another process (`import_state`)
lets a saved session resume without re-prefilling a single old token; each `Finish` reports how many
tokens it had to prefill (prefix-cache hits and the kept state count as cached).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from agentkit.backends.base import Chunk, Finish, ModelError, ModelRequest, RawText
from agentkit.backends.tokens import Tokenizer, encode_segments, load_tokenizer, text_encoder
from agentkit.dsml.tokens import EOS
from agentkit.limits import Pricing
from agentkit.messages import Transcript

KV_FORMAT = "agentkit-embedded-kv/1"


@dataclass(slots=True)
class _Session:
    state: Any  # agentkit.runtime.state.SequenceState, never written (None: nothing fed yet)
    epoch: int
    ids: list[int] = field(default_factory=list)  # every transcript token id known so far
    segments: int = 0  # transcript segments already folded into `ids`
    fed: int = 0  # ids already inside `state` (== state.pos)
    transcript: Transcript | None = None
    seed: int = 0  # sampling seed base: the backend's seed, offset for a forked branch
    draft: Any = None  # the MTP block's state beside `state` (speculative decoding; None: start it cold)


class _EngineLease:
    """A shared engine while some backend holds this lease; the engine closes when the last one is gone.

    Why a lease and not a weak reference to the engine: the engine's scheduler thread refers to it, so the
    engine itself is never garbage while it runs; this small object is, once no backend holds it."""

    def __init__(self, engine: Any, tokenizer: Any) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        weakref.finalize(self, engine.close)


_SHARED: weakref.WeakValueDictionary[tuple[str, str, str, int | None], _EngineLease] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()


def _engine_key(target: str, device: str | None, random_seed: int | None) -> tuple[str, str, str, int | None]:
    path = Path(target)
    if path.is_dir():
        return ("dir", str(path.resolve()), str(device or "cpu"), random_seed)
    return ("preset", target, str(device or "cpu"), random_seed)


def _shared_engine(target: str, device: str | None, random_seed: int | None) -> _EngineLease:
    """The process-wide engine for a model string, loading the model on first use."""
    key = _engine_key(target, device, random_seed)
    with _SHARED_LOCK:  # held while loading, so two threads asking at once load the model once
        lease = _SHARED.get(key)
        if lease is None:
            from agentkit.runtime.engine import Engine

            model, tok_dir = EmbeddedModel._build(target, device, random_seed)
            tokenizer = None
            if tok_dir is not None:
                with contextlib.suppress(ModelError):  # none here: the backend then needs tokenizer=...
                    tokenizer = load_tokenizer(tok_dir)
            lease = _EngineLease(Engine(model, tokenizer=tokenizer), tokenizer)
            _SHARED[key] = lease
        return lease


def _seed_offset(run_id: str) -> int:
    """A forked branch's sampling seed offset, from its run id (so given run ids reproduce a fork)."""
    return int(hashlib.sha256(run_id.encode()).hexdigest()[:12], 16)


def _digest(ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


class EmbeddedModel:
    protocol: Literal["text"] = "text"

    def __init__(
        self,
        target: str | None = None,
        *,
        model: Any = None,
        engine: Any = None,
        tokenizer: Tokenizer | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        max_tokens: int = 1024,
        device: str | None = None,
        random_seed: int | None = None,
        pricing: Pricing | None = None,
        logits_processor: Callable[[list[int], Any], Any] | None = None,
        speculative: int | None = None,
    ) -> None:
        """`target`: a checkpoint directory or a preset name (its shipped checkpoint; random weights
        only when `random_seed` is given), served by the engine shared by every backend of that string.
        `engine`: an `agentkit.runtime.Engine` to serve this backend's runs. `model`: a `V4Model` given a
        private engine (see the module docstring). Sampling settings are this backend's own, so backends
        with different settings can share one engine. `logits_processor(generated_ids, logits) -> logits`
        can constrain decoding (grammar, bans, or forcing an exact output in tests); it runs on the
        engine's scheduler thread. `speculative`: tokens the MTP block drafts per step (0 = off, None =
        the runtime's default, `agentkit.runtime.generate.draft_length`: 1, followed by up to 6
        prompt-lookup drafts); greedy output is the same either way, and a run's usage counts drafted and
        accepted tokens (prompt lookup's share apart) and decode steps."""
        self.logits_processor = logits_processor
        self._lease: _EngineLease | None = None
        if engine is not None:
            if tokenizer is None:
                tokenizer = getattr(engine, "tokenizer", None)
            model = engine.model
        elif model is None:
            if not target:
                raise ValueError(
                    "embedded backend needs a preset name, a checkpoint directory, engine=... or model=..."
                )
            self._lease = _shared_engine(target, device, random_seed)
            engine = self._lease.engine
            model = engine.model
            if tokenizer is None:
                tokenizer = self._lease.tokenizer
        if tokenizer is None:
            raise ModelError(
                f"the embedded backend {target!r} has no tokenizer; pass tokenizer=... "
                "(a checkpoint directory with tokenizer.json provides one, as does Engine.load(...))"
            )
        self.model = model
        self.tokenizer = tokenizer
        self._encode = text_encoder(tokenizer)
        self.name = f"embedded:{target or type(model).__name__}"
        from agentkit.runtime.generate import SamplingParams

        self.sampling = SamplingParams(
            temperature=temperature, top_p=top_p, seed=seed, speculative=speculative
        )
        self.seed = seed
        self.default_max_tokens = max_tokens
        self.pricing = pricing
        eos = self._encode(EOS, True)
        if len(eos) != 1:
            raise ModelError(f"tokenizer does not map {EOS!r} to one token (got {eos}); not a V4 tokenizer?")
        self.eos_id = eos[0]
        known = getattr(tokenizer, "n_vocab", None) or getattr(tokenizer, "vocab_size", None)
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        # a checkpoint's vocabulary is padded past its tokenizer: those ids must never be sampled (they have
        # no text, and decoding one failed the whole run)
        self._padded_from = (
            known if isinstance(known, int) and isinstance(vocab, int) and known < vocab else None
        )
        self._sessions: dict[str, _Session] = {}
        self._seeds: dict[str, int] = {}  # forked runs' sampling seeds (the others use `seed`)
        if engine is None:  # model=...: a private engine, closed when this backend is collected
            from agentkit.runtime.engine import Engine

            engine = Engine(model, tokenizer=tokenizer)
            weakref.finalize(self, engine.close)
        self.engine = engine

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
        seed = self._seeds.get(run_id, self.seed)
        if sess is not None and sess.transcript is not transcript:
            if sess.transcript is not None:
                # what the state holds beyond its last fold (the tokens it generated) is in the transcript
                # it ran on: fold that first, so the comparison below covers every token the state has
                self._fold(sess, sess.transcript)
            if sess.fed > len(sess.ids) or not self._same_prefix(sess, transcript):
                # a fork: the run was resumed from an earlier saved point (or the state holds tokens no
                # transcript shows: a fork of a run's start that reused its run id met a state 60 ahead)
                sess = None
        if sess is None or sess.epoch != transcript.epoch or sess.segments > len(transcript.segments):
            sess = _Session(None, transcript.epoch, seed=seed)
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
        state = sess.state if sess.state is not None else self.model.new_state()
        return len(header).to_bytes(4, "big") + header + state.to_bytes()

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
        seed = self._seeds.get(run_id, self.seed)
        sess = _Session(state, transcript.epoch, transcript=transcript, seed=seed)
        self._fold(sess, transcript)
        if state.pos > len(sess.ids) or _digest(sess.ids[: state.pos]) != header.get("ids"):
            raise ModelError("KV state does not belong to this transcript (its token ids differ)")
        sess.fed = state.pos
        self._sessions[run_id] = sess

    def kept_state_bytes(self) -> int:
        """Bytes of the KV states this backend keeps between turns, one per run: what its idle runs hold
        on the engine's device. Memory actually held: a state forked branches still share, and the entries
        that branches' states share with their parent's (copy-on-write), are counted once."""
        from agentkit.runtime.state import held_bytes

        states = [s.state for s in self._sessions.values() if s.state is not None]
        return held_bytes(*states)  # distinct storages: entries that kept states share count once

    def forget(self, run_id: str) -> None:
        self._sessions.pop(run_id, None)
        self._seeds.pop(run_id, None)

    def fork_state(self, run_id: str, new_run_ids: Sequence[str]) -> None:
        """Let runs `new_run_ids` (copies of run `run_id`'s RunState, see `Agent.fork`) continue from this
        run's KV state. Nothing is copied here: a kept state is never written, so the branches share it and
        each branch's next request restores it into its own state and prefills only its new tokens. Each
        branch samples with its own seed (from its run id), so sampled branches differ. A run with no
        state yet (not started) has nothing to share: its branches' first prompts meet in the prefix cache.
        """
        for child in new_run_ids:
            self._seeds[child] = self.seed + _seed_offset(child)
        parent = self._sessions.get(run_id)
        if parent is None:
            return
        if parent.transcript is not None:
            self._fold(parent, parent.transcript)
        for child in new_run_ids:
            self._sessions[child] = _Session(
                parent.state,
                parent.epoch,
                ids=list(parent.ids),
                segments=parent.segments,
                fed=parent.fed,
                transcript=None,  # the branch's own transcript is checked against `ids` on first use
                seed=self._seeds[child],
                draft=parent.draft,  # the engine copies it at admission: branches never share writes
            )

    # -- generation -------------------------------------------------------------------------------

    def _params(self, seed: int, limit: int) -> Any:
        """The engine request's sampling: this backend's settings, stop at EOS only (the loop parses
        DSML itself), the last token fed so the kept state covers every generated token (the next turn
        would have to feed it anyway; this only moves that work earlier)."""
        import dataclasses

        return dataclasses.replace(
            self.sampling,
            seed=seed,
            max_tokens=limit,
            stop_token_ids=(self.eos_id,),
            stop_sequences=(),
            stop_strings=(),
            feed_last=True,
        )

    def _processor(self) -> Callable[[list[int], Any], Any] | None:
        """The request's logits processor: the user's, after masking the padded ids (when there are any)."""
        user, start = self.logits_processor, self._padded_from
        if start is None:
            return user

        def mask_padding(generated: list[int], logits: Any) -> Any:
            logits = logits.clone()
            logits[start:] = float("-inf")
            return logits if user is None else user(generated, logits)

        # a pure function of its arguments: the engine may speculate with it (runtime/engine.py submit)
        mask_padding.speculative_safe = user is None  # type: ignore[attr-defined]
        return mask_padding

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        from agentkit.runtime.engine_request import EngineError, RequestError

        tr = request.transcript
        sess = self._session(request.run_id, tr)
        sess.transcript = tr
        self._fold(sess, tr)
        prompt_tokens = len(sess.ids)
        todo = sess.ids[sess.fed :]
        if not todo:
            raise ModelError("nothing new to extend: the transcript must end with an assistant prefix")
        limit = request.max_tokens or self.default_max_tokens
        try:
            handle = self.engine.submit(
                todo,
                self._params(sess.seed + prompt_tokens, limit),
                keep_state=True,
                state=sess.state if sess.fed else None,
                # the ids the kept state covers: this turn's block boundaries go into the prefix cache
                context=sess.ids[: sess.fed] if sess.fed else None,
                logits_processor=self._processor(),
                draft=sess.draft if sess.fed else None,
            )
        except (RequestError, EngineError) as exc:  # bad ids, too long, engine closed: one typed error
            raise ModelError(
                f"the embedded model could not extend the run: {type(exc).__name__}: {exc}"
            ) from exc
        out: list[int] = []
        make_decoder = getattr(self.tokenizer, "stream_decoder", None)
        decoder = make_decoder() if make_decoder is not None else None
        emitted = ""
        ids_sent = 0
        try:
            async with contextlib.aclosing(handle.__aiter__()) as tokens:
                async for tok in tokens:
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
            result = handle.result()
        except EngineError as exc:  # the forward failed, or the logits processor raised
            raise ModelError(
                f"the embedded model could not extend the run: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            if not handle.done:  # the run was cancelled or stopped reading: free the request now
                handle.cancel()
        if result.state is not None:
            sess.state, sess.fed = result.state, result.state.pos
            sess.draft = getattr(result, "draft", None)
        if ids_sent < len(out):
            rest = decoder.flush() if decoder is not None else self.tokenizer.decode(out)[len(emitted) :]
            yield RawText(rest, tuple(out[ids_sent:]))
        reason = "stop" if result.finish_reason == "stop_token" else "length"
        cached = result.cached_tokens
        yield Finish(
            reason,
            prompt_tokens,
            cached,
            prompt_tokens - cached,
            len(out),
            decode_steps=result.steps,
            drafted_tokens=result.drafted,
            accepted_tokens=result.accepted,
            lookup_drafted_tokens=result.lookup_drafted,
            lookup_accepted_tokens=result.lookup_accepted,
        )

    async def aclose(self) -> None:
        self._sessions.clear()


__all__ = ["KV_FORMAT", "EmbeddedModel", "Tokenizer", "encode_segments", "load_tokenizer", "text_encoder"]
