"""The pieces of bench/kernels.py (the CLI entry point): timing, LoRA cases and variants, the
decode step, attention, and the report."""
