"""bench/reliability.py's parts: hostile inputs and the fuzz run counted against a fresh stack
(``inputs``), worker-kill trials (``kills``), and the docs table (``report``)."""
