"""The `streamd` command.

Exit codes: 0 success; 1 the job failed (every camera failed, a file could not be processed);
2 bad usage or an invalid config (the message names the key); 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from streamd import config as cfgmod
from streamd.source import State, redact

log = logging.getLogger("streamd")
EXIT_FAILED, EXIT_USAGE = 1, 2


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def status_lines(pipeline, elapsed: float, previous: dict[str, int]) -> list[str]:
    lines = []
    for name, r in pipeline.cameras.items():
        out = r.outputs
        lat = list(out.latencies_ms)[-200:]
        fps = (out.published - previous.get(name, 0)) / max(elapsed, 1e-6)
        previous[name] = out.published
        skipped = r.reuse.reused + r.reuse.carried if r.reuse else 0
        reused = (f" ({r.reuse.reused} reusing a still scene's prediction, {r.reuse.carried} carrying it along the "
                  f"flow)") if skipped else ""
        lines.append(f"{name}: {r.source.stats.state.value}, {fps:.1f} fps out, colorized {r.colorized}{reused}, "
                     f"passed {r.passed_through}, dropped {pipeline.dropped(name)}, "
                     f"latency p50 {_percentile(lat, 50):.0f} ms p99 {_percentile(lat, 99):.0f} ms")
    return lines


def quick_config(args: argparse.Namespace) -> cfgmod.Config:
    """`streamd run --source ...` without a config file: one [[camera]] per --source."""
    cameras = []
    for i, spec in enumerate(args.source, start=1):
        name, url = spec.split("=", 1) if "=" in spec.split("://", 1)[0] else (f"cam{i}", spec)
        several = len(args.source) > 1
        rtsp_out = (args.rtsp_out.rstrip("/") + f"/{name}" if several else args.rtsp_out) if args.rtsp_out else ""
        file_out = ""
        if args.file_out:
            p = Path(args.file_out)
            file_out = str(p.with_name(f"{p.stem}-{name}{p.suffix or '.mp4'}") if several else p)
        cameras.append({"name": name, "url": url, "transport": args.rtsp_transport, "loop": args.loop,
                        "rtsp_out": rtsp_out, "file_out": file_out, "temporal": not args.no_temporal})
    raw = {"camera": cameras, "zmq": {"endpoint": args.zmq, "format": args.format}, "http": {"listen": args.http}}
    if args.model:
        raw["model"] = {"path": args.model}
    return cfgmod.parse(raw)


def summary(pipeline) -> str:
    """One line for systemd's STATUS=: how many cameras run, frames colorized and passed through."""
    states = [r.source.stats.state.value for r in pipeline.cameras.values()]
    return (f"{states.count('running')}/{len(states)} cameras running; "
            f"{sum(r.colorized for r in pipeline.cameras.values())} frames colorized, "
            f"{sum(r.passed_through for r in pipeline.cameras.values())} passed through")


class Daemon:
    """The main loop of `streamd run`: signals, systemd notifications, reloads, status lines."""

    def __init__(self, pipeline, config_path: Path | None, report_every: float, http=None) -> None:
        from streamd.systemd import Notifier

        self.pipeline, self.config_path, self.report_every, self.http = pipeline, config_path, report_every, http
        self.notifier = Notifier()
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.failure: str | None = None  # why the loop gave up (a stalled pipeline); None: a normal stop

    def install_signals(self) -> None:
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())

    def _reload(self) -> None:
        self.reload.clear()
        if self.config_path is None:
            log.warning("reload: nothing to re-read (started without -c CONFIG)")
            return
        self.notifier.reloading()
        try:
            changes = self.pipeline.apply(cfgmod.load(self.config_path))
            log.info("reload: %s", "; ".join(changes) or "no camera changed")
        except cfgmod.ConfigError as e:
            log.error("reload refused, the running configuration stays: %s", e)
        self.notifier.ready(summary(self.pipeline))

    def run(self) -> None:
        self.pipeline.start()
        if self.http:
            self.http.start()
            self.http.phase = "running"
            log.info("health and metrics on http://%s:%d/healthz and /metrics", *self.http.address[:2])
        self.notifier.ready(summary(self.pipeline))
        last = time.monotonic()
        previous: dict[str, int] = {}
        try:
            while not self.stop.wait(0.2):
                self.failure = self.pipeline.stalled()
                if self.failure:  # no watchdog ping either: a restart is what helps
                    log.error("%s; exiting for the supervisor (systemd: Restart=on-failure) to restart streamd",
                              self.failure)
                    break
                self.notifier.watchdog()
                if self.reload.is_set():
                    self._reload()
                now = time.monotonic()
                if now - last >= self.report_every:
                    for line in status_lines(self.pipeline, now - last, previous):
                        print(line, flush=True)
                    self.notifier.status(summary(self.pipeline))
                    last = now
                if self.pipeline.finished():
                    time.sleep(0.3)  # let the outputs publish what is in flight
                    break
        finally:
            if self.http:
                self.http.phase = "stopping"
            self.notifier.stopping()
            self.pipeline.stop()
            if self.http:
                self.http.stop()


def cmd_run(args: argparse.Namespace) -> int:
    from streamd.health import HealthServer
    from streamd.pipeline import Pipeline

    if bool(args.config) == bool(args.source):
        print("streamd run: give either -c CONFIG or --source URL", file=sys.stderr)
        return EXIT_USAGE
    cfg = cfgmod.load(args.config) if args.config else quick_config(args)
    pipeline = Pipeline(cfg)
    http = None
    if cfg.http.listen:
        host, _, port = cfg.http.listen.rpartition(":")
        http = HealthServer(pipeline, pipeline.instruments.registry, host, int(port))
    daemon = Daemon(pipeline, args.config, args.report_every, http)
    daemon.install_signals()
    log.info("streamd running %d camera(s)%s", len(cfg.cameras),
             f", ZeroMQ on {pipeline.publisher.endpoint}" if pipeline.publisher else "")
    daemon.run()
    if daemon.failure:
        print(f"streamd: {daemon.failure}", file=sys.stderr)
        return EXIT_FAILED
    failed = [r for r in pipeline.cameras.values() if r.source.stats.state == State.FAILED]
    for r in failed:
        print(f"camera {r.config.name} failed: {r.source.stats.last_error}", file=sys.stderr)
    return EXIT_FAILED if failed and len(failed) == len(pipeline.cameras) else 0


def cmd_check(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config)
    for c in cfg.cameras:
        print(f"camera {c.name}: {redact(c.url)}")
    print(f"{args.config}: OK ({len(cfg.cameras)} camera(s))")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamd import demo

    return demo.run(args)


def cmd_colorize(args: argparse.Namespace) -> int:
    from streamd.infer import Colorizer
    from streamd.offline import colorize_paths

    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        print(f"streamd colorize: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    colorizer = Colorizer(args.model, temperature=args.temperature, int8=args.int8)
    try:
        written = colorize_paths(colorizer, args.inputs, args.output, temporal=not args.no_temporal,
                                 every_frame=args.every_frame)
    except ValueError as e:
        print(f"streamd colorize: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {len(written)} file(s) to {args.output}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from streamd.model.train import TrainConfig, train

    cfg = TrainConfig(data=[str(d) for d in args.data], out=str(args.out), steps=args.steps, batch=args.batch,
                      crop=args.crop, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                      rebalance=not args.no_rebalance, gradient_prior=not args.no_gradient_prior,
                      gradient_mix=args.gradient_mix, class_mix=args.class_mix, init=str(args.init) if args.init else None, checkpoint_every=args.checkpoint_every,
                      widths=tuple(args.widths), max_seconds=args.max_minutes * 60 if args.max_minutes else None,
                      augment=args.augment, context=args.context)
    weights = train(cfg)
    print(f"weights: {weights}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from streamd.model.export import export

    meta = export(args.weights, args.output, args.temperature, (args.height, args.width),
                  prior_correction=args.prior_correction)
    print(f"wrote {args.output} ({meta['model_id']}); max |ab| difference to PyTorch: "
          f"{meta['max_ab_difference']:.5f}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from streamd.model.quantize import quantize

    from streamd.infer import int8_copy

    out = args.output or int8_copy(args.model)
    meta = quantize(args.model, out, args.calibration, args.images)
    print(f"wrote {out} ({meta['model_id']}), calibrated on "
          f"{meta['quantization']['calibration_images']} images from {args.calibration}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from streamd import evaluate

    return evaluate.main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from streamd import bench

    return bench.main(args)


def cmd_adapt(args: argparse.Namespace) -> int:
    if args.idle_priority:  # before torch and ONNX Runtime start their threads (which would inherit it anyway)
        from streamd.schedule import lowest_priority

        lowest_priority()
    from streamd import adapt

    try:
        return adapt.main(args)
    except ValueError as e:
        print(f"streamd adapt: {e}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamd", description="Real-time colorization of gray camera streams.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="synthetic gray camera -> colorized live -> ZeroMQ, MP4 and a PNG")
    d.add_argument("--seconds", type=float, default=12.0)
    d.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the synthetic camera")
    d.add_argument("--fps", type=float, default=25.0)
    d.add_argument("--zmq", default="tcp://127.0.0.1:5555")
    d.add_argument("--out", type=Path, default=Path("streamd-demo"), help="folder for demo.mp4 and demo.png")
    d.add_argument("--model", type=Path, default=None)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="the daemon: cameras in, colour frames out")
    r.add_argument("-c", "--config", type=Path)
    r.add_argument("--source", action="append", default=[], metavar="[NAME=]URL",
                   help="a camera (RTSP URL or video file); repeat for several")
    r.add_argument("--zmq", default="tcp://127.0.0.1:5555", help="PUB endpoint ('' for none)")
    r.add_argument("--rtsp-out", default="", metavar="URL", help="push H.264 here (one path per camera)")
    r.add_argument("--file-out", default="", metavar="PATH", help="write an MP4 here")
    r.add_argument("--format", default="bgr24", choices=["bgr24", "yuv420p", "jpeg"], help="ZeroMQ payload")
    r.add_argument("--rtsp-transport", default="tcp", choices=["tcp", "udp"])
    r.add_argument("--loop", action="store_true", help="play video files in a loop, as a camera")
    r.add_argument("--no-temporal", action="store_true", help="colorize each frame on its own (flickers)")
    r.add_argument("--model", default="", help="ONNX model (default: the shipped one)")
    r.add_argument("--http", default="", metavar="HOST:PORT", help="serve /healthz and /metrics here")
    r.add_argument("--report-every", type=float, default=5.0, help="seconds between status lines")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("-c", "--config", type=Path, required=True)
    c.set_defaults(func=cmd_check)

    z = sub.add_parser("colorize", help="colorize image and video files")
    z.add_argument("inputs", nargs="+", type=Path)
    z.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    z.add_argument("--model", type=Path, default=None)
    z.add_argument("--temperature", type=float, default=None)
    z.add_argument("--no-temporal", action="store_true", help="colorize each video frame on its own")
    z.add_argument("--every-frame", action="store_true", help="run the network on every video frame (by default "
                   "still and moving scenes reuse or carry the last prediction, as the daemon's cameras do)")
    z.add_argument("--int8", choices=["auto", "on", "off"], default="auto",
                   help="auto (as the daemon): on the CPU, the model's int8 copy <name>-int8.onnx if it has one")
    z.set_defaults(func=cmd_colorize)

    t = sub.add_parser("train", help="train the network (needs the train extra: torch)")
    t.add_argument("data", nargs="+", type=Path, help="folders of images and videos")
    t.add_argument("-o", "--out", type=Path, default=Path("checkpoints"))
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--crop", type=int, default=176)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's decoupled weight decay")
    t.add_argument("--widths", type=int, nargs=4, default=[24, 48, 96, 192])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda")
    t.add_argument("--init", type=Path, help="start from these weights (e.g. models/streamd-base.pt)")
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--max-minutes", type=float, help="a time budget: the schedule ends with it")
    t.add_argument("--augment", action="store_true", help="random gamma, contrast and noise on L")
    t.add_argument("--context", action="store_true",
                   help="a global-context branch (the frame's mean deep features); added, starting at zero, to "
                        "--init weights without one")
    t.add_argument("--no-rebalance", action="store_true", help="ablation: no class rebalancing")
    t.add_argument("--no-gradient-prior", action="store_true", help="ablation: no gradient prior")
    t.add_argument("--gradient-mix", type=float, default=0.5,
                   help="lambda of the gradient prior's mix with uniform (0.5 as for class rebalancing; 1 = off)")
    t.add_argument("--class-mix", type=float, default=0.5,
                   help="lambda of the class prior's mix with uniform (Zhang's 0.5; lower weighs rare colours more)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="weights -> ONNX with the decoding inside")
    e.add_argument("weights", type=Path)
    e.add_argument("-o", "--output", type=Path, required=True)
    e.add_argument("--temperature", type=float, default=0.38)
    e.add_argument("--prior-correction", type=float, default=0.0, metavar="ALPHA",
                   help="divide the class-rebalancing weights back out of the distribution to this power before "
                        "decoding: 0 is the seed's decoding, higher trades colour for PSNR (models/streamd-base.md)")
    e.add_argument("--width", type=int, default=320)
    e.add_argument("--height", type=int, default=192)
    e.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="ONNX model -> int8 for faster CPU inference (needs the train extra: onnx)")
    q.add_argument("model", type=Path, help="an exported model, e.g. models/streamd-base.onnx")
    q.add_argument("-o", "--output", type=Path,
                   help="default: <model>-int8.onnx beside it, which the daemon runs on CPUs ([model] int8 = auto)")
    q.add_argument("--calibration", type=Path, required=True, help="folder of colour or gray images like the cameras'")
    q.add_argument("--images", type=int, default=64, help="calibrate on this many of them, spread over the folder")
    q.set_defaults(func=cmd_quantize)

    a = sub.add_parser("adapt", help="fine-tune the model on one camera's own colour frames")
    a.add_argument("sources", nargs="+", type=Path, help="folders of the camera's images (in time order) or videos")
    a.add_argument("-o", "--output", type=Path, required=True, help="the adapted ONNX model")
    a.add_argument("--head-only", action="store_true",
                   help="adapt only the network's last stage (up_quarter, classify); the rest stays generic")
    a.add_argument("--max-steps", type=int, help="stop after this many steps if the budget lasts that long "
                   "(the schedule is laid out over whichever ends first)")
    a.add_argument("--budget-minutes", type=float, default=8.0)
    a.add_argument("--holdout", type=float, default=0.4, help="last share of the frames, held back to score")
    a.add_argument("--init", type=Path, help="weights to start from (default: the shipped model's)")
    a.add_argument("--against", type=Path, help="the model the camera runs now: the adapted one is kept only if it "
                   "beats this one (default: the generic model, the ONNX model beside --init or the shipped one)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="auto", help="where to train: auto (CUDA where present), cpu, cuda")
    a.add_argument("--threads", type=int, default=0, help="CPU threads for training and scoring (0: all cores)")
    a.add_argument("--idle-priority", action="store_true",
                   help="run in the idle CPU class (nice 19 where unavailable), as the daemon's runs do")
    a.add_argument("--json", type=Path)
    a.set_defaults(func=cmd_adapt)

    v = sub.add_parser("eval", help="score a model against ground truth, with the gray baseline")
    v.add_argument("--images", type=Path)
    v.add_argument("--videos", type=Path)
    v.add_argument("--model", type=Path, default=None)
    v.add_argument("--temperature", type=float, nargs="*", default=None, help="one or more T to compare")
    v.add_argument("--json", type=Path)
    v.add_argument("--sheet", type=Path, help="contact sheet PNG (gray | ours | truth)")
    v.add_argument("--limit", type=int, default=0, help="at most this many images (0 = all)")
    v.add_argument("--max-frames", type=int, default=120, help="at most the first N frames of each video")
    v.add_argument("--carry-frames", type=int, help="temporal mode: a camera's carry_frames (default: the "
                   "daemon's); 0 runs the network on every moving frame")
    v.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measure pass-through, pipeline and network speed on this machine")
    b.add_argument("--json", type=Path, help="write every measurement here")
    b.add_argument("--short", action="store_true", help="quick: 360p and 720p, 1 and 2 cameras, 2 s clips")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "torch-cpu"],
                   help="cuda: through PyTorch CUDA, the network alone and the pipeline with 8, 32 and 64 1080p "
                        "cameras (needs models/streamd-base.pt); torch-cpu: the same on the CPU, small")
    b.add_argument("--repeats", type=int, default=0, help="runs per measurement, medians reported (0: 3, --short 2)")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except cfgmod.ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FileNotFoundError as e:
        print(f"streamd: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
