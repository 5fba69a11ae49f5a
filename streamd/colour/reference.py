"""A camera's day reference: what its still scene looks like in colour, per pixel, from its own day frames.

A fixed camera films the same scene all day. The per-pixel median of its day frames (in CIE Lab) is the
scene without what passed through it; how far each pixel's colour strays from that median over the frames
says how sure the reference is there (a wall: very; swaying trees, a busy doorway: less). At night the
reference's ab, L and confidence go beside the night's L into the reference network
(streamd.model.network.ReferenceColorNet), which keeps the reference's colour where the scene is the
reference's and predicts its own where it is not.

`fit` tells cheaply, per frame, whether a night frame shows the reference's view at all (a camera that
moved, a PTZ preset, another camera's reference): it compares edges, which near-infrared night frames share
with the day even where their gray levels do not.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from streamd.colour.lab import rgb_to_lab

WORKING_SIDE = 320  # the reference's longer side, in pixels: the network's input is no larger
MAX_FRAMES = 240  # frames a median is taken over (evenly spaced over the day frames given): enough to be robust
MIN_FRAMES = 8  # fewer frames than this make no median worth trusting
SPREAD_SCALE = 6.0  # ab units: a pixel whose colours stray this far (median absolute deviation) is half trusted
FIT_SIDE = 96  # the longer side of the edge maps `fit` compares
FIT_THRESHOLD = 0.45  # edge correlation below which a frame is taken not to show the reference's view...
FIT_AGAIN = 0.55  # ...and at or above which it is taken to show it again: a score that hovers flips nothing
FORMAT = 1  # the file layout; a file of another version is refused, not misread


class ReferenceError(ValueError):
    """A reference that cannot be built, read or used: the message names the file or input and the fault."""


@dataclass
class DayReference:
    """The still scene at the working size: L (h, w) 0..100, ab (2, h, w), confidence (h, w) 0..1."""

    lightness: np.ndarray
    ab: np.ndarray
    confidence: np.ndarray
    frames: int  # how many day frames the median was taken over
    built_at: float  # UNIX time
    source_size: tuple[int, int]  # (width, height) of the frames it was built from
    newest_frame_at: float = 0.0  # UNIX time of the newest day frame in it (0: unknown)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)  # planes by size, edges: made once

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) at the working size."""
        return self.lightness.shape[1], self.lightness.shape[0]

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.built_at)

    def channels(self, height: int, width: int) -> np.ndarray:
        """L, a, b and confidence (4, height, width) float32 at the network's input size."""
        key = ("channels", height, width)
        if key not in self._cache:
            planes = [self.lightness, self.ab[0], self.ab[1], self.confidence]
            self._cache[key] = np.stack([cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA)
                                         for p in planes]).astype(np.float32)
        return self._cache[key]

    @property
    def edges(self) -> np.ndarray:
        """The reference's edge map for `fit`, made once."""
        if "edges" not in self._cache:
            self._cache["edges"] = edge_map(self.lightness)
        return self._cache["edges"]

    def for_frame_size(self, width: int, height: int) -> DayReference:
        """This reference for frames of (width, height): the same view at another resolution is rescaled; a
        view of another shape cannot be the same scene and is refused, naming both sizes."""
        w0, h0 = self.source_size
        if (w0, h0) == (width, height):
            return self
        if abs(w0 / h0 - width / height) > 0.02 * (w0 / h0):
            raise ReferenceError(f"the reference was built from {w0}x{h0} frames; these are {width}x{height}, "
                                 "another shape of view: rebuild it from this camera's day frames")
        return DayReference(self.lightness, self.ab, self.confidence, self.frames, self.built_at,
                            (width, height), self.newest_frame_at, self._cache)

    def picture(self) -> np.ndarray:
        """The reference as an RGB uint8 image (what the status page and contact sheets show)."""
        from streamd.colour.lab import lab_to_rgb

        return lab_to_rgb(np.dstack([self.lightness, self.ab[0], self.ab[1]]))

    # -- files ------------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Written whole or not at all (a temporary name, fsync, rename): a reader never sees half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "frames": self.frames, "built_at": self.built_at,
                "source_size": list(self.source_size), "newest_frame_at": self.newest_frame_at}
        tmp = path.with_name(f".{path.name}.part")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, lightness=self.lightness.astype(np.float16), ab=self.ab.astype(np.float16),
                                confidence=self.confidence.astype(np.float16), meta=np.array(json.dumps(meta)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DayReference:
        """A reference file; ReferenceError, naming the file, for anything else (cut short by a power loss,
        damaged, another version): a damaged file costs a camera its reference, never its stream."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                    version = meta.get("format") if isinstance(meta, dict) else None
                    raise ReferenceError(f"reference {path}: format {version!r}, this streamd reads format {FORMAT}")
                lightness, ab, confidence = (data[k].astype(np.float32) for k in ("lightness", "ab", "confidence"))
                frames, built_at = int(meta["frames"]), float(meta["built_at"])
                width, height = (int(v) for v in meta["source_size"])
                newest = float(meta.get("newest_frame_at", 0.0))
        except ReferenceError:
            raise
        except Exception as e:  # zip, zlib, EOF, key and type errors alike: numpy says little of what it met
            raise ReferenceError(f"reference {path}: not a streamd day reference ({type(e).__name__}: {e})") from None
        if lightness.ndim != 2 or min(lightness.shape) < 8 or ab.shape != (2, *lightness.shape) \
                or confidence.shape != lightness.shape or min(width, height) < 1:
            raise ReferenceError(f"reference {path}: planes of shapes {lightness.shape}, {ab.shape}, "
                                 f"{confidence.shape} for frames of {width}x{height}: not a reference")
        return cls(lightness, ab, confidence, frames, built_at, (width, height), newest)


def working_size(width: int, height: int, side: int = WORKING_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(16, round(width * scale)), max(16, round(height * scale))


def evenly_spaced(items: list, limit: int) -> list:
    """At most `limit` items (all when limit <= 0), evenly spaced over the list, first and last included."""
    if limit <= 0 or limit >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


# A fixed camera's frame files: SCENE_in000123.jpg, SCENE_000123.png, SCENE_f00008.jpg -> SCENE
SCENE_NAME = re.compile(r"[_-]?(?:in|f)?\d+$")


def scene_of(path: Path) -> str:
    """The scene a numbered frame file belongs to (its name without the frame number)."""
    return SCENE_NAME.sub("", path.stem)


def build(frames_rgb: Iterable[np.ndarray], newest_frame_at: float = 0.0, now: float | None = None) -> DayReference:
    """The per-pixel median Lab of colour frames (RGB uint8, one view, any size: the first frame's sets it)
    and each pixel's confidence from the spread of its ab about that median. Frames of another shape of view
    are refused; raises ReferenceError for fewer than MIN_FRAMES."""
    labs, source_size, size = [], None, None
    for rgb in frames_rgb:
        h, w = rgb.shape[:2]
        if source_size is None:
            source_size, size = (w, h), working_size(w, h)
        elif abs(w / h - source_size[0] / source_size[1]) > 0.02 * source_size[0] / source_size[1]:
            raise ReferenceError(f"day frames of two views: {source_size[0]}x{source_size[1]} and {w}x{h}")
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        # 8-bit Lab (L * 255/100, a + 128, b + 128): a quarter of float32's memory for hundreds of frames
        labs.append(cv2.cvtColor(small, cv2.COLOR_RGB2Lab))
    if len(labs) < MIN_FRAMES:
        raise ReferenceError(f"{len(labs)} day frame(s): a reference needs at least {MIN_FRAMES}")
    stack = np.stack(labs)  # (n, h, w, 3) uint8
    median = np.median(stack, axis=0).astype(np.float32)
    lightness = median[..., 0] * (100.0 / 255.0)
    ab = (median[..., 1:] - 128.0).transpose(2, 0, 1)
    deviation = np.abs(stack[..., 1:].astype(np.float32) - median[None, ..., 1:]).sum(-1)  # (n, h, w)
    spread = np.median(deviation, axis=0)
    confidence = 1.0 / (1.0 + (spread / SPREAD_SCALE) ** 2)
    return DayReference(lightness.astype(np.float32), np.ascontiguousarray(ab, np.float32),
                        confidence.astype(np.float32), len(labs), time.time() if now is None else now,
                        source_size, newest_frame_at)


def edge_map(lightness: np.ndarray) -> np.ndarray:
    """Gradient magnitude of L at FIT_SIDE, each image scaled by its own contrast: a night frame's gray levels
    differ from the day's (infrared, gain), its edges much less."""
    h, w = lightness.shape
    scale = FIT_SIDE / max(h, w)
    small = cv2.resize(lightness.astype(np.float32), (max(8, round(w * scale)), max(8, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (3, 3), 0)  # a pixel or two of shift still matches
    gx, gy = cv2.Sobel(small, cv2.CV_32F, 1, 0), cv2.Sobel(small, cv2.CV_32F, 0, 1)
    return cv2.GaussianBlur(np.sqrt(gx * gx + gy * gy), (5, 5), 0)


def fit(reference: DayReference, lightness: np.ndarray) -> float:
    """How well a frame's L (any size of the same view) matches the reference's view: the correlation of
    their edge maps, 0.6-1 for the same view and under 0.35 for another on the validation scenes."""
    ref = reference.edges
    frame = cv2.resize(edge_map(lightness), (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_AREA)
    a, b = ref - ref.mean(), frame - frame.mean()
    denominator = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def day_frames(path: Path) -> Iterable[np.ndarray]:
    """The colour frames of DAY, RGB, in time (name) order: a folder's images, or a video's frames evenly
    spaced (at most MAX_FRAMES of them)."""
    from streamd.model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for file in evenly_spaced(files, MAX_FRAMES):
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ReferenceError(f"{file}: not a readable image")
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        import av

        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                total = stream.frames or estimated_frames(container, stream)
                step = max(1, -(-total // MAX_FRAMES))  # at most MAX_FRAMES frames kept, however long the day
                for i, frame in enumerate(container.decode(stream)):
                    if i % step == 0:
                        yield frame.to_ndarray(format="rgb24")
        except (av.error.FFmpegError, IndexError) as e:
            raise ReferenceError(f"{path}: not a readable video ({e})") from None
    else:
        raise ReferenceError(f"{path}: give a folder of colour images, a colour video or a reference file (.npz)")


def estimated_frames(container, stream) -> int:
    """A video's frame count where its container does not say (Matroska, MPEG-TS): duration x frame rate."""
    rate = float(stream.average_rate or stream.guessed_rate or 25)
    if stream.duration and stream.time_base:
        return max(1, round(float(stream.duration * stream.time_base) * rate))
    if container.duration:  # microseconds
        return max(1, round(container.duration / 1e6 * rate))
    return MAX_FRAMES * 1000  # unknown: sample sparsely rather than keep every frame of a long day


def from_source(path: Path) -> DayReference:
    """A reference from DAY: a reference file (.npz, `streamd reference build`), or built from a folder of
    colour images or a colour video. Gray day frames are refused: they hold no colour to keep."""
    path = Path(path)
    if not path.exists():
        raise ReferenceError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() == ".npz":
        return DayReference.load(path)
    try:
        reference = build(day_frames(path))
    except ReferenceError as e:
        raise ReferenceError(f"{path}: {e}") from None
    if float(np.abs(reference.ab).mean()) < 0.5:
        raise ReferenceError(f"{path}: the day frames are gray: a reference needs the camera's colour (day) frames")
    return reference
