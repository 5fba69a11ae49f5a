"""Sink stage: colour frames out to ZeroMQ subscribers, RTSP servers and recordings (streamd.daemon.recording).

Each camera has an OutputWorker thread behind a Backlog of its frames (streamd.daemon.backlog), so a slow
encoder or a server that went away costs that camera frames past the delay budget, never the pipeline
time. The ZeroMQ PUB socket drops at its high-water
mark instead of blocking, so a slow subscriber costs only itself.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol
from urllib.parse import urlsplit

import av
import cv2
import zmq
from zmq.auth.thread import ThreadAuthenticator

from streamd.daemon.backlog import Backlog
from streamd.daemon.backoff import MAX_S, Backoff
from streamd.frame import Frame
from streamd.redact import redact

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
            "reference": ({"age_s": frame.reference_info["age_s"], "frames": frame.reference_info["frames"]}
                          if frame.colorized and frame.model_kind == "reference" and frame.reference_info else None),
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
                 curve_public_key: bytes | None = None, client_keys: str = "") -> None:
        """With a CURVE key pair, traffic is encrypted and subscribers need the server's public key; with
        `client_keys` (a folder of public certificates), only subscribers whose own key is there get in."""
        self._auth: ThreadAuthenticator | None = None
        if client_keys:  # ZAP: libzmq asks this handler about every CURVE handshake of the context's sockets
            self._auth = ThreadAuthenticator(context)
            self._auth.start()
            self._auth.configure_curve(domain="*", location=client_keys)  # read once: keys change at a restart
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve_secret_key:
            self.socket.curve_secretkey = curve_secret_key
            self.socket.curve_publickey = curve_public_key
            self.socket.curve_server = True
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError:  # the port taken: the context must still terminate (its ZAP thread holds a socket)
            self.socket.close()
            if self._auth:
                self._auth.stop()
            raise
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
        if self._auth:
            self._auth.stop()


ENCODERS = ("auto", "nvenc", "libx264")
NVENC = ("h264_nvenc", {"preset": "p1", "tune": "ll", "zerolatency": "1", "forced-idr": "1"})
LIBX264 = ("libx264", {"preset": "ultrafast", "tune": "zerolatency"})


def threads_per_camera(cameras: int, cores: int | None = None) -> int:
    """Threads for each of `cameras` cameras' encoder (libx264) or decoder: the cores shared out, at least
    one. With as many cameras as cores, the cameras' own threads are the parallelism, and a codec's threads
    only add hand-offs: on one thread a 720p frame took 4.4 instead of 5.1 ms of libx264's CPU
    (BENCHMARKS.md). One camera on many cores keeps them all, for a large frame's sake."""
    if cores is None:  # the cores this process may run on (a container's or a systemd unit's CPU set)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, cameras))


def encoder_candidates(choice: str = "auto") -> list[tuple[str, dict]]:
    """The H.264 encoders a writer tries, best first. auto: NVENC on a host with an NVIDIA device, then
    libx264; nvenc: NVENC first wherever; libx264: never NVENC (it leaves the GPU's encoder sessions to others)."""
    if choice == "nvenc" or (choice == "auto" and os.path.exists("/dev/nvidia0")):
        return [NVENC, LIBX264]
    return [LIBX264]


class H264Writer:
    """H.264 into a container: an MP4 file, or an RTSP server (ANNOUNCE/RECORD). Opens at the first frame,
    so it knows the size; reopens at the same target when the size changes (recordings, which must not
    reuse a file, close it and set a new `target` first).

    Encoders are tried in order each time it opens; one that does not open (NVENC without a driver, or
    with all of the GPU's encoder sessions taken) is passed over for the rest of this writer's life, logged
    once and counted in `fallbacks`. Keyframes come every `keyframe_interval_s` of frame time whatever the
    frame rate, so a viewer joining waits at most that long and a recording's fragments stay that short."""

    def __init__(self, target: str, fmt: str | None = None, options: dict | None = None,
                 fps: float | Callable[[], float] = 25.0, keyframe_interval_s: float = 1.0,
                 encoders: list[tuple[str, dict]] | None = None, label: str = "",
                 threads: Callable[[], int] | None = None) -> None:
        """`options` are the container's (the muxer's and its protocol's); `fps` the camera's rate (or a
        function giving it when the writer opens), for the encoder's rate control; `label` names the
        writer in log lines (default: the target, without credentials); `threads` gives libx264's threads
        when it opens (None: x264's own choice, from the machine's cores)."""
        self.target, self.fmt, self.options = target, fmt, options or {}
        self._fps = fps if callable(fps) else (lambda: fps)
        self.keyframe_interval_s = keyframe_interval_s
        self.encoders = list(encoders or encoder_candidates())
        self.label = label or redact(target)
        self._threads = threads
        self.fallbacks = 0
        self._container: av.container.OutputContainer | None = None
        self._stream = None
        self._size: tuple[int, int] | None = None
        self._start: float | None = None
        self._last_pts = -1
        self._last_key: float | None = None

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) while open."""
        return self._size

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
        if self._last_key is None or frame.arrival - self._last_key >= self.keyframe_interval_s:
            av_frame.pict_type = av.video.frame.PictureType.I  # by time: a 5 fps camera's too
            self._last_key = frame.arrival
        for packet in self._stream.encode(av_frame):
            self._container.mux(packet)

    def _open(self, frame: Frame) -> None:
        fps = min(max(self._fps(), 1.0), 120.0)  # a rate measured from a burst of frames can be anything
        while True:
            codec, codec_options = self.encoders[0]
            container = av.open(self.target, "w", format=self.fmt, container_options=self.options)
            try:
                stream = container.add_stream(codec, rate=max(1, round(fps)))
                stream.width, stream.height = frame.width, frame.height
                stream.pix_fmt = "yuv420p"
                stream.time_base = Fraction(1, 90000)
                stream.codec_context.time_base = Fraction(1, 90000)
                # Keyframes are placed by time (write); a high g keeps the encoder's own frame count (FFmpeg's
                # default: every 12 frames) from adding more.
                options = {**codec_options, "g": str(max(1, round(fps * self.keyframe_interval_s * 10)))}
                if codec == LIBX264[0] and self._threads is not None:
                    options["threads"] = str(self._threads())
                stream.options = options
                stream.codec_context.color_range = 2 if frame.full_range else 1
                stream.codec_context.colorspace = 1 if frame.matrix == "bt709" else 6
                stream.codec_context.open()  # here, not at the first packet: a failure is the encoder's
                break
            except (av.error.FFmpegError, ValueError) as e:  # ValueError: an FFmpeg built without it
                container.close()
                if len(self.encoders) == 1:
                    raise
                self.encoders.pop(0)
                self.fallbacks += 1
                log.warning("%s: the %s encoder does not open (%s); encoding with %s from now on", self.label,
                            codec, e, self.encoders[0][0])
        self._container, self._stream = container, stream
        self._size, self._start, self._last_pts, self._last_key = (frame.width, frame.height), frame.arrival, -1, None

    def close(self) -> None:
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            log.debug("flushing %s: %s", self.label, e)
        finally:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError) as e:  # an RTSP peer gone is expected; a file not finalized is not
                log.warning("closing %s: %s", self.label, e)
            self._container, self._stream, self._size = None, None, None


def rtsp_address(url: str) -> tuple[str, int]:
    """(host, port) of an rtsp:// URL, read after its credentials are cut off (a password may hold "[", which
    urlsplit takes for an IPv6 address). Raises ValueError for a URL without a host or with a bad port."""
    authority = re.split(r"[/?#]", url.partition("://")[2], maxsplit=1)[0].rpartition("@")[2]  # as FFmpeg splits
    parts = urlsplit("rtsp://" + authority)
    port = parts.port  # raises ValueError outside 0-65535 or not a number
    if not parts.hostname or port == 0:
        raise ValueError("no host, or port 0")
    return parts.hostname, port or 554


def rtsp_answers(url: str, timeout_s: float) -> None:
    """Raise OSError unless the RTSP server at `url` answers an OPTIONS request within `timeout_s`.

    FFmpeg's RTSP handshake runs inside PyAV while holding the GIL: a server that accepts the connection and
    never answers (or a host that is down) would freeze every thread of the process, the watchdog's too,
    for the whole time-out. This question is asked from Python, whose socket calls release the GIL, before
    FFmpeg connects."""
    if not url.startswith("rtsp://"):  # rtsps: TLS first; left to FFmpeg
        return
    host, port = rtsp_address(url)
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    target = f"rtsp://{netloc}/{url.partition('://')[2].partition('/')[2]}"  # no credentials
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(f"OPTIONS {target} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: streamd\r\n\r\n".encode())
            answer = b""
            while len(answer) < 5:
                chunk = sock.recv(5 - len(answer))
                if not chunk:
                    raise ConnectionResetError("the server closed the connection without an answer")
                answer += chunk
    except TimeoutError as e:
        raise TimeoutError(f"no answer within {timeout_s:g} s") from e
    if answer != b"RTSP/":
        raise ConnectionError(f"not an RTSP server (it answered {answer!r})")


class RtspOutput:
    """H.264 pushed to an RTSP server; when the server goes away, frames are dropped and the connection is
    retried with back-off. Every socket operation has a time-out, so a peer that stops answering (or
    accepts the connection and never answers) costs at most `timeout_s` per attempt, never a hung thread."""

    def __init__(self, camera: str, url: str, transport: str = "tcp", backoff_max: float = MAX_S,
                 timeout_s: float = 5.0, fps: float | Callable[[], float] = 25.0, keyframe_interval_s: float = 1.0,
                 encoder: str = "auto", threads: Callable[[], int] | None = None) -> None:
        self.camera, self.url = camera, url
        options = {"rtsp_transport": transport, "timeout": str(round(timeout_s * 1e6))}  # microseconds
        self._writer = H264Writer(url, "rtsp", options, fps=fps, keyframe_interval_s=keyframe_interval_s,
                                  encoders=encoder_candidates(encoder), threads=threads,
                                  label=f"camera {camera}: RTSP output {redact(url)}")
        self._retry_at, self._timeout_s = 0.0, timeout_s
        self._backoff = Backoff(maximum=backoff_max)
        self.reconnects = 0
        self.connected = False

    @property
    def fallbacks(self) -> int:
        return self._writer.fallbacks

    def write(self, frame: Frame) -> None:
        if time.monotonic() < self._retry_at:
            return
        try:
            if self._writer.size is None:
                rtsp_answers(self.url, self._timeout_s)
            self._writer.write(frame)
            if not self.connected:
                log.info("camera %s: publishing to %s", self.camera, redact(self.url))
            self.connected = True
            self._backoff.reset()
        except (av.error.FFmpegError, OSError) as e:
            self._writer.close()
            self.reconnects += 1
            delay = self._backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            log.warning("camera %s: RTSP output %s failed (%s); retrying in %.1f s", self.camera,
                        redact(self.url), redact(getattr(e, "strerror", None) or str(e)), delay)
            self.connected = False

    def close(self) -> None:
        self._writer.close()


class Recording(Protocol):
    """A camera's recording (streamd.daemon.recording.Recorder): written and closed on the camera's output thread."""

    fallbacks: int

    def write(self, frame: Frame) -> None: ...

    def close(self) -> None: ...


@dataclass
class OutputTargets:
    zmq: ZmqPublisher | None = None
    zmq_format: str = "bgr24"
    rtsp_url: str | None = None
    rtsp_transport: str = "tcp"
    rtsp_timeout_s: float = 5.0
    recording: Recording | None = None
    encoder: str = "auto"  # for the RTSP output (the recording has its own)
    keyframe_interval_s: float = 1.0
    encoder_threads: Callable[[], int] | None = None  # libx264's threads (threads_per_camera), asked when it opens


class OutputWorker:
    """One camera's outputs, on a thread of their own behind a Backlog of its frames."""

    def __init__(self, camera: str, targets: OutputTargets, prepare: Callable[[Frame], Frame] = lambda f: f,
                 observe_latency: Callable[[float], None] = lambda seconds: None,
                 fps: Callable[[], float] = lambda: 25.0, max_delay_s: float = 0.0) -> None:
        """`fps` gives the camera's frame rate when an encoder opens; `max_delay_s` is the budget of the
        frames waiting for the thread (streamd.daemon.backlog; 0: only the newest waits)."""
        self.camera, self.targets, self.prepare = camera, targets, prepare
        self.observe_latency = observe_latency
        self.rtsp = RtspOutput(camera, targets.rtsp_url, targets.rtsp_transport, timeout_s=targets.rtsp_timeout_s,
                               fps=fps, keyframe_interval_s=targets.keyframe_interval_s,
                               encoder=targets.encoder, threads=targets.encoder_threads) if targets.rtsp_url else None
        self.recording = targets.recording
        self.published = 0
        self._out_of_order = 0
        self.failures = 0  # output steps that raised, all outputs together
        self._failures_by: Counter[str] = Counter()  # by output: each logged the first time and every 250th
        self.latencies_ms: deque[float] = deque(maxlen=1000)  # capture-to-publish, the most recent frames
        self._backlog = Backlog(max_delay_s)
        self._newest_seq: int | None = None  # the newest frame ever put: an older one never follows it
        self._busy = False
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name=f"output-{camera}", daemon=True)
        self._thread.start()

    @property
    def encoder_fallbacks(self) -> int:
        """Writers of this camera that could not open their first encoder (NVENC) and went on with libx264."""
        return (self.rtsp.fallbacks if self.rtsp else 0) + (self.recording.fallbacks if self.recording else 0)

    def put(self, frame: Frame) -> None:
        """A frame older than one already put is dropped (at a day/night switch a gray frame can come back
        from inference after a newer day frame went straight here), so frames leave in order."""
        with self._cond:
            if self._newest_seq is not None and frame.seq <= self._newest_seq:
                self._out_of_order += 1
                return
            self._backlog.push(frame)
            self._newest_seq = frame.seq
            self._cond.notify()

    @property
    def dropped(self) -> int:
        """Frames this camera's outputs never sent: late past the budget, or older than one sent."""
        with self._cond:
            return self._backlog.dropped + self._out_of_order

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing being sent."""
        with self._cond:
            return not self._backlog and not self._busy

    def request_close(self) -> None:
        """Ask the thread to send what is waiting, close the outputs and end, without waiting (a pipeline
        asks every camera's outputs first, then waits for all under one deadline)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def close(self, timeout: float = 5.0) -> None:
        self.request_close()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._backlog and not self._closing:
                    self._cond.wait()
                frame = self._backlog.pop()
                self._busy = frame is not None
            if frame is None:  # closing, and nothing left to send
                break
            self._emit(frame)
            with self._cond:
                self._busy = False
        if self.recording:  # first: local and quick, while an RTSP peer may take its time-out to answer
            self.recording.close()
        if self.rtsp:
            self.rtsp.close()

    def _emit(self, frame: Frame) -> None:
        t = self.targets
        try:
            frame = self.prepare(frame)  # the colour planes, JPEG or not: what every output sends
        except Exception:
            self._failed("colour recombination")
            return
        if not t.zmq or self._attempt("ZeroMQ output", lambda: t.zmq.publish(frame, t.zmq_format)):
            latency = time.monotonic() - frame.arrival
            self.latencies_ms.append(latency * 1000.0)
            self.published += 1
            self._attempt("latency metric", lambda: self.observe_latency(latency))
        if self.rtsp:
            self._attempt("RTSP output", lambda: self.rtsp.write(frame))
        if self.recording:
            self._attempt("recording", lambda: self.recording.write(frame))

    def _attempt(self, what: str, send: Callable[[], None]) -> bool:
        """Run one output's step; a failure is counted and logged, and the camera's other outputs go on (one
        bad frame, or one output's lasting fault, must not end the others). True when it went through."""
        try:
            send()
            return True
        except Exception:
            self._failed(what)
            return False

    def _failed(self, what: str) -> None:
        """Count a failure of `what` and log it with its traceback, the first time and every 250th."""
        self.failures += 1
        self._failures_by[what] += 1
        count = self._failures_by[what]
        if count == 1 or count % 250 == 0:  # a lasting fault (disk full) must not flood the log
            log.exception("camera %s: %s failed (%d times so far)", self.camera, what, count)
