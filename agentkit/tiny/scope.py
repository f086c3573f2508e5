"""agentkit-tiny's scope check: is a task one of the ten shapes the model was trained on?

agentkit-tiny knows its episode templates and nothing else (no paraphrases, no world knowledge), and on
anything else it answers confidently and wrongly. So before the CLI hands it a task, this module matches
the task against those templates, written out here as regular expressions whose slots accept the
values the generator draws (numbers, file names, the keys of its files, ISO dates, its units) but not
other words. It is a transparent classifier, not a learned one: every accepted task matches a template a
user can read below, and `check_scope` says which. The templates restate `agentkit.train.families`
(which the CLI must not import); the model card reports the check's measured rates on 200 held-out
in-shape tasks and 200 out-of-shape ones (`python -m agentkit.train.scope_eval`).

A shape also carries the tools it was trained with: the model saw each shape with a particular small
toolbox, and with other tools in the prompt it does worse, so a run with no `--tools` gets the shape's
toolbox, and a run whose tools differ from it is out of scope too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations

from agentkit.tiny.calc import UNIT_FACTORS

__all__ = ["SHAPES", "ScopeVerdict", "Shape", "check_scope", "shape_summary"]

# ---- slots: the values the generator draws, as patterns ----------------------------------------

_N = r"\d{1,9}"
_SPOKEN = "|".join(
    [
        rf"{_N} \+ {_N}",
        rf"{_N} plus {_N}",
        rf"the sum of {_N} and {_N}",
        rf"{_N} - {_N}",
        rf"{_N} minus {_N}",
        rf"{_N} subtracted from {_N}",
        rf"{_N} \* {_N}",
        rf"{_N} times {_N}",
        rf"the product of {_N} and {_N}",
        rf"{_N} / {_N}",
        rf"{_N} divided by {_N}",
        rf"\({_N} \+ {_N}\) \* {_N}",
        rf"{_N} \* {_N} - {_N}",
    ]
)
_EXPR = f"(?:{_SPOKEN})"
_WORD = r"[a-z]+"
_PERSON = r"[A-Z][a-z]+"
_ITEMS = r"[a-z]+s"
_KEY = r"(?:port|owner|city|limit|code|color|version|count)"
_EXT = r"(?:txt|md|log|cfg)"
_DIRNAME = r"[a-z]+"
_STEM = r"[a-z]+_[a-z]+"
_FILE = rf"{_STEM}\.{_EXT}"
_PATH = rf"(?:{_DIRNAME}/)?{_FILE}"
_CSV = rf"{_STEM}\.csv"
_NEEDLE = rf"{_WORD}-\d{{3,4}}"
_DATE = r"\d{4}-\d{2}-\d{2}"
_UNITS = sorted({u for pair in UNIT_FACTORS for u in pair}, key=len, reverse=True)
_UNIT = "(?:" + "|".join(_UNITS) + ")"
_NUMBER_TOOLS = ("calculator", "convert_units", "count_words", "days_between")


@dataclass(frozen=True)
class Shape:
    """One trained task shape: its templates, the tools it was trained with, an example."""

    name: str
    summary: str
    templates: tuple[str, ...]
    tools: tuple[str, ...]
    """The toolbox a run of this shape is given (the order the episodes list it in)."""
    example: str
    tool_sets: tuple[frozenset[str], ...] = field(default=())
    """Every toolbox the shape was trained with (default: just `tools`)."""

    def accepts_tools(self, tools: Sequence[str]) -> bool:
        sets = self.tool_sets or (frozenset(self.tools),)
        return frozenset(tools) in sets

    def match(self, task: str) -> str | None:
        """The template `task` matches (whole text, case-sensitive), or None."""
        for t in self.templates:
            if re.fullmatch(t, task):
                return t
        return None


SHAPES: tuple[Shape, ...] = (
    Shape(
        "calc",
        "arithmetic with the calculator",
        (
            rf"What is {_EXPR}\?",
            rf"Compute {_EXPR}\.",
            rf"Please calculate {_EXPR}\.",
            rf"I need the result of {_EXPR}\.",
            rf"Can you work out {_EXPR} for me\?",
            rf"{_EXPR} = \?",
            rf"{_PERSON} buys {_N} {_ITEMS} at {_N} each\. What is the total cost\?",
            rf"A shop in {_PERSON} sells {_ITEMS} for {_N} each\. How much do {_N} of them cost\?",
        ),
        ("calculator",),
        "What is 417 * 36?",
    ),
    Shape(
        "error",
        "a product written with x or ×, which the calculator rejects and the model rewrites",
        (rf"What is {_N} [x×] {_N}\?", rf"Compute {_N} [x×] {_N} please\."),
        ("calculator",),
        "What is 417 x 36?",
    ),
    Shape(
        "choose",
        "unit conversion, word counts or days between dates, picking the tool by its description",
        (
            rf"Convert \d+(?:\.\d+)? {_UNIT} to {_UNIT}\.",
            rf"How many {_UNIT} is \d+(?:\.\d+)? {_UNIT}\?",
            rf'How many words are in "{_WORD}(?: {_WORD}){{0,29}}"\?',
            rf"Count the words in this text: {_WORD}(?: {_WORD}){{0,29}}",
            rf"How many days are there from {_DATE} to {_DATE}\?",
            rf"Count the days between {_DATE} and {_DATE}\.",
        ),
        _NUMBER_TOOLS,
        "Convert 3 km to m.",
    ),
    Shape(
        "direct",
        "a question answered from the message itself (a name, a code word, a list's first or last item)",
        (
            rf"Hi, my name is {_PERSON}\. What is my name\?",
            rf"I am {_PERSON}\. Who am I\?",
            rf"Repeat this code word exactly: {_WORD}-{_WORD}-\d{{2,3}}",
            rf"Say back the code {_WORD}-{_WORD}-\d{{2,3}}\.",
            rf"What is the (?:first|last) item in this list: {_WORD}(?:, {_WORD}){{2,5}}\?",
        ),
        ("calculator", "read_file"),
        "What is the last item in this list: acorn, bison, cobalt?",
        tuple(frozenset(c) for c in combinations(("calculator", "read_file", "list_dir", "python"), 2)),
    ),
    Shape(
        "file_read",
        "one key's value from a `key: value` file in the workspace",
        (
            rf"What is the {_KEY} in {_PATH}\?",
            rf"Read {_PATH} and tell me its {_KEY}\.",
            rf"Which {_KEY} does the file {_PATH} set\?",
            rf"Look up the {_KEY} value in {_PATH}\.",
            rf"Tell me the {_KEY} from {_FILE}\.",
        ),
        ("read_file", "list_dir"),
        "What is the port in notes/quiet_server.cfg?",
        (frozenset({"read_file", "list_dir"}), frozenset({"read_file", "list_dir", "shell"})),
    ),
    Shape(
        "file_list",
        "how many files a workspace folder holds",
        (
            rf"How many files are in the (?:{_DIRNAME}|current) folder\?",
            rf"Count the files in (?:{_DIRNAME}|\.)\.",
            rf"How many files does the directory (?:{_DIRNAME}|\.) contain\?",
        ),
        ("read_file", "list_dir"),
        "How many files are in the docs folder?",
    ),
    Shape(
        "file_grep",
        "which workspace file contains a code like `acorn-1234`",
        (
            rf"Which file mentions {_NEEDLE}\?",
            rf"Find the file that contains {_NEEDLE}\.",
            rf"In which file does {_NEEDLE} appear\?",
        ),
        ("read_file", "list_dir", "grep"),
        "Which file mentions acorn-1234?",
    ),
    Shape(
        "csv",
        "a sum or count over an `item,city,qty` CSV, with python or shell",
        (
            rf"What is the total qty in {_CSV}\?",
            rf"Sum the qty column of {_CSV}\.",
            rf"How many rows in {_CSV} are for {_PERSON}\?",
            rf"Count the {_PERSON} rows in {_CSV}\.",
            rf"How many {_ITEMS} in total does {_CSV} list\?",
            rf"Sum the qty of {_ITEMS} in {_CSV}\.",
        ),
        ("python", "shell", "read_file"),
        "What is the total qty in sales_data.csv?",
    ),
    Shape(
        "chain",
        "read an order file (item, unit_price, quantity), then compute its total",
        (
            rf"{_FILE} describes an order\. What is its total price\?",
            rf"Read {_FILE} and compute unit_price times quantity\.",
            rf"What does the order in {_FILE} cost in total\?",
        ),
        ("read_file", "calculator", "list_dir"),
        "What does the order in big_order.txt cost in total?",
    ),
    Shape(
        "parallel",
        "two computations, or two files read, in one block of parallel calls",
        (
            rf"What are {_EXPR} and {_EXPR}\?",
            rf"Compute both {_EXPR} and {_EXPR}\.",
            rf"Add the values in {_STEM}\.txt and {_STEM}\.txt\.",
            rf"What is the sum of the values stored in {_STEM}\.txt and {_STEM}\.txt\?",
        ),
        ("calculator", "read_file"),
        "What are 12 + 30 and 7 * 6?",
    ),
)


@dataclass(frozen=True)
class ScopeVerdict:
    """What `check_scope` decided, and why (the CLI prints `reason` when a task is refused)."""

    in_scope: bool
    shape: str | None
    """The matched shape (None when no template matched)."""
    template: str | None
    tools: tuple[str, ...]
    """The toolbox to run with: the one asked for, or the shape's when none was asked for."""
    reason: str


def check_scope(task: str, tools: Sequence[str] | None = None) -> ScopeVerdict:
    """Whether agentkit-tiny was trained on `task` (and, when given, on this set of tools for it)."""
    text = task.strip()
    for shape in SHAPES:
        template = shape.match(text)
        if template is None:
            continue
        if tools is None:
            return ScopeVerdict(True, shape.name, template, shape.tools, f"a {shape.name} task")
        if shape.accepts_tools(tools):
            return ScopeVerdict(True, shape.name, template, tuple(tools), f"a {shape.name} task")
        return ScopeVerdict(
            False,
            shape.name,
            template,
            tuple(tools),
            f"it has the {shape.name} shape, but agentkit-tiny learned that shape with the tools "
            f"{', '.join(shape.tools)}, not {', '.join(tools) or 'none'} (leave --tools out to get them)",
        )
    return ScopeVerdict(
        False,
        None,
        None,
        tuple(tools or ()),
        "it matches none of the ten task shapes agentkit-tiny was trained on",
    )


_OPERATOR = re.compile(r"(?<=[\d)])\s*([+*/×x-])\s*(?=[\d(])")


def suggest(task: str) -> str | None:
    """A spelling of a refused task that is in scope, when a few mechanical fixes give one: the first
    letter capitalized, spaces around the operators, the final `?` or `.` the templates end with. The
    CLI offers it; it never runs it in the user's place, and an accepted task is never rewritten."""
    text = " ".join(task.split())
    if not text:
        return None
    text = text[0].upper() + text[1:]
    spaced = _OPERATOR.sub(lambda m: f" {m.group(1)} ", text)
    for base in dict.fromkeys((text, spaced)):
        for candidate in (base, base.rstrip("?.") + "?", base.rstrip("?.") + "."):
            if candidate != task.strip() and check_scope(candidate).in_scope:
                return candidate
    return None


def shape_summary() -> str:
    """One line per shape (name, what it is, an example): the list the CLI prints with a refusal."""
    return "\n".join(f"  {s.name:<10} {s.summary}; e.g. {s.example!r}" for s in SHAPES)
