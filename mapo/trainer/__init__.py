"""The training shell: the Lightning module, callbacks, strategies, checkpoints, records."""
