"""batchcraft.ops."""
