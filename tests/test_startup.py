"""Start-up failures an operator can cause end `streamd run` (and `streamd check`, where it can know) with one
line that names the config key and what is wrong, exit status 2, and no traceback: the real command, run as
a process (docs/operations.md, "When streamd does not start")."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODEL, ROOT, free_port


def streamd(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def write_config(tmp_path: Path, model: str = "", zmq: str = "", http: str = "", state: str = "",
                 url: str = "synthetic:") -> Path:
    """A config that runs (a synthetic camera for 3 s, then exit 0) unless one of its settings is broken."""
    zmq = zmq or f"endpoint = \"tcp://127.0.0.1:{free_port()}\""
    state = state or str(tmp_path / "state")
    path = tmp_path / "site.toml"
    path.write_text(f'[model]\n{model}\n[zmq]\n{zmq}\n[http]\nlisten = "{http or f"127.0.0.1:{free_port()}"}"\n'
                    f'[adapt]\nstate_dir = "{state}"\n'
                    f'[[camera]]\nname = "gate"\nurl = "{url}"\nwidth = 320\nheight = 180\nfps = 10\nduration_s = 3\n')
    return path


def assert_refused(proc: subprocess.CompletedProcess, line: str) -> None:
    """Exit 2, and the last line of stderr (log lines of what went well may come before it) is `line`;
    nothing else says error, and no traceback."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "Traceback" not in output and "unexpected error" not in output, output
    assert proc.stderr.splitlines()[-1] == line, output
    assert [ln for ln in output.splitlines() if "error" in ln.lower()] == [line], output


@pytest.fixture
def taken_port():
    """A TCP port on 127.0.0.1 that another process's socket (this test's) listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_zeromq_endpoint_in_use(tmp_path, taken_port):
    config = write_config(tmp_path, zmq=f'endpoint = "tcp://127.0.0.1:{taken_port}"')
    assert_refused(streamd("run", "-c", str(config)),
                   f"config error: zmq.endpoint: cannot bind tcp://127.0.0.1:{taken_port}: Address already in use "
                   "(another process has it, perhaps another streamd of this config: each process on a host needs "
                   "its own; `streamd run --zmq` overrides the config's, docs/scaling.md)")


def test_an_http_listen_address_in_use(tmp_path, taken_port):
    config = write_config(tmp_path, http=f"127.0.0.1:{taken_port}")
    assert_refused(streamd("run", "-c", str(config)),
                   f"config error: http.listen: cannot listen on 127.0.0.1:{taken_port}: Address already in use "
                   "(another process has it, perhaps another streamd of this config: each process on a host needs "
                   "its own; `streamd run --http` overrides the config's, docs/scaling.md)")


def test_a_state_directory_that_is_a_file(tmp_path):
    (tmp_path / "state").write_text("not a folder")
    config = write_config(tmp_path, state=str(tmp_path / "state" / "streamd"))
    line = (f"config error: adapt.state_dir: {tmp_path / 'state'} is not a folder; give a folder this user can "
            "write, or collect = false to the cameras")
    assert_refused(streamd("run", "-c", str(config)), line)
    assert_refused(streamd("check", "-c", str(config)), line)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder without write permission")
def test_a_state_directory_without_write_access(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o555)
    config = write_config(tmp_path, state=str(state))
    line = (f"config error: adapt.state_dir: {state} is not writable by user {os.getuid()}; give a folder this "
            "user can write, or collect = false to the cameras")
    assert_refused(streamd("run", "-c", str(config)), line)
    assert_refused(streamd("check", "-c", str(config)), line)


def test_a_missing_model_file(tmp_path):
    config = write_config(tmp_path, model=f'path = "{tmp_path / "nope.onnx"}"')
    line = f"config error: model.path: no model file at {tmp_path / 'nope.onnx'}"
    assert_refused(streamd("run", "-c", str(config)), line)
    assert_refused(streamd("check", "-c", str(config)), line)


def test_a_model_file_that_is_not_a_model_and_a_missing_int8_copy(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_text("not a model")
    config = write_config(tmp_path, model=f'path = "{broken}"\nint8 = "off"')
    proc = streamd("run", "-c", str(config))
    assert_refused(proc, proc.stderr.splitlines()[-1])
    assert proc.stderr.splitlines()[-1].startswith(f"config error: model.path: model {broken}: ONNX Runtime cannot "
                                                   "load it (")
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(MODEL.read_bytes())
    config = write_config(tmp_path, model=f'path = "{plain}"\nint8 = "on"')
    assert_refused(streamd("run", "-c", str(config)), f"config error: model.int8: int8 requested but "
                   f"{tmp_path / 'plain-int8.onnx'} does not exist (make it with streamd quantize)")


def test_a_bad_curve_key(tmp_path):
    key = tmp_path / "server.key_secret"
    key.write_text('metadata\ncurve\n    public-key = "short"\n    secret-key = "short"\n')
    config = write_config(tmp_path, zmq=f'endpoint = "tcp://127.0.0.1:{free_port()}"\n'
                                        f'curve_secret_key_file = "{key}"')
    line = f"config error: zmq.curve_secret_key_file: {key}: a CURVE key is 40 characters (Z85) long"
    assert_refused(streamd("run", "-c", str(config)), line)
    assert_refused(streamd("check", "-c", str(config)), line)


@pytest.mark.parametrize("url, why", [
    ("rtsp://admin:secret@cam-7:99999/live", "it needs a host, and a port (if any) from 1 to 65535"),
    ("rtsp://admin:secret@/live", "it needs a host, and a port (if any) from 1 to 65535"),
    ("rstp://admin:secret@cam-7/live", "unknown scheme 'rstp' (known: rtsp, rtsps, rtmp, http, https, srt, udp, "
                                       "tcp, file, synthetic; or a file path)"),
])
def test_a_camera_url_that_cannot_be_parsed(tmp_path, url, why):
    config = write_config(tmp_path, url=url)
    line = f"config error: camera[0].url: cannot be parsed: {why}"
    for command in ("run", "check"):
        proc = streamd(command, "-c", str(config))
        assert_refused(proc, line)
        assert "secret" not in proc.stdout + proc.stderr
