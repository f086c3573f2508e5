"""DSML codec throughput on a realistic ~1 MB agent transcript, and the cost of streaming.

    python bench/dsml.py [--size-mb 1.0] [--repeat 3]

Prints two tables: throughput (MB/s of UTF-8 text) for encode / strict parse / tolerant parse / the
stream parser at several chunk sizes, and a scaling check (time per MB as the input doubles) for the
shapes that would expose quadratic behaviour. Numbers are best-of-N wall time on this machine.

`parse_completion` is the lexer + lxml skeleton path; the row "lxml skeleton parse + tree walk" is the
lxml share of it alone, and "StreamParser tolerant, whole text in one feed" is the incremental machine
doing the same job without lxml (what whole-text tolerant parsing cost before the lxml path).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import random
import time
from collections.abc import Callable
from typing import Any

from agentkit.dsml import ASSISTANT, EOS, THINK_START, USER, StreamParser, encode_messages, parse_completion
from agentkit.dsml.parse import _TolerantLexer
from agentkit.dsml.skeleton import Skeleton

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": desc,
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }
    for name, desc, props in [
        (
            "shell",
            "Run a shell command in the sandbox.",
            {"cmd": {"type": "string"}, "timeout": {"type": "integer"}},
        ),
        ("write_file", "Write a file.", {"path": {"type": "string"}, "content": {"type": "string"}}),
        ("read_file", "Read a file.", {"path": {"type": "string"}, "lines": {"type": "array"}}),
    ]
]

CODE = '''def f(x: int) -> str:
    """Return <x> & "quoted" ]]> text."""
    if x < 10 and x > -1:
        return f"{x!r}: \\\\n ok"
    return json.dumps({"x": x, "items": [1, 2, 3]})
'''


def transcript(target_bytes: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent.", "tools": TOOLS},
        {"role": "user", "content": "Fix the failing tests in the repository and explain the change."},
    ]
    size = 0
    turn = 0
    while size < target_bytes:
        turn += 1
        reasoning = " ".join(
            rng.choice(["Let", "me", "check", "the", "<tests>", "first;", "then", "边界"]) for _ in range(400)
        )
        calls = []
        for i in range(rng.randint(1, 3)):
            kind = rng.choice(["shell", "write_file", "read_file"])
            if kind == "shell":
                args: dict[str, Any] = {
                    "cmd": f"pytest -x -q tests/test_{turn}_{i}.py 2>&1 | tail -20",
                    "timeout": 60,
                }
            elif kind == "write_file":
                args = {"path": f"src/mod_{turn}.py", "content": CODE * rng.randint(5, 40)}
            else:
                args = {"path": f"src/mod_{turn}.py", "lines": [1, rng.randint(2, 400)]}
            calls.append(
                {
                    "id": f"c{turn}_{i}",
                    "type": "function",
                    "function": {"name": kind, "arguments": json.dumps(args)},
                }
            )
        msgs.append({"role": "assistant", "content": "", "reasoning_content": reasoning, "tool_calls": calls})
        for c in calls:
            msgs.append(
                {"role": "tool", "tool_call_id": c["id"], "content": "ok\n" + CODE * rng.randint(2, 20)}
            )
        size = len(encode_messages(msgs, "thinking").encode())
    msgs.append({"role": "assistant", "content": "All tests pass now.", "reasoning_content": "Done."})
    return msgs


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def spans(prompt: str) -> list[str]:
    marker = ASSISTANT + THINK_START
    out = []
    at = prompt.find(marker)
    while at != -1:
        start = at + len(marker)
        end = prompt.find(USER, start)
        out.append(prompt[start : end if end != -1 else len(prompt)])
        at = prompt.find(marker, start)
    return out


def stream_all(texts: list[str], chunk: int, strict: bool) -> None:
    for text in texts:
        p = StreamParser("thinking", strict=strict)
        for i in range(0, len(text), chunk):
            p.feed(text[i : i + chunk])
        p.close()
        p.result()


def skeletons(texts: list[str]) -> list[Skeleton]:
    """The skeletons the tolerant lexer hands to lxml, to time lxml's share on its own."""
    out = []
    for text in texts:
        lexer = _TolerantLexer("thinking")
        lexer.feed(text)
        lexer.close()
        lexer.message(len(text))
        out.append(lexer._sk)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mb", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    msgs = transcript(int(args.size_mb * 1_000_000))
    prompt = encode_messages(msgs, "thinking")
    mb_prompt = len(prompt.encode()) / 1e6
    texts = spans(prompt)
    mb_spans = sum(len(t.encode()) for t in texts) / 1e6
    n_calls = sum(len(parse_completion(t, "thinking").tool_calls) for t in texts)

    rows: list[tuple[str, float, float]] = []
    t = best(lambda: encode_messages(msgs, "thinking"), args.repeat)
    rows.append(("encode_messages (whole transcript)", mb_prompt, t))
    t_strict = best(lambda: [parse_completion(x, "thinking") for x in texts], args.repeat)
    rows.append(("parse_completion strict (lexer + lxml skeleton)", mb_spans, t_strict))
    t_tol = best(lambda: [parse_completion(x, "thinking", strict=False) for x in texts], args.repeat)
    rows.append(("parse_completion tolerant (repairs + lxml skeleton)", mb_spans, t_tol))
    sks = skeletons(texts)
    t = best(lambda: [sk.build(strict=False) for sk in sks], args.repeat)
    rows.append(("  of which lxml skeleton parse + tree walk", mb_spans, t))
    t = best(functools.partial(stream_all, texts, 1 << 30, False), args.repeat)
    rows.append(("StreamParser tolerant, whole text in one feed", mb_spans, t))
    for chunk in (4, 64, 4096):
        for strict in (True, False):
            t = best(functools.partial(stream_all, texts, chunk, strict), args.repeat)
            rows.append(
                (f"StreamParser {'strict' if strict else 'tolerant'}, {chunk}-char chunks", mb_spans, t)
            )

    print(
        f"transcript: {len(msgs)} messages, prompt {mb_prompt:.2f} MB, {len(texts)} assistant spans "
        f"({mb_spans:.2f} MB), {n_calls} tool calls\n"
    )
    print(f"| {'operation':<52} | {'MB':>6} | {'ms':>8} | {'MB/s':>7} | {'vs whole strict':>15} |")
    print(f"|{'-' * 54}|{'-' * 8}|{'-' * 10}|{'-' * 9}|{'-' * 17}|")
    for name, mb, secs in rows:
        ratio = f"{secs / t_strict:.2f}x" if "encode" not in name else ""
        print(f"| {name:<52} | {mb:>6.2f} | {secs * 1e3:>8.1f} | {mb / secs:>7.1f} | {ratio:>15} |")

    print("\nscaling (time per MB must stay flat as the input doubles):\n")
    print(f"| {'shape':<52} | {'MB':>6} | {'ms':>8} | {'ms/MB':>7} |")
    print(f"|{'-' * 54}|{'-' * 8}|{'-' * 10}|{'-' * 9}|")
    one = (
        '<｜DSML｜invoke name="f">\n<｜DSML｜parameter name="a" string="false">1</｜DSML｜parameter>\n'
        "</｜DSML｜invoke>"
    )
    block = "\n\n<｜DSML｜tool_calls>\n"
    value_head = '<｜DSML｜invoke name="w">\n<｜DSML｜parameter name="v" string="true">'
    header_head = '</think>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="'
    shapes: list[tuple[str, Callable[[int], str], Callable[[str], object]]] = [
        (
            "strict, closed block of n invokes (lxml skeleton)",
            lambda n: block + "\n".join([one] * n) + "\n</｜DSML｜tool_calls>" + EOS,
            lambda s: parse_completion(s, "chat"),
        ),
        (
            "strict, unclosed block of n invokes",
            lambda n: block + "\n".join([one] * n) + "\n",
            lambda s: _try(lambda: parse_completion(s, "chat")),
        ),
        (
            "tolerant, n invokes",
            lambda n: block + "\n".join([one] * n) + EOS,
            lambda s: parse_completion(s, "chat", strict=False),
        ),
        (
            "tolerant, n invokes never closed (repairs + lxml)",
            lambda n: block + "\n".join([one.removesuffix("</｜DSML｜invoke>")] * n) + EOS,
            lambda s: parse_completion(s, "chat", strict=False),
        ),
        (
            "stream tolerant, 16-char chunks, one huge value",
            lambda n: value_head + "x<y " * (n * 25),
            lambda s: stream_all([s], 16, False),
        ),
        (
            "stream strict, 16-char chunks, unterminated header",
            lambda n: header_head + "a" * (n * 100),
            lambda s: _try(lambda: stream_all([s], 16, True)),
        ),
        (
            "tolerant, text full of '<' and '｜'",
            lambda n: "a < b ｜ <｜x " * (n * 10) + EOS,
            lambda s: parse_completion(s, "chat", strict=False),
        ),
    ]  # fmt: skip
    for name, make, run in shapes:
        for n in (5_000, 10_000, 20_000):
            text = make(n)
            mb = len(text.encode()) / 1e6
            secs = best(functools.partial(run, text), 1)
            print(f"| {name:<52} | {mb:>6.2f} | {secs * 1e3:>8.1f} | {secs * 1e3 / mb:>7.1f} |")


def _try(fn: Callable[[], object]) -> None:
    with contextlib.suppress(ValueError):
        fn()


if __name__ == "__main__":
    main()
