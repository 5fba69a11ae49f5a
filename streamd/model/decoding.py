"""Decodings of trained weights, scored side by side by `streamd eval --model WEIGHTS.pt --decode T:ALPHA ...`.

The network runs once per input; every decoding then reads the same logits. A decoding is what `streamd
export` would bake into an ONNX model at that temperature and prior correction, so the decoding chosen here is
the one that ships.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from streamd.infer.onnx_runtime import ModelInfo
from streamd.model.train import build_decoder, build_net


class CachedNetwork(torch.nn.Module):
    """The network's logits per distinct input, computed once (the decodings read them many times). A video's
    frames go through each decoding in turn, so the cache holds the most recent CACHE_INPUTS inputs."""

    CACHE_INPUTS = 128  # a video's frames, as `streamd eval` reads them (about 4 MB of logits each)

    def __init__(self, weights: dict) -> None:
        super().__init__()
        self.net = build_net(weights).eval()
        self.cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def forward(self, lightness: torch.Tensor) -> torch.Tensor:
        key = hashlib.blake2b(lightness.numpy().tobytes(), digest_size=16).digest() + str(lightness.shape).encode()
        if key in self.cache:
            self.cache.move_to_end(key)
        else:
            self.cache[key] = self.net(lightness).float()
            if len(self.cache) > self.CACHE_INPUTS:
                self.cache.popitem(last=False)
        return self.cache[key]


class Decoding:
    """Quacks like a Colorizer (L in, ab out): the annealed mean at `temperature` after dividing the class
    rebalancing out to the power `alpha` (then `shrink` and `cast_correction` as AnnealedMean's), in front of
    a shared CachedNetwork."""

    def __init__(self, network: CachedNetwork, weights: dict, info: ModelInfo, temperature: float,
                 alpha: float, shrink: float = 0.0, cast_correction: float = 0.0) -> None:
        self.info = ModelInfo(info.model_id, info.input_height, info.input_width, temperature, alpha, shrink,
                              cast_correction)
        self.decoder = build_decoder(weights, temperature, alpha, shrink, cast_correction).eval()
        self.decoder.net = network

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.decoder(torch.from_numpy(lightness)).numpy()


def parse_decode(spec: str) -> tuple[float, float, float, float]:
    """'T[:ALPHA[:SHRINK[:CAST]]]' -> (T, ALPHA, SHRINK, CAST); T > 0, SHRINK >= 0, 0 <= CAST <= 1
    (streamd.model.network.AnnealedMean)."""
    try:
        t, alpha, shrink, cast = ([float(x) for x in spec.split(":")] + [0.0, 0.0, 0.0])[:4]
        if spec.count(":") > 3 or not t > 0 or not shrink >= 0 or not 0 <= cast <= 1:
            raise ValueError
    except ValueError:
        raise ValueError(f"--decode {spec!r}: expected T[:ALPHA[:SHRINK[:CAST]]] with T > 0, SHRINK >= 0 and "
                         "CAST from 0 to 1, e.g. 2:0.5") from None
    return t, alpha, shrink, cast


def decodings(weights: dict, info: ModelInfo, specs: list[str]) -> list[Decoding]:
    """One Decoding per 'T[:ALPHA[:SHRINK[:CAST]]]' spec, all reading one network; `info` names the weights
    and gives the network's input size. Each Decoding's `info` carries its settings."""
    network = CachedNetwork(weights)
    settings = [parse_decode(spec) for spec in specs]
    return [Decoding(network, weights, info, *each) for each in settings]
