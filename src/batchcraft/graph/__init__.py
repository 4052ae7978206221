"""batchcraft.graph."""
