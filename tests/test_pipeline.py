"""End to end on real parts: H.264 over a real RTSP server -> streamd -> ZeroMQ and RTSP out."""
from __future__ import annotations

import itertools
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from streamd import config as cfgmod
from streamd.client import Subscriber
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.systemd import no_keepalive
from streamd.daemon.recording import segment_key
from tests.conftest import ROOT, free_port, write_failing_model, write_video


def collect(sub: Subscriber, n: int, timeout: float = 30.0) -> list[tuple[dict, np.ndarray]]:
    got, end = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        msg = sub.recv(timeout=1.0)
        if msg:
            got.append(msg)
    return got


def chroma_spread(frame: av.VideoFrame) -> float:
    planes = frame.to_ndarray(format="yuv420p")
    return float(planes[frame.height:].astype(np.float32).std())


def streamd(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "streamd", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_rtsp_in_zeromq_and_rtsp_out(rtsp_server, publishers, model_path):
    """A gray H.264 camera in rtsp-server-perl -> `streamd run` -> colour frames over ZeroMQ with full
    headers, and colour H.264 read back from the RTSP output by a separate client."""
    publishers(rtsp_server.publish_url("gate"), mode="gray", seconds=60)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    started = time.time()
    proc = streamd("run", "--source", f"gate={rtsp_server.play_url('gate')}", "--rtsp-transport", "udp",
                   "--zmq", endpoint, "--rtsp-out", rtsp_server.publish_url("gate-colour"), "--format", "bgr24")
    try:
        with Subscriber(endpoint, "gate") as sub:
            frames = collect(sub, 10)
        received = time.time()
        assert len(frames) == 10, proc.stdout.read() if proc.poll() is not None else "no frames over ZeroMQ"
        for header, image in frames:
            assert header["camera"] == "gate" and header["format"] == "bgr24"
            assert (header["width"], header["height"]) == (320, 240) and image.shape == (240, 320, 3)
            assert header["colorized"] is True and header["model"].startswith("streamd-base")
            assert started < header["capture_time"] < received and header["pts"] is not None
            assert 0 < header["latency_ms"] < (received - header["capture_time"]) * 1000  # published before received
        seqs = [h["seq"] for h, _ in frames]
        assert seqs == sorted(seqs)
        image = frames[-1][1].astype(np.int16)
        assert np.abs(image[..., 2] - image[..., 1]).mean() > 1.0  # not gray any more

        container = av.open(rtsp_server.play_url("gate-colour"), options={"rtsp_transport": "udp"}, timeout=(10, 10))
        try:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            decoded = [f for _, f in zip(range(5), container.decode(stream))]
        finally:
            container.close()
        assert len(decoded) == 5 and decoded[0].width == 320
        assert chroma_spread(decoded[-1]) > 2.0  # colour H.264
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert "gate: running" in out


def run_pipeline(cameras: list[dict], seconds: float, fmt: str = "yuv420p", until=None, colour_stage=None,
                 **sections):
    """Run a pipeline, collecting every message, until every source ended, `until(pipeline)` holds, or
    `seconds` passed."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = cfgmod.parse({"camera": cameras, "zmq": {"endpoint": endpoint, "format": fmt, "hwm": 1000}, **sections})
    pipeline = Pipeline(cfg, colour_stage=colour_stage)
    sub = Subscriber(endpoint, hwm=1000)
    time.sleep(0.3)
    pipeline.start()
    got = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end and not (
                (pipeline.finished() or (until and until(pipeline))) and not sub.socket.poll(300)):
            msg = sub.recv(timeout=0.2)
            if msg:
                got.append(msg)
    finally:
        pipeline.stop()
        sub.close()
    return pipeline, got


def test_colour_passes_through_gray_is_colorized_and_luma_is_bit_exact(tmp_path):
    gray = write_video(tmp_path / "gray.mp4", "gray", seconds=2)
    colour = write_video(tmp_path / "colour.mp4", "colour", seconds=2)
    pipeline, got = run_pipeline([{"name": "night", "url": str(gray)}, {"name": "day", "url": str(colour)}],
                                 seconds=30)
    by_camera = {"night": [], "day": []}
    for header, image in got:
        by_camera[header["camera"]].append((header, image))
    assert by_camera["night"] and by_camera["day"]
    assert all(h["colorized"] and h["model"] for h, _ in by_camera["night"])
    assert not any(h["colorized"] for h, _ in by_camera["day"]) and all(h["model"] is None for h, _ in by_camera["day"])
    assert pipeline.cameras["day"].passed_through > 0 and pipeline.cameras["day"].colorized == 0
    assert pipeline.cameras["night"].colorized > 0

    # Luma bit-exact and colour untouched: compare with the decoded source frames of the same seq.
    with av.open(str(gray)) as c:
        gray_frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    with av.open(str(colour)) as c:
        colour_frames = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    for header, planes in by_camera["night"][:5]:
        src = gray_frames[header["seq"]]
        assert np.array_equal(planes[:240], src[:240])  # Y
        assert planes[240:].std() > src[240:].std() + 1  # chroma was made
    for header, planes in by_camera["day"][:5]:
        assert np.array_equal(planes, colour_frames[header["seq"]])


def test_stream_switching_day_to_night(tmp_path):
    clip = write_video(tmp_path / "switch.mp4", "switch", seconds=4)
    pipeline, got = run_pipeline([{"name": "cam", "url": str(clip)}], seconds=30,
                                 daynight={"to_night_s": 0.2, "to_day_s": 0.2})
    flags = [h["colorized"] for h, _ in got]
    assert flags and flags[0] is False and flags[-1] is True  # day first, night at the end
    switch = flags.index(True)
    assert all(flags[switch:])  # hysteresis: no flip-flopping after the switch
    assert pipeline.cameras["cam"].passed_through > 0 and pipeline.cameras["cam"].colorized > 0


def test_topics_are_terminated(tmp_path):
    clip = write_video(tmp_path / "a.mp4", "gray", seconds=1)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cfg = cfgmod.parse({"camera": [{"name": "cam1", "url": str(clip)}, {"name": "cam10", "url": str(clip)}],
                        "zmq": {"endpoint": endpoint, "hwm": 1000}})
    pipeline = Pipeline(cfg)
    only_cam1 = Subscriber(endpoint, "cam1", hwm=1000)
    time.sleep(0.3)
    pipeline.start()
    got = []
    end = time.monotonic() + 20
    while time.monotonic() < end and not (pipeline.finished() and got):
        msg = only_cam1.recv(timeout=0.5)
        if msg:
            got.append(msg[0]["camera"])
    pipeline.stop()
    only_cam1.close()
    assert got and set(got) == {"cam1"}


@pytest.mark.parametrize("network_s, max_delay_ms", [(0.2, 100), (1.0, 10000)])
def test_a_stop_mid_stream_accounts_for_every_decoded_frame(tmp_path, monkeypatch, network_s, max_delay_ms):
    """Stopped while its cameras stream faster than the network runs, so frames wait for it: those go
    through before the outputs close; where that would take too long (a slow network, a long delay budget)
    the rest are counted as dropped. Each decoded frame is published or counted, none silently lost."""
    from streamd.infer.onnx_runtime import Colorizer

    network = Colorizer.__call__

    def slow(self, lightness):
        time.sleep(network_s)
        return network(self, lightness)

    monkeypatch.setattr(Colorizer, "__call__", slow)
    clips = [write_video(tmp_path / f"night{i}.mp4", "gray", seconds=20) for i in range(2)]
    pipeline, _ = run_pipeline([{"name": f"cam{i}", "url": str(clip)} for i, clip in enumerate(clips)],
                               seconds=2.0, batch={"max_delay_ms": max_delay_ms})
    assert not pipeline._infer_thread.is_alive()
    for name, runtime in pipeline.cameras.items():
        assert runtime.source.stats.frames > 25 and pipeline.dropped(name) > 0  # the network fell behind
        assert runtime.outputs.published + pipeline.dropped(name) == runtime.source.stats.frames, name


def test_a_cameras_decoder_holds_a_frame_back_by_a_frame_per_extra_thread_at_most(tmp_path):
    """Frame threading, FFmpeg's own choice, holds every frame back by a frame per extra thread (latency no
    later stage can win back): a camera's decoder on one thread gives each packet's frame as it goes in, on
    two (a camera with the cores to itself) one frame later."""
    import os

    from streamd.daemon.source import MAX_CAMERA_DECODE_THREADS, set_decode_threads

    clip = write_video(tmp_path / "c.mp4", "gray", seconds=1)

    def lag(threads: int | None) -> int:
        with av.open(str(clip)) as container:
            stream = container.streams.video[0]
            set_decode_threads(stream, threads)
            for packets, packet in enumerate(container.demux(stream), 1):
                if packet.decode():
                    return packets - 1
        raise AssertionError("no frame decoded")

    assert lag(1) == 0 and lag(MAX_CAMERA_DECODE_THREADS) == MAX_CAMERA_DECODE_THREADS - 1
    if len(os.sched_getaffinity(0)) >= MAX_CAMERA_DECODE_THREADS:  # FFmpeg: a thread per core, and one more
        assert lag(None) > MAX_CAMERA_DECODE_THREADS - 1  # files read as fast as they decode keep FFmpeg's choice


def test_bad_sources_fail_alone_while_others_run(tmp_path):
    good = write_video(tmp_path / "good.mp4", "gray", seconds=3)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(write_video(tmp_path / "full.mp4", "gray", seconds=2).read_bytes()[:30000])
    pipeline, got = run_pipeline([
        {"name": "good", "url": str(good)},
        {"name": "missing", "url": str(tmp_path / "nope.mp4")},
        {"name": "notvideo", "url": str(not_video)},
        {"name": "truncated", "url": str(truncated)},
        {"name": "unreachable", "url": "rtsp://user:secret@127.0.0.1:9/none", "open_timeout_s": 1.0},
    ], seconds=40, fmt="jpeg", until=lambda p: p.cameras["good"].source.stats.state.value == "finished"
                                          and p.cameras["unreachable"].source.stats.reconnects >= 1)
    cams = pipeline.cameras
    assert cams["missing"].source.stats.state.value == "failed"
    assert "no such file" in cams["missing"].source.stats.last_error
    assert cams["notvideo"].source.stats.state.value == "failed"
    assert "is not a video file" in cams["notvideo"].source.stats.last_error
    assert cams["unreachable"].source.stats.reconnects >= 1
    assert "secret" not in cams["unreachable"].source.stats.last_error
    assert "unreachable" in cams["unreachable"].source.stats.last_error
    assert {h["camera"] for h, _ in got} >= {"good"}
    good_frames = [h for h, _ in got if h["camera"] == "good"]
    assert cams["good"].source.stats.frames == 75  # decoded to the end, beside four broken cameras
    assert len(good_frames) >= 5  # colorized and published (a loaded machine drops frames, newest kept)
    assert cams["truncated"].source.stats.state.value in ("finished", "failed")


def test_a_failing_model_costs_only_its_own_cameras_frames(tmp_path):
    """One camera's own model fails on every batch (a real ONNX model whose graph cannot take the input): the
    other camera, batched with it, is colorized throughout; the failed frames are counted as dropped; nothing
    stalls."""
    videos = [write_video(tmp_path / f"gray{i}.mp4", "gray", seconds=2) for i in range(2)]
    broken_model = write_failing_model(tmp_path / "broken.onnx")
    cfg = cfgmod.parse({"camera": [{"name": "good", "url": str(videos[0]), "reuse_still_s": 0.0, "carry_frames": 0},
                                   {"name": "broken", "url": str(videos[1]), "model": str(broken_model)}],
                        "zmq": {"endpoint": ""}})
    pipeline = Pipeline(cfg)
    pipeline.start()
    deadline = time.monotonic() + 60
    try:
        while not pipeline.finished() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pipeline.stalled() is None
    finally:
        pipeline.stop()
    good, broken = pipeline.cameras["good"], pipeline.cameras["broken"]
    assert good.source.stats.frames == 50 and good.outputs.published + pipeline.dropped("good") == 50
    assert good.outputs.published >= 10
    assert broken.colorized == 0 and broken.outputs.published == 0
    assert broken.failed > 0 and pipeline.dropped("broken") == broken.source.stats.frames == 50


def test_reload_reaches_running_cameras_and_frees_replaced_models(tmp_path):
    """A reload's [daynight] settle times reach the cameras already running, and a model no camera uses
    any more is released (its session, on a GPU its memory), while the camera keeps running."""
    import shutil

    video = write_video(tmp_path / "gray.mp4", "gray", seconds=2)
    own = tmp_path / "own.onnx"
    shutil.copy(ROOT / "models" / "streamd-base.onnx", own)
    camera = {"name": "cam", "url": str(video), "loop": True}
    raw = {"zmq": {"endpoint": ""}, "adapt": {"state_dir": str(tmp_path / "state")}}
    pipeline = Pipeline(cfgmod.parse({**raw, "camera": [{**camera, "model": str(own)}]}))
    pipeline.start()
    try:
        assert pipeline.cameras["cam"].colorizer is pipeline.models.get(str(own), no_keepalive)
        changes = pipeline.apply(cfgmod.parse({**raw, "camera": [camera],
                                               "daynight": {"to_night_s": 0.5, "to_day_s": 9.0}}))
        runtime = pipeline.cameras["cam"]
        assert changes == ["model of cam is now " + pipeline.colorizer.info.model_id]
        assert (runtime.daynight.to_night_s, runtime.daynight.to_day_s) == (0.5, 9.0)
        assert runtime.colorizer is pipeline.colorizer and not pipeline.models.holds(str(own))
        before = runtime.colorized
        deadline = time.monotonic() + 20
        while runtime.colorized < before + 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runtime.colorized >= before + 5
    finally:
        pipeline.stop()


@pytest.mark.parametrize("argv,code,message", [
    (["check", "-c", "{tmp}/bad.toml"], 2, "camera[0].transport"),
    (["check", "-c", "{tmp}/missing.toml"], 2, "cannot read config"),
    (["run", "--source", "{tmp}/nope.mp4", "--zmq", ""], 1, "no such file"),
    (["colorize", "{tmp}/nope.png", "-o", "{tmp}/out"], 2, "no such file"),
    (["run", "-c", "{tmp}/gpu.toml"], 2, "colour.device: 'cuda', but CUDA is not available"),  # no GPU in CI
    (["run", "-c", "{tmp}/torch.toml"], 2, "model.provider: 'torch-cuda', but CUDA is not available"),
])
def test_cli_errors_and_exit_codes(tmp_path, argv, code, message):
    (tmp_path / "bad.toml").write_text('[[camera]]\nname = "a"\nurl = "x.mp4"\ntransport = "sctp"\n')
    (tmp_path / "torch.toml").write_text('[model]\nprovider = "torch-cuda"\n[zmq]\nendpoint = ""\n'
                                         '[[camera]]\nname = "a"\nurl = "synthetic://"\n')
    (tmp_path / "gpu.toml").write_text('[colour]\ndevice = "cuda"\n[zmq]\nendpoint = ""\n'
                                       '[[camera]]\nname = "a"\nurl = "synthetic://"\n')
    proc = subprocess.run([sys.executable, "-m", "streamd", *[a.format(tmp=tmp_path) for a in argv]], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr


def test_check_accepts_the_example_config():
    proc = subprocess.run([sys.executable, "-m", "streamd", "check", "-c", "configs/example.toml"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout and "secret" not in proc.stdout


def test_resolution_change_mid_stream_is_followed(tmp_path):
    """Two H.264 segments of different sizes back to back in one MPEG-TS, as a camera that changes its
    resolution sends them: streamd follows the new size, and its recording starts a new segment at it
    (the first one kept whole): a separate decoder reads both back, each at its own size."""
    parts = [write_video(tmp_path / f"{size}.ts", "gray", seconds=2, size=size, start_s=start)
             for size, start in (("320x240", 0.0), ("480x272", 2.0))]  # one timeline, as a camera sends it
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    pipeline, got = run_pipeline([{"name": "cam", "url": str(joined), "file_out": str(tmp_path / "rec")}],
                                 seconds=30, fmt="yuv420p")
    sizes = {(h["width"], h["height"]) for h, _ in got}
    assert sizes == {(320, 240), (480, 272)}, sizes
    assert pipeline.cameras["cam"].source.stats.state.value == "finished"
    recorded = []
    for path in sorted((tmp_path / "rec" / "cam").glob("*.mp4"), key=lambda p: segment_key(p.name)):
        with av.open(str(path)) as container:
            recorded.append([(f.width, f.height) for f in container.decode(video=0)])
    # Each segment at one size, the new size in a segment of its own; the run may also cross a segment's end
    # on the clock (file_segment_s: on the minute), which splits a size over two segments.
    per_segment = [set(frames) for frames in recorded]
    assert all(len(sizes) == 1 for sizes in per_segment), per_segment
    order = [size for (size,) in per_segment]
    assert [size for size, _ in itertools.groupby(order)] == [(320, 240), (480, 272)], \
        [(size, len(frames)) for size, frames in zip(order, recorded)]
    assert sum(len(frames) for frames in recorded) == pipeline.cameras["cam"].outputs.published  # every one


def write_still_clip(path, frames: int = 50, pan_px: int = 0) -> None:
    """A fixed night camera filming a still scene: one gray photo, real H.264 (its noise included); or,
    with `pan_px`, a camera panning across it by that many pixels a frame."""
    from skimage import data

    photo = data.camera()[:, :, None]  # 512x512
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(frames):
            x = i * pan_px
            gray = np.ascontiguousarray(np.repeat(photo[100:340, x:x + 320], 3, axis=2))
            frame = av.VideoFrame.from_ndarray(gray, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("reuse_s", [1.0, 0.0])
def test_still_scene_reuses_predictions_in_order(tmp_path, reuse_s):
    clip = tmp_path / "still.mp4"
    write_still_clip(clip)
    pipeline, got = run_pipeline([{"name": "yard", "url": str(clip), "reuse_still_s": reuse_s, "carry_frames": 0}],
                                 seconds=30)
    runtime = pipeline.cameras["yard"]
    seqs = [h["seq"] for h, _ in got]
    assert seqs == sorted(seqs)  # in order, reused or not
    assert len(got) + pipeline.dropped("yard") == 50  # every frame published or counted as dropped
    assert all(h["colorized"] and h["model"] for h, _ in got)
    if reuse_s:
        assert runtime.reuse.reused >= 30  # the network ran for a few frames (one per second at least)
    else:
        assert runtime.reuse is None


def test_a_panning_camera_carries_predictions_between_network_runs(tmp_path):
    clip = tmp_path / "pan.mp4"
    write_still_clip(clip, frames=50, pan_px=3)  # 3 pixels a frame: every frame changes, the flow explains it
    pipeline, got = run_pipeline([{"name": "pan", "url": str(clip)}], seconds=30)
    runtime = pipeline.cameras["pan"]
    seqs = [h["seq"] for h, _ in got]
    assert seqs == sorted(seqs) and len(got) + pipeline.dropped("pan") == 50
    assert all(h["colorized"] and h["model"] for h, _ in got)
    network_runs = runtime.colorized - runtime.reuse.reused - runtime.reuse.carried
    assert runtime.reuse.carried >= 10  # most frames between network runs were carried...
    carry = cfgmod.CameraConfig("pan", "").carry_frames  # the default camera's
    assert 0 < runtime.reuse.carried <= carry * network_runs  # ...never more than carry_frames in a row


def test_colorize_a_video_file_as_a_camera_would(tmp_path):
    """`streamd colorize` on a gray H.264 file: every frame comes out in colour, and the network runs only on
    the frames a camera of the daemon would run it on (--every-frame: on all)."""
    from streamd.tools.bench.frame_cost import frame_cost
    from streamd.cli import main
    from streamd.config import CameraConfig
    from streamd.infer.onnx_runtime import Colorizer
    from streamd.tools.colorize import colorize_video
    from streamd.steps import reuse_for

    video = write_video(tmp_path / "gray.mp4", "gray", seconds=2)
    assert main(["colorize", str(video), "-o", str(tmp_path / "out")]) == 0
    with av.open(str(video)) as c:
        source = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    with av.open(str(tmp_path / "out" / "gray.mp4")) as c:
        colour = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    assert len(colour) == len(source) == 50
    assert all(planes[240:].std() > src[240:].std() + 1 for planes, src in zip(colour, source))

    colorizer = Colorizer()
    frames, runs = colorize_video(colorizer, video, tmp_path / "reuse.mp4", reuse=reuse_for(CameraConfig("t", "")))
    assert frames == 50 and 0 < runs < frames
    assert runs == frame_cost(video)["network_runs"]  # the daemon's steps decide alike on the same clip
    assert colorize_video(colorizer, video, tmp_path / "every.mp4", reuse=None) == (50, 50)


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has an NVIDIA GPU: NVDEC may well open")
def test_a_camera_asking_for_nvdec_on_a_host_without_it_decodes_on_the_cpu(tmp_path, caplog):
    """hwaccel = "cuda" where no CUDA device can be opened (as in CI): a warning, and the camera runs."""
    video = write_video(tmp_path / "gray.mp4", "gray", seconds=1)
    with caplog.at_level("WARNING", logger="streamd.daemon.source"):
        pipeline, got = run_pipeline([{"name": "nvdec", "url": str(video), "hwaccel": "cuda"}], seconds=30)
    assert len(got) > 0 and all(h["colorized"] for h, _ in got)
    assert pipeline.cameras["nvdec"].source.stats.frames == 25
    assert any("the cuda decoder does not open here" in r.getMessage() for r in caplog.records)
