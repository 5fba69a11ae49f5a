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


def luma_to_lightness(frame: Frame, size: tuple[int, int]) -> np.ndarray:
    """The frame's Y' -> L (height, width) float32 at the network's input size (size = (height, width))."""
    small = cv2.resize(luma_at_chroma_size(frame), (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return cv2.LUT(small, lightness_table(frame.full_range))
