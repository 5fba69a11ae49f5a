"""A camera's day reference: built from its own colour frames, checked against the night, and the colour it
gives through the shipped reference model, offline and in the daemon with a real RTSP camera."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from skimage import data

from streamd.client import Subscriber
from streamd.infer.onnx_runtime import REFERENCE_MODEL, Colorizer, shipped_model
from streamd.colour.lab import rgb_to_lab
from streamd.model.data import near_infrared_like
from streamd.tools.colorize import colorize_images
from streamd.colour.reference import FIT_THRESHOLD, DayReference, ReferenceError, build, fit
from streamd.daemon.reference_store import CameraReference
from streamd.steps import ReferenceColouring
from tests.conftest import ROOT, free_port, write_video
from tests.publish import FixedScene

SIZE = (320, 240)


def scene_frames(count: int, start: int = 0, fps: float = 5.0) -> list[np.ndarray]:
    """A fixed camera's frames, RGB: a still view that an object crosses in some of them."""
    scene = FixedScene(SIZE, fps)
    return [cv2.cvtColor(scene.render(start + i), cv2.COLOR_BGR2RGB) for i in range(count)]


def still_view() -> np.ndarray:
    return cv2.cvtColor(FixedScene(SIZE, 5.0).still, cv2.COLOR_BGR2RGB)


def ab_error(out_rgb: np.ndarray, truth_rgb: np.ndarray) -> float:
    return float(np.hypot(*np.moveaxis(rgb_to_lab(out_rgb)[..., 1:] - rgb_to_lab(truth_rgb)[..., 1:], -1, 0)).mean())


def test_a_reference_is_the_still_scene_without_what_crossed_it():
    frames = scene_frames(40)  # the object is in view in half of them, each time somewhere else
    reference = build(frames)
    truth = rgb_to_lab(cv2.resize(still_view(), reference.size, interpolation=cv2.INTER_AREA))
    error = np.hypot(*(reference.ab - truth[..., 1:].transpose(2, 0, 1)))
    assert reference.frames == 40 and reference.source_size == SIZE
    assert np.percentile(error, 99) < 2.0, "the median kept the passing object's colour"
    assert np.abs(reference.lightness - truth[..., 0]).mean() < 1.0
    assert reference.confidence.min() > 0.9  # something passing now and then leaves the still scene certain


def test_a_reference_is_less_sure_where_the_colour_changes_all_day():
    rng = np.random.default_rng(1)
    frames = scene_frames(24)
    for rgb in frames:  # a busy corner (a crowd, a screen, swaying leaves): another colour in every frame
        rgb[:80, :100] = rng.integers(0, 256, 3)
    reference = build(frames)
    corner = np.zeros(reference.lightness.shape, bool)
    corner[:75, :95] = True  # at the working size, 320 wide: the same scale
    assert reference.confidence[corner].mean() < 0.3 < 0.9 < reference.confidence[~corner].mean()


def test_a_reference_needs_enough_frames_of_one_view():
    with pytest.raises(ReferenceError, match="at least 8"):
        build(scene_frames(5))
    with pytest.raises(ReferenceError, match="two views: 320x240 and 200x300"):
        build(scene_frames(8) + [np.zeros((300, 200, 3), np.uint8)])


def test_fit_tells_the_same_view_from_another_also_in_near_infrared():
    reference = build(scene_frames(16))

    def lightness(rgb: np.ndarray) -> np.ndarray:
        return cv2.resize(rgb_to_lab(rgb)[..., 0], (320, 192), interpolation=cv2.INTER_AREA)

    same = still_view()
    darker = np.clip(same.astype(np.float32) * 0.6, 0, 255).astype(np.uint8)  # another exposure
    nir = cv2.cvtColor(near_infrared_like(same, 2.0), cv2.COLOR_GRAY2RGB)  # an infrared-lit night
    for rgb in (same, darker, nir):
        assert fit(reference, lightness(rgb)) >= FIT_THRESHOLD
    for other in (data.astronaut(), data.chelsea(), data.rocket()):
        moved = cv2.resize(other, SIZE, interpolation=cv2.INTER_AREA)
        assert fit(reference, lightness(moved)) < FIT_THRESHOLD


def test_a_reference_file_is_written_whole_and_read_back(tmp_path):
    reference = build(scene_frames(12))
    path = tmp_path / "cam" / "reference.npz"
    reference.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["reference.npz"]  # no temporary file left
    again = DayReference.load(path)
    assert again.frames == 12 and again.source_size == SIZE
    assert np.abs(again.ab - reference.ab).max() < 0.1  # stored as fp16
    whole = path.read_bytes()
    for name, damaged in (("text", b"not a reference"), ("empty", b""), ("cut", whole[: len(whole) // 2]),
                          ("tail", whole[:-10])):  # what a power loss or a full disk leaves
        (tmp_path / f"{name}.npz").write_bytes(damaged)
        with pytest.raises(ReferenceError, match=f"{name}.npz: not a streamd day reference"):
            DayReference.load(tmp_path / f"{name}.npz")


def test_a_reference_of_another_frame_size_is_rescaled_or_refused():
    reference = build(scene_frames(10))
    assert reference.for_frame_size(640, 480).source_size == (640, 480)  # the same view, finer
    with pytest.raises(ReferenceError, match="built from 320x240 frames; these are 640x360"):
        reference.for_frame_size(640, 360)
    # in the daemon, a frame of another shape goes without it, and the camera keeps it for its own frames
    keeper = CameraReference("cam", None, None, reference=reference)
    lightness = cv2.resize(rgb_to_lab(still_view())[..., 0], (320, 192), interpolation=cv2.INTER_AREA)
    assert keeper.planes_for(640, 360, lightness) is None
    assert keeper.planes_for(640, 480, lightness) is not None and keeper.planes_for(*SIZE, lightness) is not None


def test_a_fit_that_hovers_about_the_threshold_does_not_flip_the_colour(caplog):
    """Lost below FIT_THRESHOLD, regained only at FIT_AGAIN: night frames whose score wavers in between (rain,
    glare, a van across half the view) keep what they had, and the log says it once."""
    from streamd.colour.reference import FIT_AGAIN

    reference = build(scene_frames(10))
    keeper = CameraReference("cam", None, None, reference=reference)
    same = cv2.resize(rgb_to_lab(still_view())[..., 0], (320, 192), interpolation=cv2.INTER_AREA)
    other = cv2.resize(rgb_to_lab(cv2.resize(data.astronaut(), SIZE))[..., 0], (320, 192))
    # blends of the two views whose fit lies between the thresholds
    between = [w for w in np.linspace(0, 1, 41) if FIT_THRESHOLD <= fit(reference, w * same + (1 - w) * other) < FIT_AGAIN]
    assert between, "no blend scores between the thresholds"
    hovering = between[len(between) // 2] * same + (1 - between[len(between) // 2]) * other
    assert all(keeper.planes_for(*SIZE, hovering) is not None for _ in range(5))  # still fits: kept
    assert keeper.planes_for(*SIZE, other) is None  # lost
    assert all(keeper.planes_for(*SIZE, hovering) is None for _ in range(5))  # not regained in between
    assert keeper.planes_for(*SIZE, same) is not None  # regained
    assert sum("does not show its day reference" in r.message for r in caplog.records) == 1


@pytest.fixture(scope="module")
def models():
    return Colorizer(), Colorizer(shipped_model(REFERENCE_MODEL))


def test_the_reference_model_keeps_the_reference_colour_and_a_wrong_one_is_not_used(models):
    generic, model = models
    assert model.takes_reference and not generic.takes_reference
    day, night = scene_frames(30), scene_frames(6, start=40)
    reference = build(day)
    given = [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for rgb in night]
    by_reference = ReferenceColouring(model, CameraReference("cam", None, None, reference=reference))
    ours = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in colorize_images(generic, given, by_reference)]
    plain = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in colorize_images(generic, given)]
    ours_error = np.mean([ab_error(o, t) for o, t in zip(ours, night)])
    plain_error = np.mean([ab_error(o, t) for o, t in zip(plain, night)])
    # the reference's colour is what the night gets (a still coffee cup: the generic model's guess is 38 ab units
    # off; a reference left untrusted, or not reaching the network, gives 18 or more)
    assert ours_error < 10.0 and ours_error < 0.25 * plain_error, (ours_error, plain_error)

    wrong = build([cv2.resize(data.astronaut(), SIZE, interpolation=cv2.INTER_AREA)] * 10)
    keeper = CameraReference("cam", None, None, reference=wrong)
    wrongly = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) for bgr in
               colorize_images(generic, given[:2], ReferenceColouring(model, keeper))]
    assert keeper.misfits == 2 and not keeper.fits
    assert all(np.array_equal(a, b) for a, b in zip(wrongly, plain[:2]))  # exactly the generic colour


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamd", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_colorize_with_a_reference_from_a_folder_a_video_or_a_file(tmp_path):
    day, night, out = tmp_path / "day", tmp_path / "night", tmp_path / "out"
    day.mkdir(), night.mkdir()
    for i, rgb in enumerate(scene_frames(20)):
        cv2.imwrite(str(day / f"day_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    truth = scene_frames(3, start=60)
    for i, rgb in enumerate(truth):
        cv2.imwrite(str(night / f"night_{i}.png"), cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2BGR))
    done = run_cli("colorize", "--reference", str(day), *sorted(str(p) for p in night.iterdir()), "-o", str(out))
    assert done.returncode == 0, done.stderr
    errors = [ab_error(cv2.cvtColor(cv2.imread(str(out / f"night_{i}.png")), cv2.COLOR_BGR2RGB), t)
              for i, t in enumerate(truth)]
    assert max(errors) < 10.0, errors  # the generic model alone: 38 ab units off on this scene

    video = write_video(tmp_path / "day.mp4", "colour", seconds=3, scene="fixed")
    done = run_cli("reference", "build", str(video), "-o", str(tmp_path / "ref.npz"), "--picture",
                   str(tmp_path / "ref.png"))
    assert done.returncode == 0, done.stderr
    assert "75 day frames of 320x240" in done.stdout and cv2.imread(str(tmp_path / "ref.png")).shape == (240, 320, 3)
    done = run_cli("colorize", "--reference", str(tmp_path / "ref.npz"), str(night / "night_0.png"), "-o",
                   str(tmp_path / "one.png"))
    assert done.returncode == 0, done.stderr
    # the H.264 day is limited-range BT.601, the night a full-range PNG: the same colours all the same
    assert ab_error(cv2.cvtColor(cv2.imread(str(tmp_path / "one.png")), cv2.COLOR_BGR2RGB), truth[0]) < 10.0


def test_reference_inputs_that_cannot_work_are_named(tmp_path):
    gray_day = tmp_path / "gray"
    gray_day.mkdir()
    for i, rgb in enumerate(scene_frames(10)):
        cv2.imwrite(str(gray_day / f"{i}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    done = run_cli("reference", "build", str(gray_day), "-o", str(tmp_path / "r.npz"))
    assert done.returncode == 2 and "the day frames are gray" in done.stderr and str(gray_day) in done.stderr
    done = run_cli("colorize", "--reference", str(tmp_path / "missing"), str(gray_day / "0.png"), "-o",
                   str(tmp_path / "o.png"))
    assert done.returncode == 2 and "missing: no such file or folder" in done.stderr
    done = run_cli("reference", "build", str(gray_day), "-o", str(tmp_path / "r.jpg"))
    assert done.returncode == 2 and "named .npz" in done.stderr


def test_eval_scores_the_reference_beside_gray_the_copy_and_the_generic_model(tmp_path):
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i, rgb in enumerate(scene_frames(20)):
        cv2.imwrite(str(scenes / f"coffee_{i:06d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    other = cv2.resize(data.chelsea(), SIZE, interpolation=cv2.INTER_AREA)
    for i in range(20):
        moved = np.roll(other, 3 * i, axis=1)  # a second scene, panning: a wrong reference for the first
        cv2.imwrite(str(scenes / f"cat_{i:06d}.png"), cv2.cvtColor(moved, cv2.COLOR_RGB2BGR))
    done = run_cli("eval", "--reference", str(scenes), "--json", str(tmp_path / "r.json"), "--sheets",
                   str(tmp_path / "sheets"))
    assert done.returncode == 0, done.stderr
    assert "| gray night | reference |" in done.stdout and "goals:" in done.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert set(rows) == {"gray night", "nir night", "wrong reference", "other light"}
    night = rows["gray night"]
    assert night["copy"]["psnr"] > night["gray"]["psnr"] + 3
    assert night["reference"]["psnr"] > night["generic"]["psnr"] + 3
    assert (tmp_path / "sheets" / "reference.jpg").exists()


def night_chroma_error(msg_header: dict, image: np.ndarray, still_bgr: np.ndarray) -> float:
    """Mean ab error of a received (BGR) frame against the fixed scene's still view, away from the object."""
    out, truth = rgb_to_lab(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)), rgb_to_lab(cv2.cvtColor(still_bgr, cv2.COLOR_BGR2RGB))
    error = np.hypot(*np.moveaxis(out[..., 1:] - truth[..., 1:], -1, 0))
    rows = np.r_[0:SIZE[1] // 3, 2 * SIZE[1] // 3:SIZE[1]]  # the object crosses the middle third
    return float(error[rows].mean())


def http_get_bytes(url: str) -> tuple[int, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.read()


def receive(endpoint: str, camera: str, seconds: float, until=None) -> list[tuple[dict, np.ndarray]]:
    got = []
    end = time.monotonic() + seconds
    with Subscriber(endpoint, camera, context=zmq.Context()) as sub:
        while time.monotonic() < end:
            msg = sub.recv(timeout=0.5)
            if msg:
                got.append(msg)
                if until and until(got):
                    break
    return got


def test_the_daemon_colours_a_camera_s_night_from_its_own_day_and_keeps_the_reference(rtsp_server, publishers,
                                                                                        tmp_path):
    from tests.test_operations import http_get, metric_value, start_streamd, stop_streamd, write_config

    state, endpoint, http = tmp_path / "state", f"tcp://127.0.0.1:{free_port()}", free_port()
    cfg = write_config(tmp_path / "c.toml", endpoint, http,
                       f'[adapt]\nstate_dir = "{state}"\ncollect_every_s = 0.1\nmin_change = 0\nauto = false\n'
                       f'[reference]\nmin_frames = 10\nrebuild_every_h = 0\n'
                       f'[[camera]]\nname = "yard"\nurl = "{rtsp_server.play_url("yard")}"\ntransport = "udp"\n')
    day_then_night = publishers(rtsp_server.publish_url("yard"), mode="switch", seconds=16, scene="fixed")
    still = FixedScene(SIZE, 25.0).still
    proc = start_streamd("run", "-c", str(cfg))
    try:
        got = receive(endpoint, "yard", 40, until=lambda got: sum(h["model_kind"] == "reference" for h, _ in got) >= 10)
        card = json.loads(http_get(f"http://127.0.0.1:{http}/api/cameras")[1])["cameras"][0]
        code, picture = http_get_bytes(f"http://127.0.0.1:{http}/reference/yard.jpg")
        metrics = http_get(f"http://127.0.0.1:{http}/metrics")[1]
    finally:
        log = stop_streamd(proc)
    assert card["model"]["kind"] == "reference" and card["reference"]["frames"] >= 10 and card["reference"]["fits"]
    assert code == 200 and cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
    assert metric_value(metrics, 'streamd_frames_colour_total{camera="yard",kind="reference"}') >= 10
    assert metric_value(metrics, 'streamd_reference_day_frames{camera="yard"}') >= 10
    night = [(h, img) for h, img in got if h["colorized"]]
    coloured = [(h, img) for h, img in night if h["model_kind"] == "reference"]
    assert len(coloured) >= 10, log
    assert all(h["reference"]["frames"] >= 10 and h["reference"]["age_s"] >= 0 for h, _ in coloured)
    assert np.median([night_chroma_error(h, img, still) for h, img in coloured]) < 10.0  # generic: 38
    assert "day reference rebuilt from" in log
    assert (state / "yard" / "reference.npz").exists()

    # a restart at night: the reference is read back from the state directory and used from the first frame
    # (the same camera, now on another path: the server may hold the first publisher's for a while)
    day_then_night.stop()
    publishers(rtsp_server.publish_url("yard-night"), mode="gray", seconds=20, scene="fixed")
    cfg.write_text(cfg.read_text().replace(rtsp_server.play_url("yard"), rtsp_server.play_url("yard-night")))
    proc = start_streamd("run", "-c", str(cfg))
    try:
        got = receive(endpoint, "yard", 30, until=lambda got: len(got) >= 20)
    finally:
        log = stop_streamd(proc)
    night = [(h, img) for h, img in got if h["colorized"]]
    assert len(night) >= 10 and all(h["model_kind"] == "reference" for h, _ in night), log
    assert np.median([night_chroma_error(h, img, still) for h, img in night]) < 10.0
    assert "day reference rebuilt" not in log  # nothing new to build it from: the kept one serves


def store_day_frames(folder: Path, frames: list[np.ndarray], first: float, step_s: float = 60.0) -> None:
    """Frames written as a camera's store keeps them: JPEGs named by their UTC capture time."""
    from datetime import datetime, timezone

    from streamd.daemon.collect import STAMP

    folder.mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(frames):
        stamp = datetime.fromtimestamp(first + i * step_s, timezone.utc).strftime(STAMP)
        cv2.imwrite(str(folder / f"{stamp}.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def test_a_reference_is_rebuilt_at_nightfall_when_due_and_from_later_days_after_a_misfit(tmp_path):
    from streamd.daemon.reference_store import Builder

    folder, builder = tmp_path / "yard", Builder()
    try:
        day = time.time() - 86400
        store_day_frames(folder, scene_frames(15), day)
        keeper = CameraReference("yard", folder, builder, min_frames=20, rebuild_every_h=6)
        assert keeper.rebuild_if_due() is None  # 15 frames: not enough yet
        store_day_frames(folder, scene_frames(10, start=15), day + 15 * 60)
        first = keeper.rebuild_if_due().result(timeout=60)
        assert first.frames == 25 and keeper.reference is first and (folder / "reference.npz").exists()
        assert keeper.rebuild_if_due() is None  # just built
        store_day_frames(folder, scene_frames(5, start=30), day + 30 * 60)
        assert keeper.rebuild_if_due(now=time.time() + 3600) is None  # newer frames, but not 6 h later
        assert keeper.rebuild_if_due(now=time.time() + 7 * 3600).result(timeout=60).frames == 30

        # the camera is turned: its night no longer shows the reference's view
        moved = cv2.resize(data.astronaut(), SIZE, interpolation=cv2.INTER_AREA)
        lightness = cv2.resize(rgb_to_lab(moved)[..., 0], (320, 192), interpolation=cv2.INTER_AREA)
        assert keeper.planes_for(*SIZE, lightness) is None and not keeper.fits
        assert keeper.rebuild_if_due(now=time.time() + 7 * 3600) is None  # no day frame since it moved
        store_day_frames(folder, [moved] * 20, time.time() + 60)  # the next day, of the new view
        rebuilt = keeper.rebuild_if_due().result(timeout=60)
        assert rebuilt.frames == 20 and keeper.fits  # of the new view's frames alone
        assert keeper.planes_for(*SIZE, lightness) is not None
        assert DayReference.load(folder / "reference.npz").frames == 20  # and kept for the next start
    finally:
        builder.shutdown()


def test_references_are_built_at_the_idle_cpu_priority():
    import os
    import threading

    from streamd.daemon.reference_store import Builder

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before, builder = priority(), Builder()
    try:
        assert builder.submit(priority).result() == 19
    finally:
        builder.shutdown()
    assert priority() == before < 19  # the rest of the process keeps its own


def write_failing_reference_model(path: Path) -> Path:
    """A real ONNX model with a reference model's inputs (L, reference) that loads and fails on every batch:
    it reshapes L to rows of 61441 values, which no 320x192 input (61440 values) fills."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["L", "shape"], ["flat"]), helper.make_node("Identity", ["flat"], ["ab"])],
        "failing-reference",
        [helper.make_tensor_value_info("L", TensorProto.FLOAT, ["batch", 1, "height", "width"]),
         helper.make_tensor_value_info("reference", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [helper.make_tensor_value_info("ab", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 61441])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"model_id": '"broken-reference"'})
    onnx.save(model, str(path))
    return path


def test_frames_the_reference_model_fails_on_get_their_camera_s_own_colour(tmp_path):
    """The reference model fails on every batch: the camera's night frames are coloured by its own (here the
    generic) model instead of being dropped, and /healthz's failing models name the reference model."""
    from tests.test_recordings import run_until_finished

    video = write_video(tmp_path / "night.mp4", "gray", seconds=2, scene="fixed")
    reference = tmp_path / "yard.npz"
    build(scene_frames(10)).save(reference)
    pipeline = run_until_finished(
        [{"name": "yard", "url": str(video), "reference_file": str(reference), "reuse_still_s": 0.0, "carry_frames": 0}],
        reference={"model": str(write_failing_reference_model(tmp_path / "broken.onnx"))},
        adapt={"state_dir": str(tmp_path / "state")})
    failing = pipeline.failing()
    yard = pipeline.cameras["yard"]
    assert yard.failed == 0 and yard.colorized > 10 and yard.by_colour == {"generic": yard.colorized}
    assert failing and "broken-reference" in failing
