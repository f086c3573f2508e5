"""CUDA graphs of the static decoder's step, and the handle of a greedy step's ids on their way to the host.

`runtime/decode.py` is the step itself (slabs, candidate lists, the fixed-shape forward); this file is how
it is replayed: one graph per batch size over static input buffers, and `GreedyStep`, which lets the next
step feed a token the host has not read yet (generate.py's pipelined greedy loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from agentkit.runtime.decode import StaticDecoder
    from agentkit.runtime.state import SequenceState

#: Batch sizes that get a CUDA graph; a step of B sequences replays the smallest one >= B (padding rows
#: decode a scratch slot).
GRAPH_BATCHES = (1, 2, 4, 8, 16, 32)


class DecodeGraphs:
    """CUDA graphs of `StaticDecoder.forward`, one per batch size in GRAPH_BATCHES, captured on first use.

    Inputs are copied into static buffers (padding rows point at the scratch slot), the graph is replayed,
    and a copy of the real sequences' logits rows is returned (the graph's output buffer is reused by the
    next replay)."""

    def __init__(self, dec: StaticDecoder) -> None:
        self.dec = dec
        dev = dec.model.device
        self.batches = [b for b in GRAPH_BATCHES if b < dec.max_batch] + [dec.max_batch]
        top = self.batches[-1]
        self.inputs = torch.zeros(3, top, dtype=torch.long, device=dev)  # slots, positions, ids
        self.host = torch.zeros(3, top, dtype=torch.long).pin_memory()
        self.copied = torch.cuda.Event()
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def _fill(self, b: int, slots: list[int], pos: list[int], ids: list[int]) -> None:
        n = len(slots)
        h = self.host
        self.copied.synchronize()  # the previous step's copy out of this pinned buffer has finished
        h[0, :b] = self.dec.scratch
        h[1:, :b] = 0
        if n:
            h[0, :n] = torch.tensor(slots)
            h[1, :n] = torch.tensor(pos)
            h[2, :n] = torch.tensor(ids)
        self.inputs[:, :b].copy_(h[:, :b], non_blocking=True)
        self.copied.record()

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        self._fill(b, [], [], [])
        args = (self.inputs[0, :b], self.inputs[1, :b], self.inputs[2, :b])
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: Triton compiles, cuBLAS picks algorithms, caches fill
                self.dec.step_fn(*args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.dec.step_fn(*args)
        return graph, out

    def run(
        self, slots: list[int], pos: list[int], ids: list[int], dev_ids: torch.Tensor | None, keep: bool
    ) -> torch.Tensor:
        b = next(x for x in self.batches if x >= len(slots))
        if b not in self.graphs:
            self.graphs[b] = self._capture(b)
        graph, out = self.graphs[b]
        self._fill(b, slots, pos, ids)
        if dev_ids is not None:  # the previous step's argmax, still on the device: no host round trip
            self.inputs[2, : len(slots)].copy_(dev_ids)
        graph.replay()
        return out[: len(slots)].clone() if keep else out[: len(slots)]


class GreedyStep:
    """The argmax ids of one launched greedy step (`StaticDecoder.step_greedy`): on the device for the next
    step to feed, and copied to pinned host memory behind the step, so `tolist()` waits for this step only.
    A failure that surfaces only there (an asynchronous device error) marks the step's states broken, as a
    failed launch does: their slabs were being written, so they must be restored from a snapshot."""

    def __init__(
        self,
        slots: tuple[int | None, ...],
        pos: tuple[int, ...],
        ids: torch.Tensor,
        states: list[SequenceState] | None = None,
    ) -> None:
        self.slots, self.pos, self.ids, self._states = slots, pos, ids, states or []
        self._event: torch.cuda.Event | None = None
        if ids.device.type == "cuda":
            self._host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._host.copy_(ids, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = ids

    def tolist(self) -> list[int]:
        try:
            if self._event is not None:
                self._event.synchronize()
            return [int(i) for i in self._host.tolist()]
        except BaseException as e:
            for s, p in zip(self._states, self.pos, strict=False):
                s.broken = f"decode step failed at position {p - 1}: {type(e).__name__}: {e}"
            raise


__all__ = ["GRAPH_BATCHES", "DecodeGraphs", "GreedyStep"]
