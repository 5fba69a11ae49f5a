"""Cameras spread over several streamd processes on one GPU host, against all of them in one process.

    python3 benchmarks/gpu_shards.py OUT_DIR [--device cuda] [--layouts 1x32 4x8 8x4 8x8]

One process tops out near 300 1080p frames/s on the lent H200 host whatever the camera count, with half
the cores idle (BENCHMARKS.md, GPU): its camera threads wait on each other (the GIL). Separate processes
(one `streamd run` per group of cameras, as the systemd template unit runs them) each have their own.
A layout PxC runs P processes of C cameras each at the same moment: each process loads the model and warms
up, then all start playing at one agreed time; the delivered frames/s are summed. PxC:cv1 limits OpenCV's
thread pool to one thread per process: with many processes, a pool of one thread per core in each, woken
for every small call on the network's grid, may cost more than it gives (untested on a GPU host yet).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARM_UP_S = float(os.environ.get("WARM_UP_S", 40.0))  # from launch to the agreed start: imports, CUDA start-up, CUDA graph capture


def shard(args: argparse.Namespace) -> None:
    """One process: the real pipeline with `args.cameras` cameras, started at `args.start_at`."""
    from streamd import bench
    from streamd.infer_torch import load_torch_colorizer

    colorizer = load_torch_colorizer(device=args.device)
    bench.warm_up(colorizer, args.cameras)
    ready = time.time()
    time.sleep(max(0.0, args.start_at - time.time()))
    started = time.time()
    run = bench.run_paced(Path(args.clip), args.cameras, colorizer, Path(tempfile.mkdtemp()), encode=False,
                          batch_max=args.cameras, fps=args.fps, colour_device=args.colour_device)
    Path(args.json).write_text(json.dumps({**run, "cameras": args.cameras, "ready": ready, "started": started,
                                           "ended": time.time()}))


def layout(clip: Path, processes: int, cameras: int, args: argparse.Namespace, opencv_threads: int = 0) -> dict:
    """`opencv_threads` > 0: OpenCV's thread pool in each process limited to that many (0: one per core)."""
    start_at = time.time() + WARM_UP_S
    env = {**os.environ, **({"OPENCV_FOR_THREADS_NUM": str(opencv_threads)} if opencv_threads else {})}
    # beside the clip, not in the output folder, whose every file is copied back from a lent machine
    paths = [clip.parent / f"shard-{processes}x{cameras}-{i}.json" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, __file__, "--shard", "--clip", str(clip), "--cameras", str(cameras),
                               "--start-at", str(start_at), "--json", str(path), "--device", args.device,
                               "--fps", str(args.fps), "--colour-device", args.colour_device], env=env)
             for path in paths]
    codes = [p.wait() for p in procs]
    shards = [json.loads(p.read_text()) for p in paths if p.exists()]
    for p in paths:
        p.unlink(missing_ok=True)
    row = {"processes": processes, "cameras_per_process": cameras, "cameras": processes * cameras,
           "opencv_threads": opencv_threads or "default", "failed_processes": sum(c != 0 for c in codes)}
    if shards:
        row.update({
            "total_fps": sum(s["delivered_fps_per_camera"] * s["cameras"] for s in shards),
            "latency_p50_ms_median": statistics.median(s["latency_p50_ms"] for s in shards),
            "latency_p99_ms_max": max(s["latency_p99_ms"] for s in shards),
            "cpu_cores": sum(s["cpu_cores"] for s in shards),
            "late_start_s": max(s["started"] for s in shards) - start_at,  # > 0: a process missed the start
            "ready_before_start_s": start_at - max(s["ready"] for s in shards),
        })
    print(f"{processes} x {cameras}{f' (OpenCV {opencv_threads} thread)' if opencv_threads else ''}: "
          f"{row.get('total_fps', 0):7.1f} fps, p99 max "
          f"{row.get('latency_p99_ms_max', float('nan')):6.0f} ms, CPU {row.get('cpu_cores', 0):5.2f} cores, "
          f"ready {row.get('ready_before_start_s', float('nan')):.1f} s before the start, "
          f"failed {row['failed_processes']}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, nargs="?")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--colour-device", default="cuda")
    parser.add_argument("--layouts", nargs="+", default=["1x32", "4x8", "8x4", "8x8", "8x8:cv1"],
                        help="PROCESSESxCAMERAS, with :cv1 for OpenCV's pool limited to one thread per process")
    parser.add_argument("--size", type=int, nargs=2, default=(1920, 1080))
    parser.add_argument("--fps", type=float, default=50.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clip", help=argparse.SUPPRESS)
    parser.add_argument("--cameras", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shard:
        shard(args)
        return
    from streamd import bench

    args.out.mkdir(parents=True, exist_ok=True)
    clip = Path(tempfile.mkdtemp()) / "clip.mp4"
    bench.make_clip(clip, tuple(args.size), args.seconds, fps=args.fps)
    rows = []
    for spec in args.layouts:
        shape, _, option = spec.partition(":")
        processes, cameras = map(int, shape.split("x"))
        rows.append(layout(clip, processes, cameras, args, opencv_threads=1 if option == "cv1" else 0))
    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "size": args.size, "camera_fps": args.fps,
              "clip_seconds": args.seconds, "colour_device": args.colour_device, "layouts": rows}
    (args.out / "gpu_shards.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
