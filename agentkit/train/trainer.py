"""Training loop for the tiny V4-architecture agent model.

Loss is next-token cross-entropy on assistant tokens only, plus the MTP block's loss on the token after
(weight `mtp_weight`), as V4 trains its MTP module. Muon updates the matrices and AdamW the rest (see
`muon.py`); both follow one warmup + cosine schedule. On CUDA the forward runs under bf16 autocast with
fp32 master weights; on CPU it runs in fp32. Everything random (init, batch order) derives from one seed,
and on CPU two runs with the same seed give identical losses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from agentkit.runtime.config import ModelConfig
from agentkit.runtime.layers.moe import Gate
from agentkit.runtime.layers.norms import RMSNorm
from agentkit.runtime.model import V4Model
from agentkit.train.data import IGNORE, Packed
from agentkit.train.muon import build_optimizers


def tiny_config(vocab_size: int, **overrides: Any) -> ModelConfig:
    """`agentkit-tiny`: every V4 feature at small size (about 7.7M params with a 3k vocabulary).

    Four layers: sliding-window only (hash-routed MoE), CSA (ratio 4, with indexer), HCA (ratio 128),
    sliding-window only, and one MTP block with CSA; the 128-token window, 4 mHC streams; plain float
    weights (bf16 in the checkpoint). Sized to train on two CPU cores (the lent GPU was out of time):
    measured forward+backward on 2 threads, 1 x 2048 tokens, was 588 tokens/s for the 6-layer `tiny`
    preset and ~2.1k tokens/s for this one; 5 Sinkhorn iterations instead of V4's 20 are part of that
    (the iteration count is a config field, stored in config.json, so the loader runs what was trained).
    """
    base: dict[str, Any] = {
        "vocab_size": vocab_size,
        "n_hash_layers": 1,
        "max_seq_len": 65536,
        "n_layers": 4,
        "compress_ratios": (0, 4, 128, 0, 4),
        "n_heads": 4,
        "head_dim": 64,
        "rope_head_dim": 32,
        "index_n_heads": 4,
        "index_head_dim": 32,
        "index_topk": 512,
        "n_routed_experts": 8,
        "n_activated_experts": 2,
        "hc_sinkhorn_iters": 5,
    }
    return ModelConfig.preset("tiny", **{**base, **overrides})


def micro_config(vocab_size: int, **overrides: Any) -> ModelConfig:
    """The smallest config with the same structure, for CPU tests."""
    base: dict[str, Any] = {"vocab_size": vocab_size, "max_seq_len": 65536}
    return ModelConfig.preset("tiny-test", **{**base, **overrides})


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-3
    adamw_lr: float | None = None
    warmup: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    mtp_weight: float = 0.3
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    max_seconds: float | None = None
    """Stop early (with a consistent checkpoint) once this much wall time is spent; None = run all steps."""
    checkpoint_every: int = 0
    """Call `on_checkpoint(model, step)` every this many steps (0: never), so a long CPU run that dies
    leaves a usable model behind and can be evaluated while it trains."""
    bias_update_rate: float = 1e-3
    """V4's auxiliary-loss-free MoE balancing: after each step every non-hash gate's bias moves by this
    much toward under-used experts (0 disables)."""


@dataclass
class History:
    records: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, out_dir: str | Path, title: str = "agentkit-tiny training") -> tuple[Path, Path | None]:
        """Write loss.json and, when matplotlib is present, loss.png next to it."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        jpath = d / "loss.json"
        jpath.write_text(
            json.dumps({"config": self.config, "records": self.records}, indent=1), encoding="utf-8"
        )
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return jpath, None
        steps = [r["step"] for r in self.records]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, [r["loss"] for r in self.records], label="next-token (assistant tokens)")
        ax.plot(steps, [r["mtp_loss"] for r in self.records], label="MTP (token after next)", alpha=0.7)
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats)")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
        ax.grid(True, alpha=0.3)
        ppath = d / "loss.png"
        fig.tight_layout()
        fig.savefig(ppath, dpi=120)
        plt.close(fig)
        return jpath, ppath


def plot_stages(stages: Sequence[tuple[str, str | Path]], out: str | Path, title: str) -> Path | None:
    """One loss curve across the stages a checkpoint went through (each a `loss.json` of a resumed run).

    The x axis is cumulative training tokens, not steps, because stages differ in batch size (32 x 2048
    on the GPU, 4 x 2048 on the CPU); a dashed line marks where each stage starts. Returns None when
    matplotlib is missing.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.2))
    offset = 0.0
    for k, (label, path) in enumerate(stages):
        records = json.loads(Path(path).read_text(encoding="utf-8"))["records"]
        x = [(offset + r["tokens"]) / 1e6 for r in records]
        ax.plot(x, [r["loss"] for r in records], color="C0", label="next-token" if k == 0 else None)
        ax.plot(x, [r["mtp_loss"] for r in records], color="C1", alpha=0.6, label="MTP" if k == 0 else None)
        ax.axvline(offset / 1e6, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(  # alternate heights: labels of short stages would overlap
            label,
            (offset / 1e6, 1.0 - 0.4 * (k % 2)),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=8,
        )
        offset += records[-1]["tokens"]
    ax.set_xlabel("training tokens (millions, all stages)")
    ax.set_ylabel("cross-entropy on assistant tokens (nats)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(loc="lower left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return Path(out)


def pick_device(name: str) -> torch.device:
    """The training device; on CUDA fp32 matmuls may use TF32 (the attention scores are computed in fp32
    and the model is far too small for the lost mantissa bits to matter next to bf16 autocast)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if dev.type == "cuda":
        torch.set_float32_matmul_precision("high")
    return dev


def lr_at(step: int, cfg: TrainConfig, elapsed: float = 0.0) -> float:
    """Linear warmup, then cosine from 1 down to `min_lr_ratio` (a multiplier of the base rates).

    With a time budget the cosine follows whichever runs out first, steps or seconds, so a run cut
    short by `max_seconds` still ends on a fully decayed learning rate.
    """
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_seconds:
        t = max(t, elapsed / cfg.max_seconds)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def masked_losses(
    out_logits: torch.Tensor, mtp_logits: torch.Tensor | None, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(next-token loss, MTP loss) averaged over trained positions only."""
    v = out_logits.shape[-1]
    main = F.cross_entropy(out_logits.reshape(-1, v).float(), labels.reshape(-1), ignore_index=IGNORE)
    mtp = None
    if mtp_logits is not None and labels.shape[1] > 1:
        # MTP at position p predicts token p+2, which is labels[p+1].
        mtp = F.cross_entropy(
            mtp_logits.reshape(-1, v).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE
        )
    return main, mtp


class LoadBalancer:
    """Counts expert selections of every biased (non-hash) gate and nudges the biases after a step.

    The bias only shifts which experts are selected, never their weights, so it steers load without a
    loss term (DeepSeek-V3/V4's aux-loss-free balancing); the gradient never touches it.
    """

    def __init__(self, model: nn.Module, rate: float) -> None:
        self.rate = rate
        self.gates = [m for m in model.modules() if isinstance(m, Gate) and m.bias is not None]
        self.counts: dict[int, torch.Tensor] = {}
        self._handles = [g.register_forward_hook(self._hook) for g in self.gates] if rate > 0 else []

    def _hook(self, module: nn.Module, args: Any, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        assert isinstance(module, Gate) and module.bias is not None
        c = torch.bincount(out[1].flatten(), minlength=module.bias.numel()).float()
        key = id(module)
        self.counts[key] = self.counts[key] + c if key in self.counts else c

    @torch.no_grad()
    def step(self) -> torch.Tensor | None:
        """Apply the update; returns the mean over gates of (busiest expert's load / mean load), as a
        tensor so that a step does not wait for the device unless the caller reads it."""
        ratios = []
        for g in self.gates:
            load = self.counts.pop(id(g), None)
            if load is None or g.bias is None:
                continue
            g.bias.add_(self.rate * torch.sign(load.mean() - load))
            ratios.append(load.max() / load.mean().clamp_min(1e-9))
        return torch.stack(ratios).mean() if ratios else None

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def build_model(model_config: ModelConfig, seed: int, device: torch.device) -> V4Model:
    torch.manual_seed(seed)
    model = V4Model(model_config, dtype=torch.float32, device="cpu")
    model.init_random_(seed=seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, RMSNorm):
                mod.weight.fill_(1.0)
            elif isinstance(mod, Gate) and mod.bias is not None:
                mod.bias.zero_()  # balancing starts from an unbiased router
        model.embed.weight.mul_(0.5)
    return model.to(device)


def _train(
    model_config: ModelConfig,
    data: Packed,
    cfg: TrainConfig,
    device: torch.device,
    on_log: Callable[[dict[str, float]], None] | None,
    model: V4Model | None,
    on_checkpoint: Callable[[V4Model, int], None] | None = None,
) -> tuple[V4Model, History]:
    if len(data) == 0:
        raise ValueError("no training rows")
    if data.trained_tokens == 0:
        raise ValueError("the training rows contain no trained (assistant) tokens")
    if model is None:
        model = build_model(model_config, cfg.seed, device)
    model.train()
    muon, adamw = build_optimizers(model, lr=cfg.lr, weight_decay=cfg.weight_decay, adamw_lr=cfg.adamw_lr)
    opts: list[torch.optim.Optimizer] = [o for o in (muon, adamw) if o is not None]
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    all_inputs = data.inputs.to(device)  # a few hundred MB at most: keep the whole set on the device
    all_labels = data.labels.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data), generator=gen)
    cursor = 0
    hist = History(config={"train": asdict(cfg), "model": model_config.to_hf_dict()})
    use_amp = device.type == "cuda"
    balancer = LoadBalancer(model, cfg.bias_update_rate)
    t0 = time.perf_counter()
    seen_tokens = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order = torch.randperm(len(data), generator=gen)
            cursor = 0
        idx = order[cursor : cursor + cfg.batch_size]
        cursor += cfg.batch_size
        inputs = all_inputs[idx.to(device)]
        labels = all_labels[idx.to(device)]
        mult = lr_at(step, cfg, time.perf_counter() - t0)
        for o, lrs in zip(opts, base_lrs, strict=True):
            for g, lr in zip(o.param_groups, lrs, strict=True):
                g["lr"] = lr * mult
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = model(inputs, mtp=cfg.mtp_weight > 0)
        main, mtp = masked_losses(out.logits, out.mtp_logits, labels)
        loss = main + cfg.mtp_weight * mtp if mtp is not None else main
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for o in opts:
            o.step()
        imbalance = balancer.step()
        seen_tokens += int(inputs.numel())
        last = step == cfg.steps - 1
        over = cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds
        if step % cfg.log_every == 0 or last or over:
            rec = {
                "step": float(step),
                "loss": float(main.detach()),
                "mtp_loss": float(mtp.detach()) if mtp is not None else float("nan"),
                "lr_mult": mult,
                "grad_norm": float(gnorm),
                "expert_imbalance": float(imbalance) if imbalance is not None else float("nan"),
                "tokens": float(seen_tokens),
                "seconds": time.perf_counter() - t0,
            }
            hist.records.append(rec)
            if on_log is not None:
                on_log(rec)
        if over:
            break
        if on_checkpoint is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            model.eval()
            on_checkpoint(model, step + 1)
            model.train()
    balancer.close()
    model.eval()
    return model, hist


def train(
    model_config: ModelConfig,
    data: Packed,
    cfg: TrainConfig,
    *,
    on_log: Callable[[dict[str, float]], None] | None = None,
    model: V4Model | None = None,
    on_checkpoint: Callable[[V4Model, int], None] | None = None,
) -> tuple[V4Model, History]:
    """Train from scratch (or continue `model`) on packed rows; returns the model and its loss history.

    On CPU, deterministic kernels are switched on for the run (and restored after), so the same seed
    reproduces the same losses bit for bit.
    """
    device = pick_device(cfg.device)
    previous = torch.are_deterministic_algorithms_enabled()
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        return _train(model_config, data, cfg, device, on_log, model, on_checkpoint)
    finally:
        torch.use_deterministic_algorithms(previous)


def copy_phase(
    model: V4Model,
    token_range: tuple[int, int],
    *,
    steps: int = 250,
    lr: float = 6e-3,
    batch: int = 8,
    seq_len: int = 256,
    span: tuple[int, int] = (4, 48),
    seed: int = 0,
    max_seconds: float | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train `model` in place on pure copy rows (`data.copy_rows`: random spans, each repeated).

    Why: mixed into the episodes, copying was the one skill agentkit-tiny did not pick up (every name and
    number wrong after 1,300 steps, 73% token accuracy). Span lengths vary per block, so the repeat sits
    at a different distance each time: with one fixed span the model learns a fixed-offset attention
    head within ~150 steps (measured), which is useless for copying a name out of a question.
    """
    from agentkit.train.data import copy_rows

    device = next(model.parameters()).device
    model.train()
    muon, adamw = build_optimizers(model, lr=lr, weight_decay=0.01)
    opts: list[torch.optim.Optimizer] = [o for o in (muon, adamw) if o is not None]
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    records: list[dict[str, float]] = []
    use_amp = device.type == "cuda"
    t0 = time.perf_counter()
    for step in range(steps):
        over = max_seconds is not None and time.perf_counter() - t0 > max_seconds
        rows = copy_rows(batch, seq_len, token_range, seed=seed * 1_000_003 + step, span=span)
        x, labels = rows.inputs.to(device), rows.labels.to(device)
        mult = min(1.0, (step + 1) / 20)
        for o, lrs in zip(opts, base_lrs, strict=True):
            for g, base in zip(o.param_groups, lrs, strict=True):
                g["lr"] = base * mult
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            logits = model(x).logits
        flat = logits.reshape(-1, logits.shape[-1]).float()
        loss = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for o in opts:
            o.step()
        if step % 25 == 0 or step == steps - 1 or over:
            mask = labels != IGNORE
            acc = (logits.argmax(-1)[mask] == labels[mask]).float().mean()
            rec = {
                "step": float(step),
                "loss": float(loss.detach()),
                "copy_accuracy": float(acc),
                "seconds": time.perf_counter() - t0,
            }
            records.append(rec)
            if on_log is not None:
                on_log(rec)
        if over:
            break
    model.eval()
    return records
