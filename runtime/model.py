"""The DeepSeek-V4 transformer (spec §2-§8) with explicit per-sequence state.

Parameter names equal the HF checkpoint tensor names of spec §9.1, so loading is a direct name match. There is
one forward implementation: prefill is extend from position 0, decode is extend by one token, an agent
turn is extend by a few thousand tokens on a long prefix. The training forward has all rows at position 0
with one length, so its attention runs batched over rows without state (layers/batched.py); `batched=False`
runs it as extend from fresh states instead, and tests/test_runtime_batched_forward.py holds the two equal.

Inference (`extend`, `Block.forward`) computes outputs only. Training losses are return values of the
training forward (`forward`, `Block.forward_train`): the indexer's distillation terms come back from each
CSA layer and are summed into `ForwardOutput.indexer_loss`; no module holds loss state between calls.

One idea: the V4 network and its forwards (inference extend, the training forward, and the MTP block's
inference entry points `extend_hidden` / `mtp_extend`, which speculative decoding drives from
runtime/speculative.py); splitting the MTP entry points out would split one module's forward in two files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from agentkit.runtime.checkpoint_read import load_checkpoint
from agentkit.runtime.config import ModelConfig
from agentkit.runtime.decode import StaticDecoder
from agentkit.runtime.layers.attention import Attention, SeqSlice
from agentkit.runtime.layers.batched import BatchShape, IndexerKL
from agentkit.runtime.layers.lowp import Linear, StorageFormat
from agentkit.runtime.layers.mhc import hc_head, hc_post, hc_pre
from agentkit.runtime.layers.moe import MoE
from agentkit.runtime.layers.norms import RMSNorm
from agentkit.runtime.parallel import Parallel, VocabEmbedding, check_config, shard_tensors
from agentkit.runtime.random_weights import random_init_tensors
from agentkit.runtime.state import LayerState, SequenceState, StateError, config_key, fresh_layer
from torch import nn


class ModelInputError(ValueError):
    """Token ids, chunk lengths or positions that the model cannot process."""


@dataclass
class ForwardOutput:
    logits: torch.Tensor
    """[B, S, V] fp32 next-token logits at every position."""
    mtp_logits: torch.Tensor | None
    """[B, S-1, V] fp32: the MTP block's prediction of token p+2 from position p (None if not requested)."""
    loss: torch.Tensor | None
    """Mean next-token cross-entropy over labels != -100 (plus `mtp_weight` x the MTP loss when requested)."""
    indexer_loss: torch.Tensor | None = None
    """Mean KL(dense main attention || indexer) over CSA queries (only with `indexer_loss=True` and autograd
    on): the sum of the terms every CSA layer returns over their query count. Its gradient reaches only the
    indexer, whose top-k choice gets no gradient from `loss`."""


class Block(nn.Module):
    def __init__(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, parallel: Parallel | None = None
    ) -> None:
        super().__init__()
        self.cfg = config
        q = config.weight_format == "quantized"
        fmt: StorageFormat = "fp8" if q and config.dtype == "fp8" else "float"
        efmt: StorageFormat = "float"
        if q and config.expert_dtype is not None:
            efmt = config.expert_dtype
        wdtype = torch.bfloat16 if q else dtype
        ndtype = torch.bfloat16 if q else dtype
        hc = (2 + config.hc_mult) * config.hc_mult
        flat = config.hc_mult * config.dim
        self.hc_attn_fn = nn.Parameter(torch.zeros(hc, flat, dtype=torch.float32))
        self.hc_attn_base = nn.Parameter(torch.zeros(hc, dtype=torch.float32))
        self.hc_attn_scale = nn.Parameter(torch.ones(3, dtype=torch.float32))
        self.hc_ffn_fn = nn.Parameter(torch.zeros(hc, flat, dtype=torch.float32))
        self.hc_ffn_base = nn.Parameter(torch.zeros(hc, dtype=torch.float32))
        self.hc_ffn_scale = nn.Parameter(torch.ones(3, dtype=torch.float32))
        self.attn_norm = RMSNorm(config.dim, config.norm_eps, ndtype)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps, ndtype)
        self.attn = Attention(config, layer, fmt, wdtype, ndtype, parallel)
        self.ffn = MoE(config, layer, fmt, efmt, wdtype, wdtype, parallel)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, token_ids: torch.Tensor, seqs: list[SeqSlice]
    ) -> torch.Tensor:
        """Inference: streams x [T, hc, D] -> [T, hc, D], extending each sequence's state."""
        u, post, comb = self._pre(x, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale)
        x = hc_post(self.attn(self.attn_norm(u), positions, seqs), x, post, comb)
        return self._ffn(x, token_ids)

    def forward_train(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        token_ids: torch.Tensor,
        seqs: list[SeqSlice] | BatchShape,
        *,
        indexer_loss: bool,
    ) -> tuple[torch.Tensor, IndexerKL | None]:
        """Training: the same streams, and this layer's indexer distillation terms when asked."""
        u, post, comb = self._pre(x, self.hc_attn_fn, self.hc_attn_base, self.hc_attn_scale)
        a, kl = self.attn.forward_train(self.attn_norm(u), positions, seqs, indexer_loss=indexer_loss)
        return self._ffn(hc_post(a, x, post, comb), token_ids), kl

    def _pre(
        self, x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.cfg
        return hc_pre(
            x, fn, base, scale, sinkhorn_iters=c.hc_sinkhorn_iters, hc_eps=c.hc_eps, norm_eps=c.norm_eps
        )

    def _ffn(self, x: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        u, post, comb = self._pre(x, self.hc_ffn_fn, self.hc_ffn_base, self.hc_ffn_scale)
        return hc_post(self.ffn(self.ffn_norm(u), token_ids), x, post, comb)


class MTPBlock(Block):
    """Multi-token prediction block (spec §8): window-only, non-hash, own input mixing and head."""

    def __init__(
        self, config: ModelConfig, layer: int, dtype: torch.dtype, parallel: Parallel | None = None
    ) -> None:
        super().__init__(config, layer, dtype, parallel)
        q = config.weight_format == "quantized"
        fmt: StorageFormat = "fp8" if q and config.dtype == "fp8" else "float"
        wdtype = torch.bfloat16 if q else dtype
        self.e_proj = Linear(config.dim, config.dim, fmt, wdtype)
        self.h_proj = Linear(config.dim, config.dim, fmt, wdtype)
        self.enorm = RMSNorm(config.dim, config.norm_eps, wdtype)
        self.hnorm = RMSNorm(config.dim, config.norm_eps, wdtype)
        self.norm = RMSNorm(config.dim, config.norm_eps, wdtype)
        self.hc_head_fn = nn.Parameter(
            torch.zeros(config.hc_mult, config.hc_mult * config.dim, dtype=torch.float32)
        )
        self.hc_head_base = nn.Parameter(torch.zeros(config.hc_mult, dtype=torch.float32))
        self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))


class V4Model(nn.Module):
    """DeepSeek-V4 model. `dtype` = activation/compute dtype (and parameter dtype of float weights).

    With `parallel` (runtime/parallel.py) this process is one rank of a tensor + expert parallel group: it
    holds its slices of the split weights and runs the same code on the same tokens as the other ranks,
    which must all call `extend` together (inference only)."""

    def __init__(
        self,
        config: ModelConfig,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        *,
        parallel: Parallel | None = None,
    ):
        super().__init__()
        self.config = config
        self.dtype = dtype
        self.parallel = parallel
        if parallel is not None:
            check_config(config, parallel.world)
        q = config.weight_format == "quantized"
        wdtype = torch.bfloat16 if q else dtype
        vocab = config.vocab_size if parallel is None else parallel.local(config.vocab_size)
        with torch.device(device or "cpu"):
            self.embed: nn.Embedding | VocabEmbedding = (
                nn.Embedding(config.vocab_size, config.dim, dtype=wdtype)
                if parallel is None
                else VocabEmbedding(config.vocab_size, config.dim, wdtype, parallel)
            )
            self.layers = nn.ModuleList(Block(config, i, dtype, parallel) for i in range(config.n_layers))
            self.norm = RMSNorm(config.dim, config.norm_eps, wdtype)
            self.head = Linear(config.dim, vocab, "float", wdtype)
            self.hc_head_fn = nn.Parameter(
                torch.zeros(config.hc_mult, config.hc_mult * config.dim, dtype=torch.float32)
            )
            self.hc_head_base = nn.Parameter(torch.zeros(config.hc_mult, dtype=torch.float32))
            self.hc_head_scale = nn.Parameter(torch.ones(1, dtype=torch.float32))
            self.mtp = nn.ModuleList(
                MTPBlock(config, config.n_layers + i, dtype, parallel) for i in range(config.n_mtp_layers)
            )
        for m in self.modules():  # the reference rounds activations before every FP8 / FP4 GEMM
            if isinstance(m, Linear) and m.fmt != "float":
                m.act_quant = config.sim_fp8_act

    @property
    def device(self) -> torch.device:
        return self.hc_head_fn.device

    # ------------------------------------------------------------------ initialization
    @torch.no_grad()
    def init_random_(self, seed: int = 0) -> V4Model:
        """Random weights from `random_init_tensors` (runtime/random_weights.py, the one generator): linear
        ~ N(0, 1/in), quantized where storage is quantized, and every other tensor non-trivial (norm gains,
        sinks, ape, mHC bases and scales, gate bias, tid2eid) so tests that compare implementations exercise
        every term. Drawn on the CPU from per-(seed, tensor name) streams, so the values do not depend on the
        device; float-format weights are drawn as fp32 (not rounded to the checkpoint's bf16).
        """
        tensors = random_init_tensors(self.config, seed)
        if self.parallel is not None:  # this rank's slices of the same draws
            tensors = shard_tensors(self.config, tensors, self.parallel)
        self.load_weights(dict(tensors))
        return self

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def load_weights(
        self,
        tensors: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
        *,
        strict: bool = True,
    ) -> None:
        """Load checkpoint tensors by name. Same-width 1-byte dtypes (uint8 / e8m0 / e4m3 / int8) are
        reinterpreted, never numerically cast: a cast of E8M0 bytes would silently change the scales.

        A mapping is checked whole before anything is copied; (name, tensor) pairs are copied as they
        come, so a checkpoint streamed one tensor at a time never sits in memory twice, and are checked
        as they go (and for missing names at the end)."""
        own = self.state_dict(keep_vars=True)
        if isinstance(tensors, Mapping):
            missing = sorted(set(own) - set(tensors))
            unknown = sorted(set(tensors) - set(own))
            if strict and (missing or unknown):
                raise ModelInputError(
                    f"weights do not match the model: missing {missing[:5]}, unknown {unknown[:5]}"
                )
            tensors = tensors.items()
        seen: set[str] = set()
        for name, src in tensors:
            if name not in own:
                if strict:
                    raise ModelInputError(f"weights do not match the model: unknown {name}")
                continue
            dst = own[name]
            if tuple(dst.shape) != tuple(src.shape):
                raise ModelInputError(f"{name}: shape {tuple(src.shape)} != model {tuple(dst.shape)}")
            if src.dtype != dst.dtype and src.element_size() == dst.element_size() == 1:
                src = src.view(dst.dtype)
            dst.copy_(src)
            seen.add(name)
        if strict and len(seen) != len(own):
            raise ModelInputError(f"weights do not match the model: missing {sorted(set(own) - seen)[:5]}")

    @classmethod
    def from_checkpoint(
        cls,
        path: str,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        **config_overrides: object,
    ) -> V4Model:
        """Build a model from a V4 checkpoint directory (real layout; see agentkit.runtime.checkpoint)."""
        config, tensors = load_checkpoint(path, device=device or "cpu")
        if config_overrides:
            config = config.with_(**config_overrides)
        model = cls(config, dtype=dtype, device=device)
        model.load_weights(tensors)
        return model

    def materialize_weights(self, enable: bool = True) -> int:
        """Keep dequantized copies of every FP8/FP4 weight (in the compute dtype), or drop them.

        Quantized weights are otherwise dequantized at every use, which keeps memory at checkpoint size but
        makes batch-1 decode pay a dequantization per weight per step. Returns the extra bytes held.
        """
        total = 0
        for mod in self.modules():
            if isinstance(mod, Linear):
                total += mod.materialize(self.dtype if enable else None)
        return total

    # ------------------------------------------------------------------ state
    def new_state(self, max_len: int | None = None) -> SequenceState:
        """An empty sequence state; `max_len` preallocates it for that many tokens (written in place)."""
        return SequenceState.fresh(self.config, self.device, self.dtype, max_len=max_len)

    def static_decoder(
        self, *, max_batch: int = 32, max_len: int = 8192, graphs: bool = True, compile: bool = False
    ) -> StaticDecoder:
        """Slab-backed states (`decoder.new_state()`) for up to `max_batch` sequences of up to `max_len`
        tokens. From then on `extend` runs one-token steps of such states as the decoder's fixed-shape step
        (CUDA graphs on a GPU, see runtime/decode.py); everything else stays on the general path."""
        if self.parallel is not None:
            raise ModelInputError("the static decoder does not run tensor parallel yet")
        self._decoder = StaticDecoder(
            self, max_batch=max_batch, max_len=max_len, graphs=graphs, compile=compile
        )
        return self._decoder

    _decoder: StaticDecoder | None = None

    def _check(self, states: Sequence[SequenceState], chunks: Sequence[torch.Tensor]) -> None:
        if len(states) != len(chunks) or not states:
            raise ModelInputError(
                f"need one chunk per state, got {len(states)} states and {len(chunks)} chunks"
            )
        key = config_key(self.config)
        if len({id(s) for s in states}) != len(states):
            raise ModelInputError("the same state appears twice in one batch")
        for s, c in zip(states, chunks, strict=True):
            if s.config_key != key or len(s.layers) != self.config.n_layers:
                raise StateError("state was made for a model with a different configuration")
            if s.broken:
                raise StateError(f"state is broken ({s.broken}); restore a snapshot before extending it")
            if c.dim() != 1 or c.numel() == 0:
                raise ModelInputError(
                    f"each chunk must be a non-empty 1-D list of token ids, got shape {tuple(c.shape)}"
                )
            if c.dtype.is_floating_point:
                raise ModelInputError("token ids must be integers")
            lo, hi = torch.stack((c.min(), c.max())).tolist()
            if lo < 0 or hi >= self.config.vocab_size:
                raise ModelInputError(
                    f"token id out of range [0, {self.config.vocab_size}): min {lo}, max {hi}"
                )
            if s.capacity is not None and s.pos + c.numel() > s.capacity:
                raise ModelInputError(
                    f"sequence would reach {s.pos + c.numel()} tokens > its state's capacity {s.capacity}"
                )
            if s.pos + c.numel() > self.config.max_seq_len:
                raise ModelInputError(
                    f"sequence would reach {s.pos + c.numel()} tokens > max_seq_len={self.config.max_seq_len}"
                )

    # ------------------------------------------------------------------ forward
    def _streams(self, states: Sequence[SequenceState], chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        """Run the main stack on the chunks (advancing the states); returns the final streams [T, hc, D]."""
        dev = self.device
        ids = torch.cat([c.to(dev) for c in chunks])
        positions = torch.cat(
            [torch.arange(s.pos, s.pos + c.numel(), device=dev) for s, c in zip(states, chunks, strict=True)]
        )
        bounds = [0]
        for c in chunks:
            bounds.append(bounds[-1] + c.numel())
        x = self.embed(ids).to(self.dtype)
        x = x.unsqueeze(1).expand(-1, self.config.hc_mult, -1).contiguous()
        try:
            for li, block in enumerate(self.layers):
                seqs = [SeqSlice(bounds[i], bounds[i + 1], s.pos, s.layers[li]) for i, s in enumerate(states)]
                x = block(x, positions, ids, seqs)
        except BaseException as e:
            for s in states:  # some layers may have advanced: never let a half-extended state be used
                s.broken = f"extend failed at position {s.pos}: {type(e).__name__}: {e}"
            raise
        for s, c in zip(states, chunks, strict=True):
            s.pos += c.numel()
        return x

    def _train_streams(
        self, input_ids: torch.Tensor, states: list[SequenceState] | None, indexer_loss: bool
    ) -> tuple[torch.Tensor, IndexerKL | None]:
        """Main stack on B equal rows from position 0 (training): streams [B*S, hc, D] and the indexer
        distillation terms of all CSA layers. `states=None` runs attention batched without state
        (layers/batched.py); fresh states run it as the per-sequence extend path."""
        b, s = input_ids.shape
        ids = input_ids.to(self.device).reshape(-1)
        positions = torch.arange(s, device=self.device).repeat(b)
        x = self.embed(ids).to(self.dtype)
        x = x.unsqueeze(1).expand(-1, self.config.hc_mult, -1).contiguous()
        kl: IndexerKL | None = None
        for li, block in enumerate(self.layers):
            assert isinstance(block, Block)
            seqs: list[SeqSlice] | BatchShape = BatchShape(b, s)
            if states is not None:
                seqs = [SeqSlice(i * s, (i + 1) * s, 0, st.layers[li]) for i, st in enumerate(states)]
            x, layer_kl = block.forward_train(x, positions, ids, seqs, indexer_loss=indexer_loss)
            kl = IndexerKL.add(kl, layer_kl)
        return x, kl

    def _logits(
        self, x: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, norm: RMSNorm
    ) -> torch.Tensor:
        c = self.config
        u = norm(hc_head(x, fn, base, scale, hc_eps=c.hc_eps, norm_eps=c.norm_eps))
        w = self.head.weight
        if u.is_cuda and u.dtype == w.dtype == torch.bfloat16 and not torch.is_grad_enabled():
            # bf16 x bf16 products are exact in fp32: one GEMM with fp32 output equals the fp32 product of
            # the same values, without copying the [vocab, dim] head to fp32 at every step
            flat = u.reshape(-1, u.shape[-1])
            logits = torch.mm(flat, w.t(), out_dtype=torch.float32).view(*u.shape[:-1], -1)
        else:
            logits = F.linear(u.float(), self.head.dense(torch.float32))
        if self.parallel is not None:  # the head is split by vocabulary: every rank gets all logits
            logits = self.parallel.all_gather(logits, -1)
        return logits

    def extend(
        self,
        states: SequenceState | Sequence[SequenceState],
        tokens: Sequence[int] | torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
        *,
        last_only: bool = False,
    ) -> torch.Tensor | list[torch.Tensor]:
        """Append tokens to sequence state(s); fp32 logits per new position ([n, V]; [V] if last_only).

        One state + one token list -> one tensor; a list of states + a list of token lists -> a list
        (batched: the weights are read once for all sequences, whatever their positions and chunk lengths).
        Inputs are validated before any state is touched.
        """
        single = isinstance(states, SequenceState)
        if isinstance(states, SequenceState):
            st = [states]
            chunks = [_as_ids(tokens)]  # type: ignore[arg-type]
        else:
            st = list(states)
            if isinstance(tokens, torch.Tensor) and tokens.dim() == 1:
                raise ModelInputError("a batch of states needs a list of token lists")
            chunks = [_as_ids(t) for t in tokens]  # type: ignore[arg-type]
        self._check(st, chunks)
        dec = self._decoder
        if (
            dec is not None
            and len(st) <= dec.max_batch
            and all(c.numel() == 1 for c in chunks)
            and all(dec.owns(s) for s in st)
        ):
            logits = dec.step(st, [int(c) for c in chunks])
            out = list(logits.unbind(0)) if last_only else [row[None] for row in logits]
            return out[0] if single else out
        with torch.inference_mode():
            x = self._streams(st, chunks)
            if last_only:
                ends = torch.tensor([0] + [c.numel() for c in chunks], device=x.device).cumsum(0)[1:] - 1
                x = x[ends]
            logits = self._logits(x, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.norm)
        out = list(logits.unbind(0)) if last_only else list(logits.split([c.numel() for c in chunks]))
        return out[0] if single else out

    def forward(
        self,
        input_ids: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mtp: bool = False,
        mtp_weight: float = 0.3,
        indexer_loss: bool = False,
        batched: bool = True,
    ) -> ForwardOutput:
        """Full-sequence (training) forward over [B, S] from position 0; autograd flows through everything
        except the indexer's top-k and the expert choice (both discrete, as in the reference).

        `labels` [B, S] are the next tokens per position (-100 = ignore), i.e. usually input_ids shifted left.
        `batched=True` runs attention for all rows at once (layers/batched.py), the same function as the
        per-sequence extend path (`batched=False`) with far fewer operator dispatches (tiny_config structure,
        B=8, S=2048: 86k -> 28k aten calls per forward+backward). One CPU thread, forward+backward of
        tiny_config() at B=2, S=512: 2.16 s -> 1.93 s.
        """
        if input_ids.dim() != 2:
            raise ModelInputError(f"input_ids must be [B, S], got shape {tuple(input_ids.shape)}")
        if self.parallel is not None:
            raise ModelInputError("a tensor-parallel model runs inference only (extend)")
        b, s = input_ids.shape
        states = [self.new_state() for _ in range(b)]
        chunks = list(input_ids.unbind(0))
        self._check(states, chunks)
        # the distillation loss exists for training: without autograd there is nothing to train
        x, kl = self._train_streams(
            input_ids, None if batched else states, indexer_loss and torch.is_grad_enabled()
        )
        logits = self._logits(x, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.norm).view(
            b, s, -1
        )
        mtp_logits = None
        if mtp:
            if not self.mtp:
                raise ModelInputError("this model has no MTP block")
            mtp_logits = self._mtp_forward(x.view(b, s, *x.shape[1:]), input_ids, batched)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.reshape(b * s, -1), labels.reshape(-1), ignore_index=-100)
            if mtp_logits is not None and s > 1:
                # MTP at position p predicts token p+2 = labels[p+1].
                mtp_loss = F.cross_entropy(
                    mtp_logits.reshape(b * (s - 1), -1), labels[:, 1:].reshape(-1), ignore_index=-100
                )
                loss = loss + mtp_weight * mtp_loss
        idx_loss = None if kl is None else kl.mean()
        return ForwardOutput(logits=logits, mtp_logits=mtp_logits, loss=loss, indexer_loss=idx_loss)

    def _mtp_forward(self, streams: torch.Tensor, input_ids: torch.Tensor, batched: bool) -> torch.Tensor:
        """MTP block on the main streams at p with token p+1's embedding (spec §8, DeepSeek's
        `MTPBlock.forward`: every position, p = 0 included, gets its real next-token embedding)."""
        b, s = input_ids.shape
        blk = self._mtp_block()
        n = s - 1
        if n <= 0:
            return torch.zeros(b, 0, self.config.vocab_size, device=self.device)
        nxt = input_ids[:, 1:].to(self.device)
        xin = self._mtp_input(blk, streams[:, :n], nxt).reshape(b * n, self.config.hc_mult, -1)
        positions = torch.arange(n, device=self.device).repeat(b)
        seqs: list[SeqSlice] | BatchShape = BatchShape(b, n)
        if not batched:
            seqs = [SeqSlice(i * n, (i + 1) * n, 0, self.new_mtp_layer()) for i in range(b)]
        y, _ = blk.forward_train(xin, positions, nxt.reshape(-1), seqs, indexer_loss=False)
        logits = self._logits(y, blk.hc_head_fn, blk.hc_head_base, blk.hc_head_scale, blk.norm)
        return logits.view(b, n, -1)

    # ------------------------------------------------------------------ MTP inference (speculative decoding)
    def _mtp_block(self) -> MTPBlock:
        if not self.mtp:
            raise ModelInputError("this model has no MTP block")
        blk = self.mtp[0]
        assert isinstance(blk, MTPBlock)
        return blk

    def _mtp_input(self, blk: MTPBlock, h: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """streams [..., hc, D] at p and token ids [...] at p+1 -> the block's input streams [..., hc, D]:
        e_proj(enorm(embed(id))) broadcast to every stream + h_proj(hnorm(stream)) per stream."""
        e = blk.enorm(self.embed(next_ids).to(self.dtype))
        return blk.e_proj(e).unsqueeze(-2) + blk.h_proj(blk.hnorm(h))

    def new_mtp_layer(self, max_len: int | None = None) -> LayerState:
        """An empty state for the MTP block's own attention layer (its window ring, and compressor state when
        the config gives the MTP block a compress ratio, as agentkit-tiny's does)."""
        return fresh_layer(self.config, self.config.n_layers, self.device, self.dtype, max_len=max_len)

    def extend_hidden(
        self,
        states: Sequence[SequenceState],
        tokens: Sequence[Sequence[int] | torch.Tensor],
        *,
        last_only: bool | Sequence[bool] = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """`extend` for a batch that also returns the final pre-head mHC streams ([n, hc, D] per chunk).

        The streams at position p are what the MTP block drafts token p+2 from (spec §8). Always the general
        path (never the static decoder's one-token step), so a verify chunk and its streams come from one
        computation. `last_only` (for all chunks, or per chunk): logits of the chunk's last position only
        ([1, V]; a prompt's)."""
        st = list(states)
        chunks = [_as_ids(t) for t in tokens]
        self._check(st, chunks)
        sizes = [c.numel() for c in chunks]
        last = [last_only] * len(sizes) if isinstance(last_only, bool) else list(last_only)
        rows = [1 if lo else n for lo, n in zip(last, sizes, strict=True)]
        with torch.inference_mode():
            x = self._streams(st, chunks)
            y = x
            if any(last):
                ends = torch.tensor(sizes).cumsum(0).tolist()
                pick = [i for e, n, r in zip(ends, sizes, rows, strict=True) for i in range(e - r, e)]
                y = x[torch.tensor(pick, device=x.device)]
            logits = self._logits(y, self.hc_head_fn, self.hc_head_base, self.hc_head_scale, self.norm)
        return list(logits.split(rows)), list(x.split(sizes))

    def mtp_extend(
        self,
        layers: Sequence[LayerState],
        positions: Sequence[int],
        streams: Sequence[torch.Tensor],
        next_ids: Sequence[Sequence[int] | torch.Tensor],
        *,
        last_only: bool = False,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the MTP block for a batch of sequences, extending each one's MTP layer state.

        Sequence i processes positions positions[i] .. + n - 1 from the main streams `streams[i]` [n, hc, D]
        at those positions and the tokens `next_ids[i]` [n] at the positions one later. Returns per sequence
        the logits [n, V] (each predicting the token two after its position) and the block's output streams
        [n, hc, D] (what a chained draft uses in place of the main streams it does not have yet).
        `last_only`: logits of each sequence's last position only ([1, V]), all that a draft needs."""
        blk = self._mtp_block()
        ids = [_as_ids(t).to(self.device) for t in next_ids]
        if not (len(layers) == len(positions) == len(streams) == len(ids)) or not ids:
            raise ModelInputError("need one layer state, position, stream block and id list per sequence")
        for h, t in zip(streams, ids, strict=True):
            if t.dim() != 1 or t.numel() == 0 or h.shape[0] != t.numel():
                raise ModelInputError(f"streams {tuple(h.shape)} do not match next ids {tuple(t.shape)}")
        sizes = [t.numel() for t in ids]
        bounds = [0]
        for n in sizes:
            bounds.append(bounds[-1] + n)
        with torch.inference_mode():
            flat_ids = torch.cat(ids)
            pos = torch.cat(
                [torch.arange(p, p + n, device=self.device) for p, n in zip(positions, sizes, strict=True)]
            )
            x = self._mtp_input(blk, torch.cat(list(streams)).to(self.dtype), flat_ids)
            seqs = [
                SeqSlice(bounds[i], bounds[i + 1], p, ls)
                for i, (p, ls) in enumerate(zip(positions, layers, strict=True))
            ]
            y = blk(x, pos, flat_ids, seqs)
            z = y[_last_rows(sizes, y.device)] if last_only else y
            logits = self._logits(z, blk.hc_head_fn, blk.hc_head_base, blk.hc_head_scale, blk.norm)
        return list(logits.split([1] * len(sizes) if last_only else sizes)), list(y.split(sizes))


def _last_rows(sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(sizes, device=device).cumsum(0) - 1


def _as_ids(t: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.reshape(-1) if t.dim() == 0 else t
    try:
        return torch.tensor(list(t), dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise ModelInputError(f"token ids must be integers: {e}") from e


__all__ = ["Block", "ForwardOutput", "MTPBlock", "ModelInputError", "V4Model"]
