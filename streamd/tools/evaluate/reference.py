"""`streamd eval --reference`: colour from a camera's own day reference, scored on day/night splits of
fixed-camera scenes, beside gray, the trivial copy of the reference, and the generic model.

Each scene of a folder (frames SCENE_000123.jpg, in time order) is split: the first DAY_SHARE of its frames are
its day (in colour: the reference is built from them, as the daemon builds it), the rest its night. A night
frame is given to each method as gray L, and its colour is scored against the truth on the truth's own L (so
that a near-infrared luma's different gray levels score the colour, not the luma). Conditions:

- "gray night": the night's own luma;
- "nir night": a near-infrared-like luma (streamd.model.data.near_infrared_like): foliage bright, sky dark;
- "wrong reference": another scene's day, brought to this scene's size (a camera that moved, a reference of
  another camera); the copy and our colour must not carry it;
- "other light": the night's truth under other light than the day's (exposure, white balance, haze), as on
  another day or season.

Methods: "gray" (no colour), "copy" (the reference's ab pasted on the night's L, no network: the day frames'
per-pixel median), "generic" (the model without reference) and "reference" (the reference model, with the
per-frame fit check the daemon runs). Moving objects and the still background are scored apart where
foreground masks are given (--masks DIR: PNG named as the frames, 255 = moving object, 0 = background).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from streamd.colour.lab import lab_to_rgb, rgb_to_lab
from streamd.colour.reference import DayReference, ReferenceError, build, scene_of
from streamd.daemon.reference_store import CameraReference
from streamd.infer.onnx_runtime import REFERENCE_MODEL, Colorizer, shipped_model
from streamd.model.data import near_infrared_like
from streamd.steps import ReferenceColouring
from streamd.tools.colorize import colorize_images
from streamd.tools.evaluate.inputs import image_files, read_rgb
from streamd.tools.evaluate.metrics import PSNR_CAP, ab_distance, cast_between, colorfulness, psnr

log = logging.getLogger(__name__)

DAY_SHARE = 0.6
CONDITIONS = ("gray night", "nir night", "wrong reference", "other light")
METHODS = ("gray", "copy", "generic", "reference")
# Other light between day and night, one per night frame in turn: (R, G, B gains, haze share)
LIGHTS = [((1.12, 1.0, 0.82), 0.0), ((0.85, 0.95, 1.15), 0.0), ((0.8, 0.8, 0.8), 0.25), ((1.2, 1.1, 1.0), 0.1)]
NIR_FOLIAGE_GAIN = 2.0
MOVING, BACKGROUND = 255, 0  # foreground-mask values; others (170: unsure) are left out
# The goals (issue "day reference"), as (condition, measure, method compared with, factor, kind):
#   kind "min_db": ours >= theirs + factor (dB); "max_ratio": ours <= factor x theirs
GOALS = [
    ("gray night", "psnr", "copy", -0.3, "min_db"),
    ("gray night", "ab_moving", "copy", 0.85, "max_ratio"),
    ("gray night", "ab_background", "copy", 1.1, "max_ratio"),
    ("nir night", "ab_background", "copy", 1.3, "max_ratio"),
    ("nir night", "ab_moving", "copy", 1.0, "max_ratio"),
    ("wrong reference", "psnr", "generic", -0.3, "min_db"),
    ("wrong reference", "cast", "generic", 1.1, "max_ratio"),
    ("other light", "psnr", "gray", 3.0, "min_db"),
    ("other light", "cast", "gray", 0.6, "max_ratio"),
    ("other light", "colorfulness_ratio", "truth", 0.6, "min_ratio"),
]


@dataclass
class Scene:
    name: str
    day: list[np.ndarray]  # RGB
    night: list[np.ndarray]
    masks: list[np.ndarray | None]  # per night frame


def load_scenes(folder: Path, masks: Path | None) -> list[Scene]:
    groups: dict[str, list[Path]] = {}
    for path in image_files(folder):
        groups.setdefault(scene_of(path), []).append(path)
    scenes = []
    for name, paths in groups.items():
        split = int(len(paths) * DAY_SHARE)
        if split < 8 or len(paths) - split < 1:
            log.warning("scene %s: %d frames, too few for a day and a night; left out", name, len(paths))
            continue
        frames = [read_rgb(p) for p in paths]
        night_masks = []
        for path in paths[split:]:
            mask = cv2.imread(str(masks / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE) if masks else None
            night_masks.append(mask)
        scenes.append(Scene(name, frames[:split], frames[split:], night_masks))
    return scenes


def other_light(rgb: np.ndarray, index: int) -> np.ndarray:
    gains, haze = LIGHTS[index % len(LIGHTS)]
    out = rgb.astype(np.float32) * np.float32(gains)
    out = (1 - haze) * out + haze * out.mean(axis=2, keepdims=True).mean()
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def luma_image(luma: np.ndarray) -> np.ndarray:
    """A gray luma plane as the BGR image streamd colorizes (its luma is that plane)."""
    return cv2.cvtColor(luma, cv2.COLOR_GRAY2BGR)


def with_lightness(ab_source_bgr: np.ndarray, truth_lab: np.ndarray) -> np.ndarray:
    """The colour (ab) of a method's output on the truth's L, RGB."""
    lab = truth_lab.copy()
    lab[..., 1:] = rgb_to_lab(cv2.cvtColor(ab_source_bgr, cv2.COLOR_BGR2RGB))[..., 1:]
    return lab_to_rgb(lab)


class Tally:
    """Per-frame sums of one method under one condition."""

    def __init__(self) -> None:
        self.psnr, self.cast, self.cf, self.truth_cf = [], [], [], []
        self.ab = {MOVING: [0.0, 0], BACKGROUND: [0.0, 0]}

    def add(self, out_rgb: np.ndarray, truth_rgb: np.ndarray, truth_lab: np.ndarray, mask: np.ndarray | None) -> None:
        out_lab = rgb_to_lab(out_rgb)
        self.psnr.append(min(psnr(out_rgb, truth_rgb), PSNR_CAP))
        self.cast.append(cast_between(out_lab, truth_lab))
        self.cf.append(colorfulness(out_rgb))
        self.truth_cf.append(colorfulness(truth_rgb))
        if mask is not None:
            error = ab_distance(out_lab, truth_lab)
            mask = cv2.resize(mask, (error.shape[1], error.shape[0]), interpolation=cv2.INTER_NEAREST)
            for value in (MOVING, BACKGROUND):
                chosen = error[mask == value]
                self.ab[value][0] += float(chosen.sum())
                self.ab[value][1] += chosen.size

    def row(self) -> dict[str, float]:
        def mean_ab(value: int) -> float:
            total, count = self.ab[value]
            return total / count if count else math.nan

        truth_cf = float(np.mean(self.truth_cf))
        return {"psnr": float(np.mean(self.psnr)), "cast": float(np.mean(self.cast)),
                "ab_background": mean_ab(BACKGROUND), "ab_moving": mean_ab(MOVING),
                "colorfulness_ratio": float(np.mean(self.cf)) / truth_cf if truth_cf else math.nan,
                "frames": len(self.psnr)}


def night_input(condition: str, truth_rgb: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(the night's truth under this condition, the gray BGR image the methods are given)."""
    if condition == "other light":
        truth_rgb = other_light(truth_rgb, index)
    if condition == "nir night":
        luma = near_infrared_like(truth_rgb, NIR_FOLIAGE_GAIN)
    else:
        luma = cv2.cvtColor(truth_rgb, cv2.COLOR_RGB2GRAY)
    return truth_rgb, luma_image(luma)


def copy_of(reference: DayReference, truth_lab: np.ndarray) -> np.ndarray:
    """The trivial copy: the reference's ab, at the frame's size, on the truth's L (RGB)."""
    h, w = truth_lab.shape[:2]
    lab = truth_lab.copy()
    lab[..., 1] = cv2.resize(reference.ab[0], (w, h), interpolation=cv2.INTER_LINEAR)
    lab[..., 2] = cv2.resize(reference.ab[1], (w, h), interpolation=cv2.INTER_LINEAR)
    return lab_to_rgb(lab)


def sheet_frame(scene: Scene) -> int:
    """The night frame a contact sheet shows of a scene: the one with the most of a moving object in view
    (what the reference cannot know), else the middle one."""
    moving = [int((m == MOVING).sum()) if m is not None else 0 for m in scene.masks]
    return int(np.argmax(moving)) if max(moving) else len(scene.night) // 2


def evaluate(scenes: list[Scene], generic: Colorizer, model: Colorizer,
             sheet_frames: list | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Rows per condition and method; `sheet_frames` gathers a contact sheet's rows: each scene's gray night
    and the first scene under the other conditions."""
    references = {s.name: build(s.day) for s in scenes}
    tallies = {c: {m: Tally() for m in METHODS} for c in CONDITIONS}
    for number, scene in enumerate(scenes):
        own = references[scene.name]
        other = references[scenes[(number + 1) % len(scenes)].name] if len(scenes) > 1 else None
        for condition in CONDITIONS:
            reference = own
            if condition == "wrong reference":
                if other is None:
                    continue
                w, h = own.size
                # another camera's day at this camera's size: what a swapped or moved camera gives
                planes = [cv2.resize(p, (w, h), interpolation=cv2.INTER_AREA)
                          for p in (other.lightness, other.ab[0], other.ab[1], other.confidence)]
                reference = DayReference(planes[0], np.stack(planes[1:3]), planes[3], other.frames,
                                         other.built_at, own.source_size)
            keeper = CameraReference(scene.name, None, None, reference=reference)
            by_reference = ReferenceColouring(model, keeper)
            shown = sheet_frame(scene) if condition == "gray night" or number == 0 else None
            for i, (truth, mask) in enumerate(zip(scene.night, scene.masks)):
                truth, given = night_input(condition, truth, i)
                truth_lab = rgb_to_lab(truth)
                gray = truth_lab.copy()
                gray[..., 1:] = 0
                outputs = {"gray": lab_to_rgb(gray), "copy": copy_of(reference, truth_lab),
                           "generic": with_lightness(colorize_images(generic, [given])[0], truth_lab),
                           "reference": with_lightness(colorize_images(generic, [given], by_reference)[0], truth_lab)}
                for method, out in outputs.items():
                    tallies[condition][method].add(out, truth, truth_lab, mask)
                if sheet_frames is not None and i == shown:
                    sheet_frames.append((f"{scene.name}, {condition}", reference.picture(),
                                         cv2.cvtColor(given, cv2.COLOR_BGR2RGB), outputs, truth))
    return {c: {m: t.row() for m, t in methods.items() if t.psnr} for c, methods in tallies.items()}


def goal_results(rows: dict) -> list[tuple[str, float, float, bool]]:
    """(the goal in words, ours, the bound, met) for each goal whose numbers exist."""
    results = []
    for condition, measure, against, factor, kind in GOALS:
        ours = rows.get(condition, {}).get("reference", {}).get(measure, math.nan)
        if against == "truth":
            bound = factor
        else:
            theirs = rows.get(condition, {}).get(against, {}).get(measure, math.nan)
            bound = theirs + factor if kind == "min_db" else factor * theirs
        if not (math.isfinite(ours) and math.isfinite(bound)):
            continue
        met = ours >= bound if kind in ("min_db", "min_ratio") else ours <= bound
        words = {"min_db": f">= {against}'s {factor:+g} dB", "max_ratio": f"<= {factor:g}x {against}'s",
                 "min_ratio": f">= {factor:g} of the truth's"}[kind]
        results.append((f"{condition}: {measure} {words}", ours, bound, met))
    return results


COLUMNS = [("psnr", "PSNR", "{:.2f} dB"), ("psnr_vs_gray", "vs gray", "{:+.2f} dB"), ("cast", "cast", "{:.2f}"),
           ("ab_background", "ab error, background", "{:.2f}"), ("ab_moving", "ab error, moving", "{:.2f}"),
           ("colorfulness_ratio", "CF / truth", "{:.2f}")]


def format_rows(rows: dict) -> str:
    lines = ["| condition | method | " + " | ".join(t for _, t, _ in COLUMNS) + " |",
             "| --- | --- |" + " --- |" * len(COLUMNS)]
    for condition, methods in rows.items():
        gray_psnr = methods.get("gray", {}).get("psnr", math.nan)
        for method, row in methods.items():
            row = {**row, "psnr_vs_gray": row["psnr"] - gray_psnr}
            cells = [fmt.format(row[k]) if math.isfinite(row.get(k, math.nan)) else "-" for k, _, fmt in COLUMNS]
            lines.append(f"| {condition} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def contact_sheet(frames: list, height: int = 160) -> np.ndarray:
    """One row per sample: reference | night input | copy | generic | reference model | truth."""
    rows = []
    for _, reference, given, outputs, truth in frames:
        cells = [reference, given, outputs["copy"], outputs["generic"], outputs["reference"], truth]
        scaled = [cv2.resize(c, (round(c.shape[1] * height / c.shape[0]), height), interpolation=cv2.INTER_AREA)
                  for c in cells]
        rows.append(np.hstack(scaled))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def main(args: argparse.Namespace) -> int:
    scenes = []
    for folder in args.folders:
        if not folder.is_dir():
            print(f"streamd eval: not a folder: {folder}", file=sys.stderr)
            return 2
        scenes += load_scenes(folder, args.masks)
    if not scenes:
        print("streamd eval --reference: no scene with enough frames for a day and a night", file=sys.stderr)
        return 1
    generic = Colorizer(args.model, temperature=(args.temperature or [None])[0])
    model = Colorizer(args.reference_model or shipped_model(REFERENCE_MODEL))
    if not model.takes_reference:
        print(f"streamd eval: --reference-model {model.path} takes no day reference", file=sys.stderr)
        return 2
    start = time.monotonic()
    sheet: list | None = [] if args.sheets else None
    try:
        rows = evaluate(scenes, generic, model, sheet)
    except ReferenceError as e:
        print(f"streamd eval: {e}", file=sys.stderr)
        return 1
    nights = sum(len(s.night) for s in scenes)
    print(f"\n{len(scenes)} scenes ({', '.join(s.name for s in scenes)}): the first {DAY_SHARE:.0%} of each one's "
          f"frames are its day, the other {nights} frames its night; generic {generic.info.model_id}, reference "
          f"model {model.info.model_id}")
    print(format_rows(rows))
    print("\ngoals:")
    for words, ours, bound, met in goal_results(rows):
        print(f"- {'met' if met else 'NOT met'}: {words} ({ours:.2f} against {bound:.2f})")
    print(f"\nevaluated in {time.monotonic() - start:.1f} s")
    if sheet:
        args.sheets.mkdir(parents=True, exist_ok=True)
        path = args.sheets / "reference.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(contact_sheet(sheet), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
        print(f"wrote {path} (reference | night input | copy | generic | reference model | truth)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        safe = json.loads(json.dumps(rows, allow_nan=True).replace("NaN", "null"))
        args.json.write_text(json.dumps({"generic": generic.info.model_id, "reference_model": model.info.model_id,
                                         "rows": safe}, indent=2) + "\n")
    return 0
