"""Engine: many sequences on one model - continuous batching, chunked prefill, a prefix cache, forks.

One `Engine` per loaded model, shared by every caller in the process (threads, asyncio or trio tasks).
`submit()` queues a request (prompt ids, `SamplingParams` with generate.py's stop rules) and returns a
`RequestHandle` that streams its tokens. One scheduler thread runs `step()` in a loop, as nano-vllm does:

    schedule    admit waiting requests (FCFS, within `max_seqs` and `state_bytes`), restoring each one's
                longest cached prefix; then pick this step's work: every decoding sequence gets its one
                token, and prefilling sequences share a budget of `prefill_chunk` prompt tokens
    run         ONE batched `model.extend` over all of it (decodes and prefill chunks together)
    postprocess sample, apply the stop rules, stream tokens, take promised cache snapshots, free finished
                sequences

Why chunk prefills: a 30K-token prompt extended in one call would stall every streaming sequence for the
whole prefill; with a budget per step, running sequences get a token every step while it proceeds.

Results equal `generate()` run alone: each request keeps generate.py's own per-sequence sampler and stop
logic (`_Seq`: the seeded generator, stop ids/sequences/strings, max_tokens, feed_last, max_seq_len), and
batched / chunked extends compute the same function as one extend (tests/test_runtime_extend.py).

Memory: a sequence's state is allocated once at admission for its largest possible length
(`len(prompt) + max_tokens`, preallocated and written in place), so its bytes are known before it runs:
admission waits while `state_bytes` would be exceeded instead of running out of memory mid-decode, and
`stats().state_bytes` is exact. A sequence that starts from a snapshot (a fork, a continuation, a prefix
cache hit) is a `SequenceState.branch` of it: it shares the snapshot's compressed entries and indexer keys
(copy-on-write, see state.py) and allocates only its window ring, compressor tails and the rows of its
own new tokens, which is all `state_bytes` counts for it; the shared rows are held by the snapshot's owner
(a kept state, the fork base, the prefix cache). With a `decoder` every sequence owns a slab row, into
which a snapshot is copied. Cancellation ends the stream at once; the scheduler frees the state at its
next step boundary (never in the middle of an extend that uses it). A forward that raises fails only the
requests in that batch; a request's own failure (e.g. its stop-string decoder raising) fails only it.

Prefix cache policy (runtime/prefix_cache.py): a request restores the longest cached 128-multiple prefix
<= len(prompt) - 1 and prefills the rest; while prefilling it snapshots at its prompt's last block
boundary, at the deepest boundary it shares with an earlier prompt, and every `snapshot_every` tokens.
Each such point is announced at admission, and a request that could reuse an announced point waits for it
rather than prefilling the same prefix again, so N concurrent requests sharing a prefix prefill it once.
A continuation given the ids its state covers (`submit(ids, state=kept, context=...)`, as the embedded
backend does for every agent turn) snapshots its own prompt's boundaries the same way, filed under
context + prompt: so a conversation's later turns become cache entries, and another request that shares
the conversation's history (a second agent, a resumed run without its KV state) restores them.

Forks (`fork`): one finished sequence (kept with keep_state=True) or a state continues n ways: it is
snapshotted once (sharing its entries) and each of the n branches shares that snapshot's entries; nothing
is prefilled except new suffix tokens, nothing before the fork point is copied.

Continuations (`submit(new_ids, state=kept)`): an agent's next turn continues its last turn's kept state
with only the new tokens. The given state is read once, at admission (restored into the request's own
preallocated state), and never written, so one kept state can be continued any number of times, by
several requests at once (an agent's forked branches share their parent's state this way, copy-on-write).

Speculative decoding (runtime/speculative.py): a request that speculates (greedy by default, see
generate.draft_length) has its MTP block draft before the step (one batched MTP call for all of them), and
its decode chunk is [next token, drafts]; the step's one batched extend is then `extend_hidden` (verify
chunks get logits at every position, the others at their last, and speculating requests get the streams
their MTP state consumes), recorded in rollback journals; postprocess keeps the accepted drafts and rolls
each state back past its first rejection. A logits processor turns it off unless it says it is
`speculative_safe`. The MTP state is not counted in `state_bytes` (one layer's window and entries).

One idea: the scheduler. The public calls only validate, queue and cancel requests; everything else is
the step that serves them. The request handle (engine_request.py), the cache (prefix_cache.py) and the
sampler and stop rules (generate.py) live in their own modules.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from agentkit.runtime.decode import DecodeError, StaticDecoder
from agentkit.runtime.engine_request import (
    EngineClosed,
    EngineError,
    EngineResult,
    RequestError,
    RequestHandle,
)
from agentkit.runtime.generate import SamplingParams, draft_length, sample
from agentkit.runtime.generate import _Seq as _Sampler
from agentkit.runtime.model import V4Model
from agentkit.runtime.prefix_cache import CacheStats, PrefixCache, model_fingerprint
from agentkit.runtime.speculative import (
    COLD_WINDOW,
    DraftState,
    Journal,
    draft_tokens,
    drafts_for,
    gave_up,
    lookups_for,
    main_journal,
    record,
    settle,
    start_draft,
)
from agentkit.runtime.state import ENTRY_ARRAYS, SequenceState

Phase = Literal["prefill", "decode", "feed", "done"]
LogitsProcessor = Callable[[list[int], torch.Tensor], torch.Tensor]
"""`(generated ids so far, fp32 logits [V]) -> logits` before each sample (constraints, bans, forcing an
exact output in tests). Called on the scheduler thread; if it raises, only its request fails."""
_DEFAULT_PARAMS = SamplingParams()
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    """What one step ran (for tests and tracing); request ids as in `RequestHandle.id`."""

    step: int
    decode: tuple[int, ...]
    prefill: tuple[tuple[int, int], ...]
    """(request id, prompt tokens extended) per prefilling sequence."""
    feed: tuple[int, ...]
    """Sequences whose last sampled token was fed (feed_last) after they finished."""
    sampled: tuple[int, ...]


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    steps: int
    prefill_tokens: int
    """Prompt (and fork suffix) tokens extended, over the engine's life: cached prefixes are not counted."""
    decode_tokens: int
    state_bytes: int
    """Bytes allocated for running sequences' states right now (a branch's shared prefix not included:
    its snapshot's owner holds that)."""
    state_bytes_limit: int | None
    cache: CacheStats


@dataclass(eq=False)
class _Request:
    handle: RequestHandle
    prompt: list[int]
    sampler: _Sampler
    keep_state: bool
    use_cache: bool
    capacity: int
    reserve: int
    base: SequenceState | None = None
    """Fork: the snapshot this sequence starts from (prompt = the tokens after it)."""
    base_logits: torch.Tensor | None = None
    state: SequenceState | None = None
    offset: int = 0
    """Position of prompt[0] (a fork's base length)."""
    fed: int = 0
    """Prompt tokens in the state (restored ones included)."""
    cached: int = 0
    points: list[int] = field(default_factory=list)
    path: list[int] | None = None
    """The ids from position 0 to the prompt's end, when known (the prompt itself, or a continuation's
    context + prompt): what its prefix-cache snapshots are filed under."""
    snapshots: bool = False
    """Whether this request snapshots block boundaries of its prompt into the prefix cache."""
    phase: Phase = "prefill"
    next_token: int = 0
    ready: torch.Tensor | None = None
    last_logits: torch.Tensor | None = None
    cancelled: bool = False
    processor: LogitsProcessor | None = None
    spec: int = 0
    """Tokens the MTP block drafts per decode step (0: plain decoding; runtime/speculative.py)."""
    adaptive: bool = False
    draft: DraftState | None = None
    """The MTP block's state (speculating requests): given by `submit(draft=)`, or started cold."""
    tail: list[tuple[torch.Tensor, list[int]]] = field(default_factory=list)
    """Prefill chunks' streams and ids kept for a cold MTP start (the prompt's last positions)."""


@dataclass(eq=False)
class _Verify:
    """A speculating decode step's extras: the drafts' probabilities, the journals that undo the verify."""

    probs: list[torch.Tensor | None]
    journal: Journal
    mtp_journal: Journal | None
    hidden: torch.Tensor | None = None
    looked: int = 0
    """The last `looked` drafts came from prompt lookup (runtime/lookup.py)."""


@dataclass
class _Work:
    req: _Request
    tokens: list[int] | None
    """None: sample from logits the request already has (a fork with no new tokens)."""
    kind: Literal["prefill", "decode", "feed", "ready"]
    verify: _Verify | None = None
    hidden: torch.Tensor | None = None
    """The final streams of `tokens` (speculating requests only: what the MTP block consumes)."""


class Engine:
    """Continuous batching over one model for any number of concurrent requests (see the module docstring)."""

    def __init__(
        self,
        model: V4Model,
        *,
        max_seqs: int = 32,
        state_bytes: int | None = None,
        prefill_chunk: int = 512,
        cache_bytes: int = 256 << 20,
        cache_dir: str | os.PathLike[str] | None = None,
        snapshot_every: int | None = 512,
        cache_namespace: str | None = None,
        decoder: StaticDecoder | None = None,
        on_step: Callable[[StepRecord], None] | None = None,
        tokenizer: object | None = None,
    ) -> None:
        """`state_bytes`: bound on running sequences' state bytes (None: only `max_seqs` bounds them).
        `cache_bytes=0` and no `cache_dir` turn the prefix cache off. `decoder`: states come from its slab
        (`model.static_decoder()`), so all-decode steps run its fixed-shape step (CUDA graphs).
        `tokenizer`: carried for callers that speak text (an agent given this engine as its model encodes
        its transcript with it); the engine itself only ever sees token ids."""
        if max_seqs < 1 or prefill_chunk < 1:
            raise ValueError("max_seqs and prefill_chunk must be >= 1")
        self.model, self.config = model, model.config
        self.decoder = decoder
        self.max_seqs = min(max_seqs, decoder.max_batch) if decoder is not None else max_seqs
        self.state_bytes_limit, self.prefill_chunk = state_bytes, prefill_chunk
        self.snapshot_every, self.on_step = snapshot_every, on_step
        self.tokenizer = tokenizer
        self.cache = PrefixCache(
            self.config,
            # names on disk must tell weights apart; in memory the cache lives and dies with this model
            cache_namespace or (model_fingerprint(model, self.config) if cache_dir is not None else "memory"),
            cache_bytes=cache_bytes,
            cache_dir=cache_dir,
            device=model.device,
            dtype=model.dtype,
        )
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._step_lock = threading.Lock()
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []
        self._by_id: dict[int, _Request] = {}
        self._next_id = 0
        self._reserved = 0
        self._steps = self._prefill_tokens = self._decode_tokens = 0
        self._closed = False
        self._threads = torch.get_num_threads()
        self._thread = threading.Thread(target=self._loop, name="agentkit-engine", daemon=True)
        self._thread.start()
        _LIVE.add(self)

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        random_seed: int | None = None,
        **options: object,
    ) -> Engine:
        """An engine over `load_model(source)` (a checkpoint directory or a preset name, e.g. "tiny"),
        carrying the checkpoint's tokenizer when it has one, so `Agent(model=Engine.load("tiny"))` works.
        `options` are the constructor's keywords."""
        from agentkit.runtime.checkpoint_read import shipped_checkpoint
        from agentkit.runtime.loader import load_model
        from agentkit.runtime.tokenizer import Tokenizer

        src = source if isinstance(source, str) else Path(source)
        model = load_model(src, device=device, dtype=dtype, random_seed=random_seed)
        folder = Path(source) if Path(source).is_dir() else shipped_checkpoint(str(source))
        tokenizer = None
        if folder is not None:
            try:
                tokenizer = Tokenizer.from_file(folder)
            except Exception:  # a checkpoint without tokenizer files: ids-only use still works
                tokenizer = None
        return cls(model, tokenizer=tokenizer, **options)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ public API
    def submit(
        self,
        prompt: Sequence[int] | torch.Tensor,
        params: SamplingParams = _DEFAULT_PARAMS,
        *,
        decode: Callable[[list[int]], str] | None = None,
        keep_state: bool = False,
        use_cache: bool = True,
        state: SequenceState | None = None,
        context: Sequence[int] | torch.Tensor | None = None,
        logits_processor: LogitsProcessor | None = None,
        draft: DraftState | None = None,
    ) -> RequestHandle:
        """Queue a request; returns at once. Bad requests raise `RequestError` here, touching nothing.

        `state`: continue that sequence (e.g. an earlier result's kept state): `prompt` is then only the
        tokens after it, nothing before it is recomputed and no cached prefix is restored. The state is
        read at admission and never written (see the module docstring), so it may be continued again.
        `context`: the ids `state` covers (exactly `state.pos` of them); given, the prompt's block
        boundaries are snapshotted into the prefix cache under context + prompt (unless use_cache=False).
        `draft`: the MTP block's state for `state` (an earlier result's `draft`), so that a speculating
        request's block consumes only the new tokens; read once, never written. Requests speculate as
        `generate()` does (`SamplingParams.speculative`, see generate.draft_length), except those with a
        logits processor, unless it has a true `speculative_safe` attribute: a pure function of the ids it
        is given, which a verify then calls once per verified position (with the drafts before it)."""
        ids = self._ids(prompt)
        if not ids:
            raise RequestError("prompt must not be empty (the first token needs the logits of a last token)")
        if state is not None and state.broken:
            raise RequestError(f"cannot continue a broken state: {state.broken}")
        path = None
        if context is not None:
            if state is None:
                raise RequestError("context names the ids a given state covers: pass the state too")
            path = self._ids(context)
            if len(path) != state.pos:
                raise RequestError(f"context has {len(path)} ids, the state covers {state.pos}")
            path += ids
        with self._lock:
            req = self._request(ids, params, decode, keep_state, use_cache, base=state, logits=None)
            req.processor = logits_processor
            if logits_processor is not None and not getattr(logits_processor, "speculative_safe", False):
                req.spec = 0
            if req.spec and draft is not None and state is not None and draft.main_pos == state.pos:
                req.draft = draft
            if path is not None and use_cache and self.cache.enabled:
                req.path, req.snapshots = path, True
            self._enqueue([req])
        return req.handle

    def fork(
        self,
        source: RequestHandle | SequenceState,
        n: int,
        params: SamplingParams | Sequence[SamplingParams] = _DEFAULT_PARAMS,
        *,
        suffix: Sequence[int] = (),
        decode: Callable[[list[int]], str] | None = None,
        keep_state: bool = False,
    ) -> list[RequestHandle]:
        """Continue one sequence n ways: `source` is a finished handle submitted with keep_state=True, or a
        state. Its context is snapshotted once and restored into each branch; only `suffix` (and a token
        the source left pending) is extended. With no new tokens the branches sample their first token from
        the source's last logits, so a finished handle forks with nothing recomputed at all."""
        plist = [params] * n if isinstance(params, SamplingParams) else list(params)
        if n < 1 or len(plist) != n:
            raise RequestError(f"fork needs n >= 1 and one SamplingParams per branch (n={n}, {len(plist)})")
        logits: torch.Tensor | None = None
        pending: list[int] = []
        if isinstance(source, RequestHandle):
            if not source.done:
                raise RequestError(f"request {source.id} has not finished; fork it once it has")
            res = source.result()
            if res.state is None:
                raise RequestError(f"request {source.id} kept no state; submit it with keep_state=True")
            state, logits, pending = res.state, res.last_logits, list(res.pending)
        else:
            state = source
        tokens = pending + self._ids(suffix)
        if not tokens and logits is None:
            raise RequestError("a fork of a state needs at least one new token (no logits to sample from)")
        base = state.snapshot()  # once: every branch shares this one's entries, the source stays free
        with self._lock:
            reqs = [
                self._request(tokens, p, decode, keep_state, False, base=base, logits=logits) for p in plist
            ]
            self._enqueue(reqs)
        return [r.handle for r in reqs]

    def generate(
        self, prompt: Sequence[int] | torch.Tensor, params: SamplingParams = _DEFAULT_PARAMS
    ) -> EngineResult:
        """Submit and wait (blocking convenience)."""
        return self.submit(prompt, params).result()

    def stats(self) -> EngineStats:
        with self._lock:
            used = sum(r.reserve for r in self._running)
            return EngineStats(
                running=len(self._running),
                waiting=len(self._waiting),
                steps=self._steps,
                prefill_tokens=self._prefill_tokens,
                decode_tokens=self._decode_tokens,
                state_bytes=used,
                state_bytes_limit=self.state_bytes_limit,
                cache=self.cache.stats(),
            )

    def close(self) -> None:
        """Stop the scheduler; requests still queued or running end with `EngineClosed`."""
        with self._lock:
            self._closed = True
            self._wake.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join()
        with self._lock:
            for req in self._waiting + self._running:
                self._end(req, "error", EngineClosed("the engine was closed"))
            self._waiting.clear()
            self._reap()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ requests
    def _ids(self, tokens: Sequence[int] | torch.Tensor) -> list[int]:
        if isinstance(tokens, torch.Tensor):
            if tokens.dtype.is_floating_point or tokens.dim() > 1:
                raise RequestError("token ids must be a 1-D integer list or tensor")
            tokens = tokens.reshape(-1).tolist()
        ids = list(tokens)
        vocab = self.config.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int):
                raise RequestError(f"token ids must be integers, got {t!r}")
            if not 0 <= t < vocab:
                raise RequestError(f"token id {t} out of range [0, {vocab})")
        return ids

    def _request(
        self,
        ids: list[int],
        params: SamplingParams,
        decode: Callable[[list[int]], str] | None,
        keep_state: bool,
        use_cache: bool,
        *,
        base: SequenceState | None,
        logits: torch.Tensor | None,
    ) -> _Request:
        if self._closed:
            raise EngineClosed("the engine is closed")
        offset = base.pos if base is not None else 0
        limit = self.config.max_seq_len if self.decoder is None else self.decoder.max_len
        if offset + len(ids) > limit:
            raise RequestError(f"context of {offset + len(ids)} tokens > the engine's limit of {limit}")
        capacity = min(offset + len(ids) + params.max_tokens, limit)
        reserve = self._bytes_for(capacity, offset if self.decoder is None else 0)
        if self.state_bytes_limit is not None and reserve > self.state_bytes_limit:
            raise RequestError(
                f"this request's state needs {reserve} bytes > state_bytes={self.state_bytes_limit}"
            )
        self._next_id += 1
        handle = RequestHandle(self, self._next_id, len(ids))
        spec, adaptive = draft_length(self.model, [params])
        if adaptive and self.decoder is not None:  # not by default where steps replay CUDA graphs
            spec = 0
        req = _Request(
            handle,
            ids,
            _Sampler(params, decode),
            keep_state,
            use_cache and self.cache.enabled and base is None,
            capacity,
            reserve,
            base=base,
            base_logits=logits if not ids else None,
            offset=offset,
            path=ids if base is None else None,
            snapshots=use_cache and self.cache.enabled and base is None,
        )
        req.spec, req.adaptive = spec, adaptive
        return req

    def _bytes_for(self, capacity: int, shared: int = 0) -> int:
        """Exact bytes a state preallocated for `capacity` tokens allocates (a meta-device state: no
        memory), when its first `shared` tokens' entries are shared with the snapshot it branches from."""
        if self.decoder is not None:
            return self._slot_bytes()
        st = SequenceState.fresh(self.config, "meta", self.model.dtype, max_len=capacity)
        total = sum(t.numel() * t.element_size() for ls in st.layers for t in ls.tensors().values())
        for ls in st.layers:
            for name in ENTRY_ARRAYS:
                t = getattr(ls, name)
                if t is not None:
                    total -= (shared // ls.ratio) * t.shape[1] * t.element_size()
        return total

    def _slot_bytes(self) -> int:
        assert self.decoder is not None
        total = sum(
            t.numel() * t.element_size()
            for ls in self.decoder.layers
            for t in (ls.kv, ls.comp_tail_kv, ls.comp_tail_score, ls.idx, ls.idx_tail_kv, ls.idx_tail_score)
            if t is not None
        )
        return total // self.decoder.n_slots

    def _enqueue(self, reqs: list[_Request]) -> None:
        for r in reqs:
            self._by_id[r.handle.id] = r
            self._waiting.append(r)
        self._wake.notify_all()

    def _cancel(self, handle: RequestHandle) -> None:
        with self._lock:
            req = self._by_id.get(handle.id)
            if req is None or req.phase == "done":
                return
            if req in self._waiting:  # never started: nothing to free
                self._waiting.remove(req)
                del self._by_id[req.handle.id]
            self._end(req, "cancelled")
            self._wake.notify_all()

    def _end(
        self, req: _Request, reason: Literal["cancelled", "error"], error: BaseException | None = None
    ) -> None:
        """End a request early: its stream closes now; `_reap` frees its state at the next step boundary."""
        req.cancelled, req.phase = True, "done"
        r = req.sampler.result
        req.handle._finish(
            EngineResult(
                token_ids=list(req.handle.tokens),
                finish_reason=reason,
                stop=r.stop,
                prompt_tokens=len(req.prompt),
                cached_tokens=req.cached,
                error=error,
            )
        )

    # ------------------------------------------------------------------ the scheduler
    def _loop(self) -> None:
        # OpenMP's thread count is per calling thread: run with the creator's, not the machine default
        torch.set_num_threads(self._threads)
        while True:
            with self._lock:
                self._wake.wait_for(lambda: self._closed or bool(self._waiting or self._running))
                if self._closed:
                    return
            try:
                progressed = self.step()
            except Exception as e:  # a bug in the engine itself: fail what runs, keep serving new requests
                with self._lock:
                    for req in self._running:
                        self._end(req, "error", EngineError(f"engine step failed: {type(e).__name__}: {e}"))
                    self._reap()
                progressed = 1
            if not progressed:
                with self._lock:  # only blocked requests are left: sleep until something changes
                    self._wake.wait(timeout=0.05)

    def step(self) -> int:
        """One scheduler iteration: schedule, run one batched extend, postprocess. Returns the number of
        sequences that advanced (0: nothing could run)."""
        with self._step_lock:
            with self._lock:
                self._reap()
                self._admit()
                work = self._schedule()
            if not work:
                return 0
            logits = self._run(work)
            with self._lock:
                sampled = self._postprocess(work, logits)
                self._reap()
                self._steps += 1
                record = StepRecord(
                    self._steps,
                    tuple(w.req.handle.id for w in work if w.kind == "decode"),
                    tuple((w.req.handle.id, len(w.tokens or ())) for w in work if w.kind == "prefill"),
                    tuple(w.req.handle.id for w in work if w.kind == "feed"),
                    tuple(sampled),
                )
            if self.on_step is not None:
                try:
                    self.on_step(record)
                except Exception:  # an observer's bug must not fail the requests being served
                    _log.exception("Engine on_step callback failed")
            return len(work)

    def _admit(self) -> None:
        """FCFS within max_seqs and state_bytes. A request whose prefix a running one is about to snapshot
        is skipped (it waits for the snapshot); one that does not fit the bytes blocks the queue, so small
        requests cannot starve a large one."""
        for req in list(self._waiting):
            if len(self._running) >= self.max_seqs:
                return
            if req.use_cache and self.cache.probe(req.prompt).wait:
                continue
            if self.state_bytes_limit is not None and self._reserved + req.reserve > self.state_bytes_limit:
                return
            try:
                started = self._start(req)
            except Exception as e:  # e.g. a cached snapshot that does not restore: this request only
                self._waiting.remove(req)
                self._by_id.pop(req.handle.id, None)
                self._end(req, "error", EngineError(f"could not start: {type(e).__name__}: {e}"))
                continue
            if not started:
                return
            self._waiting.remove(req)

    def _start(self, req: _Request) -> bool:
        """Give an admitted request its state, restored from the fork base or the longest cached prefix."""
        state: SequenceState | None = None
        if self.decoder is not None:
            try:
                state = self.decoder.new_state()
            except DecodeError:  # a finished state not yet collected still holds its slot
                gc.collect()
                if not self.decoder.free_slots:
                    return False
                state = self.decoder.new_state()
        snap = req.base
        if req.use_cache:
            snap = self.cache.acquire(req.prompt)
        if self.decoder is None:
            if snap is not None:  # shares the snapshot's entries: allocates windows, tails, new rows only
                state = SequenceState.branch(snap, req.capacity)
                req.reserve = self._bytes_for(req.capacity, snap.pos)
            else:
                state = self.model.new_state(max_len=req.capacity)
        else:
            assert state is not None
            if snap is not None:  # a slab row holds every entry: the snapshot is copied in
                state.restore(snap)
        if snap is not None:
            req.cached = snap.pos
            req.fed = snap.pos - req.offset
        if req.snapshots:
            assert req.path is not None
            req.points = self.cache.plan(req.path, req.offset + req.fed, req, self.snapshot_every)
        req.state, req.ready = state, req.base_logits
        if req.draft is not None:  # the caller's MTP state is read, never written: this request's own copy
            req.draft = req.draft.snapshot() if req.draft.main_pos == state.pos else None
        if req.spec and req.draft is None and req.ready is not None:  # a fork sampling from kept logits
            req.draft = DraftState.cold(self.model, state.pos)
        self._reserved += req.reserve
        self._running.append(req)
        return True

    def _schedule(self) -> list[_Work]:
        work: list[_Work] = []
        for req in self._running:
            if req.phase == "done":
                continue
            if req.ready is not None:
                work.append(_Work(req, None, "ready"))
            elif req.phase in ("decode", "feed"):
                work.append(_Work(req, [req.next_token], "decode" if req.phase == "decode" else "feed"))
        budget = self.prefill_chunk
        for req in self._running:
            if budget <= 0:
                break
            if req.phase != "prefill" or req.ready is not None:
                continue
            pos = req.offset + req.fed
            end = min(len(req.prompt), req.fed + budget)
            nxt = next((p for p in req.points if p > pos), None)  # stop where a snapshot is promised
            if nxt is not None:
                end = min(end, nxt - req.offset)
            work.append(_Work(req, req.prompt[req.fed : end], "prefill"))
            budget -= end - req.fed
        return work

    def _run(self, work: list[_Work]) -> list[torch.Tensor | None]:
        """The step's one batched extend; a failure fails exactly the requests in it. With speculating
        requests in it, their decodes draft first and verify in it, and it returns the final streams."""
        ext = [w for w in work if w.tokens is not None]
        out: list[torch.Tensor | None] = [None] * len(work)
        if ext:
            for w in ext:  # automatic speculation that proved not worth it: plain decoding from here on
                if w.req.spec and w.req.adaptive and gave_up(w.req.sampler):
                    w.req.spec, w.req.draft, w.req.tail = 0, None, []
            spec = any(w.req.spec for w in ext)
            try:
                journals = self._draft([w for w in ext if w.req.spec and w.kind == "decode"]) if spec else []
                states = [w.req.state for w in ext if w.req.state is not None]
                chunks = [w.tokens for w in ext if w.tokens is not None]
                assert len(states) == len(chunks) == len(ext)
                if spec:
                    with record(journals):
                        rows, hidden = self.model.extend_hidden(
                            states, chunks, last_only=[w.verify is None for w in ext]
                        )
                    for w, h in zip(ext, hidden, strict=True):
                        w.hidden = h if w.req.spec else None
                    logits = [lg if w.verify is not None else lg[-1] for w, lg in zip(ext, rows, strict=True)]
                else:
                    last = self.model.extend(states, chunks, last_only=True)
                    assert isinstance(last, list)
                    logits = last
            except Exception as e:
                with self._lock:
                    for w in ext:
                        if w.req.phase != "done":
                            self._end(w.req, "error", EngineError(f"forward failed: {type(e).__name__}: {e}"))
                return [None] * len(work)
            assert isinstance(logits, list)
            it = iter(logits)
            out = [next(it) if w.tokens is not None else None for w in work]
        with self._lock:
            for w in ext:
                n = len(w.tokens or ())
                if w.kind == "prefill":
                    self._prefill_tokens += n
                else:
                    self._decode_tokens += n
        return out

    def _draft(self, work: list[_Work]) -> list[Journal]:
        """Speculating decodes: the MTP block drafts each one's tokens (one batched call), which join its
        chunk; returns the journals the verify extend records into."""
        ks, ms = [], []
        for w in work:
            req = w.req
            assert req.draft is not None and req.state is not None
            limit = min(self.config.max_seq_len, req.capacity)
            window = self.model.config.window_size
            ks.append(drafts_for(req.sampler, req.state, req.draft, req.spec, req.adaptive, limit, window))
            ms.append(lookups_for(req.sampler, req.state, ks[-1], limit, window))
        drafts = [w.req.draft for w in work if w.req.draft is not None]
        toks, probs, mtp_journals = draft_tokens(
            self.model, drafts, [w.req.next_token for w in work], ks, [w.req.sampler for w in work], ms
        )
        journals = []
        for w, t, q, mj, k in zip(work, toks, probs, mtp_journals, ks, strict=True):
            assert w.req.state is not None
            w.tokens = [w.req.next_token, *t]
            w.verify = _Verify(q, main_journal(self.model, w.req.state, len(w.tokens)), mj, looked=len(t) - k)
            journals.append(w.verify.journal)
        return journals

    def _postprocess(self, work: list[_Work], logits: list[torch.Tensor | None]) -> list[int]:
        sampled = []
        for w, lg in zip(work, logits, strict=True):
            req = w.req
            if req.phase == "done" or (lg is None and w.kind != "ready"):
                continue
            try:
                if w.verify is not None:
                    assert lg is not None
                    self._settle(req, w, lg)
                    sampled.append(req.handle.id)
                    continue
                if w.hidden is not None:
                    self._absorb(req, w)
                if w.kind in ("decode", "feed"):
                    req.sampler.result.steps += 1
                if w.kind == "prefill":
                    req.fed += len(w.tokens or ())
                    pos = req.offset + req.fed
                    if pos in req.points and req.state is not None and req.path is not None:
                        self.cache.insert(req.path[:pos], req.state.snapshot(), req)
                    if req.fed < len(req.prompt):
                        continue
                elif w.kind == "feed":
                    req.last_logits = lg
                    self._finish(req)
                    continue
                elif w.kind == "ready":
                    lg, req.ready = req.ready, None
                assert lg is not None
                self._sample(req, lg)
                sampled.append(req.handle.id)
            except Exception as e:  # this request's own failure (e.g. its stop-string decoder)
                self._end(
                    req, "error", EngineError(f"request {req.handle.id} failed: {type(e).__name__}: {e}")
                )
        return sampled

    def _absorb(self, req: _Request, w: _Work) -> None:
        """A speculating request's prefill chunk or fed token: its streams go to the MTP block (a given MTP
        state continues; without one, the prompt's last chunks start a cold one when the prompt is done)."""
        assert w.hidden is not None and w.tokens is not None and req.state is not None
        d, ids = req.draft, list(w.tokens)
        if d is not None and d.main_pos == req.state.pos - len(ids):
            req.draft = start_draft(self.model, d, req.state, w.hidden, ids)
            return
        req.draft = None
        req.tail.append((w.hidden, ids))
        while sum(len(t) for _, t in req.tail[1:]) >= COLD_WINDOW:
            req.tail.pop(0)
        if w.kind == "prefill" and req.fed + len(ids) >= len(req.prompt):
            h = torch.cat([t for t, _ in req.tail])
            tail = [i for _, t in req.tail for i in t]
            # the block consumes the kept tail; prompt lookup indexes the whole prompt, as generate() does
            before = req.prompt[: max(0, len(req.prompt) - len(tail))]
            req.draft = start_draft(self.model, None, req.state, h, tail, before)
            req.tail = []

    def _settle(self, req: _Request, w: _Work, logits: torch.Tensor) -> None:
        """A speculating decode after its verify: the kept drafts and the next token, then as `_sample`."""
        assert w.verify is not None and w.hidden is not None and req.state is not None
        assert req.draft is not None and w.tokens is not None
        v, raw = w.verify, logits
        if req.processor is not None:  # each verified position as plain decoding would have seen it
            done, drafts = list(req.sampler.result.token_ids), w.tokens[1:]
            logits = torch.stack([req.processor(done + drafts[:i], lg) for i, lg in enumerate(logits)])
        toks, ended = settle(
            req.sampler,
            req.state,
            req.draft,
            v.journal,
            v.mtp_journal,
            w.tokens,
            v.probs,
            logits,
            w.hidden,
            v.looked,
        )
        for tok in toks:
            req.handle._push(tok)
        if ended is None:
            self._advance(req, toks[-1])
            return
        if req.sampler.params.feed_last:
            req.last_logits = raw[ended]
        self._finish(req)

    def _sample(self, req: _Request, logits: torch.Tensor) -> None:
        """generate.py's loop body for one sequence: sample, stop rules, then decode / feed the last / end."""
        s = req.sampler
        if req.processor is not None:
            logits = req.processor(list(s.result.token_ids), logits)
        tok = sample(logits, s.params, s.gen)
        s.push(tok)
        req.handle._push(tok)
        self._advance(req, tok)

    def _advance(self, req: _Request, tok: int) -> None:
        """After `tok` was chosen (pushed, not in the state): decode it next, feed it last, or end."""
        s, state = req.sampler, req.state
        assert state is not None
        room = state.pos < min(self.config.max_seq_len, req.capacity)
        if not s.done and room:
            req.phase, req.next_token = "decode", tok
        elif s.done and s.params.feed_last and room:
            req.phase, req.next_token = "feed", tok
        else:
            s.done = True
            s.result.pending = [tok]
            self._finish(req)

    def _finish(self, req: _Request) -> None:
        r, state = req.sampler.result, req.state
        assert state is not None
        kept = None
        if req.keep_state:  # a growable copy: the running state is preallocated for this request only
            kept = state.snapshot()
        last = req.last_logits.detach().clone() if req.keep_state and req.last_logits is not None else None
        req.phase = "done"
        req.handle._finish(
            EngineResult(
                token_ids=list(r.token_ids),
                finish_reason=r.finish_reason,
                stop=r.stop,
                pending=list(r.pending),
                prompt_tokens=len(req.prompt),
                cached_tokens=req.cached,
                state=kept,
                last_logits=last,
                draft=req.draft if req.keep_state else None,
                steps=r.steps,
                drafted=r.drafted,
                accepted=r.accepted,
                lookup_drafted=r.lookup_drafted,
                lookup_accepted=r.lookup_accepted,
            )
        )

    def _reap(self) -> None:
        """Free the states of ended requests and drop their cache promises."""
        keep = []
        for req in self._running:
            if req.phase != "done":
                keep.append(req)
                continue
            self.cache.release(req)
            # a decoder slot returns to its slab when the state is garbage (its weakref finalizer); calling
            # decoder.release() as well would put the slot on the free list twice
            req.state = req.ready = req.last_logits = req.draft = None
            self._reserved -= req.reserve
            self._by_id.pop(req.handle.id, None)
        self._running = keep
        for req in [r for r in self._waiting if r.phase == "done"]:
            self._waiting.remove(req)
            self._by_id.pop(req.handle.id, None)


_LIVE: weakref.WeakSet[Engine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop scheduler threads before the interpreter tears torch down under them."""
    for eng in list(_LIVE):
        eng.close()


__all__ = ["Engine", "EngineStats", "LogitsProcessor", "StepRecord"]
