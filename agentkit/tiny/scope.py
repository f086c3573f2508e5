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

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from agentkit.tiny.calc import UNIT_FACTORS

__all__ = [
    "SHAPES",
    "ScopeVerdict",
    "Shape",
    "check_scope",
    "intent",
    "shape_summary",
    "trained_on_paraphrases",
]

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


def check_scope(task: str, tools: Sequence[str] | None = None, *, paraphrases: bool = False) -> ScopeVerdict:
    """Whether agentkit-tiny was trained on `task` (and, when given, on this set of tools for it).

    `paraphrases`: the model was trained on tasks in human phrasing (data v9, issue 21; see
    `trained_on_paraphrases`), so a task that matches no template but whose wording `intent` recognises
    as one of the shapes is in scope too (with the toolbox that shape was trained with)."""
    text = task.strip()
    matched = [(shape, shape.match(text)) for shape in SHAPES]
    if paraphrases and not any(t for _, t in matched):
        found = intent(text)
        if found is not None:
            name, toolbox = found
            shape = next(s for s in SHAPES if s.name == name)
            if tools is None:
                return ScopeVerdict(True, name, None, toolbox, f"a {name} task (in other words)")
            if frozenset(tools) == frozenset(toolbox) or shape.accepts_tools(tools):
                return ScopeVerdict(True, name, None, tuple(tools), f"a {name} task (in other words)")
            return ScopeVerdict(
                False,
                name,
                None,
                tuple(tools),
                f"it has the {name} shape, but agentkit-tiny learned that shape with the tools "
                f"{', '.join(toolbox)}, not {', '.join(tools) or 'none'} (leave --tools out to get them)",
            )
    for shape, template in matched:
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


# ---- tasks in other words (a model trained on data v9: `check_scope(..., paraphrases=True)`) ------

_NW = (
    r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
    r"sixteen|seventeen|eighteen|nineteen|(?:twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety)"
    r"(?:-(?:one|two|three|four|five|six|seven|eight|nine))?)"
)
_NUM_ANY = rf"(?:\d+|{_NW})"
_OP = (
    r"(?:[-+*/×x]|plus|minus|times|divided by|multiplied (?:by|with)|over|take away|less|"
    r"subtracted from|added to|more than|increased by|reduced by|lots of|split by|shared among)"
)
_EXPR_ANY = re.compile(rf"(?<![\w.-])\(?{_NUM_ANY}\)?\s*{_OP}\s*\(?{_NUM_ANY}\b")
_CALC_VERB = re.compile(
    r"\b(?:add|added|adding|sum|subtract\w*|deduct\w*|take|multipl\w*|divid\w*|share|split|combin\w*|"
    r"increase|reduce|product|difference|total|together|remov\w*|knock|fit|fits)\b"
)
_PRICE = re.compile(r"\b(?:each|apiece|a piece|per|unit price|costs?|price[ds]?|spend|bill|pay)\b")
_NUMBER = re.compile(rf"(?<![\w.-]){_NUM_ANY}(?![\w-])")
_FILE_ANY = re.compile(r"[\w./-]*[A-Za-z0-9]_[\w-]+\.(?:txt|md|log|cfg|csv)\b")
_STEM_ANY = re.compile(r"\b[a-z]+_[a-z]+\b")
_KEY_ANY = re.compile(r"\b(?:port|owner|city|limit|code|color|version|count)\b")
_NEEDLE_ANY = re.compile(r"\b[a-z]+-\d{3,4}\b")
_CODE_ANY = re.compile(r"\b[a-z]+-[a-z]+-\d{2,3}\b")
_DATE_ANY = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")
_UNIT_WORDS = {
    "km": r"km|kilomet(?:er|re)s?",
    "m": r"m|met(?:er|re)s?",
    "cm": r"cm|centimet(?:er|re)s?",
    "kg": r"kg|kilograms?|kilos?",
    "g": r"g|grams?",
    "l": r"l|lit(?:er|re)s?",
    "ml": r"ml|millilit(?:er|re)s?",
    "day": r"days?",
    "h": r"h|hours?",
    "min": r"min|minutes?",
    "s": r"s|seconds?",
}
_UNIT_ANY = "(?:" + "|".join(_UNIT_WORDS.values()) + ")"
_CONVERT = re.compile(
    rf"\b\d+(?:\.\d+)?\s*{_UNIT_ANY}\b.*\b(?:to|in|into|as)\s+{_UNIT_ANY}\b"
    rf"|\b(?:how many|how much)\s+{_UNIT_ANY}\b.*\b\d+(?:\.\d+)?\s*{_UNIT_ANY}\b"
    rf"|\b\d+(?:\.\d+)?\s*{_UNIT_ANY}\b.*\b(?:how many|how much)\s+{_UNIT_ANY}\b"
)
_UNSUPPORTED = re.compile(
    r"\b(?:square|cube|(?:square|cube) root|root of|power|percent|average|mean|median|max|maximum|minimum|"
    r"biggest|largest|smallest|bigger|smaller|prime|even|odd|round|weekday|week|delete|erase|remove|rename|"
    r"create|append|move|duplicate|sort|alphabeti[sz]e|reverse|translate|weather|email|poem|song|joke|lines|"
    r"characters|miles?|pounds?|ounces?|inch(?:es)?|feet|foot|yards?|fahrenheit|celsius|gallons?|"
    r"summari[sz]e|a summary of|before|after)\b|%|\*\*|\^"
)
_COUNT_ASK = re.compile(
    r"\b(?:how many|count|number of|tally|total|sum|add up|altogether|overall|combined)\b"
)
_LIST_POSITION = re.compile(r"\b(?:first|last|final|start(?:s)? with|begins? with|ends? with)\b")
_LIST_ITEMS = re.compile(r"\b[a-z]+\s*[,;/]\s*[a-z]+\s*[,;/]\s*[a-z]+")
# intro words in any case, the name capitalized ("Hello, I'm Bruno", "it's Vera", "you're talking to Sam")
_NAME_INTRO = re.compile(
    r"(?i:\b(?:my name is|my name's|i am|i'm|call me|this is|people call me|it's|you're talking to|"
    r"introduced myself as))\s+[A-Z][a-z]+"
)
_ECHO = re.compile(r"\b(?:repeat|say|echo|copy|type|write|reply|return|back|output|verbatim|mirror|parrot)\b")

_TOOLS_CSV_CALC = ("python", "read_file", "calculator")


def _toolbox(name: str) -> tuple[str, ...]:
    return next(s.tools for s in SHAPES if s.name == name)


def intent(task: str) -> tuple[str, tuple[str, ...]] | None:
    """Which trained shape a task in other words is (and the toolbox to run it with), or None.

    Written from what each shape needs, not from any list of phrasings: a file name with one of the
    files' keys is a file_read, a code like `acorn-1234` with a question about files is a file_grep, two
    ISO dates are a days_between, numbers joined by an operator (in symbols or words) are arithmetic, and
    so on; combined tasks get the toolbox the model learned them with. Words for what no tool does
    (square roots, averages, deleting, translating, miles, ...) make it None.
    """
    raw = " ".join(task.split())
    t = raw.lower()
    if _CODE_ANY.search(t) and _ECHO.search(t):
        return "direct", _toolbox("direct")
    if _NAME_INTRO.search(raw) and re.search(r"\b(?:name|who)\b", t):
        return "direct", _toolbox("direct")
    if _LIST_POSITION.search(t) and _LIST_ITEMS.search(t) and not _FILE_ANY.search(t):
        return "direct", _toolbox("direct")
    if len(_DATE_ANY.findall(t)) == 2:  # before the unsupported words: "how many days after A is B"
        return "choose", _toolbox("choose")
    if _UNSUPPORTED.search(t):
        return None
    files = _FILE_ANY.findall(t)
    rest = _FILE_ANY.sub(" ", t)
    rest = _DATE_ANY.sub(" ", rest)
    exprs = _EXPR_ANY.findall(_NEEDLE_ANY.sub(" ", rest))
    numbers = _NUMBER.findall(_NEEDLE_ANY.sub(" ", rest))
    if any(f.endswith(".csv") for f in files):
        if not _COUNT_ASK.search(t) and not re.search(r"\bhow many\b", t):
            return None
        if re.search(r"\b(?:multipl\w*|times|priced|costs?)\b", rest) and numbers:
            return "csv", _TOOLS_CSV_CALC
        return "csv", _toolbox("csv")
    if files and re.search(r"\b(?:order|unit_price)\b", t):
        return "chain", _toolbox("chain")
    if files and _KEY_ANY.search(rest):
        if exprs and len(numbers) >= 2:
            return "parallel", _toolbox("parallel")
        if numbers:
            return "chain", _toolbox("chain")
        return "file_read", _toolbox("file_read")
    if len(files) == 2 and re.search(r"\bvalues?\b", t):
        return "parallel", _toolbox("parallel")
    if files:
        return None
    if _KEY_ANY.search(t) and _STEM_ANY.search(t) and not numbers:
        return "file_read", _toolbox("file_read")
    if _NEEDLE_ANY.search(t) and re.search(r"\bfiles?\b|\bwhere\b|\bgrep\b|\bsearch\b|\blocate\b", t):
        return "file_grep", _toolbox("file_grep")
    if re.search(r"\bfiles\b|\bfile count\b", t) and re.search(r"\b(?:how many|count|number|tally)\b", t):
        return "file_list", _toolbox("file_list")
    if _CONVERT.search(t):
        return "choose", _toolbox("choose")
    if (
        re.search(r"\bwords?\b|\bword count\b", t)
        and re.search(r"\b(?:how many|count|number of|tally)\b|\bhas how many\b", t)
        and re.search(r"[\"'“`:]", raw)
    ):
        return "choose", _toolbox("choose")
    if len(exprs) >= 2:
        return "parallel", _toolbox("parallel")
    if exprs or (len(numbers) >= 2 and (_CALC_VERB.search(rest) or _PRICE.search(rest))):
        return ("error" if re.search(r"\d\s*[x×]\s*\d", rest) else "calc"), _toolbox("calc")
    return None


def trained_on_paraphrases(checkpoint: str | Path | None) -> bool:
    """Whether a checkpoint was trained on tasks in human phrasing (data v9 and later: its
    `training.json` records the data's phrasing recipe), so `check_scope` may take paraphrases."""
    if checkpoint is None:
        return False
    path = Path(checkpoint) / "training.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    data = meta.get("data", {}) if isinstance(meta, dict) else {}
    recipe = data.get("recipe") if isinstance(data, dict) else None
    return bool(isinstance(recipe, dict) and recipe.get("phrasing"))
