"""OpenAI-compatible HTTP gateway (FastAPI)."""
