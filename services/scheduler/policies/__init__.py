"""Fairness policies (pure Python, no I/O): VTC, FCFS, LCF, RPM."""

from loraplex.native import native_dirs

# Compiled twins, when built (``loraplex/native.py``).
__path__[:0] = native_dirs(__name__, __path__)
