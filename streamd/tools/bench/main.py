"""`streamd bench`: how close streamd comes to the physical limit of the machine it runs on.

Everything is measured in one run, on the same machine and the same inputs, so the numbers compare:

* pass-through: decode + H.264 encode only, the most any pipeline can deliver here;
* streamd, unpaced: decode -> colorize (one batch across the cameras) -> encode, every frame, serially,
  as a throughput ratio to pass-through (throughput.py);
* streamd, paced: the real Pipeline fed by files played at 25 fps, as cameras send them: delivered fps,
  dropped frames, capture-to-publish latency, CPU cores and peak memory (throughput.py);
* the network alone: the shipped model against Zhang et al.'s ECCV16 architecture in identical ONNX
  Runtime sessions (network.py).

`--device cuda` measures through PyTorch instead (pytorch.py), `--device torch-cpu` the same on the CPU, small
enough for the test suite. `--processes P --cameras C` runs only that pipeline, as P processes of C cameras
each started together (processes.py); `--frame-cost WxH` only the CPU time of each per-frame step of one
camera (frame_cost.py); `--reference WxH` what colour from a day reference costs per frame against the
generic path (reference_cost.py); `--triton HOST:PORT` only the network and the pipeline on a Triton server
against ONNX Runtime in the process (triton_cost.py). report.py makes the tables.

Every number is the median over `--repeats` runs. The inputs are gray H.264 clips made here from the
synthetic camera (real photos, panned and zoomed), so no file has to be shipped or downloaded (inputs.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import shlex
import sys
import tempfile
from pathlib import Path

from streamd.infer.onnx_runtime import Colorizer
from streamd.tools.bench import frame_cost, processes, reference_cost, triton_cost
from streamd.tools.bench.inputs import CLIP_FPS, make_clip
from streamd.tools.bench.network import NETWORK_ROUNDS, network_section, per_camera_models_section
from streamd.tools.bench.pytorch import TORCH_PLANS, measure_torch
from streamd.tools.bench.report import report
from streamd.tools.bench.throughput import video_sections
from streamd.tools.bench.timing import BenchUnavailable, machine_info, peak_rss_mib


# stage_frames: frames per unpaced streamd measurement, all cameras together (at least two network runs and
# what is carried after them, per camera).
# paced_s: the paced pipeline's clips, long enough that the cameras' start (codecs opening, every camera's first
# frame through the network at once) weighs as little as in a camera's day.
FULL = {"sizes": [(640, 360), (1280, 720), (1920, 1080)], "cameras": [1, 2, 4, 8], "clip_s": 2.5, "paced_s": 10.0,
        "repeats": 3, "stage_frames": 16, "network_sizes": [(224, 224), (192, 320)], "still_sizes": [(1280, 720)],
        "still_cameras": [1, 4, 8]}
SHORT = {"sizes": [(640, 360), (1280, 720)], "cameras": [1, 2], "clip_s": 2.0, "paced_s": 2.0, "repeats": 2, "stage_frames": 6,
         "network_sizes": [(192, 320)], "still_sizes": [(1280, 720)], "still_cameras": [1]}
FRAME_COST_FRAMES, FRAME_COST_FRAMES_SHORT = 100, 25  # --frame-cost: frames of the clip timed
EXIT_FAILED = 1  # a section failed; the others' results are reported
EXIT_UNAVAILABLE = 2


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
        size = resolution(args.frame_cost)
        clip = work / "frame-cost.mp4"
        make_clip(clip, size, (FRAME_COST_FRAMES_SHORT if args.short else FRAME_COST_FRAMES) / CLIP_FPS)
        result["machine"] = machine_info(None)
        result["frame_cost"] = {"resolution": f"{size[0]}x{size[1]}", **frame_cost.frame_cost(clip)}
        return result
    if args.reference:
        result["machine"] = machine_info("CPUExecutionProvider")
        result["reference_cost"] = reference_cost.reference_cost(resolution(args.reference), work, args.short)
        return result
    if args.triton:
        result["machine"] = machine_info("CPUExecutionProvider")
        result["triton"] = triton_cost.triton_section(args.triton, args.triton_model, args.short,
                                                      args.repeats or (SHORT if args.short else FULL)["repeats"], work)
        return result
    if args.device in TORCH_PLANS:
        plan = TORCH_PLANS[args.device]
        if args.cameras:
            plan = {**plan, "cameras": tuple(args.cameras)}
        if args.processes > 1:
            return processes.measure_processes(plan, result, work, args.hwaccel, args.processes)
        return measure_torch(plan, result, work, args.hwaccel)
    plan = SHORT if args.short else FULL
    repeats = args.repeats or plan["repeats"]
    colorizer = Colorizer(int8="auto")  # what the daemon runs by default
    fp32 = Colorizer()
    result["machine"] = machine_info(colorizer.provider)
    result["settings"] = {"short": args.short, "repeats": repeats, "clip_seconds": plan["clip_s"],
                          "paced_clip_seconds": plan["paced_s"],
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
