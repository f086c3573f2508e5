"""A torch function mode that makes the model's arithmetic independent of how many tokens a call holds.

CPU GEMMs (and vectorized transcendental / reduction kernels) round differently for a 5-row call than for
a 2-row call, so two extends of different lengths give the shared rows' values only up to ~1e-7. To check
a rollback bytes-exactly against "a state that never saw the rejected tokens" (an extend of the kept tokens
alone), the tests run both under this mode: every matmul, reduction and transcendental runs in float64 and
is rounded back, which removes the row-count dependence (the float64 differences vanish in the rounding).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_WIDEN = {
    F.linear,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.einsum,
    torch.Tensor.__matmul__,
    torch.Tensor.matmul,
    torch.softmax,
    torch.Tensor.softmax,
    F.softmax,
    torch.sum,
    torch.Tensor.sum,
    torch.mean,
    torch.Tensor.mean,
    torch.Tensor.square,
    torch.rsqrt,
    torch.Tensor.rsqrt,
    torch.sqrt,
    torch.Tensor.sqrt,
    torch.exp,
    torch.Tensor.exp,
    torch.sigmoid,
    torch.Tensor.sigmoid,
    F.silu,
    F.softplus,
    torch.mul,
    torch.Tensor.__mul__,
    torch.Tensor.__rmul__,
    torch.add,
    torch.Tensor.__add__,
    torch.Tensor.__radd__,
    torch.sub,
    torch.Tensor.__sub__,
    torch.Tensor.__rsub__,
    torch.div,
    torch.Tensor.__truediv__,
    torch.Tensor.__rtruediv__,
}


class BatchInvariant(TorchFunctionMode):
    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func in _WIDEN:
            dt = next((a.dtype for a in args if isinstance(a, torch.Tensor)), None)
            if dt in (torch.float32, torch.bfloat16, torch.float16):
                wide = [
                    a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args
                ]
                kw = {k: v for k, v in kwargs.items() if k != "dtype"}
                return func(*wide, **kw).to(dt)
        return func(*args, **kwargs)
