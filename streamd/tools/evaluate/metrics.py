"""The metrics of `streamd eval`, per image (pure; RGB uint8 in) and per video, and their accumulation over a
set: `Scores` per method, `Evaluation` of several methods beside the gray baseline.

Per method: PSNR and SSIM on RGB; colourfulness (Hasler & Suesstrunk 2003) and its ratio to the ground
truth's; the AuC of the ab error (Zhang et al. 2016), plain and class-rebalanced; mean CIEDE2000; the colour
cast (the distance between the mean colours); for videos also CDC, the colour distribution consistency
between frames (Jensen-Shannon divergence), and the warp error (Lai et al. 2018): how much the colours of
frame t + 1, carried back along the optical flow of the gray input, differ from those of frame t.

Both AuCs are set-wide: the ab errors of all pixels of all evaluated images are pooled (the plain AuC
weighs every pixel the same, the rebalanced one weighs each pixel by the inverse frequency of its
ground-truth ab cell in the whole set) rather than averaged per image. The other metrics are means of
per-image values; per-image PSNR is capped at 100 dB so that an exactly reproduced image keeps it finite.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from scipy.spatial.distance import jensenshannon
from skimage.color import deltaE_ciede2000
from skimage.metrics import structural_similarity

from streamd.colour.lab import AB_GRID, AB_LIMIT, lab_to_rgb, rgb_to_lab


AUC_MAX = 150  # the AuC integrates the within-threshold curve over t = 0, 1, ..., AUC_MAX (ab units)
CELL_HALF = int(AB_LIMIT // AB_GRID) + 1  # ab cells are round(ab / AB_GRID), clipped to +-CELL_HALF
CELL_SIDE = 2 * CELL_HALF + 1
PSNR_CAP = 100.0  # dB: an exactly reproduced image (a gray photo under the gray baseline) is inf
CIEDE_STEP = 4  # CIEDE2000 on every 4th pixel in each direction
CDC_GAPS = (1, 2, 4)
GRAY, TRUTH = "gray", "truth"
FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
# forward-backward check: occluded where |fw + bw|^2 > ALPHA (|fw|^2 + |bw|^2) + BETA
OCCLUSION_ALPHA, OCCLUSION_BETA = 0.01, 0.5


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
