"""What holds the real pipeline back on a GPU host: the same paced 1080p run (cameras at 50 fps, no
outputs) under one change at a time, so each change's effect is measured in one process on one machine.

    python3 benchmarks/gpu_study.py OUT_DIR [--device cuda|cpu]

The first bench run on the lent H200 (BENCHMARKS.md, GPU) delivered 90 fps from 32 cameras with the
inference thread and the colour step each 20-40x slower than alone, while only half the 16 cores were
busy: threads waiting, not work. The candidates, added one at a time:
  graphs    the network replayed from a CUDA graph (one Python call instead of some hundred launches)
  switch    sys.setswitchinterval(1 ms) instead of 5 ms: a thread waiting for the GIL gets it sooner
  cv1       OpenCV's own thread pool off (cv2.setNumThreads(1)): the cameras' threads are the parallelism
  switch02  sys.setswitchinterval(0.2 ms)
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2

from streamd import bench
from streamd.infer_torch import load_torch_colorizer

STEPS = ("eager", "graphs", "switch", "cv1", "switch02")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cameras", type=int, nargs="+", default=[32])
    parser.add_argument("--final-cameras", type=int, nargs="+", default=[8, 64])
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
    max_cameras = max(args.cameras + args.final_cameras)
    bench.warm_up(eager, max_cameras)
    bench.warm_up(graphs, max_cameras)

    network = []
    for batch in (8, 32, 64):
        lightness = bench.lightness_batch(bench.NETWORK_INPUT, batch)
        row = {"batch": batch}
        for name, colorizer in (("eager", eager), ("graphs", graphs)):
            times = sorted(bench._seconds(lambda: colorizer(lightness)) for _ in range(20))
            row[f"{name}_ms"] = times[len(times) // 2] * 1000.0
        network.append(row)
        print(f"network batch {batch}: eager {row['eager_ms']:.2f} ms, graphs {row['graphs_ms']:.2f} ms", flush=True)

    rows = []

    def measure(step: str, cameras: int, colorizer, camera_options: dict) -> None:
        run = bench.run_paced(clip, cameras, colorizer, work, encode=False, batch_max=cameras, fps=args.fps,
                              camera_options=camera_options)
        row = {"step": step, "cameras": cameras, "total_fps": run["delivered_fps_per_camera"] * cameras, **run}
        rows.append(row)
        print(f"{step:8s} x{cameras}: {row['total_fps']:7.1f} fps, p50 {run['latency_p50_ms']:6.0f} ms, "
              f"p99 {run['latency_p99_ms']:6.0f} ms, CPU {run['cpu_cores']:5.2f} cores, infer "
              f"{run['inference_ms_per_batch']:6.1f} ms/batch of {run['frames_per_batch']:.1f}, finish "
              f"{run['finish_ms_per_frame']:6.1f} ms/frame, busy {run['inference_busy']:.2f}", flush=True)

    options: dict = {}
    for step in STEPS:
        if step == "switch":
            sys.setswitchinterval(0.001)
        elif step == "cv1":
            cv2.setNumThreads(1)
        elif step == "switch02":
            sys.setswitchinterval(0.0002)
        for cameras in args.cameras:
            measure(step, cameras, eager if step == "eager" else graphs, options)
    for cameras in args.final_cameras:
        measure("all", cameras, graphs, options)
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": graphs.device_name, "size": args.size,
              "camera_fps": args.fps, "clip_seconds": args.seconds, "network": network, "pipeline": rows}
    (args.out / "gpu_study.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
