"""The status page: one card per camera with its state and live pictures, for people who judge a colorizer
by looking at it.

    /                       the page (streamd/static/: plain HTML, CSS and a little JavaScript)
    /api/cameras            what the cards show, as JSON
    /snapshot/NAME.jpg      the camera's latest output as JPEG; ?input=1 its latest input; ?width=N scaled to one
                            of WIDTHS

The frame path only keeps references to each camera's newest input and output frame (`Latest`); a picture
is encoded in the HTTP handler when someone asks for it, once per frame however many viewers ask
(`Snapshots`), so cameras nobody looks at cost nothing, and viewers asking for every width one after
another cost at most one encode per width of WIDTHS. Camera URLs appear only redacted.
"""
from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from urllib.parse import parse_qs

import cv2
import numpy as np
from prometheus_client.core import CounterMetricFamily

from streamd.frame import Frame
from streamd.redact import redact

JPEG_QUALITY = 80
RATE_FRAMES = 1024  # the arrival times kept: a few seconds of a fast camera
RATE_WINDOW_S = 5.0  # frame rates are measured over this long: a decoder catching up after a stall evens out
WIDTHS = (160, 320, 640, 1280)  # the picture widths ?width= may ask for (0 or none: the camera's own)
_SNAPSHOT_PATH = re.compile(r"^/snapshot/(?P<name>[^/]+)\.jpg$")
_REFERENCE_PATH = re.compile(r"^/reference/(?P<name>[^/]+)\.jpg$")
_STATIC = {"status.js": "text/javascript; charset=utf-8", "status.css": "text/css; charset=utf-8"}
# The page loads only its own script, style and pictures (blob: URLs made from fetched snapshots)
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class Latest:
    """A camera's newest input and output frame, as references, and when the last few came: the frame path
    only assigns and appends."""

    __slots__ = ("input", "output", "input_times", "output_times")

    def __init__(self) -> None:
        self.input: Frame | None = None
        self.output: Frame | None = None
        self.input_times: deque[float] = deque(maxlen=RATE_FRAMES)  # monotonic
        self.output_times: deque[float] = deque(maxlen=RATE_FRAMES)

    def keep_input(self, frame: Frame) -> None:
        """A shallow copy: colorizing a frame replaces its chroma planes (never writes into them), so the
        copy keeps the picture as the camera sent it."""
        self.input = copy.copy(frame)
        self.input_times.append(frame.arrival)

    def keep_output(self, frame: Frame) -> Frame:
        self.output = frame
        self.output_times.append(time.monotonic())
        return frame


@dataclass
class Reply:
    code: int
    body: bytes
    content_type: str
    headers: dict[str, str]


def _text(code: int, message: str) -> Reply:
    return Reply(code, (message + "\n").encode(), "text/plain; charset=utf-8", {})


class Snapshots:
    """JPEGs of the cameras' latest frames, encoded on the asking thread. The last encode of each camera's
    input and output is kept with the frame it shows, so viewers of an unchanged frame share one encode; a
    lock per camera and picture makes concurrent viewers of a new frame wait for that one encode."""

    def __init__(self, cameras: Callable[[], set[str]] | None = None) -> None:
        """`cameras` names the cameras running now: /metrics leaves out those a reload removed."""
        self._cameras = cameras
        self._lock = threading.Lock()
        self._locks: dict[tuple[str, bool, int], threading.Lock] = {}
        self._cache: dict[tuple[str, bool, int], tuple[Frame, bytes]] = {}  # (frame shown, JPEG)
        self.encodes: dict[str, int] = {}  # per camera, for /metrics

    def jpeg(self, camera: str, frame: Frame, is_input: bool, width: int) -> bytes:
        """The frame as JPEG, at most `width` pixels wide (0: its own width)."""
        key = (camera, is_input, width)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            cached = self._cache.get(key)
            if cached and cached[0] is frame:
                return cached[1]
            data = encode(frame, width)
            self._cache[key] = (frame, data)
            with self._lock:
                self.encodes[camera] = self.encodes.get(camera, 0) + 1
            return data

    def forget_others(self, cameras: set[str]) -> None:
        """Drop what is kept for cameras that are gone (a reload removed them), their metric series too."""
        with self._lock:
            for key in [k for k in self._cache if k[0] not in cameras]:
                del self._cache[key]
                self._locks.pop(key, None)
            for camera in [c for c in self.encodes if c not in cameras]:
                del self.encodes[camera]

    def collect(self):
        """The prometheus_client collector interface."""
        if self._cameras is not None:
            self.forget_others(self._cameras())
        family = CounterMetricFamily("streamd_snapshot_encodes", "JPEG snapshots encoded for the status page "
                                     "(once per frame, however many viewers)", labels=["camera"])
        with self._lock:
            for camera, n in sorted(self.encodes.items()):
                family.add_metric([camera], n)
        yield family


def encode(frame: Frame, width: int = 0) -> bytes:
    bgr = frame.to_bgr()
    if width and width < bgr.shape[1]:
        height = max(1, round(bgr.shape[0] * width / bgr.shape[1]))
        bgr = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return data.tobytes()


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def rate(times: deque[float], now: float) -> float:
    """Frames per second over the recent frames; 0 for a stream that went quiet."""
    recent = [t for t in list(times) if now - t <= RATE_WINDOW_S]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return 0.0
    span = recent[-1] - recent[0]
    if now - recent[-1] > max(2.0, 3 * span / (len(recent) - 1)):  # nothing for a few frame intervals
        return 0.0
    return round((len(recent) - 1) / span, 1)


def camera_card(pipeline, name: str, runtime, now: float) -> dict:
    """What one card shows. Never holds credentials: URLs and errors go through `redact`."""
    stats = runtime.source.stats
    daynight = runtime.daynight.is_colour
    latencies = list(runtime.outputs.latencies_ms)[-200:]
    latest = runtime.latest
    adaptation = pipeline.adaptation
    return {
        "name": name,
        "source": redact(runtime.config.url),
        "state": stats.state.value,
        "error": redact(stats.last_error) if stats.last_error else None,
        "daynight": None if daynight is None else ("day" if daynight else "night"),
        # in: what the camera delivers; out: what streamd publishes (less when it drops frames to keep up)
        "fps": {"in": rate(latest.input_times, now), "out": rate(latest.output_times, now)},
        "latency_ms": {"p50": _percentile(latencies, 50), "p99": _percentile(latencies, 99)},
        "frames": stats.frames,
        "colorized": runtime.colorized,
        "passed_through": runtime.passed_through,
        "published": runtime.outputs.published,
        "dropped": pipeline.dropped(name),
        "reconnects": stats.reconnects,
        "seq": {"input": latest.input.seq if latest.input else None,
                "output": latest.output.seq if latest.output else None},
        "model": {"id": runtime.colorizer.info.model_id, "kind": pipeline.model_kind(runtime),
                  "provider": runtime.colorizer.provider},
        "adaptation": {"available": name in pipeline.adaptable(), "running": adaptation.running == name,
                       "last": _last_adaptation(adaptation.state(name))},
        "reference": runtime.reference.status() if runtime.reference else None,
    }


def _last_adaptation(state: dict) -> dict | None:
    """The outcome of the camera's last adaptation run, and its scores where it trained."""
    if not state:
        return None
    last = {"outcome": state.get("outcome"), "detail": state.get("detail"), "finished": state.get("finished")}
    report = state.get("report") or {}
    for which in ("current", "adapted"):  # the model the run had to beat, and the one it trained
        if isinstance(report.get(which), dict):
            last[which] = report[which]
    return last


def cameras_doc(pipeline, phase: str) -> dict:
    now = time.monotonic()
    return {"status": phase,
            "cameras": [camera_card(pipeline, name, runtime, now) for name, runtime in list(pipeline.cameras.items())]}


def _static(name: str) -> bytes:
    return resources.files("streamd.daemon").joinpath("static", name).read_bytes()


class StatusPage:
    """Answers the page's GET requests; the HTTP server (streamd.daemon.health) routes them here."""

    def __init__(self, pipeline, phase) -> None:
        """`phase()` is the daemon's phase (starting, running, stopping)."""
        self.pipeline, self.phase = pipeline, phase
        self.snapshots = Snapshots(lambda: set(pipeline.cameras))
        self._references: dict[str, tuple] = {}  # camera -> (the reference shown, its JPEG)
        # Read once: a broken install fails at start, not when someone opens the page
        self.files = {"/": (_static("status.html"), "text/html; charset=utf-8")}
        for name, ctype in _STATIC.items():
            self.files[f"/static/{name}"] = (_static(name), ctype)

    def get(self, path: str, query: str) -> Reply | None:
        """The reply to GET `path`, or None when the path is not the page's."""
        if path in self.files:
            body, ctype = self.files[path]
            return Reply(200, body, ctype, dict(_PAGE_HEADERS))
        if path == "/api/cameras":
            doc = cameras_doc(self.pipeline, self.phase())
            return Reply(200, json.dumps(doc).encode(), "application/json", {"Cache-Control": "no-store"})
        match = _SNAPSHOT_PATH.match(path)
        if match:
            return self.snapshot(match["name"], parse_qs(query.replace("+", "%2B")))
        match = _REFERENCE_PATH.match(path)
        if match:
            return self.reference_picture(match["name"])
        return None

    def reference_picture(self, name: str) -> Reply:
        """The camera's day reference as a JPEG, encoded once per reference."""
        runtime = self.pipeline.cameras.get(name)
        if runtime is None:
            return _text(404, "no such camera")
        reference = runtime.reference.reference if runtime.reference else None
        if reference is None:
            return _text(404, f"camera {name}: no day reference")
        cached = self._references.get(name)
        if cached is None or cached[0] is not reference:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(reference.picture(), cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, 90])
            cached = self._references[name] = (reference, data.tobytes())
        return Reply(200, cached[1], "image/jpeg", {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                                    "X-Reference-Built": f"{reference.built_at:.3f}"})

    def snapshot(self, name: str, params: dict[str, list[str]]) -> Reply:
        runtime = self.pipeline.cameras.get(name)  # names are dictionary keys: nothing else is looked up
        if runtime is None:
            return _text(404, "no such camera")
        self.snapshots.forget_others(set(self.pipeline.cameras))
        is_input = params.get("input", ["0"])[-1] in ("1", "true", "yes")
        width = params.get("width", ["0"])[-1]
        if width not in ("0", *map(str, WIDTHS)):  # compared as text: no number of any length is converted
            return _text(400, f"width: one of {', '.join(map(str, WIDTHS))} pixels, or 0 for the camera's own")
        width = int(width)
        frame = runtime.latest.input if is_input else runtime.latest.output
        if frame is None:
            return _text(503, f"camera {name}: no frame yet")
        data = self.snapshots.jpeg(name, frame, is_input, width)
        return Reply(200, data, "image/jpeg", {"Cache-Control": "no-store", "X-Frame-Seq": str(frame.seq),
                                               "X-Content-Type-Options": "nosniff"})
