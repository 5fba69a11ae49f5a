"""`streamd adapt`: fine-tune the shipped model on one camera's own colour (day) frames.

A fixed camera films the same scene all day in colour and all night in gray; its day frames teach the model
what colour this scene's kerbs, doors and cars are. Frames are taken in time order; the last part is held
back (time-separated, so near-duplicate neighbours do not leak into the score), the model is fine-tuned on
the rest from the generic weights within a time budget, and the adapted model is kept only if it beats the
generic one on the held-back frames in both class-rebalanced AuC and PSNR.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from streamd.infer import Colorizer, shipped_model
from streamd.model.data import VIDEO_SUFFIXES, load_images, load_video_frames

log = logging.getLogger(__name__)

# The network's last stage (docs/adaptation.md, "Cost of per-camera models"): adapting only this leaves the
# rest identical to the generic model, so a GPU could run that shared trunk once for all cameras.
HEAD = ("up_quarter", "classify")


@dataclass
class Scores:
    auc_rebalanced: float
    psnr: float


@dataclass
class AdaptReport:
    train_frames: int
    held_out_frames: int
    steps: int
    seconds: float
    generic: Scores
    adapted: Scores
    gray: Scores
    kept: bool
    model: str | None


def load_sources(sources: list[Path], max_side: int = 320, video_every: int = 5) -> list[np.ndarray]:
    """RGB frames in time order: image folders (a camera's store) sorted by name, videos frame by frame."""
    frames: list[np.ndarray] = []
    for source in sources:
        if source.is_dir():
            frames += load_images(source, max_side)
        elif source.suffix.lower() in VIDEO_SUFFIXES:
            frames += load_video_frames(source, video_every, max_side)
        else:
            raise ValueError(f"{source}: neither a folder of images nor a video "
                             f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    return frames


def score(colorizer: Colorizer | None, frames: list[np.ndarray]) -> Scores:
    """Set-wide rebalanced AuC and mean PSNR of a model (None: the gray baseline) on RGB frames."""
    from streamd.evaluate import ab_histogram, auc, gray_baseline, psnr
    from streamd.offline import colorize_images

    if colorizer is None:
        outputs = [gray_baseline(f) for f in frames]
    else:
        bgr = colorize_images(colorizer, [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames])
        outputs = [cv2.cvtColor(b, cv2.COLOR_BGR2RGB) for b in bgr]
    hist = sum(ab_histogram(o, t) for o, t in zip(outputs, frames))
    return Scores(auc(hist, rebalanced=True), float(np.mean([min(psnr(o, t), 100.0) for o, t in zip(outputs, frames)])))


def adapt(sources: list[Path], out: Path, budget_minutes: float = 8.0, holdout: float = 0.4,
          init: Path | None = None, crop: int = 160, batch: int = 16, lr: float = 5e-4, seed: int = 0,
          device: str = "auto", max_steps: int | None = None, head_only: bool = False) -> AdaptReport:
    from streamd.model.export import export
    from streamd.model.train import TrainConfig, load_weights, train

    frames = load_sources(sources)
    split = int(round(len(frames) * (1 - holdout)))
    if split < 2 or len(frames) - split < 1:
        raise ValueError(f"{len(frames)} frames are too few to adapt on and hold some back")
    fit, held = frames[:split], frames[split:]
    init = init or shipped_model().with_suffix(".pt")
    base = load_weights(init)
    smallest = min(min(f.shape[:2]) for f in fit)
    crop = min(crop, smallest // 16 * 16)
    with tempfile.TemporaryDirectory() as work:
        cfg = TrainConfig(data=[], out=work, steps=max_steps or 10 ** 9, batch=batch, crop=crop, lr=lr, warmup=20, seed=seed,
                          device=device, init=str(init), checkpoint_every=10 ** 9, max_seconds=budget_minutes * 60,
                          augment=True, widths=tuple(base["widths"]), train_only=HEAD if head_only else ())
        weights_path = train(cfg, images=fit)
        weights = load_weights(weights_path)
        candidate = Path(work) / "adapted.onnx"
        generic = Colorizer()
        export(weights_path, candidate, temperature=generic.info.temperature,  # the generic model's decoding
               input_size=(generic.info.input_height, generic.info.input_width),
               prior_correction=generic.info.prior_correction, shrink=generic.info.shrink,
               model_id=f"{out.stem}-adapted")
        adapted_scores, generic_scores = score(Colorizer(candidate), held), score(generic, held)
        kept = adapted_scores.auc_rebalanced > generic_scores.auc_rebalanced and adapted_scores.psnr > generic_scores.psnr
        if kept:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(candidate, out)
            shutil.copyfile(weights_path, out.with_suffix(".pt"))
            shutil.copyfile(candidate.with_suffix(".md"), out.with_suffix(".md"))
    return AdaptReport(len(fit), len(held), int(weights["steps"]), float(weights["train_seconds"]), generic_scores,
                       adapted_scores, score(None, held), kept, str(out) if kept else None)


def main(args) -> int:
    report = adapt(args.sources, args.output, args.budget_minutes, args.holdout, args.init, seed=args.seed,
                   device=args.device, max_steps=args.max_steps, head_only=args.head_only)
    print(f"adapted on {report.train_frames} frames for {report.steps} steps ({report.seconds / 60:.1f} min); "
          f"scored on the {report.held_out_frames} frames held back:")
    print(f"{'':10} {'AuC rebal':>10} {'PSNR':>8}")
    for name in ("gray", "generic", "adapted"):
        s = getattr(report, name)
        print(f"{name:10} {s.auc_rebalanced:10.2f} {s.psnr:8.2f}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if report.kept:
        print(f"kept: wrote {report.model}")
        return 0
    print("not kept: the adapted model does not beat the generic one on both scores")
    return 1
