"""Random weights for any V4 config, in stored format, one tensor at a time (the one generator).

Random checkpoints (`random_tensors` -> `save_random_checkpoint`, benchmarks of multi-GB layouts) and random
in-memory models (`random_init_tensors` -> `V4Model.init_random_`, tests) come from one generator: it walks
`tensor_specs`, so every tensor of the layout gets a value, and each tensor draws from its own stream seeded
by (seed, name), so values depend on neither shard layout, generation order nor which tensors are asked for.

Linear weights are N(0, 1/in) so activations keep their scale through a layer. The other kinds follow one of
two laws (`_law`): the checkpoint law puts norms at 1, sinks and router biases at 0 and small mHC and ape
values, like an untrained real model; the init law (`every_term`) gives every tensor a non-trivial value
(norm gains, sinks, mHC bases and scales, ape, router bias) so tests that compare implementations exercise
every term.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator

import torch

from .checkpoint_layout import TensorSpec, stored_specs, tensor_specs
from .config import ModelConfig
from .quant import FP8_DTYPE, FP8_MAX, e8m0_from_exponent

__all__ = ["random_init_tensors", "random_tensors"]


def _generator(seed: int, name: str, device: torch.device) -> torch.Generator:
    """One stream per (seed, tensor name): values do not depend on shard layout or generation order."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 0x9E3779B1 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF_FFFF)
    return g


def _rows_per_chunk(cols: int, multiple: int) -> int:
    return max(multiple, (1 << 22) // max(cols, 1) // multiple * multiple)


# RMS of e2m1 values when all 16 codes are equally likely: sqrt(mean(0, .25, 1, 2.25, 4, 9, 16, 36)).
_FP4_CODE_RMS = math.sqrt(68.5 / 8)


def _random_linear(specs: list[TensorSpec], seed: int, device: torch.device) -> list[torch.Tensor]:
    """A weight (and its scale) in stored format with std about 1/sqrt(in), so activations keep their scale.

    Written straight in the stored format with one power-of-two scale for the whole tensor: FP8 from normal
    samples (one fp32 chunk at a time), FP4 as uniformly random codes (no fp32 at all). Running the full
    quantizers over billions of random values would cost minutes for nothing a forward pass can tell apart.
    """
    w = specs[0]
    g = _generator(seed, w.name, device)
    out_f = w.shape[0]
    in_f = w.shape[1] * (2 if w.dtype == torch.int8 else 1)
    std = in_f**-0.5
    if w.dtype == torch.int8:
        k = round(math.log2(std / _FP4_CODE_RMS))
        weight = torch.randint(-128, 128, w.shape, generator=g, device=device, dtype=torch.int8)
    else:
        k = math.ceil(math.log2(8 * std / FP8_MAX))  # 8 sigma still inside the e4m3 range
        weight = torch.empty(w.shape, dtype=w.dtype, device=device)
        step = _rows_per_chunk(in_f, 1)
        for r0 in range(0, out_f, step):
            r1 = min(r0 + step, out_f)
            chunk = torch.randn((r1 - r0, in_f), generator=g, device=device)
            if w.dtype == FP8_DTYPE:
                weight[r0:r1] = chunk.mul_(std * 2.0**-k).clamp_(-FP8_MAX, FP8_MAX).to(w.dtype)
            else:
                weight[r0:r1] = chunk.mul_(std).to(w.dtype)
    if len(specs) == 1:
        return [weight]
    scale = e8m0_from_exponent(torch.full(specs[1].shape, k, dtype=torch.int32, device=device))
    return [weight, scale]


def _law(spec: TensorSpec, config: ModelConfig, every_term: bool) -> tuple[float, float]:
    """(mean, std) of a non-linear tensor: value = mean + std * N(0, 1) (std 0: the constant mean)."""
    head = config.dim**-0.5  # head and router logits: unit-scale inputs, N(0, 1/dim) weights
    fn = spec.shape[-1] ** -0.5  # mHC mixer weights read hc * dim inputs
    if every_term:
        law = {
            "embed": (0.0, 1.0),
            "head": (0.0, head),
            "gate": (0.0, head),
            "norm": (1.0, 0.1),
            "sink": (0.0, 1.0),
            "bias": (0.0, 0.1),
            "hc_fn": (0.0, 0.5 * fn),
            "hc_base": (0.0, 0.5),
            "hc_scale": (1.0, 0.1),
            "ape": (0.0, 0.5),
        }
    else:
        law = {
            "embed": (0.0, 1.0),
            "head": (0.0, head),
            "gate": (0.0, head),
            "norm": (1.0, 0.0),
            "sink": (0.0, 0.0),
            "bias": (0.0, 0.0),
            "hc_fn": (0.0, 0.1 * fn),
            "hc_base": (0.0, 0.1),
            "hc_scale": (0.0, 0.1),  # folded positive: |N(0, 0.1)|
            "ape": (0.0, 0.1),
        }
    return law[spec.kind]


def _random_plain(
    spec: TensorSpec, config: ModelConfig, seed: int, device: torch.device, every_term: bool
) -> torch.Tensor:
    g = _generator(seed, spec.name, device)
    if spec.kind == "tid2eid":
        vocab, k = spec.shape
        out = torch.empty(spec.shape, dtype=torch.int64, device=device)
        step = _rows_per_chunk(config.n_routed_experts, 1)
        for r0 in range(0, vocab, step):
            r1 = min(r0 + step, vocab)
            # k distinct experts per token id, uniformly at random
            rnd = torch.rand((r1 - r0, config.n_routed_experts), generator=g, device=device)
            out[r0:r1] = rnd.topk(k, dim=-1).indices
        return out
    mean, std = _law(spec, config, every_term)
    if std == 0.0:
        return torch.full(spec.shape, mean, dtype=spec.dtype, device=device)
    out = torch.empty(spec.shape, dtype=spec.dtype, device=device)
    flat = out.view(-1)
    step = 1 << 22
    for i in range(0, flat.numel(), step):
        j = min(i + step, flat.numel())
        x = torch.randn(j - i, generator=g, device=device) * std
        flat[i:j] = (x + mean if mean else x).to(spec.dtype)
    if spec.kind == "hc_scale" and not every_term:
        out.abs_()
    return out


def random_tensors(
    config: ModelConfig,
    seed: int = 0,
    *,
    device: str | torch.device = "cpu",
    keep: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, stored tensor) for every spec in order, generated lazily with deterministic per-tensor seeds.

    The checkpoint law (module docstring); what `save_random_checkpoint` writes. `keep` limits it to the
    names one tensor-parallel rank holds (same values: each tensor has its own stream).
    """
    specs = [s for s in tensor_specs(config) if keep is None or keep(s.name)]
    return _generate(specs, config, seed, torch.device(device), every_term=False)


def random_init_tensors(config: ModelConfig, seed: int = 0) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of `V4Model.init_random_`: every term non-trivial, drawn on the CPU (values do not
    depend on the model's device), float-format weights as fp32 rather than rounded to the layout's bf16."""
    float_dtype = torch.float32 if config.weight_format == "float" else torch.bfloat16
    specs = stored_specs(config, float_dtype, checkpoint=False)
    return _generate(specs, config, seed, torch.device("cpu"), every_term=True)


def _generate(
    specs: list[TensorSpec], config: ModelConfig, seed: int, dev: torch.device, every_term: bool
) -> Iterator[tuple[str, torch.Tensor]]:
    i = 0
    while i < len(specs):
        s = specs[i]
        if s.kind == "linear":
            group = specs[i : i + 2] if i + 1 < len(specs) and specs[i + 1].kind == "scale" else [s]
            for spec, t in zip(group, _random_linear(group, seed, dev), strict=True):
                yield spec.name, t
            i += len(group)
        else:
            yield s.name, _random_plain(s, config, seed, dev, every_term)
            i += 1
