"""`streamd demo`, as a new user runs it: a synthetic gray camera through the whole product, received over
ZeroMQ, recorded, and a side-by-side picture written."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np

from tests.conftest import ROOT, free_port
from tests.test_recordings import read_back, recorded


def test_the_demo_colorizes_publishes_records_and_writes_its_picture(tmp_path):
    out = tmp_path / "demo-out"
    run = subprocess.run([sys.executable, "-m", "streamd", "demo", "--seconds", "3", "--size", "320x192",
                          "--zmq", f"tcp://127.0.0.1:{free_port()}", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "frames received" in run.stdout and f"wrote the recording to {out / 'demo'}/" in run.stdout, run.stdout
    picture = cv2.imread(str(out / "demo.png"))
    assert picture.shape == (192, 3 * 320, 3)  # gray | colorized | original
    gray, colour, original = (picture[:, i * 320:(i + 1) * 320].astype(int) for i in range(3))
    assert np.abs(gray[..., 2] - gray[..., 0]).max() <= 1  # the gray panel is gray
    assert np.abs(colour[..., 2] - colour[..., 0]).mean() > 2.0  # the colorized one is not
    assert np.abs(original[..., 2] - original[..., 0]).mean() > 2.0
    segments = recorded(out / "demo")
    assert segments and sum(len(read_back(p)) for p in segments) >= 25  # most of 3 s at 25 fps
