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
        """Copy blocks out: [layers, 2, len(blocks), block_size, KVH, D] (contiguous, same device).

        Runs of consecutive block ids are copied as slices (a gather along a middle dimension is
        several times slower, notably on CPU).
        """
        parts = [self.data.narrow(2, start, n) for start, n in _runs(blocks)]
        return torch.cat(parts, dim=2) if len(parts) > 1 else parts[0].contiguous()

    def import_blocks(self, blocks: list[int], payload: torch.Tensor) -> None:
        """Write an exported payload into (possibly different) local block ids."""
        payload = payload.to(self.data.device, self.data.dtype)
        offset = 0
        for start, n in _runs(blocks):
            self.data.narrow(2, start, n).copy_(payload.narrow(2, offset, n))
            offset += n


def _runs(blocks: list[int]) -> list[tuple[int, int]]:
    """[3, 4, 5, 9, 10] -> [(3, 3), (9, 2)]: (first id, length) of consecutive runs."""
    runs: list[tuple[int, int]] = []
    for b in blocks:
        if runs and runs[-1][0] + runs[-1][1] == b:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((b, 1))
    return runs
