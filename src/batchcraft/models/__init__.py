"""batchcraft.models."""
