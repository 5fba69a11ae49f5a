"""Shared fixtures: real RTSP servers, test cameras publishing real H.264, free ports."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "streamd-base.onnx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


class RtspServer:
    """Debian's rtsp-server-perl: publishers RECORD to source_port, readers PLAY from client_port (UDP only)."""

    _next_rtp = 22000

    def __init__(self) -> None:
        binary = shutil.which("rtsp-server-perl")
        if binary is None:
            pytest.fail("rtsp-server-perl is not installed (apt-get install rtsp-server-perl; .ci/run does)")
        self.client_port, self.source_port = free_port(), free_port()
        RtspServer._next_rtp += 200  # each instance needs its own UDP range
        self.proc = subprocess.Popen([binary, "-c", str(self.client_port), "-s", str(self.source_port),
                                      "--rtp_start_port", str(RtspServer._next_rtp)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.client_port)
        wait_port(self.source_port)

    def publish_url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.source_port}/{path}"

    def play_url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/{path}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


@pytest.fixture
def rtsp_server():
    server = RtspServer()
    yield server
    server.stop()


class Publisher:
    """A test camera process pushing H.264 into an RTSP server (see tests/publish.py)."""

    def __init__(self, url: str, mode: str = "gray", seconds: float = 30.0, size: str = "320x240") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.publish", url, "--mode", mode,
                                      "--seconds", str(seconds), "--size", size], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def publishers():
    started: list[Publisher] = []

    def start(url: str, **kw) -> Publisher:
        p = Publisher(url, **kw)
        started.append(p)
        time.sleep(1.0)  # ANNOUNCE/RECORD done before anyone PLAYs
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def model_path() -> Path:
    assert MODEL.exists(), f"the shipped model {MODEL} is missing"
    return MODEL


def write_video(path: Path, mode: str = "gray", seconds: float = 2.0, size: str = "320x240") -> Path:
    """A real H.264 MP4 made by the test camera's frame generator."""
    subprocess.run([sys.executable, "-m", "tests.publish", str(path), "--mode", mode, "--seconds", str(seconds),
                    "--size", size], cwd=ROOT, check=True, capture_output=True)
    return path
