"""Low-precision simulation (spec §4.8) and the linear layer that hides the weight storage format (spec §7.3).

The simulations are quantize->dequantize round trips that reproduce the QAT numerics of the reference. In a
training forward they pass gradients straight through (the rounding is treated as identity), which is what
quantization-aware training needs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from agentkit.runtime import quant
from agentkit.runtime.kernels import enabled as kernels_enabled
from agentkit.runtime.kernels import lowp_gemm, pointwise
from torch import nn

StorageFormat = Literal["float", "fp8", "fp4"]

_FP8_MAX = 448.0
_FP4_MAX = 6.0
_FP4_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
_FP4_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    d = x.shape[-1]
    pad = (-d) % block
    xf = x.float()
    if pad:
        xf = F.pad(xf, (0, pad))
    return xf.view(*x.shape[:-1], (d + pad) // block, block), d


def _pow2_scale(amax: torch.Tensor, qmax: float) -> torch.Tensor:
    return torch.exp2(torch.ceil(torch.log2(amax / qmax)))


def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value of y, gradient of identity (only builds the detour when autograd is recording)."""
    if x.requires_grad:
        return x + (y - x).detach()
    return y


def fp8_roundtrip(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """e4m3 quantize->dequantize per `block` values with a power-of-two scale (amax floor 1e-4)."""
    if pointwise.supported(x) and kernels_enabled():
        return pointwise.roundtrip(x, "fp8", block)
    xb, d = _blocks(x, block)
    scale = _pow2_scale(xb.abs().amax(-1, keepdim=True).clamp_min(1e-4), _FP8_MAX)
    q = (xb / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn).float() * scale
    y = q.flatten(-2)[..., :d].to(x.dtype)
    return _ste(x, y)


_TABLES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def _fp4_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The e2m1 rounding bounds and grid on `device`, made once: a host->device copy per call would be a
    sync point, and is not allowed at all while a CUDA graph is being captured."""
    key = str(device)
    t = _TABLES.get(key)
    if t is None:
        with torch.inference_mode(False):
            t = (
                torch.tensor(_FP4_BOUNDS, dtype=torch.float32, device=device),
                torch.tensor(_FP4_GRID, dtype=torch.float32, device=device),
            )
        _TABLES[key] = t
    return t


def fp4_roundtrip(x: torch.Tensor, block: int = 32) -> torch.Tensor:
    """e2m1 quantize->dequantize per `block` values, power-of-two scale, nearest with ties to even."""
    if pointwise.supported(x) and kernels_enabled():
        return pointwise.roundtrip(x, "fp4", block)
    xb, d = _blocks(x, block)
    scale = _pow2_scale(xb.abs().amax(-1, keepdim=True).clamp_min(_FP4_MAX * 2.0**-126), _FP4_MAX)
    y = (xb / scale).clamp(-_FP4_MAX, _FP4_MAX)
    a = y.abs()
    bounds, grid = _fp4_tables(x.device)
    code = torch.bucketize(a, bounds)
    at_bound = a == bounds[code.clamp(max=len(_FP4_BOUNDS) - 1)]
    code = torch.where(at_bound & (code < len(_FP4_BOUNDS)) & (code % 2 == 1), code + 1, code)
    q = torch.copysign(grid[code], y) * scale
    out = q.flatten(-2)[..., :d].to(x.dtype)
    return _ste(x, out)


def fp8_kv_roundtrip(kv: torch.Tensor, rope_dim: int) -> torch.Tensor:
    """FP8 simulation of the non-RoPE dims of a KV vector; the trailing RoPE dims stay as they are."""
    if pointwise.supported(kv) and kernels_enabled():
        return pointwise.roundtrip(kv, "fp8", 64, keep=rope_dim)
    return torch.cat((fp8_roundtrip(kv[..., :-rope_dim]), kv[..., -rope_dim:]), dim=-1)


_HADAMARD: dict[tuple[int, str], torch.Tensor] = {}


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """Sylvester-ordered Walsh-Hadamard transform over the last dim, scaled by n^-1/2 (orthonormal)."""
    n = x.shape[-1]
    key = (n, str(x.device))
    h = _HADAMARD.get(key)
    if h is None:
        with torch.inference_mode(False):  # a cached inference tensor could not be used under autograd later
            h = torch.ones(1, 1, dtype=torch.float32)
            while h.shape[0] < n:
                h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
            h = (h / math.sqrt(n)).to(x.device)
        _HADAMARD[key] = h
    return matmul_t_fp32(x, h).to(x.dtype)  # h is symmetric: x @ h == x @ h.T


def matmul_t_fp32(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w.T in fp32, the value `x.float() @ w.float().t()` has, without the fp32 copies of x and w that
    expression makes on every call (for a compressor's or the router's weight, a copy of the matrix per
    decode step). bf16 x bf16 products are exact in fp32, so a GEMM with fp32 sums and an fp32 result is
    the same product up to summation order; an fp32 w is multiplied in fp32 (the kernel's RAW form)."""
    cuda = x.is_cuda and w.is_cuda and not torch.is_grad_enabled() and kernels_enabled()
    if cuda and x.dtype == w.dtype == torch.bfloat16:
        flat = x.reshape(-1, x.shape[-1])
        return torch.mm(flat, w.t(), out_dtype=torch.float32).view(*x.shape[:-1], -1)
    if lowp_gemm.supported(x) and kernels_enabled() and w.dim() == 2 and w.stride(1) == 1:
        return lowp_gemm.lowp_linear(x, w, None, "float", False, torch.float32)
    return x.float() @ w.float().t()


class Linear(nn.Module):
    """y = x W^T with W stored as a float parameter, FP8 e4m3 + E8M0 128x128 tiles, or packed FP4 + E8M0/32.

    Quantized weights are buffers named `weight` and `scale` (the checkpoint's names) and are dequantized per
    use through `agentkit.runtime.quant`, so the resident size stays that of the checkpoint. With
    `act_quant` (the model sets it from `ModelConfig.sim_fp8_act` on FP8 / FP4 layers) the input is first
    rounded exactly as the reference's `act_quant` rounds it for `fp8_gemm` / `fp4_gemm`: e4m3, blocks
    of 128 along K, power-of-two scales; the product is then the reference's fallback, both operands
    dequantized.
    """

    act_quant: bool = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        fmt: StorageFormat = "float",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.fmt = in_features, out_features, fmt
        self.weight: torch.Tensor
        self.scale: torch.Tensor
        if fmt == "float":
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype))
        elif fmt == "fp8":
            self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=quant.FP8_DTYPE))
            self.register_buffer(
                "scale", torch.full(quant.fp8_scale_shape(out_features, in_features), 127, dtype=torch.uint8)
            )
            self.scale = self.scale.view(quant.E8M0_DTYPE)
        else:
            self.register_buffer("weight", torch.zeros(out_features, in_features // 2, dtype=torch.int8))
            self.register_buffer(
                "scale", torch.full(quant.fp4_scale_shape(out_features, in_features), 127, dtype=torch.uint8)
            )
            self.scale = self.scale.view(quant.E8M0_DTYPE)

    _materialized: torch.Tensor | None = None

    def materialize(self, dtype: torch.dtype | None) -> int:
        """Keep (dtype) or drop (None) a dequantized copy: trades resident memory for per-use dequantization.
        Returns the bytes the copy takes."""
        self._materialized = None
        if dtype is None or self.fmt == "float":
            return 0
        with torch.no_grad():
            self._materialized = self.dense(dtype)
        return self._materialized.numel() * self._materialized.element_size()

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The logical [out, in] weight in `dtype`."""
        m = self._materialized
        if m is not None and m.dtype == dtype:
            return m
        if self.fmt == "float":
            return self.weight.to(dtype)
        if self.fmt == "fp8":
            return quant.dequant_fp8(self.weight, self.scale, dtype=dtype)
        return quant.dequant_fp4(self.weight, self.scale, dtype=dtype)

    def set_dense(self, w: torch.Tensor) -> None:
        """Store a float weight, quantizing it if this layer is quantized (used by random initialization)."""
        self._materialized = None
        with torch.no_grad():
            if self.fmt == "float":
                self.weight.copy_(w)
            elif self.fmt == "fp8":
                q, s = quant.quant_fp8(w.float())
                self.weight.copy_(q)
                self.scale.copy_(s)
            else:
                q, s = quant.quant_fp4(w.float())
                self.weight.copy_(q)
                self.scale.copy_(s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.fmt != "float"
            and self._materialized is None
            and lowp_gemm.supported(x)
            and kernels_enabled()
        ):
            # CUDA: from the stored bytes, the input rounded in the kernel (runtime/kernels/lowp_gemm.py)
            return lowp_gemm.lowp_linear(x, self.weight, self.scale, self.fmt, self.act_quant)
        if self.act_quant:
            x = fp8_roundtrip(x, 128)
        return F.linear(x, self.dense(x.dtype))

    def fp32(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T in fp32, as `x.float() @ self.dense(torch.float32).t()` (no input rounding): the compressor's
        math. On CUDA from the stored weight, with no fp32 or dequantized copy per call."""
        if self.fmt == "float":
            return matmul_t_fp32(x, self.weight)
        if self._materialized is None and lowp_gemm.supported(x) and kernels_enabled():
            return lowp_gemm.lowp_linear(x, self.weight, self.scale, self.fmt, False, torch.float32)
        return x.float() @ self.dense(torch.float32).t()

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, {self.fmt}"
