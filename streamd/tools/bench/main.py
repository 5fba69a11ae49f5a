"""`streamd bench`: how close streamd comes to the physical limit of the machine it runs on.

Everything is measured in one run, on the same machine and the same inputs, so the numbers compare:

* pass-through: decode + H.264 encode only, the most any pipeline can deliver here;
* streamd, unpaced: decode -> colorize (one batch across the cameras) -> encode, every frame, serially,
  as a throughput ratio to pass-through;
* streamd, paced: the real Pipeline fed by files played at 25 fps, as cameras send them: delivered fps,
  dropped frames, capture-to-publish latency, CPU cores and peak memory;
* the network alone: the shipped model against Zhang et al.'s ECCV16 architecture in identical ONNX
  Runtime sessions.

`--device cuda` measures through PyTorch instead (streamd.infer_torch; fp16 and CUDA graphs on the GPU): the
network alone, ours against ECCV16, one batch for each of 8, 32 and 64 1080p cameras, then the real Pipeline
with that many cameras at 50 fps each (so that 32 cameras offer more than 1,000 frames/s), the full-resolution
colour work batched on the GPU ([colour] device = "cuda"), and no outputs. `--device torch-cpu` is the same
run on the CPU with 1 and 2 cameras at 360p and colour on the CPU: small enough for the test suite, which is
how the GPU path is tested without a GPU. `--processes P --cameras C` runs only that pipeline, as P processes
of C cameras each started together (streamd.bench_processes); `--frame-cost WxH` only the CPU time of each
per-frame step of one camera (streamd.bench_frame_cost); `--reference WxH` what colour from a day reference costs
per frame against the generic path (streamd.bench_reference); `--triton HOST:PORT` only the network and the
pipeline on a Triton server against ONNX Runtime in the process (streamd.bench_triton).

Every number is the median over `--repeats` runs. The inputs are gray H.264 clips made here from the
synthetic camera (real photos, panned and zoomed), so no file has to be shipped or downloaded.
"""
from __future__ import annotations

import argparse
import datetime
import dataclasses
import functools
import itertools
import json
import logging
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
import onnxruntime as ort

from streamd import config as cfgmod
from streamd.config import CameraConfig
from streamd.frame import Frame
from streamd.infer.onnx_runtime import Colorizer
from streamd.colour.lightness import luma_to_lightness
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.sink import H264Writer
from streamd.daemon.source import SourceSettings, SyntheticCamera, decode_av
from streamd.steps import colour_frame, predict_or_reuse, reuse_for
from streamd.colour.temporal import Reuse

if TYPE_CHECKING:
    from streamd.infer.pytorch import TorchColorizer

log = logging.getLogger(__name__)

CLIP_FPS = 25.0
# stage_frames: frames per unpaced streamd measurement, all cameras together (at least two network runs and
# what is carried after them, per camera).
FULL = {"sizes": [(640, 360), (1280, 720), (1920, 1080)], "cameras": [1, 2, 4, 8], "clip_s": 2.5,
        "repeats": 3, "stage_frames": 16, "network_sizes": [(224, 224), (192, 320)], "still_sizes": [(1280, 720)],
        "still_cameras": [1, 4, 8]}
# --short keeps every kind of measurement, on fewer configurations: it has to run inside the test suite.
SHORT = {"sizes": [(640, 360), (1280, 720)], "cameras": [1, 2], "clip_s": 2.0, "repeats": 2, "stage_frames": 6,
         "network_sizes": [(192, 320)], "still_sizes": [(1280, 720)], "still_cameras": [1]}
NETWORK_BATCHES = (1, 8)
NETWORK_ROUNDS = 7  # at least, in full mode: the network comparison is cheap, and the noisiest on a shared host
PER_CAMERA_MODEL_CAMERAS = (4, 8)
# The PyTorch runs: the network alone, one batch per camera count (`iterations` timed calls each), then the
# paced Pipeline with that many cameras, every camera the same clip (`clip_s` long) played once. The GPU run
# takes about a minute of measuring; torch-cpu is sized for the test suite.
TORCH_PLANS = {
    "cuda": {"device": "cuda", "camera_size": (1920, 1080), "cameras": (8, 32, 64), "camera_fps": 50.0,
             "colour_device": "cuda", "iterations": 20, "clip_s": 6.0},
    "torch-cpu": {"device": "cpu", "camera_size": (640, 360), "cameras": (1, 2), "camera_fps": CLIP_FPS,
                  "colour_device": "cpu", "iterations": 2, "clip_s": 2.0},
}
NETWORK_INPUT = (192, 320)  # the production input size, (height, width)
FRAME_COST_FRAMES, FRAME_COST_FRAMES_SHORT = 100, 25  # --frame-cost: frames of the clip timed
KEEPS_UP = 0.95  # of the camera's frame rate delivered: the pipeline keeps up, nothing limits it
SATURATED = 0.8  # of the inference thread's time, or of the usable cores: that stage is the limit
EXIT_FAILED = 1  # a section failed; the others' results are reported
EXIT_UNAVAILABLE = 2


class BenchUnavailable(Exception):
    """What the requested benchmark needs is missing here (CUDA, torch, trained weights)."""


# -- inputs ------------------------------------------------------------------------------------------
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


def clip_frames(path: Path, camera: str) -> Iterator[Frame]:
    """The clip decoded the way a camera source decodes, with its own timing kept for the encoder."""
    for seq, av_frame in enumerate(decode_av(SourceSettings(camera, str(path)))):
        frame = Frame.from_av(camera, seq, av_frame)
        frame.arrival = frame.pts
        yield frame


@functools.cache
def _gray_frame(size: tuple[int, int]) -> Frame:
    return next(SyntheticCamera(size, CLIP_FPS).frames("net", 0))


def _fresh_gray_frame(size: tuple[int, int]) -> Frame:
    """A copy without cached intermediates, so preprocessing is timed in full every time."""
    return dataclasses.replace(_gray_frame(size), luma_half=None)


def lightness_batch(input_size: tuple[int, int], batch: int) -> np.ndarray:
    """Network input (batch, 1, H, W) made from a real gray 720p frame by streamd's own preprocessing."""
    lightness = luma_to_lightness(_fresh_gray_frame((1280, 720)), input_size)
    return np.repeat(lightness[None, None], batch, axis=0)


# -- measurements --------------------------------------------------------------------------------------
class Laps:
    """Seconds per stage, each lap() charging the time since the previous one to the named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


def stage_batch(sources: list[Iterator[Frame]], writers: list[H264Writer], colorizer: Colorizer | None,
                laps: Laps, reuses: list[Reuse]) -> None:
    """One frame from every camera: decode -> [predict as one batch, the frames of a still scene reusing
    their camera's last prediction, as the pipeline does -> colour_frame] -> encode."""
    batch = [next(source) for source in sources]
    laps.lap("decode")
    if colorizer is not None:
        predict_or_reuse(colorizer, batch, reuses, (colorizer.info.input_height, colorizer.info.input_width))
        laps.lap("predict")
        for frame in batch:
            colour_frame(frame)
        laps.lap("finish")
    for writer, frame in zip(writers, batch):
        writer.write(frame)
    laps.lap("encode")


def run_stages(clip: Path, cameras: int, frames_per_camera: int, out_dir: Path,
               colorizer: Colorizer | None = None) -> dict:
    """The stages back to back, serially and dropping nothing, so this measures what the work costs rather
    than what a scheduler lets through. Without a colorizer it is pass-through."""
    sources = [clip_frames(clip, f"cam{i}") for i in range(cameras)]
    writers = [H264Writer(str(out_dir / f"stages-{i}.mp4"), "mp4", fps=CLIP_FPS) for i in range(cameras)]
    reuses = [reuse_for(CameraConfig("bench", "")) for _ in range(cameras)]  # the default
    try:
        stage_batch(sources, writers, colorizer, Laps(), reuses)  # untimed: opens the decoders and encoders
        laps, cpu_start = Laps(), time.process_time()
        for _ in range(frames_per_camera - 1):
            stage_batch(sources, writers, colorizer, laps, reuses)
        cpu = time.process_time() - cpu_start
    finally:
        for writer in writers:
            writer.close()
        for source in sources:
            source.close()
    frames, wall = cameras * (frames_per_camera - 1), sum(laps.seconds.values())
    return {"fps": frames / wall, "cpu_cores": cpu / wall,
            "reused": sum(r.reused for r in reuses), "carried": sum(r.carried for r in reuses),
            **{f"{stage}_ms_per_frame": s * 1000.0 / frames for stage, s in laps.seconds.items()}}


class StageClock:
    """Seconds spent in one stage and how many calls and frames it took, summed over the threads that run
    it (each camera's output thread finishes its own frames)."""

    def __init__(self) -> None:
        self.seconds, self.calls, self.frames = 0.0, 0, 0
        self._lock = threading.Lock()

    def add(self, seconds: float, frames: int) -> None:
        with self._lock:
            self.seconds += seconds
            self.calls += 1
            self.frames += frames

    def ms_per(self, count: int) -> float:
        return self.seconds * 1000.0 / count if count else 0.0


class TimedColorizer:
    """A colorizer that charges each network call (host/device copies included) to a clock; the Pipeline
    sees the interface it expects."""

    def __init__(self, colorizer: Colorizer | TorchColorizer, clock: StageClock) -> None:
        self.colorizer, self.clock = colorizer, clock
        self.info, self.provider, self.path = colorizer.info, colorizer.provider, colorizer.path

    @property
    def unavailable(self) -> str | None:
        return self.colorizer.unavailable

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        ab = self.colorizer(lightness)
        self.clock.add(time.perf_counter() - start, len(lightness))
        return ab


def timed_prepare(prepare: Callable[[Frame], Frame], clock: StageClock) -> Callable[[Frame], Frame]:
    """An output worker's colour step (colour_frame: recombination and temporal stabilisation), timed."""
    def run(frame: Frame) -> Frame:
        start = time.perf_counter()
        frame = prepare(frame)
        clock.add(time.perf_counter() - start, 1)
        return frame
    return run


def _settle(pipeline: Pipeline, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
    """Wait until the frames in flight are out: nothing waiting to be batched, no output for quiet_s."""
    end = time.monotonic() + limit_s
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < end:
        out = sum(r.outputs.published for r in pipeline.cameras.values())
        if out != last or pipeline.batcher.waiting():
            last, quiet_since = out, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            return
        time.sleep(0.05)


def paced_config(clip: Path, cameras: int, out_dir: Path, encode: bool, batch_max: int | None,
                 colour_device: str = "cpu", hwaccel: str = "") -> cfgmod.Config:
    """Every camera the clip, decoded on `hwaccel` ("": the CPU); recorded (MP4 segments) when `encode`, else
    no output at all (the frames are still finished and counted as published: OutputWorker does that
    before its targets); no ZeroMQ."""
    raw = {"camera": [{"name": f"cam{i}", "url": str(clip), "hwaccel": hwaccel,
                       **({"file_out": str(out_dir / "paced")} if encode else {})} for i in range(cameras)],
           "colour": {"device": colour_device},
           "zmq": {"endpoint": ""}, "adapt": {"state_dir": str(out_dir / "state")}}  # no adapted model of the user's
    if batch_max:
        raw["batch"] = {"max_size": batch_max}
    return cfgmod.parse(raw)


def run_paced(clip: Path, cameras: int, colorizer: Colorizer | TorchColorizer, out_dir: Path, encode: bool = True,
              batch_max: int | None = None, fps: float = CLIP_FPS, colour_device: str = "cpu",
              hwaccel: str = "") -> dict:
    """The real Pipeline, each camera the clip played at its own frame rate (`fps`, the clip's): what a deployment would see, frame
    drops and latency included, with the time the inference thread and the colour step took."""
    inference, colour = StageClock(), StageClock()
    pipeline = Pipeline(paced_config(clip, cameras, out_dir, encode, batch_max, colour_device, hwaccel),
                        TimedColorizer(colorizer, inference))
    cpu_start, start = time.process_time(), time.perf_counter()
    pipeline.start()
    # Wrapped once the cameras exist: a camera's first frames may pass untimed, so the colour step is
    # averaged over the frames it timed, not over all published ones.
    for runtime in pipeline.cameras.values():
        runtime.outputs.prepare = timed_prepare(runtime.outputs.prepare, colour)
    try:
        while not pipeline.finished():
            time.sleep(0.05)
        _settle(pipeline)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        pipeline.stop()
    runtimes = list(pipeline.cameras.values())
    delivered = [r.outputs.published / (r.source.stats.frames / fps) for r in runtimes]
    latencies = [ms for r in runtimes for ms in r.outputs.latencies_ms]
    return {"delivered_fps_per_camera": statistics.fmean(delivered),
            "sent": sum(r.source.stats.frames for r in runtimes),
            "published": sum(r.outputs.published for r in runtimes),
            "dropped": sum(pipeline.dropped(name) for name in pipeline.cameras),
            "reused": sum(r.reuse.reused for r in runtimes if r.reuse),
            "uncolorized": sum(r.uncolorized for r in runtimes),
            "carried": sum(r.reuse.carried for r in runtimes if r.reuse),
            "latency_p50_ms": float(np.percentile(latencies, 50)),
            "latency_p99_ms": float(np.percentile(latencies, 99)),
            "cpu_cores": cpu / wall, "peak_rss_mib": peak_rss_mib(),
            "inference_ms_per_batch": inference.ms_per(inference.calls),
            "frames_per_batch": inference.frames / inference.calls if inference.calls else 0.0,
            "inference_busy": inference.seconds / wall,
            "finish_ms_per_frame": colour.ms_per(colour.frames), "finish_cores": colour.seconds / wall}


def peak_rss_mib() -> float:
    """The process's peak so far (Linux reports KiB): measurements run smallest first, so it tracks the
    largest configuration measured up to that point."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def repeated(measure: Callable[[], dict], repeats: int) -> dict:
    """Median of every number over `repeats` runs, with the runs themselves kept."""
    runs = [measure() for _ in range(repeats)]
    return {**{key: statistics.median(run[key] for run in runs) for key in runs[0]}, "runs": runs}


def time_network(run: Callable[[np.ndarray], object], lightness: np.ndarray, repeats: int) -> dict:
    """Median seconds per call over `repeats` calls (the caller has warmed the session up)."""
    return network_timing([_seconds(lambda: run(lightness)) for _ in range(repeats)], len(lightness))


def network_timing(seconds: list[float], batch: int) -> dict:
    batch_s = statistics.median(seconds)
    return {"ms_per_batch": batch_s * 1000.0, "ms_per_frame": batch_s * 1000.0 / batch, "fps": batch / batch_s,
            "calls_ms": [s * 1000.0 for s in seconds]}


def time_interleaved(networks: dict[str, Callable[[np.ndarray], object]], lightness: np.ndarray,
                     rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each network, `rounds` rounds in which each is called once in turn: a slow
    moment of a shared machine falls on all of them alike instead of on whichever ran then."""
    seconds: dict[str, list[float]] = {name: [] for name in networks}
    for _ in range(rounds):
        for name, run in networks.items():
            seconds[name].append(_seconds(lambda: run(lightness)))
    return seconds


def median_ratio(numerator_s: list[float], denominator_s: list[float]) -> float:
    """The fps ratio numerator / denominator as the median of the rounds' own ratios."""
    return statistics.median(d / n for n, d in zip(numerator_s, denominator_s))


def export_eccv16(path: Path, temperature: float) -> None:
    """Zhang et al.'s ECCV16 network (random weights: speed only) behind the same annealed-mean decoding
    as ours, exported as `streamd export` exports ours, so both graphs map L to ab. Its head is sized to
    our 262 bins instead of the paper's 313: under 0.2% of its FLOPs."""
    import torch

    from streamd.colour.lab import ab_bins
    from streamd.model.export import OPSET
    from streamd.model.network import ECCV16, AnnealedMean

    bins = torch.from_numpy(ab_bins())
    model = AnnealedMean(ECCV16(len(bins)), bins, temperature).eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; streamd export uses it too
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 192, 320), str(path), input_names=["L"], output_names=["ab"],
                          opset_version=OPSET, dynamic_axes={"L": {0: "batch", 2: "height", 3: "width"},
                                                             "ab": {0: "batch", 2: "height_4", 3: "width_4"}},
                          dynamo=False)


def eccv16_colorizer(work: Path, temperature: float) -> tuple[Colorizer | None, str]:
    """The ECCV16 baseline in a session made exactly like the shipped model's, or None and why not."""
    path = work / "eccv16.onnx"
    try:
        export_eccv16(path, temperature)
    except ImportError as e:  # torch and onnx come with the train extra, which serving does not need
        return None, f"{e.name} is not importable (pip install '.[train]'): ECCV16 baseline and ratio skipped"
    return Colorizer(path), "ECCV16 architecture, random weights, same decoding and ONNX Runtime settings"


def network_section(colorizer: Colorizer, work: Path, sizes: list[tuple[int, int]], repeats: int,
                    int8: Colorizer | None = None) -> dict:
    """Ours against ECCV16 at the same input sizes and batches: ms per frame, fps and the fps ratio; also
    ours in int8 (what the daemon runs on a CPU) where the model has an int8 copy."""
    baseline, note = eccv16_colorizer(work, colorizer.info.temperature)
    print(f"network: {note}", flush=True)
    rows = []
    for size in sizes:
        # Untimed, once per size: thread pool and memory arena set-up. ONNX Runtime's CPU kernels are not
        # specialised per batch size, so one frame warms every batch.
        for session in filter(None, (colorizer, baseline, int8)):
            session(lightness_batch(size, 1))
        for batch in NETWORK_BATCHES:
            lightness = lightness_batch(size, batch)
            networks = {"ours": colorizer, "eccv16": baseline, "ours_int8": int8}
            seconds = time_interleaved({k: v for k, v in networks.items() if v}, lightness, repeats)
            ours, eccv16, ours_int8 = (network_timing(seconds[k], batch) if k in seconds else None for k in networks)
            rows.append({"input": f"{size[1]}x{size[0]}", "batch": batch, "ours": ours, "eccv16": eccv16,
                         "ratio_fps_ours_over_eccv16": median_ratio(seconds["ours"], seconds["eccv16"])
                         if eccv16 else None,
                         "ours_int8": ours_int8,
                         "ratio_fps_int8_over_eccv16": median_ratio(seconds["ours_int8"], seconds["eccv16"])
                         if eccv16 and int8 else None})
            print(f"network {rows[-1]['input']} batch {batch}: ours {ours['ms_per_frame']:.1f} ms/frame"
                  + (f", ECCV16 {eccv16['ms_per_frame']:.1f} ms/frame" if eccv16 else ""), flush=True)
    return {"baseline": note, "ort_intra_op_threads": 0, "rounds": repeats, "rows": rows}


def per_camera_models_section(colorizer: Colorizer, size: tuple[int, int], repeats: int) -> dict:
    """What per-camera (adapted) models cost: N cameras sharing one model run as one batch of N; N cameras
    with a model each run N batches of one, one per model (as Pipeline._colorize does)."""
    rows = []
    for cameras in PER_CAMERA_MODEL_CAMERAS:
        own_models = [Colorizer(colorizer.path) for _ in range(cameras)]  # separate sessions, same weights
        one_frame, frames = lightness_batch(size, 1), lightness_batch(size, cameras)
        for session in own_models:
            session(one_frame)
        shared = time_network(colorizer, frames, repeats)
        own = time_network(lambda x: [session(x[i:i + 1]) for i, session in enumerate(own_models)], frames, repeats)
        rows.append({"cameras": cameras, "shared_ms": shared["ms_per_batch"], "own_ms": own["ms_per_batch"],
                     "cost": own["ms_per_batch"] / shared["ms_per_batch"]})
        print(f"{cameras} cameras: one shared model {shared['ms_per_batch']:.1f} ms, a model each "
              f"{own['ms_per_batch']:.1f} ms", flush=True)
    return {"input": f"{size[1]}x{size[0]}", "rows": rows}


def video_sections(colorizer: Colorizer, plan: dict, repeats: int, work: Path, still: bool = False) -> tuple[list, dict]:
    """Pass-through and streamd (unpaced and paced) at every resolution and camera count of the plan, on
    moving clips, or (`still`) on a still scene's, where frames reuse predictions as the pipeline does."""
    passthrough, throughput, paced = [], [], []
    kind = "still" if still else "gray"
    for size in plan["still_sizes" if still else "sizes"]:
        resolution = f"{size[0]}x{size[1]}"
        clip = work / f"{kind}-{resolution}.mp4"
        frames = make_clip(clip, size, plan["clip_s"], still)
        limit = repeated(lambda: run_stages(clip, 1, frames, work), repeats)
        passthrough.append({"resolution": resolution, **limit})
        print(f"pass-through {kind} {resolution}: {limit['fps']:.1f} fps", flush=True)
        for cameras in plan["still_cameras" if still else "cameras"]:
            # A still scene is timed over the whole clip: a prediction is reused for up to a second, so a
            # short stretch would hide the network runs that renew it.
            # Moving clips: the first frame (untimed) runs the network; then whole cycles of one network run
            # and the carried frames after it, so the mix timed is the one a long run would see.
            cycle = CameraConfig("bench", "").carry_frames + 1
            cycles = max(2, plan["stage_frames"] // (cameras * cycle))
            per_camera = frames if still else min(frames, 1 + cycles * cycle)
            stages = repeated(lambda: run_stages(clip, cameras, per_camera, work, colorizer), repeats)
            throughput.append({"resolution": resolution, "cameras": cameras, "frames_per_camera": per_camera,
                               "ratio_to_passthrough": stages["fps"] / limit["fps"], **stages})
            live = repeated(lambda: run_paced(clip, cameras, colorizer, work), repeats)
            paced.append({"resolution": resolution, "cameras": cameras, "camera_fps": CLIP_FPS, **live})
            print(f"streamd {kind} {resolution} x{cameras}: {stages['fps']:.1f} fps unpaced "
                  f"({stages['fps'] / limit['fps']:.3f} of pass-through); paced "
                  f"{live['delivered_fps_per_camera']:.1f} fps/camera, p50 {live['latency_p50_ms']:.0f} ms",
                  flush=True)
    return passthrough, {"throughput": throughput, "paced": paced}


# -- the PyTorch benchmark (--device cuda, torch-cpu) ------------------------------------------------------
def check_torch_device(device: str) -> None:
    """BenchUnavailable unless torch is importable and, for CUDA, has a device: before starting processes
    that would each find out on their own."""
    try:
        import torch
    except ImportError as e:
        raise BenchUnavailable(f"--device {device}: {e.name} is not importable (pip install '.[train]')") from e
    if device == "cuda" and not torch.cuda.is_available():
        raise BenchUnavailable("--device cuda: CUDA is not available here (torch.cuda.is_available() is False)")


def torch_colorizer(device: str) -> TorchColorizer:
    """The shipped model's training weights through PyTorch on `device`, or BenchUnavailable saying why not."""
    try:
        from streamd.infer.pytorch import load_torch_colorizer
    except ImportError as e:
        raise BenchUnavailable(f"--device {device}: {e.name} is not importable (pip install '.[train]')") from e
    try:
        return load_torch_colorizer(device=device)
    except (RuntimeError, FileNotFoundError) as e:
        raise BenchUnavailable(f"--device {device}: {e}") from e


def torch_network_section(colorizer: TorchColorizer, plan: dict) -> dict:
    """Ours and ECCV16 through the same TorchColorizer code (same device and precision), one batch per
    camera count at the production input: per batch, the CPU preprocessing (camera-size luma to L) and
    the network with its host/device copies, timed apart."""
    import torch

    from streamd.infer.pytorch import TorchColorizer
    from streamd.colour.lab import ab_bins
    from streamd.model.network import ECCV16, AnnealedMean

    eccv16 = TorchColorizer(AnnealedMean(ECCV16(len(ab_bins())), torch.from_numpy(ab_bins()),
                                         colorizer.info.temperature), colorizer.info, None, plan["device"])
    size = plan["camera_size"]

    def preprocess(cameras: int) -> np.ndarray:
        frames = [_fresh_gray_frame(size) for _ in range(cameras)]
        return np.stack([luma_to_lightness(f, NETWORK_INPUT) for f in frames])[:, None]

    rows = []
    for cameras in plan["cameras"]:
        lightness = preprocess(cameras)
        preprocess_ms = statistics.median(_seconds(lambda: preprocess(cameras)) for _ in range(5)) * 1000.0
        row = {"cameras": cameras, "camera_size": f"{size[0]}x{size[1]}", "batch": cameras,
               "preprocess_ms_per_batch": preprocess_ms}
        for name, network in (("ours", colorizer), ("eccv16", eccv16)):
            for _ in range(3):  # untimed: memory allocation and kernel selection for this batch size
                network(lightness)
            batch_ms = statistics.median(_seconds(lambda: network(lightness))
                                         for _ in range(plan["iterations"])) * 1000.0
            row[name] = {"ms_per_batch": batch_ms, "fps": cameras / batch_ms * 1000.0}
        row["ratio_fps_ours_over_eccv16"] = row["ours"]["fps"] / row["eccv16"]["fps"]
        rows.append(row)
        print(f"network x{cameras}: ours {row['ours']['ms_per_batch']:.2f} ms/batch, "
              f"ECCV16 {row['eccv16']['ms_per_batch']:.2f} ms/batch, preprocess {preprocess_ms:.1f} ms", flush=True)
    return {"device": colorizer.device_name, "torch": torch.__version__, "precision": colorizer.precision,
            "input": f"{NETWORK_INPUT[1]}x{NETWORK_INPUT[0]}", "weights": colorizer.path.name,  # the file's name: a result names no install path
            "model": colorizer.info.model_id, "rows": rows}


def ort_network_section(plan: dict, work: Path, temperature: float) -> dict:
    """Ours against ECCV16 through ONNX Runtime's GPU providers where installed (onnxruntime-gpu; TensorRT
    builds an engine per batch shape on first use, which the untimed calls absorb), at the batches of the
    PyTorch rows, interleaved as the CPU comparison is. The torch-cpu smoke run does the same through the
    CPU provider, so this code is tested without a GPU."""
    from streamd.infer.onnx_runtime import PROVIDERS

    wanted = ("tensorrt", "cuda") if plan["device"] == "cuda" else ("cpu",)
    installed = [name for name in wanted if PROVIDERS[name] in ort.get_available_providers()]
    eccv16_path = work / "eccv16.onnx"
    if installed and not eccv16_path.exists():
        export_eccv16(eccv16_path, temperature)
    rows = []
    for name in installed:
        networks = {"ours": Colorizer(provider=name, int8="off"), "eccv16": Colorizer(eccv16_path, provider=name)}
        for cameras in plan["cameras"]:
            lightness = lightness_batch(NETWORK_INPUT, cameras)
            for network in networks.values():
                for _ in range(3):
                    network(lightness)
            seconds = time_interleaved(networks, lightness, plan["iterations"])
            rows.append({"provider": name, "batch": cameras, "ours": network_timing(seconds["ours"], cameras),
                         "eccv16": network_timing(seconds["eccv16"], cameras),
                         "ratio_fps_ours_over_eccv16": median_ratio(seconds["ours"], seconds["eccv16"])})
            print(f"ONNX Runtime {name} x{cameras}: ours {rows[-1]['ours']['ms_per_batch']:.2f} ms/batch, "
                  f"ECCV16 {rows[-1]['eccv16']['ms_per_batch']:.2f} ms/batch", flush=True)
    return {"providers_measured": installed, "not_installed": [n for n in wanted if n not in installed],
            "onnxruntime": ort.__version__, "rows": rows}


def decode_cpu_ms_per_frame(clip: Path) -> float:
    """CPU time (all the decoder's threads) per frame to decode the clip into Frames as a camera does: the
    paced pipeline decodes inside each camera's thread, where it cannot be timed apart."""
    cpu_start = time.process_time()
    count = sum(1 for _ in clip_frames(clip, "decode"))
    return (time.process_time() - cpu_start) * 1000.0 / count


def warm_up(colorizer: TorchColorizer, cameras: int) -> None:
    """One call per batch size the batcher can make (1 to the camera count): the first call of a shape pays
    for memory allocation and kernel selection, which a deployment pays once, not during measurement."""
    for batch in range(1, cameras + 1):
        colorizer(lightness_batch(NETWORK_INPUT, batch))


def limiting_stage(row: dict, usable_cores: int) -> str:
    """What holds the pipeline back: nothing while the cameras get (nearly) every frame through; else the
    inference thread when it is busy most of the time; else the CPU (decode and colour) when the process
    uses most of the cores; else neither is saturated, and the threads themselves (GIL, scheduling) are."""
    if row["delivered_fps_per_camera"] >= KEEPS_UP * row["camera_fps"]:
        return "none (keeps up)"
    if row["inference_busy"] >= SATURATED and row["inference_busy"] >= row["cpu_cores"] / usable_cores:
        return "inference"
    if row["cpu_cores"] >= SATURATED * usable_cores:
        return "CPU (decode + colour)"
    return "neither saturated (threads)"


def torch_pipeline_section(colorizer: TorchColorizer, plan: dict, work: Path, hwaccel: str = "") -> dict:
    """The real Pipeline on the PyTorch backend with each camera count of the plan, cameras at the plan's rate,
    one batch holding up to a frame of every camera, no outputs: delivered fps, latency, and each stage's
    share of the time, to say which one limits."""
    size = plan["camera_size"]
    resolution = f"{size[0]}x{size[1]}"
    clip = work / f"gray-{resolution}.mp4"
    fps = plan["camera_fps"]
    make_clip(clip, size, plan["clip_s"], fps=fps)
    decode_ms = decode_cpu_ms_per_frame(clip)
    warm_up(colorizer, max(plan["cameras"]))
    usable = len(os.sched_getaffinity(0))
    rows = []
    for cameras in plan["cameras"]:
        run = run_paced(clip, cameras, colorizer, work, encode=False, batch_max=cameras, fps=fps,
                        colour_device=plan["colour_device"], hwaccel=hwaccel)
        row = {"resolution": resolution, "cameras": cameras, "camera_fps": fps, "batch_max": cameras,
               "total_fps": run["delivered_fps_per_camera"] * cameras, **run,
               "decode_cores": decode_ms * cameras * fps / 1000.0}
        row["limit"] = limiting_stage(row, usable)
        rows.append(row)
        print(f"pipeline {resolution} x{cameras}: {row['total_fps']:.1f} fps ({row['delivered_fps_per_camera']:.1f}"
              f"/camera), p99 {row['latency_p99_ms']:.0f} ms, limit: {row['limit']}", flush=True)
    return {"outputs": "none: frames are finished (colour recombination) and counted as published, not encoded",
            "colour_device": plan["colour_device"], "hwaccel": hwaccel,
            "decode_cpu_ms_per_frame": decode_ms, "usable_cores": usable, "rows": rows}


def measure_torch(plan: dict, result: dict, work: Path, hwaccel: str = "", processes: int = 1) -> dict:
    if processes > 1:  # the cameras over several processes: the parent loads no model of its own
        from streamd.tools.bench import processes as bench_processes

        check_torch_device(plan["device"])
        result["machine"] = machine_info(f"torch-{plan['device']}")
        result["settings"] = {"device": plan["device"], "camera_size": "x".join(map(str, plan["camera_size"])),
                              "cameras": list(plan["cameras"]), "camera_fps": plan["camera_fps"],
                              "clip_seconds": plan["clip_s"], "processes": processes, "hwaccel": hwaccel}
        result["torch_processes"] = bench_processes.processes_section(plan, processes, work, hwaccel)
        result["peak_rss_mib"] = peak_rss_mib()
        return result
    colorizer = torch_colorizer(plan["device"])
    result["machine"] = machine_info(colorizer.provider)
    result["settings"] = {"device": plan["device"], "camera_size": "x".join(map(str, plan["camera_size"])),
                          "cameras": list(plan["cameras"]), "camera_fps": plan["camera_fps"], "clip_seconds": plan["clip_s"],
                          "model": colorizer.info.model_id, "precision": colorizer.precision,
                          "network_input": f"{colorizer.info.input_width}x{colorizer.info.input_height}",
                          "hwaccel": hwaccel}
    result["torch_network"] = torch_network_section(colorizer, plan)
    try:
        result["ort_network"] = ort_network_section(plan, work, colorizer.info.temperature)
    except Exception as e:  # as the pipeline below: a provider that fails must not cost the other numbers
        log.exception("the ONNX Runtime section failed")
        result["ort_network"] = {"error": f"{type(e).__name__}: {e}"}
    try:
        result["torch_pipeline"] = torch_pipeline_section(colorizer, plan, work, hwaccel)
    except Exception as e:  # a failed pipeline must not cost the network's numbers: report it beside them
        log.exception("the pipeline section failed")
        result["torch_pipeline"] = {"error": f"{type(e).__name__}: {e}"}
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def _seconds(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# -- report --------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(provider: str | None) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "load_average_at_start": os.getloadavg(), "python": platform.python_version(),
            "platform": platform.platform(), "onnxruntime": ort.__version__, "av": av.__version__,
            "numpy": np.__version__, "provider": provider}


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def report(result: dict) -> str:
    """The detail tables, then the ratios: the lines worth reading last."""
    parts = []
    for key, scene in (("streamd", "moving clips: predictions carried along the flow"),
                       ("still_scene", "a still scene: predictions reused")):
        if key not in result:
            continue
        runs = result[key]
        passthrough = result["passthrough"] if key == "streamd" else runs["passthrough"]
        limit = {p["resolution"]: p["fps"] for p in passthrough}
        parts.append(f"streamd, paced, {scene} (the real pipeline, cameras at 25 fps, every number a median):\n"
                     + table(["resolution", "cameras", "fps/camera", "dropped", "reused", "carried", "p50 ms",
                              "p99 ms", "CPU cores", "peak RSS MiB"],
                             [[p["resolution"], p["cameras"], p["delivered_fps_per_camera"], p["dropped"], p["reused"],
                               p.get("carried", 0), p["latency_p50_ms"], p["latency_p99_ms"], p["cpu_cores"], p["peak_rss_mib"]]
                              for p in runs["paced"]]))
        parts.append(f"unpaced, every frame, {scene} (frames/s of all cameras together; ms per frame by stage):\n"
                     + table(["resolution", "cameras", "fps", "reused", "carried", "decode", "predict", "finish",
                              "encode", "pass-through fps", "streamd / pass-through"],
                             [[t["resolution"], t["cameras"], t["fps"], t["reused"], t.get("carried", 0),
                               t["decode_ms_per_frame"],
                               t["predict_ms_per_frame"], t["finish_ms_per_frame"], t["encode_ms_per_frame"],
                               limit[t["resolution"]], t["ratio_to_passthrough"]] for t in runs["throughput"]]))
    if "network" in result:
        parts.append(f"network alone ({result['network']['baseline']}; {result['network']['rounds']} rounds, each "
                     "network once per round in turn; ratios are medians of the rounds' ratios):\n" + table(
            ["input", "batch", "ours ms/frame", "ours fps", "ECCV16 ms/frame", "ECCV16 fps", "ours / ECCV16 (fps)",
             "int8 ms/frame", "int8 / ECCV16 (fps)"],
            [[r["input"], r["batch"], r["ours"]["ms_per_frame"], r["ours"]["fps"],
              r["eccv16"] and r["eccv16"]["ms_per_frame"], r["eccv16"] and r["eccv16"]["fps"],
              r["ratio_fps_ours_over_eccv16"], r["ours_int8"] and r["ours_int8"]["ms_per_frame"],
              r["ratio_fps_int8_over_eccv16"]] for r in result["network"]["rows"]]))
    if "per_camera_models" in result:
        per = result["per_camera_models"]
        parts.append(f"per-camera models (network at {per['input']}; ms per round of one frame per camera):\n" + table(
            ["cameras", "one shared model", "a model per camera", "cost (x)"],
            [[r["cameras"], r["shared_ms"], r["own_ms"], r["cost"]] for r in per["rows"]]))
    size = result.get("settings", {}).get("camera_size")
    if "torch_network" in result:
        net = result["torch_network"]
        parts.append(f"network alone on {net['device']} ({net['precision']}), input {net['input']}, "
                     f"{size} cameras, one batch each:\n" + table(
                         ["cameras", "preprocess ms", "ours ms/batch", "ours fps", "ECCV16 ms/batch", "ECCV16 fps",
                          "ours / ECCV16 (fps)"],
                         [[r["cameras"], r["preprocess_ms_per_batch"], r["ours"]["ms_per_batch"], r["ours"]["fps"],
                           r["eccv16"]["ms_per_batch"], r["eccv16"]["fps"], r["ratio_fps_ours_over_eccv16"]]
                          for r in net["rows"]]))
    ort_net = result.get("ort_network")
    if ort_net and "error" in ort_net:
        parts.append(f"network alone through ONNX Runtime: FAILED, {ort_net['error']}")
    elif ort_net:
        missing = ", ".join(ort_net["not_installed"])
        parts.append(f"network alone through ONNX Runtime {ort_net['onnxruntime']}, same batches"
                     + (f" (not installed: {missing}; onnxruntime-gpu provides them)" if missing else "") + ":\n"
                     + table(["provider", "batch", "ours ms/batch", "ours fps", "ECCV16 ms/batch", "ECCV16 fps",
                              "ours / ECCV16 (fps)"],
                             [[r["provider"], r["batch"], r["ours"]["ms_per_batch"], r["ours"]["fps"],
                               r["eccv16"]["ms_per_batch"], r["eccv16"]["fps"], r["ratio_fps_ours_over_eccv16"]]
                              for r in ort_net["rows"]]))
    if "torch_processes" in result:
        from streamd.tools.bench import processes as bench_processes

        parts.append(bench_processes.report(result["torch_processes"], size, result["settings"]["camera_fps"]))
    if "frame_cost" in result:
        from streamd.tools.bench import frame_cost as bench_frame_cost

        parts.append(bench_frame_cost.report(result["frame_cost"]))
    if "reference_cost" in result:
        from streamd.tools.bench import reference_cost as bench_reference

        parts.append(bench_reference.report(result["reference_cost"]))
    if "triton" in result:
        from streamd.tools.bench import triton_cost as bench_triton

        parts.append(bench_triton.report(result["triton"]))
    if "error" in result.get("torch_pipeline", {}):
        parts.append(f"the real pipeline: FAILED, {result['torch_pipeline']['error']}")
    elif "torch_pipeline" in result:
        pipe = result["torch_pipeline"]
        parts.append(f"the real pipeline, {size} cameras at {result['settings']['camera_fps']:g} fps, no outputs, "
                     f"full-resolution colour on {pipe['colour_device']}; decode "
                     f"{pipe['decode_cpu_ms_per_frame']:.2f} CPU ms/frame measured apart, "
                     f"{pipe['usable_cores']} usable cores:\n" + table(
                         ["cameras", "total fps", "fps/camera", "dropped", "p50 ms", "p99 ms", "CPU cores",
                          "infer ms/batch", "frames/batch", "infer busy", "finish ms/frame", "finish cores",
                          "decode cores", "limit"],
                         [[r["cameras"], r["total_fps"], r["delivered_fps_per_camera"], r["dropped"],
                           r["latency_p50_ms"], r["latency_p99_ms"], r["cpu_cores"], r["inference_ms_per_batch"],
                           r["frames_per_batch"], r["inference_busy"], r["finish_ms_per_frame"], r["finish_cores"],
                           r["decode_cores"], r["limit"]] for r in pipe["rows"]]))
    return "\n\n".join(parts)


def command_line(args: argparse.Namespace) -> str:
    """The command that repeats this run (the process's own argv may be a test runner's)."""
    words = ["streamd", "bench", "--device", args.device]
    words += ["--frame-cost", args.frame_cost] if args.frame_cost else []
    words += ["--reference", args.reference] if args.reference else []
    words += ["--triton", args.triton, "--triton-model", args.triton_model] if args.triton else []
    words += ["--cameras", *map(str, args.cameras)] if args.cameras else []
    words += ["--processes", str(args.processes)] if args.processes > 1 else []
    words += ["--hwaccel", args.hwaccel] if args.hwaccel else []
    words += ["--short"] if args.short else []
    words += ["--repeats", str(args.repeats)] if args.repeats else []
    words += ["--json", str(args.json)] if args.json else []
    return shlex.join(words)


def measure(args: argparse.Namespace, work: Path) -> dict:
    result = {"command": command_line(args), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    if args.frame_cost:
        from streamd.tools.bench.frame_cost import frame_cost

        size = resolution(args.frame_cost)
        clip = work / "frame-cost.mp4"
        make_clip(clip, size, (FRAME_COST_FRAMES_SHORT if args.short else FRAME_COST_FRAMES) / CLIP_FPS)
        result["machine"] = machine_info(None)
        result["frame_cost"] = {"resolution": f"{size[0]}x{size[1]}", **frame_cost(clip)}
        return result
    if args.reference:
        from streamd.tools.bench.reference_cost import reference_cost

        result["machine"] = machine_info("CPUExecutionProvider")
        result["reference_cost"] = reference_cost(resolution(args.reference), work, args.short)
        return result
    if args.triton:
        from streamd.tools.bench.triton_cost import triton_section

        result["machine"] = machine_info("CPUExecutionProvider")
        result["triton"] = triton_section(args.triton, args.triton_model, args.short,
                                          args.repeats or (SHORT if args.short else FULL)["repeats"], work)
        return result
    if args.device in TORCH_PLANS:
        plan = TORCH_PLANS[args.device]
        if args.cameras:
            plan = {**plan, "cameras": tuple(args.cameras)}
        return measure_torch(plan, result, work, args.hwaccel, args.processes)
    plan = SHORT if args.short else FULL
    repeats = args.repeats or plan["repeats"]
    colorizer = Colorizer(int8="auto")  # what the daemon runs by default
    fp32 = Colorizer()
    result["machine"] = machine_info(colorizer.provider)
    result["settings"] = {"short": args.short, "repeats": repeats, "clip_seconds": plan["clip_s"],
                          "camera_fps": CLIP_FPS, "model": colorizer.info.model_id,
                          "network_input": f"{colorizer.info.input_width}x{colorizer.info.input_height}",
                          "stage_frames": plan["stage_frames"]}
    result["passthrough"], result["streamd"] = video_sections(colorizer, plan, repeats, work)
    still_passthrough, still = video_sections(colorizer, plan, repeats, work, still=True)
    result["still_scene"] = {"passthrough": still_passthrough, **still}
    rounds = repeats if args.short else max(repeats, NETWORK_ROUNDS)
    result["network"] = network_section(fp32, work, plan["network_sizes"], rounds,
                                        colorizer if colorizer.path != fp32.path else None)
    result["per_camera_models"] = per_camera_models_section(colorizer, plan["network_sizes"][-1], repeats)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def resolution(text: str) -> tuple[int, int]:
    """"WIDTHxHEIGHT" -> (width, height), even and positive (H.264 4:2:0 needs even sides)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 1920x1080") from None
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"{text!r}: width and height must be even and at least 2")
    return width, height


def usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options, or None."""
    if args.repeats < 0:
        return "--repeats must be 1 or more (0 = the mode's default)"
    torch_only = [name for name, value in (("--cameras", args.cameras), ("--processes", args.processes > 1),
                                           ("--hwaccel", args.hwaccel)) if value]
    if torch_only and args.device not in TORCH_PLANS:
        return f"{', '.join(torch_only)}: only with --device {' or '.join(TORCH_PLANS)}"
    if args.processes < 1 or any(c < 1 for c in args.cameras or []):
        return "--processes and --cameras must be 1 or more"
    if sum(bool(x) for x in (args.frame_cost, args.triton, args.reference)) > 1:
        return "--frame-cost, --reference and --triton are separate runs: give one"
    if args.triton and args.device != "cpu":
        return "--triton compares the server with ONNX Runtime on this host's CPU: leave --device at cpu"
    for option, value in (("--frame-cost", args.frame_cost), ("--reference", args.reference)):
        if value:  # each times the CPU's own work on one camera of a size
            if args.device != "cpu":
                return f"{option} times the CPU's work: leave --device at cpu"
            try:
                resolution(value)
            except ValueError as e:
                return f"{option} {e}"
    return None


def main(args: argparse.Namespace) -> int:
    problem = usage_error(args)
    if problem:
        print(f"streamd bench: {problem}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    quiet = logging.getLogger("streamd")
    level = quiet.level
    if not args.verbose:  # a camera start and end per measurement would bury the results
        quiet.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="streamd-bench-") as work:
            result = measure(args, Path(work))
    except BenchUnavailable as e:
        print(f"streamd bench: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        quiet.setLevel(level)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    m = result["machine"]
    if "torch_network" in result:
        engine = f"PyTorch {result['torch_network']['torch']} on {result['torch_network']['device']}"
    elif "torch_processes" in result:
        engine = f"PyTorch on {m['provider']} in {result['torch_processes']['processes']} processes"
    elif "frame_cost" in result:
        engine = "the per-frame steps, no network"
    elif "triton" in result:
        engine = f"Triton at {result['triton']['url']} against onnxruntime {m['onnxruntime']} on the CPU"
    else:
        engine = f"onnxruntime {m['onnxruntime']} on {m['provider']}"
    print(f"\nstreamd bench, {result['date']}: {m['cpu']}, {m['cores']} cores, {engine}\n")
    print(report(result))
    failed = "error" in result.get("torch_pipeline", {}) or any(
        row["failed"] for row in result.get("torch_processes", {}).get("rows", []))
    return EXIT_FAILED if failed else 0
