"""A test camera: pushes a generated H.264 stream to an RTSP server (ANNOUNCE/RECORD) in real time.

    python -m tests.publish rtsp://127.0.0.1:PORT/path --mode gray|colour|switch --seconds N [--transport udp]
                            [--scene photos|fixed]

Modes: gray (an infrared night camera: neutral chroma), colour (a day camera), switch (colour for the
first half, then gray). Scenes: photos (scikit-image's photos, panned and zoomed in turn) or fixed (a fixed
camera: one still view, scikit-image's coffee, that a small object crosses now and then).
"""
from __future__ import annotations

import argparse
import time
from fractions import Fraction

import av
import cv2
import numpy as np

from streamd.frame import Frame
from streamd.daemon.source import SyntheticCamera


class FixedScene:
    """A fixed camera's view: a still picture and an object that crosses it in the first half of every
    4 seconds (so a median of the day frames is the picture alone)."""

    def __init__(self, size: tuple[int, int], fps: float) -> None:
        from skimage import data

        self.size, self.fps = size, fps
        self.still = cv2.resize(cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)

    def render(self, index: int) -> np.ndarray:
        bgr = self.still.copy()
        t = (index / self.fps) % 4.0
        if t < 2.0:
            w, h = self.size
            cv2.circle(bgr, (int(w * t / 2.0), h // 2), max(4, h // 10), (40, 200, 40), -1)
        return bgr


def frames(mode: str, size: tuple[int, int], fps: float, seconds: float, scene: str = "photos"):
    camera = FixedScene(size, fps) if scene == "fixed" else SyntheticCamera(size, fps, seconds_per_photo=2.0)
    total = int(seconds * fps)
    for i in range(total):
        frame = Frame.from_bgr("test", i, camera.render(i), matrix="bt601", full_range=False)
        gray = mode == "gray" or (mode == "switch" and i >= total // 2)
        if gray:
            frame.u[:] = 128
            frame.v[:] = 128
        yield frame.to_av()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--mode", default="gray", choices=["gray", "colour", "switch"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--size", default="320x240")
    p.add_argument("--transport", default="udp")
    p.add_argument("--scene", default="photos", choices=["photos", "fixed"])
    p.add_argument("--start-s", type=float, default=0.0, help="time of the first frame (a file that continues another)")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    fmt = "rtsp" if args.url.startswith("rtsp://") else ("mpegts" if args.url.endswith(".ts") else "mp4")
    options = {"rtsp_transport": args.transport} if fmt == "rtsp" else {}
    with av.open(args.url, "w", format=fmt, options=options) as container:
        stream = container.add_stream("libx264", rate=round(args.fps))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(round(args.fps))}
        stream.codec_context.time_base = Fraction(1, round(args.fps))
        start, first = time.monotonic(), round(args.start_s * args.fps)
        for i, frame in enumerate(frames(args.mode, size, args.fps, args.seconds, args.scene)):
            frame.pts = first + i
            frame.time_base = Fraction(1, round(args.fps))
            for packet in stream.encode(frame):
                container.mux(packet)
            if fmt == "rtsp":  # a camera sends in real time; a file is written as fast as possible
                time.sleep(max(0.0, start + (i + 1) / args.fps - time.monotonic()))
        for packet in stream.encode(None):
            container.mux(packet)


if __name__ == "__main__":
    main()
