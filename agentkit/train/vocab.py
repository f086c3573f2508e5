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
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Literal

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


_TEMPLATE_WORDS = (
    "a abc act add adj after against agent agentkit all also always am among amount an and annotations "
    "another answer answered answers any anyio appear appears append are args arguments arithmetic as "
    "ascii asdict asked asks assistant ast async at await awk b back bad baseexceptiongroup be because "
    "before behind between binop binops block blocking body bool both boundaries break breaks bug build "
    "built builtin but buys by c calc calcerror calculate calculator call callable calling calls can "
    "cannot capacitylimiter cfg chain changed changes character characters checks choice choices choose "
    "choosing chosen cities city class classmethod cls cm code collections color column come comes "
    "command compile compute computed concurrency concurrently constant contain contains content contents "
    "context continue conversation conversion convert copy corrected cost count counting cpu create csv "
    "ctx current cut d dataclass dataclasses date dates datetime day days dd decimal decimals def default "
    "defined deliberate denominator describes descriptions deterministic dict dictreader difference dir "
    "direct direction directory disagreed distinct div divided division do docstring does done draft "
    "drawn driver dsml dst dt dumps e each earlier eg either elif else encode encoder encoding end ended "
    "ends ensure enumerate episode episodes error eval evaluate evaluation every everything exact exactly "
    "except exceptions execute executed executes expects expr expression ext extract f factors factory "
    "failure false families family few field file filename files final find first flag float folder "
    "follow for format formatted formulaic four fraction fractions framework free fresh from "
    "fromisoformat frozen full function functions future g generate generated generation generationerror "
    "generator get getattr give given good grep ground group h hand hands has have help helpful here hi "
    "holding holds how i id if import importerror in index inference ins inside instead int integers into "
    "invoke is isinstance iso isoformat it item items iterator its itself join json jsonl k kept key keys "
    "kg km known kv kwargs l lambda last later learns led left len length lets like limit limiter line "
    "lines list listed listing ln load loads localsandbox longer look loop loss loudly m many mapping "
    "mass match matches max may me mentions merge message messages might million min minus missing "
    "mistake mistaken ml mm mode model module most msg much mul mult multiply must my n name named names "
    "need needed needle negative never next no node none not noun nowhere nquantity nr nrows number "
    "numbers numerator nunit objects of offer offered offers on one ones only op open openai operand "
    "operator options or order other out outcomes output over own owner p pair parallel parameters "
    "parentheses parse past path pathlib pattern per person pick plan plans please plus point pools port "
    "pos prefixes previous price print printed produce produced product prompt prompts property pure "
    "purpose py python q qty quantity question questions quotes r raise ran randint random randrange "
    "range rationals re reach read reading real reason reasoning records recovers refuses rejected "
    "reliably render rendered rendering renderings repeat repeated reporting restatement restates result "
    "results return returned returns right rng role rows rsplit rstrip run runcontext runtimeerror s said "
    "same sample sandbox save saw say says schema script scripted scripts search second see seed seeded "
    "segment segments segs self sells send sent separated separately sequence serve set several sh shape "
    "shell shop short shown shows shuffle side sign silently small so solves solving soon sorted span "
    "spans split splitlines splitting spoken src stable stale start starts startswith status stdout step "
    "steps stored str strict strip style sub subtracted such sum summing surface syntax syntaxerror "
    "synthetic system t target task tasks tc teaching tell template tested text tg than that the their "
    "them then there these they things thinking this those three through time timedelta times to token "
    "tokenized told tool toolbox toolerror tooloutcome tools top total train trained training transcript "
    "tree trimmed true truediv truth try tuple turn turns two txt type typing u uadd unaryop unit units "
    "unknown unless unparse unsupported up use user users uses usub utf v value valueerror values version "
    "very vocab volume w wanted wants was weight weights what when where whether which while whitespace "
    "who whole whose why will window with within without word words work working workspace wrapped write "
    "written x yield yields you yyyy z zero zeros zip"
)
"""Every word (run of letters, lower-cased) of the episode generator's sources as they were when
agentkit-tiny was trained: families.py, episodes.py, toolbox.py and calc.py, code and comments alike.

Frozen rather than read from the files: these words pick the invented training names (they are banned
and they are the chunks names are built from), so reading them live made moving code or editing a comment
in those files change every training episode. A template word added later is not banned, which is
harmless (an invented name of 2-4 random pieces rarely spells it) and keeps the training data fixed."""


@cache
def _banned_words() -> frozenset[str]:
    """Every held-out name and every word the episode templates use (so an invented training name can
    never be mistaken for either)."""
    words = {w.lower() for _, ho in _WORDS.values() for w in ho.split()}
    words |= {w.lower() for tr, _ in _WORDS.values() for w in tr.split()}
    words |= set(_TEMPLATE_WORDS.split())
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
    phrasing: Any = None
    """An `agentkit.train.phrasing.Phrasing` when tasks are to be reworded (issue 21), else None."""
    small_numbers: float = 0.0
    """Share of drawn numbers taken log-uniformly (a uniform count of digits, then a uniform value of that
    length) instead of uniformly over the family's range. People's tasks are full of one- and two-digit
    operands, which a uniform draw over 10-99999 almost never gives (0.1%); agentkit-tiny trained on
    such draws squared or multiplied small sums ("what is 15 + 27?" -> 630). 0 (the default) draws
    exactly what earlier data versions drew."""

    def owns(self, n: int) -> bool:
        return split_of_number(n) == self.split

    def number(self, rng: random.Random, lo: int, hi: int) -> int:
        """An integer in [lo, hi] that belongs to this split (rejection sampling): uniform, or with
        probability `small_numbers` log-uniform over its digit count."""
        if hi - lo < 20:
            raise ValueError(f"range [{lo}, {hi}] too small to hold values of both splits reliably")
        spread = self.small_numbers > 0 and rng.random() < self.small_numbers
        while True:
            n = _log_uniform(rng, lo, hi) if spread else rng.randint(lo, hi)
            if self.owns(n):
                return n

    def filename(self, rng: random.Random, ext: str | None = None) -> str:
        stem = f"{rng.choice(self.adj)}_{rng.choice(self.noun)}"
        return f"{stem}.{ext or rng.choice(self.ext)}"


def _log_uniform(rng: random.Random, lo: int, hi: int) -> int:
    """A number in [lo, hi] with a uniformly drawn count of digits, then uniform among those."""
    digits = rng.randint(len(str(lo)), len(str(hi)))
    return rng.randint(max(lo, 10 ** (digits - 1)), min(hi, 10**digits - 1))


def split_of_number(n: int) -> Split:
    """Fixed hash partition of the integers: about one in five belongs to the held-out split."""
    return "heldout" if ((abs(n) * 2654435761) & 0xFFFFFFFF) % 5 == 0 else "train"


@cache
def pools(split: Split) -> Pools:
    """The split's real-word pools (what `episode_pools` gives held-out episodes)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    i = SPLITS.index(split)
    fields: dict[str, Any] = {kind: tuple(words[i].split()) for kind, words in _WORDS.items()}
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
