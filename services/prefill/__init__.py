"""Prefill worker: batches prompts, computes KV and the first token, ships KV to decode."""
