"""Source stage: one decode thread per camera, delivering Frames as fast as the camera sends them.

Network cameras (RTSP), video files played at their native rate (optionally looped, as a camera would),
and a synthetic gray camera for the demo. A source never waits for the rest of the pipeline: `deliver`
must not block (the batcher queues it, within the delay budget). Failures reconnect with exponential
back-off and jitter; the camera's state and counters say what happened.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import av
from av.codec.hwaccel import HWAccel
import cv2
import numpy as np

from streamd.daemon.backoff import INITIAL_S, MAX_S, Backoff
from streamd.frame import Frame
from streamd.redact import redact

log = logging.getLogger(__name__)


class State(str, Enum):
    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "reconnecting"
    FAILED = "failed"  # will not recover by retrying (e.g. a file that is not video)
    FINISHED = "finished"  # a file source reached its end
    STOPPED = "stopped"


class SourceError(Exception):
    """A camera problem worth a reconnect; the message names the camera and never holds credentials."""


class PermanentSourceError(SourceError):
    """A camera problem that retrying cannot fix."""


@dataclass
class SourceStats:
    state: State = State.STARTING
    frames: int = 0
    reconnects: int = 0
    last_error: str = ""
    last_frame_at: float = 0.0  # monotonic


@dataclass
class SourceSettings:
    name: str
    url: str
    transport: str = "tcp"  # RTSP lower transport: tcp or udp
    loop: bool = False  # files: start again at the end
    realtime: bool = True  # files: play at the native rate, as a camera would
    open_timeout: float = 10.0
    read_timeout: float = 5.0
    stall_timeout: float = 10.0  # no decoded frame for this long counts as a lost camera
    backoff_initial: float = INITIAL_S
    backoff_max: float = MAX_S
    synthetic_size: tuple[int, int] = (1280, 720)
    fps: float = 25.0  # synthetic cameras only
    hwaccel: str = ""  # "cuda": decode on NVDEC (frames come back to system memory); "": FFmpeg's CPU decoder
    duration: float | None = None  # synthetic cameras only: seconds before the stream ends


def _is_stream_url(url: str) -> bool:
    return url.startswith(("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://"))


def _open_av(s: SourceSettings) -> av.container.InputContainer:
    options = {"rtsp_transport": s.transport} if s.url.startswith(("rtsp://", "rtsps://")) else {}
    start = time.monotonic()
    try:
        if s.hwaccel:
            try:  # the decoder is opened with the container: that is where a missing device shows
                return av.open(s.url, options=options, timeout=(s.open_timeout, s.read_timeout),
                               hwaccel=HWAccel(s.hwaccel, allow_software_fallback=True))
            except (av.error.PermissionError, av.error.ExternalError, ValueError) as e:
                log.warning("camera %s: the %s decoder does not open here (%s); decoding on the CPU", s.name,
                            s.hwaccel, redact(str(e)))
        return av.open(s.url, options=options, timeout=(s.open_timeout, s.read_timeout))
    except FileNotFoundError as e:
        raise PermanentSourceError(f"camera {s.name}: no such file {redact(s.url)}") from e
    except (av.error.FFmpegError, OSError) as e:
        if not _is_stream_url(s.url) and isinstance(e, av.error.InvalidDataError):
            raise PermanentSourceError(f"camera {s.name}: {redact(s.url)} is not a video file") from e
        if time.monotonic() - start >= 0.9 * s.open_timeout:  # FFmpeg reports the time-out as anything
            reason = f"no answer within {s.open_timeout:g} s"
        else:  # strerror, never str(e): that holds the URL as the caller wrote it
            reason = redact(getattr(e, "strerror", None) or type(e).__name__)
        raise SourceError(f"camera {s.name}: cannot open {redact(s.url)}: {reason}") from e


MAX_CAMERA_DECODE_THREADS = 2  # frame threads beyond the first hold a camera's frames back: one frame at most


def set_decode_threads(stream: av.video.stream.VideoStream, threads: int | None) -> None:
    """None: FFmpeg's own choice, frame and slice threads on every core, for throughput (a file read as fast
    as it decodes). A number, for a camera: that many threads, frame threads included, which hold every
    frame back by a frame per thread beyond the first (FFmpeg's own choice held it back by 2 frames, 80 ms at
    25 fps, on 2 cores, and by 15 on 16). One thread adds no delay; two double what one heavy camera with a
    single slice per frame (most cameras' H.264) can decode, for one frame of delay."""
    if threads is None:
        stream.thread_type = "AUTO"
        return
    stream.codec_context.thread_count = threads
    stream.thread_type = "AUTO" if threads > 1 else "SLICE"


def decode_av(s: SourceSettings, threads: int | None = None) -> Iterator[av.VideoFrame]:
    """Decoded frames of one connection to a camera or one pass over a file, on `threads` (set_decode_threads);
    skips corrupt packets."""
    container = _open_av(s)
    try:
        if not container.streams.video:
            raise PermanentSourceError(f"camera {s.name}: {redact(s.url)} has no video stream")
        stream = container.streams.video[0]
        set_decode_threads(stream, threads)
        last_frame = time.monotonic()
        try:
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except av.error.InvalidDataError:
                    log.debug("camera %s: skipped a corrupt packet", s.name)
                    continue
                now = time.monotonic()
                if frames:
                    last_frame = now
                elif now - last_frame > s.stall_timeout:  # packets, but nothing decodes
                    raise SourceError(f"camera {s.name}: stalled, no frame for {s.stall_timeout:g} s "
                                      f"({redact(s.url)})")
                yield from frames
        except av.error.FFmpegError as e:
            if not _is_stream_url(s.url) and isinstance(e, (av.error.InvalidDataError, av.error.EOFError)):
                return  # a truncated file ends where its data ends
            # strerror, never str(e): that holds the URL as the caller wrote it
            reason = f"no data for {s.read_timeout:g} s" if isinstance(e, av.error.ExitError) \
                else redact(e.strerror or type(e).__name__)
            raise SourceError(f"camera {s.name}: stream lost: {reason} ({redact(s.url)})") from e
    except av.error.DecoderNotFoundError as e:
        raise PermanentSourceError(f"camera {s.name}: unsupported codec ({e.strerror}) in {redact(s.url)}") from e
    finally:
        container.close()  # PyAV leaks the demuxer's buffers otherwise


class SyntheticCamera:
    """A gray camera filming scikit-image's bundled photos, panning and zooming across each in turn.

    The frames it yields carry the true colours (Frame.reference) for side-by-side views.
    """

    PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina")

    def __init__(self, size: tuple[int, int], fps: float, seconds_per_photo: float = 4.0) -> None:
        from skimage import data

        self.size, self.fps = size, fps
        self.photos = [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in self.PHOTOS]
        self.frames_per_photo = max(1, int(seconds_per_photo * fps))

    def render(self, index: int) -> np.ndarray:
        photo = self.photos[(index // self.frames_per_photo) % len(self.photos)]
        t = (index % self.frames_per_photo) / self.frames_per_photo
        w, h = self.size
        ph, pw = photo.shape[:2]
        zoom = 1.0 + 0.35 * t  # slowly closer, panning left to right
        scale = max(w / pw, h / ph) * zoom
        tx = -(pw * scale - w) * t
        ty = -(ph * scale - h) / 2
        matrix = np.float32([[scale, 0, tx], [0, scale, ty]])
        return cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def frames(self, name: str, start_seq: int) -> Iterator[Frame]:
        index = 0
        while True:
            bgr = self.render(index)
            frame = Frame.from_bgr(name, start_seq + index, bgr, matrix="bt709", full_range=False,
                                   pts=index / self.fps, reference=bgr)
            frame.u[:] = 128  # what an infrared camera sends: luma only
            frame.v[:] = 128
            yield frame
            index += 1


class Camera:
    """Owns one camera's decode thread: connects, decodes, reconnects, and hands frames to `deliver`."""

    def __init__(self, settings: SourceSettings, deliver: Callable[[Frame], None],
                 decode_threads: Callable[[], int] | None = None) -> None:
        """`decode_threads` gives the decoder's threads each time it opens (set_decode_threads; None: FFmpeg's
        choice)."""
        self.settings = settings
        self.deliver = deliver
        self._decode_threads = decode_threads
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{settings.name}", daemon=True)
        self._seq = 0

    @property
    def name(self) -> str:
        return self.settings.name

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end, without waiting (a pipeline asks every camera first, then waits)."""
        self._stop.set()

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        self._thread.join(timeout)
        if self.stats.state not in (State.FAILED, State.FINISHED):
            self.stats.state = State.STOPPED

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _frames(self) -> Iterator[Frame]:
        s = self.settings
        if s.url.startswith("synthetic:"):
            yield from SyntheticCamera(s.synthetic_size, s.fps).frames(s.name, self._seq)
            return
        for av_frame in decode_av(s, self._decode_threads() if self._decode_threads else None):
            yield Frame.from_av(s.name, self._seq, av_frame)

    def _paced(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """Files and synthetic cameras are released at their own frame rate; live cameras as they come."""
        s = self.settings
        if _is_stream_url(s.url) or not s.realtime:
            yield from frames
            return
        start, first_pts = 0.0, None
        for frame in frames:
            if frame.pts is not None:
                if first_pts is None:  # the clock starts at the first frame, not at the file's opening: a
                    start, first_pts = time.monotonic(), frame.pts  # slow open must not send a burst after it
                delay = start + (frame.pts - first_pts) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
            frame.arrival, frame.capture_time = time.monotonic(), time.time()
            yield frame

    def _run(self) -> None:
        s = self.settings
        backoff = Backoff(s.backoff_initial, s.backoff_max)
        started = time.monotonic()
        while not self._stop.is_set():
            try:
                for frame in self._paced(self._frames()):
                    if self._stop.is_set():
                        return
                    if s.duration is not None and time.monotonic() - started > s.duration:
                        self.stats.state = State.FINISHED
                        return
                    if self.stats.state != State.RUNNING:
                        log.info("camera %s: running", s.name)
                        self.stats.state = State.RUNNING
                        backoff.reset()
                    frame.seq = self._seq
                    self._seq += 1
                    self.stats.frames += 1
                    self.stats.last_frame_at = time.monotonic()
                    self.deliver(frame)
                if _is_stream_url(s.url):
                    raise SourceError(f"camera {s.name}: the stream ended ({redact(s.url)})")
                if not s.loop:
                    log.info("camera %s: end of file", s.name)
                    self.stats.state = State.FINISHED
                    return
                continue  # a looped file starts again at once
            except PermanentSourceError as e:
                self.stats.state, self.stats.last_error = State.FAILED, str(e)
                log.error("%s (giving up)", e)
                return
            except SourceError as e:
                self.stats.last_error = str(e)
            except Exception as e:  # a camera's thread must never die silently
                self.stats.last_error = redact(f"camera {s.name}: {type(e).__name__}: {e}")
                log.exception("camera %s: unexpected error", s.name)
            if self._stop.is_set():
                return
            self.stats.state = State.RECONNECTING
            self.stats.reconnects += 1
            delay = backoff.next_delay()
            log.warning("%s; reconnecting in %.1f s", self.stats.last_error, delay)
            if self._stop.wait(delay):
                return
