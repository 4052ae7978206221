"""batchcraft.nn."""
