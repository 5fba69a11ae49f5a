"""Who may ask the HTTP listener what, and for how long: the token (a Bearer header or ?token=, compared in
constant time, checked at the line that carries it), the Host of a localhost listener (DNS rebinding) and the
site a browser's POST comes from; one deadline for a request's whole head, connections within limits (per
client and in all, the oldest idle one ended to make room), and a rate limit."""
from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections import deque
from http.server import ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)


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
