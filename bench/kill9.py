"""Durable runs under `kill -9`: a 20-step run killed at random moments, resumed, compared.

Run: `python bench/kill9.py [--kills 50] [--seed 0] [--store file|sqlite|both]`. Prints a table of
where each kill landed (the run's last checkpoint phase, and whether a store write or a tool was under
way) against the outcome, and writes the results as JSON with `--json PATH`.

The run: a scripted model (the step's output computed from the request, so a fresh process produces
the same turn again) makes 19 steps of two parallel calls to `append` (which appends its line to
`effects.txt` in the sandbox workspace) and answers at step 20. The second call of each step carries a
long argument, so the first one runs while the model is still writing: kills land during a model
call with some calls done and some running, too. `append` is idempotent in effect (it
appends a line only once) and says so (`idempotent=True`); every *invocation* is also logged to
`invocations.log`, outside that guarantee, so the harness can see which calls ran again.

For each kill: a child process starts the run (or resumes it) under a store; the parent kills it with
SIGKILL after a random delay; a second child resumes it (`agent.resume`) to the end. Checked against an
uninterrupted run: the same final transcript, token for token; `effects.txt` holds every call's line
exactly once; and no call whose result was in the store at the kill was invoked again.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

STEPS = 20
CHILD = r"""
import json, os, sys, time, anyio
from agentkit.agent import Agent
from agentkit.backends import ScriptedModel
from agentkit.dsml import render_assistant_turn
from agentkit.messages import AssistantMessage
from agentkit.store import FileStore, SQLiteStore
from agentkit.tools.sandbox import LocalSandbox
from agentkit.tools.tool import tool

work, store_kind, mode, slow = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
STEPS = {steps}

@tool(idempotent=True)
def append(line: str, pad: str = "") -> str:
    "Append a line to effects.txt (once: a line already there is not written again)."
    with open(os.path.join(work, "invocations.log"), "a") as f:
        f.write(line + "\n")
    time.sleep(0.01 if line.endswith("a") else 0.03)
    path = os.path.join(work, "effects.txt")
    have = open(path).read().split("\n") if os.path.exists(path) else []
    if line not in have:
        with open(path, "a") as f:
            f.write(line + "\n")
    return "ok " + line

def turn(reasoning, content, calls):
    msg = {"reasoning_content": reasoning, "content": content, "tool_calls": calls}
    return render_assistant_turn(msg, "thinking")

def output(request):
    k = sum(isinstance(m, AssistantMessage) for m in request.messages) + 1
    if k >= STEPS:
        return turn("all done", "done", [])
    # b carries a long argument, so a is running (or done) while the model is still writing b
    args = [json.dumps({"line": f"s{k}-a"}), json.dumps({"line": f"s{k}-b", "pad": "." * 20000})]
    return turn(f"step {k}", "", [{"type": "function", "function": {"name": "append", "arguments": a}}
                                  for a in args])

class SlowFileStore(FileStore):
    # widens the store's write windows: a snapshot waits before its rename, a journal line is written
    # in two halves with a pause between (a kill there leaves a torn last line)
    def save(self, state, kv=None, *, keep_kv=False):
        real_replace, real_write = os.replace, os.write
        def replace(a, b):
            time.sleep(slow)
            real_replace(a, b)
        def write(fd, data):
            half = len(data) // 2
            n = real_write(fd, data[:half])
            time.sleep(slow)
            return n + real_write(fd, data[half:])
        os.replace, os.write = replace, write
        try:
            super().save(state, kv, keep_kv=keep_kv)
        finally:
            os.replace, os.write = real_replace, real_write

if store_kind == "file":
    store = SlowFileStore(os.path.join(work, "store"))
else:
    store = SQLiteStore(os.path.join(work, "runs.db"))
agent = Agent(ScriptedModel([output] * (4 * STEPS)), [append], store=store,
              sandbox=lambda: LocalSandbox(workspace=work))
print("ready", flush=True)
async def main():
    if mode == "start":
        r = await agent.run("go", run_id="job")
    else:
        r = await agent.resume("job", force=True)
    print(json.dumps({"status": r.status, "transcript": r.transcript.text}), flush=True)
anyio.run(main)
""".replace("{steps}", str(STEPS))


def child(work: Path, store: str, mode: str, slow: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(work), store, mode, str(slow)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str]) -> dict[str, str]:
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def record_at_kill(work: Path, store: str) -> dict[str, object]:
    """The run's state as the store holds it right after the kill (what resume will start from)."""
    from agentkit.store import FileStore, SQLiteStore, StoreError

    if store == "file":
        if not (work / "store" / "job.json").exists():
            return {}
        st = FileStore(work / "store")
    else:
        if not (work / "runs.db").exists():
            return {}
        st = SQLiteStore(work / "runs.db")  # type: ignore[assignment]
    try:
        return st.load("job").state.to_dict()
    except StoreError:
        return {}
    finally:
        if isinstance(st, SQLiteStore):
            st.close()


def torn_write(work: Path) -> bool:
    """A store write was under way at the kill: a snapshot's temporary file, or a torn journal line."""
    if list((work / "store").glob(".*.tmp")):
        return True
    log = work / "store" / "job.log"
    return log.exists() and not log.read_bytes().endswith(b"\n") and log.stat().st_size > 0


def uninterrupted(store: str) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.monotonic()
        proc = child(Path(tmp), store, "start", 0.0)
        assert proc.stdout is not None
        proc.stdout.readline()
        t_ready = time.monotonic()
        result = finish(proc)
        assert result["status"] == "completed", result
        return result["transcript"], time.monotonic() - t_ready if t_ready > t else 0.0


def one_kill(store: str, delay: float, slow: float, reference: str) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proc = child(work, store, "start", slow)
        assert proc.stdout is not None
        proc.stdout.readline()  # imports done, the run starts now
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = record_at_kill(work, store)
        tmp_files = torn_write(work) if store == "file" else False
        invoked = (
            Counter((work / "invocations.log").read_text().split())
            if (work / "invocations.log").exists()
            else Counter()
        )
        phase = str(state.get("phase", "-")) if state else "no record"
        status = str(state.get("status", "-")) if state else "-"
        done_at_kill = set()
        for i, call in enumerate(state.get("block", []) if state else []):
            if str(i) in (state.get("block_results") or {}):
                done_at_kill.add(
                    json.loads(call["arguments_json"])["line"]
                    if "arguments_json" in call
                    else call["arguments"]["line"]
                )
        # lines of steps already appended to the transcript count as done too
        for m in state.get("messages", []) if state else []:
            if m.get("role") == "tool":
                done_at_kill.add(m["content"].removeprefix("ok "))
        in_tool = sum(invoked.values()) > 0 and any(line not in done_at_kill for line in invoked)
        if status == "completed":
            result = {"status": "completed", "transcript": reference}  # killed after the end
            resumed = False
        elif not state:  # killed before the run's first checkpoint: it never started, start it again
            result = finish(child(work, store, "start", 0.0))
            resumed = False
        else:
            result = finish(child(work, store, "resume", 0.0))
            resumed = True
        invoked_after = Counter((work / "invocations.log").read_text().split())
        effects = (work / "effects.txt").read_text().split()
        expected = [f"s{k}-{x}" for k in range(1, STEPS) for x in "ab"]
        rerun_completed = sorted(line for line in done_at_kill if invoked_after[line] > 1)
        ok = (
            result["status"] == "completed"
            and result["transcript"] == reference
            and sorted(effects) == sorted(expected)
            and len(effects) == len(set(effects))
            and not rerun_completed
        )
        moment = "store write" if tmp_files else ("tool running" if in_tool else "between steps")
        return {
            "delay_s": round(delay, 3), "store": store, "phase": phase, "moment": moment,
            "resumed": resumed, "ok": ok, "status": result["status"],
            "transcript_equal": result["transcript"] == reference,
            "effects_once": sorted(effects) == sorted(expected) and len(effects) == len(set(effects)),
            "completed_calls_rerun": rerun_completed,
        }  # fmt: skip


def main(kills: int, seed: int, stores: list[str], json_path: str | None) -> list[dict[str, object]]:
    rng = random.Random(seed)
    results = []
    refs = {s: uninterrupted(s) for s in stores}
    for i in range(kills):
        store = stores[i % len(stores)]
        reference, duration = refs[store]
        slow = 0.03 if store == "file" and i % 3 == 0 else 0.0
        delay = rng.uniform(0.0, duration * (1.6 if slow else 1.05))
        results.append(one_kill(store, delay, slow, reference))
    table: Counter[tuple[str, str, str]] = Counter()
    for r in results:
        table[(str(r["phase"]), str(r["moment"]), "ok" if r["ok"] else "FAILED")] += 1
    print(f"\nkill -9 at {kills} random moments ({', '.join(stores)} store), then resume\n")
    print("| checkpoint phase at the kill | what was under way | outcome | kills |")
    print("|---|---|---|---:|")
    for (phase, moment, outcome), n in sorted(table.items()):
        print(f"| {phase} | {moment} | {outcome} | {n} |")
    bad = [r for r in results if not r["ok"]]
    print(f"\n{len(results) - len(bad)} of {len(results)} resumed to the uninterrupted transcript, every "
          "call's effect exactly once, no completed call run again")  # fmt: skip
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--store", choices=["file", "sqlite", "both"], default="both")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    sys.exit(
        0
        if all(
            r["ok"]
            for r in main(a.kills, a.seed, ["file", "sqlite"] if a.store == "both" else [a.store], a.json)
        )
        else 1
    )
