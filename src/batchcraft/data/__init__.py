"""batchcraft.data."""
