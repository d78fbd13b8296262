"""``python -m loraplex.prefill``: a prefill worker (``--role both`` runs colocated)."""

import sys

from loraplex.worker.main import main

sys.exit(main("prefill"))
