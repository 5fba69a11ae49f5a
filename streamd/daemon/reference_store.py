"""A camera's day reference in the daemon: kept in the state directory, rebuilt in the background from the
camera's own day frames (streamd.daemon.collect.FrameStore), and checked against each night frame before use.

    day frames -> FrameStore (JPEG, in the state directory)
                    -> Builder (one thread for all cameras, idle CPU priority) -> reference.npz (atomic)
    night frame -> CameraReference.planes_for: the reference's planes at the network's input size, or None
                   where the frame does not show the reference's view (logged once; rebuilt from later days)

A reference is rebuilt when the camera turns to night and its store holds day frames newer than the
reference's, at most once per `rebuild_every_h` (the light of the last day is the one most like tonight's),
and at the first night after the reference was found not to fit, from the day frames stored since.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from streamd.daemon.collect import capture_time, stored_frames
from streamd.colour.reference import FIT_AGAIN, FIT_THRESHOLD, DayReference, ReferenceError, build, fit

log = logging.getLogger(__name__)

REFERENCE_FILE = "reference.npz"  # in the camera's folder of the state directory


def read_frames(paths: list[Path]) -> list[np.ndarray]:
    """Stored day frames as RGB; unreadable ones (being written, damaged) are left out."""
    frames = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


class Builder:
    """Builds references off the frame path: one worker thread for all cameras, at the idle CPU priority (a
    median over hundreds of frames takes a second or two of a core, which the cameras' frames must not wait
    for). The pipeline owns it and shuts it down."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reference",
                                        initializer=self._idle_priority)

    @staticmethod
    def _idle_priority() -> None:
        try:  # on Linux a thread is a task of its own: this lowers only the builder's priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except OSError:
            pass

    def submit(self, fn, *args) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class CameraReference:
    """One camera's reference: the one named by its config (fixed), or the one built from its store."""

    def __init__(self, camera: str, folder: Path | None, builder: Builder | None, fixed: Path | None = None,
                 min_frames: int = 20, max_frames: int = 240, rebuild_every_h: float = 6.0,
                 reference: DayReference | None = None) -> None:
        """`folder`: the camera's store (its reference is kept there); `fixed`: a reference file named by the
        config, never rebuilt; `reference`: one given in memory (streamd colorize --reference)."""
        self.camera, self.folder, self.builder = camera, folder, builder
        self.min_frames, self.max_frames, self.rebuild_every_s = min_frames, max_frames, rebuild_every_h * 3600
        self.fixed = fixed is not None or reference is not None
        self.path = fixed if fixed is not None else (folder / REFERENCE_FILE if folder else None)
        self.reference: DayReference | None = reference
        self._sized: DayReference | None = None  # the reference for this camera's frame size
        self._building: Future | None = None
        self._misfit_since: float | None = None  # wall time the reference was first found not to fit
        self._refused: set[tuple[int, int]] = set()  # frame sizes of another shape of view, logged once each
        self.fits = True  # whether the last night frame showed the reference's view
        self.misfits = 0  # night frames that did not
        if self.path is not None and self.path.exists():
            try:
                self.reference = DayReference.load(self.path)
                log.info("camera %s: day reference %s (%d day frames, %.1f h old)", camera, self.path,
                         self.reference.frames, self.reference.age_s() / 3600)
            except ReferenceError as e:  # a damaged file costs the camera its reference, not its stream
                log.error("camera %s: %s; colouring without a reference until one is built", camera, e)
        elif fixed is not None:
            log.error("camera %s: reference_file %s does not exist; colouring without a reference", camera, fixed)

    # -- night: per frame ---------------------------------------------------------------------------------
    def planes_for(self, width: int, height: int, lightness: np.ndarray) -> np.ndarray | None:
        """The reference's planes (4, h, w) for a night frame of (width, height) whose network input L is
        `lightness` (h, w), or None: no reference, a frame of another shape of view, or one that does not show
        the reference's view. The fit has hysteresis (it is lost under FIT_THRESHOLD and regained only at
        FIT_AGAIN), so a score that hovers neither flips the colour frame by frame nor floods the log."""
        reference = self.reference
        if reference is None:
            return None
        sized = self._sized
        if sized is None or sized.source_size != (width, height) or sized.built_at != reference.built_at:
            try:
                sized = self._sized = reference.for_frame_size(width, height)
            except ReferenceError as e:  # this frame only: the stream may come back to the reference's size
                if (width, height) not in self._refused:
                    self._refused.add((width, height))
                    log.error("camera %s: %s; frames of that size are coloured without it", self.camera, e)
                return None
        score = fit(reference, lightness)
        fits = score >= (FIT_THRESHOLD if self.fits else FIT_AGAIN)
        if fits != self.fits:
            if fits:
                log.info("camera %s: the night matches its day reference again (fit %.2f)", self.camera, score)
            else:
                log.warning("camera %s: the night does not show its day reference's view (fit %.2f < %.2f: moved, "
                            "another preset or zoom?); generic colour until it matches%s", self.camera, score,
                            FIT_THRESHOLD, "" if self.fixed else " or a reference is rebuilt from later day frames")
            self.fits = fits
        if not fits:
            self.misfits += 1
            self._misfit_since = self._misfit_since or time.time()
            return None
        self._misfit_since = None
        return reference.channels(*lightness.shape)

    # -- rebuilding ---------------------------------------------------------------------------------------
    def due(self, now: float | None = None) -> list[Path] | None:
        """The day frames to build a new reference from, if one is due now, else None."""
        if self.fixed or self.folder is None or (self._building is not None and not self._building.done()):
            return None
        now = time.time() if now is None else now
        frames = stored_frames(self.folder)
        if self._misfit_since is not None:  # only what the camera has seen since it stopped matching
            frames = [p for p in frames if capture_time(p) > self._misfit_since]
        elif self.reference is not None:
            newest = self.reference.newest_frame_at
            if now - self.reference.built_at < self.rebuild_every_s or not any(capture_time(p) > newest for p in frames):
                return None
        if len(frames) < self.min_frames:
            return None
        return frames[-self.max_frames:]  # the newest: the last day's light is the one most like tonight's

    def rebuild_if_due(self, now: float | None = None) -> Future | None:
        """Start a rebuild on the builder's thread if one is due (cheap to call: the camera turned to night)."""
        frames = self.due(now)
        if frames is None or self.builder is None:
            return None
        self._building = self.builder.submit(self._rebuild, frames)
        return self._building

    def _rebuild(self, paths: list[Path]) -> DayReference | None:
        started = time.monotonic()
        try:
            reference = build(read_frames(paths), newest_frame_at=max(capture_time(p) for p in paths))
            reference.save(self.path)
        except (ReferenceError, OSError) as e:
            log.error("camera %s: day reference not rebuilt: %s", self.camera, e)
            return None
        self.reference, self._misfit_since, self.fits, self._refused = reference, None, True, set()
        log.info("camera %s: day reference rebuilt from %d day frames in %.1f s (%s)", self.camera, reference.frames,
                 time.monotonic() - started, self.path)
        return reference

    def status(self) -> dict | None:
        """What the status page and /api/cameras show of it."""
        reference = self.reference
        if reference is None:
            return None
        return {"frames": reference.frames, "age_s": round(reference.age_s(), 1), "built_at": reference.built_at,
                "fits": self.fits, "misfit_frames": self.misfits, "fixed": self.fixed}
