"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) over a paged KV cache with batched multi-LoRA.

Tokens of all sequences in a step are packed into one dimension T (no padding).  Base weights of
projections that share an input are fused (q/k/v, gate/up); LoRA deltas land in their slices.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from loraplex.forward_context import ForwardContext
from loraplex.lora.apply import add_lora
from loraplex.lora.weights import LoraWeights
from loraplex.model.config import ModelConfig
from loraplex.model.rope import RotaryEmbedding


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and scale after casting back, as Hugging Face does.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg, self.index = cfg, index
        h, qkv = cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size
        self.input_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.post_norm = RMSNorm(h, cfg.rms_norm_eps)
        self.qkv_weight = nn.Parameter(torch.empty(qkv, h))
        self.qkv_bias = nn.Parameter(torch.zeros(qkv)) if cfg.qkv_bias else None
        self.o_weight = nn.Parameter(torch.empty(h, cfg.q_size))
        self.o_bias = nn.Parameter(torch.zeros(h)) if cfg.o_bias else None
        self.gate_up_weight = nn.Parameter(torch.empty(2 * cfg.intermediate_size, h))
        self.down_weight = nn.Parameter(torch.empty(h, cfg.intermediate_size))
        self.gate_up_bias = (
            nn.Parameter(torch.zeros(2 * cfg.intermediate_size)) if cfg.mlp_bias else None
        )
        self.down_bias = nn.Parameter(torch.zeros(h)) if cfg.mlp_bias else None
        self.qkv_slices = (
            ("q_proj", 0),
            ("k_proj", cfg.q_size),
            ("v_proj", cfg.q_size + cfg.kv_size),
        )
        self.gate_up_slices = (("gate_proj", 0), ("up_proj", cfg.intermediate_size))
        self.scale = cfg.head_dim**-0.5

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        kv: tuple[torch.Tensor, torch.Tensor],
        rope: RotaryEmbedding,
        lora: LoraWeights | None,
        ops: ModuleType,
    ) -> torch.Tensor:
        """x: [T, hidden]; positions: [T]; kv: (k_cache, v_cache) each [blocks, block_size, KVH, D]."""
        cfg, i = self.cfg, self.index
        h = self.input_norm(x)
        qkv = F.linear(h, self.qkv_weight, self.qkv_bias)  # [T, q + 2kv]
        if lora is not None:
            add_lora(qkv, h, i, self.qkv_slices, lora, ctx.lora, ops)
        q, k, v = qkv.split([cfg.q_size, cfg.kv_size, cfg.kv_size], dim=-1)
        q = q.view(-1, cfg.num_heads, cfg.head_dim)
        k = k.view(-1, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(-1, cfg.num_kv_heads, cfg.head_dim)
        q, k = rope(positions, q, k)
        ops.store_kv(k, v, kv[0], kv[1], ctx.attn.slot_mapping)
        attn = self._attention(q, k, v, ctx, kv, ops)
        attn = attn.reshape(-1, cfg.q_size)
        o = F.linear(attn, self.o_weight, self.o_bias)
        if lora is not None:
            add_lora(o, attn, i, (("o_proj", 0),), lora, ctx.lora, ops)
        x = x + o
        h = self.post_norm(x)
        gate_up = F.linear(h, self.gate_up_weight, self.gate_up_bias)  # [T, 2 * inter]
        if lora is not None:
            add_lora(gate_up, h, i, self.gate_up_slices, lora, ctx.lora, ops)
        gate, up = gate_up.chunk(2, dim=-1)
        act = F.silu(gate) * up
        down = F.linear(act, self.down_weight, self.down_bias)
        if lora is not None:
            add_lora(down, act, i, (("down_proj", 0),), lora, ctx.lora, ops)
        return x + down

    def _attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        ctx: ForwardContext,
        kv: tuple[torch.Tensor, torch.Tensor],
        ops: ModuleType,
    ) -> torch.Tensor:
        """q: [T, H, D]; k, v: [T, KVH, D] (already stored) -> [T, H, D].  Prefill rows [0, P)
        attend causally (over their cached prefix too); decode rows [P, T) through the paged
        cache."""
        meta, window = ctx.attn, self.cfg.sliding_window
        p = meta.prefill_rows(q.shape[0])
        parts = []
        if p and meta.prefix_lens is not None:
            # Chunked prefill / prefix-cache hits: also attend to the cached earlier tokens.
            parts.append(
                ops.prefill_attention_paged(
                    q[:p], k[:p], v[:p], kv[0], kv[1], meta.cu_seqlens, meta.prefix_lens,
                    meta.prefill_block_tables, self.scale, window,
                )
            )  # fmt: skip
        elif p:
            parts.append(
                ops.prefill_attention(q[:p], k[:p], v[:p], meta.cu_seqlens, self.scale, window)
            )
        if p < q.shape[0]:
            parts.append(
                ops.paged_decode_attention(
                    q[p:], kv[0], kv[1], meta.block_tables, meta.context_lens, self.scale, window
                )
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = (
            self.embed_tokens
            if cfg.tie_word_embeddings
            else nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden_size))
        )
        self.rope = RotaryEmbedding(
            cfg.head_dim, max_positions, cfg.rope_theta, cfg.rope_scaling_dict
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        ctx: ForwardContext,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        lora: LoraWeights | None,
        ops: ModuleType,
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> final hidden states [T, hidden] (after the last norm)."""
        x = F.embedding(input_ids, self.embed_tokens)
        for layer, kv in zip(self.layers, kv_caches, strict=False):
            x = layer(x, positions, ctx, kv, self.rope, lora, ops)
        return self.norm(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden] -> logits [N, vocab] in fp32."""
        return F.linear(hidden, self.lm_head).float()
