"""The commands that run the product's steps on files rather than cameras: colorize, eval, bench, adapt, demo."""
