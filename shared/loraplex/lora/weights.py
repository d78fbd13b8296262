"""Device-resident LoRA weights for every slot, stacked per layer and target module."""

from __future__ import annotations

import torch

from loraplex.lora.adapter import LORA_TARGETS, LoraAdapter
from loraplex.model.config import ModelConfig


class LoraWeights:
    """Stacked, rank-padded storage; each slot's real rank is recorded per layer and target.

    a[target]: [L, S, R, in]; b[target]: [L, S, out, R] (B pre-multiplied by the scaling);
    ranks[target]: [L, S] int32 on the device (0 = no adapter for this module in this slot).
    Kernels read only the first ``ranks[...]`` rank columns, so padding costs memory, not compute.
    """

    def __init__(
        self,
        model: ModelConfig,
        max_loras: int,
        max_rank: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.max_loras, self.max_rank = max_loras, max_rank
        self.num_layers = model.num_layers
        self.a: dict[str, torch.Tensor] = {}
        self.b: dict[str, torch.Tensor] = {}
        self.ranks: dict[str, torch.Tensor] = {}
        for t in LORA_TARGETS:
            in_f, out_f = model.module_shape(t)
            self.a[t] = torch.zeros(
                model.num_layers, max_loras, max_rank, in_f, dtype=dtype, device=device
            )
            self.b[t] = torch.zeros(
                model.num_layers, max_loras, out_f, max_rank, dtype=dtype, device=device
            )
            self.ranks[t] = torch.zeros(
                model.num_layers, max_loras, dtype=torch.int32, device=device
            )

    def load(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy an adapter into ``slot`` (host -> device); modules it lacks get rank 0."""
        for t in LORA_TARGETS:
            ranks = torch.zeros(self.num_layers, dtype=torch.int32)
            for layer in range(self.num_layers):
                mod = adapter.modules.get((layer, t))
                if mod is None:
                    continue
                r = mod.rank
                self.a[t][layer, slot, :r].copy_(mod.a, non_blocking=True)
                self.b[t][layer, slot, :, :r].copy_(mod.b, non_blocking=True)
                ranks[layer] = r
            self.ranks[t][:, slot].copy_(ranks)

    def clear(self, slot: int) -> None:
        for t in LORA_TARGETS:
            self.ranks[t][:, slot] = 0

    @property
    def nbytes(self) -> int:
        return sum(x.nbytes for d in (self.a, self.b) for x in d.values())
