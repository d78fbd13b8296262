"""OpenAI's Files and Batch APIs (``/v1/files``, ``/v1/batches``): see ``runner.py``."""
