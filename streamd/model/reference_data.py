"""Training pairs for the reference network: a night frame's L beside a day reference of its scene.

Two kinds of pairs, mixed:
- fixed-camera sequences: the reference is the per-pixel median of some of a scene's frames
  (streamd.colour.reference.build, as the daemon builds it) and the night frame another frame of the same scene,
  so what moves through it (people, cars) is where the reference is wrong;
- single photos, with a synthetic reference: the photo itself under other light (gain, gamma, white
  balance), shifted by a pixel or two, with objects pasted into the night frame (new things the reference
  never saw) or into the reference (things that have left).
Some pairs get another scene's reference (a camera that moved): the network must learn not to trust it.
Night L is gray luma or near-infrared-like, varied in gamma, contrast and noise as the generic model's.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from streamd.colour.lab import rgb_to_lab
from streamd.colour.lightness import lightness_table
from streamd.model.data import CropSampler, load_images
from streamd.colour.reference import MIN_FRAMES, build, scene_of


def load_scenes(folder: Path, max_side: int = 320) -> list[list[np.ndarray]]:
    """A folder of fixed-camera frames (several scenes side by side, each's frames numbered in time order)
    -> one list of RGB frames per scene with enough frames for a reference and nights besides."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp"})
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(f"{path.parent}/{scene_of(path)}", []).append(path)
    scenes = []
    for group in groups.values():
        if len(group) >= 2 * MIN_FRAMES:
            frames = load_images_in_order(group, max_side)
            if len({f.shape for f in frames}) == 1:
                scenes.append(frames)
    return scenes


def load_images_in_order(paths: list[Path], max_side: int) -> list[np.ndarray]:
    frames = []
    for path in paths:
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            scale = min(1.0, max_side / max(bgr.shape[:2]))
            if scale < 1:
                bgr = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                                 interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def reference_planes(lab: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Lab (h, w, 3) and confidence (h, w) -> the network's reference planes (4, h, w) float32."""
    return np.concatenate([lab.transpose(2, 0, 1), confidence[None]]).astype(np.float32)


class SceneReferences:
    """A scene's frames and references built from parts of them, each with the frames it did not see."""

    def __init__(self, frames: list[np.ndarray]) -> None:
        n = len(frames)
        order = np.arange(n)
        splits = [order[: int(0.6 * n)], order[int(0.4 * n):], order[::2], order[1::2]]
        self.frames = frames
        self.references = []
        for seen in splits:
            ref = build([frames[i] for i in seen])
            planes = np.concatenate([ref.lightness[None], ref.ab, ref.confidence[None]])
            h, w = frames[0].shape[:2]
            planes = np.stack([cv2.resize(p, (w, h), interpolation=cv2.INTER_LINEAR) for p in planes])
            self.references.append((planes.astype(np.float32), np.setdiff1d(order, seen)))


class ReferenceSampler:
    """Random crops of (night L, reference planes, true ab) with the same window in both."""

    def __init__(self, photos: list[np.ndarray], scenes: list[list[np.ndarray]], crop: int,
                 rng: np.random.Generator, scene_share: float = 0.5, wrong_share: float = 0.1,
                 nir_like: float = 0.3, augment: bool = True) -> None:
        if crop % 16:
            raise ValueError(f"crop size {crop} must be a multiple of 16")
        if not photos and not scenes:
            raise ValueError("no training images found")
        self.photos, self.crop, self.rng = photos, crop, rng
        self.scenes = [SceneReferences(frames) for frames in scenes]
        self.scene_share = scene_share if self.scenes and photos else (1.0 if self.scenes else 0.0)
        self.wrong_share, self.augment = wrong_share, augment
        # the generic sampler's luma and lightness variations, for the night frames
        self.night = CropSampler(photos or scenes[0], crop, rng, augment=augment, nir_like=nir_like)

    # -- pairs at full size ----------------------------------------------------------------------------
    def scene_pair(self) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scenes[self.rng.integers(len(self.scenes))]
        planes, unseen = scene.references[self.rng.integers(len(scene.references))]
        night = scene.frames[self.rng.choice(unseen)]
        if self.rng.random() < 0.3:  # the reference was taken under other light than tonight's
            planes = self.other_light(planes)
        return night, planes

    def photo_pair(self) -> tuple[np.ndarray, np.ndarray]:
        night = self.photos[self.rng.integers(len(self.photos))].copy()
        day = self.relit(night)
        if self.rng.random() < 0.6:  # something new tonight, which the reference never saw
            self.paste(night)
        if self.rng.random() < 0.3:  # something in the reference that has gone
            self.paste(day)
        dx, dy = self.rng.integers(-2, 3, 2)
        day = np.roll(day, (int(dy), int(dx)), axis=(0, 1))
        confidence = self.smooth_field(day.shape[:2], 0.4, 1.0)
        return night, reference_planes(rgb_to_lab(day), confidence)

    def wrong_planes(self, shape: tuple[int, int]) -> np.ndarray:
        """A reference of another scene or photo, at this frame's size: a camera that moved."""
        if self.scenes and (not self.photos or self.rng.random() < 0.5):
            scene = self.scenes[self.rng.integers(len(self.scenes))]
            planes = scene.references[self.rng.integers(len(scene.references))][0]
        else:
            other = self.photos[self.rng.integers(len(self.photos))]
            planes = reference_planes(rgb_to_lab(other), self.smooth_field(other.shape[:2], 0.4, 1.0))
        return np.stack([cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_AREA) for p in planes])

    # -- variations ------------------------------------------------------------------------------------
    def relit(self, rgb: np.ndarray) -> np.ndarray:
        """The same picture under other light: exposure, gamma and white balance."""
        gains = np.exp(self.rng.normal(0, 0.08, 3)) * np.exp(self.rng.normal(0, 0.15))
        gamma = np.exp(self.rng.normal(0, 0.12))
        out = 255.0 * np.clip((rgb.astype(np.float32) / 255.0) ** gamma * gains, 0, 1)
        return out.astype(np.uint8)

    def other_light(self, planes: np.ndarray) -> np.ndarray:
        out = planes.copy()
        out[0] = np.clip(out[0] * np.exp(self.rng.normal(0, 0.1)), 0, 100)
        out[1:3] = out[1:3] * np.exp(self.rng.normal(0, 0.15)) + self.rng.normal(0, 3, (2, 1, 1))
        return out

    def paste(self, target: np.ndarray) -> None:
        """1-3 patches of other photos pasted in place, soft-edged, each 10-35 % of the side."""
        h, w = target.shape[:2]
        for _ in range(self.rng.integers(1, 4)):
            source = self.photos[self.rng.integers(len(self.photos))]
            ph, pw = (int(s * self.rng.uniform(0.1, 0.35)) + 2 for s in (h, w))
            if source.shape[0] <= ph or source.shape[1] <= pw:
                continue
            sy, sx = self.rng.integers(0, source.shape[0] - ph), self.rng.integers(0, source.shape[1] - pw)
            y, x = self.rng.integers(0, h - ph), self.rng.integers(0, w - pw)
            mask = np.zeros((ph, pw), np.float32)
            cv2.ellipse(mask, (pw // 2, ph // 2), (pw // 2 - 1, ph // 2 - 1), 0, 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (5, 5), 0)[..., None]
            region = target[y:y + ph, x:x + pw].astype(np.float32)
            target[y:y + ph, x:x + pw] = (mask * source[sy:sy + ph, sx:sx + pw] + (1 - mask) * region).astype(np.uint8)

    def smooth_field(self, shape: tuple[int, int], lo: float, hi: float) -> np.ndarray:
        """A smooth random confidence map: a photo's reference has no day frames to measure it on."""
        coarse = self.rng.uniform(lo, hi, (4, 4)).astype(np.float32)
        return cv2.resize(coarse, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)

    # -- batches ---------------------------------------------------------------------------------------
    def crop_window(self, night: np.ndarray, planes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = night.shape[:2]
        scale = self.rng.uniform(self.crop, max(self.crop, 1.4 * self.crop)) / min(h, w)
        size = (max(self.crop, round(w * scale)), max(self.crop, round(h * scale)))
        night = cv2.resize(night, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        planes = np.stack([cv2.resize(p, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
                           for p in planes])
        y = self.rng.integers(0, size[1] - self.crop + 1)
        x = self.rng.integers(0, size[0] - self.crop + 1)
        night = night[y:y + self.crop, x:x + self.crop]
        planes = planes[:, y:y + self.crop, x:x + self.crop]
        if self.rng.random() < 0.5:
            night, planes = night[:, ::-1], planes[:, :, ::-1]
        return np.ascontiguousarray(night), np.ascontiguousarray(planes)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Night L (N, 1, S, S), reference planes (N, 4, S, S), true ab at 1/4 (N, 2, S/4, S/4) and at the
        input's resolution (N, 2, S, S)."""
        lights, planes_out, quarter, full = [], [], [], []
        for _ in range(size):
            night, planes = self.scene_pair() if self.rng.random() < self.scene_share else self.photo_pair()
            if self.rng.random() < self.wrong_share:
                planes = self.wrong_planes(night.shape[:2])
            night, planes = self.crop_window(night, planes)
            ab = rgb_to_lab(night)[..., 1:]
            quarter.append(cv2.resize(ab, (self.crop // 4,) * 2, interpolation=cv2.INTER_AREA).transpose(2, 0, 1))
            full.append(ab.transpose(2, 0, 1))
            lights.append(cv2.LUT(self.night.crop_luma(night), lightness_table(True)))
            planes_out.append(planes)
        lightness = np.stack(lights)[:, None]
        if self.augment:
            lightness = self.night.vary_lightness(lightness)
        return (lightness.astype(np.float32), np.stack(planes_out).astype(np.float32),
                np.stack(quarter).astype(np.float32), np.stack(full).astype(np.float32))
