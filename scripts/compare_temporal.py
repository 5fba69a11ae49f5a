"""Temporal stabilisation variants on the same predictions: the network runs once per frame, and every
variant finishes those predictions through `streamd.pipeline.finish`, so the differences are the
variants' alone (docs/temporal.md, "Motion compensation").

    python scripts/compare_temporal.py ../shared/data/val/davis --max-frames 20
    python scripts/compare_temporal.py ../shared/data/val/videos --max-frames 120

Prints, per variant against per-frame mode: warp error (and its change above the gray baseline's), CDC
ratio to the truth's, rebalanced-AuC and colourfulness differences, and the median time per frame of the
temporal step next to the per-frame pipeline's (gray frame, network, recombine). ONNX Runtime runs on one
thread (--threads), so that the timings are not those of a machine it has to itself.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from streamd import evaluate as ev
from streamd.colour import Temporal
from streamd.infer import Colorizer
from streamd.offline import gray_frame, input_size_for
from streamd.pipeline import finish, predict


class Unaligned(Temporal):
    """The change-weighted blend without motion compensation (streamd before 2026-11-26): the previous
    result is compared and blended in place, so anything that moves, the camera included, is not held."""

    def __call__(self, lightness: np.ndarray, ab: np.ndarray, now: float) -> np.ndarray:
        previous, prev_l = self._ab, self._lightness
        fresh = previous is None or previous.shape != ab.shape or now - self._time > self.MAX_GAP_S
        out = ab
        if not fresh:
            change = cv2.blur(np.abs(lightness - prev_l), (3, 3))
            if (change > self.CHANGE_L).mean() < self.CUT_FRACTION:
                weight = self.HOLD * np.exp(-(change / self.CHANGE_L) ** 2)
                out = (weight * previous + (1.0 - weight) * ab).astype(np.float32)
        self._lightness, self._ab, self._time = lightness, out, now
        return out


VARIANTS: dict[str, Callable[[], Temporal]] = {"unaligned": Unaligned, "motion-compensated": Temporal}


class Scores:
    """The metrics of the comparison that need every frame: colourfulness and the set-wide ab histogram
    (for the rebalanced AuC); streamd eval's other image metrics are left out to save the loaded CPU."""

    def __init__(self) -> None:
        self.colorfulness: list[float] = []
        self.hist = np.zeros((ev.CELL_SIDE ** 2, ev.AUC_MAX + 2), dtype=np.int64)

    def add(self, out_rgb: np.ndarray, truth_rgb: np.ndarray) -> None:
        self.colorfulness.append(ev.colorfulness(out_rgb))
        self.hist += ev.ab_histogram(out_rgb, truth_rgb)


class Timed:
    """A temporal state that records how long each of its calls takes."""

    def __init__(self, state: Temporal) -> None:
        self.state, self.seconds = state, []

    def __call__(self, lightness: np.ndarray, ab: np.ndarray, now: float) -> np.ndarray:
        start = time.perf_counter()
        out = self.state(lightness, ab, now)
        self.seconds.append(time.perf_counter() - start)
        return out


def run_video(colorizer: Colorizer, truth: list[np.ndarray], fps: float = 25.0) -> tuple[dict, dict]:
    """RGB outputs per label (gray, per-frame, each variant) and timings (s per frame) per label."""
    area = colorizer.info.input_height * colorizer.info.input_width
    states = {name: Timed(make()) for name, make in VARIANTS.items()}
    outputs: dict[str, list[np.ndarray]] = {label: [] for label in [ev.GRAY, "per-frame", *states]}
    pipeline_s = []
    for i, rgb in enumerate(truth):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        start = time.perf_counter()
        frame, (h, w) = gray_frame(bgr)
        predict(colorizer, [frame], input_size_for(frame.width, frame.height, area))
        prediction = frame.prediction
        out = finish(frame).to_bgr()[:h, :w]
        pipeline_s.append(time.perf_counter() - start)  # the per-frame pipeline, as colorize_sequence runs it
        outputs[ev.GRAY].append(ev.gray_baseline(rgb))
        outputs["per-frame"].append(cv2.cvtColor(out, cv2.COLOR_BGR2RGB))
        for name, state in states.items():
            frame, _ = gray_frame(bgr)
            frame.arrival, frame.prediction = i / fps, prediction
            outputs[name].append(cv2.cvtColor(finish(frame, state).to_bgr()[:h, :w], cv2.COLOR_BGR2RGB))
    return outputs, {"per-frame": pipeline_s, **{name: s.seconds for name, s in states.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="videos, or folders of numbered frames (as streamd eval --videos)")
    parser.add_argument("--max-frames", type=int, default=ev.VIDEO_MAX_FRAMES)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    colorizer = Colorizer(threads=args.threads)
    labels = ["per-frame", *VARIANTS]
    scores = {label: Scores() for label in labels}
    truth_colorfulness: list[float] = []
    per_video: dict[str, dict] = {}
    timings: dict[str, list[float]] = {label: [] for label in labels}
    for source in ev.video_sources(args.folder):
        truth = ev.read_video(source, args.max_frames)
        outputs, seconds = run_video(colorizer, truth)
        for label, values in seconds.items():
            timings[label] += values
        for i, frame in enumerate(truth):
            truth_colorfulness.append(ev.colorfulness(frame))
            for label in labels:
                scores[label].add(outputs[label][i], frame)
        flows = ev.flow_pairs(truth)
        per_video[source.name] = {label: {"cdc": ev.cdc(frames), "warp_error": ev.warp_error(frames, None, flows)}
                                  for label, frames in [*outputs.items(), (ev.TRUTH, truth)]}
        row = per_video[source.name]
        print(f"{source.name}: " + ", ".join(
            f"{label} {row[label]['warp_error']:.3e} ({ev._relative_pct(row[label]['warp_error'], row['per-frame']['warp_error']):+.1f} %)"
            for label in labels), flush=True)
    rows = {label: {key: float(np.mean([video[label][key] for video in per_video.values()]))
                    for key in ("cdc", "warp_error")} for label in [ev.GRAY, *labels, ev.TRUTH]}
    for label in labels:
        rows[label]["colorfulness"] = float(np.mean(scores[label].colorfulness))
        rows[label]["colorfulness_ratio"] = rows[label]["colorfulness"] / float(np.mean(truth_colorfulness))
        rows[label]["auc_rebalanced"] = ev.auc(scores[label].hist, rebalanced=True)
    base, gray, truth_cdc = rows["per-frame"], rows[ev.GRAY], rows[ev.TRUTH]["cdc"]
    pipeline_ms = 1000 * statistics.median(timings["per-frame"])
    print(f"\n{args.folder} ({len(per_video)} videos, {len(truth_colorfulness)} frames, model {colorizer.info.model_id}, "
          f"T = {colorizer.info.temperature:g}); gray warp {gray['warp_error']:.3e}, truth warp "
          f"{rows[ev.TRUTH]['warp_error']:.3e}, truth CDC {truth_cdc:.5f}; per-frame pipeline {pipeline_ms:.1f} ms/frame")
    print("| | warp error | change | above gray | CDC / truth's | AuC rebal | dAuC | CF ratio | dCF | step ms | of pipeline |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label in labels:
        row = rows[label]
        step = 1000 * statistics.median(timings[label]) if label != "per-frame" else 0.0
        print(f"| {label} | {row['warp_error']:.3e} | {ev._relative_pct(row['warp_error'], base['warp_error']):+.1f} % "
              f"| {ev._relative_pct(row['warp_error'] - gray['warp_error'], base['warp_error'] - gray['warp_error']):+.1f} % "
              f"| {row['cdc'] / truth_cdc:.2f} | {row['auc_rebalanced']:.2f} "
              f"| {row['auc_rebalanced'] - base['auc_rebalanced']:+.2f} | {row['colorfulness_ratio']:.3f} "
              f"| {ev._relative_pct(row['colorfulness'], base['colorfulness']):+.1f} % | {step:.2f} "
              f"| {100 * step / pipeline_ms:.1f} % |")


if __name__ == "__main__":
    main()
