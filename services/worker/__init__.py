"""Shared worker implementation: one engine, role prefill | decode | both."""
