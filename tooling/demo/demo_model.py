"""One-call offline demo checkpoint: tokenizer + tiny Llama + a set of LoRA adapters."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from loraplex.tooling.demo.model_writer import (
    ALL_MODULES,
    ATTN_MODULES,
    MLP_MODULES,
    TinyModelSpec,
    write_random_adapter,
    write_random_model,
)
from loraplex.tooling.demo.tokenizer_builder import BOS_TOKEN_ID, EOS_TOKEN_ID, write_demo_tokenizer

MANIFEST_NAME = "loraplex_demo.json"
DEMO_VOCAB_SIZE = 1024
DEMO_MAX_POSITIONS = 2048

# (rank, alpha, targets, use_rslora), cycled over the adapters; mixed ranks and target
# sets exercise the batched multi-rank kernels and partial-coverage code paths.
_ADAPTER_PLANS: tuple[tuple[int, float, tuple[str, ...], bool], ...] = (
    (8, 16, ALL_MODULES, False),
    (16, 16, ATTN_MODULES, False),
    (4, 8, MLP_MODULES, False),
    (32, 16, ("q_proj", "v_proj"), True),
)


@dataclass(frozen=True)
class DemoAdapterInfo:
    """One written adapter."""

    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    use_rslora: bool


@dataclass(frozen=True)
class DemoModelInfo:
    """Where `write_demo_model` put things."""

    model_dir: Path
    adapters: tuple[DemoAdapterInfo, ...]
    spec: TinyModelSpec

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.adapters)

    @property
    def adapter_paths(self) -> dict[str, Path]:
        return {a.name: a.path for a in self.adapters}


def demo_model_spec(vocab_size: int = DEMO_VOCAB_SIZE, seed: int = 0) -> TinyModelSpec:
    """Spec of the demo base model: small Llama with GQA and untied head."""
    return TinyModelSpec(
        arch="llama",
        hidden_size=128,
        intermediate_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        vocab_size=vocab_size,
        tie_word_embeddings=False,
        max_position_embeddings=DEMO_MAX_POSITIONS,
        bos_token_id=BOS_TOKEN_ID,
        eos_token_id=EOS_TOKEN_ID,
        seed=seed,
    )


def write_demo_model(out_dir: Path, num_adapters: int = 4, seed: int = 0) -> DemoModelInfo:
    """Write the demo model to `out_dir` and adapters to `out_dir/adapters/demo-lora-<i>`."""
    if num_adapters < 0:
        raise ValueError("num_adapters must be >= 0")
    out_dir = Path(out_dir)
    vocab = write_demo_tokenizer(out_dir, DEMO_VOCAB_SIZE, model_max_length=DEMO_MAX_POSITIONS)
    spec = demo_model_spec(vocab, seed)
    write_random_model(out_dir, spec)
    adapters = []
    for i in range(num_adapters):
        rank, alpha, targets, rslora = _ADAPTER_PLANS[i % len(_ADAPTER_PLANS)]
        # Later cycles get a larger alpha so repeated plans still differ in scale too.
        alpha = alpha * (1 + i // len(_ADAPTER_PLANS))
        name = f"demo-lora-{i}"
        path = out_dir / "adapters" / name
        write_random_adapter(
            path,
            spec,
            rank=rank,
            alpha=alpha,
            targets=targets,
            use_rslora=rslora,
            seed=seed * 1000 + i + 1,
        )
        adapters.append(DemoAdapterInfo(name, path, rank, alpha, targets, rslora))
    manifest = {
        "model": ".",
        "seed": seed,
        "vocab_size": vocab,
        "adapters": [
            {
                "name": a.name,
                "path": a.path.relative_to(out_dir).as_posix(),
                "rank": a.rank,
                "alpha": a.alpha,
                "target_modules": list(a.target_modules),
                "use_rslora": a.use_rslora,
            }
            for a in adapters
        ],
    }
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return DemoModelInfo(model_dir=out_dir, adapters=tuple(adapters), spec=spec)
