"""Per-sequence decoding state as explicit data (spec §5.4), its snapshots and its byte format.

A `SequenceState` holds, for every main-stack layer, exactly what is needed to continue a sequence
bit-compatibly: the 128-slot window ring (slot = position mod W), the compressed KV entries, the indexer
keys (CSA) and the compressor tail state in the reference layout (fp32 projections of the partial block;
CSA also keeps the last complete block, whose A-halves the next entry pools). A fresh state starts with
value 0 / logit -inf in every tail row, never with a previous request's leftovers (spec §5.7).

A state made with `max_len` (or by a `runtime.decode.StaticDecoder`, whose states are rows of one slab per
layer) holds its compressed arrays preallocated for that many tokens and is only ever written in place: an
extend never allocates or moves state, so a decode step has fixed addresses and shapes (what a CUDA graph
needs). Such a state refuses to grow past `capacity`; one without it grows its arrays by doubling.

Forks share what never changes (copy-on-write). A layer's compressed entries and indexer keys are
append-only: once a sequence is at position p, entry rows below p // ratio are final (an extend writes only
at and after that row; a speculative rollback never goes below the position its step started from). So a
state can hold its first rows as `comp_shared` / `idx_shared`: frozen segments, referenced (never copied)
from the state it was branched or snapshotted from, followed by its own array for the rows it appends.
What a branch must own is only what it rewrites: the window ring, the compressor tails and its new entries.
`SequenceState.branch(snap, max_len)` makes such a preallocated state (what the engine runs forks, agent
continuations and prefix-cache hits in); `snapshot()` shares a growable state's rows as views and clones
only a preallocated state's own rows (those alone may be rewritten in place, by `restore`).
`held_bytes(...)` measures what a set of states really holds (distinct storages).

Serialization is a safetensors blob with a format version and a SHA-256 over the tensor bytes, so a state
survives a restart and a damaged blob is rejected with `StateFormatError` instead of decoding garbage.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields

import torch
from agentkit.runtime.config import ModelConfig
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

FORMAT_NAME = "agentkit.v4.sequence_state"
FORMAT_VERSION = 1


class StateError(ValueError):
    """A state does not fit the model or the request (wrong shapes, position out of range)."""


class StateFormatError(StateError):
    """A serialized state is corrupt, truncated, of another format or of an unsupported version."""


def _overlap(ratio: int) -> int:
    return 2 if ratio == 4 else 1


ENTRY_ARRAYS = ("comp", "idx")
"""The append-only arrays (compressed entries, indexer keys): the only parts forks share."""


@dataclass
class LayerState:
    """One layer's state; only the first pos // ratio rows of the compressed arrays are valid.

    Entry row i of `comp` (or `idx`) is row i of the frozen segments `comp_shared` concatenated, then row
    i - shared_rows("comp") of the own array `comp`. Without shared segments (the usual case) `comp` holds
    every row, as it always did."""

    ratio: int
    window: torch.Tensor
    comp: torch.Tensor | None = None
    comp_tail_kv: torch.Tensor | None = None
    comp_tail_score: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    idx_tail_kv: torch.Tensor | None = None
    idx_tail_score: torch.Tensor | None = None
    comp_shared: tuple[torch.Tensor, ...] = ()
    idx_shared: tuple[torch.Tensor, ...] = ()

    @classmethod
    def of(cls, ratio: int, tensors: dict[str, torch.Tensor]) -> LayerState:
        """A layer state from its named tensors (as `tensors()` gives them); unknown names: TypeError."""
        known = {f.name for f in fields(cls)} - {"ratio", "comp_shared", "idx_shared"}
        if not set(tensors) <= known or "window" not in tensors:
            raise TypeError(f"layer tensors {sorted(tensors)}: not a subset of {sorted(known)} with a window")
        ls = cls(ratio=ratio, window=tensors["window"])
        for k, v in tensors.items():
            setattr(ls, k, v)
        return ls

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensors this layer state owns (shared segments excluded)."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, torch.Tensor)}

    def shared(self, name: str) -> tuple[torch.Tensor, ...]:
        return self.comp_shared if name == "comp" else self.idx_shared if name == "idx" else ()

    def shared_rows(self, name: str) -> int:
        return sum(t.shape[0] for t in self.shared(name))

    def entries(self, name: str, total: int) -> torch.Tensor:
        """Entry rows [0, total) of `comp` or `idx` as one tensor: a view of the own array when nothing is
        shared (no copy), else the segments and own rows concatenated (a temporary the step reads)."""
        own = getattr(self, name)
        segs = self.shared(name)
        if not segs:
            return own[:total]
        s = sum(t.shape[0] for t in segs)
        if total < s:
            raise StateError(f"{name}: {total} rows asked of a state whose first {s} are shared")
        return torch.cat((*segs, own[: total - s]), 0)

    def append_entries(self, name: str, start: int, rows: torch.Tensor) -> None:
        """Write entry rows at [start, start + len): into the own array, growing it by doubling when full
        (a decode step costs O(new rows), not a copy of every entry so far)."""
        at = start - self.shared_rows(name)
        if at < 0:
            raise StateError(f"{name}: row {start} is in this state's shared (frozen) prefix")
        buf = getattr(self, name)
        need = at + rows.shape[0]
        if need > buf.shape[0]:
            grown = buf.new_zeros(max(need, 2 * buf.shape[0], 16), buf.shape[1])
            grown[:at] = buf[:at]
            buf = grown
        with torch.no_grad():
            buf[at:need] = rows.detach().to(buf.dtype)
        setattr(self, name, buf)

    def frozen(self, name: str, count: int, *, owned: bool) -> tuple[torch.Tensor, ...]:
        """Rows [0, count) as segments another state may share: the shared ones as they are, then the own
        rows, as a view when `owned` is False (a growable array, whose valid rows nothing rewrites) or as a
        copy when True (a preallocated array, which `restore` may rewrite in place)."""
        segs = self.shared(name)
        s = sum(t.shape[0] for t in segs)
        if count <= s:
            out: list[torch.Tensor] = []
            left = count
            for t in segs:  # a prefix of the shared rows (a state restored to an earlier point)
                if left <= 0:
                    break
                out.append(t[:left])
                left -= t.shape[0]
            return tuple(out)
        rows = getattr(self, name)[: count - s]
        return (*segs, rows.detach().clone() if owned else rows.detach())


def fresh_tail(
    ratio: int, width: int, device: torch.device | str | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty compressor tail: [c*r, c*width] fp32 values 0 and logits -inf (c = 2 in overlap mode)."""
    c = _overlap(ratio)
    kv = torch.zeros(c * ratio, c * width, dtype=torch.float32, device=device)
    return kv, torch.full_like(kv, float("-inf"))


def fresh_layer(
    config: ModelConfig,
    layer: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    max_len: int | None = None,
) -> LayerState:
    """An empty state for block `layer` (a main-stack layer, or an MTP block at index >= n_layers, whose
    attention keeps its own window and, if its ratio says so, compressor), preallocated for `max_len`."""
    r = config.ratio(layer)
    ls = LayerState(
        ratio=r, window=torch.zeros(config.window_size, config.head_dim, dtype=dtype, device=device)
    )
    if r:
        rows = 0 if max_len is None else entry_capacity(max_len, r)
        ls.comp = torch.zeros(rows, config.head_dim, dtype=dtype, device=device)
        ls.comp_tail_kv, ls.comp_tail_score = fresh_tail(r, config.head_dim, device)
    if r == 4:
        rows = 0 if max_len is None else entry_capacity(max_len, r)
        ls.idx = torch.zeros(rows, config.index_head_dim, dtype=dtype, device=device)
        ls.idx_tail_kv, ls.idx_tail_score = fresh_tail(r, config.index_head_dim, device)
    return ls


@dataclass
class SequenceState:
    """Everything a sequence needs to be extended from position `pos` (= number of tokens processed)."""

    pos: int
    layers: list[LayerState]
    dtype: torch.dtype
    config_key: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    broken: str | None = None
    """Set when an extend failed half-way (e.g. out of memory): the layers may disagree about the position.
    Such a state is refused until `restore()` puts a snapshot back."""
    capacity: int | None = None
    """Tokens the preallocated arrays hold (None: arrays grow on demand)."""
    slot: int | None = None
    """Row of a `StaticDecoder` slab this state lives in (None: it owns its tensors)."""

    @classmethod
    def fresh(
        cls,
        config: ModelConfig,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        max_len: int | None = None,
    ) -> SequenceState:
        """An empty state; with `max_len` its arrays are allocated for that many tokens up front."""
        if max_len is not None and not 0 < max_len <= config.max_seq_len:
            raise StateError(f"max_len must be in [1, {config.max_seq_len}], got {max_len}")
        layers = [fresh_layer(config, i, device, dtype, max_len=max_len) for i in range(config.n_layers)]
        return cls(pos=0, layers=layers, dtype=dtype, config_key=config_key(config), capacity=max_len)

    @classmethod
    def branch(cls, snap: SequenceState, max_len: int) -> SequenceState:
        """A preallocated state (for up to `max_len` tokens) equal to `snap`, sharing its entry rows.

        The window ring and compressor tails are copied (a branch rewrites them); the compressed entries and
        indexer keys up to `snap.pos` are referenced as frozen segments (a growable `snap`'s rows as views,
        a preallocated one's own rows copied once); only rows for the tokens after `snap.pos` are
        allocated. `snap` may be extended or branched again afterwards: nothing of it is ever written."""
        if snap.broken:
            raise StateError(f"cannot branch a broken state: {snap.broken}")
        if not snap.pos <= max_len:
            raise StateError(f"a branch of a {snap.pos}-token state needs max_len >= {snap.pos}")
        owned = snap.capacity is not None or snap.slot is not None
        layers = []
        for ls in snap.layers:
            copy = LayerState(ratio=ls.ratio, window=ls.window.clone())
            for k, v in ls.tensors().items():
                if k in ENTRY_ARRAYS:
                    count = snap.pos // ls.ratio
                    segs = ls.frozen(k, count, owned=owned)
                    rows = entry_capacity(max_len, ls.ratio) - count
                    setattr(copy, f"{k}_shared", segs)
                    setattr(copy, k, v.new_zeros(rows, v.shape[1]))
                elif k != "window":
                    setattr(copy, k, v.clone())
            layers.append(copy)
        return cls(snap.pos, layers, snap.dtype, snap.config_key, dict(snap.meta), capacity=max_len)

    @property
    def device(self) -> torch.device:
        return self.layers[0].window.device

    def _trimmed(self, ls: LayerState, name: str, t: torch.Tensor) -> torch.Tensor:
        """A tensor as saved: the valid entry rows (segments included) of an entry array, else as is."""
        if name in ENTRY_ARRAYS:
            return ls.entries(name, self.pos // ls.ratio)
        return t

    def snapshot(self) -> SequenceState:
        """An independent state (later extends of either side do not affect the other). Windows and tails
        are copied; entry rows are shared where nothing can rewrite them (see the module docstring)."""
        owned = self.capacity is not None or self.slot is not None
        layers = []
        for ls in self.layers:
            copy = LayerState(ratio=ls.ratio, window=ls.window.clone())
            for k, v in ls.tensors().items():
                if k in ENTRY_ARRAYS:
                    segs = ls.frozen(k, self.pos // ls.ratio, owned=owned)
                    if len(segs) == 1 and not ls.shared(k):  # the usual case: one plain array, as before
                        setattr(copy, k, segs[0])
                    else:
                        setattr(copy, f"{k}_shared", segs)
                        setattr(copy, k, v.new_zeros(0, v.shape[1]))
                elif k != "window":
                    setattr(copy, k, v.clone())
            layers.append(copy)
        return SequenceState(self.pos, layers, self.dtype, self.config_key, dict(self.meta), self.broken)

    def restore(self, snap: SequenceState) -> None:
        """Make this state equal to `snap` (which stays untouched and reusable). A preallocated state is
        written in place (it keeps its addresses, e.g. its slab row); `snap` must then fit its capacity."""
        if snap.config_key != self.config_key or len(snap.layers) != len(self.layers):
            raise StateError("snapshot belongs to a model with a different configuration")
        if snap.broken:
            raise StateError(f"cannot restore from a broken state: {snap.broken}")
        if self.capacity is None:
            copy = snap.snapshot()
            self.pos, self.layers, self.dtype, self.meta = copy.pos, copy.layers, copy.dtype, copy.meta
            self.broken = None
            return
        if snap.pos > self.capacity:
            raise StateError(f"snapshot at {snap.pos} tokens does not fit this state ({self.capacity})")
        if snap.dtype != self.dtype:
            raise StateError(f"snapshot dtype {snap.dtype} != state dtype {self.dtype}")
        if any(ls.comp_shared or ls.idx_shared for ls in self.layers):
            raise StateError("a branch state is not restored in place; branch the snapshot anew")
        with torch.no_grad():
            for mine, theirs in zip(self.layers, snap.layers, strict=True):
                for k, v in theirs.tensors().items():
                    src = snap._trimmed(theirs, k, v)
                    getattr(mine, k)[: src.shape[0]].copy_(src)
        self.pos, self.meta, self.broken = snap.pos, dict(snap.meta), None

    def to(self, device: torch.device | str) -> SequenceState:
        if self.slot is not None:
            raise StateError("a decoder slab state cannot move; snapshot() it and move the copy")
        for ls in self.layers:
            for k, v in ls.tensors().items():
                setattr(ls, k, v.to(device))
            ls.comp_shared = tuple(t.to(device) for t in ls.comp_shared)
            ls.idx_shared = tuple(t.to(device) for t in ls.idx_shared)
        return self

    def nbytes(self) -> int:
        """Bytes of the state's content (valid rows, shared ones included): its size as saved, what a
        copy would take. `held_bytes` measures what states actually hold in memory."""
        return sum(
            self._trimmed(ls, k, v).numel() * v.element_size()
            for ls in self.layers
            for k, v in ls.tensors().items()
        )

    # --- serialization ---
    def to_bytes(self) -> bytes:
        if self.broken:
            raise StateError(f"refusing to serialize a broken state: {self.broken}")
        tensors: dict[str, torch.Tensor] = {}
        for i, ls in enumerate(self.layers):
            for k, v in ls.tensors().items():
                tensors[f"layers.{i}.{k}"] = self._trimmed(ls, k, v).detach().contiguous().cpu()
        meta = {
            "format": FORMAT_NAME,
            "version": str(FORMAT_VERSION),
            "pos": str(self.pos),
            "dtype": str(self.dtype).removeprefix("torch."),
            "ratios": json.dumps([ls.ratio for ls in self.layers]),
            "config_key": self.config_key,
            "user_meta": json.dumps(self.meta),
            "sha256": _digest(tensors),
        }
        return st_save(tensors, metadata=meta)

    @classmethod
    def from_bytes(cls, blob: bytes, device: torch.device | str | None = None) -> SequenceState:
        meta = _read_metadata(blob)
        if meta.get("format") != FORMAT_NAME:
            raise StateFormatError(f"not a sequence state blob (format={meta.get('format')!r})")
        if meta.get("version") != str(FORMAT_VERSION):
            raise StateFormatError(f"unsupported sequence state version {meta.get('version')!r}")
        try:
            tensors = st_load(blob)
        except Exception as e:
            raise StateFormatError(f"corrupt sequence state blob: {e}") from e
        if _digest(tensors) != meta.get("sha256"):
            raise StateFormatError("sequence state checksum mismatch (blob corrupted)")
        try:
            ratios = json.loads(meta["ratios"])
            pos = int(meta["pos"])
            dtype = getattr(torch, meta["dtype"])
            layers: list[LayerState] = []
            for i, r in enumerate(ratios):
                named = {
                    k.split(".", 2)[2]: v.to(device)
                    for k, v in tensors.items()
                    if k.startswith(f"layers.{i}.")
                }
                layers.append(LayerState.of(int(r), named))
            user_meta = json.loads(meta.get("user_meta", "{}"))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise StateFormatError(f"inconsistent sequence state metadata: {e}") from e
        return cls(pos=pos, layers=layers, dtype=dtype, config_key=meta["config_key"], meta=user_meta)


def held_bytes(*states: SequenceState) -> int:
    """Memory the given states hold together: every distinct storage under them (own arrays, window rings,
    tails, shared segments) counted once, by its address and whole size (spare capacity included)."""
    seen: dict[tuple[str, int], int] = {}
    for st in states:
        for ls in st.layers:
            for t in (*ls.tensors().values(), *ls.comp_shared, *ls.idx_shared):
                store = t.untyped_storage()
                if store.nbytes():
                    seen[(str(t.device), store.data_ptr())] = store.nbytes()
    return sum(seen.values())


def entry_capacity(max_len: int, ratio: int) -> int:
    """Rows a compressed array needs for `max_len` tokens, plus one: a static decode step writes the
    entry being pooled at index pos // ratio before it completes (invisible until then)."""
    return max_len // ratio + 1


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k]
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _read_metadata(blob: bytes) -> dict[str, str]:
    if len(blob) < 8:
        raise StateFormatError(f"sequence state blob too short ({len(blob)} bytes)")
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or 8 + n > len(blob):
        raise StateFormatError("sequence state blob truncated (header length beyond end)")
    try:
        header = json.loads(blob[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StateFormatError(f"sequence state header is not valid JSON: {e}") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise StateFormatError("sequence state header has no metadata")
    return meta


def config_key(config: ModelConfig) -> str:
    """Identifies the state layout a config implies (dims and ratios), not its weights."""
    parts = [
        config.head_dim,
        config.index_head_dim,
        config.window_size,
        config.n_layers,
        *config.compress_ratios,
    ]
    return hashlib.sha256(",".join(map(str, parts)).encode()).hexdigest()[:16]


# --- KV accounting (spec §5.6) ---
def kv_bytes_per_token(config: ModelConfig, layout: str = "bf16") -> float:
    """Bytes of compressed KV + indexer keys added per token over the main stack (windows/tails excluded).

    `bf16`: the reference cache (2 bytes per value). `fp8`: the serving layout (main entry = e4m3
    non-RoPE dims + bf16 RoPE dims + one E8M0 scale per 64 values padded to 8 bytes; indexer key = MXFP4,
    half a byte per value + one E8M0 scale per 32).
    """
    d, di, rd = config.head_dim, config.index_head_dim, config.rope_head_dim
    if layout == "bf16":
        main, index = 2.0 * d, 2.0 * di
    elif layout == "fp8":
        n_scales = -(-(d - rd) // 64)
        main = (d - rd) + 2.0 * rd + -(-n_scales // 8) * 8
        index = di / 2 + di / 32
    else:
        raise ValueError(f"unknown KV layout {layout!r}; use 'bf16' or 'fp8'")
    total = 0.0
    for i in range(config.n_layers):
        r = config.ratio(i)
        if r:
            total += main / r
        if r == 4:
            total += index / r
    return total


def fixed_state_bytes(config: ModelConfig, dtype_bytes: int = 2) -> int:
    """Per-sequence bytes that do not grow with length: window rings + fp32 compressor tails."""
    total = 0
    for i in range(config.n_layers):
        r = config.ratio(i)
        total += config.window_size * config.head_dim * dtype_bytes
        if r:
            c = _overlap(r)
            total += 2 * (c * r) * (c * config.head_dim) * 4
        if r == 4:
            total += 2 * 8 * 2 * config.index_head_dim * 4
    return total


__all__ = [
    "ENTRY_ARRAYS",
    "LayerState",
    "SequenceState",
    "StateError",
    "StateFormatError",
    "config_key",
    "entry_capacity",
    "fixed_state_bytes",
    "fresh_layer",
    "fresh_tail",
    "held_bytes",
    "kv_bytes_per_token",
]
