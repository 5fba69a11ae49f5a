"""Training-side code of the colorization network (needs the `train` extra: torch)."""
