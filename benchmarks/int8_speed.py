"""fp32 against int8, the network alone, in one process: two Colorizer sessions (streamd's own session
settings: ONNX Runtime's default intra-op threads unless --threads, allow_spinning = 0), the same 320x192
input made by streamd.bench from a gray 720p frame, batches 1 and 8, rounds interleaved so both models
see the same background load; medians and quartiles in ms per frame.

    python3 benchmarks/int8_speed.py models/streamd-base.onnx streamd-base-int8.onnx --rounds 30
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from streamd.bench import lightness_batch
from streamd.infer import Colorizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    args = parser.parse_args()
    sessions = {name: Colorizer(path, provider="cpu", threads=args.threads)
                for name, path in (("fp32", args.fp32), ("int8", args.int8))}
    print(f"load average at start {os.getloadavg()}, intra-op threads {args.threads or 'default'}")
    for batch in (1, 8):
        lightness = lightness_batch((192, 320), batch)
        for session in sessions.values():  # untimed: thread pool and memory arena set-up
            session(lightness)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.rounds):
            for name, session in sessions.items():
                start = time.perf_counter()
                session(lightness)
                times[name].append((time.perf_counter() - start) * 1000.0 / batch)
        stats = {name: statistics.quantiles(t, n=4) for name, t in times.items()}  # [q1, median, q3]
        print(f"batch {batch}: " + ", ".join(f"{name} {q[1]:.1f} ms/frame (quartiles {q[0]:.1f}-{q[2]:.1f})"
                                            for name, q in stats.items())
              + f", fp32 / int8 {stats['fp32'][1] / stats['int8'][1]:.2f}", flush=True)
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
