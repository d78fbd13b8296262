"""Decode worker: continuous batching of decode steps with mixed adapters."""
