"""Health and metrics over HTTP: /healthz for supervisors, /metrics for Prometheus, and the status page
(streamd.status: /, /api/cameras, /snapshot/CAMERA.jpg).

Values are read from the pipeline when scraped (a custom collector), so the frame path carries no
metrics code except the latency histograms, which need every observation.
"""
from __future__ import annotations

import hmac
import io
import ipaddress
import json
import logging
import math
import socket
import sys
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamd.config import is_local
from streamd.daemon.schedule import BudgetSpent
from streamd.daemon.source import State
from streamd.daemon.status import StatusPage

log = logging.getLogger(__name__)

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
    loop goes round, 503 when it has been silent for LIVE_S; `silent_s`: the seconds since its last round.
    Unlike /healthz, a camera or an inference server that is down does not fail it: a restart would not bring
    them back. (A stalled pipeline ends the process.)"""
    if phase == "running" and silent_s > LIVE_S:
        return 503, {"status": "hung", "reason": f"the main loop has been silent for {silent_s:.0f} s",
                     "silent_s": round(silent_s, 1)}
    return 200, {"status": phase, "silent_s": round(silent_s, 1)}


def adaptation_reply(pipeline, camera: str, posts: RateLimit) -> tuple[int, dict, dict[str, str]]:
    """POST /adapt/CAMERA: queue the camera for adaptation. 202 queued; 404 unknown; 409 not adaptable; 429
    the day's CPU budget is spent, or too many requests lately (Retry-After)."""
    if camera not in pipeline.cameras:
        return 404, {"error": f"no camera named {camera!r}"}, {}
    wait_s = posts.wait_s()
    if wait_s:
        return 429, {"error": f"at most {posts.count} adaptation requests in {posts.window_s / 60:g} min; "
                              f"try again in {wait_s:.0f} s"}, {"Retry-After": str(math.ceil(wait_s))}
    try:
        status = pipeline.adaptation.request(camera)
    except KeyError:
        return 409, {"error": f"camera {camera!r} is not adapted: it does not collect, or its config fixes its "
                              "model"}, {}
    except BudgetSpent as e:
        return 429, {"error": str(e)}, {}
    return 202, {"camera": camera, "status": status, "last": pipeline.adaptation.state(camera)}, {}


def query_params(query: str) -> dict[str, list[str]]:
    """A URL's query parameters, '+' kept as itself: a token made by `openssl rand -base64` holds '+', which
    form decoding would turn into a space (no config value these parameters carry has a space)."""
    return parse_qs(query.replace("+", "%2B"))


def token_matches(token: str, given: str) -> bool:
    """Compared in constant time."""
    return hmac.compare_digest(given.encode(), token.encode())


def bearer(header: str | None) -> str:
    """The token of an "Authorization: Bearer TOKEN" header ("" without one)."""
    return header[len("Bearer "):].strip() if header and header.startswith("Bearer ") else ""


def authorized(token: str, header: str | None, query: str) -> bool:
    """Whether a request carries the listener's token ("Authorization: Bearer TOKEN" or ?token=TOKEN);
    always, when the listener has none."""
    if not token:
        return True
    return token_matches(token, bearer(header) or query_params(query).get("token", [""])[-1])


def is_open(path: str) -> bool:
    """Paths served without the token: /healthz and /livez for supervisors, and the page's own HTML, script
    and style, which hold no data (the script asks for the data with the token)."""
    return path in ("/healthz", "/livez", "/") or path.startswith("/static/")


def local_host_header(host: str) -> bool:
    """Whether a Host header names this machine's loopback (localhost, 127.x.x.x, [::1]), with any port. A page
    that DNS rebinding brought to a localhost listener sends its own site's name instead."""
    name = (host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def other_site(headers) -> str | None:
    """The other site a browser's request comes from; None for this listener's own page, and for clients
    that are not browsers (they send neither header). Sec-Fetch-Site, which no page can set, says it where
    the browser sends it; else Origin is compared with the host the request was sent to (Host, or a proxy's
    X-Forwarded-Host, which a cross-site page cannot add without a preflight this server never allows)."""
    origin, fetch_site = headers.get("Origin"), headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        return None if fetch_site in ("same-origin", "none") else origin or fetch_site
    if origin is None:
        return None
    hosts = {h.lower() for h in (headers.get("Host"), headers.get("X-Forwarded-Host")) if h}
    return None if urlsplit(origin).netloc.lower() in hosts else origin


REQUEST_TIMEOUT_S = 10.0  # a request's whole head must arrive within this, and its reply leave within it
MAX_CONNECTIONS = 64  # open at once, all clients together: far below the units' LimitNOFILE
MAX_PER_CLIENT = 16  # open at once from one address (a browser opens 6 to a host)
ADAPT_POSTS = 6  # POST /adapt accepted per ADAPT_WINDOW_S on a listener, then 429
ADAPT_WINDOW_S = 600.0


UNAUTHORIZED = (401, "this listener wants its token: Authorization: Bearer TOKEN, or ?token=TOKEN",
                {"WWW-Authenticate": 'Bearer realm="streamd"'})


class Refused(Exception):
    """A request turned away while its head is still arriving: the reply to send, then the connection ends."""

    def __init__(self, code: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.headers = code, message, headers or {}


class HeadReader(io.RawIOBase):
    """A connection's reading side with one deadline for the whole request: each read waits at most what is
    left of it, so a client trickling a header line every few seconds is cut off at the deadline (a timeout
    per read never cuts it off)."""

    def __init__(self, sock: socket.socket, timeout_s: float) -> None:
        self.sock, self.deadline = sock, time.monotonic() + timeout_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete within its deadline")
        self.sock.settimeout(left)
        return self.sock.recv_into(buffer)


class HeadLines:
    """The handler's rfile: the request line and header lines as they come, the token checked at the line that
    carries it (the request line's ?token=, or Authorization), so that a wrong token ends the connection at
    once instead of when the head is complete."""

    def __init__(self, raw: io.BufferedReader, token: str) -> None:
        self.raw, self.token = raw, token
        self.needs_token = False  # the request line asked for a path behind the token

    def readline(self, limit: int = -1) -> bytes:
        line = self.raw.readline(limit)
        if self.token:
            self._check(line)
        return line

    def close(self) -> None:
        self.raw.close()

    def _check(self, line: bytes) -> None:
        text = line.decode("latin-1").strip()
        if not self.needs_token and text.count(" ") == 2 and text.endswith(("HTTP/1.0", "HTTP/1.1")):
            path, _, query = text.split(" ")[1].partition("?")
            self.needs_token = not is_open(path)
            given = query_params(query).get("token", [""])[-1] if self.needs_token else ""
            if given and not token_matches(self.token, given):
                raise Refused(*UNAUTHORIZED)
        elif self.needs_token and text[:14].lower() == "authorization:":
            if not token_matches(self.token, bearer(text[14:].strip())):
                raise Refused(*UNAUTHORIZED)


class Connections:
    """The connections open now, per client address, within MAX_CONNECTIONS and MAX_PER_CLIENT. When either
    is reached, the oldest connection still sending its head (a slow client, or one that sends nothing) of
    that client, or of the client holding most, is ended to make room: clients that hold connections open
    without asking anything cannot lock out one that asks (a supervisor's /healthz). Without such a
    connection to end, the new one is refused."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total, self.per_client = total, per_client
        self._lock = threading.Lock()
        self._open: dict[socket.socket, tuple[str, bool]] = {}  # in the order they came: (client, head read)

    def admit(self, sock: socket.socket, client: str) -> bool:
        with self._lock:
            held: dict[str, int] = {}
            for address, _ in self._open.values():
                held[address] = held.get(address, 0) + 1
            if held.get(client, 0) >= self.per_client:
                if not self._end_oldest_waiting(client):
                    return False
            elif len(self._open) >= self.total:
                if not self._end_oldest_waiting(max(held, key=held.get)):
                    return False
            self._open[sock] = (client, False)
            return True

    def head_read(self, sock: socket.socket) -> None:
        with self._lock:
            if sock in self._open:
                self._open[sock] = (self._open[sock][0], True)

    def leave(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.pop(sock, None)

    def count(self) -> int:
        return len(self._open)

    def _end_oldest_waiting(self, client: str) -> bool:
        """End the client's oldest connection that has not sent its whole head (its thread's read returns
        at once and the thread ends); it no longer counts."""
        for sock, (address, head_read) in self._open.items():
            if address == client and not head_read:
                del self._open[sock]
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
                return True
        return False


class RateLimit:
    """At most `count` events in any `window_s` seconds."""

    def __init__(self, count: int, window_s: float) -> None:
        self.count, self.window_s = count, window_s
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """0 and the event counted, or how long until one more would fit."""
        with self._lock:
            now = time.monotonic()
            while self._times and now - self._times[0] >= self.window_s:
                self._times.popleft()
            if len(self._times) >= self.count:
                return self.window_s - (now - self._times[0])
            self._times.append(now)
            return 0.0


class Server(ThreadingHTTPServer):
    """A thread per connection, within `connections`; errors of a request go to the log (its formatter redacts
    them), never as a raw traceback to stderr."""

    daemon_threads = True
    request_queue_size = 1024  # a burst of connections waits in the kernel until the loop takes each (at once),
    # instead of being dropped and tried again by the client a second later

    def __init__(self, address: tuple[str, int], handler, connections: Connections) -> None:
        self.connections = connections
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.connections.admit(request, client_address[0]):
            log.debug("http: %s refused: %d connections open (at most %d, %d per client)", client_address[0],
                      self.connections.count(), self.connections.total, self.connections.per_client)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.leave(request)

    def handle_error(self, request, client_address) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # a client gone early, or too slow: its own affair
            log.debug("http: %s: %s", client_address[0], error)
        else:
            log.exception("http: a request from %s failed", client_address[0])


class HealthServer:
    """Serves /healthz, /livez, /metrics and the status page, and takes adaptation requests, on its own
    thread; `phase` and `beat` (monotonic time of its last round) are set by the daemon's main loop. With a
    `token`, every other path wants it. On a localhost listener, a request must name the machine itself as its
    Host (DNS rebinding); a POST from a browser must come from this listener's own page (its Origin)."""

    def __init__(self, pipeline, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9090,
                 token: str = "", request_timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.phase = "starting"
        self.beat = time.monotonic()
        registry.register(PipelineCollector(pipeline))
        self.page = StatusPage(pipeline, lambda: self.phase)
        registry.register(self.page.snapshots)
        self.adapt_posts = RateLimit(ADAPT_POSTS, ADAPT_WINDOW_S)
        local = is_local(host)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = request_timeout_s  # writing a reply: a client that stops reading must not hold a thread
            # set before a request line is parsed, for a reply to a request refused while its head arrives
            request_version, requestline, command = "HTTP/1.0", "", ""

            def setup(self) -> None:
                super().setup()
                self.rfile.close()  # http.server's reader, replaced (an open one would keep the socket open)
                self.rfile = HeadLines(io.BufferedReader(HeadReader(self.connection, request_timeout_s)), token)

            def handle(self) -> None:
                try:
                    self.handle_one_request()  # one request per connection (HTTP/1.0)
                except Refused as e:
                    self._reply(e.code, (e.message + "\n").encode(), "text/plain; charset=utf-8", e.headers)
                self.close_connection = True

            def parse_request(self) -> bool:
                parsed = super().parse_request()
                self.server.connections.head_read(self.connection)
                self.connection.settimeout(request_timeout_s)  # the reply's time to leave
                return parsed

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
                site = other_site(self.headers)
                if site is not None:
                    self._reply(403, f"a POST from another site ({site}) is refused: use the status page "
                                     "of this listener\n".encode(), "text/plain; charset=utf-8")
                    return
                parts = path.strip("/").split("/")
                if len(parts) == 2 and parts[0] == "adapt":
                    code, doc, headers = adaptation_reply(server.pipeline, parts[1], server.adapt_posts)
                    self._reply(code, json.dumps(doc).encode(), "application/json", headers)
                else:
                    self._reply(404, b"not found: POST /adapt/CAMERA\n", "text/plain")

            def _allowed(self, path: str, query: str) -> bool:
                """False (and the refusal sent) when the request names another site as its Host on a localhost
                listener, or lacks the token this listener wants."""
                host = self.headers.get("Host")
                if local and host is not None and not local_host_header(host):
                    self._reply(403, f"this listener is for localhost only, not for Host {host!r}\n".encode(),
                                "text/plain; charset=utf-8")
                    return False
                if is_open(path) or authorized(token, self.headers.get("Authorization"), query):
                    return True
                code, message, headers = UNAUTHORIZED
                self._reply(code, (message + "\n").encode(), "text/plain", headers)
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
        self.httpd = Server((host, port), Handler, Connections(MAX_CONNECTIONS, MAX_PER_CLIENT))
        self.address = self.httpd.server_address
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
