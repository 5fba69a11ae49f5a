"""Track what moves in streamd's colour output, and say what colour it is.

    python examples/track.py --endpoint tcp://127.0.0.1:5555 --frames 100 gate

Subscribes to streamd's ZeroMQ output (streamd.client), finds moving blobs with OpenCV's background
subtractor, follows each from frame to frame by its nearest centroid, and prints one JSON line per frame:
the frame's seq, whether streamd colorized it, its mean saturation, and each track's id, box and mean
colour. The colour is what colorizing night video gives a tracker: "the red car", at 3 am too.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass

import cv2
import numpy as np

from streamd.client import Subscriber


@dataclass
class Track:
    id: int
    centre: tuple[float, float]
    seen: int = 1  # frames it was found in
    missed: int = 0


class CentroidTracker:
    """Blobs to tracks: each blob continues the nearest track within `reach` pixels, else starts one;
    a track not found for `patience` frames ends."""

    def __init__(self, reach: float = 60.0, patience: int = 5) -> None:
        self.reach, self.patience = reach, patience
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, centres: list[tuple[float, float]]) -> list[Track]:
        """The track of each centre, in order."""
        free = list(self.tracks)
        matched: list[Track] = []
        for centre in centres:
            nearest = min(free, key=lambda t: np.hypot(t.centre[0] - centre[0], t.centre[1] - centre[1]), default=None)
            if nearest is not None and np.hypot(nearest.centre[0] - centre[0], nearest.centre[1] - centre[1]) <= self.reach:
                free.remove(nearest)
                nearest.centre, nearest.seen, nearest.missed = centre, nearest.seen + 1, 0
                matched.append(nearest)
            else:
                track = Track(self._next_id, centre)
                self._next_id += 1
                self.tracks.append(track)
                matched.append(track)
        for track in free:
            track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.patience]
        return matched


def colour_of(bgr: np.ndarray, mask: np.ndarray | None = None) -> dict:
    """Mean hue (degrees) and saturation (0..1) of the pixels, averaged as vectors so reds near 0 and
    360 degrees do not cancel."""
    hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV_FULL).reshape(-1, 3).astype(np.float32)
    if mask is not None:
        hsv = hsv[mask.reshape(-1) > 0]
    angle = hsv[:, 0] / 256.0 * 2 * np.pi
    saturation = hsv[:, 1] / 255.0
    x, y = float(np.mean(saturation * np.cos(angle))), float(np.mean(saturation * np.sin(angle)))
    # rounded before the wrap: 359.97 degrees is 0.0, not 360.0
    return {"hue": round(float(np.degrees(np.arctan2(y, x))), 1) % 360, "saturation": round(float(saturation.mean()), 3)}


class Follower:
    """One camera: background subtraction, blobs, tracks."""

    def __init__(self, min_area: float) -> None:
        self.background = cv2.createBackgroundSubtractorMOG2(history=100, detectShadows=False)
        self.tracker = CentroidTracker()
        self.min_area = min_area

    def __call__(self, header: dict, bgr: np.ndarray) -> dict:
        moving = self.background.apply(bgr)
        moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        contours, _ = cv2.findContours(moving, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        blobs = [cv2.boundingRect(c) for c in contours if cv2.contourArea(c) >= self.min_area]
        tracks = self.tracker.update([(x + w / 2, y + h / 2) for x, y, w, h in blobs])
        found = []
        for (x, y, w, h), track in zip(blobs, tracks):
            found.append({"id": track.id, "box": [x, y, w, h], "frames": track.seen,
                          **colour_of(bgr[y:y + h, x:x + w], moving[y:y + h, x:x + w])})
        return {"camera": header["camera"], "seq": header["seq"], "colorized": header["colorized"],
                "model": header.get("model"), **colour_of(bgr[::4, ::4]), "tracks": found}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cameras", nargs="*", help="camera names (default: all)")
    p.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="streamd's [zmq] endpoint")
    p.add_argument("--frames", type=int, default=0, help="stop after this many frames (0: never)")
    p.add_argument("--timeout", type=float, default=10.0, help="give up after this many seconds without a frame")
    p.add_argument("--min-area", type=float, default=100.0, help="smallest blob, in pixels")
    args = p.parse_args(argv)
    followers: dict[str, Follower] = {}
    count = 0
    with Subscriber(args.endpoint, *args.cameras) as subscriber:
        while not args.frames or count < args.frames:
            message = subscriber.recv(timeout=args.timeout)
            if message is None:
                print(f"no frame from {args.endpoint} for {args.timeout:g} s", file=sys.stderr)
                return 1
            header, image = message
            if header["format"] == "yuv420p":
                image = cv2.cvtColor(image, cv2.COLOR_YUV2BGR_I420)
            follower = followers.setdefault(header["camera"], Follower(args.min_area))
            print(json.dumps(follower(header, image)), flush=True)
            count += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
