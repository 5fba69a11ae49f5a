"""The ZeroMQ output off localhost: encrypted (CURVE) with a list of the clients let in, or plaintext only when
the config says so in words; `streamd check` and `streamd run` refuse anything else."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import zmq
import zmq.auth

from streamd import config as cfgmod
from streamd.client import Subscriber
from tests.conftest import ROOT, free_port, write_video
from tests.test_operations import start_streamd, stop_streamd

CAMERA = {"name": "a", "url": "x.mp4"}


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://eth0:5555",
                                      "tcp://192.0.2.7:5555", "tcp://[::]:5555"])
def test_a_network_endpoint_without_curve_is_refused(endpoint):
    with pytest.raises(cfgmod.ConfigError, match=r"^zmq\.endpoint: .*allow_plaintext = true"):
        cfgmod.parse({"camera": [CAMERA], "zmq": {"endpoint": endpoint}})
    allowed = cfgmod.parse({"camera": [CAMERA], "zmq": {"endpoint": endpoint, "allow_plaintext": True}})
    assert allowed.zmq.allow_plaintext


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.1:5555", "tcp://localhost:5555", "tcp://[::1]:5555",
                                      "ipc:///run/streamd/video", "inproc://video", ""])
def test_a_local_endpoint_needs_nothing(endpoint):
    assert cfgmod.parse({"camera": [CAMERA], "zmq": {"endpoint": endpoint}}).zmq.endpoint == endpoint


def test_curve_makes_a_network_endpoint_acceptable(tmp_path):
    _, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    cfgmod.parse({"camera": [CAMERA], "zmq": {"endpoint": "tcp://0.0.0.0:5555", "curve_secret_key_file": secret}})


def test_client_keys_need_curve_and_a_folder_of_public_certificates(tmp_path):
    _, secret = zmq.auth.create_certificates(str(tmp_path), "server")
    clients = tmp_path / "clients"
    clients.mkdir()
    zmq_section = {"endpoint": "tcp://0.0.0.0:5555", "curve_secret_key_file": secret,
                   "curve_client_keys": str(clients)}
    with pytest.raises(cfgmod.ConfigError, match=r"zmq\.curve_client_keys: .* holds no public certificate"):
        cfgmod.parse({"camera": [CAMERA], "zmq": zmq_section})
    (clients / "broken.key").write_text("metadata\ncurve\n    public-key\n")
    with pytest.raises(cfgmod.ConfigError, match=r"zmq\.curve_client_keys: .*broken\.key"):
        cfgmod.parse({"camera": [CAMERA], "zmq": zmq_section})
    (clients / "broken.key").unlink()
    zmq.auth.create_certificates(str(clients), "viewer")
    assert cfgmod.parse({"camera": [CAMERA], "zmq": zmq_section}).zmq.curve_client_keys == str(clients)
    with pytest.raises(cfgmod.ConfigError, match=r"zmq\.curve_client_keys: needs curve_secret_key_file"):
        cfgmod.parse({"camera": [CAMERA], "zmq": {"endpoint": "tcp://127.0.0.1:5555",
                                                  "curve_client_keys": str(clients)}})


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_an_open_plaintext_endpoint_in_one_line(tmp_path, command):
    cfg = tmp_path / "open.toml"
    cfg.write_text('[zmq]\nendpoint = "tcp://0.0.0.0:5555"\n[[camera]]\nname = "a"\nurl = "x.mp4"\n')
    out = subprocess.run([sys.executable, "-m", "streamd", command, "-c", str(cfg)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: zmq.endpoint: tcp://0.0.0.0:5555 ")
    assert "curve_secret_key_file" in lines[0] and "allow_plaintext = true" in lines[0]


def test_only_listed_clients_receive_frames(tmp_path):
    """A real daemon with CURVE and a ZAP allow-list: a client whose public key is in curve_client_keys
    receives frames; a client with the server's public key but a certificate of its own that is not listed
    receives nothing, nor does one with a throw-away key."""
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=1)
    _, server_secret = zmq.auth.create_certificates(str(tmp_path), "server")
    server_public, _ = zmq.auth.load_certificate(server_secret)
    allowed_dir, others = tmp_path / "clients", tmp_path / "others"
    allowed_dir.mkdir()
    others.mkdir()
    allowed_public, allowed_secret = zmq.auth.create_certificates(str(others), "viewer")
    shutil.copy(allowed_public, allowed_dir)  # the server holds only the public half
    _, stranger_secret = zmq.auth.create_certificates(str(others), "stranger")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[zmq]\nendpoint = "{endpoint}"\ncurve_secret_key_file = "{server_secret}"\n'
                   f'curve_client_keys = "{allowed_dir}"\n'
                   f'[[camera]]\nname = "cam"\nurl = "{clip}"\nloop = true\ncollect = false\n')
    proc = start_streamd("run", "-c", str(cfg))
    context = zmq.Context()
    try:
        with Subscriber(endpoint, "cam", server_public_key=server_public, client_secret_key_file=allowed_secret,
                        context=context) as allowed, \
                Subscriber(endpoint, "cam", server_public_key=server_public, client_secret_key_file=stranger_secret,
                           context=context) as stranger, \
                Subscriber(endpoint, "cam", server_public_key=server_public, context=context) as throwaway:
            got = allowed.recv(timeout=60)
            assert got is not None and got[0]["camera"] == "cam", stop_streamd(proc)
            assert allowed.recv(timeout=5) is not None  # still streaming while the others wait
            assert stranger.recv(timeout=2) is None
            assert throwaway.recv(timeout=1) is None
    finally:
        log = stop_streamd(proc)
        context.term()
    assert proc.returncode == 0, log



PUBLISH_ON_A_TAKEN_PORT = """
import sys, zmq, zmq.auth
from streamd.daemon.sink import ZmqPublisher
folder = sys.argv[1]
public, secret = zmq.auth.load_certificate(folder + "/server.key_secret")
taken_by, context = zmq.Context(), zmq.Context()
taken = ZmqPublisher(taken_by, "tcp://127.0.0.1:0")
endpoint = taken.endpoint
try:
    ZmqPublisher(context, endpoint, curve_secret_key=secret, curve_public_key=public, client_keys=folder + "/clients")
except zmq.ZMQError as e:
    print(e, flush=True)
context.term()  # what the pipeline's stop does: returns only once every socket of the context is closed
print("terminated", flush=True)
"""


def test_a_publisher_that_cannot_bind_leaves_its_context_free_to_terminate(tmp_path):
    """The port is taken: the publisher's bind fails after its authenticator started; the error reaches the
    caller and the context still terminates (the authenticator's thread holds a socket of it)."""
    zmq.auth.create_certificates(str(tmp_path), "server")
    (tmp_path / "clients").mkdir()
    zmq.auth.create_certificates(str(tmp_path / "clients"), "viewer")
    try:
        out = subprocess.run([sys.executable, "-c", PUBLISH_ON_A_TAKEN_PORT, str(tmp_path)], cwd=ROOT,
                             capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"the context never terminated: {e.stdout!r}") from None
    assert out.stdout.splitlines() == [out.stdout.splitlines()[0], "terminated"], out.stdout + out.stderr
    assert "Address already in use" in out.stdout
