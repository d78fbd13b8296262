"""The paged KV-cache tensors and block export/import for prefill -> decode hand-over."""

from __future__ import annotations

import torch

from loraplex.model.config import ModelConfig


class PagedKVCache:
    """One tensor ``[layers, 2, blocks, block_size, kv_heads, head_dim]`` (2 = keys, values)."""

    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.data = torch.zeros(
            cfg.num_layers,
            2,
            num_blocks,
            block_size,
            cfg.num_kv_heads,
            cfg.head_dim,
            dtype=dtype,
            device=device,
        )
        self.layers = [(self.data[i, 0], self.data[i, 1]) for i in range(cfg.num_layers)]

    @staticmethod
    def bytes_per_block(cfg: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        elem = torch.empty((), dtype=dtype).element_size()
        return cfg.num_layers * 2 * block_size * cfg.num_kv_heads * cfg.head_dim * elem

    def export_blocks(self, blocks: list[int]) -> torch.Tensor:
        """Copy blocks out: [layers, 2, len(blocks), block_size, KVH, D] (contiguous, same device)."""
        idx = torch.tensor(blocks, dtype=torch.long, device=self.data.device)
        return self.data.index_select(2, idx).contiguous()

    def import_blocks(self, blocks: list[int], payload: torch.Tensor) -> None:
        """Write an exported payload into (possibly different) local block ids."""
        idx = torch.tensor(blocks, dtype=torch.long, device=self.data.device)
        self.data.index_copy_(2, idx, payload.to(self.data.device, self.data.dtype))
