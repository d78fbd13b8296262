"""The adapter-paging benchmark behind ``bench/adapters.py``, one concept per module."""
