"""Pure functions: the masked scan driver and cells, losses, reductions, metrics."""
