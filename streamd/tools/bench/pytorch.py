"""`streamd bench --device cuda | torch-cpu`: through PyTorch (streamd.infer.pytorch; fp16 and CUDA graphs on
the GPU) instead of ONNX Runtime.

The network alone, ours against ECCV16, one batch for each of 8, 32 and 64 1080p cameras (and the same
batches through ONNX Runtime's GPU providers where installed), then the real Pipeline with that many cameras
at 50 fps each (so that 32 cameras offer more than 1,000 frames/s), the full-resolution colour work batched
on the GPU ([colour] device = "cuda"), and no outputs; each pipeline row says which stage limits it.
`--device torch-cpu` is the same run on the CPU with 1 and 2 cameras at 360p and colour on the CPU: small
enough for the test suite, which is how the GPU path is tested without a GPU.
"""
from __future__ import annotations

import logging
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from streamd.colour.lightness import luma_to_lightness
from streamd.infer.onnx_runtime import Colorizer
from streamd.tools.bench.inputs import CLIP_FPS, NETWORK_INPUT, clip_frames, fresh_gray_frame, lightness_batch, make_clip
from streamd.tools.bench.network import export_eccv16
from streamd.tools.bench.throughput import run_paced
from streamd.tools.bench.timing import (BenchUnavailable, machine_info, median_ratio, network_timing, peak_rss_mib,
                                        seconds_of, time_interleaved)

if TYPE_CHECKING:
    from streamd.infer.pytorch import TorchColorizer

log = logging.getLogger(__name__)


# The PyTorch runs: the network alone, one batch per camera count (`iterations` timed calls each), then the
# paced Pipeline with that many cameras, every camera the same clip (`clip_s` long) played once. The GPU run
# takes about a minute of measuring; torch-cpu is sized for the test suite.
TORCH_PLANS = {
    "cuda": {"device": "cuda", "camera_size": (1920, 1080), "cameras": (8, 32, 64), "camera_fps": 50.0,
             "colour_device": "cuda", "iterations": 20, "clip_s": 6.0},
    "torch-cpu": {"device": "cpu", "camera_size": (640, 360), "cameras": (1, 2), "camera_fps": CLIP_FPS,
                  "colour_device": "cpu", "iterations": 2, "clip_s": 2.0},
}
KEEPS_UP = 0.95  # of the camera's frame rate delivered: the pipeline keeps up, nothing limits it
SATURATED = 0.8  # of the inference thread's time, or of the usable cores: that stage is the limit


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

    from streamd.colour.lab import ab_bins
    from streamd.infer.pytorch import TorchColorizer
    from streamd.model.network import ECCV16, AnnealedMean

    eccv16 = TorchColorizer(AnnealedMean(ECCV16(len(ab_bins())), torch.from_numpy(ab_bins()),
                                         colorizer.info.temperature), colorizer.info, None, plan["device"])
    size = plan["camera_size"]

    def preprocess(cameras: int) -> np.ndarray:
        frames = [fresh_gray_frame(size) for _ in range(cameras)]
        return np.stack([luma_to_lightness(f, NETWORK_INPUT) for f in frames])[:, None]

    rows = []
    for cameras in plan["cameras"]:
        lightness = preprocess(cameras)
        preprocess_ms = statistics.median(seconds_of(lambda: preprocess(cameras)) for _ in range(5)) * 1000.0
        row = {"cameras": cameras, "camera_size": f"{size[0]}x{size[1]}", "batch": cameras,
               "preprocess_ms_per_batch": preprocess_ms}
        for name, network in (("ours", colorizer), ("eccv16", eccv16)):
            for _ in range(3):  # untimed: memory allocation and kernel selection for this batch size
                network(lightness)
            batch_ms = statistics.median(seconds_of(lambda: network(lightness))
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
    """CPU time per frame to decode the clip into Frames as a camera of a host with more cameras than cores
    does (one decoder thread): the paced pipeline decodes inside each camera's thread, where it cannot be
    timed apart."""
    cpu_start = time.process_time()
    count = sum(1 for _ in clip_frames(clip, "decode", threads=1))
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


def measure_torch(plan: dict, result: dict, work: Path, hwaccel: str = "") -> dict:
    """The network alone and the pipeline in this process (processes.measure_processes: over several)."""
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
