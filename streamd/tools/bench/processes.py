"""`streamd bench --device cuda --processes P --cameras C`: the paced pipeline as P processes of C cameras
each on one host, as several instances of the systemd template unit run them, against one process.

The camera threads of one process share one interpreter, so past a handful of cameras they wait on each
other; separate processes do not. Every process loads the model and warms up, then all start their
cameras together (a barrier, so none measures while another is still loading), and the frames they
deliver are summed.
"""
from __future__ import annotations

import logging
import multiprocessing
import queue
import statistics
import tempfile
import threading
import time
from pathlib import Path

from streamd.steps import set_up_threads
from streamd.tools.bench.inputs import make_clip
from streamd.tools.bench.pytorch import check_torch_device, torch_colorizer, warm_up
from streamd.tools.bench.throughput import run_paced
from streamd.tools.bench.timing import machine_info, peak_rss_mib

log = logging.getLogger(__name__)

START_TIMEOUT_S = 300.0  # for every process to load the model and warm up (CUDA start-up, graph capture)


def run_process(index: int, device: str, clip: str, cameras: int, fps: float, colour_device: str, hwaccel: str,
                barrier: threading.Barrier, results: multiprocessing.Queue) -> None:
    """One process: load, warm up, wait for the others, then the real pipeline with `cameras` cameras."""
    set_up_threads()  # as in a daemon's process
    try:
        colorizer = torch_colorizer(device)
        warm_up(colorizer, cameras)
        ready = time.time()
        barrier.wait(START_TIMEOUT_S)
        started = time.time()
        with tempfile.TemporaryDirectory(prefix="streamd-bench-") as work:
            run = run_paced(Path(clip), cameras, colorizer, Path(work), encode=False, batch_max=cameras,
                            fps=fps, colour_device=colour_device, hwaccel=hwaccel)
        results.put({"process": index, "cameras": cameras, "ready": ready, "started": started, **run})
    except BaseException as e:  # noqa: BLE001 - whatever stops one process is reported, and frees the others
        barrier.abort()
        results.put({"process": index, "error": f"{type(e).__name__}: {e}"})


def collect(processes: list, results: multiprocessing.Queue, barrier: threading.Barrier) -> list[dict]:
    """One result per process; a process that died without one (killed, crashed) breaks the barrier, so the
    others stop waiting, and is reported as failed."""
    got: dict[int, dict] = {}
    while len(got) < len(processes):
        try:
            result = results.get(timeout=1.0)
            got[result["process"]] = result
        except queue.Empty:
            dead = [i for i, p in enumerate(processes) if p.exitcode is not None and i not in got]
            if dead:
                barrier.abort()
                if all(p.exitcode is not None for p in processes) and results.empty():
                    got.update({i: {"process": i, "error": f"exited with code {processes[i].exitcode}"}
                                for i in dead})
    for p in processes:
        p.join()
    return [got[i] for i in range(len(processes))]


def layout(plan: dict, clip: Path, processes: int, cameras: int, hwaccel: str) -> dict:
    """P processes of C cameras each, started together: the sum of their delivered frames, the median of
    their median latencies and the worst p99, and the cores they used together."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, as separate daemons are
    barrier, results = context.Barrier(processes), context.Queue()
    procs = [context.Process(target=run_process, name=f"streamd-bench-{i}",
                             args=(i, plan["device"], str(clip), cameras, plan["camera_fps"], plan["colour_device"],
                                   hwaccel, barrier, results)) for i in range(processes)]
    for p in procs:
        p.start()
    runs = collect(procs, results, barrier)
    row = {"processes": processes, "cameras_per_process": cameras, "cameras": processes * cameras,
           "failed": [r["error"] for r in runs if "error" in r], "per_process": runs}
    done = [r for r in runs if "error" not in r]
    if done and not row["failed"]:
        row.update({"total_fps": sum(r["delivered_fps_per_camera"] * r["cameras"] for r in done),
                    "sent": sum(r["sent"] for r in done), "published": sum(r["published"] for r in done),
                    "dropped": sum(r["dropped"] for r in done),
                    "latency_p50_ms_median": statistics.median(r["latency_p50_ms"] for r in done),
                    "latency_p99_ms_max": max(r["latency_p99_ms"] for r in done),
                    "cpu_cores": sum(r["cpu_cores"] for r in done),
                    "last_ready_to_first_start_s": min(r["started"] for r in done) - max(r["ready"] for r in done)})
    return row


def processes_section(plan: dict, processes: int, work: Path, hwaccel: str) -> dict:
    size = plan["camera_size"]
    clip = work / f"gray-{size[0]}x{size[1]}.mp4"
    make_clip(clip, size, plan["clip_s"], fps=plan["camera_fps"])
    rows = []
    for cameras in plan["cameras"]:
        row = layout(plan, clip, processes, cameras, hwaccel)
        rows.append(row)
        if row["failed"]:
            print(f"{processes} x {cameras} cameras: FAILED, {'; '.join(row['failed'])}", flush=True)
        else:
            print(f"{processes} x {cameras} cameras: {row['total_fps']:.1f} fps, p99 "
                  f"{row['latency_p99_ms_max']:.0f} ms (worst process), {row['cpu_cores']:.2f} cores", flush=True)
    return {"processes": processes, "outputs": "none: frames are finished and counted as published, not encoded",
            "colour_device": plan["colour_device"], "hwaccel": hwaccel, "rows": rows}


def measure_processes(plan: dict, result: dict, work: Path, hwaccel: str, processes: int) -> dict:
    """The cameras over several processes: the parent loads no model of its own."""
    check_torch_device(plan["device"])
    result["machine"] = machine_info(f"torch-{plan['device']}")
    result["settings"] = {"device": plan["device"], "camera_size": "x".join(map(str, plan["camera_size"])),
                          "cameras": list(plan["cameras"]), "camera_fps": plan["camera_fps"],
                          "clip_seconds": plan["clip_s"], "processes": processes, "hwaccel": hwaccel}
    result["torch_processes"] = processes_section(plan, processes, work, hwaccel)
    result["peak_rss_mib"] = peak_rss_mib()
    return result
