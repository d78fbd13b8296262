"""The scheduler service: the only queue, fairness policy, placement."""

from loraplex.native import native_dirs

# The hot modules' compiled twins, when built from these sources (``loraplex/native.py``).
__path__[:0] = native_dirs(__name__, __path__)
