"""The inputs `streamd bench` measures on, all made here, so no file has to be shipped or downloaded: gray
H.264 clips from the synthetic camera (real photos, panned and zoomed), decoded the way a camera source
decodes, and network inputs made from a real gray frame by streamd's own preprocessing."""
from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from streamd.colour.lightness import luma_to_lightness
from streamd.daemon.sink import H264Writer
from streamd.daemon.source import SourceSettings, SyntheticCamera, decode_av
from streamd.frame import Frame

CLIP_FPS = 25.0
NETWORK_INPUT = (192, 320)  # the production input size, (height, width)


def make_clip(path: Path, size: tuple[int, int], seconds: float, still: bool = False, fps: float = CLIP_FPS) -> int:
    """Write a gray H.264 clip as an infrared camera sends it (limited-range BT.709, chroma at 128); returns
    its frame count. Moving (panning and zooming, so the encoder and the network have real work on every
    frame), or `still`: a fixed camera's unchanging scene with sensor noise (Gaussian, sigma 2 code values)."""
    count = round(seconds * fps)
    writer = H264Writer(str(path), "mp4", fps=fps)
    rng = np.random.default_rng(0)
    try:
        for frame in itertools.islice(SyntheticCamera(size, fps).frames("clip", 0), count):
            frame.arrival = frame.pts  # H264Writer stamps by arrival: the clip gets a steady frame rate
            if still:
                if frame.seq == 0:
                    scene = frame.y.copy()
                frame.y = np.clip(scene + rng.normal(0, 2, scene.shape), 0, 255).astype(np.uint8)
            writer.write(frame)
    finally:
        writer.close()
    return count


def clip_frames(path: Path, camera: str, threads: int | None = None) -> Iterator[Frame]:
    """The clip decoded into Frames as a camera source does, on `threads` (streamd.daemon.source.
    set_decode_threads; None: FFmpeg's own, as for a file), with its own timing kept for the encoder."""
    for seq, av_frame in enumerate(decode_av(SourceSettings(camera, str(path)), threads)):
        frame = Frame.from_av(camera, seq, av_frame)
        frame.arrival = frame.pts
        yield frame


@functools.cache
def _gray_frame(size: tuple[int, int]) -> Frame:
    return next(SyntheticCamera(size, CLIP_FPS).frames("net", 0))


def fresh_gray_frame(size: tuple[int, int]) -> Frame:
    """A copy without cached intermediates, so preprocessing is timed in full every time."""
    return dataclasses.replace(_gray_frame(size), luma_half=None)


def lightness_batch(input_size: tuple[int, int], batch: int) -> np.ndarray:
    """Network input (batch, 1, H, W) made from a real gray 720p frame by streamd's own preprocessing."""
    lightness = luma_to_lightness(fresh_gray_frame((1280, 720)), input_size)
    return np.repeat(lightness[None, None], batch, axis=0)
