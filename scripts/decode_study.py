"""How far decoding alone moves the scores: the network runs once per image, then each decoding of its
distribution is scored on the same images (PSNR, rebalanced AuC, colourfulness against the gray baseline).

Decodings: the annealed mean at temperature T, optionally after dividing out the class-rebalancing weights
the loss multiplied in (p_true(q|x) ~ p_trained(q|x) / w(q)^alpha: the weighted cross-entropy's optimum is
w(q) p(q|x), renormalised).

    python scripts/decode_study.py WEIGHTS.pt ../shared/data/val/images --limit 70 \
        --decode 1:0 1:0.5 0.6:0.5 ...        # T:alpha pairs
        --guide 2:0.5:1:4 2:0.5:2:1e6 ...     # T:alpha:radius:eps, the guided upsampling's settings
        --ensemble OTHER.pt ...               # decode several networks' mean log-probabilities
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import streamd.colour

from streamd.evaluate import GRAY, Evaluation, colorize_rgb, evenly_spaced, image_files, read_rgb
from streamd.infer import Colorizer
from streamd.model.train import build_decoder, build_net, load_weights


class CachedNetwork(torch.nn.Module):
    """The network's logits per distinct input, computed once (the study decodes them many times)."""

    def __init__(self, weights: dict) -> None:
        super().__init__()
        self.net = build_net(weights).eval()
        self.cache: dict[bytes, torch.Tensor] = {}

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        key = hashlib.blake2b(lightness.numpy().tobytes(), digest_size=16).digest() + str(lightness.shape).encode()
        if key not in self.cache:
            self.cache[key] = self.net(lightness).float()
        return self.cache[key]


class Ensemble(torch.nn.Module):
    """Several networks' log-probabilities averaged (a geometric mean of their distributions), decoded as one:
    does a second or third run move the trade-off curve, or do they all learn the same?"""

    def __init__(self, networks: list[CachedNetwork]) -> None:
        super().__init__()
        self.networks = torch.nn.ModuleList(networks)

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.log_softmax(n(lightness), dim=1) for n in self.networks]).mean(0)


class Decoding:
    """Quacks like a Colorizer: L in, ab out, through the decoding export bakes in front of the cached network."""

    def __init__(self, network: torch.nn.Module, info, weights: dict, temperature: float, alpha: float) -> None:
        self.info = info
        self.decoder = build_decoder(weights, temperature, alpha).eval()
        self.decoder.net = network

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.decoder(torch.from_numpy(lightness)).numpy()


class Guided:
    """Any decoding, its image recombined with the given guided-filter settings (streamd.colour.GUIDE_RADIUS
    and GUIDE_EPS). The evaluation finishes each image right after predicting it, so setting the module's
    constants here covers exactly this decoding's recombination."""

    def __init__(self, decoding: Decoding, radius: int, eps: float) -> None:
        self.decoding, self.info, self.radius, self.eps = decoding, decoding.info, radius, eps

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        streamd.colour.GUIDE_RADIUS, streamd.colour.GUIDE_EPS = self.radius, self.eps
        return self.decoding(lightness)


class ConfidenceDecoding(Decoding):
    """Two annealed means of one distribution, mixed per pixel by how sure the network is there:
    ab = s^k * mean(T_sure) + (1 - s^k) * mean(T_unsure), with s = 1 - entropy / log Q of the corrected
    distribution at T = 1. Where the network is sure (sky, foliage) the colour is saturated; where it is
    not, it stays near the mean, which protects PSNR."""

    def __init__(self, network: torch.nn.Module, info, weights: dict, sure: float, unsure: float, alpha: float,
                 power: float) -> None:
        super().__init__(network, info, weights, 1.0, alpha)
        self.sure, self.unsure, self.power = sure, unsure, power

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        d = self.decoder
        with torch.no_grad():
            logits = d.net(torch.from_numpy(lightness)) + d.log_correction
            p = torch.softmax(logits, dim=1)
            sureness = 1.0 - (-(p * torch.log(p.clamp_min(1e-12))).sum(1, keepdim=True)) / np.log(p.shape[1])
            weight = sureness ** self.power

            def mean(t: float) -> torch.Tensor:
                return torch.einsum("nqhw,qc->nchw", torch.softmax(logits / t, dim=1), d.bins)

            return (weight * mean(self.sure) + (1 - weight) * mean(self.unsure)).numpy()


def score(decodings: dict, images: Path, half: str | None = None, limit: int = 0,
          on_image: Callable[[np.ndarray], None] | None = None) -> Evaluation:
    """Every decoding (Colorizer-like, by label) scored on the images of `images` (one `half` of them,
    `limit` evenly spaced); `on_image` sees each ground truth before it is colorized."""
    evaluation = Evaluation(list(decodings))
    paths = image_files(images)
    if half:
        paths = paths[half == "odd"::2]
    for path in evenly_spaced(paths, limit):
        truth = read_rgb(path)
        if truth is None:
            continue
        if on_image:
            on_image(truth)
        evaluation.add(truth, {k: v[0] for k, v in colorize_rgb(decodings, [truth]).items()})
    return evaluation


def print_table(evaluation: Evaluation, labels: list[str]) -> None:
    rows = evaluation.rows()
    print(f"{evaluation.count} images; gray PSNR {rows[GRAY]['psnr']:.2f}, rebalanced AuC {rows[GRAY]['auc_rebalanced']:.2f}")
    print("| decoding | PSNR vs gray | rebalanced AuC vs gray | AuC | colourfulness / truth |")
    print("| --- | --- | --- | --- | --- |")
    for label in labels:
        r = rows[label]
        print(f"| {label} | {r['delta_psnr']:+.2f} | {r['delta_auc_rebalanced']:+.2f} | {r['auc']:.2f} | {r['colorfulness_ratio']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--half", choices=["even", "odd"], help="only every other image: choose on one half, "
                        "report on the other")
    parser.add_argument("--decode", nargs="+", default=["1:0"], help="T:alpha pairs")
    parser.add_argument("--confidence", nargs="*", default=[], help="T_sure:T_unsure:alpha:power (ConfidenceDecoding)")
    parser.add_argument("--guide", nargs="*", default=[], help="T:alpha:radius:eps (GuidedDecoding)")
    parser.add_argument("--ensemble", nargs="*", type=Path, default=[],
                        help="more weights: decode the mean log-probabilities of WEIGHTS and these (class "
                             "rebalancing weights from WEIGHTS)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("WIDTH", "HEIGHT"),
                        help="the network input's area (aspect follows each image; default: the shipped model's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    weights = load_weights(args.weights)
    info = Colorizer().info  # only its input size is used
    if args.input_size:
        info = dataclasses.replace(info, input_width=args.input_size[0], input_height=args.input_size[1])
    network = CachedNetwork(weights)
    if args.ensemble:
        network = Ensemble([network, *(CachedNetwork(load_weights(p)) for p in args.ensemble)])
    decodings = {}
    for spec in args.decode:
        t, a = (float(x) for x in spec.split(":"))
        decodings[f"T={t:g} a={a:g}"] = Decoding(network, info, weights, t, a)
    for spec in args.confidence:
        sure, unsure, a, k = (float(x) for x in spec.split(":"))
        decodings[f"sure T={sure:g} unsure T={unsure:g} a={a:g} k={k:g}"] = ConfidenceDecoding(
            network, info, weights, sure, unsure, a, k)

    if args.guide:  # the other decodings keep the shipped settings
        decodings = {k: Guided(v, streamd.colour.GUIDE_RADIUS, streamd.colour.GUIDE_EPS) for k, v in decodings.items()}
    for spec in args.guide:
        t, a, radius, eps = (float(x) for x in spec.split(":"))
        decodings[f"T={t:g} a={a:g} guide r={radius:g} eps={eps:g}"] = Guided(
            Decoding(network, info, weights, t, a), int(radius), eps)
    evaluation = score(decodings, args.images, args.half, args.limit)
    print_table(evaluation, list(decodings))
    rows = evaluation.rows()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
