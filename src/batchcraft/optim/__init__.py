"""batchcraft.optim."""
