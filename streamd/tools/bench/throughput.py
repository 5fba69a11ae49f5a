"""Pass-through against streamd on the same clips: the stages back to back, serially and dropping nothing (what
the work costs: `run_stages`), `streamd colorize` of the clip against decoding and encoding the same file
(`run_colorize`, `run_file_passthrough`), and the real Pipeline fed by files played at the cameras' frame rate
(what a deployment sees: delivered fps, dropped frames, capture-to-publish latency, CPU cores and peak memory:
`run_paced`)."""
from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamd import config as cfgmod
from streamd.colour.temporal import Reuse
from streamd.config import CameraConfig
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.sink import H264Writer
from streamd.frame import Frame
from streamd.infer.onnx_runtime import Colorizer
from streamd.steps import colour_frame, predict_or_reuse, reuse_for
from streamd.tools.bench.inputs import CLIP_FPS, clip_frames, make_clip
from streamd.tools.colorize import colorize_video, decode_file
from streamd.tools.bench.timing import peak_rss_mib, repeated

if TYPE_CHECKING:
    from streamd.infer.pytorch import TorchColorizer


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


def run_file_passthrough(clip: Path, out_dir: Path) -> dict:
    """Decode the clip and encode it again as `streamd colorize` writes its output (the same decoder and
    H264Writer), nothing else: the most colorize could deliver. Wall time of the whole file."""
    start, frames = time.perf_counter(), 0
    writer = H264Writer(str(out_dir / "file-passthrough.mp4"), "mp4", fps=CLIP_FPS)
    try:
        for frame in decode_file(clip):
            writer.write(frame)
            frames += 1
    finally:
        writer.close()
    return {"fps": frames / (time.perf_counter() - start)}


def run_colorize(clip: Path, colorizer: Colorizer, out_dir: Path) -> dict:
    """`streamd colorize` of the clip, as a user runs it (its two stages overlapped, the default camera's
    Reuse): wall time of the whole file, and the frames the network ran on."""
    start = time.perf_counter()
    frames, runs = colorize_video(colorizer, clip, out_dir / "colorized.mp4",
                                  reuse=reuse_for(CameraConfig("bench", "")))
    return {"fps": frames / (time.perf_counter() - start), "network_runs": runs}


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
    """A colorizer that charges each network call (host/device copies included) to a clock, except its first
    `uncharged` calls; the Pipeline sees the interface it expects."""

    def __init__(self, colorizer: Colorizer | TorchColorizer, clock: StageClock, uncharged: int = 0) -> None:
        self.colorizer, self.clock, self.uncharged = colorizer, clock, uncharged
        self.info, self.provider, self.path = colorizer.info, colorizer.provider, colorizer.path

    @property
    def unavailable(self) -> str | None:
        return self.colorizer.unavailable

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        if self.uncharged:
            self.uncharged -= 1
            return self.colorizer(lightness)
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
    # the Pipeline's first call is its warm-up (steps.warm_up), before the cameras start: not a batch
    pipeline = Pipeline(paced_config(clip, cameras, out_dir, encode, batch_max, colour_device, hwaccel),
                        TimedColorizer(colorizer, inference, uncharged=1))
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
            "colorized": sum(r.colorized for r in runtimes),
            "network_frames": inference.frames,
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


def video_sections(colorizer: Colorizer, plan: dict, repeats: int, work: Path, still: bool = False) -> tuple[list, dict]:
    """Pass-through and streamd (unpaced and paced) at every resolution and camera count of the plan, on
    moving clips (and there `streamd colorize` of each clip), or (`still`) on a still scene's, where frames
    reuse predictions as the pipeline does."""
    passthrough, throughput, paced, files = [], [], [], []
    kind = "still" if still else "gray"
    for size in plan["still_sizes" if still else "sizes"]:
        resolution = f"{size[0]}x{size[1]}"
        clip = work / f"{kind}-{resolution}.mp4"
        frames = make_clip(clip, size, plan["clip_s"], still)
        paced_clip = clip
        if plan["paced_s"] != plan["clip_s"]:
            paced_clip = work / f"{kind}-{resolution}-paced.mp4"
            make_clip(paced_clip, size, plan["paced_s"], still)
        limit = repeated(lambda: run_stages(clip, 1, frames, work), repeats)
        passthrough.append({"resolution": resolution, **limit})
        print(f"pass-through {kind} {resolution}: {limit['fps']:.1f} fps", flush=True)
        if not still:  # `streamd colorize` and the same file decoded and encoded alone, in turns
            rounds = [(run_file_passthrough(clip, work), run_colorize(clip, colorizer, work)) for _ in range(repeats)]
            files.append({"resolution": resolution, "frames": frames,
                          "passthrough_fps": statistics.median(p["fps"] for p, _ in rounds),
                          "colorize_fps": statistics.median(c["fps"] for _, c in rounds),
                          "network_runs": rounds[0][1]["network_runs"],
                          "ratio": statistics.median(c["fps"] / p["fps"] for p, c in rounds)})
            print(f"streamd colorize {resolution}: {files[-1]['ratio']:.3f} of decode + encode alone", flush=True)
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
            live = repeated(lambda: run_paced(paced_clip, cameras, colorizer, work), repeats)
            paced.append({"resolution": resolution, "cameras": cameras, "camera_fps": CLIP_FPS, **live})
            print(f"streamd {kind} {resolution} x{cameras}: {stages['fps']:.1f} fps unpaced "
                  f"({stages['fps'] / limit['fps']:.3f} of pass-through); paced "
                  f"{live['delivered_fps_per_camera']:.1f} fps/camera, p50 {live['latency_p50_ms']:.0f} ms",
                  flush=True)
    return passthrough, {"throughput": throughput, "paced": paced, **({} if still else {"colorize": files})}
