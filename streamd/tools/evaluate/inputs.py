"""What `streamd eval` reads: images, gray/colour pairs (NAME_nir beside NAME_rgb) and videos (files or folders
of frames), and which of these kinds a folder given on the command line is (a `Subset`)."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import av
import cv2
import numpy as np

from streamd.model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES

log = logging.getLogger(__name__)


VIDEO_MAX_FRAMES = 120
VIDEO_MAX_SIDE = 640
PAIR_GRAY, PAIR_TRUTH = "_nir", "_rgb"  # a pair subset's file names: NAME_nir.jpg (the input) and NAME_rgb.jpg


def read_rgb(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8, or None (with a warning) when it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        log.warning("skipping %s: not a readable image", path)
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (any depth, suffix case ignored), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscaled (area filter) so that the longer side is at most `max_side`."""
    scale = max_side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def read_video(path: Path, max_frames: int = VIDEO_MAX_FRAMES, max_side: int = VIDEO_MAX_SIDE) -> list[np.ndarray]:
    """The first `max_frames` RGB frames of a video file or of a folder of numbered images, downscaled."""
    if path.is_dir():
        frames = (read_rgb(p) for p in image_files(path))
        return [fit_within(f, max_side) for f in itertools.islice((f for f in frames if f is not None), max_frames)]
    with av.open(str(path)) as container:
        decoded = itertools.islice(container.decode(video=0), max_frames)
        return [fit_within(f.to_ndarray(format="rgb24"), max_side) for f in decoded]


def video_sources(folder: Path) -> list[Path]:
    """Video files directly in `folder`, and its sub-folders that hold image frames."""
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and image_files(p)))


def pair_files(folder: Path) -> list[tuple[Path, Path]]:
    """(gray input, colour truth) pairs of `folder`: files NAME_nir.EXT beside NAME_rgb.EXT, sorted."""
    pairs = []
    for gray in image_files(folder):
        stem = gray.stem
        if stem.endswith(PAIR_GRAY):
            truth = [p for p in gray.parent.glob(stem[: -len(PAIR_GRAY)] + PAIR_TRUTH + ".*")
                     if p.suffix.lower() in IMAGE_SUFFIXES]
            if truth:
                pairs.append((gray, truth[0]))
    return pairs


@dataclasses.dataclass(frozen=True)
class Subset:
    """One folder of the evaluation, scored and reported on its own."""

    name: str
    kind: str  # "pairs": gray input beside colour truth; "videos": clips or frame folders; "images"
    path: Path


def find_subset(folder: Path) -> Subset:
    """A folder's kind: pairs where it holds NAME_nir / NAME_rgb images, videos where it holds video files or
    sub-folders of frames and no image of its own, images otherwise."""
    if pair_files(folder):
        kind = "pairs"
    elif video_sources(folder) and not any(p.parent == folder for p in image_files(folder)):
        kind = "videos"
    else:
        kind = "images"
    return Subset(folder.name or str(folder), kind, folder)
