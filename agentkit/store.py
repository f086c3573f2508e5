"""Where durable runs keep their state: a snapshot per run plus an append-only journal of checkpoints.

`Agent(..., store=...)` saves the run's `RunState` (and, with the embedded backend, its KV state when it
is small enough) whenever the run reaches a point it could be resumed from: a tool result landed, a
step ended, results were appended, the run ended. A run's transcript, messages and step records only
ever grow, so a checkpoint writes what changed, not the whole run: one journal entry holding the
small part of the state in full and the new tail of each growing list. That keeps a checkpoint's cost
flat however long the run gets. Every `COMPACT_EVERY` entries (and whenever the lists were rebuilt, as
context compaction does) the store writes a fresh snapshot instead, atomically (temporary file +
rename, or one SQLite transaction), numbered so journal entries older than it are ignored.

A process killed with `kill -9` at any moment leaves the last complete checkpoint: a journal line is
one `write()` (a torn last line, after a power loss, is ignored), a snapshot is renamed into place.
Each checkpoint also names the process running the run (host, boot id, pid, start time), so a second
process cannot resume a run that is still alive elsewhere and run its tools twice.

Built in: `FileStore(dir)` and `SQLiteStore(path)`. Anything with the same four methods works
(`RunStore`); such a store may simply write `state.to_dict()` each time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from agentkit.messages import message_to_dict
from agentkit.session import RunState, SessionError
from agentkit.tools.sandbox._owner import owner_alive, owner_token

COMPACT_EVERY = 200  # journal entries between snapshots: bounds load time, flat cost per checkpoint


class StoreError(RuntimeError):
    """A run could not be saved or loaded (unknown run id, unreadable or corrupt record)."""


@dataclass(slots=True)
class Record:
    """What a store holds for one run."""

    state: RunState
    kv: bytes | None
    owner: str  # the process that last saved it while running ("" once the run stopped)

    def owner_alive(self) -> bool:
        return bool(self.owner) and owner_alive(self.owner) is not False and self.owner != _owner()


@runtime_checkable
class RunStore(Protocol):
    def save(self, state: RunState, kv: bytes | None = None, *, keep_kv: bool = False) -> None:
        """Record a checkpoint atomically. `keep_kv`: the KV saved earlier stays valid."""
        ...

    def load(self, run_id: str) -> Record: ...

    def delete(self, run_id: str) -> None: ...

    def runs(self) -> list[str]: ...


_owner_cache: tuple[int, str] | None = None


def _owner() -> str:
    global _owner_cache
    if _owner_cache is None or _owner_cache[0] != os.getpid():
        _owner_cache = (os.getpid(), owner_token())
    return _owner_cache[1]


def _check_id(run_id: str) -> str:
    if not run_id or not all(c.isalnum() or c in "-_." for c in run_id) or run_id.startswith("."):
        raise StoreError(f"invalid run id {run_id!r} (letters, digits, '-', '_' and '.' only)")
    return run_id


# ---- the journal format, shared by both stores ----------------------------------------------------


@dataclass(slots=True)
class _Mark:
    """How much of a run's growing parts the store already holds (per run, in this process)."""

    seq: int
    epoch: int
    segments: int
    messages: int
    steps: int
    kv_sha: str | None
    since_snapshot: int = 0


@dataclass(slots=True)
class _Tracker:
    marks: dict[str, _Mark] = field(default_factory=dict)

    def entry(self, state: RunState, kv_sha: str | None, keep_kv: bool) -> tuple[dict[str, Any], bool]:
        """(journal entry or snapshot, is_snapshot) for this checkpoint; the mark moves on."""
        mark = self.marks.get(state.run_id)
        sha = (mark.kv_sha if mark else None) if keep_kv and kv_sha is None else kv_sha
        owner = _owner() if state.status == "running" else ""
        tr, msgs, steps = state.transcript, state.messages, state.steps
        full = (
            mark is None
            or mark.epoch != tr.epoch
            or len(tr.segments) < mark.segments
            or len(msgs) < mark.messages
            or len(steps) < mark.steps
            or mark.since_snapshot >= COMPACT_EVERY
        )
        seq = 1 if mark is None else mark.seq + 1
        if full:
            body: dict[str, Any] = {"seq": seq, "owner": owner, "kv_sha256": sha, "state": state.to_dict()}
        else:
            assert mark is not None
            step_from = max(mark.steps - 1, 0)  # the last record is still filled in after it is saved
            body = {
                "seq": seq,
                "owner": owner,
                "kv_sha256": sha,
                "small": state.small_dict(),
                "seg_from": mark.segments,
                "segs": [[s.text, s.generated, s.token_ids, s.trusted] for s in tr.segments[mark.segments :]],
                "msg_from": mark.messages,
                "msgs": [
                    [message_to_dict(m), bool(getattr(m, "is_error", False))] for m in msgs[mark.messages :]
                ],
                "step_from": step_from,
                "steps": [r.to_dict() for r in steps[step_from:]],
            }
        self.marks[state.run_id] = _Mark(
            seq, tr.epoch, len(tr.segments), len(msgs), len(steps), sha,
            0 if full else (mark.since_snapshot + 1 if mark else 0),
        )  # fmt: skip
        return body, full

    def forget(self, run_id: str) -> None:
        self.marks.pop(run_id, None)

    def loaded(self, run_id: str, seq: int, kv_sha: str | None) -> None:
        """After a load: the next save writes a snapshot (numbered on), keeping the KV if asked."""
        self.marks[run_id] = _Mark(seq, -1, 0, 0, 0, kv_sha)


def _replay(
    snapshot: dict[str, Any], entries: list[dict[str, Any]]
) -> tuple[dict[str, Any], str, str | None, int]:
    """The run's full state dict, owner, KV checksum and last sequence number after the journal."""
    data = snapshot["state"]
    owner, sha, seq = snapshot.get("owner", ""), snapshot.get("kv_sha256"), snapshot.get("seq", 0)
    errors = set(data.get("tool_message_errors", []))
    messages = [[m, i in errors] for i, m in enumerate(data["messages"])]
    segments, steps = data["transcript"]["segments"], data.get("steps", [])
    small = {
        k: v for k, v in data.items() if k not in ("transcript", "messages", "tool_message_errors", "steps")
    }
    epoch = data["transcript"].get("epoch", 0)
    for e in entries:
        if e.get("seq", 0) <= seq:
            continue
        seq = e["seq"]
        small = e["small"]
        segments = segments[: e["seg_from"]] + e["segs"]
        messages = messages[: e["msg_from"]] + e["msgs"]
        steps = steps[: e["step_from"]] + e["steps"]
        owner, sha = e.get("owner", ""), e.get("kv_sha256")
    full = {
        **small,
        "transcript": {"epoch": epoch, "segments": segments},
        "messages": [m for m, _ in messages],
        "tool_message_errors": [i for i, (_, err) in enumerate(messages) if err],
        "steps": steps,
    }
    return full, owner, sha, seq


def _state(run_id: str, data: dict[str, Any]) -> RunState:
    try:
        return RunState.from_dict(data)
    except (SessionError, KeyError, TypeError, ValueError) as e:
        raise StoreError(f"the record of run {run_id!r} is unreadable: {e}") from e


# ---- the stores -------------------------------------------------------------------------------------


class FileStore:
    """`<dir>/<run_id>.json` (snapshot), `<run_id>.log` (journal, one JSON line per checkpoint) and
    `<run_id>.kv` (KV bytes, named by SHA-256 in the checkpoint that saved them). `fsync=True` also
    survives power loss (each checkpoint then waits for the disk)."""

    def __init__(self, directory: str | Path, *, fsync: bool = False) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self._tracker = _Tracker()
        self._lock = threading.Lock()

    def _replace(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self.fsync:
            dfd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def save(self, state: RunState, kv: bytes | None = None, *, keep_kv: bool = False) -> None:
        run_id = _check_id(state.run_id)
        with self._lock:
            sha = None
            if kv is not None:
                self._replace(self.dir / f"{run_id}.kv", kv)
                sha = hashlib.sha256(kv).hexdigest()
            body, full = self._tracker.entry(state, sha, keep_kv)
            line = json.dumps(body, ensure_ascii=False).encode()
            if full:
                self._replace(self.dir / f"{run_id}.json", line)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.dir / f"{run_id}.log")  # older entries: numbered below the snapshot
                return
            fd = os.open(
                self.dir / f"{run_id}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
            try:
                os.write(fd, line + b"\n")
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def load(self, run_id: str) -> Record:
        path = self.dir / f"{_check_id(run_id)}.json"
        try:
            snapshot = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"no run {run_id!r} in {self.dir}") from None
        except ValueError as e:
            raise StoreError(f"the record of run {run_id!r} is unreadable: {e}") from e
        entries = []
        with contextlib.suppress(FileNotFoundError):
            for raw in (self.dir / f"{run_id}.log").read_bytes().split(b"\n"):
                if not raw:
                    continue
                try:
                    entries.append(json.loads(raw))
                except ValueError:
                    break  # a torn last line: the checkpoint before it is the last complete one
        try:
            data, owner, sha, seq = _replay(snapshot, entries)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"the record of run {run_id!r} is unreadable: {e}") from e
        kv = None
        if sha:
            with contextlib.suppress(OSError):
                blob = (self.dir / f"{run_id}.kv").read_bytes()
                kv = blob if hashlib.sha256(blob).hexdigest() == sha else None
        with self._lock:
            self._tracker.loaded(run_id, seq, sha if kv is not None else None)
        return Record(_state(run_id, data), kv, owner)

    def delete(self, run_id: str) -> None:
        with self._lock:
            self._tracker.forget(run_id)
        for suffix in (".json", ".log", ".kv"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / f"{_check_id(run_id)}{suffix}")

    def runs(self) -> list[str]:
        return sorted(p.stem for p in self.dir.glob("*.json") if not p.name.startswith("."))


class SQLiteStore:
    """Two tables: `runs` (one snapshot and KV per run) and `journal` (checkpoints since the snapshot).
    Each checkpoint is one transaction (WAL journal: readers never block a checkpoint)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._tracker = _Tracker()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (run_id TEXT PRIMARY KEY, snapshot TEXT NOT NULL, kv BLOB, "
            "updated REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS journal (run_id TEXT NOT NULL, seq INTEGER NOT NULL, entry TEXT "
            "NOT NULL, PRIMARY KEY (run_id, seq))"
        )

    def save(self, state: RunState, kv: bytes | None = None, *, keep_kv: bool = False) -> None:
        run_id = _check_id(state.run_id)
        with self._lock:
            sha = hashlib.sha256(kv).hexdigest() if kv is not None else None
            body, full = self._tracker.entry(state, sha, keep_kv)
            text = json.dumps(body, ensure_ascii=False)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if full:
                    self._db.execute(
                        "INSERT INTO runs (run_id, snapshot, updated) VALUES (?, ?, ?) ON CONFLICT(run_id) "
                        "DO UPDATE SET snapshot = excluded.snapshot, updated = excluded.updated",
                        (run_id, text, time.time()),
                    )
                    self._db.execute("DELETE FROM journal WHERE run_id = ?", (run_id,))
                else:
                    self._db.execute("INSERT INTO journal VALUES (?, ?, ?)", (run_id, body["seq"], text))
                if kv is not None:
                    self._db.execute("UPDATE runs SET kv = ? WHERE run_id = ?", (kv, run_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._tracker.forget(run_id)
                raise

    def load(self, run_id: str) -> Record:
        with self._lock:
            row = self._db.execute(
                "SELECT snapshot, kv FROM runs WHERE run_id = ?", (_check_id(run_id),)
            ).fetchone()
            query = "SELECT entry FROM journal WHERE run_id = ? ORDER BY seq"
            entries = [json.loads(r[0]) for r in self._db.execute(query, (run_id,))]
        if row is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        try:
            data, owner, sha, seq = _replay(json.loads(row[0]), entries)
        except (KeyError, TypeError, ValueError) as e:
            raise StoreError(f"the record of run {run_id!r} is unreadable: {e}") from e
        kv = row[1] if row[1] is not None and sha and hashlib.sha256(row[1]).hexdigest() == sha else None
        with self._lock:
            self._tracker.loaded(run_id, seq, sha if kv is not None else None)
        return Record(_state(run_id, data), kv, owner)

    def delete(self, run_id: str) -> None:
        with self._lock:
            self._tracker.forget(run_id)
            self._db.execute("DELETE FROM runs WHERE run_id = ?", (_check_id(run_id),))
            self._db.execute("DELETE FROM journal WHERE run_id = ?", (run_id,))

    def runs(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT run_id FROM runs ORDER BY run_id")]

    def close(self) -> None:
        self._db.close()


def open_store(spec: str | Path | RunStore) -> RunStore:
    """A store from a path: `*.db` / `*.sqlite` / `sqlite:<path>` is SQLite, anything else a folder."""
    if isinstance(spec, RunStore):
        return spec
    text = str(spec)
    if text.startswith("sqlite:"):
        return SQLiteStore(text.removeprefix("sqlite:"))
    if text.endswith((".db", ".sqlite", ".sqlite3")):
        return SQLiteStore(text)
    return FileStore(text)
