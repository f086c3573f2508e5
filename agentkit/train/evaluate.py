"""Quick evaluation of a trained model on episodes: greedy replay, and its one-pass equivalent.

`replay` is the literal check (below). `forced` gets the same verdicts from one full-sequence forward
per batch: greedy decoding reproduces a reference turn exactly if and only if, with the reference
prefix fed in, the argmax at every position of the turn is the reference's next token (each greedy
step then sees exactly the reference prefix). That makes a 500-episode evaluation a few forward passes
instead of thousands of decode steps; tests check the two agree.

`replay`:

Replay feeds each episode's context (system, task, tool results) and lets the model generate every
assistant turn greedily, token by token, with the same incremental state the serving engine uses. A turn
counts only if it reproduces the reference turn exactly; the episode succeeds if every turn does. Tool
results in the episode are the real tools' outputs for the reference calls, so an exact turn means the
real loop would have sent the same calls and received the same results: success here is success
through the loop, measured without the loop's machinery. Many episodes decode together as one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agentkit.runtime.model import V4Model
from agentkit.runtime.state import SequenceState
from agentkit.train.episodes import Episode


@dataclass
class _Run:
    episode: Episode
    turns: list[tuple[list[int], list[int]]]
    """(context ids to feed, reference ids to generate) per trained turn."""
    state: SequenceState | None = None
    turn: int = 0
    pos: int = 0
    pending: list[int] = field(default_factory=list)
    done: bool = False
    ok: bool = False
    generated: list[int] = field(default_factory=list)


def _turns(encode: Callable[[str], list[int]], e: Episode) -> list[tuple[list[int], list[int]]]:
    turns: list[tuple[list[int], list[int]]] = []
    ctx: list[int] = []
    for seg in e.segments:
        ids = encode(seg.text)
        if seg.loss:
            turns.append((ctx, ids))
            ctx = []
        else:
            ctx = ctx + ids  # untrained mistakes are fed like context
    return turns


@dataclass(frozen=True)
class Failure:
    episode_id: str
    expected: str
    generated: str
    generated_ids: tuple[int, ...]
    """The failed turn's tokens up to and including the first wrong one."""


@dataclass
class ReplayResult:
    episodes: int
    succeeded: int
    turns: int
    turns_ok: int
    by_family: dict[str, tuple[int, int]]
    failures: list[Failure]
    """The first few failed turns."""

    @property
    def success_rate(self) -> float:
        return self.succeeded / max(1, self.episodes)

    def summary(self) -> dict[str, object]:
        return {
            "episodes": self.episodes,
            "success_rate": round(self.success_rate, 4),
            "turn_accuracy": round(self.turns_ok / max(1, self.turns), 4),
            "by_family": {f: f"{ok}/{n}" for f, (ok, n) in sorted(self.by_family.items())},
        }


@torch.no_grad()
def forced(
    model: V4Model,
    encode: Callable[[str], list[int]],
    episodes: Sequence[Episode],
    *,
    batch: int = 16,
    pad_id: int = 2,
) -> ReplayResult:
    """Teacher-forced exact-match verdicts per turn and episode (see module docstring)."""
    model.eval()
    dev = model.device
    turns = turns_ok = succeeded = 0
    by_family: dict[str, tuple[int, int]] = {}
    failures: list[Failure] = []
    for start in range(0, len(episodes), batch):
        group = episodes[start : start + batch]
        rows: list[list[int]] = []
        spans: list[list[tuple[int, int]]] = []
        for e in group:
            ids: list[int] = []
            sp: list[tuple[int, int]] = []
            for seg in e.segments:
                part = encode(seg.text)
                if seg.loss:
                    sp.append((len(ids), len(ids) + len(part)))
                ids.extend(part)
            rows.append(ids)
            spans.append(sp)
        width = max(len(r) for r in rows)
        x = torch.full((len(rows), width), pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            x[i, : len(r)] = torch.tensor(r)
        x = x.to(dev)
        logits = model(x).logits  # fp32, as the embedded backend runs it
        pred = logits.argmax(-1).cpu()
        for i, e in enumerate(group):
            ok_all = True
            turns += len(spans[i])
            for a, b in spans[i]:
                ref = torch.tensor(rows[i][a:b])
                got = pred[i, a - 1 : b - 1]
                if torch.equal(got, ref):
                    turns_ok += 1
                    continue
                ok_all = False  # like replay: the episode stops at its first wrong turn
                if len(failures) < 5:
                    first_bad = int((got != ref).nonzero()[0])
                    gen = tuple(int(t) for t in [*ref[:first_bad].tolist(), int(got[first_bad])])
                    failures.append(Failure(e.id, "", "", gen))
                break
            succeeded += ok_all
            ok, n = by_family.get(e.family, (0, 0))
            by_family[e.family] = (ok + int(ok_all), n + 1)
    return ReplayResult(len(episodes), succeeded, turns, turns_ok, by_family, failures)


@torch.no_grad()
def replay(
    model: V4Model,
    encode: Callable[[str], list[int]],
    decode: Callable[[Sequence[int]], str],
    episodes: Sequence[Episode],
    *,
    batch: int = 32,
    keep_failures: int = 5,
) -> ReplayResult:
    model.eval()
    runs_all = [_Run(e, _turns(encode, e)) for e in episodes]
    turns = sum(len(r.turns) for r in runs_all)
    turns_ok = 0
    failures: list[Failure] = []
    for start in range(0, len(runs_all), batch):
        runs = runs_all[start : start + batch]
        for r in runs:
            r.state = model.new_state()
            r.pending = list(r.turns[0][0])
        while True:
            active = [r for r in runs if not r.done]
            if not active:
                break
            states = [r.state for r in active if r.state is not None]
            logits = model.extend(states, [r.pending for r in active], last_only=True)
            assert isinstance(logits, list)
            for r, lg in zip(active, logits, strict=True):
                tok = int(torch.argmax(lg))
                ref = r.turns[r.turn][1]
                r.generated.append(tok)
                if tok != ref[r.pos]:
                    r.done = True
                    if len(failures) < keep_failures:
                        gen = tuple(r.generated)
                        failures.append(Failure(r.episode.id, decode(ref), decode(gen), gen))
                    continue
                r.pos += 1
                if r.pos < len(ref):
                    r.pending = [tok]
                    continue
                turns_ok += 1
                r.turn += 1
                r.pos = 0
                r.generated = []
                if r.turn == len(r.turns):
                    r.done = r.ok = True
                else:
                    r.pending = [tok, *r.turns[r.turn][0]]
        for r in runs:  # free the per-sequence state as soon as its batch is finished
            r.state = None
    by_family: dict[str, tuple[int, int]] = {}
    for r in runs_all:
        ok, n = by_family.get(r.episode.family, (0, 0))
        by_family[r.episode.family] = (ok + int(r.ok), n + 1)
    return ReplayResult(
        episodes=len(runs_all),
        succeeded=sum(r.ok for r in runs_all),
        turns=turns,
        turns_ok=turns_ok,
        by_family=by_family,
        failures=failures,
    )
