"""Shared fixtures: real RTSP servers, test cameras publishing real H.264, free ports."""
from __future__ import annotations

import fcntl
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "streamd-base.onnx"


@pytest.fixture(autouse=True, scope="session")
def state_directory(tmp_path_factory):
    """Day-frame stores and adapted models go to a scratch directory, never the user's own state."""
    import os

    os.environ["STATE_DIRECTORY"] = str(tmp_path_factory.mktemp("state"))
    yield Path(os.environ["STATE_DIRECTORY"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP socket listens on `port`, without connecting: rtsp-server-perl mishandles the
    next session after a probe connection that sends nothing."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                if any(line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A" for line in f.readlines()[1:]):
                    return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port}")


RTP_COUNTER = Path("/tmp/streamd-tests-rtp-range")
RTP_FIRST, RTP_BLOCK, RTP_BLOCKS = 22000, 200, 190


def rtp_start_port() -> int:
    """The first of RTP_BLOCK UDP ports for one server. Every instance needs its own range, also across test
    runs that share the machine, so the next block is handed out from a counter file under a lock."""
    with open(RTP_COUNTER, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        block = int(f.read().strip() or 0) % RTP_BLOCKS
        f.seek(0)
        f.truncate()
        f.write(str(block + 1))
    return RTP_FIRST + RTP_BLOCK * block


class RtspServer:
    """Debian's rtsp-server-perl: publishers RECORD to source_port, readers PLAY from client_port (UDP only)."""

    def __init__(self, client_port: int | None = None, source_port: int | None = None) -> None:
        """Fresh ports, or the ports of a server that went away (a camera that reboots)."""
        binary = shutil.which("rtsp-server-perl")
        if binary is None:
            pytest.fail("rtsp-server-perl is not installed (apt-get install rtsp-server-perl; .ci/run does)")
        self.client_port, self.source_port = client_port or free_port(), source_port or free_port()
        self.proc = subprocess.Popen([binary, "-c", str(self.client_port), "-s", str(self.source_port),
                                      "--rtp_start_port", str(rtp_start_port())],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.client_port)
        wait_listening(self.source_port)

    def publish_url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.source_port}/{path}"

    def play_url(self, path: str) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/{path}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def rtsp_servers():
    """Start RTSP servers; all are stopped at the end of the test."""
    started: list[RtspServer] = []

    def start(**kw) -> RtspServer:
        started.append(RtspServer(**kw))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def rtsp_server(rtsp_servers):
    return rtsp_servers()


class Publisher:
    """A test camera process pushing H.264 into an RTSP server (see tests/publish.py)."""

    def __init__(self, url: str, mode: str = "gray", seconds: float = 30.0, size: str = "320x240",
                 scene: str = "photos") -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.publish", url, "--mode", mode,
                                      "--seconds", str(seconds), "--size", size, "--scene", scene], cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


class Publishers:
    """Starts test cameras; every one still running is stopped at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Publisher] = []

    def __call__(self, url: str, **kw) -> Publisher:
        for _ in range(3):  # rtsp-server-perl now and then refuses a fresh publisher's ANNOUNCE: try again
            p = Publisher(url, **kw)
            self.started.append(p)
            time.sleep(1.0)  # ANNOUNCE/RECORD done before anyone PLAYs
            if p.proc.poll() is None:
                return p
        raise RuntimeError(f"the test camera could not publish to {url}: {p.proc.stderr.read()[-500:]!r}")


@pytest.fixture
def publishers():
    started = Publishers()
    yield started
    for p in started.started:
        p.stop()


@pytest.fixture
def model_path() -> Path:
    assert MODEL.exists(), f"the shipped model {MODEL} is missing"
    return MODEL


def write_video(path: Path, mode: str = "gray", seconds: float = 2.0, size: str = "320x240", fps: float = 25.0,
                start_s: float = 0.0, scene: str = "photos") -> Path:
    """A real H.264 MP4 made by the test camera's frame generator; its first frame at `start_s`."""
    subprocess.run([sys.executable, "-m", "tests.publish", str(path), "--mode", mode, "--seconds", str(seconds),
                    "--size", size, "--fps", str(fps), "--start-s", str(start_s), "--scene", scene], cwd=ROOT, check=True,
                   capture_output=True)
    return path


def write_onnx(path: Path, op: str, inputs: list[str], initializers: list = (), input_name: str = "L",
               output_name: str = "ab", shape=("batch", 1, "height", "width"), metadata: dict | None = None,
               **attributes) -> Path:
    """A one-node ONNX model: `op` on the input `input_name` of `shape` (and `inputs` after it, from the
    initializers), giving `output_name`, with the metadata given (values as stored: streamd's are JSON)."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op, [input_name, *inputs], [output_name], **attributes)
    graph = helper.make_graph([node], op, [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def write_failing_model(path: Path, model_id: str = "broken") -> Path:
    """A real ONNX model with streamd's L input and ab output that loads, and fails on every batch: it reshapes
    L to rows of 61441 values, which no 320x192 frame (61440 values) fills."""
    from onnx import TensorProto, helper

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 61441])
    return write_onnx(path, "Reshape", ["shape"], [shape], metadata={"model_id": f'"{model_id}"'})
