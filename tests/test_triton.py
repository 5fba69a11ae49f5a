"""Inference on a real Triton Inference Server ([model] provider = "triton"), and `streamd export --triton`.

The server is nvidia-pytriton's tritonserver binary, in its own environment (scripts/triton-server-env;
tests/triton/server.py). It has only the Python backend, so it serves the repository that `streamd export
--triton` writes with the ONNX Runtime backend swapped for tests/triton/model.py, which runs the same
model.onnx through ONNX Runtime; the configuration Triton parses is otherwise the exported one.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from streamd import config as cfgmod
from streamd.cli import main
from streamd.client import Subscriber
from streamd.colour.lightness import luma_to_lightness
from streamd.infer.onnx_runtime import Colorizer, InferenceUnavailable, read_info
from tests.conftest import MODEL, free_port, write_video
from tests.triton import ServerEnvironmentMissing, TritonServer, exported_repository
from tests.test_operations import Recorder, http_get, metric_value, start_streamd, stop_streamd



@pytest.fixture
def triton(tmp_path):
    servers: list[TritonServer] = []

    def start(max_batch: int = 64) -> TritonServer:
        server = TritonServer(exported_repository(tmp_path / f"repo{len(servers)}", max_batch), tmp_path)
        servers.append(server)
        try:
            server.start()
        except ServerEnvironmentMissing as e:
            pytest.fail(str(e))
        return server

    yield start
    for server in servers:
        server.kill()


def test_export_writes_a_repository_that_triton_parses(tmp_path):
    """Both configurations parse as Triton's own ModelConfig protobuf, carry the model's metadata, batch
    dynamically; the TensorRT variant names the accelerator; the model file is the model, metadata intact."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    assert main(["export", "--triton", str(tmp_path), "--model", str(MODEL)]) == 0
    folder = tmp_path / "streamd"
    info = read_info(MODEL)
    configs = {}
    for name in ("config.pbtxt", "configs/tensorrt.pbtxt"):
        configs[name] = text_format.Parse((folder / name).read_text(), model_config_pb2.ModelConfig())
    for config in configs.values():
        assert config.name == "streamd" and config.platform == "onnxruntime_onnx" and config.max_batch_size == 64
        assert config.HasField("dynamic_batching")
        assert [(t.name, list(t.dims)) for t in config.input] == [("L", [1, -1, -1])]
        assert [(t.name, list(t.dims)) for t in config.output] == [("ab", [2, -1, -1])]
        params = {k: v.string_value for k, v in config.parameters.items()}
        assert params["streamd.model_id"] == info.model_id
        assert float(params["streamd.temperature"]) == info.temperature
        assert float(params["streamd.prior_correction"]) == info.prior_correction
        assert float(params["streamd.shrink"]) == info.shrink
        assert float(params["streamd.cast_correction"]) == info.cast_correction
        assert (int(params["streamd.input_height"]), int(params["streamd.input_width"])) == (192, 320)
    assert not configs["config.pbtxt"].optimization.execution_accelerators.gpu_execution_accelerator
    accelerators = configs["configs/tensorrt.pbtxt"].optimization.execution_accelerators.gpu_execution_accelerator
    assert [a.name for a in accelerators] == ["tensorrt"] and accelerators[0].parameters["precision_mode"] == "FP16"
    assert (folder / "1" / "model.onnx").read_bytes() == MODEL.read_bytes()
    assert main(["export", "--triton", str(tmp_path), "--triton-name", ".."]) == 2


def test_bench_measures_the_triton_path_against_the_local_one(triton, tmp_path, capsys):
    """`streamd bench --triton` on a real server: the network per batch on both providers, the server's own
    time read from its statistics (one request per call), and the paced pipeline on both, every camera's
    frames published. Speed itself is not asserted."""
    server = triton()
    out = tmp_path / "triton.json"
    assert main(["bench", "--triton", server.url, "--short", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["triton"]
    assert result["model_id"] == read_info(MODEL).model_id
    assert [row["batch"] for row in result["network"]] == [1, 4, 8]
    for row in result["network"]:
        assert row["local_ms"] > 0 and row["triton_ms"] > 0
        assert row["server_requests_per_call"] == 1 and row["server_compute_infer_ms"] > 0
    assert [(row["cameras"], row["provider"]) for row in result["pipeline"]] == [
        (1, "local"), (1, "triton"), (2, "local"), (2, "triton")]
    for row in result["pipeline"]:
        assert row["published"] > 0 and row["frames_per_batch"] >= 1
    assert "on Triton at " + server.url in capsys.readouterr().out


def test_bench_against_a_server_that_is_not_there_exits_2_naming_it(capsys):
    url = f"127.0.0.1:{free_port()}"
    assert main(["bench", "--triton", url, "--short"]) == 2
    assert url in capsys.readouterr().err


def test_a_server_that_is_not_there_leaves_inference_unavailable_and_retries():
    """No server at the address: the provider starts (the cameras flow gray), says why, fails fast, and tries
    again only after its back-off."""
    import socket

    from streamd.infer.triton_client import RETRY_FIRST_S, TritonColorizer

    listener = socket.create_server(("127.0.0.1", 0))  # takes each connection and closes it: no gRPC server
    accepted = []

    def refuse() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # the listener closed: the test is over
                return
            accepted.append(time.monotonic())
            connection.close()

    threading.Thread(target=refuse, daemon=True).start()

    def connections_after(call) -> int:
        before = len(accepted)
        call()
        time.sleep(0.3)  # a connection the call started has been accepted by now
        return len(accepted) - before

    now = [100.0]
    lightness = np.zeros((2, 1, 192, 320), np.float32)
    try:
        made = []
        assert connections_after(lambda: made.append(TritonColorizer(
            f"127.0.0.1:{listener.getsockname()[1]}", "streamd", timeout_s=2.0, clock=lambda: now[0]))) >= 1
        colorizer = made[0]
        assert colorizer.unavailable and "127.0.0.1" in colorizer.unavailable

        def call() -> None:
            with pytest.raises(InferenceUnavailable):
                colorizer(lightness)

        assert connections_after(call) == 0  # within the back-off: no network at all
        now[0] += RETRY_FIRST_S + 0.01
        start = time.monotonic()
        assert connections_after(call) >= 1  # after it: a new attempt, refused
        assert time.monotonic() - start < 2.0  # failed fast, not at the time-out
        assert connections_after(call) == 0  # and the next back-off (doubled) holds again
    finally:
        listener.close()


@pytest.mark.parametrize("model, key", [
    ({"provider": "triton"}, "model.triton_url"),
    ({"provider": "triton", "triton_url": "grpc://gpu:8001"}, "model.triton_url"),
    ({"provider": "triton", "triton_url": "gpu:99999"}, "model.triton_url"),
    ({"provider": "cpu", "triton_url": "gpu:8001"}, "model.triton_url"),
    ({"provider": "triton", "triton_url": "gpu:8001", "triton_model": "../x"}, "model.triton_model"),
    ({"provider": "triton", "triton_url": "gpu:8001", "temperature": 1.0}, "model.temperature"),
    ({"provider": "triton", "triton_url": "gpu:8001", "path": "models/streamd-base.onnx"}, "model.path"),
    ({"provider": "triton", "triton_url": "gpu:8001", "triton_timeout_s": 200.0}, "model.triton_timeout_s"),
])
def test_triton_settings_are_checked_at_load(model, key):
    with pytest.raises(cfgmod.ConfigError, match=f"^{key}:"):
        cfgmod.parse({"camera": [{"name": "a", "url": "x"}], "model": model})
    good = cfgmod.parse({"camera": [{"name": "a", "url": "x"}],
                         "model": {"provider": "triton", "triton_url": "gpu-server-1:8001"}})
    assert good.model.triton_model == "streamd"


def test_model_that_is_not_streamds_is_refused_by_name():
    from streamd.infer.triton_client import ModelMismatch, model_info

    good = {"input": [{"name": "L", "data_type": "TYPE_FP32"}], "output": [{"name": "ab", "data_type": "TYPE_FP32"}],
            "max_batch_size": 8, "parameters": {"streamd.model_id": {"string_value": "m-1"}}}
    info, max_batch = model_info(good, "streamd")
    assert (info.model_id, max_batch, info.input_height) == ("m-1", 8, 192)
    for broken, words in (({**good, "input": [{"name": "images", "data_type": "TYPE_FP32"}]}, "not a streamd model"),
                          ({**good, "max_batch_size": 0}, "max_batch_size 0"),
                          ({**good, "parameters": {"streamd.input_width": {"string_value": "wide"}}}, "not a number")):
        with pytest.raises(ModelMismatch, match=words):
            model_info(broken, "streamd")


def test_triton_and_local_inference_agree_on_the_same_frames(triton, tmp_path):
    """Real frames (an H.264 clip of the test camera) through the shipped model in this process and on the
    server: the same ab within float tolerance. A batch larger than the server's max batch goes as several
    requests at once."""
    from streamd.frame import Frame
    from streamd.infer.triton_client import TritonColorizer
    from streamd.daemon.source import SourceSettings, decode_av
    from streamd.tools.bench.triton_cost import server_ms, server_ms_after

    server = triton(max_batch=4)
    clip = write_video(tmp_path / "clip.mp4", "gray", seconds=1)
    frames = [Frame.from_av("clip", seq, f) for seq, f in enumerate(decode_av(SourceSettings("clip", str(clip))))]
    lightness = np.stack([luma_to_lightness(f, (192, 320)) for f in frames[:10]])[:, None]
    remote = TritonColorizer(server.url, "streamd", timeout_s=20.0)
    assert remote.unavailable is None and remote.info == read_info(MODEL)  # the decoding's settings too
    local = Colorizer(MODEL, "cpu", int8="off")
    before = server_ms(server.url, "streamd")["requests"]
    ab_remote, ab_local = remote(lightness), local(lightness)
    assert remote.requests_for(10) == 3  # 4 + 4 + 2, as the server counts them
    assert server_ms_after(server.url, "streamd", before + 3)["requests"] == before + 3
    assert ab_remote.shape == ab_local.shape == (10, 2, 48, 80)
    assert np.abs(ab_remote - ab_local).max() < 1e-3
    assert np.abs(ab_local).max() > 5  # real colour, not a gray answer that would agree trivially


def wait_until(check, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def healthz(port: int) -> tuple[int, dict]:
    code, body = http_get(f"http://127.0.0.1:{port}/healthz")
    return code, json.loads(body)


def is_gray(image: np.ndarray) -> bool:
    """No chroma: B, G and R within the rounding of a YUV -> BGR conversion of each other."""
    return int(np.abs(image.astype(int) - image.mean(axis=2, keepdims=True).astype(int)).max()) <= 2


def next_image(viewer: Subscriber, colorized: bool) -> np.ndarray:
    """The next frame's picture whose header says `colorized` (older ones queued in the socket are skipped)."""
    end = time.monotonic() + 20
    while time.monotonic() < end:
        message = viewer.recv(timeout=1.0)
        if message and message[0]["colorized"] == colorized:
            return message[1]
    raise AssertionError(f"no frame with colorized={colorized} within 20 s")


def test_daemon_on_triton_colorizes_degrades_gray_when_the_server_dies_and_recovers(
        triton, rtsp_server, publishers, state_directory, tmp_path):
    """`streamd run` with provider triton on a real RTSP camera: colour frames carrying the served model's
    id; the server killed: /healthz degraded with the reason, the camera's frames keep coming, gray and
    counted; the server started again: colour again, healthy, without restarting streamd."""
    server = triton()
    publishers(rtsp_server.publish_url("night"), mode="gray", seconds=120)
    endpoint, http = f"tcp://127.0.0.1:{free_port()}", free_port()
    config = tmp_path / "cameras.toml"
    # every gray frame goes to the network (no reuse of a still scene's prediction), so none stays
    # coloured through the outage
    config.write_text(f'''[model]
provider = "triton"
triton_url = "{server.url}"
triton_timeout_s = 5.0
[zmq]
endpoint = "{endpoint}"
[http]
listen = "127.0.0.1:{http}"
[daynight]
to_night_s = 0.5
[[camera]]
name = "night"
url = "{rtsp_server.play_url('night')}"
transport = "udp"
reuse_still_s = 0.0
carry_frames = 0
''')
    proc = start_streamd("run", "-c", str(config), "--report-every", "2")
    rec = Recorder(endpoint, "night")
    viewer = Subscriber(endpoint, "night", hwm=2, context=zmq.Context())
    model_id = read_info(MODEL).model_id

    def frames_since(index: int) -> list[dict]:
        return [header for _, header in rec.frames.get("night", [])[index:]]

    try:
        wait_until(lambda: sum(h["colorized"] for h in frames_since(0)) >= 10, 60, "10 colorized frames")
        colour = [h for h in frames_since(0) if h["colorized"]]
        assert {h["model"] for h in colour} == {model_id}
        assert healthz(http) == (200, {"status": "running", "cameras": {"night": "running"}})
        assert not is_gray(next_image(viewer, colorized=True))

        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
        dropped_before = metric_value(metrics, 'streamd_frames_dropped_total{camera="night"}')
        server.kill()
        code, body = wait_until(lambda: (r := healthz(http))[1]["status"] == "degraded" and r, 30, "degraded")
        assert code == 503 and body["reason"].startswith("inference unavailable: Triton at " + server.url), body
        assert http_get(f"http://127.0.0.1:{http}/livez")[0] == 200  # a restart would not bring the server back
        mark = rec.count("night")
        wait_until(lambda: sum(not h["colorized"] for h in frames_since(mark)) >= 25, 30,
                   "25 gray frames while the server is away")
        during = frames_since(mark)
        assert not any(h["colorized"] for h in during[5:])  # a batch in flight when it died may still land
        assert all(h["model"] is None for h in during if not h["colorized"])
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
        uncolorized = metric_value(metrics, 'streamd_frames_uncolorized_total{camera="night"}')
        assert uncolorized >= 25
        assert metric_value(metrics, "streamd_inference_available") == 0
        # passed through, not dropped: no inference to wait for
        assert metric_value(metrics, 'streamd_frames_dropped_total{camera="night"}') - dropped_before < uncolorized / 2
        assert is_gray(next_image(viewer, colorized=False))
        # a night frame passed through gray is not a day frame: the camera's adaptation store stays empty
        assert not list((state_directory / "night").glob("*.jpg"))

        server.start()
        mark = rec.count("night")
        wait_until(lambda: sum(h["colorized"] for h in frames_since(mark)) >= 10, 60, "colour after the restart")
        assert {h["model"] for h in frames_since(mark) if h["colorized"]} == {model_id}
        wait_until(lambda: healthz(http)[0] == 200, 10, "healthy again")
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
        assert metric_value(metrics, "streamd_inference_available") == 1
    finally:
        rec.close()
        viewer.close()
        log = stop_streamd(proc)
    assert proc.returncode == 0, log
    assert "inference unavailable" in log and "inference is back" in log
