"""The recipes of docs/integrations.md that run without outside servers: the tracker example fed by
streamd.client, and OpenCV reading streamd's RTSP output, on a real gray camera."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import cv2
import numpy as np

from tests.conftest import ROOT, free_port
from tests.test_operations import start_streamd, stop_streamd


def chroma(bgr: np.ndarray) -> float:
    """Mean distance of the chroma from neutral: ~0 for gray."""
    ycc = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    return float(np.abs(ycc[..., 1:] - 128).mean())


def read_rtsp(url: str, frames: int, timeout: float = 60.0) -> list[np.ndarray]:
    """Frames read by OpenCV (its FFmpeg backend) as docs/integrations.md shows; retried while the
    output is not yet published."""
    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;udp"  # this test server plays over UDP only
    end = time.monotonic() + timeout
    got: list[np.ndarray] = []
    while time.monotonic() < end and len(got) < frames:
        capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        while capture.isOpened() and len(got) < frames:
            ok, image = capture.read()
            if not ok:
                break
            got.append(image)
        capture.release()
        if len(got) < frames:
            time.sleep(1.0)
    return got


def test_tracker_and_opencv_on_streamd_output(rtsp_servers, publishers):
    """A gray camera into streamd; its colour out over ZeroMQ to examples/track.py and over RTSP to OpenCV."""
    camera_server, output_server = rtsp_servers(), rtsp_servers()
    publishers(camera_server.publish_url("gate"), mode="gray", seconds=120)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = start_streamd("run", "--source", f"gate={camera_server.play_url('gate')}", "--rtsp-transport", "udp",
                         "--zmq", endpoint, "--rtsp-out", output_server.publish_url("gate"))
    try:
        track = subprocess.run([sys.executable, "examples/track.py", "--endpoint", endpoint, "--frames", "40",
                                "--timeout", "60", "gate"], cwd=ROOT, capture_output=True, text=True, timeout=180,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert track.returncode == 0, track.stderr + stop_streamd(proc)
        lines = [json.loads(line) for line in track.stdout.splitlines()]
        assert len(lines) == 40
        seqs = [line["seq"] for line in lines]
        assert seqs == sorted(set(seqs)), seqs  # every frame once, in order
        assert all(line["camera"] == "gate" and line["colorized"] and line["model"] for line in lines)
        # streamd's colour reached the tracker: the gray camera's frames have saturation now
        assert np.median([line["saturation"] for line in lines]) > 0.05, lines[-1]
        # the panning camera moves: blobs are found, and tracks last over several frames
        tracks = [t for line in lines for t in line["tracks"]]
        assert tracks and max(t["frames"] for t in tracks) >= 3, lines[-5:]
        assert all(0 <= t["hue"] < 360 and 0 <= t["saturation"] <= 1 for t in tracks)

        frames = read_rtsp(output_server.play_url("gate"), frames=10)
        assert len(frames) == 10, stop_streamd(proc)
        assert frames[-1].shape == (240, 320, 3)
        assert np.median([chroma(f) for f in frames]) > 2.0  # colour out, from a gray camera
    finally:
        log = stop_streamd(proc)
    assert proc.returncode == 0, log
