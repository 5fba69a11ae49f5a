"""Health and metrics over HTTP: /healthz for supervisors, /metrics for Prometheus, and the status page
(streamd.status: /, /api/cameras, /snapshot/CAMERA.jpg).

Values are read from the pipeline when scraped (a custom collector), so the frame path carries no
metrics code except the latency histograms, which need every observation.
"""
from __future__ import annotations

import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamd.source import State
from streamd.status import StatusPage

LIVE_S = 30.0  # /livez: a main loop silent this long is hung (systemd's WatchdogSec, for supervisors without it)
LATENCY_BUCKETS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class Instruments:
    """The histograms the pipeline feeds; one registry per pipeline (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram("streamd_frame_latency_seconds", "Decode-to-publish latency of a frame",
                                 ["camera"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("streamd_inference_batch_size", "Frames per inference batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_seconds = Histogram("streamd_inference_seconds", "Time of one inference batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)


class PipelineCollector:
    """Per-camera counters and states, queue depths and the execution provider, read at scrape time."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    def collect(self):
        p = self.pipeline
        frames = CounterMetricFamily("streamd_frames", "Frames decoded", labels=["camera"])
        colorized = CounterMetricFamily("streamd_frames_colorized", "Frames colorized", labels=["camera"])
        passed = CounterMetricFamily("streamd_frames_passed_through", "Colour frames passed through", labels=["camera"])
        reused = CounterMetricFamily("streamd_frames_reused", "Gray frames of a still scene that reused the last "
                                     "prediction instead of running the network", labels=["camera"])
        carried = CounterMetricFamily("streamd_frames_carried", "Gray frames of a moving scene that got the last "
                                      "prediction carried along the optical flow instead of running the network",
                                      labels=["camera"])
        uncolorized = CounterMetricFamily("streamd_frames_uncolorized", "Night frames passed through gray because "
                                          "inference was unavailable (an inference server away)", labels=["camera"])
        dropped = CounterMetricFamily("streamd_frames_dropped", "Frames dropped (pipeline behind, or the camera's model failed on them)", labels=["camera"])
        published = CounterMetricFamily("streamd_frames_published", "Frames sent to the outputs", labels=["camera"])
        reconnects = CounterMetricFamily("streamd_reconnects", "Source reconnects", labels=["camera"])
        out_reconnects = CounterMetricFamily("streamd_output_reconnects", "RTSP output reconnects", labels=["camera"])
        fallbacks = CounterMetricFamily("streamd_encoder_fallbacks", "Outputs (RTSP, recording) whose first encoder "
                                        "(NVENC) did not open and that encode with libx264 instead", labels=["camera"])
        state = GaugeMetricFamily("streamd_camera_state", "1 for the camera's current state", labels=["camera", "state"])
        age = GaugeMetricFamily("streamd_camera_last_frame_age_seconds", "Seconds since the camera's last decoded "
                                "frame (absent before its first)", labels=["camera"])
        now = time.monotonic()
        for name, r in list(p.cameras.items()):
            stats = r.source.stats
            frames.add_metric([name], stats.frames)
            colorized.add_metric([name], r.colorized)
            passed.add_metric([name], r.passed_through)
            reused.add_metric([name], r.reuse.reused if r.reuse else 0)
            carried.add_metric([name], r.reuse.carried if r.reuse else 0)
            uncolorized.add_metric([name], r.uncolorized)
            dropped.add_metric([name], p.dropped(name))
            published.add_metric([name], r.outputs.published)
            reconnects.add_metric([name], stats.reconnects)
            out_reconnects.add_metric([name], r.outputs.rtsp.reconnects if r.outputs.rtsp else 0)
            fallbacks.add_metric([name], r.outputs.encoder_fallbacks)
            for s in State:
                state.add_metric([name, s.value], 1.0 if stats.state == s else 0.0)
            if stats.last_frame_at:
                age.add_metric([name], now - stats.last_frame_at)
        queue = GaugeMetricFamily("streamd_batch_queue_frames", "Frames waiting for inference")
        queue.add_metric([], p.batcher.waiting())
        provider = InfoMetricFamily("streamd_model", "Each camera's model, which kind it is (generic, adapted, "
                                    "camera: named in its config) and its execution provider", labels=["camera"])
        for name, r in list(p.cameras.items()):
            provider.add_metric([name], {"model": r.colorizer.info.model_id, "kind": p.model_kind(r),
                                         "provider": r.colorizer.provider})
        stored = GaugeMetricFamily("streamd_store_frames", "Day frames kept for adaptation", labels=["camera"])
        for name, r in list(p.cameras.items()):
            if r.store is not None:
                stored.add_metric([name], len(r.store))
        available = GaugeMetricFamily("streamd_inference_available", "1 while inference can run, 0 while it "
                                      "cannot (an inference server away: night frames pass through gray)")
        available.add_metric([], 0.0 if p.unavailable() else 1.0)
        shard = GaugeMetricFamily("streamd_shard_info", "The shard of the fleet this process runs (streamd.fleet); "
                                  "absent when it runs every camera of its config", labels=["shard", "shards"])
        shard_cameras = GaugeMetricFamily("streamd_shard_camera", "1 for each camera this process runs as its "
                                          "shard", labels=["camera", "shard"])
        if p.shard:
            shard.add_metric([str(p.shard.index), str(p.shard.count)], 1.0)
            for name in list(p.cameras):
                shard_cameras.add_metric([name, str(p.shard.index)], 1.0)
        adaptations = CounterMetricFamily("streamd_adaptations", "Adaptation runs by outcome", labels=["outcome"])
        for outcome, n in p.adaptation.results.items():  # timeout: a run killed at its deadline
            adaptations.add_metric([outcome], n)
        adapt_cpu = CounterMetricFamily("streamd_adaptation_cpu_seconds", "CPU time of the adaptation runs' "
                                        "child processes (the daily budget counts this)")
        adapt_cpu.add_metric([], p.adaptation.cpu_seconds)
        by_colour = CounterMetricFamily("streamd_frames_colour", "Frames colorized, by the colour they got: reference "
                                        "(from the camera's day reference), generic, adapted or camera",
                                        labels=["camera", "kind"])
        reference_frames = GaugeMetricFamily("streamd_reference_day_frames", "Day frames the camera's day reference "
                                             "is the median of (absent while it has none)", labels=["camera"])
        reference_age = GaugeMetricFamily("streamd_reference_age_seconds", "Seconds since the camera's day reference "
                                          "was built", labels=["camera"])
        reference_fits = GaugeMetricFamily("streamd_reference_fits", "1 while the camera's night shows its day "
                                           "reference's view, 0 while it does not (moved, another preset)",
                                           labels=["camera"])
        for name, r in list(p.cameras.items()):
            for kind, n in sorted(dict(r.by_colour).items()):
                by_colour.add_metric([name, kind], n)
            status = r.reference.status() if r.reference else None
            if status:
                reference_frames.add_metric([name], status["frames"])
                reference_age.add_metric([name], status["age_s"])
                reference_fits.add_metric([name], 1.0 if status["fits"] else 0.0)
        yield from (frames, colorized, passed, reused, carried, uncolorized, dropped, published, reconnects,
                    out_reconnects, fallbacks, state, age, queue, provider, stored, available, shard, shard_cameras,
                    adaptations, adapt_cpu, by_colour, reference_frames, reference_age, reference_fits)


def health(pipeline, phase: str) -> tuple[int, dict]:
    """(HTTP status, body). starting/stopping: 503; running: 200; degraded (a camera is down, or silent:
    running but delivering nothing, streamd.pipeline.CameraRuntime.state; or inference unavailable, with the
    reason; or a model failing batch after batch, its frames dropped): 503; stalled (inference or the GPU
    colour stage hung): 503, with the reason. A process that runs
    a shard of its config says which ("shard": "1/3")."""
    now = time.monotonic()
    cameras = {name: r.state(now) for name, r in list(pipeline.cameras.items())}
    body = {"status": phase, "cameras": cameras}
    if pipeline.shard:
        body["shard"] = str(pipeline.shard)
    stalled = pipeline.stalled() if phase == "running" else None
    unavailable = pipeline.unavailable() if phase == "running" else None
    if stalled:
        body.update(status="stalled", reason=stalled)
    elif unavailable:
        body.update(status="degraded", reason=f"inference unavailable: {unavailable}")
    elif failing := (pipeline.failing() if phase == "running" else None):
        body.update(status="degraded", reason=failing)
    elif phase == "running" and any(s != State.RUNNING.value for s in cameras.values()):
        body["status"] = "degraded"
    return (200 if body["status"] == "running" else 503), body


def liveness(phase: str, silent_s: float) -> tuple[int, dict]:
    """/livez, for supervisors that restart what fails it (a Kubernetes livenessProbe): 200 while the main
    loop goes round, 503 when it has been silent for LIVE_S. Unlike /healthz, a camera or an inference server
    that is down does not fail it: a restart would not bring them back. (A stalled pipeline ends the process.)"""
    if phase == "running" and silent_s > LIVE_S:
        return 503, {"status": "hung", "reason": f"the main loop has been silent for {silent_s:.0f} s"}
    return 200, {"status": phase}


def request_adaptation(pipeline, camera: str) -> tuple[int, dict]:
    """POST /adapt/CAMERA: queue the camera for adaptation. 202 queued, 404 unknown, 409 not adaptable."""
    if camera not in pipeline.cameras:
        return 404, {"error": f"no camera named {camera!r}"}
    try:
        status = pipeline.adaptation.request(camera)
    except KeyError:
        return 409, {"error": f"camera {camera!r} is not adapted: it does not collect, or its config fixes its model"}
    return 202, {"camera": camera, "status": status, "last": pipeline.adaptation.state(camera)}


def authorized(token: str, header: str | None, query: str) -> bool:
    """Whether a request carries the listener's token ("Authorization: Bearer TOKEN" or ?token=TOKEN);
    always, when the listener has none. Compared in constant time."""
    if not token:
        return True
    given = header[len("Bearer "):].strip() if header and header.startswith("Bearer ") else ""
    if not given:
        given = parse_qs(query).get("token", [""])[-1]
    return hmac.compare_digest(given.encode(), token.encode())


def is_open(path: str) -> bool:
    """Paths served without the token: /healthz and /livez for supervisors, and the page's own HTML, script
    and style, which hold no data (the script asks for the data with the token)."""
    return path in ("/healthz", "/livez", "/") or path.startswith("/static/")


REQUEST_TIMEOUT_S = 20.0  # the longest a connection may wait on one read or write (a half-open client)


class HealthServer:
    """Serves /healthz, /livez, /metrics and the status page, and takes adaptation requests, on its own
    thread; `phase` and `beat` (monotonic time of its last round) are set by the daemon's main loop. With a
    `token`, every other path wants it."""

    def __init__(self, pipeline, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9090,
                 token: str = "", request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.phase = "starting"
        self.beat = time.monotonic()
        registry.register(PipelineCollector(pipeline))
        self.page = StatusPage(pipeline, lambda: self.phase)
        registry.register(self.page.snapshots)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s  # a client that connects and sends nothing must not hold a thread for good

            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path, _, query = self.path.partition("?")
                if not self._allowed(path, query):
                    return
                headers: dict[str, str] = {}
                if path == "/metrics":
                    code, body, ctype = 200, generate_latest(registry), CONTENT_TYPE_LATEST
                elif path == "/healthz":
                    code, doc = health(server.pipeline, server.phase)
                    body, ctype = json.dumps(doc).encode(), "application/json"
                elif path == "/livez":
                    code, doc = liveness(server.phase, time.monotonic() - server.beat)
                    body, ctype = json.dumps(doc).encode(), "application/json"
                elif (reply := server.page.get(path, query)) is not None:
                    code, body, ctype, headers = reply.code, reply.body, reply.content_type, reply.headers
                else:
                    code, body, ctype = 404, b"not found: try /, /healthz, /livez or /metrics\n", "text/plain"
                self._reply(code, body, ctype, headers)

            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                path, _, query = self.path.partition("?")
                if not self._allowed(path, query):
                    return
                parts = path.strip("/").split("/")
                if len(parts) == 2 and parts[0] == "adapt":
                    code, doc = request_adaptation(server.pipeline, parts[1])
                    self._reply(code, json.dumps(doc).encode(), "application/json")
                else:
                    self._reply(404, b"not found: POST /adapt/CAMERA\n", "text/plain")

            def _allowed(self, path: str, query: str) -> bool:
                """False (and a 401 sent) when the request lacks the token this listener wants."""
                if is_open(path) or authorized(token, self.headers.get("Authorization"), query):
                    return True
                self._reply(401, b"this listener wants its token: Authorization: Bearer TOKEN, or ?token=TOKEN\n",
                            "text/plain", {"WWW-Authenticate": 'Bearer realm="streamd"'})
                return False

            def _reply(self, code: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # scrapes every few seconds are not events worth a log line
                pass

        self.pipeline = pipeline
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
