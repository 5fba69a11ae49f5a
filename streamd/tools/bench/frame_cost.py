"""`streamd bench --frame-cost WxH`: the CPU time of each per-frame step of one camera, through the
daemon's own frame steps (streamd.steps), with the network replaced by a prediction that costs nothing.

On a host whose network runs on a GPU, this is what each delivered frame still costs the CPU besides
decoding, and so what bounds the frames a host can deliver; the steps say where to cut. CPU time counts
the process's every thread: OpenCV runs on one thread under `streamd bench`, as in the daemon, and the clip is
decoded on the calling thread, between the steps timed.
The camera is the daemon's default (`reuse_still_s`, `carry_frames`) on a moving clip, so Reuse's check
decides per frame as it does in the daemon.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from streamd.colour.chroma import chroma_planes
from streamd.colour.daynight import DayNight
from streamd.colour.temporal import Temporal
from streamd.config import CameraConfig
from streamd.daemon.source import SourceSettings, decode_av
from streamd.frame import Frame
from streamd.infer.onnx_runtime import ModelInfo, read_info, shipped_model
from streamd.steps import colour_frame, lightness_of, predict_or_reuse, reuse_for

T = TypeVar("T")

STEPS = ("Frame from PyAV", "day/night", "L for the network", "Reuse check", "Temporal and guide",
         "chroma planes", "Frame to PyAV")


class FixedPrediction:
    """The network's stand-in: the same ab for every frame, so that only streamd's own work is timed."""

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        grid = (info.input_height // 4, info.input_width // 4)
        self.ab = np.random.default_rng(0).normal(0, 10, (2, *grid)).astype(np.float32)

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        return np.repeat(self.ab[None], len(lightness), axis=0)


class CpuClock:
    """Process CPU seconds per step, summed over the frames."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STEPS, 0.0)

    def time(self, step: str, call: Callable[[], T]) -> T:
        start = time.process_time()
        value = call()
        self.seconds[step] += time.process_time() - start
        return value


def frame_cost(clip: Path, info: ModelInfo | None = None) -> dict:
    """Every frame of `clip` through the steps a gray frame takes in the daemon, each step's CPU time per
    frame, and how many frames the network (here its stand-in) ran on."""
    network = FixedPrediction(info or read_info(shipped_model()))
    size = (network.info.input_height, network.info.input_width)
    reuse, temporal, clock = reuse_for(CameraConfig("cost", "")), Temporal(), CpuClock()
    in_planes = 0.0

    def timed_chroma_planes(*args):
        nonlocal in_planes
        start = time.process_time()
        uv = chroma_planes(*args)
        in_planes += time.process_time() - start
        return uv

    frames = runs = 0
    # decoded on the calling thread, between the steps timed: a decoder thread's CPU would count in them
    for seq, av_frame in enumerate(decode_av(SourceSettings("cost", str(clip)), threads=1)):
        frame = clock.time("Frame from PyAV", lambda: Frame.from_av("cost", seq, av_frame))
        frame.arrival = frame.pts
        clock.time("day/night", lambda: DayNight.looks_colour(frame))
        clock.time("L for the network", lambda: lightness_of(frame, size))
        runs += clock.time("Reuse check", lambda: predict_or_reuse(network, [frame], [reuse], size))
        before = in_planes
        clock.time("Temporal and guide", lambda: colour_frame(frame, temporal, timed_chroma_planes))
        clock.seconds["Temporal and guide"] -= in_planes - before
        clock.seconds["chroma planes"] += in_planes - before
        clock.time("Frame to PyAV", frame.to_av)
        frames += 1
    if not frames:
        raise ValueError(f"no frame could be decoded from {clip}")
    return {"frames": frames, "network_runs": runs, "reused": reuse.reused if reuse else 0,
            "carried": reuse.carried if reuse else 0,
            "cpu_ms_per_frame": {step: s * 1000.0 / frames for step, s in clock.seconds.items()}}
