"""The status page on real streams in a real browser, its snapshots and API, the listener's token, and the
page's files in an installed package."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque

import cv2
import numpy as np
import pytest
from skimage import data

from streamd import config as cfgmod
from streamd.tools.adapt import AdaptReport, Scores
from streamd.frame import Frame
from streamd.colour.reference import build
from streamd.daemon.source import SyntheticCamera
from streamd.daemon.status import Snapshots, rate
from tests.browser import Browser
from tests.conftest import ROOT, free_port
from tests.test_operations import start_streamd, stop_streamd

TOKEN = "page-test+token/0123456789abcdef="  # as `openssl rand -base64` makes them: + and / and =
SECRET = "hunter2secret"


def request(url: str, token: str | None = TOKEN, method: str = "GET", bearer: bool = True) -> tuple[int, dict, bytes]:
    """(status, headers, body); the token as a Bearer header (or not at all). Status 0: nothing listens."""
    headers = {"Authorization": f"Bearer {token}"} if token and bearer else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers, method=method), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except urllib.error.URLError:
        return 0, {}, b""


def chroma_spread(jpeg: bytes) -> float:
    """Mean absolute deviation of the picture's chroma from neutral: ~0 for gray, well above for colour."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None, "not a JPEG"
    ycc = cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    return float(np.abs(ycc[..., 1:] - 128).mean())


def cameras(base: str) -> dict[str, dict]:
    status, _, body = request(f"{base}/api/cameras")
    assert status == 200, body
    return {c["name"]: c for c in json.loads(body)["cameras"]}


def wait_until(check, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    return None


def card_values(browser: Browser) -> dict:
    """What the page shows, per card, read from its DOM."""
    return browser.evaluate("""Object.fromEntries([...document.querySelectorAll('article.card')].map(card => [
        card.dataset.camera, {
          state: card.dataset.state,
          text: Object.fromEntries(['.state', '.daynight', '.fps', '.latency', '.dropped', '.model', '.adaptation',
                                    '.adapt-reply', '.reference'].map(s => [s, card.querySelector(s).textContent])),
          reference: {shown: !card.querySelector('.day-reference').hidden,
                      loaded: card.querySelector('img.reference').dataset.loaded || null},
          ...Object.fromEntries(['input', 'output'].map(w => [w, {
            seq: card.querySelector('img.' + w).dataset.seq || null,
            loaded: card.querySelector('img.' + w).dataset.loaded || null}])),
        }]))""")


def test_status_page_in_a_browser(rtsp_server, publishers, tmp_path):
    """A gray (night) and a colour (day) camera on a real RTSP server, `streamd run` with the page behind a
    token (with a '+', which the page's URL carries as itself), and headless Chromium: the cards, pictures that
    refresh, the scores of the night camera's last adaptation, the adaptation button, a screenshot."""
    publishers(rtsp_server.publish_url("night"), mode="gray", seconds=180)
    publishers(rtsp_server.publish_url("day"), mode="colour", seconds=180)
    http = free_port()
    base = f"http://127.0.0.1:{http}"
    camera = '[[camera]]\nname = "{}"\nurl = "{}"\ntransport = "udp"\n'
    secret_url = rtsp_server.play_url("night").replace("rtsp://", f"rtsp://viewer:{SECRET}@")
    config = tmp_path / "streamd.toml"
    report = AdaptReport(30, 20, 400, 240.0, "streamd-base", Scores(0.812, 23.25, 9.0), Scores(0.875, 24.5, 3.0),
                         Scores(0.5, 22.0, 5.0), True, "night.onnx", None)
    (tmp_path / "state" / "night").mkdir(parents=True)  # the night camera's last run, as the scheduler records it
    (tmp_path / "state" / "night" / "adapted.json").write_text(json.dumps(
        {"outcome": "kept", "detail": "night.onnx", "finished": time.time() - 3600, "report": dataclasses.asdict(report)}))
    # the night camera's day reference, given by file: of another view (it never fits these photos)
    reference = tmp_path / "night-reference.npz"
    build([cv2.resize(data.hubble_deep_field(), (320, 240), interpolation=cv2.INTER_AREA)] * 8).save(reference)
    config.write_text(f'[zmq]\nendpoint = ""\n[http]\nlisten = "127.0.0.1:{http}"\ntoken = "{TOKEN}"\n'
                      f'[adapt]\nstate_dir = "{tmp_path / "state"}"\n'
                      + camera.format("night", secret_url) + f'reference_file = "{reference}"\n'
                      + camera.format("day", rtsp_server.play_url("day")))
    proc = start_streamd("run", "-c", str(config), "--report-every", "2")
    browser = None
    try:
        flowing = lambda: proc.poll() is None and request(f"{base}/api/cameras")[0] == 200 and all(
            c["seq"]["output"] is not None for c in cameras(base).values()) and len(cameras(base)) == 2
        assert wait_until(flowing), stop_streamd(proc)

        # Nobody has looked yet: no picture was encoded on the frame path
        _, _, metrics = request(f"{base}/metrics")
        assert "streamd_snapshot_encodes_total{" not in metrics.decode()

        # The token: wanted everywhere but /healthz and the page's own files; header or query
        assert request(f"{base}/api/cameras", token=None)[0] == 401
        assert request(f"{base}/api/cameras", token="page-test-token-wrong-guess-0000")[0] == 401
        assert request(f"{base}/api/cameras?token={TOKEN}", bearer=False)[0] == 200
        assert request(f"{base}/metrics", token=None)[0] == 401
        assert request(f"{base}/snapshot/night.jpg", token=None)[0] == 401
        assert request(f"{base}/adapt/day", token=None, method="POST")[0] == 401
        assert request(f"{base}/healthz", token=None)[0] in (200, 503)
        assert request(f"{base}/", token=None)[0] == 200
        assert request(f"{base}/static/status.js", token=None)[0] == 200

        # The API: states, day and night, models; the URL only redacted
        status, _, body = request(f"{base}/api/cameras")
        assert SECRET not in body.decode() and "viewer" not in body.decode()
        doc = cameras(base)
        assert doc["night"]["source"].startswith("rtsp://***@")
        assert wait_until(lambda: cameras(base)["night"]["daynight"] == "night" and cameras(base)["day"]["daynight"] == "day")
        assert {c["model"]["kind"] for c in doc.values()} == {"generic"}

        # Snapshots: the night camera's output is colour, its input gray; the day camera's output is its own colour
        status, headers, output = request(f"{base}/snapshot/night.jpg?width=160")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["X-Frame-Seq"].isdigit()
        assert cv2.imdecode(np.frombuffer(output, np.uint8), cv2.IMREAD_COLOR).shape[1] == 160
        status, _, gray = request(f"{base}/snapshot/night.jpg?input=1")
        assert status == 200 and chroma_spread(gray) < 1.0 < chroma_spread(output), (chroma_spread(gray), chroma_spread(output))
        assert chroma_spread(request(f"{base}/snapshot/day.jpg")[2]) > 3.0
        for name in ("nope", "..%2F..%2Fetc%2Fpasswd", "night%00", "NIGHT"):
            assert request(f"{base}/snapshot/{name}.jpg")[0] == 404, name
        assert request(f"{base}/snapshot/night.jpg?width=wide")[0] == 400

        browser = Browser(f"{base}/?token={TOKEN}")
        loaded = lambda: (lambda v: len(v) == 2 and all(c["output"]["loaded"] == "yes" and c["input"]["loaded"] == "yes"
                                                      for c in v.values()) and v)(card_values(browser))
        first = wait_until(loaded, timeout=30)
        assert first, card_values(browser)
        assert first["night"]["state"] == first["day"]["state"] == "running"
        assert first["night"]["text"][".daynight"] == "night: colorizing"
        assert first["day"]["text"][".daynight"] == "day: passing through"
        for card in first.values():
            assert card["text"][".model"].startswith("generic: streamd-base"), card
            assert re.fullmatch(r"[\d.]+ in, [\d.]+ out", card["text"][".fps"]), card
            assert re.fullmatch(r"\d+ of \d+", card["text"][".dropped"]), card
        assert first["day"]["text"][".adaptation"] == "never run", first["day"]
        # the night camera's reference as a picture, and what it is; the day camera has none yet
        shown = wait_until(lambda: (lambda v: v["night"]["reference"]["loaded"] == "yes" and v)(card_values(browser)))
        assert shown and shown["night"]["reference"]["shown"] and not shown["day"]["reference"]["shown"], shown
        assert re.fullmatch(r"8 day frames, \d+ min old; does not fit the view \(\d+ frames\): generic colour",
                            shown["night"]["text"][".reference"]), shown["night"]["text"]
        assert shown["day"]["text"][".reference"].startswith("none yet")
        assert request(f"{base}/reference/day.jpg")[0] == 404 and request(f"{base}/reference/night.jpg", token=None)[0] == 401
        night = first["night"]["text"][".adaptation"]  # the scores of the model it had to beat, and of its own
        assert night.startswith("kept ") and night.endswith("(PSNR 23.25 → 24.50 dB, AuC 0.812 → 0.875)"), night
        # The pictures refresh while the page stays open: later frames replace the first ones
        later = wait_until(lambda: (lambda v: all(int(v[n][w]["seq"]) > int(first[n][w]["seq"]) for n in v
                                                  for w in ("input", "output")) and v)(card_values(browser)), timeout=30)
        assert later, (first, card_values(browser))
        html = browser.evaluate("document.documentElement.outerHTML")
        assert SECRET not in html and "viewer:" not in html

        # The button asks for an adaptation; the card then shows its outcome (too few day frames stored yet)
        browser.evaluate("document.querySelector('article[data-camera=\"day\"] button.adapt').click(), true")
        reply = browser.wait_for("document.querySelector('article[data-camera=\"day\"] .adapt-reply').textContent"
                                 ".startsWith('adaptation') && document.querySelector('article[data-camera=\"day\"] "
                                 ".adapt-reply').textContent")
        assert reply in ("adaptation queued", "adaptation running", "adaptation already queued"), reply
        outcome = browser.wait_for("(t => t.startsWith('skipped') && t)(document.querySelector("
                                   "'article[data-camera=\"day\"] .adaptation').textContent)", timeout=30)
        assert outcome and "frames stored, 50 needed" in outcome, card_values(browser)

        shot = cv2.imread(str(browser.screenshot(tmp_path / "status-page.png")))
        assert shot is not None and shot.shape[:2] == (760, 1280)
        assert chroma_spread(cv2.imencode(".jpg", shot)[1].tobytes()) > 1.0  # the colour pictures are on it

        # Viewers cost encodes; the metric counts them
        _, _, metrics = request(f"{base}/metrics")
        encodes = re.search(r'streamd_snapshot_encodes_total\{camera="night"\} (\S+)', metrics.decode())
        assert encodes and float(encodes[1]) >= 2
    finally:
        if browser:
            browser.close()
        log = stop_streamd(proc)
    assert proc.returncode == 0, log
    assert SECRET not in log


def test_a_frame_is_encoded_once_however_many_viewers_ask():
    """Eight viewers of one frame at the same moment: one encode, one picture; a new frame: one more."""
    camera = SyntheticCamera((320, 240), 25.0)
    frames = [Frame.from_bgr("gate", i, camera.render(i)) for i in range(2)]
    running = {"gate"}
    snapshots = Snapshots(lambda: running)
    start = threading.Barrier(8)
    pictures: list[bytes] = []

    def viewer(frame: Frame) -> None:
        start.wait()
        pictures.append(snapshots.jpeg("gate", frame, False, 160))

    for frame in frames:
        threads = [threading.Thread(target=viewer, args=(frame,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert snapshots.encodes == {"gate": 2}
    assert len(set(pictures[:8])) == 1 and len(set(pictures[8:])) == 1 and pictures[0] != pictures[8]
    assert cv2.imdecode(np.frombuffer(pictures[0], np.uint8), cv2.IMREAD_COLOR).shape == (120, 160, 3)
    snapshots.jpeg("gate", frames[1], False, 0)  # another size of the same frame is another picture
    assert snapshots.encodes == {"gate": 3}
    running.discard("gate")  # a reload removed the camera: at the next scrape its series is gone
    assert not list(snapshots.collect())[0].samples and snapshots.encodes == {}


def test_frame_rates_come_from_the_recent_frames():
    steady = deque(1000.0 + i / 25 for i in range(200))  # 25 fps for 8 s
    assert rate(steady, now=steady[-1] + 0.01) == 25.0
    bursts = deque(1000.0 + (i // 5) * 0.2 + (i % 5) * 0.001 for i in range(200))  # 5 at once, 5 times a second
    assert 24.0 <= rate(bursts, now=bursts[-1] + 0.1) <= 26.0
    assert rate(steady, now=steady[-1] + 3.0) == 0.0  # gone quiet
    assert rate(deque([5.0]), now=5.1) == 0.0


@pytest.mark.parametrize("http,key", [
    ({"listen": "0.0.0.0:9090"}, "http.token"),  # off localhost without a token
    ({"listen": "192.0.2.1:9090"}, "http.token"),
    ({"listen": "camera-host:9090"}, "http.token"),  # a name may resolve to anything
    ({"listen": "0.0.0.0:9090", "token": "short"}, "http.token"),
    ({"listen": "127.0.0.1:9090", "token": "with spaces in the middle!!"}, "http.token"),
])
def test_config_refuses_an_open_listener_without_a_good_token(http, key):
    with pytest.raises(cfgmod.ConfigError, match=re.escape(key)):
        cfgmod.parse({"camera": [{"name": "a", "url": "x.mp4"}], "http": http})


def test_config_takes_local_listeners_and_tokens():
    for http in ({"listen": "127.0.0.1:9090"}, {"listen": "localhost:9090"}, {"listen": "127.0.0.2:9090"},
                 {"listen": "0.0.0.0:9090", "token": TOKEN}, {"listen": "127.0.0.1:9090", "token": TOKEN}):
        assert cfgmod.parse({"camera": [{"name": "a", "url": "x.mp4"}], "http": http}).http.listen == http["listen"]


def test_check_refuses_a_network_listener_without_a_token(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[http]\nlisten = "0.0.0.0:9090"\n[[camera]]\nname = "a"\nurl = "rtsp://192.0.2.1/s"\n')
    check = subprocess.run([sys.executable, "-m", "streamd", "check", "-c", str(config)], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 2 and "http.token: required when http.listen is not on localhost" in check.stderr
    config.write_text(config.read_text().replace('9090"\n', f'9090"\ntoken = "{TOKEN}"\n', 1))
    check = subprocess.run([sys.executable, "-m", "streamd", "check", "-c", str(config)], cwd=ROOT,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert TOKEN not in check.stdout + check.stderr


def test_the_page_ships_in_the_package(tmp_path):
    """sdist, then a wheel built from it (what pip does), installed into a folder of its own: the page's
    files are there and streamd serves them from that install."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md", "streamd", "models"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    build = [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
             "print(getattr(b, sys.argv[1])(sys.argv[2]))"]
    sdist = subprocess.run([*build, "build_sdist", str(tmp_path)], cwd=source, capture_output=True, text=True)
    assert sdist.returncode == 0, sdist.stderr[-2000:]
    with tarfile.open(tmp_path / sdist.stdout.split()[-1]) as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    unpacked = next((tmp_path / "unpacked").iterdir())
    wheel = subprocess.run([*build, "build_wheel", str(tmp_path)], cwd=unpacked, capture_output=True, text=True)
    assert wheel.returncode == 0, wheel.stderr[-2000:]
    site = tmp_path / "site"
    with zipfile.ZipFile(tmp_path / wheel.stdout.split()[-1]) as archive:
        assert {"streamd/daemon/static/status.html", "streamd/daemon/static/status.js", "streamd/daemon/static/status.css"} <= set(archive.namelist())
        archive.extractall(site)
    served = subprocess.run(
        [sys.executable, "-c", "import streamd.daemon.status as s; page = s.StatusPage(None, lambda: 'running'); "
         "print(s.__file__); print(page.get('/', '').body.decode()); print(page.get('/static/status.js', '').code)"],
        cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert served.returncode == 0, served.stderr[-2000:]
    lines = served.stdout.splitlines()
    assert lines[0].startswith(str(site)) and "<title>streamd</title>" in served.stdout and lines[-1] == "200"


def test_a_client_that_sends_nothing_is_disconnected(tmp_path):
    """A connection that never sends its request (or goes half-open) is closed after the request time-out
    instead of holding a server thread and a file descriptor for good; other clients are served meanwhile."""
    import socket

    from streamd.daemon.health import HealthServer
    from streamd.daemon.pipeline import Pipeline

    pipeline = Pipeline(cfgmod.parse({"camera": [{"name": "a", "url": "synthetic:"}], "zmq": {"endpoint": ""}}))
    server = HealthServer(pipeline, pipeline.instruments.registry, port=free_port(), request_timeout_s=1.0)
    server.start()
    try:
        host, port = server.address
        silent = socket.create_connection((host, port), timeout=10)
        with urllib.request.urlopen(f"http://{host}:{port}/livez", timeout=5) as reply:
            assert reply.status in (200, 503)
        start = time.monotonic()
        assert silent.recv(1) == b""  # closed by the server
        assert time.monotonic() - start < 5
        silent.close()
    finally:
        server.stop()
