"""Greedy decoding with Hugging Face transformers + PEFT: the reference loraplex must match."""

from __future__ import annotations

from pathlib import Path

import torch


class HFReference:
    """A base model with every adapter loaded side by side in one PeftModel."""

    def __init__(self, model_dir: Path, adapters: dict[str, Path]) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        base.eval()
        self.model = base
        self.peft = None
        for i, (name, path) in enumerate(adapters.items()):
            if i == 0:
                self.peft = PeftModel.from_pretrained(base, str(path), adapter_name=name)
            else:
                self.peft.load_adapter(str(path), adapter_name=name)
        if self.peft is not None:
            self.peft.eval()

    @torch.no_grad()
    def all_logits(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        """Logits [len(ids), vocab] of every position (row i predicts token i + 1)."""
        x = torch.tensor([ids])
        if self.peft is None:
            return self.model(x).logits[0].float()
        if adapter is None:
            with self.peft.disable_adapter():
                return self.peft(x).logits[0].float()
        self.peft.set_adapter(adapter)
        return self.peft(x).logits[0].float()

    def _logits(self, ids: list[int], adapter: str | None) -> torch.Tensor:
        return self.all_logits(ids, adapter)[-1]

    def greedy(
        self, ids: list[int], adapter: str | None, max_tokens: int
    ) -> tuple[list[int], list[torch.Tensor]]:
        """Token ids and per-step last-position logits of a greedy loop (full recompute each step)."""
        ids = list(ids)
        out, logits = [], []
        for _ in range(max_tokens):
            row = self._logits(ids, adapter)
            tok = int(row.argmax())
            logits.append(row)
            out.append(tok)
            ids.append(tok)
        return out, logits
