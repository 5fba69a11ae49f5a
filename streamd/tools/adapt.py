"""`streamd adapt`: fine-tune the shipped model on one camera's own colour (day) frames.

A fixed camera films the same scene all day in colour and all night in gray; its day frames teach the model
what colour this scene's kerbs, doors and cars are. Frames are taken in time order; the last part is held
back (time-separated, so near-duplicate neighbours do not leak into the score), the model is fine-tuned on
the rest from the generic weights within a time budget, and the adapted model is kept only if it beats the
model the camera runs now (`against`: its current adapted model, a configured one, else the generic one) on
the held-back frames in both class-rebalanced AuC and PSNR. Both are scored as a CPU host runs them: on
ONNX Runtime's CPU provider, each through its int8 copy where it has one; the adapted model gets its int8
copy first, calibrated on the camera's own frames.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from streamd.colour.lab import rgb_to_lab
from streamd.infer.onnx_runtime import Colorizer, int8_copy, shipped_model
from streamd.model.data import VIDEO_SUFFIXES, load_images, load_video_frames

log = logging.getLogger(__name__)

# The network's last stage (docs/adaptation.md, "Cost of per-camera models"): adapting only this leaves the
# rest identical to the generic model, so a GPU could run that shared trunk once for all cameras.
HEAD = ("up_quarter", "classify")
CALIBRATION_FRAMES = 64  # of the camera's training frames, spread over them, for the int8 copy
# An adapted model's own decoding, not the generic model's (T = 2, half the class rebalancing divided out):
# that flattening is for scenes the generic network can only guess, and it turns back towards gray the
# colours an adapted network is sure of. Chosen on the held-back frames of three fixed cameras, the same
# adapted weights decoded each way and run as their int8 copies (docs/adaptation.md, "An adapted model's
# decoding"): T = 0.5 without the correction scored on average +7.5 dB and +10.0 rebalanced AuC points over
# gray, the generic model's decoding +4.2 dB and +8.0; half the correction gained 0.2 dB and lost 0.3 points.
ADAPTED_TEMPERATURE = 0.5
ADAPTED_PRIOR_CORRECTION = 0.0
WORK_SUFFIX = ".work"  # a run's scratch folder beside its model: .<model>-XXXXXXXX.work


@dataclass
class Scores:
    auc_rebalanced: float
    psnr: float
    cast: float  # per frame, the distance between the mean (a, b) of the output and of the truth, averaged


@dataclass
class AdaptReport:
    train_frames: int
    held_out_frames: int
    steps: int
    seconds: float
    current_model: str  # the id of the model the adapted one had to beat
    current: Scores
    adapted: Scores
    gray: Scores
    kept: bool
    model: str | None
    int8: str | None  # the kept model's int8 copy, which CPU hosts run (None: not kept, or not made)
    int8_error: str | None = None  # why no int8 copy was made


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


def spread(items: list, count: int) -> list:
    """At most `count` of the items, evenly spaced over them (first and last included)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def mean_ab(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(rgb)[..., 1:].reshape(-1, 2).mean(axis=0)


def score(colorizer: Colorizer | None, frames: list[np.ndarray]) -> Scores:
    """Set-wide rebalanced AuC, mean PSNR and colour cast of a model (None: the gray baseline) on RGB frames."""
    from streamd.tools.colorize import colorize_images
    from streamd.tools.evaluate.metrics import ab_histogram, auc, gray_baseline, psnr

    if colorizer is None:
        outputs = [gray_baseline(f) for f in frames]
    else:
        bgr = colorize_images(colorizer, [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in frames])
        outputs = [cv2.cvtColor(b, cv2.COLOR_BGR2RGB) for b in bgr]
    hist = sum(ab_histogram(o, t) for o, t in zip(outputs, frames))
    cast = np.mean([np.linalg.norm(mean_ab(o) - mean_ab(t)) for o, t in zip(outputs, frames)])
    return Scores(auc(hist, rebalanced=True), float(np.mean([min(psnr(o, t), 100.0) for o, t in zip(outputs, frames)])),
                  float(cast))


def make_int8_copy(model: Path, frames: list[np.ndarray]) -> str | None:
    """Quantize `model` beside itself (int8_copy), calibrated on RGB `frames`; returns why not, or None."""
    try:
        from streamd.model.quantize import quantize_images

        quantize_images(model, int8_copy(model), [cv2.cvtColor(f, cv2.COLOR_RGB2BGR)
                                                  for f in spread(frames, CALIBRATION_FRAMES)])
        return None
    except Exception as e:  # the fp32 model is still a model: the camera runs it instead, slower on a CPU
        log.warning("no int8 copy of %s: %s", model.name, e)
        int8_copy(model).unlink(missing_ok=True)
        return f"{type(e).__name__}: {e}"


def work_folder(out: Path) -> tempfile.TemporaryDirectory:
    """The run's scratch folder (weights, candidate models, files being written), beside `out`: on its file
    system, so that a finished file is renamed into place, and where the daemon finds what a killed run left
    (streamd.daemon.schedule.remove_leftovers)."""
    return tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-", suffix=WORK_SUFFIX)


def write_whole(source: Path, target: Path, work: Path) -> None:
    """Copy `source` to `target` so that `target` is either absent or complete: written in the run's `work`
    folder, flushed to the disk, then renamed (a full disk or a kill mid-copy leaves no half model to be
    loaded; what it leaves is inside `work`)."""
    part = work / f"{target.name}.part"
    try:
        shutil.copyfile(source, part)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def adapt(sources: list[Path], out: Path, budget_minutes: float = 8.0, holdout: float = 0.4,
          init: Path | None = None, crop: int = 160, batch: int = 16, lr: float = 5e-4, seed: int = 0,
          device: str = "auto", max_steps: int | None = None, head_only: bool = False,
          against: Path | None = None, threads: int = 0) -> AdaptReport:
    """Adapt on `sources`, keep the model at `out` if it beats `against` (default: the generic model, the
    ONNX model beside `init`, else the shipped one). `threads` caps training and scoring threads (0: all)."""
    frames = load_sources(sources)
    split = int(round(len(frames) * (1 - holdout)))
    if split < 2 or len(frames) - split < 1:
        raise ValueError(f"{len(frames)} frames are too few to adapt on and hold some back")
    fit, held = frames[:split], frames[split:]
    import torch

    from streamd.model.export import export
    from streamd.model.train import TrainConfig, load_weights, train

    if threads:
        torch.set_num_threads(threads)
    init = init or shipped_model().with_suffix(".pt")
    generic_path = init.with_suffix(".onnx") if init.with_suffix(".onnx").exists() else shipped_model()
    against = against or generic_path
    if not against.exists():
        raise ValueError(f"{against}: no such model to compare with")
    base = load_weights(init)
    smallest = min(min(f.shape[:2]) for f in fit)
    crop = min(crop, smallest // 16 * 16)
    out.parent.mkdir(parents=True, exist_ok=True)
    with work_folder(out) as work:
        cfg = TrainConfig(data=[], out=work, steps=max_steps or 10 ** 9, batch=batch, crop=crop, lr=lr, warmup=20, seed=seed,
                          device=device, init=str(init), checkpoint_every=10 ** 9, max_seconds=budget_minutes * 60,
                          augment=True, widths=tuple(base["widths"]), train_only=HEAD if head_only else ())
        weights_path = train(cfg, images=fit)
        weights = load_weights(weights_path)
        candidate = Path(work) / "adapted.onnx"
        generic = Colorizer(generic_path, "cpu")
        # The generic model's input size, with the adapted decoding and no shrink or cast correction: an adapted
        # network has learned its camera's own colours and mean colour (a corridor's warm light), which those
        # are there to doubt in scenes the generic network guesses
        export(weights_path, candidate, temperature=ADAPTED_TEMPERATURE,
               input_size=(generic.info.input_height, generic.info.input_width),
               prior_correction=ADAPTED_PRIOR_CORRECTION, model_id=f"{out.stem}-adapted")
        int8_error = make_int8_copy(candidate, fit)
        current = Colorizer(against, "cpu", threads=threads, int8="auto")
        adapted_scores = score(Colorizer(candidate, "cpu", threads=threads, int8="auto"), held)
        current_scores = score(current, held)
        kept = adapted_scores.auc_rebalanced > current_scores.auc_rebalanced and adapted_scores.psnr > current_scores.psnr
        if kept:
            if int8_error is None:  # first, so that the model never appears without the copy it runs as
                write_whole(int8_copy(candidate), int8_copy(out), Path(work))
            write_whole(weights_path, out.with_suffix(".pt"), Path(work))
            write_whole(candidate.with_suffix(".md"), out.with_suffix(".md"), Path(work))
            write_whole(candidate, out, Path(work))  # last: a model file that exists is whole, and so is all it needs
    return AdaptReport(len(fit), len(held), int(weights["steps"]), float(weights["train_seconds"]),
                       current.info.model_id, current_scores, adapted_scores, score(None, held), kept,
                       str(out) if kept else None, str(int8_copy(out)) if kept and int8_error is None else None,
                       int8_error)


def main(args) -> int:
    report = adapt(args.sources, args.output, args.budget_minutes, args.holdout, args.init, seed=args.seed,
                   device=args.device, max_steps=args.max_steps, head_only=args.head_only, against=args.against,
                   threads=args.threads)
    print(f"adapted on {report.train_frames} frames for {report.steps} steps ({report.seconds / 60:.1f} min); "
          f"scored on the {report.held_out_frames} frames held back:")
    print(f"{'':10} {'AuC rebal':>10} {'PSNR':>8} {'cast':>6}")
    for name, label in (("gray", "gray"), ("current", "current"), ("adapted", "adapted")):
        s = getattr(report, name)
        print(f"{label:10} {s.auc_rebalanced:10.2f} {s.psnr:8.2f} {s.cast:6.2f}")
    print(f"current = {report.current_model}")
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if report.kept:
        print(f"kept: wrote {report.model}" + (f" and its int8 copy {report.int8}" if report.int8 else
                                               f" (no int8 copy: {report.int8_error})"))
        return 0
    print(f"not kept: the adapted model does not beat {report.current_model} on both scores")
    return 1
