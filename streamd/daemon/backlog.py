"""One camera's frames waiting for a stage (the batch, the camera's outputs), oldest first, within a delay budget.

A stage that falls behind for a moment (a network run on every camera at once, the GIL held by another
thread, an encoder opening) leaves its camera's frames waiting, not lost; a frame that has waited past the
budget since it was decoded is dropped once a newer frame of its camera waits behind it. So a short stall
costs latency within the budget, and a camera that outpaces the machine loses frames, never gains latency.
A budget of 0 keeps only the newest frame.
"""
from __future__ import annotations

import time
from collections import deque

from streamd.frame import Frame

MAX_FRAMES = 16  # whatever the budget, a stage holds at most this many frames of a camera (0.64 s at 25 fps)


class Backlog:
    def __init__(self, max_delay_s: float) -> None:
        self.max_delay_s = max_delay_s
        self._frames: deque[Frame] = deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Frame) -> None:
        self._frames.append(frame)
        self._drop_late(frame.arrival)  # a stalled stage holds what is still within the budget, no more
        if len(self._frames) > MAX_FRAMES:
            self._frames.popleft()
            self.dropped += 1

    def pop(self, now: float | None = None) -> Frame | None:
        """The oldest frame still within the budget (or the newest, if none is); None when empty."""
        self._drop_late(time.monotonic() if now is None else now)
        return self._frames.popleft() if self._frames else None

    def _drop_late(self, now: float) -> None:
        while len(self._frames) > 1 and now - self._frames[0].arrival > self.max_delay_s:
            self._frames.popleft()
            self.dropped += 1

    def drop_all(self) -> None:
        """Count every waiting frame as dropped (its stage will not take it)."""
        self.dropped += len(self._frames)
        self._frames.clear()

    def oldest_arrival(self) -> float | None:
        return self._frames[0].arrival if self._frames else None
