"""Colour maths shared by training and the live pipeline.

CIE Lab with the D65 white point on sRGB, the quantized ab bins the network predicts over, and the
Y'-to-L lookup table that lets the pipeline skip any RGB conversion of gray input.
"""
from __future__ import annotations

import functools

import cv2
import numpy as np

AB_GRID = 10.0  # spacing of the ab bin centres, as in Zhang et al. 2016
AB_LIMIT = 110.0  # |a|, |b| never exceed this for sRGB colours


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or float [0, 1] RGB (..., 3) to float32 Lab (L 0..100, a/b roughly -110..110)."""
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    flat = np.ascontiguousarray(rgb, dtype=np.float32).reshape(-1, 1, 3)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float Lab (..., 3) to uint8 RGB, clipped to the sRGB gamut."""
    flat = np.ascontiguousarray(lab, dtype=np.float32).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(flat, cv2.COLOR_Lab2RGB).reshape(lab.shape)
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


@functools.cache
def ab_bins() -> np.ndarray:
    """Centres (Q, 2) of the ab grid cells that some 8-bit sRGB colour falls into (Q = 262).

    Every one of the 2^24 sRGB colours is converted to Lab and snapped to the nearest point of a 10-unit
    ab grid; the bins kept are those hit at least once. This is the gamut test Zhang et al. describe,
    made reproducible (their 313 bins come from a file that no gamut test rebuilds).
    """
    levels = np.arange(256, dtype=np.uint8)
    green_blue = np.stack(np.meshgrid(levels, levels, indexing="ij"), axis=-1).reshape(-1, 2)
    half = int(AB_LIMIT // AB_GRID) + 1
    side = 2 * half + 1
    hit = np.zeros(side * side, dtype=bool)
    for red in range(256):  # one slice of the cube at a time keeps memory small
        rgb = np.concatenate([np.full((len(green_blue), 1), red, np.uint8), green_blue], axis=1)
        cell = np.round(rgb_to_lab(rgb)[:, 1:] / AB_GRID).astype(np.int32) + half
        hit[cell[:, 0] * side + cell[:, 1]] = True
    a, b = np.divmod(np.flatnonzero(hit), side)
    return (np.stack([a - half, b - half], axis=1) * AB_GRID).astype(np.float32)


def srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def linear_to_l(y: np.ndarray) -> np.ndarray:
    """Relative luminance Y (0..1, white = 1) to CIE L*."""
    eps = 216 / 24389
    f = np.where(y > eps, np.cbrt(y), (24389 / 27 * y + 16) / 116)
    return 116 * f - 16


def y_to_l_table(full_range: bool) -> np.ndarray:
    """256-entry table: 8-bit luma Y' of a neutral pixel -> CIE L* (float32).

    A neutral pixel has R' = G' = B' = Y' whatever the matrix (the luma weights sum to one), so L* depends
    on Y' and the range alone: limited ("tv") range maps 16..235 to 0..1, full ("pc") range 0..255.
    """
    y = np.arange(256, dtype=np.float64)
    v = y / 255.0 if full_range else (y - 16.0) / 219.0
    v = np.clip(v, 0.0, 1.0)
    return linear_to_l(srgb_to_linear(v)).astype(np.float32)
