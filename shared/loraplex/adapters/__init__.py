"""Adapter registry over Redis: storage, validation, events, and the client workers use."""
