"""The ceiling of everything after the network: the truth's own ab at the network's output grid (a quarter
of its input), optionally scaled towards gray, put through the product's guided upsampling and
recombination (streamd.offline, as `streamd eval` does), and scored against the gray baseline. What the
oracle loses is what the output resolution and the recombination cost; the rest of the gap is the network's.

    python scripts/oracle_ceiling.py ../shared/data/val/images --half even --scale 1 0.7 0.5 0.3
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from streamd.evaluate import Evaluation, colorize_rgb, image_files, read_rgb
from streamd.infer import Colorizer
from streamd.lab import rgb_to_lab


class Oracle:
    """Quacks like a Colorizer: returns `scale` times the truth's ab at the network's output grid."""

    def __init__(self, info, scale: float) -> None:
        self.info, self.scale = info, scale
        self.truth: np.ndarray | None = None  # RGB of the image being colorized, set by the caller

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        _, _, h, w = lightness.shape
        lab = rgb_to_lab(cv2.resize(self.truth, (w, h), interpolation=cv2.INTER_AREA))
        ab = cv2.resize(lab[..., 1:], (w // 4, h // 4), interpolation=cv2.INTER_AREA)
        return (self.scale * ab.transpose(2, 0, 1)[None]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=Path)
    parser.add_argument("--half", choices=["even", "odd"])
    parser.add_argument("--scale", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()

    info = Colorizer().info  # the shipped model's input size
    oracles = {f"oracle x{s:g}": Oracle(info, s) for s in args.scale}
    evaluation = Evaluation(list(oracles))
    paths = image_files(args.images)
    if args.half:
        paths = paths[args.half == "odd"::2]
    for path in paths:
        truth = read_rgb(path)
        if truth is None:
            continue
        for oracle in oracles.values():
            oracle.truth = truth
        evaluation.add(truth, {k: v[0] for k, v in colorize_rgb(oracles, [truth]).items()})
    rows = evaluation.rows()
    print("| oracle | PSNR vs gray | rebalanced AuC vs gray | colourfulness / truth |")
    print("| --- | --- | --- | --- |")
    for label in oracles:
        r = rows[label]
        print(f"| {label} | {r['delta_psnr']:+.2f} | {r['delta_auc_rebalanced']:+.2f} | {r['colorfulness_ratio']:.2f} |")


if __name__ == "__main__":
    main()
