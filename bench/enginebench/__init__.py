"""The pieces of bench/engine.py (the CLI entry point): options, checkpoint and workload, the three
systems, timing, measuring, tables, and the docs report."""
