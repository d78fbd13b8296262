"""The pieces of bench/fairness.py (the CLI entry point): the workloads and tenants, the result
rows and tables, the simulated and live modes, the live clients, the plots, and the docs report."""
