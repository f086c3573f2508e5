"""Durable runs: the stores, resume after `kill -9` (the 50-kill harness), approvals and interrupted calls.

The harness (`bench/kill9.py`) kills real child processes with SIGKILL at random moments and resumes
them in new processes; the other tests pin the rules it relies on, each judged from outside the run:
the store's record on disk, the tool's own invocation log, the model's next prompt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agentkit.session import RunState
from agentkit.store import FileStore, SQLiteStore, StoreError, open_store

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fifty_kills_all_resume_to_the_uninterrupted_run() -> None:
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import kill9
    finally:
        sys.path.pop(0)
    results = kill9.main(50, seed=int(os.environ.get("AGENTKIT_KILL9_SEED", "0")), stores=["file", "sqlite"],
                         json_path=None)  # fmt: skip
    bad = [r for r in results if not r["ok"]]
    assert bad == []
    assert len(results) == 50
    # the kills really landed everywhere that matters (a broken harness would cluster at one point)
    assert {r["phase"] for r in results} >= {"generating", "streamed", "ready"}
    assert any(r["moment"] == "store write" for r in results)
    assert any(r["moment"] == "tool running" for r in results)


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_store_round_trip_and_kv(tmp_path: Path, kind: str) -> None:
    store = FileStore(tmp_path / "s") if kind == "file" else SQLiteStore(tmp_path / "r.db")
    st = RunState(run_id="r1")
    st.note = "hello ☃"
    store.save(st, b"kv-bytes")
    rec = store.load("r1")
    assert rec.state.to_dict() == st.to_dict() and rec.kv == b"kv-bytes"
    assert rec.owner  # saved while "running": names this process
    st.status = "completed"
    store.save(st, keep_kv=True)
    rec = store.load("r1")
    assert rec.kv == b"kv-bytes" and rec.owner == "" and rec.state.status == "completed"
    store.save(st)  # no KV now: the old one is gone, never mismatched with the new state
    assert store.load("r1").kv is None
    assert store.runs() == ["r1"]
    store.delete("r1")
    with pytest.raises(StoreError, match="no run"):
        store.load("r1")


def test_file_store_survives_a_torn_write_and_rejects_corruption(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    st = RunState(run_id="r2")
    store.save(st, b"kv")
    (tmp_path / ".r2.json.abc.tmp").write_text('{"half": ')  # a write killed before its rename
    assert store.load("r2").state.run_id == "r2" and store.runs() == ["r2"]
    (tmp_path / "r2.kv").write_bytes(b"other")  # KV changed behind the record's back
    assert store.load("r2").kv is None
    (tmp_path / "r2.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable"):
        store.load("r2")
    with pytest.raises(StoreError, match="invalid run id"):
        store.load("../etc/passwd")
    assert isinstance(open_store(tmp_path / "x.db"), SQLiteStore)
    assert isinstance(open_store(tmp_path / "dir"), FileStore)


CHILD = textwrap.dedent(
    """
    import json, os, sys, time, anyio
    from agentkit.agent import Agent
    from agentkit.backends import ScriptedModel
    from agentkit.dsml import render_assistant_turn
    from agentkit.messages import AssistantMessage
    from agentkit.tools.tool import tool

    work, mode, idem = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

    @tool(requires_approval=True, idempotent=idem)
    def deploy(target: str) -> str:
        "Deploy (slowly)."
        with open(os.path.join(work, "invocations.log"), "a") as f:
            f.write(target + "\\n")
        print("deploying", flush=True)
        time.sleep(0 if mode == "again" else 60)
        return "deployed " + target

    def turn(reasoning, content, calls):
        msg = {"reasoning_content": reasoning, "content": content, "tool_calls": calls}
        return render_assistant_turn(msg, "thinking")

    def output(request):
        if any(isinstance(m, AssistantMessage) for m in request.messages):
            return turn("ok", "finished", [])
        args = json.dumps({"target": "prod"})
        return turn("go", "", [{"type": "function", "function": {"name": "deploy", "arguments": args}}])

    agent = Agent(ScriptedModel([output] * 4), [deploy], store=os.path.join(work, "store"))
    async def main():
        if mode == "start":
            r = await agent.run("deploy it", run_id="job")
        elif mode == "approve":
            r = await agent.resume("job", approvals={"call_1_0": True})
        else:
            r = await agent.resume("job")
        out = {"status": r.status, "suffix": agent.model.prompts[-1].suffix if agent.model.prompts else ""}
        print(json.dumps(out), flush=True)
    anyio.run(main)
    """
)


def _child(work: Path, mode: str, idem: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(work), mode, "1" if idem else "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.parametrize("idempotent", [False, True], ids=["plain", "idempotent"])
def test_approved_call_killed_while_running(tmp_path: Path, idempotent: bool) -> None:
    """Paused for approval, approved in a new process, killed while the approved call runs, resumed in
    a third: a plain tool is reported interrupted (not run again), an idempotent one runs again."""
    out, err = _child(tmp_path, "start", idempotent).communicate(timeout=120)
    assert json.loads(out.splitlines()[-1])["status"] == "paused", err
    approver = _child(tmp_path, "approve", idempotent)
    assert approver.stdout is not None
    assert approver.stdout.readline().strip() == "deploying"  # the approved call is running now
    record = FileStore(tmp_path / "store").load("job").state
    assert record.phase == "approving" and record.pending == []
    approver.send_signal(signal.SIGKILL)
    approver.wait()
    resumed = _child(tmp_path, "again", idempotent)
    out, err = resumed.communicate(timeout=120)
    result = json.loads(out.splitlines()[-1])
    assert result["status"] == "completed", err
    runs = (tmp_path / "invocations.log").read_text().split()
    if idempotent:
        assert runs == ["prod", "prod"] and "deployed prod" in result["suffix"]
    else:
        assert runs == ["prod"]  # never run twice
        assert "This call was interrupted" in result["suffix"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from agentkit.store import FileStore
    store = FileStore(sys.argv[1])
    state = store.load("job").state
    state.status = "running"
    store.save(state)  # this process now owns the running run
    print("holding", flush=True)
    time.sleep(60)
    """
)


def test_resume_refuses_a_run_whose_process_is_alive(tmp_path: Path) -> None:
    _child(tmp_path, "start", False).communicate(timeout=120)  # a paused run on disk
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "store")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        _, err = _child(tmp_path, "again", False).communicate(timeout=120)
        assert "still running in process" in err
    finally:
        holder.kill()
        holder.wait()
    # once its owner is gone, the same run resumes
    out, err = _child(tmp_path, "again", False).communicate(timeout=120)
    assert json.loads(out.splitlines()[-1])["status"] in ("completed", "paused"), err


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_journal_replays_to_the_same_state_across_snapshots(tmp_path: Path, kind: str) -> None:
    """Checkpoints of a growing run (appended segments, messages and step records, the last step record
    filled in after it was first saved, a rebuilt transcript) load back exactly, before and after the
    store compacts its journal into a snapshot; a torn last journal line is ignored."""
    from agentkit.messages import ToolMessage, UserMessage
    from agentkit.session import StepRecord, ToolRecord
    from agentkit.store import COMPACT_EVERY

    def make() -> FileStore | SQLiteStore:
        return FileStore(tmp_path / "s") if kind == "file" else SQLiteStore(tmp_path / "r.db")

    store = make()
    st = RunState(run_id="grow")
    for i in range(COMPACT_EVERY + 30):
        st.transcript.append(f"<seg {i}>", generated=i % 2 == 0, token_ids=[i] if i % 3 == 0 else None)
        st.messages.append(ToolMessage(f"c{i}", "t", f"result {i}", is_error=i % 5 == 0))
        if i % 4 == 0:
            st.steps.append(StepRecord(i, float(i)))
        st.steps[-1].tools.append(ToolRecord(f"c{i}", "t", {"i": i}, 0.1, False))
        st.note, st.usage.tool_calls = f"note {i}", i
        if i == 120:  # context compaction: a new transcript epoch
            from agentkit.messages import Transcript

            st.transcript = Transcript(st.transcript.epoch + 1)
            st.transcript.append("compacted")
            st.messages = [UserMessage("kept")]
        store.save(st)
        if i % 37 == 0 or i == COMPACT_EVERY + 29:
            assert make().load("grow").state.to_dict() == st.to_dict(), i
    if kind == "file":
        with open(tmp_path / "s" / "grow.log", "ab") as f:
            f.write(b'{"seq": 99999, "small": ')  # a write cut short
        assert make().load("grow").state.to_dict() == st.to_dict()


def _forced_embedded(answer: str):  # type: ignore[no-untyped-def]
    """The embedded backend on a tiny random model whose output is forced to `answer` (tokens exact)."""
    import torch
    from agentkit.runtime.config import ModelConfig
    from agentkit.runtime.model import V4Model
    from agentkit.runtime.tokenizer import AddedToken, Tokenizer

    from agentkit.backends.embedded import EmbeddedModel
    from agentkit.dsml import ASSISTANT, BOS, DSML, EOS, THINK_END, THINK_START, USER

    specials = [BOS, EOS, USER, ASSISTANT, THINK_START, THINK_END, DSML]
    tok = Tokenizer(
        [], {bytes([b]): b for b in range(256)}, [AddedToken(t, 256 + i) for i, t in enumerate(specials)]
    )
    model = V4Model(ModelConfig.preset("tiny-test", vocab_size=256 + len(specials))).init_random_(0)
    forced = tok.encode(answer, allow_special=True)

    def force(generated: list[int], logits: Any) -> Any:
        out = torch.full_like(logits, float("-inf"))
        out[forced[len(generated)]] = 0.0
        return out

    return EmbeddedModel(model=model, tokenizer=tok, logits_processor=force)


def test_embedded_kv_goes_with_the_run_when_small_and_is_recomputed_when_not(tmp_path: Path) -> None:
    from agentkit.agent import Agent
    from agentkit.dsml import render_assistant_turn

    answer = render_assistant_turn({"reasoning_content": "r", "content": "ok"}, "thinking")
    small = Agent(_forced_embedded(answer), [], store=tmp_path / "a")
    first = small.run_sync("x" * 300)
    assert first.ok
    record = FileStore(tmp_path / "a").load(first.state.run_id)
    assert record.kv is not None  # saved along: a resumed run re-prefills nothing
    again = Agent(_forced_embedded(answer), [])
    again.model.import_state(first.state.run_id, record.kv, record.state.transcript)  # type: ignore[attr-defined]
    before = record.state.usage.prefilled_tokens
    follow = again.run_sync("and now?", state=record.state)
    assert follow.ok and follow.usage.prefilled_tokens - before < 30
    big = Agent(_forced_embedded(answer), [], store=tmp_path / "b", kv_limit=16)
    run = big.run_sync("x" * 300)
    assert FileStore(tmp_path / "b").load(run.state.run_id).kv is None  # too big: recompute instead
