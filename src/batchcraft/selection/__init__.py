"""batchcraft.selection."""
