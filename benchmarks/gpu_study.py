"""What holds the real pipeline back on a GPU host: the same paced 1080p run (cameras at 50 fps, no
outputs) under one change at a time, so each change's effect is measured in one process on one machine.

    python3 benchmarks/gpu_study.py OUT_DIR [--device cuda|cpu]

The first bench run on the lent H200 (BENCHMARKS.md, GPU) delivered 90 fps from 32 cameras with the
inference thread and the colour step each 20-40x slower than alone, while only half the 16 cores were
busy: threads waiting, not work. The steps:
  eager       the network launched op by op (as before CUDA graphs), colour on the cameras' threads
  graphs      the network replayed from a CUDA graph (one Python call instead of some hundred launches)
  gpu-colour  and the full-resolution colour batched on the GPU ([colour] device = "cuda")
  nvdec       and the cameras decoded on NVDEC (hwaccel = "cuda", PyAV's HWAccel; frames back in system memory)
then gpu-colour at the other camera counts. (Also tried, on 2026-11-27, and no help: a 1 ms or 0.2 ms
GIL switch interval, 2 FFmpeg decoder threads per camera, OpenCV's thread pool off.)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from streamd import bench
from streamd.infer_torch import load_torch_colorizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cameras", type=int, default=32)
    parser.add_argument("--final-cameras", type=int, nargs="*", default=[8, 64])
    parser.add_argument("--size", type=int, nargs=2, default=(1920, 1080))
    parser.add_argument("--fps", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp())
    clip = work / "clip.mp4"
    bench.make_clip(clip, tuple(args.size), args.seconds, fps=args.fps)
    eager = load_torch_colorizer(device=args.device)
    graphs = load_torch_colorizer(device=args.device)
    eager.cuda_graphs = False
    bench.warm_up(eager, max([args.cameras, *args.final_cameras]))
    bench.warm_up(graphs, max([args.cameras, *args.final_cameras]))
    gpu_colour = args.device  # on a CPU-only host (trying the script out), the same stage on torch's CPU

    rows = []

    def measure(step: str, cameras: int, colorizer, colour_device: str, hwaccel: str = "") -> None:
        run = bench.run_paced(clip, cameras, colorizer, work, encode=False, batch_max=cameras, fps=args.fps,
                              colour_device=colour_device, hwaccel=hwaccel)
        row = {"step": step, "cameras": cameras, "total_fps": run["delivered_fps_per_camera"] * cameras, **run}
        rows.append(row)
        print(f"{step:10s} x{cameras}: {row['total_fps']:7.1f} fps, p50 {run['latency_p50_ms']:6.0f} ms, "
              f"p99 {run['latency_p99_ms']:6.0f} ms, CPU {run['cpu_cores']:5.2f} cores, infer "
              f"{run['inference_ms_per_batch']:6.1f} ms/batch of {run['frames_per_batch']:.1f}, finish "
              f"{run['finish_ms_per_frame']:6.1f} ms/frame", flush=True)

    measure("eager", args.cameras, eager, "cpu")
    measure("graphs", args.cameras, graphs, "cpu")
    measure("gpu-colour", args.cameras, graphs, gpu_colour)
    measure("nvdec", args.cameras, graphs, gpu_colour, hwaccel="cuda")  # on a CPU host: falls back, warns
    for cameras in args.final_cameras:
        measure("gpu-colour", cameras, graphs, gpu_colour)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": graphs.device_name, "size": args.size,
              "camera_fps": args.fps, "clip_seconds": args.seconds, "pipeline": rows}
    (args.out / "gpu_study.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
