"""bench/memory.py's parts: the traffic mix (``mix``) and the services' resident memory over the
run (``rss``)."""
