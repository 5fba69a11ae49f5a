"""Configuration: read from TOML (or built from command-line flags), validated once, here, at the edge.

Every error names the offending key (`camera[2].url`), so `streamd check` can point straight at it.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq.auth

from streamd.daemon import fleet
from streamd.redact import remember
from streamd.daemon.sink import ENCODERS, FORMATS, rtsp_address


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelConfig:
    path: str = ""  # "" = the shipped model
    provider: str = "auto"  # auto | tensorrt | cuda | cpu | torch-cuda (PyTorch, needs the train extra) | triton
    temperature: float = 0.0  # 0 = the model's own (0.38 unless exported otherwise)
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = one per core
    input_width: int = 0  # 0 = the model's own input size
    input_height: int = 0
    cache_dir: str = ""  # TensorRT engine cache; "" = $CACHE_DIRECTORY or ~/.cache/streamd
    int8: str = "auto"  # auto: on the CPU, the model's int8 copy (<name>-int8.onnx) if it has one; on | off
    # A network call (or GPU colour batch) that has not returned after this long is a hung GPU or driver:
    # /healthz says "stalled" and `streamd run` exits with an error, for systemd to restart it
    stall_timeout_s: float = 120.0
    # Loading a model (a TensorRT engine build: minutes) keeps systemd's watchdog and start/reload timeout from
    # firing for up to this long; a load that takes longer is taken as hung, and systemd restarts streamd
    load_timeout_s: float = 900.0
    # provider = "triton": the model runs on a Triton Inference Server (needs the triton extra; docs/scaling.md)
    triton_url: str = ""  # the server's gRPC endpoint, HOST:PORT
    triton_model: str = "streamd"  # the model's name in the server's repository
    triton_timeout_s: float = 2.0  # a request not answered in this long makes inference unavailable (gray frames)


@dataclass(frozen=True)
class ColourConfig:
    # Where each frame's full-resolution chroma is made: "cpu" (the cameras' output threads) or "cuda" (one
    # batch for all cameras on the GPU; needs torch, the `train` extra). cuda is for many cameras per GPU
    # host (BENCHMARKS.md, GPU); the grid work and the temporal state stay on the CPU either way.
    device: str = "cpu"


@dataclass(frozen=True)
class BatchConfig:
    max_size: int = 8
    deadline_ms: float = 0.0  # 0 = one frame interval of the fastest camera
    # A frame that has waited this long since it was decoded is dropped at the next queue (the batch, its
    # camera's outputs) once a newer frame of its camera waits behind it: shorter stalls cost latency, not
    # frames; a camera that outpaces the machine loses frames, not latency. 0 = only the newest frame waits.
    # A stage holds at most 16 frames of a camera (streamd.daemon.backlog.MAX_FRAMES) whatever the budget
    max_delay_ms: float = 100.0


@dataclass(frozen=True)
class ZmqConfig:
    endpoint: str = "tcp://127.0.0.1:5555"  # "" = no ZeroMQ output
    format: str = "bgr24"
    hwm: int = 4
    curve_secret_key_file: str = ""  # CURVE encryption: a secret certificate from zmq.auth (docs/operations.md)
    # With CURVE: a folder of the public certificates (*.key) of the clients allowed to subscribe; "" = any client
    # that has the server's public key
    curve_client_keys: str = ""
    # An endpoint that other machines reach (not loopback, not ipc://) needs CURVE, or this said in words: the
    # live video of every camera is then open to whoever reaches the port
    allow_plaintext: bool = False


@dataclass(frozen=True)
class HttpConfig:
    listen: str = ""  # "127.0.0.1:9090" serves the status page, /healthz and /metrics; "" = off
    # Required when `listen` is not on localhost: every path but /healthz and /livez then wants it (the page shows the
    # cameras' pictures, POST /adapt starts work), as "Authorization: Bearer TOKEN" or "?token=TOKEN"
    token: str = ""


@dataclass(frozen=True)
class DayNightConfig:
    to_night_s: float = 2.0
    to_day_s: float = 5.0


@dataclass(frozen=True)
class AdaptConfig:
    """Per-camera adaptation: day frames collected into a store, models fine-tuned on them (docs/adaptation.md)."""

    state_dir: str = ""  # stores and adapted models; "" = $STATE_DIRECTORY (systemd), else ~/.local/state/streamd
    collect_every_s: float = 60.0  # at most one frame per camera this often
    min_change: float = 3.0  # a frame this close (mean abs. YUV difference, code values) to a stored one is skipped
    max_frames: int = 1000  # per camera; the oldest are evicted
    # Automatic adaptation: a camera whose store is ready (min_frames over min_span_h) is adapted once, then
    # again when readapt_share of its store is newer than what its last run saw; false = only on request
    auto: bool = True
    min_frames: int = 50  # a store smaller than this is not adapted on
    min_span_h: float = 12.0  # ... nor one whose frames span less time (first to last): one light, one hour
    readapt_share: float = 0.5
    every_h: float = 0.0  # also adapt each collecting camera whose last run is this old; 0 = off
    budget_minutes: float = 8.0  # training time of one run (wall clock), shortened to fit the daily budget
    daily_budget_minutes: float = 60.0  # CPU time (all the child's threads) automatic runs may use in any 24 h
    grace_minutes: float = 10.0  # a run still going this long after its budget is killed (hung)
    device: str = "cpu"  # where the child trains: cpu (live frames keep the GPU), cuda, auto
    threads: int = 0  # the child's threads; 0 = one per core


@dataclass(frozen=True)
class ReferenceConfig:
    """Colour from each camera's own day reference (streamd.colour.reference, docs/reference.md)."""

    model: str = ""  # the reference model; "" = the shipped streamd-reference.onnx
    min_frames: int = 20  # a camera's first reference is built once its day store holds this many frames
    max_frames: int = 240  # the newest stored day frames (evenly spaced) a reference is a median of
    rebuild_every_h: float = 6.0  # a reference is rebuilt at most this often, when the camera turns to night


@dataclass(frozen=True)
class FleetConfig:
    """One config file for a whole fleet: each process runs its shard of the cameras (streamd.daemon.fleet)."""

    shard: str = ""  # "": every camera; "I/N": shard I (from 0) of N; "auto": from $STREAMD_SHARDS and the pod ordinal


@dataclass(frozen=True)
class CameraConfig:
    name: str
    url: str
    transport: str = "tcp"
    loop: bool = False
    realtime: bool = True
    rtsp_out: str = ""
    rtsp_out_transport: str = ""  # "" = same as transport
    rtsp_out_timeout_s: float = 5.0  # a socket operation of the RTSP output not done in this long fails it
    file_out: str = ""  # a folder: the camera's recording goes to FOLDER/NAME/ (streamd.daemon.recording)
    file_segment_s: float = 60.0
    file_retain_days: float = 7.0  # 0 = no age limit
    file_retain_gb: float = 50.0  # per camera; 0 = no size limit
    encoder: str = "auto"  # H.264 for rtsp_out and file_out: auto | nvenc | libx264 (streamd.sink.encoder_candidates)
    keyframe_interval_s: float = 1.0
    zmq_format: str = ""  # "" = [zmq].format
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    stall_timeout_s: float = 10.0
    # /healthz calls a running camera "silent" once it has delivered nothing for a few of its frame intervals,
    # at most this long (whatever the timeouts above say about reconnecting)
    silent_after_s: float = 2.0
    fps: float = 25.0  # synthetic cameras
    width: int = 1280  # synthetic cameras
    height: int = 720
    duration_s: float = 0.0  # synthetic cameras: 0 = endless
    hwaccel: str = ""  # "cuda": decode on the GPU's NVDEC (falls back to the CPU where it cannot); "": the CPU
    temporal: bool = True  # hold colour still where the scene is still (off: each frame on its own)
    reuse_still_s: float = 1.0  # a still scene reuses the last prediction up to this long; 0 = network every frame
    carry_frames: int = 12  # a moving scene: up to this many frames in a row carry the last prediction along the
    # optical flow instead of running the network; 0 = off (docs/temporal.md)
    model: str = ""  # this camera's own ONNX model (`streamd adapt`); "" = its adapted one if any, else [model].path
    collect: bool = True  # keep day frames in the state directory for adaptation (false: nothing is stored)
    # Colour the night from the camera's own day reference, built from its stored day frames (needs collect), or
    # the one named by reference_file; false: the generic (or adapted, or own) model alone
    reference: bool = True
    reference_file: str = ""  # a reference of this camera's view (`streamd reference build`); never rebuilt


@dataclass(frozen=True)
class Config:
    cameras: tuple[CameraConfig, ...]
    model: ModelConfig = field(default_factory=ModelConfig)
    colour: ColourConfig = field(default_factory=ColourConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    zmq: ZmqConfig = field(default_factory=ZmqConfig)
    daynight: DayNightConfig = field(default_factory=DayNightConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)


_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")  # a topic and a folder: not "." or ".."
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.-]+:\d{1,5}$")
_ZMQ_ENDPOINT = re.compile(r"^(tcp|ipc|inproc)://\S+$")
_TOKEN = re.compile(r"^[\x21-\x7e]{16,}$")  # printable ASCII, no spaces: it travels in a header and a URL
_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def _section(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}.{name}: required")
            continue
        value = raw[name]
        expected = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        if isinstance(value, bool) and expected is not bool or not isinstance(value, expected):
            raise ConfigError(f"{where}.{name}: expected {f.type}, got {type(value).__name__} {value!r}")
        if f.type == "float" and not math.isfinite(value):
            raise ConfigError(f"{where}.{name}: must be a finite number, got {value!r}")
        values[name] = float(value) if f.type == "float" else value
    return cls(**values)


def _curve_secret_problem(path: str) -> str | None:
    """Why `path` is not a CURVE secret certificate, or None. A public one would turn encryption off without a
    word (it has no secret key), so it is refused."""
    if not Path(path).is_file():
        return f"no key file at {path}"
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, IndexError) as e:  # pyzmq's parser raises IndexError on a "key" line without "="
        return f"{path} is not a ZeroMQ certificate ({e})"
    if not secret:
        return f"{path} holds only a public key: give the secret certificate (the .key_secret file)"
    if len(secret) != 40 or len(public or b"") != 40:
        return f"{path}: a CURVE key is 40 characters (Z85) long"
    return None


# What FFmpeg opens for a camera, by URL scheme; the schemes of the first group name a host to connect to.
_HOST_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "srt")
_OTHER_SCHEMES = ("udp", "tcp", "file", "synthetic")  # udp://@:1234 listens on all interfaces: no host needed
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]{0,15}$")


def _camera_url_problem(url: str) -> str | None:
    """Why a camera URL could not be opened as written, or None (text without "://" is a file path, or
    synthetic:, the demo's camera). Says nothing of the URL itself: it may hold a password."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        return None
    if scheme.lower() not in _HOST_SCHEMES + _OTHER_SCHEMES:
        known = ", ".join(_HOST_SCHEMES + _OTHER_SCHEMES)
        named = f" {scheme!r}" if _SCHEME.match(scheme) else ""  # not what precedes "://" in "user:pass@rtsp://"
        return f"cannot be parsed: unknown scheme{named} (known: {known}; or a file path)"
    if scheme.lower() in _HOST_SCHEMES and not _host_and_port_ok(url):
        return "cannot be parsed: it needs a host, and a port (if any) from 1 to 65535"
    return None


def _client_keys_problem(folder: str) -> str | None:
    """Why `folder` is not a folder of client public certificates, or None. An empty one would let no client
    in, which is a mistake rather than a policy."""
    if not Path(folder).is_dir():
        return f"no folder at {folder}"
    files = sorted(Path(folder).glob("*.key"))
    if not files:
        return f"{folder} holds no public certificate (*.key, as zmq.auth.create_certificates writes them)"
    for path in files:
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError, IndexError) as e:
            return f"{path} is not a ZeroMQ certificate ({e})"
        if len(public or b"") != 40:
            return f"{path}: a CURVE key is 40 characters (Z85) long"
    return None


def zmq_is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable from this machine only: ipc:// and inproc://, or tcp:// bound to
    a loopback address. "*", an interface name or another address is reachable from the network."""
    transport, _, address = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    host = address.rpartition(":")[0].removeprefix("[").removesuffix("]")
    return is_local(host)


def _host_and_port_ok(url: str) -> bool:
    try:
        rtsp_address(url)
        return True
    except ValueError:
        return False


def in_use_hint(flag: str) -> str:
    """The end of the message for a port or endpoint that another process has bound."""
    return (f" (another process has it, perhaps another streamd of this config: each process on a host needs its "
            f"own; `streamd run {flag}` overrides the config's, docs/scaling.md)")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def is_local(host: str) -> bool:
    """Whether a listener on `host` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another name: it may resolve to anything
        return False


def validate(cfg: Config) -> Config:
    m = cfg.model
    _check(m.provider in ("auto", "tensorrt", "cuda", "cpu", "torch-cuda", "triton"), "model.provider",
           "must be auto, tensorrt, cuda, cpu, torch-cuda or triton")
    if m.provider == "triton":
        _check(bool(m.triton_url), "model.triton_url", 'required with provider = "triton": the server\'s gRPC '
               'endpoint, HOST:PORT (Triton\'s default port is 8001)')
        _check(bool(_HOST_PORT.match(m.triton_url)) and int(m.triton_url.rpartition(":")[2]) < 65536,
               "model.triton_url", f"must be HOST:PORT (no scheme), got {m.triton_url!r}")
        _check(bool(_NAME.match(m.triton_model)), "model.triton_model", "must be a model name in the server's repository")
        _check(0 < m.triton_timeout_s < m.stall_timeout_s, "model.triton_timeout_s",
               "must be positive and below stall_timeout_s (a slow server is unavailable, not a hung GPU)")
        _check(not m.path, "model.path", 'is not used with provider = "triton": the server has the model')
        _check(m.temperature == 0, "model.temperature", 'cannot be set with provider = "triton": the server runs the '
               "model with its own (export it with the temperature wanted)")
    else:
        _check(not m.triton_url, "model.triton_url", 'is only used with provider = "triton"')
    _check(m.temperature >= 0, "model.temperature", "must be 0 (the model's own) or more")
    _check(m.threads >= 0, "model.threads", "must be 0 (all cores) or more")
    _check(m.int8 in ("auto", "on", "off"), "model.int8", "must be auto, on or off")
    _check(m.stall_timeout_s > 0, "model.stall_timeout_s", "must be positive")
    _check(m.load_timeout_s > 0, "model.load_timeout_s", "must be positive")
    for key in ("input_width", "input_height"):
        v = getattr(m, key)
        _check(v >= 0 and v % 16 == 0, f"model.{key}", "must be a multiple of 16 (0 = the model's own)")
    _check(not m.path or Path(m.path).is_file(), "model.path", f"no model file at {m.path}")
    _check(cfg.colour.device in ("cpu", "cuda"), "colour.device", "must be cpu or cuda")
    _check(1 <= cfg.batch.max_size <= 256, "batch.max_size", "must be between 1 and 256")
    _check(cfg.batch.deadline_ms >= 0, "batch.deadline_ms", "must be 0 (automatic) or more")
    _check(0 <= cfg.batch.max_delay_ms <= 10_000, "batch.max_delay_ms", "must be between 0 and 10000")
    _check(not cfg.zmq.endpoint or bool(_ZMQ_ENDPOINT.match(cfg.zmq.endpoint)), "zmq.endpoint",
           'must be a ZeroMQ endpoint such as "tcp://127.0.0.1:5555", or "" for none')
    _check(cfg.zmq.format in FORMATS, "zmq.format", f"must be one of {', '.join(FORMATS)}")
    _check(cfg.zmq.hwm >= 1, "zmq.hwm", "must be at least 1")
    if cfg.zmq.curve_secret_key_file:
        problem = _curve_secret_problem(cfg.zmq.curve_secret_key_file)
        _check(problem is None, "zmq.curve_secret_key_file", problem or "")
    if cfg.zmq.curve_client_keys:
        _check(bool(cfg.zmq.curve_secret_key_file), "zmq.curve_client_keys",
               "needs curve_secret_key_file: client keys are checked only on an encrypted (CURVE) endpoint")
        problem = _client_keys_problem(cfg.zmq.curve_client_keys)
        _check(problem is None, "zmq.curve_client_keys", problem or "")
    _check(not cfg.zmq.endpoint or zmq_is_local(cfg.zmq.endpoint) or bool(cfg.zmq.curve_secret_key_file)
           or cfg.zmq.allow_plaintext, "zmq.endpoint",
           f"{cfg.zmq.endpoint} is reachable from other machines and unencrypted, so anyone there can watch every "
           "camera: set curve_secret_key_file (and curve_client_keys) under [zmq] (docs/operations.md), bind to "
           "127.0.0.1, or say allow_plaintext = true under [zmq]")
    if cfg.http.listen:
        host, _, port = cfg.http.listen.rpartition(":")
        _check(bool(host) and port.isdigit() and 0 <= int(port) < 65536, "http.listen", "must be HOST:PORT")
        _check(":" not in host, "http.listen", "the host must be an IPv4 address or a name (the server is IPv4 only)")
        _check(bool(cfg.http.token) or is_local(host), "http.token",
               f"required when http.listen is not on localhost ({host}): the status page shows the cameras' "
               "pictures to whoever reaches it")
    _check(not cfg.http.token or bool(_TOKEN.match(cfg.http.token)), "http.token",
           "at least 16 printable ASCII characters, no spaces (e.g. the output of `openssl rand -hex 24`)")
    _check(cfg.daynight.to_night_s >= 0 and cfg.daynight.to_day_s >= 0, "daynight", "settle times must be >= 0")
    a = cfg.adapt
    _check(a.collect_every_s >= 0, "adapt.collect_every_s", "must be 0 or more")
    _check(a.min_change >= 0, "adapt.min_change", "must be 0 or more")
    _check(a.max_frames >= 1, "adapt.max_frames", "must be at least 1")
    _check(a.every_h >= 0, "adapt.every_h", "must be 0 (off) or more")
    _check(a.budget_minutes > 0, "adapt.budget_minutes", "must be positive")
    _check(a.daily_budget_minutes > 0, "adapt.daily_budget_minutes", "must be positive (auto = false turns "
           "automatic adaptation off)")
    _check(a.grace_minutes > 0, "adapt.grace_minutes", "must be positive")
    _check(a.min_frames >= 2, "adapt.min_frames", "must be at least 2 (some are held back to score on)")
    try:
        fleet.check(cfg.fleet.shard)
    except ValueError as e:
        raise ConfigError(f"fleet.shard: {e}") from e
    _check(a.min_span_h >= 0, "adapt.min_span_h", "must be 0 or more")
    _check(0 < a.readapt_share <= 1, "adapt.readapt_share", "must be more than 0 and at most 1")
    _check(a.device in ("cpu", "cuda", "auto"), "adapt.device", "must be cpu, cuda or auto")
    _check(a.threads >= 0, "adapt.threads", "must be 0 (one per core) or more")
    r = cfg.reference
    _check(not r.model or Path(r.model).is_file(), "reference.model", f"no model file at {r.model}")
    _check(r.min_frames >= 8, "reference.min_frames", "must be at least 8 (a median of fewer is no reference)")
    _check(r.max_frames >= r.min_frames, "reference.max_frames", "must be at least reference.min_frames")
    _check(r.rebuild_every_h >= 0, "reference.rebuild_every_h", "must be 0 (at every nightfall) or more")
    _check(len(cfg.cameras) > 0, "camera", "at least one [[camera]] is needed")
    seen = set()
    for c in cfg.cameras:  # first: an error below may quote a URL
        remember(c.url)
        remember(c.rtsp_out)
    for i, c in enumerate(cfg.cameras):
        where = f"camera[{i}]"
        _check(bool(_NAME.match(c.name)), f"{where}.name", "letters, digits, '_', '-' and '.' only, not starting with '.' (it is a topic and a folder)")
        _check(c.name not in seen, f"{where}.name", f"camera name {c.name!r} is used twice")
        seen.add(c.name)
        _check(bool(c.url.strip()), f"{where}.url", "must not be empty")
        url_problem = _camera_url_problem(c.url)
        _check(url_problem is None, f"{where}.url", url_problem or "")
        _check(c.transport in ("tcp", "udp"), f"{where}.transport", "must be tcp or udp")
        _check(c.rtsp_out_transport in ("", "tcp", "udp"), f"{where}.rtsp_out_transport", "must be tcp or udp")
        _check(not c.rtsp_out or c.rtsp_out.startswith(("rtsp://", "rtsps://")), f"{where}.rtsp_out",
               "must be an rtsp:// URL")
        _check(not c.rtsp_out or _host_and_port_ok(c.rtsp_out), f"{where}.rtsp_out",
               "needs a host, and a port (if any) from 1 to 65535")
        _check(not c.model or Path(c.model).is_file(), f"{where}.model", f"no model file at {c.model}")
        _check(not c.reference_file or Path(c.reference_file).is_file(), f"{where}.reference_file",
               f"no reference file at {c.reference_file} (make one with: streamd reference build DAY -o FILE)")
        _check(c.reference or not c.reference_file, f"{where}.reference_file",
               "is set, but reference = false turns the camera's reference off")
        _check(not c.file_out or not (Path(c.file_out).suffix.lower() == ".mp4" or Path(c.file_out).is_file()),
               f"{where}.file_out", f"names a folder for the recording's segments, not a file ({c.file_out})")
        _check(c.file_segment_s >= 1, f"{where}.file_segment_s", "must be at least 1")
        _check(c.file_retain_days >= 0, f"{where}.file_retain_days", "must be 0 (no age limit) or more")
        _check(c.file_retain_gb >= 0, f"{where}.file_retain_gb", "must be 0 (no size limit) or more")
        _check(c.encoder in ENCODERS, f"{where}.encoder", f"must be one of {', '.join(ENCODERS)}")
        _check(c.rtsp_out_timeout_s > 0, f"{where}.rtsp_out_timeout_s", "must be positive")
        _check(c.keyframe_interval_s > 0, f"{where}.keyframe_interval_s", "must be positive")
        _check(c.zmq_format in ("", *FORMATS), f"{where}.zmq_format", f"must be one of {', '.join(FORMATS)}")
        _check(c.reuse_still_s >= 0, f"{where}.reuse_still_s", "must be 0 (network on every frame) or more")
        _check(c.hwaccel in ("", "cuda"), f"{where}.hwaccel", 'must be "" (CPU decoding) or "cuda" (NVDEC)')
        _check(c.carry_frames >= 0, f"{where}.carry_frames", "must be 0 (network on every moving frame) or more")
        for key in ("open_timeout_s", "read_timeout_s", "stall_timeout_s", "silent_after_s", "fps"):
            _check(getattr(c, key) > 0, f"{where}.{key}", "must be positive")
        _check(c.width > 0 and c.height > 0 and c.width % 2 == 0 and c.height % 2 == 0, f"{where}.width",
               "synthetic sizes must be positive and even")
    return cfg


def parse(raw: dict) -> Config:
    known = {"model", "colour", "batch", "zmq", "daynight", "http", "adapt", "reference", "fleet", "camera"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known: {', '.join(sorted(known))})")
    cameras = raw.get("camera", [])
    if not isinstance(cameras, list):
        raise ConfigError("camera: use [[camera]] tables, one per camera")
    return validate(Config(
        cameras=tuple(_section(CameraConfig, c, f"camera[{i}]") for i, c in enumerate(cameras)),
        model=_section(ModelConfig, raw.get("model", {}), "model"),
        colour=_section(ColourConfig, raw.get("colour", {}), "colour"),
        batch=_section(BatchConfig, raw.get("batch", {}), "batch"),
        zmq=_section(ZmqConfig, raw.get("zmq", {}), "zmq"),
        daynight=_section(DayNightConfig, raw.get("daynight", {}), "daynight"),
        http=_section(HttpConfig, raw.get("http", {}), "http"),
        adapt=_section(AdaptConfig, raw.get("adapt", {}), "adapt"),
        reference=_section(ReferenceConfig, raw.get("reference", {}), "reference"),
        fleet=_section(FleetConfig, raw.get("fleet", {}), "fleet"),
    ))


def load(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    return parse(raw)
