"""Sharding a fleet: one config file, N streamd processes, each camera run by exactly one of them
(streamd.daemon.fleet's rendezvous hash), and the Kubernetes manifests that deploy it."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import zmq.auth

from streamd import config as cfgmod
from streamd.daemon import fleet
from streamd.cli import main
from tests.conftest import ROOT, free_port, write_video
from tests.test_operations import Recorder, http_get, start_streamd, stop_streamd

NAMES = [f"site{site}-cam{cam:03d}" for site in range(4) for cam in range(500)]  # 2000 cameras


class Named:
    def __init__(self, name: str) -> None:
        self.name = name


def test_every_camera_has_exactly_one_shard_and_shards_are_even():
    cameras = [Named(n) for n in NAMES]
    for count in (1, 2, 3, 7):
        runs = [fleet.mine(cameras, fleet.Shard(i, count)) for i in range(count)]
        served = Counter(c.name for run in runs for c in run)
        assert set(served) == set(NAMES) and set(served.values()) == {1}
        for run in runs:  # each shard near its fair share (binomial spread is about 1 %)
            assert abs(len(run) / len(NAMES) - 1 / count) < 0.05, [len(r) for r in runs]
    assert fleet.mine(cameras, None) == tuple(cameras)


def test_going_from_3_to_4_shards_moves_only_a_quarter_and_only_to_the_new_shard():
    before = {n: fleet.owner(n, 3) for n in NAMES}
    after = {n: fleet.owner(n, 4) for n in NAMES}
    moved = [n for n in NAMES if before[n] != after[n]]
    assert 0.20 < len(moved) / len(NAMES) < 0.30, len(moved) / len(NAMES)
    assert {after[n] for n in moved} == {3}  # nothing is reshuffled between the shards that stay
    back = [n for n in NAMES if fleet.owner(n, 2) != before[n]]  # 3 -> 2: only shard 2's cameras move
    assert {before[n] for n in back} == {2} and len(back) == sum(1 for n in NAMES if before[n] == 2)


def test_the_assignment_is_the_same_in_every_process():
    """Python's str hash is salted per process; the fleet's hash must not be: two interpreters with
    different hash seeds agree."""
    code = "import sys; from streamd.daemon import fleet; print([fleet.owner(n, 5) for n in sys.argv[1:]])"
    answers = set()
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, *NAMES[:200]], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
        answers.add(out)
    assert len(answers) == 1 and answers.pop().strip() == str([fleet.owner(n, 5) for n in NAMES[:200]])


def test_shard_specs_and_auto_from_the_environment():
    assert fleet.resolve("", {}) is None
    assert fleet.resolve("1/3", {}) == fleet.Shard(1, 3)
    assert fleet.resolve("auto", {"STREAMD_SHARDS": "4"}, hostname="streamd-2") == fleet.Shard(2, 4)
    assert fleet.resolve("auto", {"STREAMD_SHARDS": "4", "STREAMD_SHARD_INDEX": "3"}, hostname="x") == fleet.Shard(3, 4)
    for spec, env, host, words in (("3/3", {}, "", "numbered 0 to 2"), ("1/0", {}, "", "between 1 and"),
                                   ("one", {}, "", "INDEX/COUNT"), ("auto", {}, "streamd-0", "STREAMD_SHARDS"),
                                   ("auto", {"STREAMD_SHARDS": "2"}, "gpu-host", "-ORDINAL"),
                                   ("auto", {"STREAMD_SHARDS": "2"}, "streamd-5", "numbered 0 to 1")):
        with pytest.raises(ValueError, match=words):
            fleet.resolve(spec, env, hostname=host)
    with pytest.raises(cfgmod.ConfigError, match="fleet.shard"):
        cfgmod.parse({"camera": [{"name": "a", "url": "x"}], "fleet": {"shard": "2/2"}})


def test_three_shards_of_one_config_serve_every_camera_exactly_once(tmp_path):
    """Three real daemons on one config file, each with --shard I/3 (and ports of its own): together they
    publish every camera, each camera from one daemon only, and each says in /healthz and /metrics which
    shard it is and what it runs. `streamd check --shards 3` shows the same assignment."""
    clip = write_video(tmp_path / "day.mp4", "colour", seconds=1, size="160x120")  # day: no inference to wait on
    names = ["gate", "yard", "dock-1", "dock-2", "lobby", "roof", "lot-a", "lot-b", "fence"]
    config = tmp_path / "fleet.toml"
    config.write_text("".join(f'[[camera]]\nname = "{n}"\nurl = "{clip}"\nloop = true\ncollect = false\n'
                              for n in names))
    listed = subprocess.run([sys.executable, "-m", "streamd", "check", "-c", str(config), "--shards", "3"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    expected = {n: int(line.split("(shard ")[1].split("/")[0]) for n in names for line in listed.splitlines()
                if line.startswith(f"camera {n} ")}
    shards = []
    for index in range(3):
        endpoint, http = f"tcp://127.0.0.1:{free_port()}", free_port()
        proc = start_streamd("run", "-c", str(config), "--shard", f"{index}/3", "--zmq", endpoint,
                             "--http", f"127.0.0.1:{http}")
        shards.append((proc, Recorder(endpoint), http))
    try:
        end = time.monotonic() + 60
        seen: dict[int, set[str]] = {}
        while time.monotonic() < end:
            seen = {i: {c for c in names if rec.count(c) >= 5} for i, (_, rec, _) in enumerate(shards)}
            if sum(len(s) for s in seen.values()) >= len(names):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # a camera published by two daemons would show up on both by now
        for index, (proc, rec, http) in enumerate(shards):
            assert proc.poll() is None, stop_streamd(proc)
            published = {c for c in names if rec.count(c)}
            code, body = http_get(f"http://127.0.0.1:{http}/healthz")
            health = json.loads(body)
            assert code == 200 and health["shard"] == f"{index}/3", health
            assert set(health["cameras"]) == published == {n for n, s in expected.items() if s == index}
            _, metrics = http_get(f"http://127.0.0.1:{http}/metrics")
            assert f'streamd_shard_info{{shard="{index}",shards="3"}} 1.0' in metrics
            for name in published:
                assert f'streamd_shard_camera{{camera="{name}",shard="{index}"}} 1.0' in metrics
        served = Counter(c for s in seen.values() for c in s)
        assert set(served) == set(names) and set(served.values()) == {1}, seen
    finally:
        for proc, rec, _ in shards:
            rec.close()
            stop_streamd(proc)
    assert all(proc.returncode == 0 for proc, _, _ in shards)


def test_a_shard_without_cameras_waits_instead_of_exiting(tmp_path):
    """More shards than cameras: the empty shards run (healthy, nothing to do) until stopped, so a
    supervisor does not restart them in a loop."""
    clip = write_video(tmp_path / "day.mp4", "colour", seconds=1, size="160x120")
    config = tmp_path / "one.toml"
    config.write_text(f'[[camera]]\nname = "only"\nurl = "{clip}"\nloop = true\ncollect = false\n')
    empty = next(i for i in range(8) if fleet.owner("only", 8) != i)
    http = free_port()
    proc = start_streamd("run", "-c", str(config), "--shard", f"{empty}/8", "--zmq", "", "--http", f"127.0.0.1:{http}")
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and proc.poll() is None:
            try:
                code, body = http_get(f"http://127.0.0.1:{http}/healthz")
                if code == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        time.sleep(2.0)  # a daemon that thought itself finished would have exited by now
        assert proc.poll() is None, stop_streamd(proc)
        assert json.loads(http_get(f"http://127.0.0.1:{http}/healthz")[1]) == {
            "status": "running", "cameras": {}, "shard": f"{empty}/8"}
        code, body = http_get(f"http://127.0.0.1:{http}/livez")
        assert code == 200 and json.loads(body)["status"] == "running"
    finally:
        log = stop_streamd(proc)
    assert proc.returncode == 0, log
    assert f"shard {empty}/8: running 0 of the config's 1 cameras (none)" in log


def test_the_shard_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (apt-get install systemd; .ci/run does)")
    streamd = shutil.which("streamd") or "/bin/true"
    unit = (ROOT / "systemd" / "streamd-shard@.service").read_text()
    assert "--shard %i/${STREAMD_SHARDS} $STREAMD_FLAGS" in unit and "EnvironmentFile=/etc/streamd/fleet.env" in unit
    (tmp_path / "streamd-shard@.service").write_text(unit.replace("/usr/local/bin/streamd", streamd))
    proc = subprocess.run([analyze, "verify", str(tmp_path / "streamd-shard@2.service")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def manifests() -> dict[tuple[str, str], dict]:
    """Every object of deploy/kubernetes, by (kind, name)."""
    import yaml

    objects = {}
    for path in sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            objects[(doc["kind"], doc["metadata"]["name"])] = doc
    return objects


@pytest.mark.parametrize("version", ["1.28.0", "1.33.0"])  # 1.28: the first with the pod-index label
def test_kubernetes_manifests_validate_against_the_api_schemas(version):
    """Offline, against the Kubernetes OpenAPI schemas that kubernetes-validate ships, strictly (unknown
    fields are errors); a broken copy fails, so the check can fail."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the test extra installs it")
    objects = manifests()
    assert set(objects) == {("Secret", "streamd-cameras"), ("Service", "streamd"), ("StatefulSet", "streamd"),
                            ("Service", "triton"), ("Deployment", "triton")}
    for doc in objects.values():
        kubernetes_validate.validate(doc, version, strict=True)
    broken = copy.deepcopy(objects[("StatefulSet", "streamd")])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/livez"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_kubernetes_manifests_agree_with_streamd():
    """What the manifests tell streamd is what streamd understands: the Secret holds a valid config that
    shards by pod ordinal and points at the Triton Service; STREAMD_SHARDS is the replica count; the probes
    and scrape port are streamd's; the Triton init container's command writes a repository."""
    objects = manifests()
    raw = tomllib.loads(objects[("Secret", "streamd-cameras")]["stringData"]["cameras.toml"])
    statefulset = objects[("StatefulSet", "streamd")]
    pod = statefulset["spec"]["template"]
    container = pod["spec"]["containers"][0]
    # The ZeroMQ output is encrypted and lets in listed clients only, from Secrets mounted where it looks
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["spec"]["volumes"] if "secret" in v}
    server_key, clients = Path(raw["zmq"]["curve_secret_key_file"]), raw["zmq"]["curve_client_keys"]
    assert secrets[mounts[str(server_key.parent)]] == "streamd-zmq-server" and server_key.name == "server.key_secret"
    assert secrets[mounts[clients]] == "streamd-zmq-clients"
    with tempfile.TemporaryDirectory() as keys:  # the Secrets' contents, as secret.yaml says to make them
        zmq.auth.create_certificates(keys, "server")
        Path(keys, "clients").mkdir()
        zmq.auth.create_certificates(str(Path(keys, "clients")), "viewer")
        raw["zmq"].update(curve_secret_key_file=str(Path(keys, server_key.name)),
                          curve_client_keys=str(Path(keys, "clients")))
        with pytest.raises(cfgmod.ConfigError, match="http.token"):  # the placeholder must be replaced
            cfgmod.parse(raw)
        raw["http"]["token"] = "0123456789abcdef0123456789abcdef"
        config = cfgmod.parse(raw)
        plaintext = copy.deepcopy(raw)
        del plaintext["zmq"]["curve_secret_key_file"], plaintext["zmq"]["curve_client_keys"]
        with pytest.raises(cfgmod.ConfigError, match="zmq.endpoint"):  # the pod's address is on the network
            cfgmod.parse(plaintext)
    assert config.fleet.shard == "auto" and config.model.provider == "triton"
    triton_service = objects[("Service", "triton")]
    host, port = config.model.triton_url.split(":")
    assert host == triton_service["metadata"]["name"]
    assert int(port) in [p["port"] for p in triton_service["spec"]["ports"] if p["name"] == "grpc"]
    env = {e["name"]: e for e in container["env"]}
    assert int(env["STREAMD_SHARDS"]["value"]) == statefulset["spec"]["replicas"]
    assert env["STREAMD_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['apps.kubernetes.io/pod-index']"
    http_port = int(config.http.listen.rpartition(":")[2])
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": http_port, "zmq": int(config.zmq.endpoint.rpartition(":")[2])}
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(http_port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["command"][:2] == ["streamd", "run"]
    init = objects[("Deployment", "triton")]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert init[:3] == ["streamd", "export", "--triton"]
    with tempfile.TemporaryDirectory() as models:
        assert main([*init[1:3], models]) == 0
        assert (Path(models) / "streamd" / "config.pbtxt").is_file()


def test_livez_fails_only_for_a_silent_main_loop():
    from streamd.daemon.health import LIVE_S, liveness

    assert liveness("running", 1.0) == (200, {"status": "running", "silent_s": 1.0})
    assert liveness("starting", 10 * LIVE_S)[0] == 200  # loading a model is not hanging
    code, body = liveness("running", LIVE_S + 1)
    assert code == 503 and body["status"] == "hung"


def unit_command(unit: str, instance: str, env: dict[str, str], config: Path) -> list[str]:
    """The unit's ExecStart for an instance, as systemd expands it: %i, ${VAR} in a word, and $VAR alone as
    its value's words (none when unset); the installed paths replaced by this checkout's."""
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    words = []
    for word in line.removeprefix("ExecStart=").replace("%i", instance).split():
        if word.startswith("$") and not word.startswith("${"):
            words += env.get(word[1:], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], word))
    assert words[:2] == ["/usr/local/bin/streamd", "run"] and "/etc/streamd/fleet.toml" in words, words
    return [str(config) if w == "/etc/streamd/fleet.toml" else w for w in words[1:]]


def env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


def test_two_shards_of_one_config_on_one_host_each_on_ports_of_their_own(tmp_path):
    """streamd-shard@0 and streamd-shard@1 on one host, run as their unit runs them: shard 0 on the config's
    ZeroMQ endpoint and HTTP address, shard 1 on the ones its /etc/streamd/shard-1.env gives it, as
    docs/scaling.md says. Both run and publish their own cameras. Without that file shard 1 would bind shard
    0's endpoint: it ends at once, naming zmq.endpoint."""
    unit = (ROOT / "systemd" / "streamd-shard@.service").read_text()
    assert "EnvironmentFile=-/etc/streamd/shard-%i.env" in unit
    clip = write_video(tmp_path / "day.mp4", "colour", seconds=1, size="160x120")  # day: no inference to wait on
    names = ["gate", "yard", "dock", "lobby", "roof", "fence"]
    assert {fleet.owner(n, 2) for n in names} == {0, 1}
    endpoints = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    https = [free_port() for _ in range(2)]
    config = tmp_path / "fleet.toml"
    config.write_text(f'[zmq]\nendpoint = "{endpoints[0]}"\n[http]\nlisten = "127.0.0.1:{https[0]}"\n' +
                      "".join(f'[[camera]]\nname = "{n}"\nurl = "{clip}"\nloop = true\ncollect = false\n'
                              for n in names))
    (tmp_path / "fleet.env").write_text("STREAMD_SHARDS=2\n")
    (tmp_path / "shard-1.env").write_text(f"# /etc/streamd/shard-1.env\n"
                                          f"STREAMD_FLAGS=--zmq {endpoints[1]} --http 127.0.0.1:{https[1]}\n")
    fleet_env = env_file(tmp_path / "fleet.env")
    shards = [start_streamd(*unit_command(unit, "0", fleet_env, config)),
              start_streamd(*unit_command(unit, "1", {**fleet_env, **env_file(tmp_path / "shard-1.env")}, config))]
    recorders = [Recorder(endpoint) for endpoint in endpoints]
    try:
        for index, (proc, rec) in enumerate(zip(shards, recorders)):
            own = [n for n in names if fleet.owner(n, 2) == index]
            for name in own:
                assert rec.wait_for(name, 5, timeout=60), (name, stop_streamd(proc))
            assert proc.poll() is None, stop_streamd(proc)
            assert {c for c in names if rec.count(c)} == set(own)
            code, body = http_get(f"http://127.0.0.1:{https[index]}/healthz")
            assert code == 200 and json.loads(body)["shard"] == f"{index}/2", body
        clash = subprocess.run([sys.executable, "-m", "streamd", *unit_command(unit, "1", fleet_env, config)],
                               cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert clash.returncode == 2, clash.stderr
        assert clash.stderr.splitlines()[-1].startswith(
            f"config error: zmq.endpoint: cannot bind {endpoints[0]}: Address already in use"), clash.stderr
        assert "Traceback" not in clash.stderr
        assert all(proc.poll() is None for proc in shards)
    finally:
        for proc, rec in zip(shards, recorders):
            rec.close()
            stop_streamd(proc)
    assert [proc.returncode for proc in shards] == [0, 0]
