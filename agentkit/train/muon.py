"""Muon for matrix parameters, AdamW for the rest, split the way DeepSeek-V4 trains.

V4 (technical report, optimizer section) updates every matrix with Muon and keeps AdamW only for the
embedding, the prediction head, RMSNorm weights and the static biases / gating factors of mHC. Its
Muon differs from the original in two details reproduced here: a *hybrid* Newton-Schulz schedule of 10
iterations (8 with the fast quintic (3.4445, -4.7750, 2.0315), which pushes singular values near 1
quickly but leaves them oscillating, then 2 with (2, -1.5, 0.5), whose fixed point 1 has zero slope and
so settles them), and an update rescaled by 0.18*sqrt(max(out, in)) so its RMS matches AdamW's and one
learning rate / weight decay serves both optimizers (as Moonlight does).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

FAST_COEFFS = (3.4445, -4.7750, 2.0315)
SETTLE_COEFFS = (2.0, -1.5, 0.5)
UPDATE_RMS = 0.18


def newton_schulz(
    g: torch.Tensor,
    *,
    fast_steps: int = 8,
    settle_steps: int = 2,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Approximate the orthogonal polar factor U V^T of each matrix in `g` (last two dims).

    Works on the short side (X X^T is min(m, n) square) so the cost is the same for wide and tall
    matrices; the Frobenius normalisation puts every singular value in (0, 1], inside the iteration's
    basin.
    """
    if g.ndim < 2:
        raise ValueError(f"newton_schulz needs a matrix or a batch of matrices, got shape {tuple(g.shape)}")
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)
    schedule = [FAST_COEFFS] * fast_steps + [SETTLE_COEFFS] * settle_steps
    for a, b, c in schedule:
        s = x @ x.mT
        poly = b * s + c * (s @ s)
        x = a * x + poly @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """SGD-momentum (Nesterov) whose step is the orthogonalized momentum, with decoupled weight decay.

    Tensors with more than two dims are treated as batches of matrices over their leading dims (a
    stacked expert bank is many matrices, not one).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, object]],
        lr: float = 1e-3,
        momentum: float = 0.95,
        weight_decay: float = 0.1,
        nesterov: bool = True,
        fast_steps: int = 8,
        settle_steps: int = 2,
    ) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or weight_decay < 0:
            raise ValueError(f"bad Muon hyper-parameters: lr={lr} momentum={momentum} wd={weight_decay}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "fast_steps": fast_steps,
            "settle_steps": settle_steps,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon only takes matrices; got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr = group["lr"]
            mu = group["momentum"]
            wd = group["weight_decay"]
            # Same-shaped matrices (a bank of experts, the per-layer copies) are orthogonalized as one
            # batch: one set of kernel launches instead of one per matrix.
            by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(g)
                buf = state["momentum_buffer"]
                buf.mul_(mu).add_(g)
                u = g.add(buf, alpha=mu) if group["nesterov"] else buf
                by_shape.setdefault(tuple(p.shape), []).append((p, u))
            for shape, items in by_shape.items():
                stacked = torch.stack([u for _, u in items])
                ortho = newton_schulz(
                    stacked, fast_steps=group["fast_steps"], settle_steps=group["settle_steps"]
                )
                scale = UPDATE_RMS * math.sqrt(max(shape[-2], shape[-1]))
                for (p, _), o in zip(items, ortho.unbind(0), strict=True):
                    if wd:
                        p.mul_(1 - lr * wd)
                    p.add_(o.to(p.dtype), alpha=-lr * scale)
        return loss


ADAMW_NAME_PARTS: tuple[str, ...] = ("embed", "head", "norm", "hc_", "bias", "attn_sink")


def uses_adamw(name: str, p: torch.Tensor) -> bool:
    """V4's rule: vectors, embedding, head, RMSNorm weights and mHC static params go to AdamW.

    mHC's dynamic projections (`hc_*_fn`) are matrices applied to activations, so they stay with Muon.
    """
    if p.ndim < 2:
        return True
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("hc_") and leaf.endswith("_fn"):
        return False
    parts = name.split(".")
    return any(part.startswith(tag) or part == tag for part in parts for tag in ADAMW_NAME_PARTS)


def build_optimizers(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.1,
    momentum: float = 0.95,
    betas: tuple[float, float] = (0.9, 0.95),
    adamw_lr: float | None = None,
) -> tuple[Muon | None, torch.optim.AdamW]:
    """Split `model`'s trainable parameters by `uses_adamw` into one Muon and one AdamW."""
    muon_params: list[torch.Tensor] = []
    adam_decay: list[torch.Tensor] = []
    adam_no_decay: list[torch.Tensor] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if uses_adamw(name, p):
            (adam_decay if p.ndim >= 2 else adam_no_decay).append(p)
        else:
            muon_params.append(p)
    muon = Muon(muon_params, lr=lr, momentum=momentum, weight_decay=weight_decay) if muon_params else None
    groups: Sequence[dict[str, object]] = [
        {"params": adam_decay, "weight_decay": weight_decay},
        {"params": adam_no_decay, "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=adamw_lr if adamw_lr is not None else lr, betas=betas, eps=1e-8)
    return muon, adamw
