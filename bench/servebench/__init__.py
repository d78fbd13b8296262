"""The serving benchmark behind ``bench/serve.py``, one concept per module."""
