"""Supervision under failure, on real processes: systemd's watchdog and timeouts through reloads and stops
with cameras whose hosts are down, silent cameras in /healthz, the exit code of an interrupt, and the
sockets the daemon actually listens on."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path


from streamd.daemon.systemd import Notifier
from tests.conftest import ROOT, free_port, write_video
from tests.test_operations import http_get, start_streamd, stop_streamd, write_config


def unit_seconds(key: str) -> float:
    """A time setting of the shipped systemd unit, in seconds (plain seconds, as the unit writes them)."""
    text = (ROOT / "systemd" / "streamd@.service").read_text()
    return float(re.search(rf"^{key}=(\d+)$", text, re.MULTILINE).group(1))


class NotifyListener:
    """systemd's side of the notify socket: every datagram with the time it arrived."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def receive(self, seconds: float, until=None) -> dict[str, str] | None:
        """Receive for `seconds`, or until a message satisfies `until(fields)`, which is returned."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.socket.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.socket.recv(4096).decode()
            except TimeoutError:
                break
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))
            if until and until(fields):
                return fields
        return None

    def receive_until(self, until, timeout: float) -> dict[str, str]:
        fields = self.receive(timeout, until)
        assert fields, f"no such message within {timeout:g} s; got {[m for _, m in self.messages]}"
        return fields

    def pings(self) -> list[float]:
        return [t for t, fields in self.messages if fields.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self.socket.close()


def test_working_keeps_the_watchdog_fed_and_the_timeout_extended_until_its_limit(tmp_path):
    """Long work on the main loop's thread (a model load, a TensorRT build): a helper pings systemd while it
    lasts, but no longer than its limit, after which systemd's watchdog may act on a hung step."""
    listener = NotifyListener(tmp_path / "notify")
    notifier = Notifier({"NOTIFY_SOCKET": listener.path, "WATCHDOG_USEC": "2000000"})  # ping every 1 s
    def work() -> None:
        with notifier.working("loading model yard.onnx", limit_s=3.0):
            time.sleep(4.5)  # the work outlasts its limit

    worker = threading.Thread(target=work)
    try:
        start = time.monotonic()
        worker.start()
        listener.receive(5.5)  # everything until 1 s after the work ended
    finally:
        worker.join()
        listener.close()
    pings = [t - start for t in listener.pings()]
    assert pings and pings[0] < 0.5  # at once
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < 1.8, pings  # within the 2 s watchdog period, all along the limit
    assert 2.0 < pings[-1] < 3.2, pings  # and then no more: the work counts as hung
    extensions = [int(f["EXTEND_TIMEOUT_USEC"]) for _, f in listener.messages if "EXTEND_TIMEOUT_USEC" in f]
    assert len(extensions) == len(pings) and all(0 < e <= 3_000_000 for e in extensions)
    assert all(f["STATUS"] == "loading model yard.onnx" for _, f in listener.messages)


def test_reload_and_stop_with_cameras_whose_hosts_are_down_stay_within_the_units_timeouts(tmp_path):
    """Seven cameras whose host accepts the connection and never answers, so each camera's thread sits in
    its connection attempt (for up to a minute): a reload that restarts all of them, then a stop, against
    the shipped unit's WatchdogSec and TimeoutStopSec (the daemon told the unit's watchdog period, as
    systemd does)."""
    watchdog_s, stop_limit_s = unit_seconds("WatchdogSec"), unit_seconds("TimeoutStopSec")
    dead_host = socket.socket()
    dead_host.bind(("127.0.0.1", 0))
    dead_host.listen(64)
    url = f"rtsp://127.0.0.1:{dead_host.getsockname()[1]}"
    cfg = tmp_path / "c.toml"

    def write(read_timeout: float) -> None:
        cfg.write_text('[zmq]\nendpoint = ""\n' + "".join(
            f'[[camera]]\nname = "cam{i}"\nurl = "{url}/cam{i}"\nopen_timeout_s = 60.0\n'
            f'read_timeout_s = {read_timeout}\n' for i in range(7)))

    write(5.0)
    listener = NotifyListener(tmp_path / "notify")
    proc = start_streamd("run", "-c", str(cfg), env={"NOTIFY_SOCKET": listener.path,
                                                     "WATCHDOG_USEC": str(int(watchdog_s * 1e6))})
    try:
        listener.receive_until(lambda f: f.get("READY") == "1", timeout=60)
        time.sleep(1.0)  # every camera is inside its connection attempt
        write(6.0)  # every camera changed: each is stopped and started again
        sighup = time.monotonic()
        proc.send_signal(signal.SIGHUP)
        listener.receive_until(lambda f: f.get("RELOADING") == "1", timeout=10)
        listener.receive_until(lambda f: f.get("READY") == "1", timeout=3 * watchdog_s)
        reloaded = time.monotonic()
        last_ping_before = max([t for t in listener.pings() if t < sighup], default=sighup)
        pings = [last_ping_before] + [t for t in listener.pings() if t >= sighup] + [reloaded]
        unpinged = max(b - a for a, b in zip(pings, pings[1:]))
        sigterm = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(3 * stop_limit_s)
        stopped = time.monotonic()
    finally:
        log = stop_streamd(proc)
        listener.close()
        dead_host.close()
    print(f"reload {reloaded - sighup:.1f} s, longest stretch without a watchdog ping {unpinged:.1f} s, "
          f"stop {stopped - sigterm:.1f} s")
    assert "reload: restarted cam0" in log, log
    assert reloaded - sighup < watchdog_s and unpinged < watchdog_s
    assert stopped - sigterm < stop_limit_s and proc.returncode == 0, log


def test_a_camera_that_stops_sending_is_silent_in_healthz_before_any_timeout(rtsp_server, publishers, tmp_path):
    """RTSP over UDP whose publisher dies: the connection does not fail, no packet comes. /healthz says
    degraded and names the camera as silent within its silent_after_s, while the read timeout (10 s here)
    has not yet reconnected it."""
    publisher = publishers(rtsp_server.publish_url("porch"), mode="colour", seconds=120)
    http = free_port()
    cfg = tmp_path / "c.toml"
    write_config(cfg, "", http,
                 f'[[camera]]\nname = "porch"\nurl = "{rtsp_server.play_url("porch")}"\ntransport = "udp"\n'
                 f'read_timeout_s = 10.0\nstall_timeout_s = 10.0\ncollect = false\n')
    proc = start_streamd("run", "-c", str(cfg))
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                code, body = http_get(f"http://127.0.0.1:{http}/healthz")
            except OSError:
                code = None
            if code == 200:
                break
            time.sleep(0.2)
        assert code == 200 and json.loads(body)["cameras"] == {"porch": "running"}, stop_streamd(proc)
        publisher.stop()  # SIGKILL: the camera vanishes without a word
        killed = time.monotonic()
        while time.monotonic() - killed < 10:
            code, body = http_get(f"http://127.0.0.1:{http}/healthz")
            state = json.loads(body)["cameras"]["porch"]
            if state != "running":
                break
            time.sleep(0.1)
        silent_after = time.monotonic() - killed
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
    finally:
        log = stop_streamd(proc)
    print(f"silent {silent_after:.1f} s after the publisher died")
    assert state == "silent" and code == 503 and json.loads(body)["status"] == "degraded", (state, body, log)
    assert silent_after < 5.0  # 2 s at most by default, plus polling on a loaded machine; the read timeout is 10 s
    assert 'streamd_camera_state{camera="porch",state="running"} 1.0' in metrics  # the source has not given up


def test_interrupted_run_exits_130_and_a_stopped_one_0(tmp_path):
    """The README's exit codes, on the real command: Ctrl-C (SIGINT) is 130, systemd's stop (SIGTERM) is 0."""
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=1)
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 0)):
        proc = start_streamd("run", "--source", f"cam={clip}", "--loop", "--zmq", "", "--report-every", "0.5")
        try:
            end = time.monotonic() + 60
            while "cam: running" not in Path(proc.log_path).read_text() and time.monotonic() < end:
                time.sleep(0.2)
            proc.send_signal(sig)
            proc.wait(30)
        finally:
            log = stop_streamd(proc)
        assert proc.returncode == code, (sig, log)


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, read from /proc: the socket inodes
    among its file descriptors, looked up in its network namespace's TCP tables."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def test_listeners_bind_to_localhost_by_default(tmp_path):
    """`streamd run` with a config that sets nothing but a camera: every socket the process listens on is
    on the loopback interface (ZeroMQ's default endpoint, and any other listener a default turns on). The
    default endpoint's port (5555) may be another program's on this machine: the run keeps the default's
    host and takes a free port."""
    from streamd.config import ZmqConfig

    default_host, _, default_port = ZmqConfig().endpoint.rpartition(":")
    assert default_host == "tcp://127.0.0.1" and default_port == "5555"
    port = free_port()
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=1)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[camera]]\nname = "cam"\nurl = "{clip}"\nloop = true\n')
    proc = start_streamd("run", "-c", str(cfg), "--zmq", f"{default_host}:{port}", "--report-every", "0.5")
    try:
        end = time.monotonic() + 60
        while "cam: running" not in Path(proc.log_path).read_text() and time.monotonic() < end:
            assert proc.poll() is None, Path(proc.log_path).read_text()
            time.sleep(0.2)
        listening = listening_addresses(proc.pid)
    finally:
        log = stop_streamd(proc)
    assert ("127.0.0.1", port) in listening, (listening, log)
    assert all(address in ("127.0.0.1", "::1") for address, _ in listening), listening


# `streamd run` whose network hangs inside its first call, as a GPU or driver can: everything else is the real
# command (the hang cannot be had otherwise)
HANGING_NETWORK_RUN = """
import sys, threading
import streamd.infer.onnx_runtime
streamd.infer.onnx_runtime.Colorizer.__call__ = lambda self, lightness: threading.Event().wait()
from streamd.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_stalled_daemon_exits_with_status_1_for_its_supervisor(tmp_path):
    """A hung network call: `streamd run` ends by itself, with exit status 1 (systemd's Restart=on-failure
    restarts it; 0 would leave it stopped) and the reason on stderr, though its inference thread never returns."""
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text('[zmq]\nendpoint = ""\n[model]\nstall_timeout_s = 1.0\n[[camera]]\nname = "gate"\n'
                   'url = "synthetic:"\nwidth = 320\nheight = 240\ncollect = false\n')
    run = subprocess.run([sys.executable, "-c", HANGING_NETWORK_RUN, "run", "-c", str(cfg)], cwd=ROOT,
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "streamd: inference: one batch has not returned" in run.stderr, run.stderr[-2000:]
