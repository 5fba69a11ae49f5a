"""The unit that flows through the pipeline: one decoded picture as planar YUV 4:2:0 plus where it came from."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import av
import numpy as np
from av.video.reformatter import VideoReformatter

if TYPE_CHECKING:
    from streamd.colour.temporal import GridFlow

# Luma weights (Kr, Kb) of the two matrices cameras use: BT.709 for HD, BT.601 for SD.
MATRICES = {"bt709": (0.2126, 0.0722), "bt601": (0.299, 0.114)}
_AV_COLORSPACE = {"bt709": "itu709", "bt601": "itu601"}


def plane_array(plane: av.video.plane.VideoPlane) -> np.ndarray:
    """A plane's pixels without its row padding, as a view (PyAV's to_ndarray refuses odd sizes)."""
    return np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)[:plane.height, :plane.width]


@dataclass
class Frame:
    camera: str
    seq: int
    y: np.ndarray  # (H, W) uint8, never modified: luma passes through bit-exact
    u: np.ndarray  # (H/2, W/2) uint8
    v: np.ndarray
    full_range: bool = False  # "pc"/JPEG range; most camera H.264 is limited ("tv") range
    matrix: str = "bt709"
    pts: float | None = None  # stream time in seconds
    capture_time: float = field(default_factory=time.time)  # wall clock when decoded
    arrival: float = field(default_factory=time.monotonic)  # for latency, immune to clock steps
    reference: np.ndarray | None = None  # the true colours, where a synthetic source knows them
    colorized: bool = False
    model_id: str | None = None  # the model that colorized the frame
    passed_gray: bool = False  # a night frame passed through without colour: inference was unavailable
    model_kind: str | None = None  # which of the camera's models that is: generic, adapted or camera (its config's)
    prediction: tuple[np.ndarray, np.ndarray] | None = None  # (network input L, predicted ab), until recombined
    luma_half: np.ndarray | None = None  # Y' at chroma size, computed once (streamd.colour.lightness)
    lightness: np.ndarray | None = None  # L at the network's input size, computed once (streamd.steps)
    reference_planes: np.ndarray | None = None  # the camera's day reference at that size, where it fits (streamd.colour.reference)
    reference_info: dict | None = None  # that reference's age and day-frame count, for the frame's header
    grid_flow: GridFlow | None = None  # its optical flow onto an earlier frame, where Reuse made one (streamd.colour.temporal)

    @property
    def width(self) -> int:
        return self.y.shape[1]

    @property
    def height(self) -> int:
        return self.y.shape[0]

    @classmethod
    def from_av(cls, camera: str, seq: int, frame: av.VideoFrame, **kw) -> "Frame":
        """Any decoded PyAV frame, converted to yuv420p (a no-op for the usual camera stream) and split."""
        full = frame.format.name in ("yuvj420p", "yuvj422p", "yuvj444p") or frame.color_range == 2
        matrix = "bt601" if frame.colorspace in (5, 6) or (frame.colorspace == 2 and frame.height < 720) else "bt709"
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        w, h = frame.width - frame.width % 2, frame.height - frame.height % 2  # an odd size loses its last row/column
        # copies: the decoder's picture may be a reference frame it still reads, and must not be pinned or written
        y, u, v = (plane_array(plane)[:rows, :cols].copy()
                   for plane, rows, cols in zip(frame.planes, (h, h // 2, h // 2), (w, w // 2, w // 2)))
        return cls(camera, seq, y, u, v, full_range=full, matrix=matrix,
                   pts=float(frame.time) if frame.time is not None else None, **kw)

    def to_av(self) -> av.VideoFrame:
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        for plane, data in zip(frame.planes, (self.y, self.u, self.v)):
            rows = np.frombuffer(memoryview(plane), np.uint8).reshape(-1, plane.line_size)  # padded rows
            rows[:data.shape[0], :data.shape[1]] = data
        frame.color_range = 2 if self.full_range else 1
        frame.colorspace = 1 if self.matrix == "bt709" else 6
        return frame

    def to_bgr(self) -> np.ndarray:
        """(H, W, 3) uint8 BGR, converted by swscale with the frame's own matrix and range."""
        out = VideoReformatter().reformat(  # one per call: a reformatter is not thread-safe
            self.to_av(), format="bgr24", src_colorspace=_AV_COLORSPACE[self.matrix], dst_colorspace="itu601",
            src_color_range="JPEG" if self.full_range else "MPEG", dst_color_range="JPEG")
        return out.to_ndarray()

    @classmethod
    def from_bgr(cls, camera: str, seq: int, bgr: np.ndarray, matrix: str = "bt601", full_range: bool = True,
                 **kw) -> "Frame":
        """A BGR image (even sizes) as YUV 4:2:0 in the given matrix and range."""
        h, w = bgr.shape[0] - bgr.shape[0] % 2, bgr.shape[1] - bgr.shape[1] % 2
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr[:h, :w]), format="bgr24")
        yuv = VideoReformatter().reformat(frame, format="yuv420p", src_colorspace="itu601",
                                    dst_colorspace=_AV_COLORSPACE[matrix], src_color_range="JPEG",
                                    dst_color_range="JPEG" if full_range else "MPEG")
        planes = yuv.to_ndarray()
        chroma = planes[h:].reshape(2, h // 2, w // 2)
        return cls(camera, seq, planes[:h].copy(), chroma[0].copy(), chroma[1].copy(), full_range=full_range,
                   matrix=matrix, **kw)
