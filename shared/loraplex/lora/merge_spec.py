"""LoRAX's merged adapters, named: which adapters a request merges, with which weights and how
(no torch: the gateway builds these, the workers read them back).

A merged adapter travels as an ordinary adapter id, ``<tenant>/+merge:<strategy>:<density>:
<sign method>:<id>*<weight>,<id>*<weight>...``, so the scheduler (placement, prefetch, adapter
affinity), heartbeats, takeovers and K/V hand-overs carry it unchanged, and every worker that
meets the id builds the same adapter from it (``merge.merge_adapters``).  Adapter names start
alphanumeric, so ``+merge`` is never a registered adapter's name; ids hold no ``@``, so the
engine key ``<id>@<version>`` still splits.  The components are full ids (the tenant's own
adapters or public ones), resolved by the gateway for the requesting tenant.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplex.errors import AdapterError
from loraplex.lora.config_check import finite_float
from loraplex.lora.names import NAME_PATTERN

MERGE_STRATEGIES = ("linear", "ties", "dare_linear", "dare_ties")
MAJORITY_SIGN_METHODS = ("total", "frequency")
MAX_MERGED_ADAPTERS = 16
MAX_MERGE_WEIGHT = 1e3  # |weight|: past it the merged tensors break the weight bound anyway
MERGED_NAME = "+merge"
_MARK = f"/{MERGED_NAME}:"


@dataclass(frozen=True)
class MergeSpec:
    """``adapters``: component ids (``owner/name``), in the request's order; ``weights``: one
    per adapter; ``density``: the fraction of each tensor TIES and DARE keep (LoRAX's)."""

    adapters: tuple[str, ...]
    weights: tuple[float, ...]
    strategy: str = "linear"
    density: float = 1.0
    majority_sign_method: str = "total"

    def __post_init__(self) -> None:
        if not 1 <= len(self.adapters) <= MAX_MERGED_ADAPTERS:
            raise AdapterError(f"merge 1 to {MAX_MERGED_ADAPTERS} adapters")
        if len(self.weights) != len(self.adapters):
            raise AdapterError("merged adapters need one weight per adapter")
        if not all(_is_component(a) for a in self.adapters):  # owner/name: never a merge
            raise AdapterError("merged adapters are registered adapters' ids")
        if len(set(self.adapters)) != len(self.adapters):
            raise AdapterError("an adapter is listed twice in the merge")
        if any(not finite_float(w) or abs(w) > MAX_MERGE_WEIGHT for w in self.weights):
            raise AdapterError(
                f"merge weights must be finite, at most {MAX_MERGE_WEIGHT:g} in size"
            )
        if self.strategy not in MERGE_STRATEGIES:
            raise AdapterError(f"merge_strategy must be one of {', '.join(MERGE_STRATEGIES)}")
        if not 0.0 <= self.density <= 1.0:  # also refuses NaN
            raise AdapterError("density must be between 0 and 1")
        if self.majority_sign_method not in MAJORITY_SIGN_METHODS:
            raise AdapterError(
                f"majority_sign_method must be one of {', '.join(MAJORITY_SIGN_METHODS)}"
            )

    def adapter_id(self, tenant: str) -> str:
        """The id the merged adapter travels under (canonical: ``repr`` of each float)."""
        parts = ",".join(f"{a}*{w!r}" for a, w in zip(self.adapters, self.weights, strict=True))
        head = f"{self.strategy}:{self.density!r}:{self.majority_sign_method}"
        return f"{tenant}{_MARK}{head}:{parts}"


def _is_component(aid: str) -> bool:
    owner, slash, name = aid.partition("/")
    return bool(slash and NAME_PATTERN.match(owner) and NAME_PATTERN.match(name))


def is_merged_id(aid: str) -> bool:
    return _MARK in aid


def parse_merged_id(aid: str) -> MergeSpec:
    """The spec a merged id names; AdapterError when it is not one this module wrote."""
    try:
        _, mark, rest = aid.partition(_MARK)
        strategy, density, sign, parts = rest.split(":", 3)
        pairs = [p.rpartition("*") for p in parts.split(",")]
        if not mark or any(not a or not star for a, star, _ in pairs):
            raise ValueError(aid)
        return MergeSpec(
            adapters=tuple(a for a, _, _ in pairs),
            weights=tuple(float(w) for _, _, w in pairs),
            strategy=strategy,
            density=float(density),
            majority_sign_method=sign,
        )
    except ValueError as e:
        raise AdapterError("malformed merged adapter") from e


def bare_name(aid: str) -> str:
    """What a tenant calls a component (``owner/name`` -> ``name``): errors name no owner."""
    return aid.rpartition("/")[2]
