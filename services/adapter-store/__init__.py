"""Adapter-store service: register, validate, list and delete PEFT adapters over Redis."""
