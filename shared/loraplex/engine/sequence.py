"""A request's state inside the engine (pure Python)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from loraplex.sampling_params import SamplingParams
from loraplex.token_logprobs import TokenLogprobs


def cache_namespace(lora: str | None, salt: str = "") -> str:
    """Which cached prefixes a request may reuse besides matching tokens: those of its adapter
    (LoRA changes K/V; removing or replacing an adapter drops its cached blocks, so a name always
    means one set of weights, and workers, which key adapters ``name@version``, agree on it
    across processes), and of its cache salt (``SubmitRequest.cache_salt``: by default its
    tenant, so that no tenant can time or count another's cached prompts)."""
    return (lora or "") if not salt else f"{lora or ''}\x1f{salt}"


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    lora: str | None = None
    arrival: int = 0  # admission order; preempted sequences go back in this order
    output_token_ids: list[int] = field(default_factory=list)
    status: SequenceStatus = SequenceStatus.WAITING
    block_table: list[int] = field(default_factory=list)
    lora_slot: int = -1  # device slot while running with an adapter pinned
    slot_bypassed: int = 0  # admitted past it while it waited for a device slot
    num_cached: int = 0  # tokens whose K/V are in the cache
    # prompt tokens found in the prefix cache at its first admission (vLLM's num_cached_tokens;
    # OpenAI's usage.prompt_tokens_details.cached_tokens); -1 until admitted
    num_cached_tokens: int = -1
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    prefill_only: bool = False  # disaggregated prefill: hand the K/V over after the first token
    # Prefix caching: what the K/V depend on besides the tokens (the adapter and its version),
    # and the keys of the full blocks computed so far (they depend on tokens only: kept across
    # preemption).
    cache_namespace: str = ""
    block_keys: list[int] = field(default_factory=list)
    registered_blocks: int = 0  # leading blocks of block_table already offered to the cache
    # With params.prompt_logprobs: entry i is prompt token i + 1's logprob (token 0 has none).
    prompt_logprobs: list[TokenLogprobs] = field(default_factory=list)
    # With params.allowed_token_ids: the [V] bool tensor of the tokens it may not sample, built
    # at its first step and reused (banned_tokens.py): a list of 10^5 ids costs once, not per step.
    disallowed: Any = field(default=None, repr=False, compare=False)
    # With params.bad_words_token_ids: prefix length -> prefix -> banned last tokens, built once.
    bad_word_index: dict[int, dict[tuple[int, ...], list[int]]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt positions still lack logprobs (they need the logits of every prompt row)."""
        return (
            self.params.prompt_logprobs is not None
            and len(self.prompt_logprobs) < len(self.prompt_token_ids) - 1
        )

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def num_uncached(self) -> int:
        """Tokens whose K/V a step must still compute (1 for a sequence in decode)."""
        return self.num_tokens - self.num_cached

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
