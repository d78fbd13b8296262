"""What the offline ``LLM`` returns, in vLLM's shape: ``RequestOutput`` per prompt with its
``outputs`` (one ``CompletionOutput``), so ``out.outputs[0].text`` reads as in vLLM; the same
fields sit on the ``RequestOutput`` itself (``out.text``, ``out.token_ids``) for loraplex's own
callers."""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplex.token_logprobs import TokenLogprobs


@dataclass
class CompletionOutput:
    """vLLM's: one generated answer (``index`` 0: the offline ``LLM`` makes one per prompt)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None
    stop_reason: int | str | None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    lora: str | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    logprobs: list[TokenLogprobs] | None = None  # per token, with SamplingParams(logprobs=k)
    # Per prompt token, with SamplingParams(prompt_logprobs=k); the first token's is None.
    prompt_logprobs: list[TokenLogprobs | None] | None = None
    # With finish_reason "error": why the request ended early (e.g. its adapter produced
    # non-finite logits); the other prompts of the batch are not affected.
    error: str | None = None
    prompt: str | None = None  # the prompt's text, when it was given as text (vLLM's)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def outputs(self) -> list[CompletionOutput]:
        """vLLM's view: the answer as a one-element list."""
        cumulative = None if self.logprobs is None else sum(t.logprob for t in self.logprobs)
        answer = CompletionOutput(
            0, self.text, list(self.token_ids), cumulative, self.logprobs,
            self.finish_reason, self.stop_reason,
        )  # fmt: skip
        return [answer]
