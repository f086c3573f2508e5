"""Families over the workspace files: reading, listing and searching them, summing a CSV with python or
shell, and reading a file before computing on what it said. The file helpers here also build the files of
the error and parallel families (`patterns`).
"""

from __future__ import annotations

import random

from agentkit.tiny import calc
from agentkit.train.families.script import Call, Draft, Final, Script, Step, say
from agentkit.train.vocab import Pools


def _stdout_value(text: str) -> str:
    """The printed value in a shell/python tool result (its first line; the status line comes last)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0].strip() if lines else ""


# ---- reading and listing files ------------------------------------------------------------------

KEYS = ("port", "owner", "city", "limit", "code", "color", "version", "count")


def kv_file(rng: random.Random, p: Pools) -> dict[str, str]:
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


def render_kv(kv: dict[str, str]) -> str:
    return "".join(f"{k}: {v}\n" for k, v in kv.items())


def distinct_names(rng: random.Random, p: Pools, n: int, ext: str | None = None) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        name = p.filename(rng, ext)
        if name not in names:
            names.append(name)
    return names


def file_family(rng: random.Random, p: Pools) -> Draft:
    n_files = rng.randint(2, 5)
    names = distinct_names(rng, p, n_files)
    folder = rng.choice(p.dir) if rng.random() < 0.5 else ""
    files: dict[str, str] = {}
    contents: dict[str, dict[str, str]] = {}
    for name in names:
        kv = kv_file(rng, p)
        path = f"{folder}/{name}" if folder else name
        files[path] = render_kv(kv)
        contents[path] = kv
    mode = rng.randrange(3)
    if mode == 0:
        path = rng.choice(list(files))
        key = rng.choice(list(contents[path]))
        value = contents[path][key]
        task = say(
            rng,
            p,
            [
                f"What is the {key} in {path}?",
                f"Read {path} and tell me its {key}.",
                f"Which {key} does the file {path} set?",
                f"Look up the {key} value in {path}.",
            ],
            "file_read",
            path=path,
            key=key,
        )

        def script() -> Script:
            yield Step(f"I will read {path} and find the {key} line.", [Call("read_file", {"path": path})])
            yield Final(f"The file says {key}: {value}.", value)

        stem = path.rsplit(".", 1)[0]
        unique = sum(f.rsplit(".", 1)[0] == stem for f in files) == 1
        if p.phrasing is not None and not folder and unique and p.phrasing.rng.random() < 0.15:
            # the user leaves the extension off: list the folder to find the file's full name
            task = p.phrasing.compose("file_read", {"path": stem, "key": key})

            def script_stem() -> Script:
                yield Step(
                    f"I need the {key} in the file {stem}. I will list the folder to find its full name.",
                    [Call("list_dir", {"path": "."})],
                )
                yield Step(
                    f"The listing has {path}. I will read the {key} there.",
                    [Call("read_file", {"path": path})],
                )
                yield Final(f"The file says {key}: {value}.", value)

            return Draft("file_read", task, value, ["read_file", "list_dir"], script_stem, files)
        return Draft("file_read", task, value, ["read_file", "list_dir"], script, files)
    if mode == 1:
        where = folder or "."
        listed = sorted(n.rsplit("/", 1)[-1] for n in files)
        task = say(
            rng,
            p,
            [
                f"How many files are in the {folder or 'current'} folder?",
                f"Count the files in {where}.",
                f"How many files does the directory {where} contain?",
            ],
            "file_list",
            folder=where,
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
    task = say(
        rng,
        p,
        [
            f"Which file mentions {needle}?",
            f"Find the file that contains {needle}.",
            f"In which file does {needle} appear?",
        ],
        "file_grep",
        needle=needle,
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
        task = say(
            rng,
            p,
            [f"What is the total qty in {name}?", f"Sum the qty column of {name}."],
            "csv_total",
            file=name,
        )
        py = f"{_CSV_LOAD.format(name=name)}print(sum(int(r['qty']) for r in rows))"
        sh = f"awk -F, 'NR>1 {{s+=$3}} END {{print s}}' {name}"
        what = "sum the qty column"
    elif mode == 1:
        city = rng.choice(cities)
        answer = str(sum(1 for _, c, _ in rows if c == city))
        task = say(
            rng,
            p,
            [f"How many rows in {name} are for {city}?", f"Count the {city} rows in {name}."],
            "csv_city",
            file=name,
            city=city,
        )
        py = f"{_CSV_LOAD.format(name=name)}print(sum(1 for r in rows if r['city'] == '{city}'))"
        sh = f"grep -c ',{city},' {name}"
        what = f"count the rows for {city}"
    else:
        item = rng.choice(items)
        answer = str(sum(q for i, _, q in rows if i == item))
        task = say(
            rng,
            p,
            [f"How many {item} in total does {name} list?", f"Sum the qty of {item} in {name}."],
            "csv_item",
            file=name,
            item=item,
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
    task = say(
        rng,
        p,
        [
            f"{name} describes an order. What is its total price?",
            f"Read {name} and compute unit_price times quantity.",
            f"What does the order in {name} cost in total?",
        ],
        "chain",
        file=name,
    )

    def script() -> Script:
        yield Step(f"I will read {name} first.", [Call("read_file", {"path": name})])
        results = yield Step(
            f"The file says unit_price: {price} and quantity: {qty}. I will multiply them.",
            [Call("calculator", {"expression": expr})],
        )
        yield Final(f"The calculator returned {results[0]}.", results[0])

    return Draft("chain", task, answer, ["read_file", "calculator", "list_dir"], script, files)
