"""CPU time of each per-frame step of the pipeline, one camera, one thread: what a frame costs the CPU
besides decoding and the network (which is replaced by a fixed prediction here).

    python3 scripts/frame_cost.py [WIDTH HEIGHT] [--frames N]

Steps, in the pipeline's order: the decoded frame into a Frame, the day/night test, Y' at chroma size,
L at the network's input, Reuse's check (optical flow on the grid), Temporal, the guide coefficients,
the full-resolution chroma planes (what [colour] device = "cuda" moves to the GPU) and the Frame back
into a PyAV frame for the encoder. CPU time includes OpenCV's worker threads; the chroma table is built
before timing.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from streamd import bench
from streamd.colour import DayNight, Temporal, chroma_planes, chroma_table, guide_coefficients, luma_at_chroma_size
from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.pipeline import lightness_of, reuse_for
from streamd.source import SourceSettings, decode_av

INPUT = (192, 320)
GRID = (48, 80)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("size", type=int, nargs="*", default=[1920, 1080])
    parser.add_argument("--frames", type=int, default=50)
    args = parser.parse_args()
    clip = Path(tempfile.mkdtemp()) / "clip.mp4"
    bench.make_clip(clip, tuple(args.size), args.frames / bench.CLIP_FPS)
    decoded = list(decode_av(SourceSettings("cost", str(clip))))
    cpu: dict[str, float] = {}

    def timed(step: str, call):
        start = time.process_time()
        value = call()
        cpu[step] = cpu.get(step, 0.0) + time.process_time() - start
        return value

    reuse, temporal = reuse_for(CameraConfig("cost", "")), Temporal()
    prediction = np.random.default_rng(0).normal(0, 10, (2, *GRID)).astype(np.float32)
    for seq, av_frame in enumerate(decoded):
        frame = timed("Frame.from_av", lambda: Frame.from_av("cost", seq, av_frame))
        chroma_table(frame.matrix, frame.full_range)  # once per process, not per frame
        timed("day/night", lambda: DayNight.looks_colour(frame))
        timed("Y' at chroma size", lambda: luma_at_chroma_size(frame))
        lightness = timed("L for the network", lambda: lightness_of(frame, INPUT))
        if not timed("Reuse check", lambda: reuse.reuse(frame)):
            frame.prediction = (lightness, prediction)
            reuse.remember(frame)
        l_in, ab = frame.prediction
        guide = cv2.resize(l_in, GRID[::-1], interpolation=cv2.INTER_AREA)
        ab = timed("Temporal", lambda: temporal(guide, ab, frame.pts))
        coeffs = timed("guide coefficients", lambda: guide_coefficients(ab, guide))
        timed("chroma planes", lambda: chroma_planes(frame.luma_half, coeffs, frame.matrix, frame.full_range))
        timed("Frame.to_av", frame.to_av)
    n = len(decoded)
    for step, seconds in cpu.items():
        print(f"{step:20s} {1000 * seconds / n:6.2f} ms")
    print(f"{'total':20s} {1000 * sum(cpu.values()) / n:6.2f} ms CPU per {args.size[0]}x{args.size[1]} frame, "
          f"{n} frames")


if __name__ == "__main__":
    main()
