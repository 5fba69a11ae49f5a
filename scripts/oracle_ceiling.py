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

from decode_study import print_table, score  # scripts/ is on the path when run as a script
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

    def show(truth: np.ndarray) -> None:
        for oracle in oracles.values():
            oracle.truth = truth

    print_table(score(oracles, args.images, args.half, on_image=show), list(oracles))


if __name__ == "__main__":
    main()
