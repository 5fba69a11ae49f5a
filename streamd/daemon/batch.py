"""Batch stage: the newest frame of each camera, gathered into one inference batch.

Each camera owns a one-frame mailbox: a new frame replaces one not yet taken (counted as dropped), so a
camera that outpaces inference loses frames, never gains latency. A batch leaves when it is full or when
the deadline, measured from the first waiting frame, expires (DeepStream's nvstreammux rule).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from streamd.frame import Frame


class Batcher:
    def __init__(self, max_size: int, deadline_s: float) -> None:
        self.max_size = max_size
        self.deadline_s = deadline_s
        self._ready = threading.Condition()
        self._waiting: OrderedDict[str, Frame] = OrderedDict()  # camera -> newest frame, oldest first
        # camera -> when its mailbox was filled (a replaced frame keeps the time): the batch's deadline runs
        # from the earliest of these, so it follows the frames actually waiting, whatever leaves or is discarded
        self._waiting_since: dict[str, float] = {}
        self.dropped: dict[str, int] = {}
        self._in_flight = 0  # frames handed out by next_batch and not yet passed on (see done)
        self._closed = False

    def put(self, frame: Frame) -> None:
        """Never blocks: replaces the camera's frame that is still waiting, if any."""
        with self._ready:
            if frame.camera in self._waiting:
                self.dropped[frame.camera] = self.dropped.get(frame.camera, 0) + 1
                del self._waiting[frame.camera]  # re-queued at the back: fair to the other cameras
            self._waiting[frame.camera] = frame
            self._waiting_since.setdefault(frame.camera, time.monotonic())
            if len(self._waiting) >= self.max_size:
                self._ready.notify()
            elif len(self._waiting) == 1:
                self._ready.notify()

    def waiting(self) -> int:
        with self._ready:
            return len(self._waiting)

    def pending(self) -> int:
        """Frames waiting or in inference: 0 means every frame put in has been passed on."""
        with self._ready:
            return len(self._waiting) + self._in_flight

    def done(self) -> None:
        """The consumer passed the last batch on."""
        with self._ready:
            self._in_flight = 0

    def discard(self, camera: str) -> None:
        """Forget a camera's waiting frame (the camera was removed)."""
        with self._ready:
            self._waiting.pop(camera, None)
            self._waiting_since.pop(camera, None)

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def next_batch(self, timeout: float = 0.5) -> list[Frame]:
        """Up to max_size frames, one per camera; [] if none arrived within `timeout` or on close."""
        end = time.monotonic() + timeout
        with self._ready:
            while True:
                while not self._waiting and not self._closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        return []
                    self._ready.wait(left)
                while self._waiting and len(self._waiting) < self.max_size and not self._closed:
                    left = min(self._waiting_since.values()) + self.deadline_s - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                if self._waiting or self._closed:  # (all of them may have been discarded meanwhile)
                    break
            batch = []
            while self._waiting and len(batch) < self.max_size:
                camera, frame = self._waiting.popitem(last=False)
                del self._waiting_since[camera]
                batch.append(frame)
            self._in_flight = len(batch)
            return batch
