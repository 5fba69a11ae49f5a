"""Training data: images and sampled video frames held in memory, cut into Lab crops."""
from __future__ import annotations

import logging
from pathlib import Path

import av
import cv2
import numpy as np

from streamd.colour.lab import rgb_to_lab
from streamd.colour.lightness import lightness_table

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".ts", ".webm"}
log = logging.getLogger(__name__)


def _fit(rgb: np.ndarray, max_side: int) -> np.ndarray:
    scale = max_side / max(rgb.shape[:2])
    if scale >= 1:
        return rgb
    size = (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def load_images(folder: Path, max_side: int) -> list[np.ndarray]:
    images = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            log.warning("skipping %s: not a readable image", path)
            continue
        images.append(_fit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), max_side))
    return images


def load_video_frames(path: Path, every: int, max_side: int, start: float = 0.0, stop: float = 1.0) -> list[np.ndarray]:
    """Every `every`-th frame of the part [start, stop) of a video (fractions of its frame count)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    lo, hi = int(len(frames) * start), int(len(frames) * stop)
    return [_fit(f, max_side) for f in frames[lo:hi:every]]


def load_folder(folder: Path, max_side: int = 320, video_every: int = 8) -> list[np.ndarray]:
    """All images under `folder`, and every `video_every`-th frame of the videos there."""
    images = load_images(folder, max_side)
    for video in sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES):
        images += load_video_frames(video, video_every, max_side)
    return images


def near_infrared_like(rgb: np.ndarray, foliage_gain: float) -> np.ndarray:
    """A gray image of `rgb` as a camera's silicon sensor sees it under infrared light, roughly: long
    wavelengths weigh most (red dyes and skin bright), a blue sky is dark (its light is scattered short
    wavelengths) by half its excess of blue, and foliage, which reflects near-infrared strongly
    (chlorophyll's red edge), is brighter by `foliage_gain` times its excess of green. An approximation
    from visible colour alone, for training on day photos; neutral grays keep their level."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    foliage = np.maximum(g - np.maximum(r, b), 0.0)
    sky = np.maximum(b - np.maximum(r, g), 0.0)
    luma = 0.55 * r + 0.35 * g + 0.10 * b + foliage_gain * foliage - 0.5 * sky
    return np.clip(luma + 0.5, 0, 255).astype(np.uint8)


class CropSampler:
    """Random square Lab crops: random scale, position and horizontal flip.

    Returns L (N, 1, S, S) and the ground-truth ab at the network's output scale (N, 2, S/4, S/4). The L is
    what streamd feeds the network at run time: that of a neutral gray of the crop's luma Y' (BT.601, full
    range, as `streamd eval` and the daemon see a gray frame), not the colour pixel's own L*, which differs
    where colours are saturated (pure red: 53 against 32).
    """

    def __init__(self, images: list[np.ndarray], crop: int, rng: np.random.Generator, augment: bool = False,
                 weights: list[float] | None = None, luma_mix: float = 0.0, nir_like: float = 0.0) -> None:
        """`weights`: how often each image is drawn relative to the others (None: all alike). `luma_mix`: the
        share of crops whose L comes from a random mix of R, G and B instead of the BT.601 luma (see
        `crop_luma`); `nir_like` the share whose L imitates a near-infrared camera's (`near_infrared_like`)."""
        if not images:
            raise ValueError("no training images found")
        if crop % 16:
            raise ValueError(f"crop size {crop} must be a multiple of 16")
        if weights is not None and (len(weights) != len(images) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError("image weights must be one non-negative number per image, not all zero")
        if luma_mix < 0 or nir_like < 0 or luma_mix + nir_like > 1:
            raise ValueError("the shares of crops with another luma must be from 0 to 1 together")
        self.images, self.crop, self.rng, self.augment = images, crop, rng, augment
        self.luma_mix, self.nir_like = luma_mix, nir_like
        self.p = None if weights is None else np.asarray(weights, np.float64) / np.sum(weights)

    def crop_one(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        short = min(h, w)
        target_short = self.rng.uniform(self.crop, max(self.crop, 1.4 * self.crop))
        scale = target_short / short
        rgb = cv2.resize(rgb, (max(self.crop, round(w * scale)), max(self.crop, round(h * scale))),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        y = self.rng.integers(0, rgb.shape[0] - self.crop + 1)
        x = self.rng.integers(0, rgb.shape[1] - self.crop + 1)
        rgb = rgb[y:y + self.crop, x:x + self.crop]
        return rgb[:, ::-1] if self.rng.random() < 0.5 else rgb

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        picks = self.rng.choice(len(self.images), size, p=self.p)
        crops = [self.crop_one(self.images[i]) for i in picks]
        out = self.crop // 4
        ab = np.stack([cv2.resize(rgb_to_lab(c)[..., 1:], (out, out), interpolation=cv2.INTER_AREA) for c in crops])
        lightness = np.stack([cv2.LUT(self.crop_luma(c), lightness_table(True)) for c in crops])[:, None]
        if self.augment:
            lightness = self.vary_lightness(lightness)
        return lightness, ab.transpose(0, 3, 1, 2).copy()

    def crop_luma(self, rgb: np.ndarray) -> np.ndarray:
        """The crop's luma Y' (BT.601), or, for a `luma_mix` share of crops, a random convex mix of its R, G and
        B. A camera at night sees near-infrared: foliage and many dyes come out bright and skies dark, so the
        gray levels of materials are not those of the day luma. Training on other mixes keeps the network from
        reading a colour off a gray level alone."""
        rgb = np.ascontiguousarray(rgb)
        draw = self.rng.random() if self.luma_mix or self.nir_like else 1.0
        if draw < self.luma_mix:
            weights = self.rng.dirichlet((1.0, 1.0, 1.0))
            return np.clip(rgb.astype(np.float32) @ weights.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
        if draw < self.luma_mix + self.nir_like:
            return near_infrared_like(rgb, self.rng.uniform(1.0, 3.0))
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)

    def vary_lightness(self, lightness: np.ndarray) -> np.ndarray:
        """Random gamma, contrast and sensor noise on L, per crop (the colour targets stay): an infrared
        night frame of a scene is brighter or darker, flatter or harsher, and noisier than its day frame."""
        n = len(lightness)
        gamma = np.exp(self.rng.uniform(np.log(0.7), np.log(1.4), (n, 1, 1, 1)))
        contrast = self.rng.uniform(0.8, 1.2, (n, 1, 1, 1))
        noise = self.rng.normal(0, 1, lightness.shape) * self.rng.uniform(0, 2.0, (n, 1, 1, 1))
        varied = 100.0 * (lightness / 100.0) ** gamma
        varied = 50.0 + (varied - 50.0) * contrast + noise
        return np.clip(varied, 0.0, 100.0).astype(np.float32)
