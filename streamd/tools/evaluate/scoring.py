"""Each subset through the models and scored, beside the gray baseline: the gray baseline is the ground truth
with its chroma removed (Lab a = b = 0), what a viewer gets with no colorization at all. Each model output goes
through the product's own code path (streamd.tools.colorize: luma from the input, chroma predicted) and is
scored against the ground-truth image itself.

Videos are colorized twice per model: frame by frame (label "ours T=...", with "alpha=..." for a model
exported with a prior correction), and as a daemon camera does by default: in order, with the live
pipeline's temporal stabilisation (streamd.colour.temporal.Temporal) and its reuse of predictions
(streamd.colour.temporal.Reuse; label "ours T=... temporal"). The ground truth's own CDC and warp error are
scored too (row "truth"): a real video is not perfectly steady either, so those are the floor to compare
with. `temporal_comparison` then compares temporal with per-frame, per model: the change of warp error, CDC
relative to the truth's, and what it costs in rebalanced AuC and colourfulness.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from streamd.colour.lab import lab_to_rgb, rgb_to_lab
from streamd.colour.reference import evenly_spaced
from streamd.config import CameraConfig
from streamd.infer.onnx_runtime import Colorizer
from streamd.steps import reuse_for
from streamd.tools.colorize import colorize_images, colorize_sequence
from streamd.tools.evaluate.inputs import (VIDEO_MAX_FRAMES, Subset, image_files, pair_files, read_rgb, read_video,
                                           video_sources)
from streamd.tools.evaluate.metrics import GRAY, TRUTH, Evaluation, cdc, flow_pairs, gray_baseline, warp_error

log = logging.getLogger(__name__)


SHEET_ROWS = 8
TEMPORAL = " temporal"  # suffix of the label of a model's temporal mode
# goals of temporal mode against per-frame mode (issue "temporal stability")
GOAL_CDC_RATIO = 1.5  # CDC at most this multiple of the ground truth's
GOAL_WARP_CHANGE_PCT = -30.0  # warp error at least 30 % lower
GOAL_AUC_REBALANCED_DIFF = -0.5  # rebalanced AuC at most 0.5 points lower
GOAL_COLORFULNESS_PCT = -5.0  # colourfulness at most 5 % lower


def colorize_rgb(colorizers: dict[str, Colorizer], frames: list[np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Gray baseline and every model's output for RGB frames, by method label."""
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
    outputs = {GRAY: [gray_baseline(f) for f in frames]}
    for label, colorizer in colorizers.items():
        outputs[label] = [cv2.cvtColor(o, cv2.COLOR_BGR2RGB) for o in colorize_images(colorizer, bgr)]
    return outputs


def colorize_video_rgb(colorizers: dict[str, Colorizer], frames: list[np.ndarray],
                       camera: CameraConfig = CameraConfig("eval", "")) -> dict[str, list[np.ndarray]]:
    """Gray baseline and, per model, its per-frame output (the network on every frame) and its temporal-mode
    output, which is what the daemon's `camera` makes of the video: stabilised, and the network skipped
    where its last prediction still holds (labels: LABEL and LABEL + TEMPORAL), through `colorize_sequence`."""
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames]
    outputs = {GRAY: [gray_baseline(f) for f in frames]}
    for label, colorizer in colorizers.items():
        for suffix, temporal in (("", False), (TEMPORAL, True)):
            outs = colorize_sequence(colorizer, bgr, temporal=temporal, reuse=reuse_for(camera) if temporal else None)
            outputs[label + suffix] = [cv2.cvtColor(o, cv2.COLOR_BGR2RGB) for o in outs]
    return outputs


def video_labels(colorizers: dict[str, Colorizer]) -> list[str]:
    return [label + suffix for label in colorizers for suffix in ("", TEMPORAL)]


def _relative_pct(new: float, old: float) -> float:
    return 100 * (new - old) / old if old else math.nan


def temporal_comparison(rows: dict[str, dict[str, float]]) -> dict[str, dict]:
    """Per model with both modes in `rows`: temporal mode against per-frame mode, and whether the goals
    (GOAL_*) are met. CDC ratios are to the truth's CDC; differences are temporal minus per-frame.

    Also, not a goal: the change of the warp error in excess of the gray baseline's. The gray baseline has
    the very same luma as every output, so its warp error is the part no colorization can remove (flow
    errors, noise, lighting changes); the excess is the part the predicted colour adds.
    """
    comparison = {}
    truth_cdc = rows.get(TRUTH, {}).get("cdc", math.nan)
    gray_warp = rows.get(GRAY, {}).get("warp_error", math.nan)
    for label, per_frame in rows.items():
        temporal = rows.get(label + TEMPORAL)
        if temporal is None:
            continue
        c = {"warp_error_change_pct": _relative_pct(temporal["warp_error"], per_frame["warp_error"]),
             "warp_error_excess_change_pct": _relative_pct(temporal["warp_error"] - gray_warp,
                                                           per_frame["warp_error"] - gray_warp),
             "cdc_ratio_per_frame": per_frame["cdc"] / truth_cdc if truth_cdc else math.nan,
             "cdc_ratio_temporal": temporal["cdc"] / truth_cdc if truth_cdc else math.nan,
             "auc_rebalanced_diff": temporal["auc_rebalanced"] - per_frame["auc_rebalanced"],
             "colorfulness_diff_pct": _relative_pct(temporal["colorfulness"], per_frame["colorfulness"])}
        # a comparison with nan in it is not met (nan compares false)
        c["goals"] = {"cdc_ratio": c["cdc_ratio_temporal"] <= GOAL_CDC_RATIO,
                      "warp_error": c["warp_error_change_pct"] <= GOAL_WARP_CHANGE_PCT,
                      "auc_rebalanced": c["auc_rebalanced_diff"] >= GOAL_AUC_REBALANCED_DIFF,
                      "colorfulness": c["colorfulness_diff_pct"] >= GOAL_COLORFULNESS_PCT}
        comparison[label] = c
    return comparison


def sheet_picks(count: int) -> set[int]:
    """Which of `count` items go on a contact sheet: SHEET_ROWS of them, spread over the whole set (a set's
    first images are often one scene)."""
    return set(evenly_spaced(list(range(count)), SHEET_ROWS))


def evaluate_images(colorizers: dict[str, Colorizer], paths: list[Path], samples: list) -> Evaluation:
    """Score every readable image; keeps (outputs, truth) of SHEET_ROWS of them, spread out, in `samples`."""
    evaluation = Evaluation(list(colorizers))
    picks = sheet_picks(len(paths))
    for i, path in enumerate(tqdm(paths, unit="image", desc="images", disable=len(paths) < 2)):
        truth = read_rgb(path)
        if truth is None:
            continue
        outputs = {label: outs[0] for label, outs in colorize_rgb(colorizers, [truth]).items()}
        evaluation.add(truth, outputs)
        if i in picks:
            samples.append((outputs, truth))
    return evaluation


def with_lightness_of(colour_rgb: np.ndarray, lightness_rgb: np.ndarray) -> np.ndarray:
    """The ab of `colour_rgb` beside the L of `lightness_rgb`."""
    lab = rgb_to_lab(lightness_rgb)
    lab[..., 1:] = rgb_to_lab(colour_rgb)[..., 1:]
    return lab_to_rgb(lab)


def evaluate_pairs(colorizers: dict[str, Colorizer], pairs: list[tuple[Path, Path]], samples: list) -> Evaluation:
    """Each pair's gray image (near-infrared, say) is the input and its colour image the truth. The two lumas
    differ, which no colorizer can change, so only colour is scored: every output's ab beside the truth's L,
    and the gray baseline the truth's L alone. The sheet shows what a viewer gets: the output as it is."""
    evaluation = Evaluation(list(colorizers))
    picks = sheet_picks(len(pairs))
    for i, (gray_path, truth_path) in enumerate(tqdm(pairs, unit="pair", desc="pairs", disable=len(pairs) < 2)):
        gray, truth = read_rgb(gray_path), read_rgb(truth_path)
        if gray is None or truth is None:
            continue
        if gray.shape != truth.shape:
            gray = cv2.resize(gray, truth.shape[1::-1], interpolation=cv2.INTER_AREA)
        outputs = colorize_rgb(colorizers, [gray])
        scored = {label: with_lightness_of(outs[0], truth) for label, outs in outputs.items() if label != GRAY}
        evaluation.add(truth, {GRAY: gray_baseline(truth), **scored})
        if i in picks:
            samples.append(({label: outs[0] for label, outs in outputs.items()}, truth))
    return evaluation


def evaluate_videos(colorizers: dict[str, Colorizer], sources: list[Path], samples: list,
                    max_frames: int = VIDEO_MAX_FRAMES, camera: CameraConfig = CameraConfig("eval", "")) -> dict:
    """Per video (its first `max_frames` frames): the image metrics over its frames, CDC and warp error, for
    the gray baseline, each model per frame and in temporal mode, and the truth (CDC and warp error of the
    ground truth itself); with the comparison of temporal and per-frame modes. Overall: the image metrics
    over all frames, the mean CDC and mean warp error over videos, and their comparison. Empty when no
    video could be read. Keeps the middle frames of SHEET_ROWS videos, spread out, in `samples`."""
    labels = video_labels(colorizers)
    overall = Evaluation(labels)
    per_video: dict[str, dict] = {}
    picks = sheet_picks(len(sources))
    for index, source in enumerate(tqdm(sources, unit="video", desc="videos", disable=len(sources) < 2)):
        truth = read_video(source, max_frames)
        if not truth:
            log.warning("skipping %s: no frames could be read", source)
            continue
        outputs = colorize_video_rgb(colorizers, truth, camera)
        flows = flow_pairs(truth)  # from the gray input: the truth's luma
        evaluation = Evaluation(labels)
        for i, frame in enumerate(truth):
            evaluation.add(frame, {label: outs[i] for label, outs in outputs.items()})
        rows = evaluation.rows()
        for label, frames in [*outputs.items(), (TRUTH, truth)]:
            rows[label]["cdc"] = cdc(frames)
            rows[label]["warp_error"] = warp_error(frames, None, flows)
        per_video[source.name] = {"frames": len(truth), "rows": rows, "comparison": temporal_comparison(rows)}
        overall.extend(evaluation)
        if index in picks:
            mid = len(truth) // 2
            samples.append(({label: outs[mid] for label, outs in outputs.items()}, truth[mid]))
    if not per_video:
        return {}
    rows = overall.rows()
    for label, row in rows.items():
        for key in ("cdc", "warp_error"):
            row[key] = float(np.nanmean([video["rows"][label][key] for video in per_video.values()]))
    return {"count": len(per_video), "frames": overall.count, "max_frames": max_frames, "rows": rows,
            "comparison": temporal_comparison(rows), "per_video": per_video}


def evaluate_subset(subset: Subset, colorizers: dict[str, Colorizer], args: argparse.Namespace,
                    samples: list) -> dict | None:
    """The subset's result (kind, count, rows per method; for videos also per video and the temporal
    comparison), or None when nothing in it could be read."""
    if subset.kind == "videos":
        camera = CameraConfig("eval", "")
        if args.carry_frames is not None:
            camera = dataclasses.replace(camera, carry_frames=args.carry_frames)
        videos = evaluate_videos(colorizers, evenly_spaced(video_sources(subset.path), args.limit), samples,
                                 args.max_frames, camera)
        return {"kind": subset.kind, **videos} if videos else None
    if subset.kind == "pairs":
        evaluation = evaluate_pairs(colorizers, evenly_spaced(pair_files(subset.path), args.limit), samples)
    else:
        evaluation = evaluate_images(colorizers, evenly_spaced(image_files(subset.path), args.limit), samples)
    return {"kind": subset.kind, "count": evaluation.count, "rows": evaluation.rows()} if evaluation.count else None
