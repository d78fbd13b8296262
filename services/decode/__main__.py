"""``python -m loraplex.decode``: a decode worker (``--role both`` runs colocated)."""

import sys

from loraplex.worker.main import main

sys.exit(main("decode"))
