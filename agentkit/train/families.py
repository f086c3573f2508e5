"""The episode families: each one plans a task and scripts the assistant's side of solving it.

A family returns a `Draft`: the user task, the workspace files, the tools to offer, and a generator
script. The script yields one `Step` (reasoning + tool calls) at a time and is sent back the *real*
tool results, so the assistant's later reasoning quotes exactly what the tools said; it ends with a
`Final` whose answer the driver checks against the answer computed from the ground truth.

Reasoning is short and formulaic on purpose: the model that learns it has a few million parameters.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from agentkit.train import calc
from agentkit.train.vocab import Pools


@dataclass(frozen=True)
class Call:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class Step:
    reasoning: str
    calls: list[Call]
    content: str = ""
    loss: bool = True
    """False for a deliberate mistake the episode recovers from: shown in context, never trained on."""


@dataclass(frozen=True)
class Final:
    reasoning: str
    answer: str


Script = Generator[Step | Final, list[str], None]


@dataclass
class Draft:
    family: str
    task: str
    answer: str
    tools: list[str]
    script: Callable[[], Script]
    files: dict[str, str] = field(default_factory=dict)


def _pick(rng: random.Random, options: list[str]) -> str:
    return options[rng.randrange(len(options))]


def _stdout_value(text: str) -> str:
    """The printed value in a shell/python tool result (its first line; the status line comes last)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


# ---- arithmetic through the calculator ----------------------------------------------------------


def _expression(rng: random.Random, p: Pools) -> tuple[str, str]:
    """An expression and how a user might say it; every result is exact."""
    shape = rng.randrange(6)
    if shape == 0:
        a, b = p.number(rng, 10, 99999), p.number(rng, 10, 99999)
        return f"{a} + {b}", _pick(rng, [f"{a} + {b}", f"{a} plus {b}", f"the sum of {a} and {b}"])
    if shape == 1:
        a, b = p.number(rng, 100, 99999), p.number(rng, 10, 9999)
        return f"{a} - {b}", _pick(rng, [f"{a} - {b}", f"{a} minus {b}", f"{b} subtracted from {a}"])
    if shape == 2:
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        return f"{a} * {b}", _pick(rng, [f"{a} * {b}", f"{a} times {b}", f"the product of {a} and {b}"])
    if shape == 3:
        b, q = p.number(rng, 2, 999), p.number(rng, 2, 9999)
        return f"{b * q} / {b}", _pick(rng, [f"{b * q} / {b}", f"{b * q} divided by {b}"])
    if shape == 4:
        a, b, c = p.number(rng, 10, 999), p.number(rng, 10, 999), p.number(rng, 2, 99)
        return f"({a} + {b}) * {c}", f"({a} + {b}) * {c}"
    a, b, c = p.number(rng, 10, 999), p.number(rng, 10, 999), p.number(rng, 10, 9999)
    return f"{a} * {b} - {c}", f"{a} * {b} - {c}"


def calc_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.3:
        n, price = p.number(rng, 2, 999), p.number(rng, 2, 999)
        expr = f"{n} * {price}"
        task = _pick(
            rng,
            [
                f"{rng.choice(p.person)} buys {n} {rng.choice(p.item)} at {price} each. "
                "What is the total cost?",
                f"A shop in {rng.choice(p.city)} sells {rng.choice(p.item)} for {price} each. "
                f"How much do {n} of them cost?",
            ],
        )
    elif p.split == "train" and rng.random() < 0.15:
        # the error family's questions ("What is 12 x 5?") answered right the first time: that family's
        # first, mistaken turn is context (never trained), so without these the model has never
        # produced a first turn for such a question, which is exactly what the real loop asks of it
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        expr = f"{a} * {b}"
        task = _pick(rng, [f"What is {a} {rng.choice(['x', '×'])} {b}?", f"Compute {a} x {b} please."])
    else:
        expr, spoken = _expression(rng, p)
        task = _pick(
            rng,
            [
                f"What is {spoken}?",
                f"Compute {spoken}.",
                f"Please calculate {spoken}.",
                f"I need the result of {spoken}.",
                f"Can you work out {spoken} for me?",
                f"{spoken} = ?",
            ],
        )
    answer = calc.calculate(expr)

    def script() -> Script:
        results = yield Step(
            f"I need {expr}. I will use the calculator.", [Call("calculator", {"expression": expr})]
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("calc", task, answer, ["calculator"], script)


# ---- reading and listing files ------------------------------------------------------------------

KEYS = ("port", "owner", "city", "limit", "code", "color", "version", "count")


def _kv_file(rng: random.Random, p: Pools) -> dict[str, str]:
    keys = rng.sample(KEYS, rng.randint(2, 4))
    out: dict[str, str] = {}
    for k in keys:
        if k == "owner":
            out[k] = rng.choice(p.person)
        elif k == "city":
            out[k] = rng.choice(p.city)
        elif k == "color":
            out[k] = rng.choice(p.adj)
        elif k == "code":
            out[k] = f"{rng.choice(p.noun)}-{p.number(rng, 100, 999)}"
        else:
            out[k] = str(p.number(rng, 1, 99999))
    return out


def _render_kv(kv: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" for k, v in kv.items())


def _distinct_names(rng: random.Random, p: Pools, n: int, ext: str | None = None) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = p.filename(rng, ext)
        if name not in names:
            names.append(name)
    return names


def file_family(rng: random.Random, p: Pools) -> Draft:
    n_files = rng.randint(2, 5)
    names = _distinct_names(rng, p, n_files)
    folder = rng.choice(p.dir) if rng.random() < 0.5 else ""
    files: dict[str, str] = {}
    contents: dict[str, dict[str, str]] = {}
    for name in names:
        kv = _kv_file(rng, p)
        path = f"{folder}/{name}" if folder else name
        files[path] = _render_kv(kv)
        contents[path] = kv
    mode = rng.randrange(3)
    if mode == 0:
        path = rng.choice(list(files))
        key = rng.choice(list(contents[path]))
        value = contents[path][key]
        task = _pick(
            rng,
            [
                f"What is the {key} in {path}?",
                f"Read {path} and tell me its {key}.",
                f"Which {key} does the file {path} set?",
                f"Look up the {key} value in {path}.",
            ],
        )

        def script() -> Script:
            yield Step(f"I will read {path} and find the {key} line.", [Call("read_file", {"path": path})])
            yield Final(f"The file says {key}: {value}.", value)

        return Draft("file_read", task, value, ["read_file", "list_dir"], script, files)
    if mode == 1:
        where = folder or "."
        listed = sorted(n.rsplit("/", 1)[-1] for n in files)
        task = _pick(
            rng,
            [
                f"How many files are in the {folder or 'current'} folder?",
                f"Count the files in {where}.",
                f"How many files does the directory {where} contain?",
            ],
        )
        answer = str(len(listed))

        def script_list() -> Script:
            yield Step(f"I will list {where} and count the files.", [Call("list_dir", {"path": where})])
            yield Final(f"The listing shows {', '.join(listed)}. That is {answer} files.", answer)

        return Draft("file_list", task, answer, ["read_file", "list_dir"], script_list, files)
    # grep: which file holds a code that appears nowhere else
    path = rng.choice(list(files))
    while True:
        needle = f"{rng.choice(p.noun)}-{p.number(rng, 100, 9999)}"
        if not any(needle in text for text in files.values()):
            break
    files[path] += f"code: {needle}\n"
    answer = path
    task = _pick(
        rng,
        [
            f"Which file mentions {needle}?",
            f"Find the file that contains {needle}.",
            f"In which file does {needle} appear?",
        ],
    )

    def script_grep() -> Script:
        yield Step(f"I will search the files for {needle}.", [Call("grep", {"pattern": needle, "path": "."})])
        yield Final(f"The match is in {answer}.", answer)

    return Draft("file_grep", task, answer, ["read_file", "list_dir", "grep"], script_grep, files)


# ---- counting / summing over a CSV with python or shell -----------------------------------------


_CSV_LOAD = "import csv\nrows = list(csv.DictReader(open('{name}')))\n"


def csv_family(rng: random.Random, p: Pools) -> Draft:
    name = p.filename(rng, "csv")
    items = rng.sample(p.item, 3)
    cities = rng.sample(p.city, 3)
    rows = [(rng.choice(items), rng.choice(cities), p.number(rng, 1, 999)) for _ in range(rng.randint(4, 9))]
    files = {name: "item,city,qty\n" + "".join(f"{i},{c},{q}\n" for i, c, q in rows)}
    mode = rng.randrange(3)
    use_shell = rng.random() < 0.4
    if mode == 0:
        answer = str(sum(q for _, _, q in rows))
        task = _pick(rng, [f"What is the total qty in {name}?", f"Sum the qty column of {name}."])
        py = f"{_CSV_LOAD.format(name=name)}print(sum(int(r['qty']) for r in rows))"
        sh = f"awk -F, 'NR>1 {{s+=$3}} END {{print s}}' {name}"
        what = "sum the qty column"
    elif mode == 1:
        city = rng.choice(cities)
        answer = str(sum(1 for _, c, _ in rows if c == city))
        task = _pick(rng, [f"How many rows in {name} are for {city}?", f"Count the {city} rows in {name}."])
        py = f"{_CSV_LOAD.format(name=name)}print(sum(1 for r in rows if r['city'] == '{city}'))"
        sh = f"grep -c ',{city},' {name}"
        what = f"count the rows for {city}"
    else:
        item = rng.choice(items)
        answer = str(sum(q for i, _, q in rows if i == item))
        task = _pick(
            rng, [f"How many {item} in total does {name} list?", f"Sum the qty of {item} in {name}."]
        )
        py = f"{_CSV_LOAD.format(name=name)}print(sum(int(r['qty']) for r in rows if r['item'] == '{item}'))"
        sh = f"awk -F, '$1 == \"{item}\" {{s+=$3}} END {{print s+0}}' {name}"
        what = f"sum the qty of {item}"
    call = Call("shell", {"command": sh}) if use_shell else Call("python", {"code": py})
    tool = "shell" if use_shell else "python"

    def script() -> Script:
        results = yield Step(f"I will {what} in {name} with {tool}.", [call])
        value = _stdout_value(results[0])
        yield Final(f"The output is {value}.", value)

    return Draft("csv", task, answer, ["python", "shell", "read_file"], script, files)


# ---- two steps: read a file, then compute on what it said ---------------------------------------


def chain_family(rng: random.Random, p: Pools) -> Draft:
    name = p.filename(rng, rng.choice(["txt", "cfg"]))
    price, qty = p.number(rng, 2, 999), p.number(rng, 2, 999)
    item = rng.choice(p.item)
    files = {name: f"item: {item}\nunit_price: {price}\nquantity: {qty}\n"}
    expr = f"{price} * {qty}"
    answer = calc.calculate(expr)
    task = _pick(
        rng,
        [
            f"{name} describes an order. What is its total price?",
            f"Read {name} and compute unit_price times quantity.",
            f"What does the order in {name} cost in total?",
        ],
    )

    def script() -> Script:
        yield Step(f"I will read {name} first.", [Call("read_file", {"path": name})])
        results = yield Step(
            f"The file says unit_price: {price} and quantity: {qty}. I will multiply them.",
            [Call("calculator", {"expression": expr})],
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("chain", task, answer, ["read_file", "calculator", "list_dir"], script, files)


# ---- choosing among several tools by their descriptions -----------------------------------------


def choose_family(rng: random.Random, p: Pools) -> Draft:
    mode = rng.randrange(3)
    offered = ["calculator", "convert_units", "count_words", "days_between"]
    rng.shuffle(offered)
    if mode == 0:
        src, dst = rng.choice(list(calc.UNIT_FACTORS))
        if rng.random() < 0.5:
            value = p.number(rng, 2, 9999)
            args: dict[str, Any] = {"value": value, "from_unit": src, "to_unit": dst}
        else:
            value = p.number(rng, 2, 999) * calc.UNIT_FACTORS[(src, dst)]
            args = {"value": value, "from_unit": dst, "to_unit": src}
        answer = calc.convert(args["value"], args["from_unit"], args["to_unit"])
        task = _pick(
            rng,
            [
                f"Convert {args['value']} {args['from_unit']} to {args['to_unit']}.",
                f"How many {args['to_unit']} is {args['value']} {args['from_unit']}?",
            ],
        )
        call = Call("convert_units", args)
        why = "This is a unit conversion."
    elif mode == 1:
        words = [rng.choice(p.noun + p.adj) for _ in range(rng.randint(3, 14))]
        text = " ".join(words)
        answer = calc.count_words(text)
        task = _pick(rng, [f'How many words are in "{text}"?', f"Count the words in this text: {text}"])
        call = Call("count_words", {"text": text})
        why = "This asks for a word count."
    else:
        start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(2000))
        span = p.number(rng, 1, 1500)
        end = start + dt.timedelta(days=span)
        answer = str(span)
        task = _pick(
            rng,
            [
                f"How many days are there from {start.isoformat()} to {end.isoformat()}?",
                f"Count the days between {start.isoformat()} and {end.isoformat()}.",
            ],
        )
        call = Call("days_between", {"start": start.isoformat(), "end": end.isoformat()})
        why = "This asks for the days between two dates."

    def script() -> Script:
        results = yield Step(f"{why} I will use {call.name}.", [call])
        yield Final(f"{call.name} returned {results[0]}.", results[0])

    return Draft("choose", task, answer, offered, script)


# ---- questions that need no tool ---------------------------------------------------------------


def direct_family(rng: random.Random, p: Pools) -> Draft:
    mode = rng.randrange(4)
    if mode == 0:
        name = rng.choice(p.person)
        answer = name
        task = _pick(rng, [f"Hi, my name is {name}. What is my name?", f"I am {name}. Who am I?"])
        why = "The user told me their name."
    elif mode == 1:
        word = f"{rng.choice(p.adj)}-{rng.choice(p.noun)}-{p.number(rng, 10, 999)}"
        answer = word
        task = _pick(rng, [f"Repeat this code word exactly: {word}", f"Say back the code {word}."])
        why = "The user wants the code word repeated."
    else:
        things = rng.sample(p.noun, rng.randint(3, 6))
        first = mode == 2
        answer = things[0] if first else things[-1]
        which = "first" if first else "last"
        task = f"What is the {which} item in this list: {', '.join(things)}?"
        why = f"The {which} item of the list is {answer}."
    tools = rng.sample(["calculator", "read_file", "list_dir", "python"], 2)

    def script() -> Script:
        yield Final(f"{why} No tool is needed.", answer)

    return Draft("direct", task, answer, tools, script)


# ---- a tool error, then a corrected call --------------------------------------------------------


def error_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.5:
        a, b = p.number(rng, 10, 9999), p.number(rng, 2, 999)
        sign = rng.choice(["x", "×"])
        bad, good = f"{a} {sign} {b}", f"{a} * {b}"
        answer = calc.calculate(good)
        task = _pick(rng, [f"What is {bad}?", f"Compute {bad} please."])

        def script() -> Script:
            yield Step(
                f"I need {bad}. I will use the calculator.",
                [Call("calculator", {"expression": bad})],
                loss=False,
            )
            results = yield Step(
                f"The calculator rejected {sign}. I will write the product with *.",
                [Call("calculator", {"expression": good})],
            )
            yield Final(f"The calculator returned {results[0]}.", results[0])

        return Draft("error", task, answer, ["calculator"], script)
    folder = rng.choice(p.dir)
    name = p.filename(rng)
    kv = _kv_file(rng, p)
    key = rng.choice(list(kv))
    files = {f"{folder}/{name}": _render_kv(kv)}
    for other in _distinct_names(rng, p, 2):
        if other != name:
            files[f"{rng.choice(p.dir)}/{other}"] = _render_kv(_kv_file(rng, p))
    value = kv[key]
    task = _pick(rng, [f"What is the {key} in {name}?", f"Tell me the {key} from {name}."])

    # Every step restates the asked key: three tool results later the user's question is past the
    # 128-token window, and a copy from the previous step (inside it) is what a small model learns
    # reliably; without the restatement the answer was another key's value (run-cpu-4).
    def script_file() -> Script:
        yield Step(f"I will read {name} for the {key}.", [Call("read_file", {"path": name})])
        yield Step(
            f"{name} is not in the top folder. I will search for it to get the {key}.",
            [Call("shell", {"command": f"find . -name '{name}'"})],
        )
        yield Step(
            f"It is {folder}/{name}. I will read the {key} there.",
            [Call("read_file", {"path": f"{folder}/{name}"})],
        )
        yield Final(f"The file says {key}: {value}.", value)

    return Draft("error", task, value, ["read_file", "list_dir", "shell"], script_file, files)


# ---- parallel calls in one block ---------------------------------------------------------------


def parallel_family(rng: random.Random, p: Pools) -> Draft:
    if rng.random() < 0.5:
        (e1, s1), (e2, s2) = _expression(rng, p), _expression(rng, p)
        r1, r2 = calc.calculate(e1), calc.calculate(e2)
        answer = f"{r1} and {r2}"
        task = _pick(rng, [f"What are {s1} and {s2}?", f"Compute both {s1} and {s2}."])

        def script() -> Script:
            results = yield Step(
                f"I need {e1} and {e2}. I will run both in parallel.",
                [Call("calculator", {"expression": e1}), Call("calculator", {"expression": e2})],
            )
            yield Final(f"The results are {results[0]} and {results[1]}.", f"{results[0]} and {results[1]}")

        return Draft("parallel", task, answer, ["calculator", "read_file"], script)
    n1, n2 = _distinct_names(rng, p, 2, "txt")
    v1, v2 = p.number(rng, 10, 99999), p.number(rng, 10, 99999)
    files = {n1: f"value: {v1}\n", n2: f"value: {v2}\n"}
    expr = f"{v1} + {v2}"
    answer = calc.calculate(expr)
    task = _pick(
        rng, [f"Add the values in {n1} and {n2}.", f"What is the sum of the values stored in {n1} and {n2}?"]
    )

    def script_files() -> Script:
        yield Step(
            f"I will read {n1} and {n2} in parallel.",
            [Call("read_file", {"path": n1}), Call("read_file", {"path": n2})],
        )
        results = yield Step(
            f"The values are {v1} and {v2}. I will add them.", [Call("calculator", {"expression": expr})]
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("parallel", task, answer, ["read_file", "calculator"], script_files, files)


FAMILIES: dict[str, tuple[Callable[[random.Random, Pools], Draft], float]] = {
    "calc": (calc_family, 1.5),
    "file": (file_family, 2.0),
    "csv": (csv_family, 1.0),
    "chain": (chain_family, 1.0),
    "choose": (choose_family, 1.0),
    "direct": (direct_family, 0.8),
    "error": (error_family, 0.8),
    "parallel": (parallel_family, 1.0),
}
