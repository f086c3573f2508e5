"""Prefix cache across sequences: `SequenceState` snapshots at 128-token boundaries in a radix tree over ids.

Why snapshots, not pages: V4's state is not a list of per-token KV rows that can be shared page by page
(what vLLM's and SGLang's block caches assume and what gave their first V4 releases 0% hits): it is a
128-slot window ring, compressed entries that pool 4 or 128 tokens each, and compressor tails holding a
partial block. A snapshot of the whole state at position p continues the sequence bit-for-bit, and at a
multiple of 128 every compressor (ratios 4 and 128) has just closed a block, so the snapshot is exactly
"the first p tokens" with no partial pooling in flight. So the cache holds whole snapshots, and only at
such block boundaries, which also keeps the tree sparse.

The tree is a radix tree whose edges are whole 128-token blocks (SGLang's radix cache with page size 128):
a node at depth k*128 is identified by the ids of its path and may hold a snapshot (in memory, on disk or
both). Nodes without a snapshot ("path nodes") remember which prompts went through there, which is how the
engine finds divergence points worth snapshotting (see `plan`). A node may also be *pending*: a running
sequence promised to snapshot there, so a request that would reuse it waits for it instead of prefilling
the same prefix a second time (`probe(...).wait`).

Memory: snapshots are held in LRU order under `cache_bytes` (exact `nbytes()` of the trimmed copies);
path nodes are bounded in number (`max_nodes`). Disk tier (`cache_dir`): every snapshot is written through
once, as `SequenceState.to_bytes()` under a name that is a hash chain over the model's fingerprint and the
prefix's blocks, so another process with the same weights finds it without any in-memory tree. A file that
fails to load (`StateFormatError`: checksum, truncation, version) or does not describe the prefix it is
named for (position, configuration, dtype, ratios) is deleted and counted, never used. The disk tier is not
size-bounded here: that is the user's folder.

Not thread-safe by itself beyond its counters: the engine calls it from its one scheduler thread; `stats()`
may be read from anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.state import SequenceState, StateFormatError, config_key

BLOCK = 128
"""Snapshot granularity: the compression block of the HCA layers (ratio 128) and a multiple of CSA's 4."""

_SUFFIX = ".state"


@dataclass
class CacheStats:
    """Counters (monotonic) and gauges (`bytes_held`, `snapshots`, `nodes`) of one prefix cache."""

    hits: int = 0
    """Lookups that restored a cached prefix (memory or disk)."""
    misses: int = 0
    tokens_reused: int = 0
    """Prompt tokens not prefilled thanks to the cache (the restored snapshots' positions, summed)."""
    bytes_held: int = 0
    snapshots: int = 0
    nodes: int = 0
    inserts: int = 0
    evictions: int = 0
    disk_hits: int = 0
    disk_writes: int = 0
    disk_corrupt: int = 0
    """Cache files found damaged or inconsistent: each was deleted and its prefix recomputed."""


@dataclass(eq=False)
class _Node:
    parent: _Node | None
    key: tuple[int, ...]
    depth: int
    digest: str
    children: dict[tuple[int, ...], _Node] = field(default_factory=dict)
    snap: SequenceState | None = None
    nbytes: int = 0
    pending: object | None = None
    on_disk: bool = False
    last_used: int = 0


@dataclass(frozen=True)
class Probe:
    """What the in-memory tree knows about a prompt (no disk access, no counters touched)."""

    cached: int
    """Longest usable prefix (tokens) with a snapshot in memory, <= len(prompt) - 1."""
    shared: int
    """Deepest block boundary of the prompt that some earlier prompt also went through."""
    wait: bool
    """A running sequence will soon snapshot a usable prefix longer than `cached`: better to wait for it."""


def model_fingerprint(model: torch.nn.Module, config: ModelConfig) -> str:
    """A name for "these weights": the config plus every tensor's name, shape, dtype and a strided sample of
    its values. Disk snapshots are only valid for the weights that made them, and hashing every byte of a
    large checkpoint at start-up would cost seconds; a sample of each tensor separates checkpoints in
    practice (pass `cache_namespace` to the engine to name the weights yourself)."""
    h = hashlib.sha256(config.model_dump_json().encode())
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            sample = flat[::step][:4096].contiguous().cpu()
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            if sample.numel():
                h.update(sample.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class PrefixCache:
    """Snapshots of sequence states at 128-token boundaries, shared by every request of one engine."""

    def __init__(
        self,
        config: ModelConfig,
        namespace: str,
        *,
        cache_bytes: int,
        cache_dir: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_nodes: int = 1 << 16,
    ) -> None:
        self.config, self.device, self.dtype = config, torch.device(device), dtype
        self.cache_bytes, self.max_nodes = max(0, int(cache_bytes)), max_nodes
        self._key = config_key(config)
        self._ratios = [config.ratio(i) for i in range(config.n_layers)]
        self.dir = Path(cache_dir) / namespace if cache_dir is not None else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._root = _Node(None, (), 0, hashlib.sha256(namespace.encode()).hexdigest())
        self._lru: OrderedDict[int, _Node] = OrderedDict()  # id(node) -> node, oldest first
        self._owned: dict[int, list[_Node]] = {}  # id(owner) -> nodes it promised to snapshot
        self._stats = CacheStats(nodes=1)
        self._tick = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cache_bytes > 0 or self.dir is not None

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(**self._stats.__dict__)

    # ------------------------------------------------------------------ the tree
    def _walk(self, tokens: Sequence[int], create: bool) -> list[_Node]:
        """Nodes of the prompt's full blocks, root first; stops at the first missing one unless `create`."""
        path, node = [self._root], self._root
        for k in range(len(tokens) // BLOCK):
            key = tuple(tokens[k * BLOCK : (k + 1) * BLOCK])
            child = node.children.get(key)
            if child is None:
                if not create:
                    break
                child = _Node(node, key, node.depth + BLOCK, _chain(node.digest, key))
                node.children[key] = child
                self._stats.nodes += 1
            path.append(child)
            node = child
        return path

    def probe(self, tokens: Sequence[int]) -> Probe:
        """The memory tree's view of a prompt; at least one token always stays to be extended."""
        usable = (len(tokens) - 1) // BLOCK * BLOCK
        path = self._walk(tokens, create=False)
        cached = max((n.depth for n in path if n.snap is not None and n.depth <= usable), default=0)
        wait = any(n.pending is not None and cached < n.depth <= usable for n in path)
        return Probe(cached=cached, shared=path[-1].depth, wait=wait)

    def plan(self, tokens: Sequence[int], start: int, owner: object, every: int | None) -> list[int]:
        """Positions where the owner (a running sequence that will prefill `tokens` from `start`) should
        snapshot, each marked pending so that others wait for it rather than recompute it.

        Policy: (1) the last block boundary of the prompt (a repeated or extended prompt, e.g. an agent's
        next turn, reuses all of it); (2) the deepest boundary this prompt shares with an earlier one (a
        divergence point: the third request with a common system prompt reuses it whatever came after);
        (3) every `every` tokens (a request arriving while this one prefills can start from the nearest
        one instead of from scratch). Nodes that already hold a snapshot or are pending are skipped.
        """
        shared = self._walk(tokens, create=False)[-1].depth
        path = self._walk(tokens, create=True)
        want = {len(tokens) // BLOCK * BLOCK, shared}
        if every:
            step = max(BLOCK, every // BLOCK * BLOCK)
            want.update(range(step, len(tokens) + 1, step))
        out = []
        for node in path[1:]:
            if node.depth in want and node.depth > start and node.snap is None and node.pending is None:
                if node.on_disk or (self.dir is not None and self._file(node.digest).is_file()):
                    node.on_disk = True
                    continue
                node.pending = owner
                self._owned.setdefault(id(owner), []).append(node)
                out.append(node.depth)
        self._prune()
        return out

    def release(self, owner: object) -> None:
        """Drop the owner's remaining promises (it finished, failed or was cancelled)."""
        for node in self._owned.pop(id(owner), []):
            if node.pending is owner:
                node.pending = None

    # ------------------------------------------------------------------ lookups
    def acquire(self, tokens: Sequence[int]) -> SequenceState | None:
        """The snapshot of the longest usable cached prefix (memory, else disk), or None (a miss).

        The returned snapshot belongs to the cache: restore from it, never extend it.
        """
        usable = (len(tokens) - 1) // BLOCK * BLOCK
        path = self._walk(tokens, create=False)
        best = max(
            (n for n in path if n.snap is not None and n.depth <= usable), key=lambda n: n.depth, default=None
        )
        found = best.snap if best is not None else None
        depth = best.depth if best is not None else 0
        if self.dir is not None:
            loaded = self._from_disk(tokens, path, depth, usable)
            if loaded is not None:
                found, depth = loaded
        with self._lock:
            if found is None:
                self._stats.misses += 1
                return None
            self._stats.hits += 1
            self._stats.tokens_reused += depth
        if best is not None and best.depth == depth:
            self._touch(best)
        return found

    def _from_disk(
        self, tokens: Sequence[int], path: list[_Node], have: int, usable: int
    ) -> tuple[SequenceState, int] | None:
        """The deepest valid file for a boundary in (have, usable]; damaged files are deleted on the way."""
        digests, digest = [], self._root.digest
        for k in range(usable // BLOCK):
            digest = _chain(digest, tuple(tokens[k * BLOCK : (k + 1) * BLOCK]))
            digests.append(digest)
        for k in range(len(digests), have // BLOCK, -1):
            f = self._file(digests[k - 1])
            if not f.is_file():
                continue
            try:
                snap = self._load(f, k * BLOCK)
            except (OSError, StateFormatError):
                with contextlib.suppress(OSError):
                    f.unlink()
                with self._lock:
                    self._stats.disk_corrupt += 1
                continue
            with self._lock:
                self._stats.disk_hits += 1
            node = self._walk(tokens[: k * BLOCK], create=True)[-1]
            node.on_disk = True
            self._hold(node, snap)
            return snap, k * BLOCK
        return None

    def _load(self, f: Path, pos: int) -> SequenceState:
        snap = SequenceState.from_bytes(f.read_bytes(), device=self.device)
        ratios = [ls.ratio for ls in snap.layers]
        if (
            snap.pos != pos
            or snap.config_key != self._key
            or snap.dtype != self.dtype
            or ratios != self._ratios
        ):
            raise StateFormatError(f"{f.name} does not hold the {pos}-token prefix of this model")
        for ls in snap.layers:  # sizes follow from pos: a header edited into consistency still fails here
            if ls.window.shape[0] != self.config.window_size:
                raise StateFormatError(f"{f.name}: window of {ls.window.shape[0]} rows")
            for name in ("comp", "idx"):
                t = getattr(ls, name)
                if t is not None and t.shape[0] != pos // ls.ratio:
                    raise StateFormatError(f"{f.name}: {name} has {t.shape[0]} rows for {pos} tokens")
        return snap

    # ------------------------------------------------------------------ inserts and eviction
    def insert(self, tokens: Sequence[int], snap: SequenceState, owner: object | None = None) -> bool:
        """Hold `snap` (the state after exactly `tokens`, a whole number of blocks) for later requests.

        The snapshot is written to disk first (when there is a disk tier), then held in memory if it fits
        `cache_bytes`, evicting least-recently-used snapshots. Returns whether it is held in memory.
        """
        if len(tokens) % BLOCK or not tokens or snap.pos != len(tokens):
            raise ValueError(f"snapshots are taken at multiples of {BLOCK} tokens, got {len(tokens)}")
        node = self._walk(tokens, create=True)[-1]
        if node.pending is not None and (owner is None or node.pending is owner):
            node.pending = None
        with self._lock:
            self._stats.inserts += 1
        if self.dir is not None and not node.on_disk:
            self._write(node.digest, snap)
            node.on_disk = True
        if node.snap is not None:
            self._touch(node)
            return True
        return self._hold(node, snap)

    def _hold(self, node: _Node, snap: SequenceState) -> bool:
        size = snap.nbytes()
        if size > self.cache_bytes:
            return False
        with self._lock:
            while self._stats.bytes_held + size > self.cache_bytes and self._lru:
                _, old = self._lru.popitem(last=False)
                self._stats.bytes_held -= old.nbytes
                self._stats.snapshots -= 1
                self._stats.evictions += 1
                old.snap, old.nbytes = None, 0
            node.snap, node.nbytes = snap, size
            self._stats.bytes_held += size
            self._stats.snapshots += 1
        self._touch(node)
        return True

    def _touch(self, node: _Node) -> None:
        self._tick += 1
        node.last_used = self._tick
        if node.snap is not None:
            with self._lock:
                self._lru[id(node)] = node
                self._lru.move_to_end(id(node))

    def _prune(self) -> None:
        """Bound the number of path nodes: drop least-recently-touched leaves that hold nothing."""
        if self._stats.nodes <= self.max_nodes:
            return
        leaves = []
        stack = [self._root]
        while stack:
            n = stack.pop()
            stack.extend(n.children.values())
            if not n.children and n.parent is not None:
                leaves.append(n)
        leaves.sort(key=lambda n: n.last_used)
        for n in leaves:
            if self._stats.nodes <= self.max_nodes * 9 // 10:
                break
            while n.parent is not None and not n.children and n.snap is None and n.pending is None:
                del n.parent.children[n.key]
                with self._lock:
                    self._stats.nodes -= 1
                n = n.parent

    # ------------------------------------------------------------------ disk
    def _file(self, digest: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{digest}{_SUFFIX}"

    def _write(self, digest: str, snap: SequenceState) -> None:
        """Atomic write-through (temp file + rename): a crash leaves either no file or a whole one."""
        target = self._file(digest)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(snap.to_bytes())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with self._lock:
            self._stats.disk_writes += 1

    def files(self) -> list[Path]:
        """The disk tier's snapshot files (tests, tools)."""
        return sorted(self.dir.glob(f"*{_SUFFIX}")) if self.dir is not None else []


def _chain(parent: str, block: tuple[int, ...]) -> str:
    """The name of a prefix: hash of its parent's name and its last block, so names need no tree."""
    return hashlib.sha256((parent + json.dumps(block, separators=(",", ":"))).encode()).hexdigest()


__all__ = ["BLOCK", "CacheStats", "PrefixCache", "Probe", "model_fingerprint"]
