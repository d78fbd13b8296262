"""Merge LoRA adapters into one, per request, as LoRAX does (``merged_adapters``): linear, TIES,
DARE-linear or DARE-TIES over each module's A and B tensors (PEFT's ``merge_utils`` methods).

Each strategy merges A ``[r, in]`` and B ``[out, r]`` of one (layer, target) separately, over the
adapters that adapt that module, with their weights.  Two differences from LoRAX, both so that
the result is well defined:

- B is merged *with each adapter's scaling applied* (``LoraModule.b`` holds it): adapters with
  different ``lora_alpha`` each keep theirs, where LoRAX applies the first adapter's to all.
  With equal scalings the two agree exactly.
- DARE's random drop is seeded from the merged id and the tensor's place, so the prefill and
  the decode worker of a request (and every later page-in) build the same adapter; DARE's
  rescale by ``1 / density`` is applied (LoRAX discards it).

Modules must have the same rank in every adapter that adapts them (LoRAX: the same ``r``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from loraplex.errors import AdapterError
from loraplex.lora.adapter import LORA_TARGETS, LoraAdapter, LoraModule
from loraplex.lora.merge_spec import MergeSpec, bare_name
from loraplex.lora.tensor_check import checked_bound


def merge_adapters(
    name: str,
    spec: MergeSpec,
    parts: Sequence[LoraAdapter],
    max_abs_weight: float | None = None,
) -> LoraAdapter:
    """One adapter from ``parts`` (in ``spec.adapters``' order) as ``spec`` says; ``name`` keys
    it (and seeds DARE).  AdapterError, naming components by their bare names, when ranks
    differ or the result breaks the weight bound (``max_abs_weight``; None: the registry's)."""
    bound = checked_bound(max_abs_weight)
    weights = torch.tensor(spec.weights, dtype=torch.float32)
    keys = sorted({k for p in parts for k in p.modules})
    modules: dict[tuple[int, str], LoraModule] = {}
    for key in keys:
        idx = [i for i, p in enumerate(parts) if key in p.modules]
        mods = [parts[i].modules[key] for i in idx]
        if len({(m.a.shape, m.b.shape) for m in mods}) > 1:
            names = ", ".join(bare_name(spec.adapters[i]) for i in idx)
            raise AdapterError(
                f"cannot merge adapters {names}: their ranks differ at layer {key[0]} {key[1]} "
                f"({', '.join(str(m.rank) for m in mods)})"
            )
        w = weights[idx]
        a = merge_tensors([m.a for m in mods], w, spec, _seed(name, key, "a"))
        b = merge_tensors([m.b for m in mods], w, spec, _seed(name, key, "b"))
        for t in (a, b):
            if not bool(torch.isfinite(t).all()) or float(t.abs().max()) > bound:
                raise AdapterError(
                    f"the merged adapter's weights at layer {key[0]} {key[1]} are out of bounds "
                    f"(above {bound:g}): lower the merge weights"
                )
        modules[key] = LoraModule(a.to(mods[0].a.dtype), b.to(mods[0].b.dtype))
    return LoraAdapter(
        name=name,
        rank=max(m.rank for m in modules.values()),
        alpha=parts[0].alpha,  # informative only: B carries each component's scaling
        use_rslora=False,
        targets=tuple(t for t in LORA_TARGETS if any(t == tt for _, tt in modules)),
        modules=modules,
    )


def merge_tensors(
    tensors: list[torch.Tensor], w: torch.Tensor, spec: MergeSpec, seed: int
) -> torch.Tensor:
    """tensors: n x ``[rows, cols]``; w: ``[n]``; returns ``[rows, cols]`` (float32)."""
    t = torch.stack([x.float() for x in tensors])  # [n, rows, cols]
    if spec.strategy != "linear" and spec.density < 1.0:
        if spec.strategy == "ties":
            t = torch.stack([magnitude_prune(x, spec.density) for x in t])
        else:
            gen = torch.Generator().manual_seed(seed)
            t = torch.stack([random_prune(x, spec.density, gen) for x in t])
    weighted = t * w.view(-1, 1, 1)
    if spec.strategy in ("linear", "dare_linear"):
        return weighted.sum(dim=0)
    mask = majority_sign_mask(t, spec.majority_sign_method)  # elected before weighting
    kept = mask.sum(dim=0).clamp(min=1)
    return (weighted * mask).sum(dim=0) / kept


def magnitude_prune(t: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``int(density * numel)`` largest-magnitude entries of ``t`` (TIES's trim)."""
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype)
    mask[torch.topk(t.abs().reshape(-1), k=k).indices] = 1
    return t * mask.view_as(t)


def random_prune(t: torch.Tensor, density: float, gen: torch.Generator) -> torch.Tensor:
    """Keep each entry with probability ``density``, rescaled by ``1 / density`` (DARE)."""
    if density <= 0.0:
        return torch.zeros_like(t)
    keep = torch.bernoulli(torch.full_like(t, density), generator=gen)
    return t * keep / density


def majority_sign_mask(t: torch.Tensor, method: str) -> torch.Tensor:
    """t: ``[n, ...]``; True where an entry's sign is the elected one (by total mass or by
    count; ties elect +)."""
    sign = t.sign()
    votes = t.sum(dim=0) if method == "total" else sign.sum(dim=0)
    return sign == torch.where(votes >= 0, 1.0, -1.0)


def _seed(name: str, key: tuple[int, str], which: str) -> int:
    digest = hashlib.sha256(f"{name}|{key[0]}|{key[1]}|{which}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)
