"""`streamd bench --reference WxH`: what colour from a day reference costs per frame, against the generic path,
in one process.

One camera's gray frames of a still scene, each model as the daemon runs it (on a CPU its int8 copy), (the clip `make_clip(still=True)` writes, its day reference built
from the same view in colour) through the daemon's own frame steps (streamd.steps): L, the reference's fit
check and planes, the network on every frame (no reuse: the cost of a frame that needs it), and the colour
stage (temporal filter, guided upsampling, chroma planes). The generic and the reference path take turns
frame by frame, so a slow moment of a shared machine falls on both alike; each frame's ratio is taken, and
the median reported.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from streamd.colour.reference import build
from streamd.colour.temporal import Temporal
from streamd.daemon.reference_store import CameraReference
from streamd.daemon.source import SyntheticCamera
from streamd.infer.onnx_runtime import REFERENCE_MODEL, Colorizer, shipped_model
from streamd.steps import ReferenceColouring, colour_frame, lightness_of, model_for_frame, predict
from streamd.tools.bench.inputs import clip_frames, make_clip

FRAMES, FRAMES_SHORT = 60, 20
WARM_UP = 3
# each path's frame in four steps, timed apart: the network's L (as the daemon's decode thread makes it,
# before the model is chosen); the model's choice, with the reference path's fit check and the reference's
# planes; the network; the colour (temporal filter, guided upsampling, chroma planes)
STEPS = ("L for the network", "fit check and planes", "network", "colour")


def day_reference(size: tuple[int, int]) -> CameraReference:
    """The clip's view in colour (its first frame, as the synthetic camera renders it), as a reference."""
    first = next(SyntheticCamera(size, 25.0).frames("day", 0))
    rgb = first.reference[..., ::-1]  # the true colours, BGR -> RGB
    return CameraReference("bench", None, None, reference=build([rgb] * 8))


def reference_cost(size: tuple[int, int], work: Path, short: bool = False) -> dict:
    frames = FRAMES_SHORT if short else FRAMES
    clip = work / "reference-cost.mp4"
    make_clip(clip, size, (frames + WARM_UP) / 25.0, still=True)
    generic = Colorizer(int8="auto")  # each as the daemon runs it: on a CPU, its int8 copy
    by_reference = ReferenceColouring(Colorizer(shipped_model(REFERENCE_MODEL), int8="auto"), day_reference(size))
    input_size = (generic.info.input_height, generic.info.input_width)
    paths = {"generic": (None, Temporal()), "reference": (by_reference, Temporal())}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    steps: dict[str, dict[str, list[float]]] = {name: {step: [] for step in STEPS} for name in paths}
    fitted = 0
    for index, (frame_a, frame_b) in enumerate(zip(clip_frames(clip, "generic"), clip_frames(clip, "reference"))):
        for (name, (colouring, temporal)), frame in zip(paths.items(), (frame_a, frame_b)):
            start = time.perf_counter()
            lightness_of(frame, input_size)
            lightness = time.perf_counter()
            model = model_for_frame(frame, generic, colouring, input_size)
            chosen = time.perf_counter()
            predict(model, [frame], input_size)
            predicted = time.perf_counter()
            colour_frame(frame, temporal)
            done = time.perf_counter()
            if index >= WARM_UP:
                seconds[name].append(done - start)
                for step, took in zip(STEPS, (lightness - start, chosen - lightness, predicted - chosen,
                                              done - predicted)):
                    steps[name][step].append(took)
                fitted += name == "reference" and model is by_reference.model
    ratios = [r / g for g, r in zip(seconds["generic"], seconds["reference"])]
    return {"resolution": f"{size[0]}x{size[1]}", "frames": len(ratios), "reference_frames": fitted,
            "ms_per_frame": {name: statistics.median(s) * 1000.0 for name, s in seconds.items()},
            "steps_ms_per_frame": {name: {step: statistics.median(s) * 1000.0 for step, s in by_step.items()}
                                  for name, by_step in steps.items()},
            "ratio": statistics.median(ratios)}
