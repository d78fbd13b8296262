"""Fairness policies (pure Python, no I/O): VTC, FCFS, LCF, RPM."""
