"""`streamd colorize`: image and video files in, colorized files out, on the live pipeline's code path."""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import av
import cv2
import numpy as np
from tqdm import tqdm

from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.infer.onnx_runtime import Colorizer
from streamd.model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from streamd.daemon.sink import H264Writer
from streamd.daemon.source import set_decode_threads
from streamd.steps import ReferenceColouring, colour_frame, model_for_frame, predict, predict_or_reuse, reuse_for
from streamd.colour.temporal import Reuse, Temporal

log = logging.getLogger(__name__)
T = TypeVar("T")


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


def colorize_images(colorizer: Colorizer, images: list[np.ndarray],
                    by_reference: ReferenceColouring | None = None) -> list[np.ndarray]:
    """BGR images -> colorized BGR images of the same sizes (the colours of the input are ignored); with
    `by_reference`, from a day reference of their view where it fits them."""
    area = colorizer.info.input_height * colorizer.info.input_width
    out = []
    for bgr in images:
        frame, (h, w) = gray_frame(bgr)
        size = input_size_for(frame.width, frame.height, area)
        predict(model_for_frame(frame, colorizer, by_reference, size), [frame], size)
        out.append(colour_frame(frame).to_bgr()[:h, :w])
    return out


def colorize_sequence(colorizer: Colorizer, frames: list[np.ndarray], temporal: bool = True,
                      reuse: Reuse | None = None, fps: float = 25.0,
                      by_reference: ReferenceColouring | None = None) -> list[np.ndarray]:
    """Consecutive BGR frames of one video -> colorized BGR frames, with or without temporal stabilisation,
    running the network only where `reuse` cannot stand in for it (as a camera of the daemon does)."""
    area = colorizer.info.input_height * colorizer.info.input_width
    state = Temporal() if temporal else None
    out = []
    for i, bgr in enumerate(frames):
        frame, (h, w) = gray_frame(bgr)
        frame.arrival = i / fps
        size = input_size_for(frame.width, frame.height, area)
        model = model_for_frame(frame, colorizer, by_reference, size, reuse)
        predict_or_reuse(model, [frame], [reuse], size)
        out.append(colour_frame(frame, state).to_bgr()[:h, :w])
    return out


def decode_file(path: Path) -> Iterator[Frame]:
    """A video file's frames, decoded on FFmpeg's own threads."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        set_decode_threads(stream, None)
        for i, av_frame in enumerate(container.decode(stream)):
            yield Frame.from_av(path.stem, i, av_frame)


def colorize_video(colorizer: Colorizer, src: Path, dst: Path, temporal: bool = True,
                   reuse: Reuse | None = None, by_reference: ReferenceColouring | None = None) -> tuple[int, int]:
    """A video file -> a colorized H.264 MP4, frame by frame as a camera of the daemon: the network runs only
    where `reuse` cannot stand in for it (None: on every frame). Returns (frames, network runs).

    Two stages overlap, in order: decoding, the network (or its stand-in) and the colour on a thread of their
    own, a few frames ahead of the encoder here. Each spends most of its time outside the GIL (FFmpeg, ONNX
    Runtime, OpenCV), so on two cores a clip takes about the time of the slower stage rather than of both;
    the colour on the first stage rather than beside the encoder evens the two out (a moving 720p clip on
    2 cores: 1.12x the frames per second, BENCHMARKS.md)."""
    with av.open(str(src)) as probe:
        stream = probe.streams.video[0]
        total, rate = stream.frames or None, float(stream.average_rate or 25)
    size = (colorizer.info.input_height, colorizer.info.input_width)
    runs = 0

    def coloured() -> Iterator[Frame]:
        nonlocal runs
        state = Temporal() if temporal else None
        for count, frame in enumerate(decode_file(src)):
            frame.arrival = frame.pts if frame.pts is not None else count / rate  # the source's timing
            model = model_for_frame(frame, colorizer, by_reference, size, reuse)
            runs += predict_or_reuse(model, [frame], [reuse], size)
            yield colour_frame(frame, state)

    writer = H264Writer(str(dst), "mp4", fps=rate)
    count = 0
    try:
        for frame in tqdm(ahead(coloured(), COLOURED_AHEAD, f"colour-{src.stem}"), total=total, unit="frame",
                          desc=src.name, leave=False, disable=None):  # None: a progress bar on a terminal only
            writer.write(frame)
            count += 1
    finally:
        writer.close()
    return count, runs


COLOURED_AHEAD = 4  # frames the network's stage may run ahead of the encoder: enough to even out its runs


def ahead(items: Generator[T, None, None], depth: int, name: str) -> Iterator[T]:
    """What `items` yields, in order, made on a thread named `name` up to `depth` items ahead of the caller.
    An error there is raised here; a caller that stops early stops the thread (and closes `items`)."""
    handoff: queue.Queue = queue.Queue(depth)
    stopped = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stopped.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(end)
        except BaseException as e:  # noqa: BLE001 - handed to the caller, who raises it
            put(_Failed(e))
        finally:
            items.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stopped.set()
        thread.join()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def plan(inputs: list[Path], output: str) -> list[tuple[Path, Path]]:
    """(input file, output file) for `streamd colorize INPUTS -o OUTPUT`, checked before any work: a ValueError
    names what is wrong. OUTPUT is a folder (created), where images keep their names and videos become .mp4
    files of the same stem; or, for one input file, a file name of the same kind (clip.mp4 -o night.mp4).
    Nothing may be written over an input, into an input's own folder, or twice to one name. A folder input
    contributes the files directly in it."""
    files = [p for i in inputs for p in (sorted(f for f in i.iterdir() if f.is_file()) if i.is_dir() else [i])]
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES | VIDEO_SUFFIXES:
            raise ValueError(f"{path}: neither an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                             f"nor a video ({', '.join(sorted(VIDEO_SUFFIXES))})")
    target = Path(output)
    one_file = (len(inputs) == 1 and inputs[0].is_file() and not output.endswith("/") and not target.is_dir()
                and target.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
    if one_file:
        video = files[0].suffix.lower() in VIDEO_SUFFIXES
        if video and target.suffix.lower() != ".mp4":
            raise ValueError(f"-o {output}: a video is written as H.264 in MP4: name the output .mp4 (or give a folder)")
        if not video and target.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"-o {output}: an image is written as an image: name it .png, .jpg, ... (or give a folder)")
        jobs = [(files[0], target)]
    else:
        folders = {i.resolve(): i for i in inputs if i.is_dir()} | {i.resolve().parent: i for i in inputs if i.is_file()}
        if target.resolve() in folders:
            raise ValueError(f"-o {output} is where the input {folders[target.resolve()]} lies: the colorized files "
                             "would overwrite or mix with the originals; give another folder")
        jobs = [(path, target / (path.name if path.suffix.lower() in IMAGE_SUFFIXES else f"{path.stem}.mp4"))
                for path in files]
    sources = {path.resolve() for path in files}
    seen: dict[Path, Path] = {}
    for src, dst in jobs:
        if dst.resolve() in sources:
            raise ValueError(f"-o {output}: {src} would be written over an input ({dst})")
        if dst.resolve() in seen:
            raise ValueError(f"the inputs {seen[dst.resolve()]} and {src} would both be written to {dst}: "
                             "colorize them into separate folders")
        seen[dst.resolve()] = src
    return jobs


def colorize_paths(colorizer: Colorizer, jobs: list[tuple[Path, Path]], temporal: bool = True,
                   every_frame: bool = False, by_reference: ReferenceColouring | None = None) -> list[Path]:
    """Each (input, output) of `plan`: images keep their sizes; videos become H.264 MP4, the network skipped
    on frames where a camera of the daemon would skip it (`every_frame`: never)."""
    written = []
    for path, dst in tqdm(jobs, unit="file", disable=len(jobs) < 2):
        dst.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{path}: not a readable image")
            if not cv2.imwrite(str(dst), colorize_images(colorizer, [bgr], by_reference)[0]):
                raise ValueError(f"{dst}: could not be written")
        else:
            reuse = None if every_frame else reuse_for(CameraConfig(path.stem, str(path)))
            frames, runs = colorize_video(colorizer, path, dst, temporal=temporal, reuse=reuse,
                                          by_reference=by_reference)
            log.info("%s: %d frames, the network ran on %d", path.name, frames, runs)
        written.append(dst)
    return written
