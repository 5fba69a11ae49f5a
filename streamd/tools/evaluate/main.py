"""`streamd eval`: score a colorization model against ground truth, always beside the gray baseline.

The gray baseline is the ground truth with its chroma removed (Lab a = b = 0): what a viewer gets with no
colorization at all. Each model output goes through the product's own code path (streamd.offline:
luma from the input, chroma predicted) and is scored against the ground-truth image itself.

Metrics, per method: PSNR and SSIM on RGB; colourfulness (Hasler & Suesstrunk 2003) and its ratio to the
ground truth's; the AuC of the ab error (Zhang et al. 2016), plain and class-rebalanced; mean CIEDE2000;
for videos also CDC, the colour distribution consistency between frames (Jensen-Shannon divergence),
and the warp error (Lai et al. 2018): how much the colours of frame t + 1, carried back along the optical
flow of the gray input, differ from those of frame t.

Videos are colorized twice per model: frame by frame (label "ours T=...", with "alpha=..." for a model
exported with a prior correction), and as a daemon camera does by default: in order, with the live
pipeline's temporal stabilisation (streamd.temporal.Temporal) and its reuse of predictions
(streamd.temporal.Reuse; label "ours T=... temporal"). The ground truth's
own CDC and warp error are reported too (row "truth"): a real video is not perfectly steady either, so
those are the floor to compare with. A line per model then compares temporal with per-frame: the change
of warp error, CDC relative to the truth's, and what it costs in rebalanced AuC and colourfulness.

Both AuCs are set-wide: the ab errors of all pixels of all evaluated images are pooled (the plain AuC
weighs every pixel the same, the rebalanced one weighs each pixel by the inverse frequency of its
ground-truth ab cell in the whole set) rather than averaged per image. The other metrics are means of
per-image values; per-image PSNR is capped at 100 dB so that an exactly reproduced image keeps it finite.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.spatial.distance import jensenshannon
from skimage.color import deltaE_ciede2000
from skimage.metrics import structural_similarity
from tqdm import tqdm

from streamd.config import CameraConfig
from streamd.infer.onnx_runtime import Colorizer
from streamd.colour.lab import AB_GRID, AB_LIMIT, lab_to_rgb, rgb_to_lab
from streamd.model.data import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from streamd.tools.colorize import colorize_images, colorize_sequence
from streamd.colour.reference import evenly_spaced
from streamd.steps import reuse_for

log = logging.getLogger(__name__)

AUC_MAX = 150  # the AuC integrates the within-threshold curve over t = 0, 1, ..., AUC_MAX (ab units)
CELL_HALF = int(AB_LIMIT // AB_GRID) + 1  # ab cells are round(ab / AB_GRID), clipped to +-CELL_HALF
CELL_SIDE = 2 * CELL_HALF + 1
PSNR_CAP = 100.0  # dB: an exactly reproduced image (a gray photo under the gray baseline) is inf
CIEDE_STEP = 4  # CIEDE2000 on every 4th pixel in each direction
CDC_GAPS = (1, 2, 4)
VIDEO_MAX_FRAMES = 120
VIDEO_MAX_SIDE = 640
SHEET_ROWS = 8
PAIR_GRAY, PAIR_TRUTH = "_nir", "_rgb"  # a pair subset's file names: NAME_nir.jpg (the input) and NAME_rgb.jpg
SHEET_HEIGHT = 256
GRAY, TRUTH = "gray", "truth"
TEMPORAL = " temporal"  # suffix of the label of a model's temporal mode
FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
# forward-backward check: occluded where |fw + bw|^2 > ALPHA (|fw|^2 + |bw|^2) + BETA
OCCLUSION_ALPHA, OCCLUSION_BETA = 0.01, 0.5
# goals of temporal mode against per-frame mode (issue "temporal stability")
GOAL_CDC_RATIO = 1.5  # CDC at most this multiple of the ground truth's
GOAL_WARP_CHANGE_PCT = -30.0  # warp error at least 30 % lower
GOAL_AUC_REBALANCED_DIFF = -0.5  # rebalanced AuC at most 0.5 points lower
GOAL_COLORFULNESS_PCT = -5.0  # colourfulness at most 5 % lower


# -- per-image metrics (pure; RGB uint8 in) -----------------------------------------------------------
def gray_baseline(rgb: np.ndarray) -> np.ndarray:
    """The image with its chroma removed: Lab a = b = 0, same L."""
    lab = rgb_to_lab(rgb)
    lab[..., 1:] = 0
    return lab_to_rgb(lab)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB over all channels of two uint8 images; inf for identical images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 20 * math.log10(255 / math.sqrt(mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two RGB uint8 images (7x7 window, smaller for images under 7 pixels; nan under 3)."""
    side = min(a.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        return math.nan
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk's colourfulness M = sigma_rgyb + 0.3 mu_rgyb (0 for a gray image)."""
    r, g, b = np.moveaxis(rgb.astype(np.float64), -1, 0)
    rg, yb = r - g, (r + g) / 2 - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def ab_error(out_rgb: np.ndarray, truth_rgb: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean distance in Lab ab between two RGB images (H, W)."""
    return ab_distance(rgb_to_lab(out_rgb), rgb_to_lab(truth_rgb))


def ab_distance(out_lab: np.ndarray, truth_lab: np.ndarray) -> np.ndarray:
    diff = out_lab[..., 1:] - truth_lab[..., 1:]
    return np.hypot(diff[..., 0], diff[..., 1])


def colour_cast(out_rgb: np.ndarray, truth_rgb: np.ndarray) -> float:
    """The distance in Lab ab between the mean colour of the output and that of the truth. A tint over the
    whole frame (a road painted orange) shows here even where the local errors are small; the gray
    baseline's cast is the truth's own mean chroma."""
    return cast_between(rgb_to_lab(out_rgb), rgb_to_lab(truth_rgb))


def cast_between(out_lab: np.ndarray, truth_lab: np.ndarray) -> float:
    diff = out_lab[..., 1:].reshape(-1, 2).mean(0) - truth_lab[..., 1:].reshape(-1, 2).mean(0)
    return float(np.hypot(*diff))


def ab_cells(rgb: np.ndarray) -> np.ndarray:
    """Index of each pixel's ab cell on the 10-unit grid (cell = round(ab / 10)), in 0..CELL_SIDE^2 - 1."""
    return cells_of(rgb_to_lab(rgb))


def cells_of(lab: np.ndarray) -> np.ndarray:
    cell = np.clip(np.round(lab[..., 1:] / AB_GRID), -CELL_HALF, CELL_HALF).astype(np.int64) + CELL_HALF
    return cell[..., 0] * CELL_SIDE + cell[..., 1]


def ab_histogram(out_rgb: np.ndarray, truth_rgb: np.ndarray) -> np.ndarray:
    """Pixel counts (CELL_SIDE^2, AUC_MAX + 2) by ground-truth ab cell and by ceil(ab error).

    A pixel is within threshold t iff ceil(error) <= t; the last column holds errors above AUC_MAX.
    Histograms of several images add up to that of the set, which is what `auc` needs.
    """
    return histogram_of(rgb_to_lab(out_rgb), rgb_to_lab(truth_rgb))


def histogram_of(out_lab: np.ndarray, truth_lab: np.ndarray) -> np.ndarray:
    k = np.minimum(np.ceil(ab_distance(out_lab, truth_lab)), AUC_MAX + 1).astype(np.int64)
    flat = cells_of(truth_lab) * (AUC_MAX + 2) + k
    return np.bincount(flat.ravel(), minlength=CELL_SIDE ** 2 * (AUC_MAX + 2)).reshape(CELL_SIDE ** 2, AUC_MAX + 2)


def auc(hist: np.ndarray, rebalanced: bool = False) -> float:
    """Area under the curve "fraction of pixels with ab error <= t", t = 0..150, as a percentage.

    `hist` is an `ab_histogram` (or a sum of them over a set of images). Plain: every pixel weighs the
    same. Rebalanced: every pixel weighs 1 / (number of pixels of its ground-truth ab cell in `hist`), so
    each colour present counts the same however rare it is.
    """
    per_cell = hist.sum(axis=1).astype(np.float64)
    if rebalanced:
        weights = np.divide(1.0, per_cell, out=np.zeros_like(per_cell), where=per_cell > 0)
    else:
        weights = np.ones_like(per_cell)
    within = np.cumsum(weights @ hist)[: AUC_MAX + 1] / (weights @ per_cell)
    area = within.sum() - (within[0] + within[-1]) / 2  # trapezoid rule, unit steps
    return float(area / AUC_MAX * 100)


def ciede2000(out_rgb: np.ndarray, truth_rgb: np.ndarray, step: int = CIEDE_STEP) -> float:
    """Mean CIEDE2000 colour difference over every `step`-th pixel in each direction."""
    return ciede2000_of(rgb_to_lab(out_rgb[::step, ::step]), rgb_to_lab(truth_rgb[::step, ::step]), 1)


def ciede2000_of(out_lab: np.ndarray, truth_lab: np.ndarray, step: int = CIEDE_STEP) -> float:
    return float(np.mean(deltaE_ciede2000(out_lab[::step, ::step], truth_lab[::step, ::step])))


def cdc(frames: list[np.ndarray], gaps: tuple[int, ...] = CDC_GAPS) -> float:
    """Colour distribution consistency of a frame sequence (lower is steadier; 0 for identical frames).

    For each RGB channel, the Jensen-Shannon divergence (log base 2, so 0..1) between the 256-bin
    histograms of frames t and t + d; averaged over channels, over t, then over the gaps d shorter than
    the sequence. nan for fewer than two frames.
    """
    hists = np.stack([[np.bincount(f[..., c].ravel(), minlength=256) for c in range(3)] for f in frames])
    hists = hists / hists.sum(axis=-1, keepdims=True)
    per_gap = [np.mean(jensenshannon(hists[:-d], hists[d:], base=2, axis=-1) ** 2) for d in gaps if d < len(frames)]
    return float(np.mean(per_gap)) if per_gap else math.nan


def flow_pairs(gray_frames: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Optical flow between consecutive gray frames, for `warp_error`.

    For each pair (t, t + 1): DIS optical flow (OpenCV, FLOW_PRESET) forward fw (t -> t + 1) and backward
    bw (t + 1 -> t). Returns, per pair, the sampling map (H, W, 2) float32 x + fw(x), which carries frame
    t + 1 onto frame t with cv2.remap, and the mask (H, W) bool of the pixels of frame t that are visible
    in frame t + 1: x + fw(x) lies inside the frame and passes the forward-backward consistency check
    |fw(x) + bw(x + fw(x))|^2 <= OCCLUSION_ALPHA (|fw(x)|^2 + |bw(x + fw(x))|^2) + OCCLUSION_BETA.
    `gray_frames`: uint8 (H, W), or RGB uint8 (H, W, 3), which is converted to luma first.
    """
    gray = [np.ascontiguousarray(g if g.ndim == 2 else cv2.cvtColor(g, cv2.COLOR_RGB2GRAY)) for g in gray_frames]
    if not gray:
        return []
    dis = cv2.DISOpticalFlow_create(FLOW_PRESET)
    h, w = gray[0].shape
    grid = np.dstack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)))
    pairs = []
    for a, b in zip(gray, gray[1:]):
        fw = dis.calc(a, b, None)  # a(x) ~ b(x + fw(x))
        bw = dis.calc(b, a, None)
        target = grid + fw
        bw_there = cv2.remap(bw, target, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mismatch = np.sum((fw + bw_there) ** 2, axis=-1)
        bound = OCCLUSION_ALPHA * (np.sum(fw ** 2, axis=-1) + np.sum(bw_there ** 2, axis=-1)) + OCCLUSION_BETA
        inside = ((target[..., 0] >= 0) & (target[..., 0] <= w - 1)
                  & (target[..., 1] >= 0) & (target[..., 1] <= h - 1))
        pairs.append((target, inside & (mismatch <= bound)))
    return pairs


def warp_error(frames_rgb: list[np.ndarray], gray_frames: list[np.ndarray] | None,
               flows: list[tuple[np.ndarray, np.ndarray]] | None = None) -> float:
    """Warp error of a video (Lai et al. 2018, "Learning Blind Video Temporal Consistency"); lower is steadier.

    For each pair of consecutive frames t, t + 1 the output frame t + 1 is warped back onto frame t along
    the optical flow of the gray input (`gray_frames`: the luma the colorizer saw, never its output, so
    that every method is judged along the same motion; see `flow_pairs`), and the squared difference of
    RGB in [0, 1] to output frame t is averaged over the channels and the non-occluded pixels. The result
    is the mean over t of those per-pair values: 0 for identical frames, and at most 1. Pairs with no
    visible pixel are skipped; nan for fewer than two frames. `flows`: `flow_pairs(gray_frames)`, when
    already computed (several outputs of one video share it); `gray_frames` is then not used.
    """
    if flows is None:
        flows = flow_pairs(gray_frames or [])
    errors = []
    for (target, visible), now, following in zip(flows, frames_rgb, frames_rgb[1:]):
        if not visible.any():
            continue
        back = cv2.remap(following.astype(np.float32) / 255, target, None, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
        diff = back[visible] - now[visible].astype(np.float32) / 255
        errors.append(float(np.mean(np.square(diff, dtype=np.float64))))
    return float(np.mean(errors)) if errors else math.nan


# -- accumulation over a set ----------------------------------------------------------------------------
class Scores:
    """One method's metrics over a set of images: per-image values and the set-wide `ab_histogram`."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {"psnr": [], "ssim": [], "colorfulness": [], "ciede2000": [],
                                               "cast": []}
        self.hist = np.zeros((CELL_SIDE ** 2, AUC_MAX + 2), dtype=np.int64)

    def add(self, out_rgb: np.ndarray, truth_rgb: np.ndarray, truth_lab: np.ndarray | None = None) -> None:
        """`truth_lab`: rgb_to_lab(truth_rgb), when the caller has it (several methods share one truth)."""
        out_lab = rgb_to_lab(out_rgb)
        truth_lab = rgb_to_lab(truth_rgb) if truth_lab is None else truth_lab
        self.values["psnr"].append(min(psnr(out_rgb, truth_rgb), PSNR_CAP))
        self.values["ssim"].append(ssim(out_rgb, truth_rgb))
        self.values["colorfulness"].append(colorfulness(out_rgb))
        self.values["ciede2000"].append(ciede2000_of(out_lab, truth_lab))
        self.values["cast"].append(cast_between(out_lab, truth_lab))
        self.hist += histogram_of(out_lab, truth_lab)

    def extend(self, other: Scores) -> None:
        for key, values in other.values.items():
            self.values[key] += values
        self.hist += other.hist

    def summary(self, truth_colorfulness: float) -> dict[str, float]:
        row = {key: float(np.nanmean(values)) for key, values in self.values.items()}
        row["colorfulness_ratio"] = row["colorfulness"] / truth_colorfulness if truth_colorfulness else math.nan
        row["auc"] = auc(self.hist)
        row["auc_rebalanced"] = auc(self.hist, rebalanced=True)
        return row


class Evaluation:
    """Several methods scored on the same ground-truth images; the gray baseline is always one of them."""

    def __init__(self, labels: list[str]) -> None:
        self.scores = {label: Scores() for label in [GRAY, *labels]}
        self.truth_colorfulness: list[float] = []

    def add(self, truth_rgb: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """`outputs`: RGB output per method label (gray included)."""
        self.truth_colorfulness.append(colorfulness(truth_rgb))
        truth_lab = rgb_to_lab(truth_rgb)
        for label, out in outputs.items():
            self.scores[label].add(out, truth_rgb, truth_lab)

    def extend(self, other: Evaluation) -> None:
        self.truth_colorfulness += other.truth_colorfulness
        for label, scores in other.scores.items():
            self.scores[label].extend(scores)

    @property
    def count(self) -> int:
        return len(self.truth_colorfulness)

    def rows(self) -> dict[str, dict[str, float]]:
        """Summary per method; the model's rows also carry their PSNR and rebalanced-AuC gains over gray."""
        truth_cf = float(np.mean(self.truth_colorfulness))
        rows = {label: scores.summary(truth_cf) for label, scores in self.scores.items()}
        for label, row in rows.items():
            if label != GRAY:
                row["delta_psnr"] = row["psnr"] - rows[GRAY]["psnr"]
                row["delta_auc_rebalanced"] = row["auc_rebalanced"] - rows[GRAY]["auc_rebalanced"]
                row["cast_ratio"] = row["cast"] / rows[GRAY]["cast"] if rows[GRAY]["cast"] else math.nan
        rows[TRUTH] = {"colorfulness": truth_cf}
        return rows


# -- inputs ---------------------------------------------------------------------------------------------
def read_rgb(path: Path) -> np.ndarray | None:
    """An image file as RGB uint8, or None (with a warning) when it cannot be read."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        log.warning("skipping %s: not a readable image", path)
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_files(folder: Path) -> list[Path]:
    """The image files under `folder` (any depth, suffix case ignored), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def fit_within(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Downscaled (area filter) so that the longer side is at most `max_side`."""
    scale = max_side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def read_video(path: Path, max_frames: int = VIDEO_MAX_FRAMES, max_side: int = VIDEO_MAX_SIDE) -> list[np.ndarray]:
    """The first `max_frames` RGB frames of a video file or of a folder of numbered images, downscaled."""
    if path.is_dir():
        frames = (read_rgb(p) for p in image_files(path))
        return [fit_within(f, max_side) for f in itertools.islice((f for f in frames if f is not None), max_frames)]
    with av.open(str(path)) as container:
        decoded = itertools.islice(container.decode(video=0), max_frames)
        return [fit_within(f.to_ndarray(format="rgb24"), max_side) for f in decoded]


def video_sources(folder: Path) -> list[Path]:
    """Video files directly in `folder`, and its sub-folders that hold image frames."""
    return sorted(p for p in folder.iterdir()
                  if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and image_files(p)))


# -- running ---------------------------------------------------------------------------------------------
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


def format_comparison(label: str, c: dict) -> str:
    """Two lines: the verdict on the goals, then the numbers."""
    missed = [name for name, met in c["goals"].items() if not met]
    verdict = "meets all goals" if not missed else f"MISSES {', '.join(missed)}"
    return (f"{label}, temporal vs per-frame: {verdict}\n"
            f"  warp error {c['warp_error_change_pct']:+.1f}% (goal <= {GOAL_WARP_CHANGE_PCT:+.0f}%; "
            f"the part above gray's {c['warp_error_excess_change_pct']:+.1f}%), "
            f"CDC {c['cdc_ratio_per_frame']:.2f}x -> {c['cdc_ratio_temporal']:.2f}x the truth's "
            f"(goal <= {GOAL_CDC_RATIO:g}x), AuC rebal {c['auc_rebalanced_diff']:+.2f} points "
            f"(goal >= {GOAL_AUC_REBALANCED_DIFF:+g}), colourfulness {c['colorfulness_diff_pct']:+.1f}% "
            f"(goal >= {GOAL_COLORFULNESS_PCT:+g}%)")


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


def pair_files(folder: Path) -> list[tuple[Path, Path]]:
    """(gray input, colour truth) pairs of `folder`: files NAME_nir.EXT beside NAME_rgb.EXT, sorted."""
    pairs = []
    for gray in image_files(folder):
        stem = gray.stem
        if stem.endswith(PAIR_GRAY):
            truth = [p for p in gray.parent.glob(stem[: -len(PAIR_GRAY)] + PAIR_TRUTH + ".*")
                     if p.suffix.lower() in IMAGE_SUFFIXES]
            if truth:
                pairs.append((gray, truth[0]))
    return pairs


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


COLUMNS = [("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"), ("colorfulness", "CF", "{:.2f}"),
           ("colorfulness_ratio", "CF ratio", "{:.3f}"), ("cast", "cast", "{:.2f}"), ("auc", "AuC", "{:.2f}"),
           ("auc_rebalanced", "AuC rebal", "{:.2f}"), ("ciede2000", "CIEDE2000", "{:.2f}"), ("cdc", "CDC", "{:.5f}"),
           ("delta_psnr", "dPSNR", "{:+.2f}"), ("delta_auc_rebalanced", "dAuC rebal", "{:+.2f}")]
VIDEO_COLUMNS = [c for c in COLUMNS if c[0] in ("psnr", "ssim", "colorfulness_ratio", "cast", "auc_rebalanced", "cdc")] + [
    ("warp_error", "warp error", "{:.2e}")]


def format_table(rows: dict[str, dict[str, float]], columns: list[tuple[str, str, str]] = COLUMNS) -> str:
    """A text table, one line per method; a column no row has is left out, a missing value reads '-'."""
    columns = [c for c in columns if any(c[0] in row for row in rows.values())]
    width = max(len(label) for label in rows) + 2
    lines = [" " * width + "".join(f"{title:>11}" for _, title, _ in columns)]
    for label, row in rows.items():
        cells = [fmt.format(row[key]) if key in row else "-" for key, _, fmt in columns]
        lines.append(f"{label:<{width}}" + "".join(f"{cell:>11}" for cell in cells))
    return "\n".join(lines)


def contact_sheet(samples: list[tuple[dict[str, np.ndarray], np.ndarray]]) -> np.ndarray:
    """RGB sheet: one row per sample, tiles (gray | ours ... | truth), each SHEET_HEIGHT high and labelled."""
    rows = []
    for outputs, truth in samples:
        tiles = []
        for label, image in [*outputs.items(), (TRUTH, truth)]:
            width = max(1, round(image.shape[1] * SHEET_HEIGHT / image.shape[0]))
            tile = cv2.resize(image, (width, SHEET_HEIGHT), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(tile, label, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])


def _json_safe(value):
    """Non-finite floats become null, so the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclasses.dataclass(frozen=True)
class Subset:
    """One folder of the evaluation, scored and reported on its own."""

    name: str
    kind: str  # "pairs": gray input beside colour truth; "videos": clips or frame folders; "images"
    path: Path


def find_subset(folder: Path) -> Subset:
    """A folder's kind: pairs where it holds NAME_nir / NAME_rgb images, videos where it holds video files or
    sub-folders of frames and no image of its own, images otherwise."""
    if pair_files(folder):
        kind = "pairs"
    elif video_sources(folder) and not any(p.parent == folder for p in image_files(folder)):
        kind = "videos"
    else:
        kind = "images"
    return Subset(folder.name or str(folder), kind, folder)


def decoding_label(temperature: float, prior_correction: float, shrink: float, cast_correction: float) -> str:
    """How a model's rows are labelled: 'ours T=2 alpha=0.5 shrink=1 cast=0.5' (zero settings left out)."""
    return (f"ours T={temperature:g}" + (f" alpha={prior_correction:g}" if prior_correction else "")
            + (f" shrink={shrink:g}" if shrink else "") + (f" cast={cast_correction:g}" if cast_correction else ""))


def model_colorizers(args: argparse.Namespace) -> dict[str, Colorizer]:
    """The methods to score, by label: an ONNX model at each --temperature, or weights (.pt) decoded in
    PyTorch at each --decode T:ALPHA[:SHRINK[:CAST]] (streamd.model.decoding; by default as the shipped
    model is decoded)."""
    if args.model is not None and args.model.suffix == ".pt":
        try:
            from streamd.model.decoding import decodings
            from streamd.model.train import load_weights
        except ImportError as e:
            raise ValueError(f"decoding weights needs {e.name}, which is not installed here: "
                             "pip install 'streamd[train]'") from None

        shipped = Colorizer().info
        info = dataclasses.replace(shipped, model_id=args.model.stem)  # the shipped input size
        default = f"{shipped.temperature:g}:{shipped.prior_correction:g}:{shipped.shrink:g}:{shipped.cast_correction:g}"
        return decodings(load_weights(args.model), info, args.decode or [default])
    if args.decode:
        raise ValueError("--decode needs weights (--model WEIGHTS.pt); an ONNX model's decoding is set at export "
                         "(its temperature can be overridden with --temperature)")
    colorizers = {}
    for t in dict.fromkeys(args.temperature or [None]):
        c = Colorizer(args.model, temperature=t)
        colorizers[decoding_label(c.info.temperature, c.info.prior_correction, c.info.shrink,
                                  c.info.cast_correction)] = c
    return colorizers


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


SUMMARY_COLUMNS = [("delta_psnr", "PSNR vs gray", "{:+.2f} dB"), ("cast", "cast", "{:.2f}"),
                   ("gray_cast", "gray's cast", "{:.2f}"), ("cast_ratio", "cast / gray's", "{:.2f}x"),
                   ("delta_auc_rebalanced", "AuC rebal vs gray", "{:+.2f}"),
                   ("colorfulness_ratio", "CF / truth", "{:.2f}")]


def summary(results: dict[str, dict], label: str) -> dict[str, dict[str, float]]:
    """One model's headline numbers on every subset, beside the gray baseline's. On videos, the temporal
    mode's: what a camera of the daemon shows."""
    rows = {}
    for name, result in results.items():
        row = result["rows"].get(label + TEMPORAL if result["kind"] == "videos" else label)
        if row is not None:
            rows[name] = {**{key: row[key] for key, _, _ in SUMMARY_COLUMNS if key in row},
                          "gray_cast": result["rows"][GRAY]["cast"]}
    return rows


def format_summary(rows: dict[str, dict[str, float]]) -> str:
    """A markdown table: one line per subset."""
    lines = ["| subset | " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |",
             "| --- |" + " --- |" * len(SUMMARY_COLUMNS)]
    for name, row in rows.items():
        cells = [fmt.format(row[key]) if key in row and math.isfinite(row[key]) else "-"
                 for key, _, fmt in SUMMARY_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """`streamd eval`; returns the exit code."""
    missing = [str(p) for p in args.folders if not p.is_dir()]
    if missing:
        print(f"streamd eval: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    subsets = [find_subset(folder) for folder in args.folders]
    names = [s.name for s in subsets]
    subsets = [s if names.count(s.name) == 1 else dataclasses.replace(s, name=str(s.path)) for s in subsets]
    try:
        colorizers = model_colorizers(args)
    except ValueError as e:
        print(f"streamd eval: {e}", file=sys.stderr)
        return 2
    start = time.monotonic()
    model_id = next(iter(colorizers.values())).info.model_id
    results: dict[str, dict] = {}
    for subset in subsets:
        samples: list = []
        result = evaluate_subset(subset, colorizers, args, samples)
        if result is None:
            print(f"streamd eval: nothing readable in {subset.path}", file=sys.stderr)
            return 1
        results[subset.name] = result
        rows = result["rows"]
        counted = f"{result['count']} {subset.kind}"
        if subset.kind == "videos":
            counted += f", {result['frames']} frames (at most {args.max_frames} each)"
        print(f"\n{subset.name}: {counted}, model {model_id}, ground-truth colourfulness "
              f"{rows[TRUTH]['colorfulness']:.2f}")
        print(format_table(rows, VIDEO_COLUMNS if subset.kind == "videos" else COLUMNS))
        for label, comparison in result.get("comparison", {}).items():
            print(format_comparison(label, comparison))
        if args.sheets and samples:
            args.sheets.mkdir(parents=True, exist_ok=True)
            sheet = args.sheets / f"{subset.name.replace('/', '_')}.jpg"
            cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(samples), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"wrote {sheet}")
    summaries = {label: summary(results, label) for label in colorizers}
    for label, rows in summaries.items():
        print(f"\n{label} ({model_id}) on every subset, beside the gray baseline (videos: temporal mode)")
        print(format_summary(rows))
    print(f"\nevaluated in {time.monotonic() - start:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        result = {"model_id": model_id, "methods": list(colorizers), "subsets": results, "summary": summaries}
        args.json.write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0
