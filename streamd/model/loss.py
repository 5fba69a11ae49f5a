"""Seed eq. 1: cross-entropy against soft-encoded ab targets, weighted per pixel by W.

W = class-rebalancing weight (Zhang et al.) x gradient-prior weight (the seed), each from an empirical
distribution measured on the training data, Gaussian-smoothed, mixed with uniform and inverted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from streamd.colour.lab import AB_GRID

SOFT_NEIGHBOURS = 5
SOFT_SIGMA = 5.0
PRIOR_SIGMA = 5.0
PRIOR_MIX = 0.5  # lambda: weight of the uniform distribution in the mix (Zhang et al.'s value)
GRADIENT_STEP = 2.0  # ab units per pixel (at output scale) per gradient-histogram bin
GRADIENT_BINS = 64


def _rebalance(prior: np.ndarray, smooth: np.ndarray, mix_weight: float) -> np.ndarray:
    """Smooth the prior, mix with uniform over the bins it covers, invert, normalise E_prior[w] = 1."""
    p = smooth @ prior
    p /= p.sum()
    support = p > 0  # a bin no training pixel comes near keeps weight 0 instead of infinity
    mix = (1 - mix_weight) * p + mix_weight / support.sum()
    w = np.where(support, 1.0 / np.where(support, mix, 1.0), 0.0)
    return (w / (prior * w).sum()).astype(np.float32)


def gradient_magnitude(ab: torch.Tensor) -> torch.Tensor:
    """Magnitude of the ab gradient (N, 1, H, W): where colour changes, i.e. where it bleeds."""
    dx = F.pad(ab[..., :, 1:] - ab[..., :, :-1], (0, 1))
    dy = F.pad(ab[..., 1:, :] - ab[..., :-1, :], (0, 0, 0, 1))
    return torch.sqrt((dx ** 2 + dy ** 2).sum(1, keepdim=True))


@dataclass
class Priors:
    """Empirical distributions of the training data: ab bins and ab-gradient magnitudes."""

    bin_prior: np.ndarray  # (Q,)
    gradient_prior: np.ndarray  # (GRADIENT_BINS,)

    @classmethod
    def measure(cls, ab_batches: list[torch.Tensor], bins: torch.Tensor) -> "Priors":
        grid = BinGrid(bins)
        counts = torch.zeros(len(bins), dtype=torch.float64)
        gcounts = torch.zeros(GRADIENT_BINS, dtype=torch.float64)
        for ab in ab_batches:
            counts += torch.bincount(nearest_bins(ab, grid).flatten(), minlength=len(bins)).double()
            g = (gradient_magnitude(ab) / GRADIENT_STEP).long().clamp(max=GRADIENT_BINS - 1)
            gcounts += torch.bincount(g.flatten(), minlength=GRADIENT_BINS).double()
        return cls((counts / counts.sum()).numpy(), (gcounts / gcounts.sum()).numpy())

    def class_weights(self, bins: np.ndarray, mix_weight: float = PRIOR_MIX) -> np.ndarray:
        """A smaller mix_weight weighs rare colours more: 1 turns class rebalancing off."""
        d2 = ((bins[:, None, :] - bins[None, :, :]) ** 2).sum(-1)
        return _rebalance(self.bin_prior, np.exp(-d2 / (2 * PRIOR_SIGMA ** 2)), mix_weight)

    def gradient_weights(self, mix_weight: float = PRIOR_MIX) -> np.ndarray:
        """A larger mix_weight flattens the weights: 1 turns the gradient prior off."""
        idx = np.arange(GRADIENT_BINS)
        sigma_bins = PRIOR_SIGMA / GRADIENT_STEP
        return _rebalance(self.gradient_prior, np.exp(-(idx[:, None] - idx[None, :]) ** 2 / (2 * sigma_bins ** 2)), mix_weight)


class BinGrid:
    """Nearest-bin queries on the regular ab grid: only a 5x5 window of grid cells around each pixel can
    hold its SOFT_NEIGHBOURS nearest bins, so 25 candidates replace a search over all Q bins."""

    WINDOW = 2

    def __init__(self, bins: torch.Tensor) -> None:
        cells = torch.round(bins / AB_GRID).long()
        self.offset = int(cells.abs().max()) + self.WINDOW + 1
        side = 2 * self.offset + 1
        self.lut = torch.full((side, side), -1, dtype=torch.long)
        self.lut[cells[:, 0] + self.offset, cells[:, 1] + self.offset] = torch.arange(len(bins))
        self.bins = bins
        r = torch.arange(-self.WINDOW, self.WINDOW + 1)
        self.window = torch.stack(torch.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)  # (25, 2)

    def nearest(self, ab: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 2, H, W) ab -> indices and distances (N*H*W, k) of the k nearest bins, nearest first."""
        flat = ab.permute(0, 2, 3, 1).reshape(-1, 2)
        limit = self.offset - self.WINDOW - 1
        centre = torch.round(flat / AB_GRID).long().clamp(-limit, limit)
        cand = centre[:, None, :] + self.window[None]  # (M, 25, 2)
        idx = self.lut[cand[..., 0] + self.offset, cand[..., 1] + self.offset]
        d = (flat[:, None, :] - cand.float() * AB_GRID).norm(dim=-1)
        # Far outside the gamut a window can hold fewer than k bins: those slots get a huge distance (weight
        # about 0) and a valid index, so gathers stay in range and the loss stays finite.
        d = torch.where(idx >= 0, d, torch.full_like(d, 1e4))
        near_d, pos = d.topk(k, dim=1, largest=False)
        return idx.gather(1, pos).clamp(min=0), near_d


def nearest_bins(ab: torch.Tensor, grid: BinGrid) -> torch.Tensor:
    """(N, 2, H, W) ab -> (N, H, W) index of the nearest bin."""
    return grid.nearest(ab, 1)[0].reshape(ab.shape[0], *ab.shape[2:])


class WeightedCrossEntropy(torch.nn.Module):
    """Cross-entropy with soft targets (Gaussian weights on the nearest bins), weighted per pixel by W."""

    def __init__(self, bins: torch.Tensor, priors: Priors, rebalance: bool = True, gradient_prior: bool = True,
                 gradient_mix: float = PRIOR_MIX, class_mix: float = PRIOR_MIX) -> None:
        super().__init__()
        self.grid = BinGrid(bins)
        q = len(bins)
        self.class_w = torch.from_numpy(priors.class_weights(bins.numpy(), class_mix)) if rebalance else torch.ones(q)
        self.grad_w = torch.from_numpy(priors.gradient_weights(gradient_mix)) if gradient_prior else torch.ones(GRADIENT_BINS)

    def forward(self, logits: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        idx, dist = self.grid.nearest(ab, SOFT_NEIGHBOURS)  # (M, k), M = N*H*W
        target = torch.softmax(-dist ** 2 / (2 * SOFT_SIGMA ** 2), dim=1)
        n, _, height, width = logits.shape
        to_maps = lambda x: x.reshape(n, height, width, -1).permute(0, 3, 1, 2)  # noqa: E731 - (M, k) -> (N, k, H, W)
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, to_maps(idx))
        ce = -(to_maps(target) * log_p).sum(1).flatten()
        g = (gradient_magnitude(ab).flatten() / GRADIENT_STEP).long().clamp(max=GRADIENT_BINS - 1)
        w = self.class_w[idx[:, 0]] * self.grad_w[g]
        return (w * ce).sum() / w.sum()
