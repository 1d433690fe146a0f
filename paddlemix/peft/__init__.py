"""Low-rank adapters: apply, save, load and merge."""
