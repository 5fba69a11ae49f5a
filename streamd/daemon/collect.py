"""A camera's own day frames, kept on disk for adaptation (`streamd adapt`, streamd.daemon.schedule).

Day frames pass through the pipeline untouched; now and then one of them is also written, small, to the
camera's store in the state directory. The store spreads over time and conditions: at most one frame per
interval, a frame too close to one of the recent stored ones is skipped (a still scene in steady light adds
nothing), and past the size cap the oldest frame goes. File names are UTC timestamps, so name order is time
order, which `streamd adapt` relies on to hold back the most recent frames. Frames never leave the machine.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from streamd.daemon.files import make_folder, write_file
from streamd.frame import Frame

log = logging.getLogger(__name__)

THUMB_SIZE = (32, 18)  # (width, height) of the fingerprint a new frame is compared by
RECENT = 64  # how many of the latest stored fingerprints a new frame must differ from
MAX_SIDE = 320  # stored frames are at most this large: the network's training crops are smaller still
STAMP = "%Y%m%dT%H%M%S.%fZ"  # a stored frame's name: its UTC capture time, so that name order is time order


def default_state_dir() -> Path:
    """systemd's StateDirectory= when run as the unit, the XDG state home otherwise."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "streamd"


def stored_frames(folder: Path) -> list[Path]:
    """The frames of a camera's store, oldest first."""
    return sorted(folder.glob("*.jpg"))


def capture_time(path: Path) -> float:
    """When a stored frame was taken: from its name, else (a frame put there by hand) its file's time."""
    try:
        return datetime.strptime(path.stem, STAMP).replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return path.stat().st_mtime


def fingerprint(bgr: np.ndarray) -> np.ndarray:
    """A tiny picture of the frame: enough to tell a new view or new light from the same one."""
    return cv2.resize(bgr, THUMB_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)


def shrink(frame: Frame, max_side: int = MAX_SIDE) -> Frame:
    """The frame scaled down (even sizes) before any conversion, still YUV 4:2:0 in its matrix and range."""
    scale = min(1.0, max_side / max(frame.width, frame.height))
    w, h = max(2, int(frame.width * scale) // 2 * 2), max(2, int(frame.height * scale) // 2 * 2)
    y = cv2.resize(frame.y, (w, h), interpolation=cv2.INTER_AREA)
    u, v = (cv2.resize(p, (w // 2, h // 2), interpolation=cv2.INTER_AREA) for p in (frame.u, frame.v))
    return Frame(frame.camera, frame.seq, y, u, v, full_range=frame.full_range, matrix=frame.matrix)


class FrameStore:
    """One camera's store: a folder of JPEGs named by capture time. Used from one thread (the camera's
    output thread); `frames()` may be read from anywhere, since files appear and disappear atomically."""

    def __init__(self, folder: Path, every_s: float, min_change: float, max_frames: int) -> None:
        self.folder, self.every_s, self.min_change, self.max_frames = folder, every_s, min_change, max_frames
        make_folder(folder)
        for leftover in folder.glob(".*Z.part"):  # a frame being written when the process was killed
            leftover.unlink(missing_ok=True)
        self._files = deque(self.frames())
        # Fingerprints of what is already stored, so a restart does not store the same view again.
        self._recent: deque[np.ndarray] = deque(maxlen=RECENT)
        for path in list(self._files)[-RECENT:]:
            image = cv2.imread(str(path))
            if image is not None:
                self._recent.append(fingerprint(image))
        self._last_offer = -float("inf")
        self.stored = self.skipped = 0

    def __len__(self) -> int:
        """How many frames the store holds (without listing the folder)."""
        return len(self._files)

    def frames(self) -> list[Path]:
        """The stored frames, oldest first."""
        return stored_frames(self.folder)

    def offer(self, frame: Frame, now: float | None = None) -> bool:
        """Consider a day frame; returns whether it was stored. Cheap when it is not yet time to look."""
        now = time.monotonic() if now is None else now
        if now - self._last_offer < self.every_s:
            return False
        self._last_offer = now
        bgr = shrink(frame).to_bgr()
        print_ = fingerprint(bgr)
        if any(np.abs(print_ - seen).mean() < self.min_change for seen in self._recent):
            self.skipped += 1
            return False
        stamp = datetime.fromtimestamp(frame.capture_time, timezone.utc).strftime(STAMP)
        path = self.folder / f"{stamp}.jpg"
        tmp = self.folder / f".{stamp}.part"
        try:
            write_file(tmp, cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes())
            os.replace(tmp, path)  # a reader never sees half a JPEG
        except OSError as e:  # a full disk must not stop the camera: it only stops collecting
            log.error("camera %s: cannot store a frame in %s (%s)", frame.camera, self.folder, e.strerror)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # nothing was written, or nothing can be removed either
            return False
        self._files.append(path)
        self._recent.append(print_)
        self.stored += 1
        while len(self._files) > self.max_frames:
            self._files.popleft().unlink(missing_ok=True)
        return True
