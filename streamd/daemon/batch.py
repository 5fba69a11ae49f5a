"""Batch stage: one frame of each waiting camera, its oldest within the delay budget, gathered into one batch.

Each camera's frames wait in a Backlog (streamd.daemon.backlog): a short stall of inference costs them latency
within the budget, a camera that outpaces inference loses frames (counted as dropped). A batch holds at most
one frame per camera, so each camera's frames reach the network and its Reuse in order. A batch leaves when it
is full or when the deadline, measured from the oldest waiting frame, expires (DeepStream's nvstreammux rule).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from streamd.daemon.backlog import Backlog
from streamd.frame import Frame


class Batcher:
    def __init__(self, max_size: int, deadline_s: float, max_delay_s: float = 0.0) -> None:
        """`max_delay_s`: the Backlog's budget (0: only each camera's newest frame waits)."""
        self.max_size = max_size
        self.deadline_s = deadline_s
        self.max_delay_s = max_delay_s
        self._ready = threading.Condition()
        # camera -> its waiting frames; cameras in the order they are served (one that gave a frame to a
        # batch goes to the back: fair to the others when a batch cannot take every camera)
        self._waiting: OrderedDict[str, Backlog] = OrderedDict()
        self._backlogs: dict[str, Backlog] = {}  # every camera's, waiting or not (its drops are counted there)
        self._in_flight = 0  # frames handed out by next_batch and not yet passed on (see done)
        self._closed = False

    @property
    def dropped(self) -> dict[str, int]:
        """Frames dropped so far, by camera (since it was last added: as its other counters, which a restart
        of the camera starts again)."""
        with self._ready:
            return {camera: backlog.dropped for camera, backlog in self._backlogs.items() if backlog.dropped}

    def put(self, frame: Frame) -> None:
        """Never blocks. Once closed, the frame is counted as dropped (a camera that did not stop in time)."""
        with self._ready:
            backlog = self._backlogs.get(frame.camera)
            if backlog is None:
                backlog = self._backlogs[frame.camera] = Backlog(self.max_delay_s)
            if self._closed:
                backlog.dropped += 1
                return
            if not backlog:
                self._waiting[frame.camera] = backlog
            backlog.push(frame)
            if len(self._waiting) >= self.max_size or len(self._waiting) == 1:
                self._ready.notify()

    def waiting(self) -> int:
        """Frames waiting for a batch, all cameras together."""
        with self._ready:
            return sum(len(b) for b in self._waiting.values())

    def pending(self) -> int:
        """Frames waiting or in inference: 0 means every frame put in has been passed on."""
        with self._ready:
            return sum(len(b) for b in self._waiting.values()) + self._in_flight

    def done(self) -> None:
        """The consumer passed the last batch on."""
        with self._ready:
            self._in_flight = 0

    def discard(self, camera: str) -> None:
        """Forget a camera (it was removed): its waiting frames and its count of drops."""
        with self._ready:
            self._waiting.pop(camera, None)
            self._backlogs.pop(camera, None)

    def close(self) -> None:
        """No more frames come: next_batch hands out what still waits, then returns [] at once."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def abandon(self) -> None:
        """Close, and count the frames still waiting as dropped: the consumer stops taking them."""
        with self._ready:
            self._closed = True
            for backlog in self._waiting.values():
                backlog.drop_all()
            self._waiting.clear()
            self._ready.notify_all()

    @property
    def closed(self) -> bool:
        """Whether close (or abandon) was called: from then on no frame is taken in."""
        with self._ready:
            return self._closed

    def next_batch(self, timeout: float = 0.5) -> list[Frame]:
        """Up to max_size frames, one per camera; [] if none arrived within `timeout`, or once closed and
        empty."""
        end = time.monotonic() + timeout
        with self._ready:
            while True:
                while not self._waiting and not self._closed:
                    left = end - time.monotonic()
                    if left <= 0:
                        return []
                    self._ready.wait(left)
                while self._waiting and len(self._waiting) < self.max_size and not self._closed:
                    oldest = min(b.oldest_arrival() for b in self._waiting.values())
                    left = oldest + self.deadline_s - time.monotonic()
                    if left <= 0:
                        break
                    self._ready.wait(left)
                if self._waiting or self._closed:  # (all of them may have been discarded meanwhile)
                    break
            batch, now = [], time.monotonic()
            for camera in list(self._waiting)[:self.max_size]:
                backlog = self._waiting.pop(camera)
                batch.append(backlog.pop(now))
                if backlog:
                    self._waiting[camera] = backlog  # its next frame waits behind the other cameras'
            self._in_flight = len(batch)
            return batch
