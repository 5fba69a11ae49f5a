"""The HTTP server against hostile clients, on real sockets on 127.0.0.1: one deadline for a request's head,
the token checked at the line that carries it, Host and Origin checks against DNS rebinding and cross-site
requests, adaptation requests within the daily budget and a rate, snapshot widths, errors of a request in
the log, and a real daemon under a flood of slow clients."""
from __future__ import annotations

import json
import logging
import socket
import struct
import time
from pathlib import Path

import pytest

from streamd import config as cfgmod
from streamd.daemon.health import ADAPT_POSTS, HealthServer
from streamd.daemon.pipeline import Pipeline
from tests.conftest import free_port

TOKEN = "base64+made/token=0123456789"  # as `openssl rand -base64` makes them: '+', '/' and '='


@pytest.fixture
def serve(tmp_path):
    """A HealthServer on a running pipeline whose one camera, gate, has not delivered a frame yet (its host
    accepts the connection and never answers); stopped at the end of the test."""
    silent_host = socket.socket()
    silent_host.bind(("127.0.0.1", 0))
    silent_host.listen(8)
    started: list[HealthServer] = []

    def start(token: str = "", host: str = "127.0.0.1", **kw) -> HealthServer:
        url = "rtsp://127.0.0.1:%d/gate" % silent_host.getsockname()[1]
        cfg = cfgmod.parse({"camera": [{"name": "gate", "url": url, "open_timeout_s": 1.0}],
                            "zmq": {"endpoint": ""}, "adapt": {"state_dir": str(tmp_path / "state")}})
        pipeline = Pipeline(cfg)
        pipeline.start()
        server = HealthServer(pipeline, pipeline.instruments.registry, host, free_port(), token, **kw)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        server.pipeline.stop()
    silent_host.close()


def exchange(server: HealthServer, head: str, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request head, read the reply to its end: (status, headers, body); status 0 when the server
    closed the connection without a reply."""
    with socket.create_connection(server.address[:2], timeout=timeout) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    if not data:
        return 0, {}, b""
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def get(server: HealthServer, target: str, host: str = "", extra: str = "", method: str = "GET"):
    host = host or "%s:%d" % server.address[:2]
    return exchange(server, f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")


def test_a_request_head_sent_line_by_line_is_cut_off_at_its_deadline(serve):
    """A client that sends a header line every 0.3 s, each well within any per-read timeout, and never ends
    its head: the server closes the connection at the request's deadline, long before the client is done."""
    server = serve(request_timeout_s=1.0)
    sock = socket.create_connection(server.address[:2], timeout=10)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
    cut_off = False
    for i in range(40):  # 12 s of trickling
        time.sleep(0.3)
        try:
            sock.sendall(f"X-Slow-{i}: {i}\r\n".encode())
        except OSError:
            cut_off = True
            break
        sock.setblocking(False)
        try:
            cut_off = sock.recv(1) == b""
        except BlockingIOError:
            pass
        sock.setblocking(True)
        if cut_off:
            break
    sock.close()
    assert cut_off, "the server kept reading a request head for 12 s"



def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_one_address_holds_at_most_its_share_of_connections(serve):
    """MAX_PER_CLIENT + 4 connections from one address that never finish their head: the 4 oldest are ended
    to make room for the newer ones (the newest client is the one still asking), the others stay open."""
    from streamd.daemon.http_guard import MAX_PER_CLIENT

    server = serve()
    socks = []
    for _ in range(MAX_PER_CLIENT + 4):
        socks.append(socket.create_connection(server.address[:2], timeout=5, source_address=("127.0.0.5", 0)))
        socks[-1].sendall(b"GET /healthz HTTP/1.1\r\n")
    time.sleep(1.0)  # the server has taken all of them
    closed = [closed_by_server(sock, 0.2) for sock in socks]
    for sock in socks:
        sock.close()
    assert closed == [True] * 4 + [False] * MAX_PER_CLIENT, closed

def test_a_wrong_token_is_refused_at_the_line_that_carries_it(serve):
    """A request behind the token whose Authorization line is wrong, its head not yet ended: 401 at once, not
    once the head is complete or at the deadline (10 s). The same for a wrong ?token= in the request line."""
    server = serve(token=TOKEN)
    for head in (f"GET /api/cameras HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN[:-1]}x\r\n",
                 "GET /api/cameras?token=guess HTTP/1.1\r\n"):
        code, headers, _ = exchange(server, head, timeout=5.0)  # no blank line: the head is not over
        assert code == 401 and "Bearer" in headers["WWW-Authenticate"], head


def test_a_token_with_a_plus_works_in_the_query_and_as_a_header(serve):
    """'+' in ?token= is the token's own character, not a space as form decoding would have it."""
    server = serve(token=TOKEN)
    assert get(server, f"/api/cameras?token={TOKEN}")[0] == 200
    assert get(server, "/api/cameras", extra=f"Authorization: Bearer {TOKEN}\r\n")[0] == 200
    assert get(server, f"/api/cameras?token={TOKEN.replace('+', '%20')}")[0] == 401
    assert get(server, "/api/cameras")[0] == 401


def test_a_localhost_listener_answers_only_requests_for_localhost(serve):
    """DNS rebinding: a page of attacker.example whose name now resolves to 127.0.0.1 sends its own name as
    Host; the listener refuses it, on every path, and serves the names of the machine itself."""
    server = serve()
    port = server.address[1]
    for path in ("/snapshot/gate.jpg", "/api/cameras", "/metrics", "/"):
        code, _, body = get(server, path, host=f"attacker.example:{port}")
        assert code == 403 and b"localhost only" in body, (path, code, body)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", "[::1]", f"127.0.0.2:{port}"):
        assert get(server, "/api/cameras", host=host)[0] == 200, host


def test_a_listener_off_localhost_takes_any_host_name_with_its_token(serve):
    """Off localhost the token guards the listener (a rebinding page does not know it); the Host is the
    name clients reach it by, whatever it is."""
    server = serve(token=TOKEN, host="0.0.0.0")
    assert get(server, f"/api/cameras?token={TOKEN}", host="cameras.example:9090")[0] == 200


def test_a_cross_site_post_is_refused(serve):
    """A page of another site posting to /adapt: 403, nothing queued, whether the browser says so with
    Sec-Fetch-Site or only with its Origin. The status page's own POST (also behind a proxy on another
    name) and a POST from a client that is not a browser (curl: neither header) go through."""
    server = serve()
    host = "%s:%d" % server.address[:2]
    evil = "Origin: https://evil.example\r\n"
    for headers in (evil, "Origin: null\r\n", f"Origin: http://{host}.evil.example\r\n",
                    evil + "Sec-Fetch-Site: cross-site\r\n", "Sec-Fetch-Site: same-site\r\n",
                    evil + "X-Forwarded-Host: cameras.example\r\n"):
        code, _, body = get(server, "/adapt/gate", extra=headers, method="POST")
        assert code == 403 and b"another site" in body, (headers, code, body)
    assert not server.pipeline.adaptation._requests
    for headers in (f"Origin: http://{host}\r\n", "",  # the page itself; curl
                    "Origin: https://cameras.example\r\nSec-Fetch-Site: same-origin\r\n",  # through a TLS proxy
                    "Origin: https://cameras.example\r\nX-Forwarded-Host: cameras.example\r\n"):
        code, _, body = get(server, "/adapt/gate", extra=headers, method="POST")
        assert code == 202 and json.loads(body)["status"] in ("queued", "already queued"), (headers, body)


def test_adaptation_requests_keep_to_the_daily_budget_and_a_rate(serve, tmp_path):
    """With the day's CPU budget spent, a request is refused (429) instead of training on; within it, requests
    beyond ADAPT_POSTS in the window are refused with a Retry-After."""
    server = serve()
    for _ in range(ADAPT_POSTS):
        code, _, body = get(server, "/adapt/gate", method="POST")
        assert code == 202, body
    code, headers, body = get(server, "/adapt/gate", method="POST")
    assert code == 429 and int(headers["Retry-After"]) > 0 and b"adaptation requests in" in body, body

    ledger = tmp_path / "state" / "adapt-cpu.json"  # the day's 60 CPU minutes, spent a minute ago
    ledger.write_text(json.dumps([[time.time() - 60, 3600.0]]))
    spent = serve()  # a new daemon reads the ledger at its start
    code, _, body = get(spent, "/adapt/gate", method="POST")
    assert code == 429 and "daily adaptation budget is spent" in json.loads(body)["error"], body
    assert not spent.pipeline.adaptation._requests



def test_a_requested_run_trains_only_for_what_is_left_of_the_days_budget(tmp_path, monkeypatch):
    """55 of the day's 60 CPU minutes spent: a requested run gets the 5 minutes left (one thread), not its
    full 8. The child is a stand-in that fails at once; what is checked is what the daemon asks of it."""
    import subprocess
    import sys

    from streamd.daemon import schedule
    from streamd.config import AdaptConfig

    (tmp_path / "adapt-cpu.json").write_text(json.dumps([[time.time() - 60, 55 * 60.0]]))
    (tmp_path / "yard").mkdir()
    for i in range(3):
        (tmp_path / "yard" / f"{i}.jpg").write_bytes(b"")
    budgets, popen = [], subprocess.Popen

    def child(cmd, **kwargs):
        budgets.append(float(cmd[cmd.index("--budget-minutes") + 1]))
        return popen([sys.executable, "-c", "raise SystemExit(1)"], **kwargs)

    monkeypatch.setattr(schedule.subprocess, "Popen", child)
    scheduler = schedule.AdaptationScheduler(tmp_path, AdaptConfig(every_h=0.0, min_frames=2, threads=1),
                                             lambda: ["yard"], lambda camera, path: None)
    scheduler.start()
    try:
        assert scheduler.request("yard") == "queued"
        end = time.monotonic() + 60
        while not scheduler.state("yard") and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    assert budgets == [5.0], budgets

def test_snapshot_widths_come_from_a_short_list(serve):
    """A width of 5,000 digits is a clean 400, as is any width off the list (each would cost an encode of
    its own); a listed width is taken (the camera has no frame yet: 503, not a refusal of the width)."""
    server = serve()
    for width in ("9" * 5000, "200", "-160", "160.0", "%D9%A1%D9%A6%D9%A0", "wide"):
        code, _, body = get(server, f"/snapshot/gate.jpg?width={width}")
        assert code == 400 and b"width: one of 160, 320, 640, 1280" in body, (width[:10], code, body)
    assert get(server, "/snapshot/gate.jpg?width=640")[0] == 503


def test_a_snapshot_before_the_first_frame_says_so(serve):
    """A camera that has not delivered a frame yet: 503 naming the camera, for the output and the input."""
    server = serve()
    for query in ("", "?input=1"):
        code, headers, body = get(server, f"/snapshot/gate.jpg{query}")
        assert (code, body) == (503, b"camera gate: no frame yet\n"), (query, code, body)
        assert headers["Content-Type"].startswith("text/plain")


def test_a_client_gone_early_leaves_no_traceback_on_stderr(serve, capfd, caplog):
    """Clients that reset their connection right after sending a request (SO_LINGER 0): whatever the server
    meets (a reset read or write), no raw traceback goes to stderr, past the redacting log formatter; it is
    logged, at debug level."""
    server = serve()
    caplog.set_level(logging.DEBUG, logger="streamd.daemon.http_guard")
    for _ in range(20):
        sock = socket.create_connection(server.address[:2], timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.close()
    assert get(server, "/livez")[0] == 200  # served after them
    time.sleep(0.5)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Exception occurred" not in err, err
    assert any("Connection reset" in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


FLOOD_S = 6.0
SLOW_CLIENTS = 20  # addresses (127.0.0.2, ...): one machine's supervisor probes from 127.0.0.1
SLOW_PER_CLIENT = 20  # connections each keeps open, sending a header line every half second


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def test_a_flood_of_slow_clients_leaves_healthz_answering_and_recordings_written(tmp_path):
    """`streamd run` recording a camera in 1 s segments, its file limit 256 (the default 1024 was the units'),
    and 400 connections from 20 addresses that send a request head a line at a time and are reopened when the
    server ends them, for FLOOD_S: /healthz, asked from 127.0.0.1 four times a second, answers every time,
    the daemon's open files stay within its connection limit, and the segments keep coming without a gap."""
    import resource
    import subprocess
    import sys
    import tempfile
    import threading

    from streamd.daemon.http_guard import MAX_CONNECTIONS
    from streamd.daemon.recording import segment_key
    from tests.conftest import ROOT, write_video
    from tests.test_operations import http_get, stop_streamd

    clip = write_video(tmp_path / "c.mp4", "colour", seconds=2)
    http, folder = free_port(), tmp_path / "rec"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[zmq]\nendpoint = ""\n[http]\nlisten = "127.0.0.1:{http}"\n[[camera]]\nname = "gate"\n'
                   f'url = "{clip}"\nloop = true\ncollect = false\nfile_out = "{folder}"\nfile_segment_s = 1.0\n')
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "streamd", "run", "-c", str(cfg)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    proc.log_path = log.name
    stop, probes, opened, most_files = threading.Event(), [], [0], [0]

    def slow_client(address: str) -> None:
        socks: list[socket.socket] = []
        while not stop.is_set():
            while len(socks) < SLOW_PER_CLIENT and not stop.is_set():
                try:
                    sock = socket.create_connection(("127.0.0.1", http), timeout=2, source_address=(address, 0))
                    sock.sendall(b"GET /api/cameras HTTP/1.1\r\nHost: localhost\r\n")
                    socks.append(sock)
                    opened[0] += 1
                except OSError:
                    break
            for sock in list(socks):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:  # ended by the server: open another
                    socks.remove(sock)
                    sock.close()
            stop.wait(0.5)
        for sock in socks:
            sock.close()

    def probe() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                code = http_get(f"http://127.0.0.1:{http}/healthz")[0]
            except OSError as e:
                code = repr(e)
            probes.append((code, time.monotonic() - start))
            most_files[0] = max(most_files[0], open_files(proc.pid))
            stop.wait(0.25)

    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (len(list((folder / "gate").glob("*.mp4"))) >= 2
                                              and http_get(f"http://127.0.0.1:{http}/healthz")[0] == 200):
            assert proc.poll() is None, stop_streamd(proc)
            time.sleep(0.2)
        files_before = open_files(proc.pid)
        started = time.time()
        threads = [threading.Thread(target=slow_client, args=(f"127.0.0.{2 + i}",)) for i in range(SLOW_CLIENTS)]
        threads.append(threading.Thread(target=probe))
        for t in threads:
            t.start()
        time.sleep(FLOOD_S)
        stop.set()
        for t in threads:
            t.join(10)
        ended = time.time()
        time.sleep(1.5)  # the segment under way at the end is closed
    finally:
        stop.set()
        output = stop_streamd(proc)
    starts = sorted(segment_key(p.name)[0] for p in (folder / "gate").glob("*.mp4") if segment_key(p.name))
    during = [t for t in starts if started - 1 <= t <= ended + 1]
    gaps = [b - a for a, b in zip(during, during[1:])]
    times = sorted(t for _, t in probes)
    print(f"{opened[0]} connections opened by {SLOW_CLIENTS} clients in {FLOOD_S:g} s; /healthz asked "
          f"{len(probes)} times, answered in {1000 * times[len(times) // 2]:.0f} ms (median), "
          f"{1000 * times[-1]:.0f} ms at most; open files {files_before} before, {most_files[0]} at most; "
          f"{len(during)} segments, the longest gap {max(gaps, default=0):.0f} s")
    assert probes and all(code == 200 for code, _ in probes), (probes, output[-3000:])
    assert len(during) >= FLOOD_S / 2 and max(gaps) <= 2, (during, output[-3000:])
    assert most_files[0] <= files_before + MAX_CONNECTIONS + 8, (files_before, most_files[0])
    assert "Too many open files" not in output and "Traceback" not in output, output[-3000:]
    assert opened[0] >= 2 * SLOW_CLIENTS * SLOW_PER_CLIENT  # the server ended slow clients, which came back


def test_a_reload_and_an_adapted_model_at_once_leave_the_page_saying_what_the_camera_runs(tmp_path):
    """A reload that gives the camera a model of its own, and an adapted model for it ready in the same
    moment (both loaded, both waiting for the batch in flight): whichever goes first, the camera ends on the
    model its config names, which is what its card says. Eight rounds, the order left to the threads."""
    import dataclasses
    import shutil
    import threading

    from streamd.daemon.status import camera_card
    from tests.conftest import MODEL

    own, adapted = shutil.copy(MODEL, tmp_path / "own.onnx"), shutil.copy(MODEL, tmp_path / "adapted.onnx")
    silent_host = socket.socket()
    silent_host.bind(("127.0.0.1", 0))
    silent_host.listen(8)
    plain = cfgmod.parse({"camera": [{"name": "gate", "url": "rtsp://127.0.0.1:%d/gate" % silent_host.getsockname()[1],
                                      "open_timeout_s": 1.0}],
                          "zmq": {"endpoint": ""}, "adapt": {"state_dir": str(tmp_path / "state")}})
    with_model = dataclasses.replace(plain, cameras=(dataclasses.replace(plain.cameras[0], model=str(own)),))
    pipeline = Pipeline(plain)
    pipeline.start()
    try:
        runtime = pipeline.cameras["gate"]
        for _ in range(8):
            with pipeline._batch_lock:  # a batch in flight: both swaps wait for it
                threads = [threading.Thread(target=pipeline.apply, args=(with_model,)),
                           threading.Thread(target=pipeline.use_adapted, args=("gate", adapted))]
                for t in threads:
                    t.start()
                time.sleep(0.5)  # both models loaded
            for t in threads:
                t.join(30)
            card = camera_card(pipeline, "gate", runtime, time.monotonic())
            assert str(runtime.colorizer.path) == str(own) and card["model"]["kind"] == "camera", (
                runtime.colorizer.path, card["model"])
            pipeline.apply(plain)  # back to the generic model for the next round
            assert runtime.colorizer is pipeline.colorizer
    finally:
        pipeline.stop()
        silent_host.close()


def test_the_main_loop_of_a_running_daemon_keeps_livez_fed(tmp_path):
    """`streamd run` for a few seconds: /livez says the main loop went round a moment ago, every time it is
    asked (without the loop's heartbeat, the silence grows from the start until /livez says hung)."""
    from tests.test_operations import http_get, start_streamd, stop_streamd

    http = free_port()
    silent_host = socket.socket()  # the camera's: it takes the connection and never answers (no work here)
    silent_host.bind(("127.0.0.1", 0))
    silent_host.listen(8)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[zmq]\nendpoint = ""\n[http]\nlisten = "127.0.0.1:{http}"\n[[camera]]\nname = "gate"\n'
                   f'url = "rtsp://127.0.0.1:{silent_host.getsockname()[1]}/gate"\nopen_timeout_s = 1.0\n')
    proc = start_streamd("run", "-c", str(cfg))
    try:
        end, answers = time.monotonic() + 60, []
        while time.monotonic() < end and len(answers) < 8:
            assert proc.poll() is None, stop_streamd(proc)
            try:
                code, body = http_get(f"http://127.0.0.1:{http}/livez")
            except OSError:  # not listening yet
                code = None
            if code is not None and json.loads(body)["status"] == "running":
                answers.append(json.loads(body)["silent_s"])
            time.sleep(0.5)
    finally:
        log = stop_streamd(proc)
        silent_host.close()
    assert len(answers) == 8, log
    assert max(answers) < 2.0, answers  # a round every 0.2 s; the answers span 3.5 s


def test_the_units_allow_far_more_open_files_than_the_http_server_holds():
    """LimitNOFILE= in both units, well above the HTTP server's connections: cameras, recordings and
    ZeroMQ subscribers need theirs too (systemd's default soft limit is 1024)."""
    from streamd.daemon.http_guard import MAX_CONNECTIONS
    from streamd.daemon.systemd import unit_settings
    from tests.conftest import ROOT

    for unit in ("streamd@.service", "streamd-shard@.service"):
        limit = unit_settings([(ROOT / "systemd" / unit).read_text()]).get("LimitNOFILE")
        assert limit and int(limit[-1]) >= 64 * MAX_CONNECTIONS, (unit, limit)
