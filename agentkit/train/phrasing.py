"""Human phrasing for episode tasks (issue 21): the same task, worded the many ways people word it.

A family plans a task and its ground truth as before and says it with one of its own template sentences
(`say`). With a `Phrasing` in the episode's pools, that sentence is replaced (or, with probability
`keep`, kept) by one composed from a `Bank` of phrasings: a core sentence for the task's shape (a
question or a command, possibly several sentences), a politeness wrapper ("can you ...?", "I need you
to ..."), context sentences before or after, a quoting style for names, numbers in words when they are
small (and, where the bank asks, larger ones in words or with thousands commas), several ways of naming
a file in a folder, and now and then a light typo in a template word (never in a value the model must
copy). The phrasing draws from a random generator of its own, so an episode's
files, values and answer are the same with or without it: a paraphrased held-out episode is the
template-worded one with other words.

Two banks, written independently: `phrasing_train.TRAIN` (what training sees) and
`phrasing_heldout.HELDOUT` (only the evaluation's paraphrase, combined and refusal sets use it; a test
keeps their sentences disjoint). The reasoning of every scripted step restates the task in one canonical
form ("I need 12 * 5.", "I will read docs/a.txt and find the port line."), so however the user put it,
the facts the next turns need sit inside the 128-token window in words the model knows.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

from agentkit.train.phrasing_bank import Bank

__all__ = ["Bank", "Phrasing", "bank", "big_number_words", "expr_slots", "number_words", "phrasing_rng"]

UNIT_WORDS: dict[str, tuple[str, ...]] = {
    "km": ("km", "kilometers", "kilometres"),
    "m": ("m", "meters", "metres"),
    "cm": ("cm", "centimeters", "centimetres"),
    "kg": ("kg", "kilograms", "kilos"),
    "g": ("g", "grams"),
    "l": ("l", "liters", "litres"),
    "ml": ("ml", "milliliters", "millilitres"),
    "day": ("day", "days"),
    "h": ("h", "hours"),
    "min": ("min", "minutes"),
    "s": ("s", "seconds"),
}
"""How a unit may be written; the tool call always uses the code (the first spelling)."""

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str | None:
    """English words for 0-99 (None above): 7 -> "seven", 42 -> "forty-two"."""
    if 0 <= n < 20:
        return _ONES[n]
    if 20 <= n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    return None


def big_number_words(n: int, rng: random.Random) -> str | None:
    """English words for 100-9999 (None otherwise), in one of the ways people write them: 312 ->
    "three hundred and twelve" or "three hundred twelve"; 105 -> "a hundred and five"; 2005 ->
    "two thousand and five"; 1507 -> "one thousand five hundred and seven" or "fifteen hundred and seven".
    Round hundreds stay digits (None)."""
    if not 100 <= n < 10000 or n % 100 == 0:
        return None  # a round "three hundred" before "and five" would read as 305
    and_ = rng.random() < 0.6
    thousands, rest = divmod(n, 1000)
    hundreds, below = divmod(rest, 100)
    if thousands and hundreds and 10 <= n // 100 < 20 and rng.random() < 0.3:
        thousands, hundreds = 0, n // 100  # "fifteen hundred", "twelve hundred and six"
    parts: list[str] = []
    if thousands:
        parts.append(f"{_ONES[thousands]} thousand")
    if hundreds:
        head = "a" if (hundreds == 1 and not thousands and rng.random() < 0.3) else number_words(hundreds)
        parts.append(f"{head} hundred")
    if below:
        small = str(number_words(below))
        parts.append(f"and {small}" if and_ else small)
    return " ".join(parts)


_QUOTES = (("", ""), ("", ""), ("", ""), ('"', '"'), ("'", "'"), ("`", "`"), ("“", "”"))
_NAME_SLOTS = frozenset({"file", "file2", "needle", "word", "code"})
_NUMBER_SLOTS = frozenset({"a", "b", "c", "a2", "b2", "c2", "n", "price", "value"})
"""Slots whose small numbers may be written in words ("seven", "forty-two")."""
_SLOT = re.compile(r"\{(\w+)\}")


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2)
    how = rng.randrange(3)
    if how == 0:  # swap two neighbours
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == 1:  # drop one
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]  # double one


class Phrasing:
    """Says tasks with a bank's sentences, drawing from its own generator."""

    def __init__(self, bank: Bank, rng: random.Random, keep: float = 0.0, typo: float = 0.12) -> None:
        self.bank = bank
        self.rng = rng
        self.keep = keep
        self.typo = typo

    def choice(self, options: list[Any] | tuple[Any, ...]) -> Any:
        return options[self.rng.randrange(len(options))]

    def num(self, n: int | str) -> str:
        words = number_words(int(n)) if str(n).isdigit() else None
        if words is not None and self.rng.random() < 0.4:
            return words
        if words is None and str(n).isdigit():  # the bank's knobs draw only when they are set
            if self.bank.big_number_words and self.rng.random() < self.bank.big_number_words:
                big = big_number_words(int(n), self.rng)
                if big is not None:
                    return big
            if self.bank.digit_groups and int(n) >= 1000 and self.rng.random() < self.bank.digit_groups:
                return f"{int(n):,}"
        return str(n)

    def expr(self, kind: str, a: Any, b: Any, c: Any = None) -> str:
        spoken = self.choice(self.bank.expr[kind])
        return str(spoken.format(a=self.num(a), b=self.num(b), c=self.num(c) if c is not None else ""))

    def templates(self, shape: str, kind: str | None) -> tuple[str, ...]:
        own = self.bank.core.get(shape, ())
        specific = self.bank.core.get(f"{shape}_{kind}", ()) if kind else ()
        if own and specific:
            return own if self.rng.random() < 0.5 else specific
        return own or specific

    def compose(self, shape: str, slots: Mapping[str, Any]) -> str:
        """A new wording of the task `shape` with these values (see the module docstring)."""
        rng = self.rng
        templates = self.templates(shape, slots.get("kind"))
        if not templates:
            raise KeyError(f"bank {self.bank.name!r} has no sentences for {shape!r}")
        core = self.choice(templates)
        if core.endswith("."):  # a statement ("I need ..."): no politeness wrapper
            text = core[:-1] + self.choice((".", ".", "", ", please."))
        elif core.endswith("?"):
            text = self.choice(self.bank.question_wraps).replace("@", core[:-1])
        else:
            text = self.choice(self.bank.command_wraps).replace("@", core)
        if rng.random() < 0.85:
            text = text[0].upper() + text[1:]
        if rng.random() < 0.25:
            text = f"{self.choice(self.bank.before)} {text}"
        if rng.random() < 0.2:
            text = f"{text} {self.choice(self.bank.after)}"
        if rng.random() < self.typo:
            text = self._with_typo(text)
        text = self._fill(text, slots)
        text = " ".join(text.split())
        if rng.random() < 0.1:
            text = text[0].lower() + text[1:]
        return text

    def _with_typo(self, text: str) -> str:
        """One typo in a word of the sentence itself (never inside a `{slot}`)."""
        spans = [(m.start(), m.end()) for m in re.finditer(r"(?<![{\w])[a-z]{5,}(?![}\w])", text)]
        if not spans:
            return text
        s, e = self.choice(spans)
        return text[:s] + _typo(text[s:e], self.rng) + text[e:]

    def _fill(self, text: str, slots: Mapping[str, Any]) -> str:
        left, right = self.choice(self.bank.quotes or _QUOTES)

        def quoted(v: str) -> str:
            return f"{left}{v}{right}"

        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "E":
                return self.expr(slots["kind"], slots["a"], slots["b"], slots.get("c"))
            if name == "E2":
                return self.expr(slots["kind2"], slots["a2"], slots["b2"], slots.get("c2"))
            if name == "op_text":
                return self._fill(str(self.choice(self.bank.extra[f"op_{slots['op']}"])), slots)
            if name in ("path", "path2"):
                return self._path(str(slots[name]), quoted)
            if name == "where":
                folder = str(slots["folder"])
                if not folder or folder == ".":
                    return str(self.choice(self.bank.top_folder))
                return str(self.choice(self.bank.some_folder)).replace("{folder}", quoted(folder))
            if name in ("u1", "u2"):
                return str(self.choice(UNIT_WORDS[str(slots[name])]))
            if name == "text":
                lq, rq = self.choice((('"', '"'), ("'", "'"), ("“", "”")))
                return f"{lq}{slots['text']}{rq}"
            if name == "items":
                return str(self.choice(self.bank.list_joins)).join(slots["items"])
            v = slots[name]
            if name in _NUMBER_SLOTS:
                return self.num(v)
            return quoted(str(v)) if name in _NAME_SLOTS else str(v)

        return _SLOT.sub(value, text)

    def _path(self, path: str, quoted: Any) -> str:
        if "/" not in path:
            return str(quoted(path))
        folder, name = path.rsplit("/", 1)
        if self.rng.random() < 0.4:
            return str(quoted(path))
        return (
            str(self.choice(self.bank.in_folder)).replace("{name}", quoted(name)).replace("{folder}", folder)
        )

    def say(self, template_text: str, shape: str, slots: Mapping[str, Any]) -> str:
        """The family's own sentence (with probability `keep`) or a composed one."""
        if self.rng.random() < self.keep:
            return template_text
        return self.compose(shape, slots)


def phrasing_rng(seed: int, split: str, index: int) -> random.Random:
    return random.Random(f"agentkit-phrasing:{seed}:{split}:{index}")


def bank(name: str) -> Bank:
    """`train` or `heldout`."""
    if name == "train":
        from agentkit.train.phrasing_train import TRAIN

        return TRAIN
    if name == "heldout":
        from agentkit.train.phrasing_heldout import HELDOUT

        return HELDOUT
    raise ValueError(f"unknown phrasing bank {name!r}; expected train or heldout")


_EXPR_RE = (
    ("addmul", re.compile(r"\((\d+) \+ (\d+)\) \* (\d+)")),
    ("mulsub", re.compile(r"(\d+) \* (\d+) - (\d+)")),
    ("add", re.compile(r"(\d+) \+ (\d+)")),
    ("sub", re.compile(r"(\d+) - (\d+)")),
    ("mul", re.compile(r"(\d+) \* (\d+)")),
    ("div", re.compile(r"(\d+) / (\d+)")),
)


def expr_slots(expr: str, suffix: str = "") -> dict[str, Any]:
    """The kind and operands of one of `arithmetic.expression`'s expressions: "(1 + 2) * 3" ->
    {kind: addmul, a: 1, b: 2, c: 3} (keys get `suffix`, for a second expression)."""
    for kind, rx in _EXPR_RE:
        m = rx.fullmatch(expr)
        if m:
            vals = dict(zip("abc", m.groups(), strict=False))
            return {f"kind{suffix}": kind, **{f"{k}{suffix}": v for k, v in vals.items()}}
    raise ValueError(f"not an episode expression: {expr!r}")
