"""Sink stage: colour frames out to ZeroMQ subscribers, RTSP servers and MP4 files.

Each camera has an OutputWorker thread with a one-frame mailbox, so a slow encoder or a server that went
away costs that camera frames, never the pipeline time. The ZeroMQ PUB socket drops at its high-water
mark instead of blocking, so a slow subscriber costs only itself.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import zmq

from streamd.frame import Frame
from streamd.source import redact

log = logging.getLogger(__name__)
FORMATS = ("bgr24", "yuv420p", "jpeg")
JPEG_QUALITY = 90
WIRE_VERSION = 1


def topic(camera: str) -> bytes:
    """Topics end in '/', so a subscription to cam1/ never matches cam10/."""
    return f"{camera}/".encode()


def header(frame: Frame, fmt: str) -> dict:
    return {"v": WIRE_VERSION, "camera": frame.camera, "seq": frame.seq, "pts": frame.pts,
            "capture_time": frame.capture_time, "width": frame.width, "height": frame.height, "format": fmt,
            "colorized": frame.colorized, "model": frame.model_id if frame.colorized else None,
            "model_kind": frame.model_kind if frame.colorized else None,
            "full_range": frame.full_range, "matrix": frame.matrix,
            "latency_ms": round((time.monotonic() - frame.arrival) * 1000.0, 2)}


def payload(frame: Frame, fmt: str) -> bytes:
    if fmt == "bgr24":
        return frame.to_bgr().tobytes()
    if fmt == "yuv420p":
        return frame.y.tobytes() + frame.u.tobytes() + frame.v.tobytes()
    ok, data = cv2.imencode(".jpg", frame.to_bgr(), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


class ZmqPublisher:
    """One PUB socket for all cameras; thread-safe (ZeroMQ sockets are not, so a lock serialises sends)."""

    def __init__(self, context: zmq.Context, endpoint: str, hwm: int = 4, curve_secret_key: bytes | None = None,
                 curve_public_key: bytes | None = None) -> None:
        """With a CURVE key pair, traffic is encrypted and subscribers need the server's public key."""
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_secret_key:
            self.socket.curve_secretkey = curve_secret_key
            self.socket.curve_publickey = curve_public_key
            self.socket.curve_server = True
        self.socket.bind(endpoint)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._lock = threading.Lock()

    def publish(self, frame: Frame, fmt: str) -> None:
        data = payload(frame, fmt)
        head = json.dumps(header(frame, fmt)).encode()
        with self._lock:
            try:  # PUB drops at the high-water mark instead of blocking; NOBLOCK makes sure of it
                self.socket.send_multipart([topic(frame.camera), head, data], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                pass

    def close(self) -> None:
        with self._lock:
            self.socket.close()


@functools.cache
def _h264_codec() -> tuple[str, dict]:
    """NVENC where it opens, else libx264 tuned for latency. Opening is the test: an FFmpeg with NVENC
    compiled in, on a host with an NVIDIA GPU, can still lack the driver's encode library (the lent GPU
    machines do). Asked once per process: the answer is a fact about the host."""
    if os.path.exists("/dev/nvidia0"):
        try:
            probe = av.CodecContext.create("h264_nvenc", "w")
            probe.width, probe.height, probe.pix_fmt, probe.time_base = 256, 256, "yuv420p", Fraction(1, 25)
            probe.open()
            return "h264_nvenc", {"preset": "p1", "tune": "ll", "zerolatency": "1"}
        except (av.error.FFmpegError, ValueError) as e:  # ValueError: an FFmpeg built without NVENC
            log.info("NVENC does not open here (%s): encoding with libx264", e)
    return "libx264", {"preset": "ultrafast", "tune": "zerolatency"}


KEYFRAME_INTERVAL_S = 1.0  # a viewer joining a live stream waits at most this long for a picture


class H264Writer:
    """H.264 into a container: an MP4 file, or an RTSP server (ANNOUNCE/RECORD). Opens at the first frame,
    so it knows the size; reopens when the size changes."""

    def __init__(self, target: str, fmt: str | None = None, options: dict | None = None, fps: float = 25.0) -> None:
        self.target, self.fmt, self.options, self.fps = target, fmt, options or {}, fps
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._start: float | None = None
        self._last_pts = -1

    def write(self, frame: Frame) -> None:
        if self._size != (frame.width, frame.height):
            self.close()
            self._open(frame)
        av_frame = frame.to_av()
        # Timestamps from arrival times: dropped frames leave gaps instead of speeding the video up.
        pts = int((frame.arrival - self._start) * 90000)
        av_frame.pts = max(pts, self._last_pts + 1)
        self._last_pts = av_frame.pts
        av_frame.time_base = Fraction(1, 90000)
        for packet in self._stream.encode(av_frame):
            self._container.mux(packet)

    def _open(self, frame: Frame) -> None:
        container = av.open(self.target, "w", format=self.fmt, options=self.options)
        codec, codec_options = _h264_codec()
        stream = container.add_stream(codec, rate=round(self.fps))
        stream.width, stream.height = frame.width, frame.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 90000)
        stream.codec_context.time_base = Fraction(1, 90000)
        stream.options = {**codec_options, "g": str(max(1, round(self.fps * KEYFRAME_INTERVAL_S)))}
        stream.codec_context.color_range = 2 if frame.full_range else 1
        stream.codec_context.colorspace = 1 if frame.matrix == "bt709" else 6
        self._container, self._stream = container, stream
        self._size, self._start, self._last_pts = (frame.width, frame.height), frame.arrival, -1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            log.debug("flushing %s: %s", redact(self.target), e)
        finally:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as e:  # an RTSP peer gone is expected; a file not finalized is not
                log.warning("closing %s: %s", redact(self.target), e)
            self._container, self._stream, self._size = None, None, None


class RtspOutput:
    """H.264 pushed to an RTSP server; when the server goes away, frames are dropped and the connection is
    retried with back-off."""

    def __init__(self, camera: str, url: str, transport: str = "tcp", backoff_max: float = 30.0) -> None:
        self.camera, self.url = camera, url
        self._writer = H264Writer(url, "rtsp", {"rtsp_transport": transport})
        self._retry_at = 0.0
        self._backoff, self._backoff_max = 0.5, backoff_max
        self.reconnects = 0
        self.connected = False

    def write(self, frame: Frame) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            self._writer.write(frame)
            if not self.connected:
                log.info("camera %s: publishing to %s", self.camera, redact(self.url))
            self.connected, self._backoff = True, 0.5
        except (av.error.FFmpegError, OSError) as e:
            self._writer.close()
            self.reconnects += 1
            delay = self._backoff * random.uniform(0.8, 1.2)
            self._retry_at = time.monotonic() + delay
            self._backoff = min(self._backoff * 2, self._backoff_max)
            log.warning("camera %s: RTSP output %s failed (%s); retrying in %.1f s", self.camera,
                        redact(self.url), redact(getattr(e, "strerror", None) or str(e)), delay)
            self.connected = False

    def close(self) -> None:
        self._writer.close()


@dataclass
class OutputTargets:
    zmq: ZmqPublisher | None = None
    zmq_format: str = "bgr24"
    rtsp_url: str | None = None
    rtsp_transport: str = "tcp"
    file_path: Path | None = None


class OutputWorker:
    """One camera's outputs, on a thread of their own behind a one-frame mailbox (newest wins)."""

    def __init__(self, camera: str, targets: OutputTargets, prepare: Callable[[Frame], Frame] = lambda f: f,
                 observe_latency: Callable[[float], None] = lambda seconds: None) -> None:
        self.camera, self.targets, self.prepare = camera, targets, prepare
        self.observe_latency = observe_latency
        self.rtsp = RtspOutput(camera, targets.rtsp_url, targets.rtsp_transport) if targets.rtsp_url else None
        self.file = H264Writer(str(targets.file_path), "mp4") if targets.file_path else None
        self.published = 0
        self.dropped = 0
        self.failures = 0  # frames whose output raised (logged the first time and every 250th)
        self.latencies_ms: deque[float] = deque(maxlen=1000)  # capture-to-publish, the most recent frames
        self._slot: Frame | None = None
        self._busy = False
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"output-{camera}", daemon=True)
        self._thread.start()

    def put(self, frame: Frame) -> None:
        with self._cond:
            if self._slot is not None:
                self.dropped += 1
            self._slot = frame
            self._cond.notify()

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being sent."""
        with self._cond:
            return self._slot is None and not self._busy

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._closing:
                    self._cond.wait()
                frame, self._slot = self._slot, None
                self._busy = frame is not None
            if frame is None:  # closing, and nothing left to send
                break
            self._emit(frame)
            with self._cond:
                self._busy = False
        if self.rtsp:
            self.rtsp.close()
        if self.file:
            self.file.close()

    def _emit(self, frame: Frame) -> None:
        t = self.targets
        try:
            frame = self.prepare(frame)
            if t.zmq:
                t.zmq.publish(frame, t.zmq_format)
            latency = time.monotonic() - frame.arrival
            self.observe_latency(latency)
            self.latencies_ms.append(latency * 1000.0)
            self.published += 1
            if self.rtsp:
                self.rtsp.write(frame)
            if self.file:
                self.file.write(frame)
        except Exception:  # one bad frame must not end this camera's outputs
            self.failures += 1
            if self.failures == 1 or self.failures % 250 == 0:  # a lasting fault (disk full) must not flood the log
                log.exception("camera %s: output failed (%d times so far)", self.camera, self.failures)
