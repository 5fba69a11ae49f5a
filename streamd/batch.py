"""Batch stage: the newest frame of each camera, gathered into one inference batch; frames whose camera's
last prediction still holds skip it (Reuse).

Each camera owns a one-frame mailbox: a new frame replaces one not yet taken (counted as dropped), so a
camera that outpaces inference loses frames, never gains latency. A batch leaves when it is full or when
the deadline, measured from the first waiting frame, expires (DeepStream's nvstreammux rule).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from streamd.colour import grid_flow, lightness_to_gray, warp_along_flow
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


@dataclass(frozen=True)
class _Prediction:
    cells: np.ndarray  # the L input, area-averaged onto the ab grid
    gray: np.ndarray  # the same as 8 bits, for the optical flow
    ab: np.ndarray
    model_id: str | None
    arrival: float


class Reuse:
    """Decides, per camera, whether a gray frame needs the network or can reuse the last prediction.

    Still scenes: a fixed camera at night mostly films a scene that does not change, and running the
    network again there buys nothing (Temporal would keep 95 % of the old colour anyway). A frame reuses
    the last prediction as it is when no cell of the ab grid changed by more than CHANGE_L since the frame
    that was predicted - anything that moves, appears or lights up, even one cell, is predicted afresh -
    for at most `still_s` seconds.

    Moving scenes: up to `carry_frames` frames in a row get the last prediction carried along the optical
    flow (DIS on the ab grid, a fraction of a millisecond) instead of the network, when after that warp at
    most CARRY_MISMATCH of the cells differ by more than CHANGE_L (3x3 mean, as in Temporal) and the
    prediction is under CARRY_MAX_AGE_S old: much content that entered or was uncovered since, a cut, a light
    switched on or a stalled stream sends the frame to the network. Colour is smooth in time (Temporal keeps
    most of it from frame to frame anyway), so most of what the network would say again is known.

    Either way the reused ab is fitted to the frame's own luma by the guided upsampling. Driven by the
    inference thread, on the frames of each batch in order (a batch's checks may run on the pipeline's pool,
    one thread per camera, before its `remember` calls), so a frame that skips the network never overtakes
    one that does not.
    """

    CHANGE_L = 6.0  # L units, the same scale of change that makes Temporal take the new prediction
    # Share of the cells the warp may leave unexplained. Frame to frame, DIS on the coarse grid leaves
    # 3-18 % of DAVIS's hand-held cells (median per video) off by more than CHANGE_L: 5 % carried almost
    # nothing there, 10 % over half the frames; 15 % cost colourfulness (docs/temporal.md)
    CARRY_MISMATCH = 0.10
    CARRY_MAX_AGE_S = 1.0  # as Temporal.MAX_GAP_S: after a longer gap the past is not carried over

    def __init__(self, still_s: float, carry_frames: int = 0) -> None:
        self.still_s, self.carry_frames = still_s, carry_frames
        self._last: _Prediction | None = None
        self._carried = 0  # frames carried since the last prediction
        self._dis = grid_flow() if carry_frames else None
        self.reused = 0
        self.carried = 0

    def reuse(self, frame: Frame) -> bool:
        """If the frame can reuse the last prediction, give it that prediction and return True."""
        last = self._last
        if last is None or frame.lightness is None:
            return False
        cells = cv2.resize(frame.lightness, last.cells.shape[::-1], interpolation=cv2.INTER_AREA)
        if frame.arrival - last.arrival <= self.still_s and np.abs(cells - last.cells).max() <= self.CHANGE_L:
            frame.prediction, frame.model_id = (frame.lightness, last.ab), last.model_id
            self.reused += 1
            return True
        if self._carried < self.carry_frames and frame.arrival - last.arrival <= self.CARRY_MAX_AGE_S:
            ab = self._carry(last, cells)
            if ab is not None:
                frame.prediction, frame.model_id = (frame.lightness, ab), last.model_id
                self._carried += 1
                self.carried += 1
                return True
        return False

    def _carry(self, last: _Prediction, cells: np.ndarray) -> np.ndarray | None:
        """The last prediction warped onto these cells, or None where the warp does not explain them."""
        warped_l, warped_ab, outside = warp_along_flow(self._dis, lightness_to_gray(cells), last.gray, last.cells,
                                                       last.ab)
        unexplained = (cv2.blur(np.abs(warped_l - cells), (3, 3)) > self.CHANGE_L) | outside
        if unexplained.mean() > self.CARRY_MISMATCH:
            return None
        return np.ascontiguousarray(np.moveaxis(warped_ab, -1, 0))

    def remember(self, frame: Frame) -> None:
        """A frame came back from the network with its prediction."""
        lightness, ab = frame.prediction
        cells = cv2.resize(lightness, (ab.shape[2], ab.shape[1]), interpolation=cv2.INTER_AREA)
        self._last = _Prediction(cells, lightness_to_gray(cells), ab, frame.model_id, frame.arrival)
        self._carried = 0

    def forget(self) -> None:
        """Predict the next frame afresh (the model changed)."""
        self._last = None
