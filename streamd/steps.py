"""The steps a gray frame takes from decoded to colour, shared by the daemon (streamd.daemon.pipeline), `streamd
colorize` (streamd.tools.colorize), `streamd eval` and `streamd bench`: L for the network, the network or a reused
prediction, and recombination into the frame's chroma planes."""
from __future__ import annotations

import logging
import math
import sys
from concurrent.futures import Executor
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from streamd.colour.chroma import ChromaPlanes, chroma_planes, recombine
from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.infer.onnx_runtime import Colorizer
from streamd.colour.lightness import luma_to_lightness
from streamd.daemon.reference_store import CameraReference
from streamd.colour.temporal import Reuse, Temporal

log = logging.getLogger(__name__)


# Python's GIL hand-over interval in a streamd process (the default is 5 ms): the per-frame threads (decode,
# inference, a camera's outputs) each hold it for short stretches between calls into OpenCV, ONNX Runtime
# and FFmpeg, which release it; a thread back from such a call waited up to the whole interval for it. At 1
# ms four paced 720p cameras on 2 cores showed a p99 latency of 106 against 149 ms (BENCHMARKS.md).
GIL_SWITCH_INTERVAL_S = 0.001


def set_up_threads() -> None:
    """How a streamd process shares its cores between the per-frame threads; called where a streamd process
    starts (the command line, the benchmark's child processes). OpenCV runs on one thread: every OpenCV call
    per frame is small (on the network's grid, or one frame's chroma planes), and spread over OpenCV's pool it
    cost 1.5x the CPU for the same work (BENCHMARKS.md); the parallelism comes from the cameras' and stages'
    own threads instead. And the GIL changes hands every GIL_SWITCH_INTERVAL_S."""
    cv2.setNumThreads(1)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


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


# (frames, their cameras' Reuse or None, the input size of the model they are for): one model's share of a batch
Group = tuple[list[Frame], list[Reuse | None], tuple[int, int]]


def check_reuses(groups: list[Group], pool: Executor | None = None) -> None:
    """Give each frame of a batch (its frames grouped by the model each is for) whose camera's Reuse can reuse
    the last prediction that prediction; the others are left for the network.

    Cameras whose carry is due renew their predictions a few per batch, whatever model each runs: at most the
    batch's share of network runs (one per camera per carry cycle, rounded up), counting the frames that must
    run anyway; the other due cameras carry on (Reuse's `overdue`), those furthest into their carry renewing
    first. Cameras started together, or in step on one scene, would otherwise all run the network on the same
    batch every carry cycle, and stall every camera behind that batch; spread out, the same runs cost no
    frame. With a `pool`, the cameras' checks (an optical flow each) run in parallel instead of one after the
    other: a batch holds one frame per camera, so each Reuse is still used by one thread at a time, in order."""
    frames = [frame for group, _, _ in groups for frame in group]
    reuses = [reuse for _, group, _ in groups for reuse in group]
    for group, group_reuses, input_size in groups:
        for frame, reuse in zip(group, group_reuses):
            if reuse is not None:
                lightness_of(frame, input_size)  # what Reuse compares; usually done on the decode thread
    checks = [(frame, reuse) for frame, reuse in zip(frames, reuses) if reuse is not None]
    in_parallel = pool is not None and len({id(reuse) for _, reuse in checks}) == len(checks)

    def check(items: list[tuple[Frame, Reuse, bool]]) -> None:
        if in_parallel and len(items) > 1:
            list(pool.map(lambda item: item[1].try_reuse(item[0], item[2]), items))
        else:
            for frame, reuse, overdue in items:
                reuse.try_reuse(frame, overdue)

    due = sorted((c for c in checks if c[1].due), key=lambda c: -c[1].carried_in_row / c[1].cycle_frames)
    check([(frame, reuse, False) for frame, reuse in checks if not reuse.due])
    share = sum(Fraction(1, reuse.cycle_frames + 1) if reuse else 1 for reuse in reuses)
    due_ids = {id(frame) for frame, _ in due}
    free = max(0, math.ceil(share) - sum(f.prediction is None for f in frames if id(f) not in due_ids))
    check([(frame, reuse, i >= free) for i, (frame, reuse) in enumerate(due)])


def predict_fresh(colorizer: Colorizer, frames: list[Frame], reuses: list[Reuse | None],
                  input_size: tuple[int, int]) -> int:
    """`predict` for the frames that got no reused prediction, each remembered by its camera's Reuse; returns
    how many ran the network."""
    fresh = [(frame, reuse) for frame, reuse in zip(frames, reuses) if frame.prediction is None]
    if fresh:
        predict(colorizer, [f for f, _ in fresh], input_size)
    for frame, reuse in fresh:
        if reuse is not None:
            reuse.remember(frame)
    return len(fresh)


def predict_or_reuse(colorizer: Colorizer, frames: list[Frame], reuses: list[Reuse | None],
                     input_size: tuple[int, int], pool: Executor | None = None) -> int:
    """One model's frames: `check_reuses`, then `predict_fresh`. Returns how many frames ran the network."""
    check_reuses([(frames, reuses, input_size)], pool)
    return predict_fresh(colorizer, frames, reuses, input_size)


def warm_up(colorizer: Colorizer, input_size: tuple[int, int]) -> None:
    """Take a small gray frame through the steps once: the first call of several costs far more than the next
    (ONNX Runtime's first run, OpenCV's Lab tables built on first use: 40 ms), and where cameras start
    together those first calls land on all their first frames at once. A model that cannot run now (an
    inference server away) is left for the cameras to find."""
    plane = np.full((64, 64), 128, np.uint8)
    frame = Frame("warm-up", 0, plane, plane[::2, ::2].copy(), plane[::2, ::2].copy())
    try:
        predict(colorizer, [frame], input_size)
        colour_frame(frame, Temporal())
    except Exception:  # a cost saved, not a step any frame needs: the cameras' frames meet the fault and report it
        log.debug("warm-up: model %s did not run", colorizer.info.model_id, exc_info=True)


def colour_frame(frame: Frame, temporal: Temporal | None = None, make_chroma: ChromaPlanes = chroma_planes) -> Frame:
    """Turn a frame's prediction into its chroma planes (luma untouched; the full-resolution work in
    `make_chroma`), stabilised by `temporal`; a frame without one (a day frame, or a night frame passed
    through gray) is left as it is."""
    if frame.prediction is not None:
        l_in, ab = frame.prediction
        frame.prediction = None
        recombine(frame, ab, l_in, temporal, make_chroma)
    return frame
