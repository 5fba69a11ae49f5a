"""`streamd adapt` on a generated fixed camera: fine-tunes, scores on held-back frames, keeps if better."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamd import config as cfgmod
from streamd.tools.adapt import ADAPTED_PRIOR_CORRECTION, ADAPTED_TEMPERATURE, adapt
from streamd.cli import main
from streamd.daemon.collect import STAMP, FrameStore
from streamd.infer.onnx_runtime import Colorizer, int8_copy
from streamd.colour.lab import lab_to_rgb
from streamd.frame import Frame
from streamd.daemon.source import SyntheticCamera
from tests.conftest import ROOT, free_port, write_video


def unknown_colours_frame(index: int, size: tuple[int, int] = (160, 120)) -> np.ndarray:
    """A BGR frame of a scene whose colour no photo taught the generic model: shapes of every lightness on a
    shaded wall, all of one strong purple (Lab a = 35, b = -30), moving from frame to frame."""
    w, h = size
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[0:h, 0:w]
    lightness = 30 + 40 * (xx / w) + 10 * np.sin(yy / 9.0 + index * 0.3)
    for _ in range(6):
        cx, cy, r = rng.integers(0, w), rng.integers(0, h), rng.integers(8, 30)
        lightness = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < r * r, rng.uniform(15, 90), lightness)
    lab = np.stack([lightness, np.full_like(lightness, 35.0), np.full_like(lightness, -30.0)], axis=-1)
    return cv2.cvtColor(lab_to_rgb(lab.astype(np.float32)), cv2.COLOR_RGB2BGR)


def fill_store(folder: Path, count: int, first: float, step_s: float, index: int = 0) -> list[Path]:
    """`count` frames of the purple scene named as streamd.daemon.collect names them, `step_s` apart from `first`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        stamp = datetime.fromtimestamp(first + i * step_s, timezone.utc).strftime(STAMP)
        paths.append(folder / f"{stamp}.jpg")
        cv2.imwrite(str(paths[-1]), unknown_colours_frame(index + i), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return paths


@pytest.fixture(scope="module")
def purple(tmp_path_factory):
    """The purple scene's store, and a model adapted to it (a fixed number of steps: the same on any machine)."""
    root = tmp_path_factory.mktemp("purple")
    (root / "store").mkdir()
    for i in range(24):
        cv2.imwrite(str(root / "store" / f"{i:04d}.png"), unknown_colours_frame(i))
    out = root / "purple.onnx"
    report = adapt([root / "store"], out, budget_minutes=30, max_steps=40, batch=8, crop=64, lr=1e-2, head_only=True)
    return root / "store", out, report


def test_adapt_learns_colours_the_generic_model_cannot_know(purple):
    """Known in advance: no photo taught the generic model that this scene is purple, its own frames do, so
    the adapted model must be kept; it comes with an int8 copy that the CPU runtime picks up."""
    _, out, report = purple
    assert report.train_frames == 14 and report.held_out_frames == 10 and report.steps == 40
    assert report.current_model == Colorizer(int8="auto", provider="cpu").info.model_id  # the generic one
    assert report.kept and report.model == str(out) and out.exists()
    assert report.adapted.cast < report.current.cast  # the frame-wide colour moved towards the truth
    # its own decoding, without the cast correction: this scene's purple is its own, not a guess
    generic, adapted = Colorizer(provider="cpu").info, Colorizer(out, "cpu").info
    assert generic.cast_correction > 0 and adapted.cast_correction == 0
    assert (adapted.temperature, adapted.prior_correction) == (ADAPTED_TEMPERATURE, ADAPTED_PRIOR_CORRECTION)
    quantized = Colorizer(out, "cpu", int8="on")
    assert quantized.path == int8_copy(out) and quantized.info.model_id == "purple-adapted-int8"
    assert report.int8 == str(int8_copy(out)) and report.int8_error is None


def test_adapted_model_gives_back_the_colour_it_learned(purple):
    """Known in advance: the purple scene is one strong colour, which its own frames teach; on the frames held
    back the adapted model (its int8 copy, as a CPU host runs it) must give most of it back, not a grayish
    version of it. Decoded as the generic model is (T = 2, half the class rebalancing divided out), the same
    40 steps came within 1 dB of gray, with 0.9x gray's colour cast."""
    _, _, report = purple
    assert report.adapted.psnr > report.gray.psnr + 6
    assert report.adapted.cast < 0.4 * report.gray.cast


def test_adapt_does_not_replace_a_better_current_model(purple, tmp_path):
    """Known in advance: a camera already runs the model adapted to its scene; a run of one step from the
    generic weights cannot beat it, so nothing is written and the exit status says so."""
    store, current, _ = purple
    out, report = tmp_path / "again.onnx", tmp_path / "report.json"
    code = main(["adapt", str(store), "-o", str(out), "--against", str(current), "--max-steps", "1", "--head-only",
                 "--json", str(report)])
    r = json.loads(report.read_text())
    assert code == 1 and not r["kept"] and not out.exists() and not int8_copy(out).exists()
    assert r["current_model"] == "purple-adapted-int8"  # compared with what the camera runs: the int8 copy


def test_adapt_rejects_too_few_frames(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    cv2.imwrite(str(store / "0.png"), SyntheticCamera((64, 48), 5).render(0))
    assert main(["adapt", str(store), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "too few" in capsys.readouterr().err


def day_frame(index: int, capture_time: float, size: tuple[int, int] = (640, 360)) -> Frame:
    """A colour camera frame (limited-range BT.709, as H.264 cameras send) of the synthetic scene."""
    frame = Frame.from_bgr("yard", index, SyntheticCamera(size, fps=1, seconds_per_photo=1).render(index),
                           matrix="bt709", full_range=False)
    frame.capture_time = capture_time
    return frame


def test_store_keeps_distinct_day_frames_spaced_and_capped(tmp_path):
    store = FrameStore(tmp_path / "yard", every_s=10, min_change=3, max_frames=3)
    t0 = 1_800_000_000.0
    assert store.offer(day_frame(0, t0), now=0)
    assert not store.offer(day_frame(1, t0 + 1), now=5)  # too soon after the last one
    assert not store.offer(day_frame(0, t0 + 2), now=20)  # the same view again: a near-duplicate
    assert store.skipped == 1
    for i in range(1, 4):
        assert store.offer(day_frame(i, t0 + 10 * i), now=20 + 10 * i)
    files = store.frames()
    assert len(files) == 3  # capped: the oldest went
    assert [f.name for f in files] == sorted(f.name for f in files)
    assert files[0].name.startswith(datetime.fromtimestamp(t0 + 10, timezone.utc).strftime("%Y%m%dT%H%M%S"))
    image = cv2.imread(str(files[-1]))
    assert max(image.shape[:2]) == 320 and image.std() > 10  # small, and a real picture
    # A store opened again (a restart) remembers what it holds: the same view is still a duplicate; a frame
    # being written when the process was killed is cleared away.
    killed_mid_write = tmp_path / "yard" / ".20270115T000000.000000Z.part"
    killed_mid_write.write_bytes(b"\xff\xd8")
    run_scratch = tmp_path / "yard" / ".yard-20270115T000000Z-k2j4x8q1.work"  # an adaptation run's, not ours
    run_scratch.mkdir()
    model_being_written = run_scratch / "yard-20270115T000000Z.onnx.part"
    model_being_written.write_bytes(b"\x08")
    again = FrameStore(tmp_path / "yard", every_s=0, min_change=3, max_frames=3)
    assert not killed_mid_write.exists() and model_being_written.exists() and len(again.frames()) == 3
    assert not again.offer(day_frame(3, t0 + 100), now=0)
    assert again.offer(day_frame(4, t0 + 101), now=1)


def test_store_failure_does_not_stop_the_camera(tmp_path):
    store = FrameStore(tmp_path / "yard", every_s=0, min_change=0, max_frames=5)
    (tmp_path / "yard").rmdir()
    (tmp_path / "yard").write_text("")  # the store's folder is now a file: every write fails, even as root
    assert not store.offer(day_frame(0, 1e9), now=0)
    assert store.stored == 0


def test_daemon_collects_day_frames_and_adapts_a_camera_on_request(tmp_path):
    from tests.test_operations import http_get, start_streamd, stop_streamd, write_config

    clip = write_video(tmp_path / "day.mp4", "colour", seconds=4)
    state, http = tmp_path / "state", free_port()
    cfg = tmp_path / "c.toml"
    write_config(cfg, "", http,
                 f'[adapt]\nstate_dir = "{state}"\ncollect_every_s = 0.1\nmin_frames = 12\nmax_frames = 40\n'
                 f'budget_minutes = 0.3\n'
                 f'[[camera]]\nname = "yard"\nurl = "{clip}"\nloop = true\n'
                 f'[[camera]]\nname = "private"\nurl = "{clip}"\nloop = true\ncollect = false\n')
    proc = start_streamd("run", "-c", str(cfg))
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and len(list((state / "yard").glob("*.jpg"))) < 12:
            time.sleep(0.5)
        assert len(list((state / "yard").glob("*.jpg"))) >= 12
        assert not (state / "private").exists()  # opted out: nothing stored
        assert "streamd_store_frames{camera=\"yard\"}" in http_get(f"http://127.0.0.1:{http}/metrics")[1]

        assert http_post(f"http://127.0.0.1:{http}/adapt/private")[0] == 409
        assert http_post(f"http://127.0.0.1:{http}/adapt/nobody")[0] == 404
        code, body = http_post(f"http://127.0.0.1:{http}/adapt/yard")
        assert code == 202 and json.loads(body)["status"] == "queued"
        child = wait_for_child(proc.pid, "adapt")
        assert child is not None, "no adaptation process started"
        end = time.monotonic() + 60
        while time.monotonic() < end and os.sched_getscheduler(child) != os.SCHED_IDLE:
            time.sleep(0.05)  # the child puts itself there first thing
        assert os.sched_getscheduler(child) == os.SCHED_IDLE  # only CPU time no live frame wants

        end = time.monotonic() + 300
        while time.monotonic() < end and not (state / "yard" / "adapted.json").exists():
            time.sleep(1)
        outcome = json.loads((state / "yard" / "adapted.json").read_text())
        assert outcome["outcome"] in ("kept", "rejected"), outcome
        report = outcome["report"]
        assert report["kept"] == (outcome["outcome"] == "kept") and report["train_frames"] > 0
        metrics = http_get(f"http://127.0.0.1:{http}/metrics")[1]
        assert f'streamd_adaptations_total{{outcome="{outcome["outcome"]}"}} 1.0' in metrics
        assert re.search(r"^streamd_adaptation_cpu_seconds_total [1-9]", metrics, re.M)
        info = re.search(r'^streamd_model_info\{camera="yard",kind="(\w+)",model="([^"]+)"', metrics, re.M)
        if outcome["outcome"] == "kept":  # the camera runs it (the int8 copy, on a CPU host)
            model = Path(outcome["detail"])
            assert model.parent == state / "yard" and model.exists() and int8_copy(model).exists()
            assert info.groups() == ("adapted", f"{model.stem}-adapted-int8")
        else:  # the camera keeps the generic model
            assert info.group(1) == "generic"
    finally:
        stop_streamd(proc)


def http_post(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_for_child(parent: int, word: str, timeout: float = 20.0) -> int | None:
    """The pid of a child process of `parent` whose command line holds `word`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, IndexError, ValueError):
                continue
            if ppid == parent and word.encode() in cmdline:
                return int(entry.name)
        time.sleep(0.1)
    return None


def test_adapted_model_is_swapped_in_between_frames(tmp_path):
    """The pipeline side of a kept adaptation: the camera's newest adapted model replaces its model while
    frames keep coming, and every frame's header says which model made it (generic, then adapted)."""
    from streamd.client import Subscriber
    from streamd.cli import main as streamd_main
    from streamd.daemon.pipeline import Pipeline

    clip = write_video(tmp_path / "night.mp4", "gray", seconds=2)
    state, endpoint = tmp_path / "state", f"tcp://127.0.0.1:{free_port()}"
    config = cfgmod.parse({"zmq": {"endpoint": endpoint}, "adapt": {"state_dir": str(state)},
                           "camera": [{"name": "yard", "url": str(clip), "loop": True}]})
    pipeline = Pipeline(config)

    def headers(count: int) -> list[dict]:
        got, end = [], time.monotonic() + 30
        while len(got) < count and time.monotonic() < end:
            message = sub.recv(timeout=1.0)
            if message and message[0]["colorized"]:
                got.append(message[0])
        assert len(got) == count
        return got

    with Subscriber(endpoint, "yard", hwm=1000) as sub:
        pipeline.start()
        try:
            assert pipeline.cameras["yard"].colorizer is pipeline.colorizer  # nothing adapted yet: the generic one
            generic = pipeline.colorizer.info.model_id
            assert {(h["model_kind"], h["model"]) for h in headers(3)} == {("generic", generic)}
            model = state / "yard" / "yard-20261126T120000Z.onnx"
            assert streamd_main(["export", str(ROOT / "models" / "streamd-base.pt"), "-o", str(model),
                                 "--temperature", "0.6"]) == 0
            pipeline.use_adapted("yard", model)
            assert pipeline.cameras["yard"].colorizer.info.model_id.startswith("yard-20261126T120000Z")
            end = time.monotonic() + 60  # frames made before the swap are still queued for the subscriber
            while time.monotonic() < end and headers(1)[0]["model_kind"] != "adapted":
                pass
            adapted = pipeline.cameras["yard"].colorizer.info.model_id
            assert {(h["model_kind"], h["model"]) for h in headers(5)} == {("adapted", adapted)}
        finally:
            pipeline.stop()
    # A restart picks the adapted model up from the state directory (a pipeline never started: no ZeroMQ
    # socket, whose context would block in its finaliser).
    quiet = dataclasses.replace(config, zmq=cfgmod.ZmqConfig(endpoint=""))
    assert Pipeline(quiet).model_for(config.cameras[0]).info.model_id.startswith("yard-20261126T120000Z")


def test_schedule_picks_the_camera_that_waited_longest(tmp_path):
    from streamd.config import AdaptConfig
    from streamd.daemon.schedule import AdaptationScheduler

    for camera, frames in (("a", 3), ("b", 3), ("small", 1)):
        (tmp_path / camera).mkdir()
        for i in range(frames):
            (tmp_path / camera / f"{i}.jpg").write_bytes(b"")
    scheduler = AdaptationScheduler(tmp_path, AdaptConfig(auto=False, every_h=1.0, min_frames=2, min_span_h=0),
                                    lambda: ["a", "b", "small"], lambda camera, path: None)
    (tmp_path / "a" / "adapted.json").write_text(json.dumps({"finished": time.time() - 7200}))
    assert scheduler.due()[0] == "b"  # never adapted: longest wait; "small" has too few frames
    (tmp_path / "b" / "adapted.json").write_text(json.dumps({"finished": time.time() - 600}))
    assert scheduler.due()[0] == "a"  # b ran 10 minutes ago, a two hours ago
    (tmp_path / "a" / "adapted.json").write_text(json.dumps({"finished": time.time()}))
    assert scheduler.due() is None
    on_request = AdaptationScheduler(tmp_path, AdaptConfig(auto=False, min_frames=2, min_span_h=0), lambda: ["b"],
                                     lambda c, p: None)
    assert on_request.due() is None  # no schedule: only requests start a run
    with pytest.raises(KeyError):
        on_request.request("a")  # not adaptable


@pytest.mark.parametrize("key, value, message", [
    ("readapt_share", 0.0, "more than 0"), ("daily_budget_minutes", 0.0, "auto = false"),
    ("grace_minutes", -1.0, "positive"), ("device", "gpu", "cpu, cuda or auto"), ("threads", -1, "0 (one per core)"),
    ("min_span_h", -1.0, "0 or more"), ("auto", "yes", "expected bool")])
def test_adapt_settings_are_checked_at_the_edge(key, value, message):
    with pytest.raises(cfgmod.ConfigError, match=rf"adapt\.{key}: .*{re.escape(message)}"):
        cfgmod.parse({"adapt": {key: value}, "camera": [{"name": "yard", "url": "synthetic:"}]})


T0 = 1_700_000_000.0  # a store's first frame (2023-11-14: in the past, as a store's frames are)


def scheduler_for(state: Path, cameras: list[str], on_adapted=lambda camera, path: None, init: Path | None = None,
                  **settings):
    from streamd.config import AdaptConfig
    from streamd.daemon.schedule import AdaptationScheduler

    return AdaptationScheduler(state, AdaptConfig(**settings), lambda: cameras, on_adapted, init=init)


def test_a_store_is_ready_when_it_holds_enough_varied_frames_and_again_when_it_has_turned_over(tmp_path):
    state = tmp_path / "state"
    scheduler = scheduler_for(state, ["yard", "new", "brief"], min_frames=10, min_span_h=12, readapt_share=0.5)
    fill_store(state / "yard", 10, T0, 3600 * 13 / 9)  # 10 frames over 13 h
    fill_store(state / "new", 9, T0, 3600 * 2)  # over 16 h, but too few
    fill_store(state / "brief", 30, T0, 60)  # many, but all within half an hour: one light, one view
    assert scheduler.why_due("new") is None and scheduler.why_due("brief") is None
    assert "10 day frames over 13.0 h" in scheduler.why_due("yard")
    assert scheduler.due()[0] == "yard"
    # After a run that saw these frames, the camera waits until half of its store is newer than them.
    newest = max(p.name for p in (state / "yard").glob("*.jpg"))
    (state / "yard" / "adapted.json").write_text(json.dumps({"finished": time.time(), "newest_frame": newest}))
    assert scheduler.why_due("yard") is None
    fill_store(state / "yard", 9, T0 + 86400, 600, index=50)  # 9 of 19 are new: not yet
    assert scheduler.why_due("yard") is None and scheduler.due() is None
    fill_store(state / "yard", 1, T0 + 2 * 86400, 600, index=80)
    assert "50% of its 20 stored frames are newer" in scheduler.why_due("yard")
    off = scheduler_for(state, ["yard"], auto=False, min_frames=10, min_span_h=12)
    assert off.due() is None  # automatic adaptation switched off


def test_automatic_runs_share_a_daily_cpu_budget(tmp_path, caplog):
    """Runs are counted by their children's CPU time in a ledger that outlives the process; past the day's
    budget nothing starts until a day after the runs that spent it; a run is shortened to fit what is left."""
    import logging

    state = tmp_path / "state"
    fill_store(state / "yard", 4, T0, 3600)
    settings = dict(min_frames=4, min_span_h=1, budget_minutes=8, daily_budget_minutes=10, threads=2)
    scheduler = scheduler_for(state, ["yard"], **settings)
    assert scheduler.run_budget_s() == 300  # 10 CPU minutes over 2 threads: 5 of the 8 minutes
    scheduler.ledger.add(60.0, now=time.time() - 25 * 3600)  # yesterday's: does not count
    scheduler.ledger.add(360.0)
    assert scheduler.run_budget_s() is None  # 4 CPU minutes left: 2 minutes over 2 threads, less than half a run
    caplog.set_level(logging.INFO, logger="streamd.daemon.schedule")
    assert scheduler.due() is None and scheduler.due() is None
    assert sum("daily CPU budget is spent" in r.message for r in caplog.records) == 1  # said once, not per look
    restarted = scheduler_for(state, ["yard"], **settings)  # the ledger is on disk
    assert restarted.ledger.spent() == 360.0 and restarted.due() is None
    generous = scheduler_for(state, ["yard"], **{**settings, "daily_budget_minutes": 30})
    assert generous.run_budget_s() == 480 and generous.due()[0] == "yard"


def child_of(parent: int, word: str, timeout: float = 60.0) -> int:
    pid = wait_for_child(parent, word, timeout)
    assert pid is not None, f"no child process with {word!r} started"
    return pid


def test_the_scheduler_adapts_a_ready_camera_by_itself_and_keeps_a_better_current_model(purple, tmp_path):
    """The real scheduler and a real (seconds-long) adaptation run: a camera whose store is ready is adapted
    without being asked, in a child in the idle CPU class and its own process group, against the model the
    camera runs now. That is the model adapted to this scene in many more steps: it must stay."""
    _, current, _ = purple
    state = tmp_path / "state"
    frames = fill_store(state / "yard", 16, T0, 3600)
    mine = state / "yard" / "yard-20270101T000000Z.onnx"
    for source, target in ((current, mine), (int8_copy(current), int8_copy(mine))):
        target.write_bytes(source.read_bytes())
    swapped = []
    scheduler = scheduler_for(state, ["yard"], lambda camera, path: swapped.append(path), min_frames=16,
                              min_span_h=12, budget_minutes=0.05, daily_budget_minutes=10, threads=1)
    scheduler.start()
    try:
        child = child_of(os.getpid(), "adapt")
        assert os.getpgid(child) == child  # its own process group: a kill at the deadline takes all of it
        end = time.monotonic() + 60
        while time.monotonic() < end and os.sched_getscheduler(child) != os.SCHED_IDLE:
            time.sleep(0.05)  # the child puts itself there first thing
        assert os.sched_getscheduler(child) == os.SCHED_IDLE
        end = time.monotonic() + 600
        while time.monotonic() < end and not scheduler.state("yard"):
            time.sleep(0.5)
    finally:
        scheduler.stop()
    outcome = scheduler.state("yard")
    assert outcome["outcome"] == "rejected", outcome
    assert outcome["report"]["current_model"] == "purple-adapted-int8" and not swapped
    assert sorted(p.name for p in (state / "yard").glob("*.onnx")) == [int8_copy(mine).name, mine.name]
    assert outcome["newest_frame"] == frames[-1].name and outcome["cpu_seconds"] > 0
    assert scheduler.ledger.spent() == pytest.approx(scheduler.cpu_seconds) and scheduler.cpu_seconds > 0
    assert json.loads((state / "adapt-cpu.json").read_text())[0][1] == pytest.approx(scheduler.cpu_seconds)
    assert scheduler.results == {"kept": 0, "rejected": 1, "failed": 0, "timeout": 0}
    assert scheduler.why_due("yard") is None  # nothing new since


def test_a_hung_adaptation_is_killed_at_its_deadline_and_on_stop(tmp_path):
    """The child blocks for good (its weights are a FIFO nobody writes): it is killed, with its process
    group, once its budget and grace are over, counted as a timeout, and the schedule goes on; at stop, a
    running child is killed at once."""
    state = tmp_path / "state"
    fill_store(state / "yard", 3, T0, 60)
    fifo = tmp_path / "weights.pt"
    os.mkfifo(fifo)
    scheduler = scheduler_for(state, ["yard"], init=fifo, auto=False, min_frames=3, budget_minutes=0.01,
                              grace_minutes=0.1)
    scheduler.start()
    try:
        assert scheduler.request("yard") == "queued"
        child = child_of(os.getpid(), "adapt")
        end = time.monotonic() + 120
        while time.monotonic() < end and not scheduler.state("yard"):
            time.sleep(0.2)
        assert scheduler.state("yard")["outcome"] == "timeout"
        with pytest.raises(ProcessLookupError):
            os.killpg(child, 0)  # nothing of its process group is left
        assert scheduler.results["timeout"] == 1 and scheduler.ledger.spent() > 0
        assert scheduler.request("yard") == "queued"
        child = child_of(os.getpid(), "adapt")
    finally:
        stopping = time.monotonic()
        scheduler.stop()
    assert time.monotonic() - stopping < 5 and not scheduler._thread.is_alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(child, 0)
    assert scheduler.results["timeout"] == 1  # a stop is not a timeout


def count(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records)


def test_a_record_that_cannot_be_written_does_not_make_the_schedule_spin(tmp_path, caplog):
    """A state directory that takes no writes (a full disk, a read-only remount; here the record's path is a
    folder, which fails even for root): the run's outcome is kept in memory, so the schedule does not run the
    camera again, and the failure is logged once."""
    import logging

    caplog.set_level(logging.INFO, logger="streamd.daemon.schedule")
    state = tmp_path / "state"
    for path in fill_store(state / "yard", 3, T0, 3600 * 7):
        path.write_bytes(b"not a picture")  # the run fails quickly: no frames to adapt on
    (state / "yard" / "adapted.json").mkdir()
    scheduler = scheduler_for(state, ["yard"], min_frames=3, min_span_h=12)
    scheduler.start()
    try:
        end = time.monotonic() + 300
        while time.monotonic() < end and not scheduler.results["failed"]:
            time.sleep(0.2)
        time.sleep(2.0)  # room for a spin to show
    finally:
        scheduler.stop()
    assert count(caplog, "adapting yard") == 1 and count(caplog, "cannot write") == 1
    assert scheduler.results["failed"] == 1 and scheduler.state("yard")["outcome"] == "failed"
    assert scheduler.why_due("yard") is None


def test_a_failing_camera_backs_off(tmp_path, caplog):
    """A run that cannot even start (its log cannot be opened) fails once, is logged once with the time it is
    left alone for, and is not tried again meanwhile."""
    import logging

    caplog.set_level(logging.INFO, logger="streamd.daemon.schedule")
    state = tmp_path / "state"
    fill_store(state / "yard", 3, T0, 3600 * 7)
    (state / "yard" / "adapt.log").mkdir()
    scheduler = scheduler_for(state, ["yard"], min_frames=3, min_span_h=12)
    scheduler.start()
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not scheduler.results["failed"]:
            time.sleep(0.05)
        time.sleep(1.0)  # room for a spin to show
        assert scheduler.due() is None  # ready, but backing off
    finally:
        scheduler.stop()
    assert scheduler.results["failed"] == 1
    assert count(caplog, "adaptation of yard failed") == 1 and count(caplog, "leaves it alone for 30 s") == 1
    assert wait_for_child(os.getpid(), "adapt", timeout=0.2) is None


def adapt_once_with_a_stand_in_child(state: Path, monkeypatch, leave, exit_code: int, on_adapted):
    """One requested run for camera "yard" (three stored frames) whose child is a stand-in: `leave(out,
    report)` writes what the run leaves behind, then a process exits with `exit_code`. Returns the scheduler,
    stopped once the run has an outcome."""
    import subprocess
    import sys

    from streamd.daemon import schedule
    from streamd.config import AdaptConfig

    (state / "yard").mkdir()
    for i in range(3):
        (state / "yard" / f"{i}.jpg").write_bytes(b"")
    popen = subprocess.Popen

    def child(cmd, **kwargs):
        leave(Path(cmd[cmd.index("-o") + 1]), Path(cmd[cmd.index("--json") + 1]))
        return popen([sys.executable, "-c", f"raise SystemExit({exit_code})"], **kwargs)

    monkeypatch.setattr(schedule.subprocess, "Popen", child)
    scheduler = schedule.AdaptationScheduler(state, AdaptConfig(every_h=0.0, min_frames=2), lambda: ["yard"],
                                             on_adapted)
    scheduler.start()
    try:
        assert scheduler.request("yard") == "queued"
        deadline = time.monotonic() + 60
        while not scheduler.state("yard") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()
    return scheduler


def test_an_adapted_model_that_cannot_be_used_is_recorded_once_and_removed(tmp_path, monkeypatch):
    """The adaptation run says it kept a model, but the camera cannot load it: the camera keeps its model,
    the run counts as failed once, and the file is gone, so that a restart does not pick it up. The child is
    a stand-in that writes what a run leaves (a garbage model and its report); the swap is the daemon's."""
    from streamd import config as cfgmod
    from streamd.daemon.pipeline import Pipeline

    def kept_garbage(out: Path, report: Path) -> None:  # the child's part of the contract: model and report
        out.write_bytes(b"not an ONNX model")
        report.write_text(json.dumps({"kept": True}))

    pipeline = Pipeline(cfgmod.parse({"camera": [{"name": "yard", "url": "synthetic:", "width": 320, "height": 240}],
                                      "zmq": {"endpoint": ""}, "adapt": {"state_dir": str(tmp_path / "daemon")}}))
    pipeline.start()
    generic = pipeline.cameras["yard"].colorizer
    try:
        scheduler = adapt_once_with_a_stand_in_child(tmp_path, monkeypatch, kept_garbage, 0, pipeline.use_adapted)
    finally:
        pipeline.stop()
    assert pipeline.cameras["yard"].colorizer is generic
    state = scheduler.state("yard")
    assert state["outcome"] == "failed" and state["detail"].startswith("the adapted model cannot be used"), state
    assert scheduler.results == {"kept": 0, "rejected": 0, "failed": 1, "timeout": 0}
    assert not list((tmp_path / "yard").glob("*.onnx"))


def test_the_status_page_reads_the_scores_an_adaptation_report_holds():
    """The card's last adaptation holds the scores of the run's report, under the keys the page reads."""
    import dataclasses

    from streamd.tools.adapt import AdaptReport, Scores
    from streamd.daemon.status import _last_adaptation

    report = AdaptReport(30, 20, 400, 240.0, "streamd-base", Scores(1.0, 20.0, 9.0), Scores(4.0, 24.0, 3.0),
                         Scores(0.0, 22.0, 5.0), True, "yard.onnx", None)
    last = _last_adaptation({"outcome": "kept", "detail": "yard.onnx", "finished": 0.0,
                             "report": json.loads(json.dumps(dataclasses.asdict(report)))})
    assert last["current"]["psnr"] == 20.0 and last["adapted"]["auc_rebalanced"] == 4.0
    # that the page shows them: tests/test_status_page.py, in a browser


def test_a_run_that_fails_or_is_killed_leaves_no_model_behind(tmp_path, monkeypatch):
    """A child that had begun to write its model when it failed (a full disk) or was killed: the half file
    is removed, so that neither a restart nor the next run's comparison loads it."""
    from streamd.daemon import schedule

    def half_written(out: Path, report: Path) -> None:
        out.write_bytes(b"\x08\x07")  # the first bytes of a model, then the disk was full

    scheduler = adapt_once_with_a_stand_in_child(tmp_path, monkeypatch, half_written, 1, lambda camera, path: None)
    assert scheduler.state("yard")["outcome"] == "failed"
    assert not list((tmp_path / "yard").glob("*.onnx")) and schedule.adapted_model(tmp_path / "yard") is None
    assert json.loads((tmp_path / "yard" / "adapted.json").read_text())["outcome"] == "failed"


def test_a_clock_that_was_ahead_does_not_hold_the_schedule(tmp_path):
    """Runs and frames recorded while the clock was a year ahead (then corrected by NTP): the year-ahead run
    no longer takes the day's budget, and the store's turnover since is seen."""
    from datetime import datetime, timezone

    from streamd.daemon import schedule
    from streamd.daemon.collect import STAMP
    from streamd.config import AdaptConfig

    def name(t: float) -> str:
        return datetime.fromtimestamp(t, timezone.utc).strftime(STAMP) + ".jpg"

    now = 1_800_000_000.0
    ledger = schedule.CpuLedger(tmp_path / "ledger.json")
    ledger.add(3600.0, now=now + 365 * 86400)  # a run recorded under the wrong clock
    ledger.add(60.0, now=now - 3600)  # and one an hour ago
    assert ledger.spent(now) == 60.0
    store = tmp_path / "yard"
    store.mkdir()
    for hours in range(0, 24, 2):  # today's frames, named by the right clock
        (store / name(now - hours * 3600)).write_bytes(b"")
    scheduler = schedule.AdaptationScheduler(tmp_path, AdaptConfig(min_frames=5, min_span_h=1.0), lambda: ["yard"],
                                             lambda camera, path: None)
    scheduler._last["yard"] = {"outcome": "kept", "newest_frame": name(now + 365 * 86400),
                               "finished": now + 365 * 86400}
    assert "newer than its last run" in (scheduler.why_due("yard", now=now) or "")
    # Frames stored while the clock was ahead sort last: they are not "new" after the next run, which marks
    # the newest frame of the right clock as seen, so the camera is not due again and again
    for days in (1, 2):
        (store / name(now + days * 86400)).write_bytes(b"")
    scheduler._last["yard"] = {"outcome": "kept", "newest_frame": name(now), "finished": now}
    assert scheduler.why_due("yard", now=now + 60) is None
    # and a run recorded as finished in the clock's future does not put off `every_h` for as long
    hourly = schedule.AdaptationScheduler(tmp_path, AdaptConfig(min_frames=5, min_span_h=1.0, auto=False, every_h=1.0),
                                          lambda: ["yard"], lambda camera, path: None)
    hourly._last["yard"] = {"outcome": "kept", "newest_frame": name(now), "finished": now + 365 * 86400}
    assert "more than 1 h old" in (hourly.why_due("yard", now=now) or "")


def process_running(pid: int) -> bool:
    """Whether the process is there and not a zombie (a killed orphan may stay one until its new parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)


def scratch(folder: Path) -> list[Path]:
    """The scratch folders of adaptation runs in a camera's folder."""
    return [p for p in folder.glob(".*") if p.is_dir()]


def test_a_run_stopped_with_the_daemon_is_charged_from_its_rusage_and_leaves_nothing(tmp_path):
    """The real child, `streamd adapt` as the scheduler starts it, killed (its process group, SIGKILL) while it
    trains: its scratch folder, with the weights and whatever it was writing, is removed, and the CPU time
    its rusage reports is charged to the daily ledger."""
    from streamd.daemon.schedule import RUNNING, child_cpu_seconds

    state = tmp_path / "state"
    fill_store(state / "yard", 8, T0, 3600)
    scheduler = scheduler_for(state, ["yard"], auto=False, min_frames=8, budget_minutes=2.0, threads=1)
    scheduler.start()
    try:
        assert scheduler.request("yard") == "queued"
        child = child_of(os.getpid(), "adapt")
        wait_until(lambda: scratch(state / "yard"), 120, "the run's scratch folder")
        wait_until(lambda: child_cpu_seconds(child) > 1.0, 60, "a second of the child's CPU time")
        used = child_cpu_seconds(child)
    finally:
        scheduler.stop()
    assert not process_running(child)
    assert scratch(state / "yard") == [] and not (state / RUNNING).exists()
    assert scheduler.ledger.spent() >= used and scheduler.ledger.spent() == pytest.approx(scheduler.cpu_seconds)
    assert json.loads((state / "adapt-cpu.json").read_text())[0][1] == pytest.approx(scheduler.cpu_seconds)


def test_a_daemon_killed_mid_run_ends_its_run_and_the_next_start_charges_and_tidies_it(tmp_path):
    """The daemon SIGKILLed (outside systemd's control group, an OOM kill) while the real child trains: the child
    ends with it (PR_SET_PDEATHSIG, set by `streamd adapt --parent`), and nobody is left to reap it and read
    its rusage. The next start charges the CPU time noted while it ran and removes its scratch folder."""
    import signal
    import subprocess
    import sys

    from streamd.daemon.schedule import RUNNING

    state = tmp_path / "state"
    fill_store(state / "yard", 8, T0, 3600)
    daemon = ("import sys, time\nfrom pathlib import Path\nfrom tests.test_adapt import scheduler_for\n"
              "s = scheduler_for(Path(sys.argv[1]), ['yard'], auto=False, min_frames=8, budget_minutes=2.0, threads=1)\n"
              "s.start()\ns.request('yard')\ntime.sleep(300)\n")
    parent = subprocess.Popen([sys.executable, "-c", daemon, str(state)], cwd=ROOT)
    try:
        child = child_of(parent.pid, "adapt")
        noted = lambda: json.loads((state / RUNNING).read_text())["cpu_seconds"]  # noqa: E731
        wait_until(lambda: scratch(state / "yard") and (state / RUNNING).exists() and noted() > 0, 120,
                   "the run's scratch folder and CPU time noted")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        charged = noted()
        wait_until(lambda: not process_running(child), 10, "the child's end with its daemon")
    finally:
        parent.kill()
        if "child" in locals() and process_running(child):  # a child that outlived its daemon must not run on
            os.kill(child, signal.SIGKILL)
    assert scratch(state / "yard")  # what the killed run left
    scheduler = scheduler_for(state, ["yard"], auto=False)
    scheduler.start()
    try:
        wait_until(lambda: not scratch(state / "yard") and not (state / RUNNING).exists(), 20, "the tidying")
    finally:
        scheduler.stop()
    assert scheduler.ledger.spent() == pytest.approx(charged) and charged > 0
