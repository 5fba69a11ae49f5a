"""`streamd colorize`: image and video files in, colorized files out, on the live pipeline's code path."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
from tqdm import tqdm

from streamd.batch import Reuse
from streamd.colour import Temporal
from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.infer import Colorizer
from streamd.model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from streamd.pipeline import finish, predict, predict_changed, reuse_for
from streamd.sink import H264Writer

log = logging.getLogger(__name__)


def input_size_for(width: int, height: int, area: int) -> tuple[int, int]:
    """A network input (height, width) of about `area` pixels, sides multiples of 16, aspect kept."""
    scale = (area / (width * height)) ** 0.5
    return (max(16, round(height * scale / 16) * 16), max(16, round(width * scale / 16) * 16))


def gray_frame(bgr: np.ndarray, name: str = "image") -> tuple[Frame, tuple[int, int]]:
    """An image as a gray full-range frame (padded to even sides); returns the frame and the original size."""
    h, w = bgr.shape[:2]
    padded = cv2.copyMakeBorder(bgr, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    frame = Frame.from_bgr(name, 0, padded, matrix="bt601", full_range=True)
    frame.u[:] = 128
    frame.v[:] = 128
    return frame, (h, w)


def colorize_images(colorizer: Colorizer, images: list[np.ndarray]) -> list[np.ndarray]:
    """BGR images -> colorized BGR images of the same sizes (the colours of the input are ignored)."""
    area = colorizer.info.input_height * colorizer.info.input_width
    out = []
    for bgr in images:
        frame, (h, w) = gray_frame(bgr)
        predict(colorizer, [frame], input_size_for(frame.width, frame.height, area))
        out.append(finish(frame).to_bgr()[:h, :w])
    return out


def colorize_sequence(colorizer: Colorizer, frames: list[np.ndarray], temporal: bool = True,
                      reuse: Reuse | None = None, fps: float = 25.0) -> list[np.ndarray]:
    """Consecutive BGR frames of one video -> colorized BGR frames, with or without temporal stabilisation,
    running the network only where `reuse` cannot stand in for it (as a camera of the daemon does)."""
    area = colorizer.info.input_height * colorizer.info.input_width
    state = Temporal() if temporal else None
    out = []
    for i, bgr in enumerate(frames):
        frame, (h, w) = gray_frame(bgr)
        frame.arrival = i / fps
        predict_changed(colorizer, [frame], [reuse], input_size_for(frame.width, frame.height, area))
        out.append(finish(frame, state).to_bgr()[:h, :w])
    return out


def _decode(path: Path) -> Iterator[Frame]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for i, av_frame in enumerate(container.decode(stream)):
            yield Frame.from_av(path.stem, i, av_frame)


def colorize_video(colorizer: Colorizer, src: Path, dst: Path, temporal: bool = True,
                   reuse: Reuse | None = None) -> tuple[int, int]:
    """A video file -> a colorized H.264 MP4, frame by frame as a camera of the daemon: the network runs only
    where `reuse` cannot stand in for it (None: on every frame). Returns (frames, network runs)."""
    with av.open(str(src)) as probe:
        stream = probe.streams.video[0]
        total, rate = stream.frames or None, float(stream.average_rate or 25)
    writer = H264Writer(str(dst), "mp4", fps=rate)
    size = (colorizer.info.input_height, colorizer.info.input_width)
    state = Temporal() if temporal else None
    count = runs = 0
    try:
        for frame in tqdm(_decode(src), total=total, unit="frame", desc=src.name, leave=False):
            frame.arrival = frame.pts if frame.pts is not None else count / rate  # the source's timing
            runs += predict_changed(colorizer, [frame], [reuse], size)
            writer.write(finish(frame, state))
            count += 1
    finally:
        writer.close()
    return count, runs


def colorize_paths(colorizer: Colorizer, inputs: list[Path], out_dir: Path, temporal: bool = True,
                   every_frame: bool = False) -> list[Path]:
    """Images keep their names and sizes; videos become .mp4 files of the same stem, the network skipped
    on frames where a camera of the daemon would skip it (`every_frame`: never)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [p for i in inputs for p in (sorted(i.iterdir()) if i.is_dir() else [i])]
    written = []
    for path in tqdm(files, unit="file", disable=len(files) < 2):
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{path}: not a readable image")
            dst = out_dir / path.name
            cv2.imwrite(str(dst), colorize_images(colorizer, [bgr])[0])
        elif suffix in VIDEO_SUFFIXES:
            dst = out_dir / f"{path.stem}.mp4"
            reuse = None if every_frame else reuse_for(CameraConfig(path.stem, str(path)))
            frames, runs = colorize_video(colorizer, path, dst, temporal=temporal, reuse=reuse)
            log.info("%s: %d frames, the network ran on %d", path.name, frames, runs)
        else:
            raise ValueError(f"{path}: neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                             f"nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
        written.append(dst)
    return written
