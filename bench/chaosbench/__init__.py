"""bench/chaos.py's parts: the open-loop streaming load and how each stream ended (``load``), the
random faults (``faults``), quiescing the stack and reading its gauges (``health``), and the
tables of the docs section (``report``)."""
