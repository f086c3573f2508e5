"""Name and value pools for synthetic episodes, split so held-out episodes use nothing seen in training.

Names come from disjoint word lists per split. The training split also draws invented words (seeded
random syllables, never a held-out word): with real words alone every training name is one whole BPE
token, so the pieces a held-out name breaks into ("z", "ep", "h", "y", "r" for "zephyr") never occur
in training at all, their embeddings stay at their random init, and no amount of training teaches the
model to copy them (measured: agentkit-tiny at 32% held-out success with 0% on every family that
copies a name, while arithmetic, whose digit pieces are shared, reached 98%).

Numbers are split by a fixed multiplicative hash rather than by range: a held-out *value* never
occurs in training, yet its digits tokenize into the same 1-3 digit pieces the model has learned to
read and copy (a range split would hand the model untrained digit tokens, which measures the
tokenizer, not the agent).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")

_WORDS: dict[str, tuple[str, str]] = {
    # kind: (train words, held-out words), space separated
    "noun": (
        "apple river stone cloud garden harbor lantern meadow orbit pepper quartz rocket saddle tiger "
        "violet willow anchor badge cedar dragon ember falcon glacier hammer island jungle kettle lemon "
        "marble nectar oyster pebble quiver ribbon summit tunnel velvet walnut yonder zenith beacon "
        "canyon dune feather grove hollow ivory jasper kiosk ladder mosaic nugget otter parrot",
        "acorn bison cobalt dahlia egret fjord gazelle heron igloo juniper koala lagoon mango nomad "
        "opal puffin quokka raven sequoia tundra umber vortex wombat yarrow zephyr",
    ),
    "adj": (
        "red blue green quick calm bright dark early late small large quiet loud sharp soft warm cold "
        "fresh plain rapid smooth steady tidy wild brave clever gentle humble lucky merry noble proud",
        "amber crisp dusty eager fuzzy golden hazy icy jolly keen lofty misty nimble oaken polar rusty",
    ),
    "person": (
        "Alice Bruno Clara Diego Elena Farid Greta Hiro Irene Jonas Kavya Liam Maya Nikos Olga Pavel "
        "Quinn Rosa Samir Tara Umar Vera Wen Xavier Yara Zane Ada Boris Chloe Dmitri",
        "Amara Bastian Cosima Dario Esme Florin Ginevra Hamid Ilse Joaquin Kenji Leonie Matteo Noor",
    ),
    "city": (
        "Lisbon Oslo Nairobi Lima Hanoi Quito Dublin Perth Tunis Riga Porto Cusco Bergen Malmo Graz "
        "Kyoto Leeds Turin Gdansk Bilbao",
        "Accra Tartu Hobart Split Zagreb Aarhus Cork Durban Oaxaca Sapporo",
    ),
    "item": (
        "bolts nails gears cables lamps chairs tables pens notebooks cups plates brushes screws tiles "
        "boxes ropes bottles candles hats gloves",
        "valves hinges rivets spools flasks kettles mugs buckets ladles sieves",
    ),
    "ext": ("txt md log cfg", "txt md log cfg"),
    "dir": ("docs data notes reports archive logs inbox src", "vault stash ledger records cache misc"),
}


_CONSONANTS = "bcdfghjklmnpqrstvwxz"
_VOWELS = "aeiouy"
_INVENTED_KINDS = ("noun", "adj", "person", "city", "item", "dir")


def _invented_words(kind: str, n: int, rng: random.Random) -> tuple[str, ...]:
    """`n` distinct non-words for `kind`, drawn from `rng`.

    Each is 2-4 pieces: a made-up syllable (optional consonant onset, one or two vowels, optional
    coda) or a 2-5 letter chunk of an English word the templates or the training pools use ("umber" of
    "number", "ault" of "default"). Syllables cover every letter and letter pair; chunks make the
    byte-pair merges of English appear inside names, which is how held-out names tokenize. Held-out
    names and the templates' own words are never drawn, and no chunk comes from a held-out name.
    """
    banned = _banned_words()
    chunks = _chunk_words()
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        pieces = []
        for _ in range(rng.randint(2, 4)):
            if rng.random() < 0.4:
                word = rng.choice(chunks)
                size = rng.randint(2, min(5, len(word)))
                start = rng.randint(0, len(word) - size)
                pieces.append(word[start : start + size])
                continue
            syl = "".join(rng.choice(_CONSONANTS) for _ in range(rng.choice((0, 1, 1, 1, 2))))
            syl += "".join(rng.choice(_VOWELS) for _ in range(1 + (rng.random() < 0.2)))
            if rng.random() < 0.35:
                syl += rng.choice(_CONSONANTS)
            pieces.append(syl)
        w = "".join(pieces)
        if kind in ("person", "city"):
            w = w.capitalize()
        elif kind == "item":
            w += "s"
        if w.lower() in banned or w in seen:
            continue
        seen.add(w)
        out.append(w)
    return tuple(out)


@cache
def _chunk_words() -> tuple[str, ...]:
    """Lower-case words (4+ letters) of the templates and the training pools, none a held-out name."""
    heldout = {w.lower() for _, ho in _WORDS.values() for w in ho.split()}
    return tuple(sorted(w for w in _banned_words() if len(w) >= 4 and w not in heldout))


@cache
def _banned_words() -> frozenset[str]:
    """Every held-out name and every word the episode templates use (so an invented training name can
    never be mistaken for either)."""
    words = {w.lower() for _, ho in _WORDS.values() for w in ho.split()}
    words |= {w.lower() for tr, _ in _WORDS.values() for w in tr.split()}
    here = Path(__file__).parent
    for src in ("families.py", "episodes.py", "toolbox.py", "calc.py"):
        words |= {w.lower() for w in re.findall(r"[A-Za-z]+", (here / src).read_text(encoding="utf-8"))}
    return frozenset(words)


@dataclass(frozen=True)
class Pools:
    """Everything one split may draw from; build with `pools(split)`."""

    split: Split
    noun: tuple[str, ...]
    adj: tuple[str, ...]
    person: tuple[str, ...]
    city: tuple[str, ...]
    item: tuple[str, ...]
    ext: tuple[str, ...]
    dir: tuple[str, ...]

    def owns(self, n: int) -> bool:
        return split_of_number(n) == self.split

    def number(self, rng: random.Random, lo: int, hi: int) -> int:
        """A uniform integer in [lo, hi] that belongs to this split (rejection sampling)."""
        if hi - lo < 20:
            raise ValueError(f"range [{lo}, {hi}] too small to hold values of both splits reliably")
        while True:
            n = rng.randint(lo, hi)
            if self.owns(n):
                return n

    def filename(self, rng: random.Random, ext: str | None = None) -> str:
        stem = f"{rng.choice(self.adj)}_{rng.choice(self.noun)}"
        return f"{stem}.{ext or rng.choice(self.ext)}"


def split_of_number(n: int) -> Split:
    """Fixed hash partition of the integers: about one in five belongs to the held-out split."""
    return "heldout" if ((abs(n) * 2654435761) & 0xFFFFFFFF) % 5 == 0 else "train"


@cache
def pools(split: Split) -> Pools:
    """The split's real-word pools (what `episode_pools` gives held-out episodes)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    i = SPLITS.index(split)
    fields = {kind: tuple(words[i].split()) for kind, words in _WORDS.items()}
    return Pools(split=split, **fields)


def episode_pools(seed: int, split: Split, index: int) -> Pools:
    """The pools episode `index` draws from. Held-out: the held-out real words. Training: the training
    real words plus as many invented words, fresh for every episode (seeded by the episode, drawn from a
    generator of their own so the episode's other choices are unchanged).

    Fresh per episode, not a fixed list: from a fixed list of invented words the model memorizes them
    like real ones (measured: it answered held-out questions with invented training words) instead of
    learning to copy whatever name the context holds, which is the only thing that transfers.
    """
    base = pools(split)
    if split != "train":
        return base
    rng = random.Random(f"agentkit-invented:{seed}:{index}")
    fields = {k: getattr(base, k) + _invented_words(k, len(getattr(base, k)), rng) for k in _INVENTED_KINDS}
    return replace(base, **fields)
