"""The daemon over HTTP: /healthz for supervisors, /livez for those that restart what fails it, /metrics for
Prometheus (streamd.daemon.metrics), the status page (streamd.daemon.status: /, /api/cameras,
/snapshot/CAMERA.jpg), and POST /adapt/CAMERA; behind the listener's guards (streamd.daemon.http_guard)."""
from __future__ import annotations

import io
import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from streamd.config import is_local
from streamd.daemon.http_guard import (MAX_CONNECTIONS, MAX_PER_CLIENT, REQUEST_TIMEOUT_S, UNAUTHORIZED, Connections,
                                       HeadLines, HeadReader, RateLimit, Refused, Server, authorized, is_open,
                                       local_host_header, other_site)
from streamd.daemon.metrics import PipelineCollector
from streamd.daemon.schedule import BudgetSpent
from streamd.daemon.source import State
from streamd.daemon.status import StatusPage


LIVE_S = 30.0  # /livez: a main loop silent this long is hung (systemd's WatchdogSec, for supervisors without it)
ADAPT_POSTS = 6  # POST /adapt accepted per ADAPT_WINDOW_S on a listener, then 429
ADAPT_WINDOW_S = 600.0


def health(pipeline, phase: str) -> tuple[int, dict]:
    """(HTTP status, body). starting/stopping: 503; running: 200; degraded (a camera is down, or silent:
    running but delivering nothing, streamd.daemon.pipeline.CameraRuntime.state; or inference unavailable, with the
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
