"""Tensor + expert parallelism over torch.distributed, as DeepSeek's reference splits V4 (spec §9.3-§9.4).

One process per device, all running the same model code on the same tokens. What differs per rank is
which slice of some weights it holds; where a rank has only part of a result, the ranks combine it:

* attention heads are column-parallel: `wq_b`, `attn_sink` and the `wo_a` groups (and the indexer's
  `wq_b` / `weights_proj` heads) are split by head; `wo_b` is row-parallel, so each rank's output is a
  partial sum, all-reduced in fp32. The indexer's per-head score sums are all-reduced before top-k.
* routed experts are expert-parallel: rank r holds experts [r E/N, (r+1) E/N) and sums only their terms;
  one fp32 all-reduce of that partial sum combines them (then the replicated shared expert is added).
* the embedding and the head are split by vocabulary: a masked lookup + all-reduce, an all-gather of the
  logits' vocabulary slices.

Everything else (wq_a, wkv, norms, compressors, the gate, mHC, the shared expert) is replicated, exactly as
the reference's `convert.py` leaves it. V4 attention has one shared KV head (MQA), so there is no per-head
sequence state to split: every rank computes the same window, compressed entries, indexer keys and tails
from the same (all-reduced) activations, and holds the whole `SequenceState`. Its bytes are the single-
process format, so a snapshot taken in N-rank mode resumes in N-rank or single-process mode alike
(`states_agree` checks the replicas; `broadcast_bytes` hands one rank's blob to all).

The sharding rules are data (`SPLIT_DIM`, `shard_key`, `expert_of`), applied by `local_slices` to a full
tensor in memory (`shard_tensors`) or to a memory-mapped safetensors file (`local_tensor_reader`: each rank
reads only its slices, in stored precision). Collectives take tensors on their own device: gloo on CPU,
NCCL on GPUs, the same calls.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint_layout import CONFIG_NAME, INDEX_NAME, CheckpointError, tensor_specs
from .checkpoint_manifest import AUTO_VERIFY_BYTES, check_files, read_manifest
from .checkpoint_read import validate_checkpoint
from .config import ModelConfig

if TYPE_CHECKING:
    from .state import SequenceState

__all__ = [
    "SPLIT_DIM",
    "Parallel",
    "ParallelError",
    "VocabEmbedding",
    "broadcast_bytes",
    "check_config",
    "expert_of",
    "holds",
    "init_parallel",
    "local_slices",
    "local_tensor_reader",
    "read_local_tensors",
    "shard_key",
    "shard_tensors",
    "spawn",
    "states_agree",
]


class ParallelError(ValueError):
    """A config, checkpoint or process group that cannot be split the way the ranks ask."""


#: The reference's split dimension per sharding key (convert.py's `mapping`); keys not listed are replicated.
SPLIT_DIM: dict[str, int] = {
    "embed": 0,
    "head": 0,
    "wq_b": 0,  # attention and indexer queries: by head
    "wo_a": 0,  # grouped output: by group (whole groups of heads)
    "wo_b": 1,  # row-parallel: by input (the groups' low-rank outputs)
    "attn_sink": 0,
    "weights_proj": 0,  # indexer head weights
}


def shard_key(name: str) -> str:
    """convert.py's key: the last name component for mHC / sink / ape tensors, else the second-to-last
    (`layers.3.attn.wq_b.scale` -> `wq_b`: a scale follows its weight)."""
    parts = name.split(".")
    if any(s in name for s in ("hc", "attn_sink", "ape")) or len(parts) < 2:
        return parts[-1]
    return parts[-2]


def expert_of(name: str) -> int | None:
    """The routed expert a tensor belongs to (`...ffn.experts.{e}.w1.weight` -> e), else None."""
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p == "experts" and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


@dataclass(frozen=True)
class Parallel:
    """This process's place in a tensor/expert-parallel group: `rank` of `world`, over `group`
    (None: the default process group). `Parallel(0, 1)` is a valid group of one whose collectives are
    no-ops, so the sharding rules can be exercised without torch.distributed."""

    rank: int
    world: int
    group: dist.ProcessGroup | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world:
            raise ParallelError(f"rank {self.rank} is not in a group of {self.world}")

    def part(self, n: int, what: str = "dimension") -> tuple[int, int]:
        """[lo, hi) of this rank's equal share of n items."""
        if n % self.world:
            raise ParallelError(f"{what} ({n}) is not divisible by the {self.world} ranks")
        k = n // self.world
        return self.rank * k, (self.rank + 1) * k

    def local(self, n: int, what: str = "dimension") -> int:
        lo, hi = self.part(n, what)
        return hi - lo

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, accumulated in fp32 (the reference all-reduces partial sums in fp32); returns
        t's dtype. An fp32 input is reduced in place."""
        if self.world == 1:
            return t
        y = t.float().contiguous()
        dist.all_reduce(y, group=self.group)
        return y.to(t.dtype)

    def all_gather(self, t: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's t concatenated along `dim` in rank order (the logits' vocabulary slices)."""
        if self.world == 1:
            return t
        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t, group=self.group)
        return torch.cat(parts, dim)


class VocabEmbedding(nn.Module):
    """The embedding split by vocabulary: each rank looks up the ids in its rows, zeros the rest, and the
    all-reduce puts every id's row (plus exact zeros) on every rank. Its weight is `embed.weight`'s rows
    [lo, hi)."""

    def __init__(self, vocab: int, dim: int, dtype: torch.dtype, par: Parallel) -> None:
        super().__init__()
        self.par = par
        self.lo, self.hi = par.part(vocab, "vocab_size")
        self.weight = nn.Parameter(torch.empty(self.hi - self.lo, dim, dtype=dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.lo
        outside = (local < 0) | (local >= self.hi - self.lo)
        rows = F.embedding(local.masked_fill(outside, 0), self.weight)
        return self.par.all_reduce(rows.masked_fill(outside.unsqueeze(-1), 0))


def init_parallel(
    backend: str | None = None,
    *,
    rank: int | None = None,
    world: int | None = None,
    init_method: str | None = None,
) -> Parallel:
    """Join (or reuse) the default process group: NCCL when CUDA is there, else gloo. Without arguments it
    reads torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). A CUDA rank uses
    device LOCAL_RANK (or its rank)."""
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank or 0)))
        # rank / world_size -1: the env (torchrun) decides
        dist.init_process_group(
            backend,
            init_method=init_method,
            rank=-1 if rank is None else rank,
            world_size=-1 if world is None else world,
        )
    return Parallel(dist.get_rank(), dist.get_world_size())


def check_config(config: ModelConfig, world: int) -> None:
    """Every split must give each rank whole heads, whole output groups, whole experts and an equal share
    of the vocabulary; say which one does not."""
    problems = [
        f"{what} ({n}) is not divisible by {world} ranks"
        for what, n in (
            ("n_heads", config.n_heads),
            ("o_groups", config.o_groups),
            ("index_n_heads", config.index_n_heads),
            ("n_routed_experts", config.n_routed_experts),
            ("vocab_size", config.vocab_size),
        )
        if n % world
    ]
    if problems:
        raise ParallelError("cannot split this model: " + "; ".join(problems))


def local_slices(
    name: str,
    shape: tuple[int, ...],
    par: Parallel,
    n_experts: int,
    weight_shape: tuple[int, ...] | None = None,
) -> tuple[slice, ...] | None:
    """This rank's index into a tensor of the full `shape`, or None if the rank does not hold it at all.

    A `.scale` tensor (pass its weight's shape) is split along its weight's dimension at the same
    fraction, which needs each rank's weight share to be whole quantization tiles (FP8: 128 rows or
    columns), as the reference's convert.py needs too."""
    e = expert_of(name)
    if e is not None:
        lo, hi = par.part(n_experts, "n_routed_experts")
        return tuple(slice(None) for _ in shape) if lo <= e < hi else None
    dim = SPLIT_DIM.get(shard_key(name))
    full = tuple(slice(None) for _ in shape)
    if dim is None or par.world == 1:
        return full
    if weight_shape is not None and name.endswith(".scale"):
        w, n = weight_shape[dim], shape[dim]
        tile = -(-w // n)  # values per scale along dim (stored units)
        if w % par.world or (w // par.world) % tile:
            raise ParallelError(
                f"{name}: {par.world} ranks would split a quantization tile ({w} values in {shape[dim]} "
                f"tiles along dim {dim}); each rank's share must be whole tiles"
            )
    lo, hi = par.part(shape[dim], f"{name} dim {dim}")
    out = list(full)
    out[dim] = slice(lo, hi)
    return tuple(out)


def holds(config: ModelConfig, par: Parallel) -> Callable[[str], bool]:
    """Whether this rank holds (a slice of) the tensor of a name: all but other ranks' experts. Lets a
    random-weights generator skip what the rank would throw away (`random_tensors(keep=...)`)."""

    def keep(name: str) -> bool:
        e = expert_of(name)
        if e is None:
            return True
        lo, hi = par.part(config.n_routed_experts, "n_routed_experts")
        return lo <= e < hi

    return keep


def shard_tensors(
    config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]], par: Parallel
) -> Iterator[tuple[str, torch.Tensor]]:
    """This rank's slices of full tensors (e.g. `random_init_tensors`), one at a time, dropping other
    ranks' experts."""
    check_config(config, par.world)
    shapes = {s.name: s.shape for s in tensor_specs(config, checkpoint=False)}
    for name, t in tensors:
        w = shapes.get(name[: -len(".scale")] + ".weight") if name.endswith(".scale") else None
        idx = local_slices(name, tuple(t.shape), par, config.n_routed_experts, w)
        if idx is not None:
            yield name, t[idx].contiguous()


def local_tensor_reader(
    path: str | Path, par: Parallel, *, verify: bool | None = None
) -> tuple[ModelConfig, Iterator[tuple[str, torch.Tensor]]]:
    """(config, this rank's (name, tensor) pairs, read lazily) from a V4 checkpoint.

    The checkpoint is validated now (names, dtypes, shapes, and that it splits over the ranks); the
    iterator then memory-maps one shard file at a time and reads only the rows / columns this rank holds,
    in stored precision (FP8 stays e4m3, experts stay packed FP4, scales stay E8M0), into CPU memory one
    tensor at a time, so loading to a GPU never holds more than the model plus one tensor. Other ranks'
    experts are never read. `verify` is `load_checkpoint`'s SHA256SUMS policy over the files this rank
    reads from (by default only when they are small: hashing a file reads all of it)."""
    config, weight_map = validate_checkpoint(path)
    check_config(config, par.world)
    shapes = {s.name: s.shape for s in tensor_specs(config)}
    plan: dict[str, list[tuple[str, tuple[slice, ...]]]] = {}
    for name, fname in weight_map.items():
        w = shapes.get(name[: -len(".scale")] + ".weight") if name.endswith(".scale") else None
        idx = local_slices(name, shapes[name], par, config.n_routed_experts, w)
        if idx is not None:
            plan.setdefault(fname, []).append((name, idx))
    root = Path(path)
    manifest = read_manifest(root) if verify is not False else None
    if verify and manifest is None:
        raise CheckpointError(f"{root}: verify=True, but the folder has no SHA256SUMS to check against")
    if manifest and verify is None:
        manifest = manifest if sum((root / f).stat().st_size for f in plan) <= AUTO_VERIFY_BYTES else None
    if manifest:
        check_files(root, [n for n in (CONFIG_NAME, INDEX_NAME) if (root / n).is_file()], manifest)
    return config, _read_slices(root, plan, manifest)


def _read_slices(
    root: Path, plan: dict[str, list[tuple[str, tuple[slice, ...]]]], manifest: dict[str, str] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    for fname, items in sorted(plan.items()):
        if manifest:
            check_files(root, [fname], manifest)  # just before it is read
        try:
            with safe_open(str(root / fname), framework="pt", device="cpu") as f:
                for name, idx in items:
                    yield name, f.get_slice(name)[idx].contiguous()
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{root / fname}: cannot load: {e}") from e


def read_local_tensors(
    path: str | Path, par: Parallel, *, verify: bool | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """`local_tensor_reader` collected into a dict (CPU tensors)."""
    config, items = local_tensor_reader(path, par, verify=verify)
    return config, dict(items)


def state_digest(state: SequenceState) -> str:
    """SHA-256 over a state's valid bytes (what `to_bytes` would write)."""
    h = hashlib.sha256(str(state.pos).encode())
    for ls in state.snapshot().layers:
        for k, v in sorted(ls.tensors().items()):
            h.update(k.encode())
            h.update(v.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def states_agree(state: SequenceState, par: Parallel) -> bool:
    """True on every rank when all ranks hold byte-identical replicas of a sequence's state."""
    if par.world == 1:
        return True
    mine = state_digest(state)
    everyone: list[str | None] = [None] * par.world
    dist.all_gather_object(everyone, mine, group=par.group)
    return all(d == mine for d in everyone)


def broadcast_bytes(blob: bytes | None, par: Parallel, src: int = 0) -> bytes:
    """Rank `src`'s blob (e.g. a saved `SequenceState`) on every rank, for resuming from one copy."""
    if par.world == 1:
        if blob is None:
            raise ParallelError("no blob to broadcast")
        return blob
    box: list[bytes | None] = [blob if par.rank == src else None]
    dist.broadcast_object_list(box, src=src, group=par.group)
    got = box[0]
    if got is None:
        raise ParallelError(f"rank {src} had no blob to broadcast")
    return got


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(
    rank: int,
    fn: Callable[..., None],
    world: int,
    port: int,
    backend: str,
    threads: int,
    args: tuple[object, ...],
) -> None:
    torch.set_num_threads(threads)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(Parallel(rank, world), *args)
    finally:
        dist.destroy_process_group()


def spawn(
    fn: Callable[..., None],
    world: int,
    *args: object,
    backend: str | None = None,
    threads: int | None = None,
) -> None:
    """Run `fn(Parallel(rank, world), *args)` in `world` fresh processes of this host (one per GPU with
    NCCL, else gloo on CPU), joined over a free port on 127.0.0.1; raises if any rank fails. `fn` must be
    importable by name (a module-level function), as `torch.multiprocessing.spawn` requires."""
    import torch.multiprocessing as mp

    backend = backend or (
        "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world else "gloo"
    )
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    mp.spawn(_rank_main, args=(fn, world, _free_port(), backend, threads, args), nprocs=world, join=True)
