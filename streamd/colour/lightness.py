"""The network's input: a frame's Y' -> CIE L at the network's input size (the Y' -> L tables and the resize).
Chroma recombination uses the same tables to guide its upsampling."""
from __future__ import annotations

import functools

import cv2
import numpy as np

from streamd.frame import Frame
from streamd.colour.lab import y_to_l_table


@functools.cache
def lightness_table(full_range: bool) -> np.ndarray:
    return y_to_l_table(full_range)


def luma_at_chroma_size(frame: Frame) -> np.ndarray:
    """Y' averaged 2x2 down to the chroma planes' size (an integer-factor resize: OpenCV's fast path)."""
    if frame.luma_half is None:
        frame.luma_half = cv2.resize(frame.y, (frame.u.shape[1], frame.u.shape[0]), interpolation=cv2.INTER_AREA)
    return frame.luma_half


def shrink(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 plane resized to size = (height, width): averaged over whole blocks of pixels (the nearest
    integer factor per side: OpenCV's fast path), then stretched the rest of the way linearly. A plain
    INTER_AREA resize by a factor that is not a whole number took 9x as long (0.47 against 0.05 ms from a
    720p frame's 640x360 to the network's 320x192); the picture differs by the stretch's softness within a
    pixel of the network's input."""
    height, width = plane.shape
    rows, cols = max(1, round(height / size[0])), max(1, round(width / size[1]))
    if (rows, cols) != (1, 1):  # the last rows or columns that do not fill a block are left out
        plane = cv2.resize(plane[:height - height % rows, :width - width % cols], (width // cols, height // rows),
                           interpolation=cv2.INTER_AREA)
    if plane.shape != size:
        plane = cv2.resize(plane, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return plane


def luma_to_lightness(frame: Frame, size: tuple[int, int]) -> np.ndarray:
    """The frame's Y' -> L (height, width) float32 at the network's input size (size = (height, width))."""
    return cv2.LUT(shrink(luma_at_chroma_size(frame), size), lightness_table(frame.full_range))
