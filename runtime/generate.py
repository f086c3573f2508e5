"""Token generation on top of `V4Model.extend`: sampling, stop conditions, streaming, batched decoding.

Tokenizer-agnostic on purpose: text-level stop strings need only a `decode(ids) -> str` callable, so this
module does not depend on any tokenizer's internals. Defaults follow V4's `generation_config.json` (spec §11):
temperature 1.0, top-p 1.0, EOS id 1. The end of a DSML tool-call block is a stop string by default, so an
agent gets control back as soon as the model has finished writing its calls.

State contract: the prompt is appended to the given state; every sampled token except the last one is fed back
through the model. With `feed_last=True` (default) the last one is fed too, so afterwards `state.pos` equals
prompt + generated tokens and the next turn extends with just its new suffix. With `feed_last=False` the last
token is returned in `GenerationResult.pending` and must lead the next extend (one forward pass saved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from agentkit.runtime.decode import GreedyStep
from agentkit.runtime.model import V4Model
from agentkit.runtime.speculative import DraftState, speculative_loop
from agentkit.runtime.state import SequenceState

DSML_TOOL_CALLS_END = "</｜DSML｜tool_calls>"
EOS_TOKEN_ID = 1

FinishReason = Literal["stop_token", "stop_sequence", "stop_string", "length"]


class GenerationError(ValueError):
    """Invalid sampling parameters or generation request."""


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    """0 = greedy (argmax)."""
    top_p: float = 1.0
    top_k: int = 0
    """0 = no top-k filter."""
    seed: int | None = None
    max_tokens: int = 256
    stop_token_ids: tuple[int, ...] = (EOS_TOKEN_ID,)
    stop_sequences: tuple[tuple[int, ...], ...] = ()
    """Token-id sequences that end generation (e.g. a tokenized DSML closing tag)."""
    stop_strings: tuple[str, ...] = (DSML_TOOL_CALLS_END,)
    """Text-level stops; only checked when a `decode` callable is given."""
    feed_last: bool = True
    speculative: int | None = None
    """Tokens the MTP block drafts per step (speculative decoding, runtime/speculative.py): 0 = off,
    k >= 1 = draft k and verify them in one extend of k + 1 tokens, None = `AUTO_SPECULATIVE`. Greedy output
    is the plain argmax sequence; sampled output has the plain distribution."""

    lookup: int | None = None
    """Prompt-lookup drafts after the MTP block's per step (runtime/lookup.py): 0 = off, m >= 1 = up to m
    tokens that followed the sequence's current n-gram earlier in it, None = `speculative.AUTO_LOOKUP` for
    greedy requests, off for sampled ones. Only with MTP drafts; verified like them (same output)."""

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise GenerationError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.speculative is not None and self.speculative < 0:
            raise GenerationError(f"speculative must be >= 0 or None, got {self.speculative}")
        if self.lookup is not None and self.lookup < 0:
            raise GenerationError(f"lookup must be >= 0 or None, got {self.lookup}")
        if any(len(s) == 0 for s in self.stop_sequences) or any(s == "" for s in self.stop_strings):
            raise GenerationError("empty stop sequence/string")


GREEDY = SamplingParams(temperature=0.0)

AUTO_SPECULATIVE = 1
"""Draft length when `SamplingParams.speculative` is None: greedy requests to a model with an MTP block
speculate with 1 MTP draft per step plus up to `speculative.AUTO_LOOKUP` prompt-lookup drafts, and a sequence
whose MTP acceptance falls below `speculative.AUTO_MIN_ACCEPTANCE` after a few drafts stops drafting (random
weights). agentkit-tiny on CPU (bench/speculative.py, held-out agent turns): every MTP draft accepted at
k = 1; with lookup 2.9 tokens per step and decode 1.67-1.75x as fast as plain on 1 and 2 threads (MTP alone
1.35-1.37x, k = 2 1.46-1.49x). Not by default for states of a static decoder (its one-token step is what CUDA
graphs replay; a verify runs the general path) nor for sampled requests (speculative sampling keeps the
distribution, not the token sequence a given seed produced before)."""


def draft_length(model: V4Model, params: Sequence[SamplingParams]) -> tuple[int, bool]:
    """(k, adaptive): the draft length a request runs with (0 = plain decoding) and whether it is the
    automatic choice (which may switch itself off per sequence)."""
    if not model.mtp:
        return 0, False
    asked = [p.speculative for p in params]
    if any(a is not None for a in asked):
        return max((a or 0) for a in asked), False
    greedy = all(p.temperature == 0 or p.top_k == 1 for p in params)
    if AUTO_SPECULATIVE and greedy and model._decoder is None:
        return AUTO_SPECULATIVE, True
    return 0, False


def _run(
    model: V4Model,
    states: Sequence[SequenceState],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    seqs: Sequence[_Seq],
    drafts: Sequence[DraftState | None] | None = None,
) -> Iterator[tuple[int, int]]:
    """The plain loop, or the speculative one when the request asks for drafts (runtime/speculative.py);
    a sequence whose own `speculative` is 0 gets no drafts in a speculative batch."""
    _validate(states, prompts, seqs)
    k, adaptive = draft_length(model, [s.params for s in seqs])
    if k == 0 and _pipelined(model, states, seqs):
        return _greedy_loop(model, states, prompts, seqs)
    if k == 0:
        return _loop(model, states, prompts, seqs)
    return speculative_loop(model, states, prompts, seqs, k, drafts, sample=sample, adaptive=adaptive)


def _validate(states: Sequence[SequenceState], prompts: Sequence[object], seqs: Sequence[_Seq]) -> None:
    if not (len(states) == len(prompts) == len(seqs)) or not states:
        raise GenerationError("need one prompt and one SamplingParams per state")
    if any(len(p) == 0 for p in prompts):  # type: ignore[arg-type]
        raise GenerationError("prompt must not be empty (the next token needs the logits of a last token)")


@dataclass
class GenerationResult:
    token_ids: list[int] = field(default_factory=list)
    """Generated tokens, including the stop token / the tokens of a stop sequence or string."""
    finish_reason: FinishReason = "length"
    stop: int | str | tuple[int, ...] | None = None
    pending: list[int] = field(default_factory=list)
    """Tokens generated but not yet in the state (only with feed_last=False)."""
    steps: int = 0
    """Main-model decode forwards after the prompt's (a speculative step is one verify extend)."""
    drafted: int = 0
    """Tokens drafted, by the MTP block and by prompt lookup (0 without speculation)."""
    accepted: int = 0
    """Drafted tokens the main model kept."""
    lookup_drafted: int = 0
    """Of `drafted`, those proposed by prompt lookup (runtime/lookup.py)."""
    lookup_accepted: int = 0
    """Of `accepted`, those proposed by prompt lookup."""

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_step(self) -> float:
        return len(self.token_ids) / self.steps if self.steps else float(len(self.token_ids))


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token id from fp32 logits [V]. Sampling runs on CPU so a seed gives the same ids on any device."""
    lg = logits.detach().float().cpu()
    if params.temperature == 0 or params.top_k == 1:
        return int(lg.argmax())
    lg = lg / params.temperature
    if 0 < params.top_k < lg.numel():
        kth = torch.topk(lg, params.top_k).values[-1]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    probs = torch.softmax(lg, dim=-1)
    if params.top_p < 1:
        sp, si = torch.sort(probs, descending=True)
        cum = sp.cumsum(0)
        drop = (cum - sp) >= params.top_p  # keep the smallest prefix whose mass reaches top_p
        sp = sp.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, si, sp)
    return int(torch.multinomial(probs, 1, generator=generator))


class _Seq:
    def __init__(self, params: SamplingParams, decode: Callable[[list[int]], str] | None) -> None:
        self.params = params
        self.decode = decode
        self.result = GenerationResult()
        self.gen = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.done = False
        self.draft: DraftState | None = None
        longest = max((len(s) for s in params.stop_strings), default=0)
        self.text_window = 4 * longest + 16

    def push(self, tok: int) -> None:
        r, p = self.result, self.params
        r.token_ids.append(tok)
        if tok in p.stop_token_ids:
            r.finish_reason, r.stop = "stop_token", tok
        elif any(len(s) <= len(r.token_ids) and tuple(r.token_ids[-len(s) :]) == s for s in p.stop_sequences):
            r.finish_reason = "stop_sequence"
            r.stop = next(s for s in p.stop_sequences if tuple(r.token_ids[-len(s) :]) == s)
        elif self.decode is not None and p.stop_strings:
            tail = self.decode(r.token_ids[-self.text_window :])
            hit = next((s for s in p.stop_strings if s in tail), None)
            if hit is not None:
                r.finish_reason, r.stop = "stop_string", hit
        if r.finish_reason != "length" or len(r.token_ids) >= p.max_tokens:
            self.done = True


def _loop(
    model: V4Model,
    states: Sequence[SequenceState],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    seqs: Sequence[_Seq],
) -> Iterator[tuple[int, int]]:
    """Yields (sequence index, token id) as tokens are chosen; all sequences advance in one batched extend."""
    if not (len(states) == len(prompts) == len(seqs)) or not states:
        raise GenerationError("need one prompt and one SamplingParams per state")
    if any(len(p) == 0 for p in prompts):
        raise GenerationError("prompt must not be empty (the next token needs the logits of a last token)")
    limit = model.config.max_seq_len
    logits = model.extend(list(states), list(prompts), last_only=True)
    assert isinstance(logits, list)
    active = list(range(len(states)))
    while active:
        going: list[int] = []
        finishing: list[int] = []
        for i, lg in zip(active, logits, strict=True):
            seq = seqs[i]
            tok = sample(lg, seq.params, seq.gen)
            seq.push(tok)
            yield i, tok
            room = states[i].pos < limit
            if not seq.done and room:
                going.append(i)
            elif seq.done and seq.params.feed_last and room:
                finishing.append(i)
            else:  # finished without feeding, or the sequence is at max_seq_len
                seq.done = True
                seq.result.pending = [tok]
        run = going + finishing
        if not run:
            break
        for i in run:
            seqs[i].result.steps += 1
        out = model.extend(
            [states[i] for i in run], [[seqs[i].result.token_ids[-1]] for i in run], last_only=True
        )
        assert isinstance(out, list)
        logits, active = out[: len(going)], going


def _pipelined(model: V4Model, states: Sequence[SequenceState], seqs: Sequence[_Seq]) -> bool:
    """Greedy requests that feed their last token, all in one static decoder: `_greedy_loop` applies."""
    dec = model._decoder
    return (
        dec is not None
        and len(states) <= dec.max_batch
        and all(dec.owns(s) for s in states)
        and all((s.params.temperature == 0 or s.params.top_k == 1) and s.params.feed_last for s in seqs)
    )


def _greedy_loop(
    model: V4Model,
    states: Sequence[SequenceState],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    seqs: Sequence[_Seq],
) -> Iterator[tuple[int, int]]:
    """`_loop` for greedy requests in a static decoder, pipelined: the step that feeds token n is launched
    with token n still on the device (`StaticDecoder.step_greedy`), and only then does the host read token n,
    apply the stop rules and yield it, while the GPU runs that step.

    The same tokens, steps and final states as `_loop`: with `feed_last` every chosen token is fed whether
    or not it ends its sequence, so launching the feed before the stop check never feeds a token `_loop`
    would not; whether there is room (max_seq_len) depends only on positions the host knows. The one
    difference: a caller that abandons the stream after token n finds token n already fed. When a sequence
    ends, the rest continue after one synchronous read (their rows of the device ids no longer line up)."""
    dec = model._decoder
    assert dec is not None
    limit = model.config.max_seq_len
    logits = model.extend(list(states), list(prompts), last_only=True)
    assert isinstance(logits, list)
    rows = list(range(len(states)))
    chosen: dict[int, int] | None = {
        i: sample(lg, seqs[i].params, None) for i, lg in zip(rows, logits, strict=True)
    }
    last: GreedyStep | None = None  # the launched step whose argmax rows are `rows`, while chosen is None
    while rows:
        feed = [i for i in rows if states[i].pos < limit]
        if chosen is None and feed != rows:
            assert last is not None
            chosen = dict(zip(rows, last.tolist(), strict=True))
        launched: GreedyStep | None = None
        if feed:
            sts = [states[i] for i in feed]
            launched = dec.step_greedy(sts, last if chosen is None else [chosen[i] for i in feed])  # type: ignore[arg-type]
            for i in feed:
                seqs[i].result.steps += 1
        if chosen is None:
            assert last is not None
            chosen = dict(zip(rows, last.tolist(), strict=True))
        going = []
        for i in rows:
            seq, tok = seqs[i], chosen[i]
            seq.push(tok)
            yield i, tok
            if i not in feed:  # at max_seq_len: nothing fed
                seq.done, seq.result.pending = True, [tok]
            elif not seq.done:
                going.append(i)
        last, rows = launched, going
        if going and going != feed:  # a sequence ended: the rest continue from host ids
            assert last is not None
            chosen = dict(zip(feed, last.tolist(), strict=True))
        else:
            chosen = None


class TokenStream:
    """Iterate to receive token ids as they are generated; `.result` is complete once exhausted."""

    def __init__(
        self,
        model: V4Model,
        state: SequenceState,
        prompt: Sequence[int] | torch.Tensor,
        params: SamplingParams = SamplingParams(),
        decode: Callable[[list[int]], str] | None = None,
        draft: DraftState | None = None,
    ) -> None:
        self._seq = _Seq(params, decode)
        self._it = (tok for _, tok in _run(model, [state], [prompt], [self._seq], [draft]))

    @property
    def result(self) -> GenerationResult:
        return self._seq.result

    @property
    def draft(self) -> DraftState | None:
        """The MTP block's state after speculative generation (pass it to the next call on the same state
        to keep the block's context across turns; without it the next call starts the block cold)."""
        return self._seq.draft

    def __iter__(self) -> Iterator[int]:
        return self._it


def generate(
    model: V4Model,
    state: SequenceState,
    prompt: Sequence[int] | torch.Tensor,
    params: SamplingParams = SamplingParams(),
    decode: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int], None] | None = None,
    draft: DraftState | None = None,
) -> GenerationResult:
    stream = TokenStream(model, state, prompt, params, decode, draft)
    for tok in stream:
        if on_token is not None:
            on_token(tok)
    return stream.result


def generate_batch(
    model: V4Model,
    states: Sequence[SequenceState],
    prompts: Sequence[Sequence[int] | torch.Tensor],
    params: SamplingParams | Sequence[SamplingParams] = SamplingParams(),
    decode: Callable[[list[int]], str] | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Generate for several sequences at once (decode steps batched); `on_token(seq_index, token_id)`."""
    plist = [params] * len(states) if isinstance(params, SamplingParams) else list(params)
    seqs = [_Seq(p, decode) for p in plist]
    for i, tok in _run(model, states, prompts, seqs):
        if on_token is not None:
            on_token(i, tok)
    return [s.result for s in seqs]


__all__ = [
    "AUTO_SPECULATIVE",
    "DSML_TOOL_CALLS_END",
    "EOS_TOKEN_ID",
    "GREEDY",
    "GenerationError",
    "GenerationResult",
    "SamplingParams",
    "TokenStream",
    "draft_length",
    "generate",
    "generate_batch",
    "sample",
]
