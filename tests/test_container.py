"""The container image: built from Debian's packages by scripts/build-image and run with podman.

The build takes minutes, so the image test runs only when asked or when what the image is made of changed:
  STREAMD_TEST_IMAGE=1 python -m pytest tests/test_container.py   always (fails if it cannot build or run)
  STREAMD_TEST_IMAGE=0                                              never
  unset: runs when the image's inputs (INPUTS) changed since the last image test that passed in this checkout
    (a hash in $STREAMD_IMAGE_CACHE, default /var/tmp/streamd-image); skipped where none has passed yet (a
    fresh clone, CI's), where $CI is set, and where root, debootstrap, buildah or podman are missing.
The checks that need no image (the names the manifests use) run every time.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INPUTS = ("Containerfile", "scripts/build-image", "deploy/container/streamd-livez", "setup.cfg", "pyproject.toml",
          "MANIFEST.in")
CACHE = Path(os.environ.get("STREAMD_IMAGE_CACHE", "/var/tmp/streamd-image"))
# one record per checkout: a fresh clone (CI's) has none, and worktrees with different inputs keep their own
STAMP = CACHE / f"image-test-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}.sha256"
TAG = "localhost/streamd-test:image-test"
HOW = ("run it as root with debootstrap, buildah, podman and runc installed: "
       "STREAMD_TEST_IMAGE=1 python -m pytest tests/test_container.py")


def version() -> str:
    return re.search(r"^version\s*=\s*(\S+)", (ROOT / "setup.cfg").read_text(), re.M).group(1)


def inputs_hash() -> str:
    h = hashlib.sha256()
    for name in INPUTS:
        h.update(name.encode() + b"\0" + (ROOT / name).read_bytes() + b"\0")
    return h.hexdigest()


def skip_reason() -> str | None:
    """None when the image test should run, else why it does not (with how to run it)."""
    forced = os.environ.get("STREAMD_TEST_IMAGE", "")
    if forced == "0":
        return "STREAMD_TEST_IMAGE=0"
    if forced != "1":
        if os.environ.get("CI"):
            return f"the image build is not part of CI runs; {HOW}"
        if not STAMP.exists():
            return (f"no image test has passed in this checkout yet (after one has, it runs by itself when the "
                    f"image's inputs change); {HOW}")
        if STAMP.read_text().strip() == inputs_hash():
            return f"the image's inputs ({', '.join(INPUTS)}) are unchanged since the last image test passed; {HOW}"
    missing = [tool for tool in ("debootstrap", "buildah", "podman") if not shutil.which(tool)]
    problem = (f"needs {', '.join(missing)} (apt-get install {' '.join(missing)} runc)" if missing
               else "needs root (debootstrap)" if os.geteuid() != 0 else None)
    if problem and forced == "1":
        pytest.fail(f"STREAMD_TEST_IMAGE=1, but the image test {problem}")
    return f"the image test {problem}; {HOW}" if problem else None


def containerfile() -> dict:
    """The Containerfile's instructions: {INSTRUCTION: [arguments, ...]}, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Containerfile").read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.setdefault(word.upper(), []).append(rest.strip())
    return found


def test_the_manifests_name_the_image_that_is_built():
    """deploy/kubernetes runs REGISTRY/streamd:VERSION; the Containerfile's and the script's image is
    streamd:VERSION, so a push to the registry under that name is what the manifests pull."""
    import yaml

    want = f"streamd:{version()}"
    images = []
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("containers", []) + pod.get("initContainers", []):
                if "streamd" in container["command"]:
                    images.append((path.name, container["image"]))
    assert len(images) >= 2 and all(image.endswith("/" + want) for _, image in images), images
    assert "tag=${1:-streamd:$version}" in (ROOT / "scripts" / "build-image").read_text()
    assert f"-t {want} " in (ROOT / "Containerfile").read_text()
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert f"-t {want}" in ops and f"registry.example.com/{want}" in ops


def podman(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []  # crun refuses hybrid cgroups (Debian 12)
    return subprocess.run(["podman", *runtime, *args], capture_output=True, text=True, check=check, timeout=timeout)


def limits() -> list[str]:
    """podman run's own default limits can exceed the host's hard ones; give it limits within them."""
    def within(which: int, want: int) -> int:
        hard = resource.getrlimit(which)[1]
        return want if hard == resource.RLIM_INFINITY else min(hard, want)
    nofile, nproc = within(resource.RLIMIT_NOFILE, 65536), within(resource.RLIMIT_NPROC, 8192)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


@pytest.fixture(scope="module")
def image(request):
    if reason := skip_reason():
        pytest.skip(reason)
    digest, failed = inputs_hash(), request.session.testsfailed
    start = time.monotonic()
    build = subprocess.run([str(ROOT / "scripts" / "build-image"), TAG], cwd=ROOT, capture_output=True, text=True,
                           timeout=1800)
    assert build.returncode == 0, f"scripts/build-image failed:\n{build.stderr[-4000:]}"
    print(f"scripts/build-image: {time.monotonic() - start:.0f} s")
    yield TAG
    if request.session.testsfailed == failed:  # every image test passed: later runs skip until an input changes
        CACHE.mkdir(parents=True, exist_ok=True)
        STAMP.write_text(digest + "\n")
    else:
        STAMP.unlink(missing_ok=True)


def test_the_image_is_the_containerfiles(image):
    """The script's image declares what the Containerfile declares: user, volume, ports, health check, command."""
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    config = inspected["Config"]
    cf = containerfile()
    assert config["User"] == cf["USER"][0] and not config["User"].startswith("0")
    assert config["WorkingDir"] == cf["WORKDIR"][0]
    assert set(config["Volumes"]) == set(json.loads(cf["VOLUME"][0])) == {"/var/lib/streamd"}
    assert set(config["ExposedPorts"]) == {p if "/" in p else f"{p}/tcp" for p in cf["EXPOSE"][0].split()}
    assert config["Cmd"] == json.loads(cf["CMD"][0])
    env = dict(pair.split("=", 1) for pair in config["Env"])
    for pair in re.findall(r"(\w+)=(\S+)", cf["ENV"][0]):
        assert env[pair[0]] == pair[1], pair
    health = inspected["Healthcheck"]  # podman shows a docker-format image's health check beside its Config
    options, _, command = cf["HEALTHCHECK"][0].partition(" CMD ")
    assert health["Test"] == ["CMD", *json.loads(command)]
    durations = dict(re.findall(r"--([\w-]+)=(\S+)", options))
    assert health["Timeout"] == int(durations["timeout"].rstrip("s")) * 10**9
    assert health["Interval"] == int(durations["interval"].rstrip("s")) * 10**9
    assert health["StartPeriod"] == int(durations["start-period"].rstrip("s")) * 10**9
    assert health["Retries"] == int(durations["retries"])


def test_the_image_has_the_runtime_extras_only(image):
    probe = ("import importlib.util as u, sys; import streamd, onnxruntime, tritonclient.grpc; "
             "extra = [m for m in ('torch', 'onnx', 'pytest', 'hypothesis') if u.find_spec(m)]; "
             "sys.exit(f'not a runtime module: {extra}' if extra else 0)")
    run = podman("run", "--rm", "--no-healthcheck", *limits(), image, "python", "-c", probe, check=False)
    assert run.returncode == 0, run.stderr


def test_the_demo_runs_in_the_image(image, tmp_path):
    import cv2
    import numpy as np

    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image's user (uid 10001) writes here
    run = podman("run", "--rm", "--no-healthcheck", *limits(), "-v", f"{out}:/out", image,
                 "streamd", "demo", "--out", "/out", "--seconds", "8", "--size", "640x360", check=False, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^\s+\d+\.\d s:\s+\d+\.\d fps, latency", run.stdout, re.M), run.stdout
    summary = re.search(r"demo: (\d+) frames received in [\d.]+ s \(([\d.]+) fps\); colorized (\d+)", run.stdout)
    assert summary and int(summary[1]) > 0 and float(summary[2]) > 0 and int(summary[3]) > 0, run.stdout
    png = out / "demo.png"
    assert png.stat().st_uid == 10001  # written by the image's user, not root
    picture = cv2.imread(str(png))
    assert picture.shape == (360, 3 * 640, 3)
    gray, colour = picture[:, :640].astype(int), picture[:, 640:1280].astype(int)
    assert np.ptp(gray, axis=2).max() == 0  # gray | colorized | original
    assert np.abs(colour - gray).mean() > 1  # streamd's colour
    assert list((out / "demo").glob("*.mp4")), "no recording"


def test_the_daemon_runs_healthy_and_stops_cleanly(image, tmp_path):
    """The default command on a mounted config: the health check finds the daemon's listener and passes,
    the state directory is a volume, and a stop (SIGTERM) ends it with status 0."""
    config = tmp_path / "etc"
    config.mkdir()
    (config / "streamd.toml").write_text(
        '[http]\nlisten = "0.0.0.0:9090"\ntoken = "0123456789abcdef0123456789abcdef"\n\n'
        '[[camera]]\nname = "yard"\nurl = "synthetic:"\nwidth = 320\nheight = 192\nfps = 5\n')
    name = f"streamd-image-test-{os.getpid()}"
    podman("run", "-d", "--name", name, *limits(), "-v", f"{config}:/etc/streamd:ro", "--read-only",
           "--tmpfs", "/tmp", image)
    try:
        deadline, health = time.monotonic() + 90, None
        while time.monotonic() < deadline:
            health = podman("healthcheck", "run", name, check=False)
            if health.returncode == 0:
                break
            time.sleep(2)
        state = json.loads(podman("inspect", name).stdout)[0]
        checked = (state["State"].get("Health") or {}).get("Log") or [{"Output": health.stderr}]
        logs = podman("logs", name, check=False)
        assert health.returncode == 0, f"{checked[-1]['Output']}\n{(logs.stdout + logs.stderr)[-2000:]}"
        assert checked[-1]["Output"].startswith("http://127.0.0.1:9090/livez: 200"), checked[-1]
        volume = [m for m in state["Mounts"] if m["Destination"] == "/var/lib/streamd"]
        assert volume and volume[0]["Type"] == "volume"
        podman("stop", "-t", "30", name, timeout=60)
        assert json.loads(podman("inspect", name).stdout)[0]["State"]["ExitCode"] == 0
    finally:
        podman("rm", "-f", "-v", name, check=False)
