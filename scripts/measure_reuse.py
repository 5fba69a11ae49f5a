"""What reusing predictions (streamd.batch.Reuse: still scenes, `reuse_still_s`, and moving ones carried along
the flow, `carry_frames`) costs in quality and saves in network runs: each video is colorized twice through
the live pipeline's own steps (predict_changed with Reuse, finish with Temporal), once with the network on
every frame and once with reuse, and both are scored against the truth (docs/temporal.md, "Still scenes"
and "Moving scenes").

    python scripts/measure_reuse.py ../shared/data/val/videos --max-frames 300
    python scripts/measure_reuse.py ../shared/data/val/davis --max-frames 40

ONNX Runtime runs on one thread (--threads) so that the timings do not depend on what else the machine runs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import av
import cv2
import numpy as np

from streamd import evaluate as ev
from streamd.batch import Reuse
from streamd.colour import Temporal
from streamd.infer import Colorizer
from streamd.offline import gray_frame
from streamd.pipeline import finish, predict_changed


def colorize(colorizer: Colorizer, frames: list[np.ndarray], fps: float,
             reuse: Reuse | None) -> tuple[list, int, float]:
    """RGB frames -> (colorized RGB frames, network runs, median ms per frame of network + reuse + colour)."""
    size = (colorizer.info.input_height, colorizer.info.input_width)
    temporal = Temporal()
    out, runs, times = [], 0, []
    for i, rgb in enumerate(frames):
        frame, (h, w) = gray_frame(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        frame.arrival = i / fps
        start = time.perf_counter()
        runs += predict_changed(colorizer, [frame], [reuse], size)
        finish(frame, temporal)
        times.append(time.perf_counter() - start)
        out.append(cv2.cvtColor(frame.to_bgr()[:h, :w], cv2.COLOR_BGR2RGB))
    return out, runs, statistics.median(times) * 1000


def scores(outputs: list[np.ndarray], truth: list[np.ndarray], flows: list) -> dict[str, float]:
    hist = sum(ev.ab_histogram(o, t) for o, t in zip(outputs, truth))
    return {"psnr": float(np.mean([min(ev.psnr(o, t), 100.0) for o, t in zip(outputs, truth)])),
            "auc_rebal": ev.auc(hist, rebalanced=True),
            "cf_ratio": float(np.mean([ev.colorfulness(o) for o in outputs])
                              / max(1e-6, np.mean([ev.colorfulness(t) for t in truth]))),
            "warp": ev.warp_error(outputs, None, flows)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--max-frames", type=int, default=300)
    p.add_argument("--reuse-s", type=float, default=1.0)
    p.add_argument("--carry-frames", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    colorizer = Colorizer(threads=args.threads)
    print(f"model {colorizer.info.model_id}; reuse_still_s {args.reuse_s}, carry_frames {args.carry_frames}")
    print(f"{'video':24} {'frames':>6} {'runs':>5} {'PSNR':>13} {'AuC rebal':>13} {'CF ratio':>13} "
          f"{'warp error':>21} {'ms/frame':>13}")
    for source in ev.video_sources(args.folder):
        truth = ev.read_video(source, args.max_frames)
        fps = 25.0  # frame folders (DAVIS) were shot at about 25 fps
        if source.is_file():
            with av.open(str(source)) as container:
                fps = float(container.streams.video[0].average_rate or fps)
        every, _, every_ms = colorize(colorizer, truth, fps, None)
        reused, runs, reused_ms = colorize(colorizer, truth, fps, Reuse(args.reuse_s, args.carry_frames))
        flows = ev.flow_pairs(truth)  # from the gray input: the truth's luma
        a, b = scores(every, truth, flows), scores(reused, truth, flows)
        print(f"{source.name[:24]:24} {len(truth):6d} {runs:5d} {a['psnr']:6.2f}>{b['psnr']:6.2f} "
              f"{a['auc_rebal']:6.2f}>{b['auc_rebal']:6.2f} {a['cf_ratio']:6.3f}>{b['cf_ratio']:6.3f} "
              f"{a['warp']:.3e}>{b['warp']:.3e} {every_ms:6.1f}>{reused_ms:6.1f}", flush=True)


if __name__ == "__main__":
    main()
