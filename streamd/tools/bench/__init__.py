"""`streamd bench`: how close streamd comes to the physical limit of the machine it runs on (main.py)."""
