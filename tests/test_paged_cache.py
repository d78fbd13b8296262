"""Block export/import of the paged cache: any block ids, round trip exact."""

from __future__ import annotations

import torch

from loraplex.kvcache.paged_cache import PagedKVCache
from loraplex.model.config import ModelConfig

CFG = ModelConfig.from_hf_dict(
    {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 32,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
)


def test_export_import_round_trip_over_scattered_blocks():
    src = PagedKVCache(
        CFG, num_blocks=12, block_size=4, dtype=torch.float32, device=torch.device("cpu")
    )
    src.data.copy_(torch.randn_like(src.data))
    blocks = [7, 8, 9, 2, 11, 3, 4]  # runs and singles, out of order
    payload = src.export_blocks(blocks)
    assert payload.shape == (2, 2, len(blocks), 4, 2, 4) and payload.is_contiguous()
    torch.testing.assert_close(payload, src.data[:, :, blocks], rtol=0, atol=0)
    dst = PagedKVCache(
        CFG, num_blocks=12, block_size=4, dtype=torch.float32, device=torch.device("cpu")
    )
    targets = [0, 1, 5, 6, 10, 8, 9]
    dst.import_blocks(targets, payload)
    torch.testing.assert_close(dst.data[:, :, targets], src.data[:, :, blocks], rtol=0, atol=0)
    untouched = [b for b in range(12) if b not in targets]
    assert (dst.data[:, :, untouched] == 0).all()
