"""Exponential back-off with jitter, written once for whatever retries a connection: a camera's source
(streamd.daemon.source) and an RTSP output (streamd.daemon.sink)."""
from __future__ import annotations

import random

INITIAL_S = 0.5
MAX_S = 30.0


class Backoff:
    """The wait before each retry: doubles after every failure up to `maximum`, back to `initial` after a
    success. Each wait varies by up to 20 % either way, so that cameras that lost the same server retry
    apart rather than all at once."""

    def __init__(self, initial: float = INITIAL_S, maximum: float = MAX_S) -> None:
        self.initial, self.maximum = initial, maximum
        self._next = initial

    def reset(self) -> None:
        """A success: the next failure waits about `initial` again."""
        self._next = self.initial

    def next_delay(self) -> float:
        """A failure: the seconds to wait before the next try."""
        delay = self._next * random.uniform(0.8, 1.2)
        self._next = min(self._next * 2, self.maximum)
        return delay
