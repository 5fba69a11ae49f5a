"""Recordings and encoders on real processes, streams and files: segments that survive SIGKILL and restarts,
retention, keyframes by time, NVENC falling back, RTSP outputs that lose their server or hang, `streamd check`
against the shipped unit's sandbox."""
from __future__ import annotations

import hashlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from streamd import config as cfgmod
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.recording import RetentionSweeper, reserve, segment_key, sweep
from streamd.daemon.systemd import unit_settings
from tests.conftest import ROOT, write_video
from tests.test_operations import free_port, http_get, metric_value, start_streamd, stop_streamd, write_config

UNIT = ROOT / "systemd" / "streamd@.service"
SHARD_UNIT = ROOT / "systemd" / "streamd-shard@.service"


def unit_seconds(key: str) -> float:
    """A time-out of the shipped unit (WatchdogSec=, TimeoutStopSec=), in seconds."""
    match = re.search(rf"^{key}=(\d+)s?$", UNIT.read_text(), re.M)
    assert match, f"{key}= is not in {UNIT}"
    return float(match[1])


def recorded(folder: Path) -> list[Path]:
    """The segments in a camera's recording folder, oldest first (by the start time in their names)."""
    return sorted((p for p in folder.glob("*.mp4") if segment_key(p.name)), key=lambda p: segment_key(p.name))


def read_back(path: Path) -> list[tuple[int, int, float, bool]]:
    """(width, height, time, keyframe) of every frame a separate decoder (PyAV) gets out of the file."""
    with av.open(str(path)) as container:
        return [(f.width, f.height, float(f.time), f.key_frame) for f in container.decode(video=0)]


def keyframe_gaps(frames: list[tuple[int, int, float, bool]]) -> list[float]:
    times = [t for _, _, t, key in frames if key]
    return [b - a for a, b in zip(times, times[1:])]


def wait_until(condition, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:g} s" + (f"\n{stop_streamd(proc)}" if proc else ""))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sigkill_mid_segment_leaves_every_segment_readable_and_a_restart_overwrites_nothing(
        rtsp_server, publishers, tmp_path):
    """`streamd run` records a real RTSP camera in 2 s segments and is killed with SIGKILL in the middle of
    one: every segment, the one cut short included, decodes with a separate decoder, with a keyframe every
    second. A restart into the same folder leaves every one of them as it was and adds new ones."""
    publishers(rtsp_server.publish_url("gate"), mode="colour", seconds=120)
    folder = tmp_path / "rec"
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[zmq]\nendpoint = ""\n[[camera]]\nname = "gate"\nurl = "{rtsp_server.play_url("gate")}"\n'
                   f'transport = "udp"\nfile_out = "{folder}"\nfile_segment_s = 2.0\n')
    proc = start_streamd("run", "-c", str(cfg))
    gate = folder / "gate"
    # Killed once three segments exist and the newest holds a fragment beyond its header
    wait_until(lambda: len(recorded(gate)) >= 3 and recorded(gate)[-1].stat().st_size > 20_000, 90,
               "three segments, the last one with a fragment", proc)
    proc.kill()
    proc.wait(10)
    killed = recorded(gate)
    for path in killed:
        frames = read_back(path)
        assert len(frames) > 0, f"{path.name} does not decode"
        assert {(w, h) for w, h, _, _ in frames} == {(320, 240)}
        assert all(0.5 < gap < 1.6 for gap in keyframe_gaps(frames)), (path.name, keyframe_gaps(frames))
    before = {path: digest(path) for path in killed}

    proc = start_streamd("run", "-c", str(cfg))
    try:
        wait_until(lambda: len(recorded(gate)) >= len(killed) + 2, 60, "new segments after the restart", proc)
    finally:
        log = stop_streamd(proc)
    assert proc.returncode == 0, log
    assert {path: digest(path) for path in killed} == before  # not one byte of the earlier segments changed
    for path in recorded(gate)[len(killed):]:  # the new ones, the one SIGTERM closed included
        assert len(read_back(path)) > 0, f"{path.name} does not decode"


# A recorder in a process of its own: 25 fps of frame time (a small square moving over a flat picture, a few
# KB a second: FFmpeg's 32 KiB I/O buffer alone would hold all of it), written as fast as it encodes; then
# it says how much it wrote and waits to be killed.
RECORDER = """
import sys, time
import numpy as np
from streamd.frame import Frame
from streamd.daemon.recording import Recorder
folder, count = sys.argv[1], int(sys.argv[2])
recorder = Recorder(folder, "gate", segment_s=3600.0, encoder="libx264")
start = 1_800_000_000.0  # on the hour: the segment lasts the hour
for i in range(count):
    bgr = np.full((240, 320, 3), 90, np.uint8)
    bgr[100:140, 4 * i % 280:4 * i % 280 + 40] = (40, 160, 220)
    recorder.write(Frame.from_bgr("gate", i, bgr, capture_time=start + i / 25, arrival=1000.0 + i / 25))
print(recorder.path, flush=True)
time.sleep(120)
"""


def test_a_recording_killed_mid_segment_is_readable_up_to_its_last_second(tmp_path):
    """The promise of a fragmented segment: a recorder killed (SIGKILL) mid-segment leaves the segment readable
    by a separate decoder up to the last keyframe it made, at most a second (keyframe_interval_s) before the
    last frame it took. Frames are timed by frame time, so what was written at the kill is known exactly."""
    count = 112  # 4.48 s: keyframes at 0, 1, 2, 3 and 4 s; the fragments up to 4 s are complete
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(tmp_path), str(count)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        segment = Path(proc.stdout.readline().strip())  # every frame has gone through the encoder
        proc.kill()
        proc.wait(10)
    finally:
        proc.kill()
    try:
        frames = read_back(segment)
    except av.error.InvalidDataError:  # not even the header reached the file
        frames = []
    last = (count - 1) / 25
    assert frames and frames[-1][2] >= last - 1.0 - 1 / 25, (len(frames), frames[-1:] or None, segment.stat().st_size)
    assert [t for _, _, t, _ in frames] == pytest.approx([i / 25 for i in range(len(frames))], abs=0.002)


def run_until_finished(cameras: list[dict], timeout: float = 60.0, **sections) -> Pipeline:
    pipeline = Pipeline(cfgmod.parse({"camera": cameras, "zmq": {"endpoint": ""}, **sections}))
    pipeline.start()
    end = time.monotonic() + timeout
    try:
        while not pipeline.finished() and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        pipeline.stop()
    return pipeline


def test_keyframes_come_every_second_of_a_5_fps_camera(tmp_path):
    """Keyframe spacing is a time: a 5 fps camera gets one a second (5 frames), not one every 25 frames."""
    clip = write_video(tmp_path / "slow.mp4", "colour", seconds=4, fps=5)
    run_until_finished([{"name": "slow", "url": str(clip), "file_out": str(tmp_path / "rec")}])
    segments = recorded(tmp_path / "rec" / "slow")
    frames = [read_back(path) for path in segments]
    assert sum(len(f) for f in frames) >= 15  # 20 frames sent; the output may drop one now and then
    gaps = [gap for f in frames for gap in keyframe_gaps(f)]
    assert len(gaps) >= 2 and all(0.7 < gap < 1.5 for gap in gaps), gaps


def test_reserve_never_reuses_a_name(tmp_path):
    start = 1_796_000_000.0
    first = reserve(tmp_path, start)
    first.write_bytes(b"an earlier segment")
    second, third = reserve(tmp_path, start), reserve(tmp_path, start)
    assert first.name == time.strftime("%Y-%m-%dT%H-%M-%SZ.mp4", time.gmtime(start))
    assert (second.name, third.name) == (first.stem + "-1.mp4", first.stem + "-2.mp4")
    assert first.read_bytes() == b"an earlier segment"
    assert [p.name for p in recorded(tmp_path)] == [first.name, second.name, third.name]


def test_retention_deletes_by_age_then_by_size_and_nothing_else(tmp_path):
    """As segments close, the camera's segments older than file_retain_days go, then the oldest until the
    folder fits file_retain_gb; files that are not segments stay, as do other cameras' folders."""
    gate, other = tmp_path / "rec" / "gate", tmp_path / "rec" / "yard"
    gate.mkdir(parents=True)
    other.mkdir()
    now = time.time()

    def old_segment(folder: Path, age_s: float, size: int) -> Path:
        path = reserve(folder, now - age_s)
        path.write_bytes(b"\0" * size)
        return path

    too_old = old_segment(gate, 8 * 86400, 1000)
    oldest_recent, newer_recent = old_segment(gate, 3600, 2_500_000), old_segment(gate, 1800, 1_500_000)
    other_camera = old_segment(other, 3 * 86400, 1000)  # not configured: the root's limits, 7 days and 3 MB
    notes = gate / "notes.txt"
    notes.write_text("not a segment")
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=3)
    run_until_finished([{"name": "gate", "url": str(clip), "file_out": str(tmp_path / "rec"), "file_segment_s": 1.0,
                         "file_retain_days": 7.0, "file_retain_gb": 0.003}])  # 3 MB; 3 s of this clip are ~0.4
    left = recorded(gate)
    assert not too_old.exists() and not oldest_recent.exists()
    assert newer_recent in left and len(left) >= 3  # the new segments, beside the newest of the old ones
    assert sum(p.stat().st_size for p in left) <= 3_000_000
    assert notes.exists() and other_camera.exists()


def segment(folder: Path, age_s: float, size: int = 1000) -> Path:
    """A segment file of `size` bytes that started `age_s` ago."""
    folder.mkdir(parents=True, exist_ok=True)
    path = reserve(folder, time.time() - age_s)
    path.write_bytes(b"\0" * size)
    return path


def test_the_sweep_covers_every_camera_folder_and_nothing_outside_the_layout(tmp_path):
    """Each camera folder under a recording root: a configured camera's under its own limits, a folder of a
    camera that is no longer configured under the root's most lenient limits. Files that are not segments,
    deeper folders, files beside the camera folders and what symbolic links point to are left alone."""
    rec, outside = tmp_path / "rec", tmp_path / "elsewhere"
    gate_old, gate_kept = segment(rec / "gate", 3 * 86400), segment(rec / "gate", 86400)
    gone_old, gone_kept = segment(rec / "gone", 9 * 86400), segment(rec / "gone", 6 * 86400)
    kept = [gate_kept, gone_kept,
            segment(rec / "gone" / "nested", 30 * 86400),  # below a camera folder: not the layout
            segment(rec, 30 * 86400),  # beside the camera folders
            segment(outside, 30 * 86400)]
    (rec / "gone" / "notes.txt").write_text("not a segment")
    (rec / "linked").symlink_to(outside, target_is_directory=True)
    (rec / "gone" / gone_old.name.replace(".mp4", "-9.mp4")).symlink_to(kept[-1])
    cameras = cfgmod.parse({"camera": [
        {"name": "gate", "url": "a.mp4", "file_out": str(rec), "file_retain_days": 2.0},
        {"name": "yard", "url": "b.mp4", "file_out": str(rec), "file_retain_days": 7.0},  # the root's most lenient
        {"name": "dock", "url": "c.mp4", "file_out": str(tmp_path / "other-root"), "file_retain_days": 30.0}]}).cameras
    deleted = sweep(cameras)
    assert deleted == {rec / "gate": [gate_old], rec / "gone": [gone_old]}
    assert not gate_old.exists() and not gone_old.exists()
    assert all(p.exists() for p in kept) and (rec / "gone" / "notes.txt").exists()
    assert (rec / "linked").is_symlink() and len(list((rec / "gone").glob("*-9.mp4"))) == 1


def test_the_sweep_runs_at_start_up_and_on_its_timer(tmp_path):
    """A camera that was removed from the config (or is down: no segment of it closes) still loses its expired
    footage: at once when the pipeline starts, and later on the sweeper's timer, without any segment closing."""
    rec = tmp_path / "rec"
    removed_old, removed_recent = segment(rec / "removed", 10 * 86400), segment(rec / "removed", 86400)
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=1)
    pipeline = Pipeline(cfgmod.parse({"camera": [{"name": "gate", "url": str(clip), "file_out": str(rec),
                                                  "file_retain_days": 7.0}], "zmq": {"endpoint": ""}}))
    pipeline.start()
    try:
        wait_until(lambda: not removed_old.exists(), 20, "the start-up sweep")
    finally:
        pipeline.stop()
    assert removed_recent.exists()

    sweeper = RetentionSweeper(lambda: pipeline.config.cameras, every_s=0.2)
    sweeper.start()
    try:
        wait_until(lambda: sweeper.sweeps >= 1, 10, "the sweeper's first sweep")  # what expires now is the timer's
        expired_later = segment(rec / "removed", 8 * 86400)
        wait_until(lambda: not expired_later.exists(), 10, "a sweep on the timer")
    finally:
        sweeper.stop()
    assert removed_recent.exists()


def test_footage_is_for_the_services_user_and_group_only(tmp_path):
    """Recording segments and stored day frames are 0640, the folders made for them (and their parents) 0750,
    under a umask of 0: the modes are streamd's own, not the umask's. The units set UMask=0027 and
    StateDirectoryMode=0750 for what systemd and libraries create."""
    import os
    import stat

    clip = write_video(tmp_path / "c.mp4", "colour", seconds=2)
    rec, state = tmp_path / "disk" / "rec", tmp_path / "var" / "state"
    previous = os.umask(0)
    try:
        run_until_finished([{"name": "gate", "url": str(clip), "file_out": str(rec), "file_segment_s": 1.0}],
                           adapt={"state_dir": str(state), "collect_every_s": 0.0, "min_change": 0.0})
    finally:
        os.umask(previous)
    segments, frames = recorded(rec / "gate"), list((state / "gate").glob("*.jpg"))
    assert segments and frames
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in segments + frames} == {"0o640"}
    folders = [tmp_path / "disk", rec, rec / "gate", tmp_path / "var", state, state / "gate"]
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {"0o750"}
    for unit in (UNIT, SHARD_UNIT):
        settings = unit_settings([unit.read_text()])
        assert settings["UMask"] == ["0027"] and settings["StateDirectoryMode"] == ["0750"], unit


def test_retention_goes_on_while_writes_fail(tmp_path):
    """A disk that refuses writes (here the process's file size limit, RLIMIT_FSIZE) means no segment closes;
    the camera's expired segments are still deleted, so a full disk recovers."""
    rec = tmp_path / "rec"
    (rec / "gate").mkdir(parents=True)
    expired = reserve(rec / "gate", time.time() - 30 * 86400)
    expired.write_bytes(b"\0" * 1000)
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=2)
    cameras = [{"name": "gate", "url": str(clip), "file_out": str(rec), "file_retain_days": 7.0}]
    script = ("import resource, signal\n"
              "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (4000, 4000))\n"
              "from tests.test_recordings import run_until_finished\n"
              f"run_until_finished({cameras!r})\n")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "File too large" in run.stderr  # the writes did fail
    assert not expired.exists()
    assert all(p.stat().st_size <= 4000 for p in recorded(rec / "gate"))


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="this host has an NVIDIA GPU: NVENC may well open")
def test_an_encoder_that_does_not_open_falls_back_to_libx264_once_per_writer(tmp_path):
    """encoder = "nvenc" where NVENC cannot open (no NVIDIA driver, as in CI; on a GPU host, all of its
    encoder sessions taken): the recording goes on with libx264, the fallback is logged once for the
    writer however many segments it opens, and counted in /metrics."""
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=2)
    http = free_port()
    cfg = tmp_path / "c.toml"
    write_config(cfg, "", http,
                 f'[[camera]]\nname = "gate"\n'
                 f'url = "{clip}"\nloop = true\nfile_out = "{tmp_path / "rec"}"\nfile_segment_s = 1.0\n'
                 f'encoder = "nvenc"\n')
    proc = start_streamd("run", "-c", str(cfg))
    gate = tmp_path / "rec" / "gate"
    try:
        wait_until(lambda: len(recorded(gate)) >= 4, 60, "four segments", proc)
        _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
    finally:
        log = stop_streamd(proc)
    assert metric_value(metrics, 'streamd_encoder_fallbacks_total{camera="gate"}') == 1
    assert log.count("the h264_nvenc encoder does not open") == 1, log
    for path in recorded(gate)[:3]:
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
        assert len(read_back(path)) > 0


class SilentPeer:
    """A TCP server that accepts connections and never answers: an RTSP server that hangs."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.port = self.socket.getsockname()[1]

    def close(self) -> None:
        self.socket.close()


def wait_for_log(proc: subprocess.Popen, text: str, timeout: float, after: int = 0) -> float:
    """Seconds until `text` appears in the daemon's log (past character `after`)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if text in Path(proc.log_path).read_text()[after:]:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout:g} s:\n{Path(proc.log_path).read_text()}")


def test_reload_and_stop_with_hung_rtsp_outputs_stay_within_the_units_time_outs(tmp_path):
    """Four cameras push to an RTSP server that accepts the connection and never answers. A reload that
    restarts all four ends well within the watchdog (the main loop pings at most every WatchdogSec/2, so
    a reload longer than that can get the service killed), and SIGTERM ends the process within the unit's
    TimeoutStopSec: outputs close in parallel under one deadline, each socket operation has a time-out."""
    peer = SilentPeer()
    clip = write_video(tmp_path / "c.mp4", "colour", seconds=2)
    cfg = tmp_path / "c.toml"

    def config(read_timeout: float) -> str:
        return '[zmq]\nendpoint = ""\n' + "".join(
            f'[[camera]]\nname = "cam{i}"\nurl = "{clip}"\nloop = true\nread_timeout_s = {read_timeout}\n'
            f'rtsp_out = "rtsp://127.0.0.1:{peer.port}/cam{i}"\n' for i in range(4))

    cfg.write_text(config(5.0))
    proc = start_streamd("run", "-c", str(cfg))
    try:
        for i in range(4):
            wait_for_log(proc, f"camera cam{i}: running", 60)
        time.sleep(2.0)  # the outputs are waiting on the silent peer by now
        cfg.write_text(config(6.0))  # every camera changed: all four restart
        mark = len(Path(proc.log_path).read_text())
        proc.send_signal(signal.SIGHUP)
        reload_s = wait_for_log(proc, "reload: ", 60, after=mark)
        time.sleep(1.0)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(unit_seconds("TimeoutStopSec") + 10)
        except subprocess.TimeoutExpired:
            pass
        stop_s = time.monotonic() - start
    finally:
        log = stop_streamd(proc) if proc.poll() is None else Path(proc.log_path).read_text()
        peer.close()
    assert "restarted cam0; restarted cam1; restarted cam2; restarted cam3" in log, log
    assert reload_s < unit_seconds("WatchdogSec") / 2, f"reload took {reload_s:.1f} s\n{log}"
    assert stop_s < unit_seconds("TimeoutStopSec") and proc.returncode == 0, f"stop took {stop_s:.1f} s\n{log}"
    print(f"reload {reload_s:.1f} s, stop {stop_s:.1f} s with four hung RTSP outputs")


def test_rtsp_output_that_loses_its_server_reconnects(rtsp_servers, publishers, tmp_path):
    """The RTSP server the colour stream is pushed to dies and comes back on the same ports: the output
    reconnects (counted in /metrics), and a separate client reads colour H.264 from it again."""
    source = rtsp_servers()
    publishers(source.publish_url("gate"), mode="colour", seconds=120)
    target = rtsp_servers()
    http = free_port()
    cfg = tmp_path / "c.toml"
    write_config(cfg, "", http,
                 f'[[camera]]\nname = "gate"\n'
                 f'url = "{source.play_url("gate")}"\ntransport = "udp"\n'
                 f'rtsp_out = "{target.publish_url("colour")}"\n')
    proc = start_streamd("run", "-c", str(cfg))

    def reconnects() -> float:
        return metric_value(http_get(f"http://127.0.0.1:{http}/metrics")[1],
                            'streamd_output_reconnects_total{camera="gate"}')

    try:
        wait_for_log(proc, "camera gate: publishing to", 60)
        assert reconnects() == 0
        target.stop()
        wait_until(lambda: reconnects() >= 1, 30, "a failed write counted as an output reconnect", proc)
        back = rtsp_servers(client_port=target.client_port, source_port=target.source_port)
        mark = len(Path(proc.log_path).read_text())
        wait_for_log(proc, "camera gate: publishing to", 60, after=mark)  # back-off: 0.5 s doubling, +-20 %
        container = av.open(back.play_url("colour"), options={"rtsp_transport": "udp"}, timeout=(10, 10))
        try:
            frames = [f for _, f in zip(range(5), container.decode(video=0))]
        finally:
            container.close()
        assert len(frames) == 5 and frames[0].width == 320
    finally:
        log = stop_streamd(proc)
    assert proc.returncode == 0, log


def check(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamd", "check", "-c", str(config), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def camera_config(path: Path, file_out: Path | str) -> Path:
    path.write_text(f'[zmq]\nendpoint = ""\n[[camera]]\nname = "gate"\nurl = "x.mp4"\nfile_out = "{file_out}"\n')
    return path


def test_check_warns_when_the_recording_limits_exceed_the_disk(tmp_path):
    """Two cameras that may keep 1 PB each cannot fit: the disk would fill before retention deleted anything."""
    cameras = "".join(f'[[camera]]\nname = "{name}"\nurl = "x.mp4"\nfile_out = "{tmp_path / "rec"}"\n'
                      f"file_retain_gb = 1000000\n" for name in ("gate", "yard"))
    (tmp_path / "big.toml").write_text(f'[zmq]\nendpoint = ""\n{cameras}')
    proc = check(tmp_path / "big.toml")
    assert proc.returncode == 0, proc.stderr  # a warning: the operator may know better (a disk to be grown)
    assert "warning: the recordings of gate, yard may take up to 2e+06 GB on the file system of" in proc.stderr
    assert "lower file_retain_gb" in proc.stderr
    proc = check(camera_config(tmp_path / "small.toml", tmp_path / "rec"))  # the default 50 GB
    if shutil.disk_usage(tmp_path).total > 50e9:
        assert "warning" not in proc.stderr


def test_check_reports_recording_folders_the_service_cannot_write(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    proc = check(camera_config(tmp_path / "main.toml", blocker / "rec"))
    assert proc.returncode == 2 and "camera[0].file_out" in proc.stderr and "is not a folder" in proc.stderr
    proc = check(camera_config(tmp_path / "main.toml", tmp_path / "new" / "rec"))  # created at the first segment
    assert proc.returncode == 0, proc.stderr


def test_check_knows_the_shipped_units_sandbox(tmp_path):
    """Under the shipped unit (ProtectSystem=strict) only the directories systemd makes for the service and
    ReadWritePaths= are writable: `streamd check --unit` refuses any other recording folder, and says how
    to allow it; a drop-in's ReadWritePaths= does allow it."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / "streamd@.service"
    shutil.copy(UNIT, unit)
    elsewhere = tmp_path / "disk"
    elsewhere.mkdir()
    proc = check(camera_config(tmp_path / "main.toml", elsewhere), "--unit", str(unit))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "camera[0].file_out" in proc.stderr and "would not be writable by streamd@main" in proc.stderr
    assert f"ReadWritePaths={elsewhere}" in proc.stderr and "/var/lib/streamd-recordings/main" in proc.stderr

    proc = check(camera_config(tmp_path / "main.toml", "/var/lib/streamd-recordings/main"), "--unit", str(unit))
    assert proc.returncode == 0, proc.stderr  # systemd creates it for the service

    drop_ins = unit_dir / "streamd@main.service.d"
    drop_ins.mkdir()
    (drop_ins / "recordings.conf").write_text(f"[Service]\nReadWritePaths={elsewhere}\n")
    proc = check(camera_config(tmp_path / "main.toml", elsewhere), "--unit", str(unit))
    assert proc.returncode == 0, proc.stderr
    proc = check(camera_config(tmp_path / "other.toml", elsewhere), "--unit", str(unit))
    assert proc.returncode == 2, "the drop-in is for streamd@main only"


def test_the_shard_units_check_knows_its_own_sandbox(tmp_path):
    """streamd-shard@I runs /etc/streamd/fleet.toml, which every shard shares: its ExecStartPre (run here as
    the unit gives it) checks the recording folders against that unit and instance I, not streamd@fleet.
    The unit gives the fleet's recordings a place every shard can write, and a drop-in for all shards
    allows another folder."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    unit = unit_dir / "streamd-shard@.service"
    shutil.copy(SHARD_UNIT, unit)
    program, *args = unit_settings([unit.read_text()])["ExecStartPre"]
    assert program == "/usr/local/bin/streamd"
    fleet = tmp_path / "fleet.toml"

    def exec_start_pre(shard: int, file_out: Path | str) -> subprocess.CompletedProcess:
        camera_config(fleet, file_out)
        given = {"/etc/streamd/fleet.toml": str(fleet), "/etc/systemd/system/streamd-shard@.service": str(unit)}
        return subprocess.run([sys.executable, "-m", "streamd", *(given.get(a, a).replace("%i", str(shard))
                                                                   for a in args)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    for shard in (0, 1):
        proc = exec_start_pre(shard, "/var/lib/streamd-recordings/fleet")
        assert proc.returncode == 0 and f"checked against {unit}" in proc.stdout, proc.stdout + proc.stderr
    elsewhere = tmp_path / "disk"
    elsewhere.mkdir()
    proc = exec_start_pre(1, elsewhere)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "would not be writable by streamd-shard@1" in proc.stderr, proc.stderr
    assert "systemctl edit streamd-shard@1" in proc.stderr and "/var/lib/streamd-recordings/fleet" in proc.stderr
    drop_ins = unit_dir / "streamd-shard@.service.d"
    drop_ins.mkdir()
    (drop_ins / "recordings.conf").write_text(f"[Service]\nReadWritePaths={elsewhere}\n")
    for shard in (0, 1):
        proc = exec_start_pre(shard, elsewhere)
        assert proc.returncode == 0, proc.stderr


def test_check_reports_a_read_only_recording_folder(tmp_path):
    """A folder on a read-only mount (what ProtectSystem=strict makes of it): `streamd check`, run as the
    unit's ExecStartPre is, in the same mount namespace, refuses it."""
    folder = tmp_path / "rec"
    folder.mkdir()
    config = camera_config(tmp_path / "main.toml", folder)
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespaces here (unshare -m needs CAP_SYS_ADMIN)")
    script = (f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && "
              f"exec {sys.executable} -m streamd check -c {config}")
    proc = subprocess.run([unshare, "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"camera[0].file_out: {folder} is not writable" in proc.stderr


def test_the_cameras_encoders_share_the_cores(tmp_path):
    """Four recorded cameras in one process: each libx264 gets a share of the machine's cores, at least one
    thread, so that together they start no more encoding threads than there are cores (or cameras)."""
    import os

    from tests.test_pipeline import run_pipeline

    clip = write_video(tmp_path / "c.mp4", "gray", seconds=2)
    threads: dict[str, int] = {}

    def all_opened(pipeline: Pipeline) -> bool:
        for name, runtime in pipeline.cameras.items():
            stream = runtime.outputs.recording._writer._stream
            if stream is not None:
                threads[name] = stream.codec_context.thread_count
        return len(threads) == 4

    run_pipeline([{"name": f"cam{i}", "url": str(clip), "file_out": str(tmp_path / "rec"), "encoder": "libx264"}
                  for i in range(4)], seconds=60, until=all_opened)
    assert len(threads) == 4 and all(t >= 1 for t in threads.values()), threads
    assert sum(threads.values()) <= max(os.cpu_count() or 1, 4), threads
