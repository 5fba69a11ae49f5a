"""How `streamd bench` measures: medians over repeated runs, networks called in turn so that a slow moment of a
shared machine falls on all of them alike, the process's peak memory and the machine measured on; and
BenchUnavailable, for what a measurement needs that this host lacks."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import onnxruntime as ort


class BenchUnavailable(Exception):
    """What the requested benchmark needs is missing here (CUDA, torch, trained weights)."""


def seconds_of(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


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
    return network_timing([seconds_of(lambda: run(lightness)) for _ in range(repeats)], len(lightness))


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
            seconds[name].append(seconds_of(lambda: run(lightness)))
    return seconds


def median_ratio(numerator_s: list[float], denominator_s: list[float]) -> float:
    """The fps ratio numerator / denominator as the median of the rounds' own ratios."""
    return statistics.median(d / n for n, d in zip(numerator_s, denominator_s))


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
