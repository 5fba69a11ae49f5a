"""`streamd eval`: scores against ground truth beside the gray baseline (main.py); with --reference, colour
from a day reference (reference.py)."""
