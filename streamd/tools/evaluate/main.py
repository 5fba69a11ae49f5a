"""`streamd eval`: score a colorization model against ground truth, always beside the gray baseline.

Each folder given is a subset, scored and reported on its own (inputs.py: images, gray/colour pairs or
videos); the models (an ONNX model at one or more temperatures, or trained weights decoded in PyTorch at one
or more decodings) run through the product's own code path (scoring.py) and are scored (metrics.py); the
tables, sheets and JSON are report.py's. `--reference` is reference.py's.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import cv2

from streamd.infer.onnx_runtime import Colorizer, ModelInfo
from streamd.tools.evaluate.inputs import find_subset
from streamd.tools.evaluate.metrics import TRUTH
from streamd.tools.evaluate.report import (COLUMNS, VIDEO_COLUMNS, json_safe, contact_sheet, format_comparison,
                                           format_summary, format_table, summary)
from streamd.tools.evaluate.scoring import evaluate_subset


def decoding_label(temperature: float, prior_correction: float, shrink: float, cast_correction: float) -> str:
    """How a model's rows are labelled: 'ours T=2 alpha=0.5 shrink=1 cast=0.5' (zero settings left out)."""
    return (f"ours T={temperature:g}" + (f" alpha={prior_correction:g}" if prior_correction else "")
            + (f" shrink={shrink:g}" if shrink else "") + (f" cast={cast_correction:g}" if cast_correction else ""))


def label_of(info: ModelInfo) -> str:
    """The label of a model's rows, from the decoding its metadata (or a Decoding's) says."""
    return decoding_label(info.temperature, info.prior_correction, info.shrink, info.cast_correction)


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
        return {label_of(d.info): d for d in decodings(load_weights(args.model), info, args.decode or [default])}
    if args.decode:
        raise ValueError("--decode needs weights (--model WEIGHTS.pt); an ONNX model's decoding is set at export "
                         "(its temperature can be overridden with --temperature)")
    colorizers = {}
    for t in dict.fromkeys(args.temperature or [None]):
        c = Colorizer(args.model, temperature=t)
        colorizers[label_of(c.info)] = c
    return colorizers


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
        args.json.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")
    return 0
