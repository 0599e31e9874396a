"""Pydantic request/response models with A1111's field names and defaults (no torch import)."""
