"""Chroma recombination: the network's ab -> U and V planes beside the untouched luma, upsampled edge-aware
(a guided filter on L) and converted through one (Y', a, b) -> (U, V) table in the stream's own matrix and
range."""
from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from streamd.frame import MATRICES, Frame
from streamd.colour.lightness import lightness_table, luma_at_chroma_size

if TYPE_CHECKING:
    from streamd.colour.temporal import Temporal

GUIDE_RADIUS = 2  # box radius of the guided filter, in pixels of the network's output grid
GUIDE_EPS = 4.0  # L units squared: below this local variance the prediction is smoothed, above it follows L


def _box(x: np.ndarray) -> np.ndarray:
    return cv2.boxFilter(x, -1, (2 * GUIDE_RADIUS + 1, 2 * GUIDE_RADIUS + 1), borderType=cv2.BORDER_REFLECT)


def guide_coefficients(ab: np.ndarray, guide_low: np.ndarray) -> np.ndarray:
    """The low-resolution half of edge-aware upsampling (fast guided filter, He and Sun 2015): fit
    ab = A * L + B locally on the network's grid. ab: (2, h, w), guide_low: L (h, w) -> (h, w, 4) float32,
    A_a, B_a, A_b, B_b; `apply_guide` evaluates them on the full-resolution L, so chroma edges snap to
    luma edges instead of bleeding across them."""
    mean_i = _box(guide_low)
    var_i = _box(guide_low * guide_low) - mean_i * mean_i
    coeffs = []
    for p in ab:
        mean_p = _box(p)
        a = (_box(guide_low * p) - mean_i * mean_p) / (var_i + GUIDE_EPS)
        coeffs += [_box(a), _box(mean_p - a * mean_i)]
    return np.dstack(coeffs)


def apply_guide(coeffs: np.ndarray, guide_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`guide_coefficients` (h, w, 4) upsampled bilinearly and applied to L (H, W) -> a, b (H, W) float32.
    Linear in the coefficients: scaled and offset ones give a and b scaled and offset the same way."""
    size = (guide_high.shape[1], guide_high.shape[0])

    def up(plane: np.ndarray) -> np.ndarray:
        return cv2.resize(np.ascontiguousarray(plane), size, interpolation=cv2.INTER_LINEAR)

    def channel(slope: np.ndarray, offset: np.ndarray) -> np.ndarray:
        return cv2.add(cv2.multiply(up(slope), guide_high), up(offset))

    return channel(coeffs[..., 0], coeffs[..., 1]), channel(coeffs[..., 2], coeffs[..., 3])


def lab_to_chroma(lightness: np.ndarray, ab: np.ndarray, matrix: str, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """L (H, W) and ab (H, W, 2) -> U, V planes (uint8) in the stream's own matrix and range, exactly.

    The live path uses ChromaTable, a lookup table built from this function."""
    lab = np.dstack([lightness, ab]).astype(np.float32)
    rgb = np.clip(cv2.cvtColor(lab, cv2.COLOR_Lab2RGB), 0.0, 1.0)
    kr, kb = MATRICES[matrix]
    luma = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    scale = 255.0 if full_range else 224.0
    u = 128.0 + scale * (rgb[..., 2] - luma) / (2 * (1 - kb))
    v = 128.0 + scale * (rgb[..., 0] - luma) / (2 * (1 - kr))
    lo, hi = (0, 255) if full_range else (16, 240)
    return (np.clip(u + 0.5, lo, hi).astype(np.uint8), np.clip(v + 0.5, lo, hi).astype(np.uint8))


class ChromaTable:
    """(Y', a, b) -> (U, V) as one lookup: Y' in 64 steps of 4 code values, a and b in steps of 2 over
    -128..126. Replaces a float Lab -> RGB -> YUV round trip per pixel; the error this adds is at most a
    code value or two of U and V (tests/test_chroma.py measures chroma_planes, which uses it, against the
    conversion written out independently)."""

    Y_SHIFT, AB_STEP, AB_LEVELS = 2, 2.0, 128
    # guide coefficients (A_a, B_a, A_b, B_b) in ab units -> table levels: all scale, the offsets also shift
    LEVEL_OFFSET = np.float32([0, AB_LEVELS // 2, 0, AB_LEVELS // 2])

    def __init__(self, matrix: str, full_range: bool) -> None:
        y = (np.arange(256 >> self.Y_SHIFT) << self.Y_SHIFT) + (1 << self.Y_SHIFT) // 2
        ab = (np.arange(self.AB_LEVELS) - self.AB_LEVELS // 2) * self.AB_STEP
        yy, aa, bb = np.meshgrid(lightness_table(full_range)[y], ab, ab, indexing="ij")
        u, v = lab_to_chroma(yy.reshape(-1, 1), np.stack([aa, bb], -1).reshape(-1, 1, 2), matrix, full_range)
        self.entries = np.ascontiguousarray(np.stack([u.ravel(), v.ravel()], axis=-1))  # (entries, 2): U, V
        # The same table as a 2-channel image for cv2.remap, the fastest gather at hand (in isolation 1.5-1.7x
        # less CPU than numpy's take with the index arithmetic it needs, and it runs on OpenCV's threads;
        # BENCHMARKS.md): row = Y' level * AB_LEVELS + a level, column = b level.
        self.image = self.entries.reshape(-1, self.AB_LEVELS, 2)
        self.first_row = ((np.arange(256) >> self.Y_SHIFT) * self.AB_LEVELS).astype(np.float32)

    @classmethod
    def levels(cls, coeffs: np.ndarray) -> np.ndarray:
        """Guide coefficients (..., 4) in ab units -> the same fit in table levels (apply_guide then gives
        levels directly; done on the grid, where it is cheap)."""
        return coeffs * np.float32(1 / cls.AB_STEP) + cls.LEVEL_OFFSET

    def lookup(self, luma: np.ndarray, a_level: np.ndarray, b_level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """luma (H, W) uint8 and a, b (H, W) float32 in table levels (rounded to the nearest here; a is
        clipped in place) -> U, V (H, W) uint8."""
        # b beyond the table is clamped by the border mode; a must not spill into a neighbouring Y' level
        np.clip(a_level, 0, self.AB_LEVELS - 1, out=a_level)
        rows = cv2.add(a_level, cv2.LUT(luma, self.first_row))
        uv = cv2.remap(self.image, b_level, rows, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE)
        u, v = cv2.split(uv)
        return u, v


@functools.cache
def _cached_chroma_table(matrix: str, full_range: bool) -> ChromaTable:
    return ChromaTable(matrix, full_range)


_CHROMA_TABLE_BUILD = threading.Lock()


def chroma_table(matrix: str, full_range: bool) -> ChromaTable:
    """The table for a stream's matrix and range, built once per process (0.2 s). Under the lock, because
    every camera's first frame asks at the same moment at start-up: without it each thread built its own
    (16 cameras on 2 cores: seconds of start-up and 1.4 GB)."""
    with _CHROMA_TABLE_BUILD:
        return _cached_chroma_table(matrix, full_range)


def chroma_planes(luma: np.ndarray, coeffs: np.ndarray, matrix: str, full_range: bool) -> tuple[np.ndarray, np.ndarray]:
    """The full-resolution half of recombination, on the CPU: Y' at chroma size (H, W) uint8 and the
    grid's guide coefficients (h, w, 4) -> U, V (H, W) uint8. streamd.chroma_torch does the same on a GPU."""
    guide_high = cv2.LUT(luma, lightness_table(full_range))  # 7x faster than numpy's gather (0.08 ms at 720p)
    return chroma_table(matrix, full_range).lookup(luma, *apply_guide(ChromaTable.levels(coeffs), guide_high))


# Y' at chroma size, guide coefficients, matrix, full range -> U, V: chroma_planes or a GPU equivalent
ChromaPlanes = Callable[[np.ndarray, np.ndarray, str, bool], tuple[np.ndarray, np.ndarray]]


def recombine(frame: Frame, ab: np.ndarray, lightness_in: np.ndarray, temporal: Temporal | None = None,
              make_chroma: ChromaPlanes = chroma_planes) -> Frame:
    """A gray frame plus the network's ab (2, h, w) for its L input -> the colour frame, luma untouched.
    With a camera's Temporal, the prediction is first stabilised against that camera's previous frames.
    The work on the network's grid happens here; the full-resolution work in `make_chroma`."""
    guide_low = cv2.resize(lightness_in, (ab.shape[2], ab.shape[1]), interpolation=cv2.INTER_AREA)
    if temporal is not None:
        ab = temporal(guide_low, ab, frame.arrival)
    frame.u, frame.v = make_chroma(luma_at_chroma_size(frame), guide_coefficients(ab, guide_low), frame.matrix,
                                   frame.full_range)
    frame.colorized = True
    return frame
