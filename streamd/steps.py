"""The steps a gray frame takes from decoded to colour, shared by the daemon (streamd.daemon.pipeline), `streamd
colorize` (streamd.tools.colorize), `streamd eval` and `streamd bench`: L for the network, the network or a reused
prediction, and recombination into the frame's chroma planes."""
from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass

import cv2
import numpy as np

from streamd.colour.chroma import ChromaPlanes, chroma_planes, recombine
from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.infer.onnx_runtime import Colorizer
from streamd.colour.lightness import luma_to_lightness
from streamd.daemon.reference_store import CameraReference
from streamd.colour.temporal import Reuse, Temporal


def one_opencv_thread() -> None:
    """OpenCV on one thread in this process. Every OpenCV call per frame is small (on the network's grid, or
    one frame's chroma planes): spread over OpenCV's pool it cost 1.5x the CPU for the same work
    (BENCHMARKS.md); the parallelism comes from the cameras' and stages' own threads instead. Called where a
    streamd process starts (the command line, the benchmark's child processes)."""
    cv2.setNumThreads(1)


def lightness_of(frame: Frame, input_size: tuple[int, int]) -> np.ndarray:
    """The frame's L at the network's input size, computed once per frame."""
    if frame.lightness is None or frame.lightness.shape != input_size:
        frame.lightness = luma_to_lightness(frame, input_size)
    return frame.lightness


def predict(colorizer: Colorizer, frames: list[Frame], input_size: tuple[int, int]) -> None:
    """Run the network on a batch of gray frames; each frame keeps (its L input, predicted ab)."""
    lightness = np.stack([lightness_of(f, input_size) for f in frames])[:, None]
    # a reference model: each frame's camera's day reference beside its L (a colorizer that does not say it
    # takes one, as Triton's or a stand-in, takes L alone)
    if getattr(colorizer, "takes_reference", False):
        ab_batch = colorizer(lightness, np.stack([f.reference_planes for f in frames]))
    else:
        ab_batch = colorizer(lightness)
    for frame, l_in, ab in zip(frames, lightness[:, 0], ab_batch):
        frame.prediction = (l_in, ab)
        frame.model_id = colorizer.info.model_id


@dataclass
class ReferenceColouring:
    """A camera's colour from its day reference: the reference model and the camera's reference."""

    model: Colorizer
    reference: CameraReference


def model_for_frame(frame: Frame, own: Colorizer, by_reference: ReferenceColouring | None,
                    input_size: tuple[int, int], reuse: Reuse | None = None) -> Colorizer:
    """The model for a gray frame: the reference model of `by_reference`, with the camera's day reference
    attached to the frame (frame.reference_planes), where the reference fits the frame; else the camera's
    `own` model. A Reuse holding the other model's prediction forgets it: a frame is never given the colour
    of a model it was not meant to get."""
    model = own
    frame.reference_planes = None
    if by_reference is not None:
        frame.reference_planes = by_reference.reference.planes_for(frame.width, frame.height,
                                                                   lightness_of(frame, input_size))
        if frame.reference_planes is not None:
            model = by_reference.model
    if reuse is not None and reuse.last_model_id not in (None, model.info.model_id):
        reuse.forget()
    return model


def reuse_for(camera: CameraConfig) -> Reuse | None:
    """The camera's policy for skipping the network; None when it runs on every gray frame."""
    if camera.reuse_still_s or camera.carry_frames:
        return Reuse(camera.reuse_still_s, camera.carry_frames)
    return None


def predict_or_reuse(colorizer: Colorizer, frames: list[Frame], reuses: list[Reuse | None],
                     input_size: tuple[int, int], pool: Executor | None = None) -> int:
    """`predict` for the frames whose camera's Reuse (reuses[i]; None: always predict) cannot reuse its
    last prediction; the others get that one. Returns how many frames ran the network. With a `pool`,
    the cameras' Reuse checks (an optical flow each) run in parallel instead of one after the other: a
    batch holds one frame per camera, so each Reuse is still used by one thread at a time, in order."""
    checks = [(frame, reuse) for frame, reuse in zip(frames, reuses) if reuse is not None]
    for frame, _ in checks:
        lightness_of(frame, input_size)  # what Reuse compares; usually done on the decode thread
    one_per_camera = len({id(reuse) for _, reuse in checks}) == len(checks)
    if pool is not None and len(checks) > 1 and one_per_camera:
        list(pool.map(lambda check: check[1].try_reuse(check[0]), checks))
    else:
        for frame, reuse in checks:
            reuse.try_reuse(frame)
    fresh = [(frame, reuse) for frame, reuse in zip(frames, reuses) if frame.prediction is None]
    if fresh:
        predict(colorizer, [f for f, _ in fresh], input_size)
    for frame, reuse in fresh:
        if reuse is not None:
            reuse.remember(frame)
    return len(fresh)


def colour_frame(frame: Frame, temporal: Temporal | None = None, make_chroma: ChromaPlanes = chroma_planes) -> Frame:
    """Turn a frame's prediction into its chroma planes (luma untouched; the full-resolution work in
    `make_chroma`), stabilised by `temporal`; a frame without one (a day frame, or a night frame passed
    through gray) is left as it is."""
    if frame.prediction is not None:
        l_in, ab = frame.prediction
        frame.prediction = None
        recombine(frame, ab, l_in, temporal, make_chroma)
    return frame
