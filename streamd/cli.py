"""The `streamd` command: its argument parsers, and each subcommand handed to what does it (the daemon:
streamd.daemon.service; colorize, eval, bench, adapt, demo: streamd.tools; train, export, quantize:
streamd.model) with the exit code it ends with.

Exit codes: 0 success; 1 the job failed (every camera failed, a file could not be processed);
2 bad usage, an invalid config, or one this host cannot start (a port in use, a state directory it cannot
write; the message names the key); 130 interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import logging
import os
import sys
import threading
from pathlib import Path

from streamd import config as cfgmod
from streamd.daemon import fleet
from streamd.daemon.preflight import INSTALLED_UNIT, recording_problems, state_problem
from streamd.daemon.recording import space_warnings
from streamd.daemon.source import State
from streamd.infer.onnx_runtime import ModelError
from streamd.redact import RedactingFormatter, redact
from streamd.steps import set_up_threads

log = logging.getLogger("streamd")
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_ZMQ = "tcp://127.0.0.1:5555"


def quick_config(args: argparse.Namespace) -> cfgmod.Config:
    """`streamd run --source ...` without a config file: one [[camera]] per --source."""
    cameras = []
    for i, spec in enumerate(args.source, start=1):
        name, url = spec.split("=", 1) if "=" in spec.split("://", 1)[0] else (f"cam{i}", spec)
        several = len(args.source) > 1
        rtsp_out = (args.rtsp_out.rstrip("/") + f"/{name}" if several else args.rtsp_out) if args.rtsp_out else ""
        cameras.append({"name": name, "url": url, "transport": args.rtsp_transport, "loop": args.loop,
                        "rtsp_out": rtsp_out, "file_out": args.file_out, "temporal": not args.no_temporal})
    raw = {"camera": cameras, "zmq": {"endpoint": DEFAULT_ZMQ if args.zmq is None else args.zmq, "format": args.format},
           "http": {"listen": args.http or ""}}
    if args.model:
        raw["model"] = {"path": args.model}
    return cfgmod.parse(raw)


def with_flags(cfg: cfgmod.Config, args: argparse.Namespace) -> cfgmod.Config:
    """-c CONFIG with --zmq or --http: the flags replace the file's [zmq] endpoint and [http] listen, so that
    shards of one config file can run side by side on one host, each on ports of its own."""
    zmq = cfg.zmq if args.zmq is None else dataclasses.replace(cfg.zmq, endpoint=args.zmq)
    http = cfg.http if args.http is None else dataclasses.replace(cfg.http, listen=args.http)
    return cfgmod.validate(dataclasses.replace(cfg, zmq=zmq, http=http))


def cmd_run(args: argparse.Namespace) -> int:
    from streamd.daemon import service

    if bool(args.config) == bool(args.source):
        print("streamd run: give either -c CONFIG or --source URL", file=sys.stderr)
        return EXIT_USAGE
    cfg = with_flags(cfgmod.load(args.config), args) if args.config else quick_config(args)
    try:
        shard = fleet.resolve(args.shard or cfg.fleet.shard, os.environ)
    except ValueError as e:
        raise cfgmod.ConfigError(f"{'--shard' if args.shard else 'fleet.shard'}: {e}") from e
    daemon = service.run(cfg, args.config, args.report_every, shard, lambda path: with_flags(cfgmod.load(path), args))
    if daemon.failure:
        print(f"streamd: {daemon.failure}", file=sys.stderr)
        return service.leave(EXIT_FAILED)
    if daemon.interrupted:
        return service.leave(EXIT_INTERRUPTED)
    cameras = daemon.pipeline.cameras
    failed = [r for r in cameras.values() if r.source.stats.state == State.FAILED]
    for r in failed:
        print(f"camera {r.config.name} failed: {r.source.stats.last_error}", file=sys.stderr)
    return service.leave(EXIT_FAILED if failed and len(failed) == len(cameras) else 0)


def cmd_check(args: argparse.Namespace) -> int:
    cfg = cfgmod.load(args.config)
    if args.shards is not None and not 1 <= args.shards <= fleet.MAX_SHARDS:
        print(f"streamd check: --shards must be between 1 and {fleet.MAX_SHARDS}", file=sys.stderr)
        return EXIT_USAGE
    unit = args.unit or (INSTALLED_UNIT if INSTALLED_UNIT.is_file() else None)
    for c in cfg.cameras:
        shard = f" (shard {fleet.owner(c.name, args.shards)}/{args.shards})" if args.shards else ""
        print(f"camera {c.name}{shard}: {redact(c.url)}")
        if c.file_out:
            print(f"camera {c.name}: recording to {Path(c.file_out) / c.name} in {c.file_segment_s:g} s segments, "
                  f"kept {c.file_retain_days:g} days and {c.file_retain_gb:g} GB at most (0: no limit)")
    try:  # a shard host records only its shard's cameras (the shard units check the whole fleet.toml)
        shard = fleet.resolve(cfg.fleet.shard, os.environ)
    except ValueError:
        shard = None
    for warning in space_warnings(fleet.mine(cfg.cameras, shard)):
        print(f"warning: {warning}", file=sys.stderr)
    problems = recording_problems(cfg, args.instance or args.config.stem, unit)
    if cfg.adapt.state_dir or os.environ.get("STATE_DIRECTORY"):  # else: the home of the user the daemon runs as
        state = state_problem(cfg, cfg.cameras)
        if state:
            problems.append(state)
    for problem in problems:
        print(f"config error: {problem}", file=sys.stderr)
    if problems:
        return EXIT_USAGE
    print(f"{args.config}: OK ({len(cfg.cameras)} camera(s)){f', checked against {unit}' if unit else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamd.tools import demo

    return demo.run(args)


def cmd_colorize(args: argparse.Namespace) -> int:
    from streamd.infer.onnx_runtime import Colorizer
    from streamd.tools.colorize import colorize_paths, plan

    missing = [str(p) for p in args.inputs if not p.exists()]
    if missing:
        print(f"streamd colorize: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        jobs = plan(args.inputs, args.output)
    except ValueError as e:
        print(f"streamd colorize: {e}", file=sys.stderr)
        return EXIT_USAGE
    colorizer = Colorizer(args.model, temperature=args.temperature, int8=args.int8)
    by_reference = None
    if args.reference:
        from streamd.colour.reference import ReferenceError, from_source
        from streamd.daemon.reference_store import CameraReference
        from streamd.infer.onnx_runtime import REFERENCE_MODEL, shipped_model
        from streamd.steps import ReferenceColouring

        try:
            reference = from_source(args.reference)
        except ReferenceError as e:
            print(f"streamd colorize: --reference {e}", file=sys.stderr)
            return EXIT_USAGE
        model = Colorizer(args.reference_model or shipped_model(REFERENCE_MODEL), int8=args.int8)
        if not model.takes_reference:
            print(f"streamd colorize: --reference-model {model.path} takes no day reference", file=sys.stderr)
            return EXIT_USAGE
        by_reference = ReferenceColouring(model, CameraReference("colorize", None, None, reference=reference))
    try:
        written = colorize_paths(colorizer, jobs, temporal=not args.no_temporal, every_frame=args.every_frame,
                                 by_reference=by_reference)
    except ValueError as e:
        print(f"streamd colorize: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {len(written)} file(s) to {args.output}" if len(written) != 1 else f"wrote {written[0]}")
    return 0


def cmd_reference_build(args: argparse.Namespace) -> int:
    from streamd.colour.reference import ReferenceError, from_source

    if args.output.suffix.lower() != ".npz":
        print(f"streamd reference build: -o {args.output}: a reference file is named .npz", file=sys.stderr)
        return EXIT_USAGE
    try:
        reference = from_source(args.day)
    except ReferenceError as e:
        print(f"streamd reference build: {e}", file=sys.stderr)
        return EXIT_USAGE
    reference.save(args.output)
    import cv2

    if args.picture and not cv2.imwrite(str(args.picture), cv2.cvtColor(reference.picture(), cv2.COLOR_RGB2BGR)):
        print(f"streamd reference build: {args.picture}: could not be written", file=sys.stderr)
        return EXIT_FAILED
    width, height = reference.source_size
    print(f"wrote {args.output}: {reference.frames} day frames of {width}x{height}, mean confidence "
          f"{reference.confidence.mean():.2f}")
    return 0


def parse_folder_weight(spec: str, data: list[str]) -> tuple[str, float]:
    """`--weight FOLDER=FACTOR`, FOLDER one of the data folders as given."""
    folder, _, factor = spec.rpartition("=")
    try:
        weight = float(factor)
    except ValueError:
        weight = -1.0
    if folder not in data or not weight >= 0:
        raise ValueError(f"--weight {spec!r}: expected FOLDER=FACTOR, FOLDER one of the data folders as given "
                         "and FACTOR a number >= 0")
    return folder, weight


def missing_train_extra(command: str, modules: tuple[str, ...]) -> str | None:
    """The one line to print when one of `modules` (of the `train` extra) is not installed, or None."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            return f"streamd {command}: needs {module}, which is not installed here: pip install 'streamd[train]'"
    return None


def needs_train_extra(*modules: str):
    """For commands that need the `train` extra: without one of its `modules`, the command says in one line
    what to install and exits with EXIT_USAGE, before it starts any work."""
    def decorate(command):
        @functools.wraps(command)
        def checked(args: argparse.Namespace) -> int:
            if missing := missing_train_extra(args.command, modules):
                print(missing, file=sys.stderr)
                return EXIT_USAGE
            return command(args)
        return checked
    return decorate


@needs_train_extra("torch")
def cmd_train(args: argparse.Namespace) -> int:
    from streamd.model.train import TrainConfig, train

    data = [str(d) for d in args.data]
    try:
        folder_weights = dict(parse_folder_weight(spec, data) for spec in args.weight)
    except ValueError as e:
        print(f"streamd train: {e}", file=sys.stderr)
        return 2
    if min(args.luma_mix, args.nir_like) < 0 or args.luma_mix + args.nir_like > 1:
        print("streamd train: --luma-mix and --nir-like are shares of the crops: each at least 0, at most 1 "
              "together", file=sys.stderr)
        return 2
    cfg = TrainConfig(data=data, out=str(args.out), steps=args.steps, batch=args.batch,
                      crop=args.crop, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                      rebalance=not args.no_rebalance, gradient_prior=not args.no_gradient_prior,
                      gradient_mix=args.gradient_mix, class_mix=args.class_mix, init=str(args.init) if args.init else None, checkpoint_every=args.checkpoint_every,
                      widths=tuple(args.widths) if args.widths else None, max_seconds=args.max_minutes * 60 if args.max_minutes else None,
                      augment=args.augment, context=args.context, luma_mix=args.luma_mix, nir_like=args.nir_like,
                      folder_weights=folder_weights, reference=bool(args.scenes), scenes=[str(d) for d in args.scenes],
                      teacher=str(args.teacher) if args.teacher else None)
    try:
        weights = train(cfg)
    except ValueError as e:  # a combination of options that cannot train (named in the message)
        print(f"streamd train: {e}", file=sys.stderr)
        return 2
    print(f"weights: {weights}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """WEIGHTS -o OUTPUT needs the train extra; --triton alone only packages an ONNX model, and does not."""
    if bool(args.weights) != bool(args.output):
        print("streamd export: give WEIGHTS with -o OUTPUT (and optionally --triton DIR), or only --triton DIR "
              "(with --model, default the shipped one)", file=sys.stderr)
        return EXIT_USAGE
    if not args.weights and not args.triton:
        print("streamd export: nothing to do: give WEIGHTS -o OUTPUT, or --triton DIR", file=sys.stderr)
        return EXIT_USAGE
    model = args.model
    if args.weights:
        if missing := missing_train_extra(args.command, ("torch", "onnx")):
            print(missing, file=sys.stderr)
            return EXIT_USAGE
        from streamd.model.export import export

        if not 0 <= args.cast_correction <= 1:
            print(f"streamd export: --cast-correction {args.cast_correction:g}: give a share of the frame's mean "
                  "colour from 0 (off) to 1 (gray world)", file=sys.stderr)
            return EXIT_USAGE

        meta = export(args.weights, args.output, args.temperature, (args.height, args.width),
                      prior_correction=args.prior_correction, shrink=args.shrink,
                      cast_correction=args.cast_correction)
        print(f"wrote {args.output} ({meta['model_id']}); max |ab| difference to PyTorch: "
              f"{meta['max_ab_difference']:.5f}")
        model = args.output
    if args.triton:
        from streamd.infer.onnx_runtime import shipped_model
        from streamd.model.triton_repo import write_repository

        model = model or shipped_model()
        if not model.is_file():
            raise FileNotFoundError(f"model {model} does not exist")
        if args.triton_max_batch < 1:
            print("streamd export: --triton-max-batch must be at least 1", file=sys.stderr)
            return EXIT_USAGE
        try:
            folder = write_repository(model, args.triton, args.triton_name, args.triton_max_batch)
        except ModelError:
            raise  # names the model file, not the option
        except ValueError as e:
            print(f"streamd export: --triton-name: {e}", file=sys.stderr)
            return EXIT_USAGE
        print(f"wrote the Triton model {args.triton_name!r} for {model} to {folder} (serve it with "
              f"tritonserver --model-repository {args.triton}; [model] provider = \"triton\", "
              f"triton_model = \"{args.triton_name}\")")
    return 0


@needs_train_extra("onnx")
def cmd_quantize(args: argparse.Namespace) -> int:
    from streamd.model.quantize import quantize

    from streamd.infer.onnx_runtime import int8_copy

    out = args.output or int8_copy(args.model)
    meta = quantize(args.model, out, args.calibration, args.images)
    print(f"wrote {out} ({meta['model_id']}), calibrated on "
          f"{meta['quantization']['calibration_images']} images from {args.calibration}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.reference:
        from streamd.tools.evaluate import reference as evaluate_reference

        return evaluate_reference.main(args)
    from streamd.tools.evaluate import main as evaluate

    return evaluate.main(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from streamd.tools.bench import main as bench

    return bench.main(args)


@needs_train_extra("torch", "onnx")
def cmd_adapt(args: argparse.Namespace) -> int:
    from streamd.daemon.schedule import end_with_parent, lowest_priority

    if args.parent:
        end_with_parent(args.parent)
    if args.idle_priority:  # before torch and ONNX Runtime start their threads (which would inherit it anyway)
        lowest_priority()
    from streamd.tools import adapt

    try:
        return adapt.main(args)
    except ValueError as e:
        print(f"streamd adapt: {e}", file=sys.stderr)
        return EXIT_USAGE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamd", description="Real-time colorization of gray camera streams.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="synthetic gray camera -> colorized live -> ZeroMQ, an MP4 recording and a PNG")
    d.add_argument("--seconds", type=float, default=12.0)
    d.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of the synthetic camera")
    d.add_argument("--fps", type=float, default=25.0)
    d.add_argument("--zmq", default="tcp://127.0.0.1:5555")
    d.add_argument("--out", type=Path, default=Path("streamd-demo"),
                   help="folder for the recording (demo/, MP4 segments) and demo.png")
    d.add_argument("--model", type=Path, default=None)
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("run", help="the daemon: cameras in, colour frames out")
    r.add_argument("-c", "--config", type=Path)
    r.add_argument("--source", action="append", default=[], metavar="[NAME=]URL",
                   help="a camera (RTSP URL or video file); repeat for several")
    r.add_argument("--zmq", help=f"PUB endpoint ('' for none; default {DEFAULT_ZMQ}); with -c, replaces [zmq] endpoint")
    r.add_argument("--rtsp-out", default="", metavar="URL", help="push H.264 here (one path per camera)")
    r.add_argument("--file-out", default="", metavar="FOLDER",
                   help="record each camera here, in MP4 segments of a minute: FOLDER/NAME/START.mp4")
    r.add_argument("--format", default="bgr24", choices=["bgr24", "yuv420p", "jpeg"], help="ZeroMQ payload")
    r.add_argument("--rtsp-transport", default="tcp", choices=["tcp", "udp"])
    r.add_argument("--loop", action="store_true", help="play video files in a loop, as a camera")
    r.add_argument("--no-temporal", action="store_true", help="colorize each frame on its own (flickers)")
    r.add_argument("--model", default="", help="ONNX model (default: the shipped one)")
    r.add_argument("--http", metavar="HOST:PORT", help="serve the status page, /healthz and /metrics here (off "
                   "localhost: a config file with [http] token); with -c, replaces [http] listen")
    r.add_argument("--report-every", type=float, default=5.0, help="seconds between status lines")
    r.add_argument("--shard", default="", metavar="I/N", help="run only the config's cameras of shard I (from 0) of N "
                   "(rendezvous hash of the names; 'auto': from $STREAMD_SHARDS and the pod ordinal); overrides "
                   "[fleet] shard")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="validate a config file")
    c.add_argument("-c", "--config", type=Path, required=True)
    c.add_argument("--shards", type=int, metavar="N",
                   help="also say which of N shards runs each camera")
    c.add_argument("--unit", type=Path, help="check the recording folders against this systemd unit's sandbox "
                   f"(default: {INSTALLED_UNIT} where installed)")
    c.add_argument("--instance", metavar="NAME", help="the unit's instance that runs this config (default: the "
                   "config's name, as streamd@NAME runs NAME.toml; streamd-shard@I passes I)")
    c.set_defaults(func=cmd_check)

    z = sub.add_parser("colorize", help="colorize image and video files")
    z.add_argument("inputs", nargs="+", type=Path)
    z.add_argument("-o", "--output", required=True, help="output folder (created); for one input file also a file "
                   "name: clip.mp4 -o night.mp4, photo.jpg -o out.png")
    z.add_argument("--model", type=Path, default=None)
    z.add_argument("--temperature", type=float, default=None)
    z.add_argument("--no-temporal", action="store_true", help="colorize each video frame on its own")
    z.add_argument("--every-frame", action="store_true", help="run the network on every video frame (by default "
                   "still and moving scenes reuse or carry the last prediction, as the daemon's cameras do)")
    z.add_argument("--int8", choices=["auto", "on", "off"], default="auto",
                   help="auto (as the daemon): on the CPU, the model's int8 copy <name>-int8.onnx if it has one")
    z.add_argument("--reference", type=Path, metavar="DAY",
                   help="colour from a day reference of the same view: a folder of colour images, a colour video "
                        "or a reference file (streamd reference build); inputs it does not fit get the model's colour")
    z.add_argument("--reference-model", type=Path, default=None,
                   help="the model that colours from the reference (default: the shipped streamd-reference.onnx)")
    z.set_defaults(func=cmd_colorize)

    r = sub.add_parser("reference", help="a camera's day reference: its still scene in colour, per pixel")
    rsub = r.add_subparsers(dest="action", required=True)
    rb = rsub.add_parser("build", help="build a reference from a camera's colour (day) frames")
    rb.add_argument("day", type=Path, metavar="DAY", help="a folder of colour images or a colour video, one view")
    rb.add_argument("-o", "--output", type=Path, required=True, help="the reference file to write (.npz)")
    rb.add_argument("--picture", type=Path, help="also write the reference as a picture (.png, .jpg)")
    rb.set_defaults(func=cmd_reference_build)

    t = sub.add_parser("train", help="train the network (needs the train extra: torch)")
    t.add_argument("data", nargs="+", type=Path, help="folders of images and videos")
    t.add_argument("-o", "--out", type=Path, default=Path("checkpoints"))
    t.add_argument("--steps", type=int, default=20000)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--crop", type=int, default=176)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW's decoupled weight decay")
    t.add_argument("--widths", type=int, nargs=4, help="the network's widths (default: --init's, else 24 48 96 "
                   "192); narrower than --init's: it starts as --init narrowed, each layer its strongest channels")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", help="auto, cpu, cuda")
    t.add_argument("--init", type=Path, help="start from these weights (e.g. models/streamd-base.pt)")
    t.add_argument("--teacher", type=Path, help="weights whose distribution over the ab bins the network also "
                   "learns to match (distillation: a narrower network trained from a wider one)")
    t.add_argument("--checkpoint-every", type=int, default=500)
    t.add_argument("--max-minutes", type=float, help="a time budget: the schedule ends with it")
    t.add_argument("--augment", action="store_true", help="random gamma, contrast and noise on L")
    t.add_argument("--luma-mix", type=float, default=0.0, metavar="SHARE",
                   help="this share of crops gets an L made of a random mix of R, G and B (robustness to "
                        "near-infrared luma)")
    t.add_argument("--nir-like", type=float, default=0.0, metavar="SHARE",
                   help="this share of crops gets an L that imitates a near-infrared camera's: red and foliage "
                        "bright, blue sky dark (with --luma-mix, at most 1 together)")
    t.add_argument("--weight", action="append", default=[], metavar="FOLDER=FACTOR",
                   help="draw the images of one of the data folders FACTOR times as often (repeatable)")
    t.add_argument("--context", action="store_true",
                   help="a global-context branch (the frame's mean deep features); added, starting at zero, to "
                        "--init weights without one")
    t.add_argument("--scenes", action="append", type=Path, default=[], metavar="FOLDER",
                   help="train a reference network (for cameras with a day reference): FOLDER holds fixed-camera "
                        "frame sequences (SCENE_000123.jpg), whose references are built from some of their frames "
                        "and tried on the others; the data folders give photos with synthetic references "
                        "(repeatable; start from generic weights with --init)")
    t.add_argument("--no-rebalance", action="store_true", help="ablation: no class rebalancing")
    t.add_argument("--no-gradient-prior", action="store_true", help="ablation: no gradient prior")
    t.add_argument("--gradient-mix", type=float, default=0.5,
                   help="lambda of the gradient prior's mix with uniform (0.5 as for class rebalancing; 1 = off)")
    t.add_argument("--class-mix", type=float, default=0.5,
                   help="lambda of the class prior's mix with uniform (Zhang's 0.5; lower weighs rare colours more)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="weights -> ONNX with the decoding inside; a model -> a Triton model repository")
    e.add_argument("weights", type=Path, nargs="?", help="training weights (.pt) to export to ONNX")
    e.add_argument("-o", "--output", type=Path, help="the ONNX model written from WEIGHTS")
    e.add_argument("--triton", type=Path, metavar="DIR", help="also (or, without WEIGHTS, only) write a Triton model "
                   "repository for the model here: config.pbtxt with dynamic batching and the model's metadata, "
                   "the ONNX model, and a TensorRT variant for GPU servers (docs/scaling.md)")
    e.add_argument("--triton-name", default="streamd", metavar="NAME", help="the model's name in that repository")
    e.add_argument("--triton-max-batch", type=int, default=64, metavar="N", help="frames per server batch (the "
                   "server's dynamic batcher merges the requests of all camera hosts up to this)")
    e.add_argument("--model", type=Path, help="without WEIGHTS: the ONNX model to put in the Triton repository "
                   "(default: the shipped one)")
    e.add_argument("--temperature", type=float, default=0.38)
    e.add_argument("--prior-correction", type=float, default=0.0, metavar="ALPHA",
                   help="divide the class-rebalancing weights back out of the distribution to this power before "
                        "decoding: 0 is the seed's decoding, higher trades colour for PSNR (models/streamd-base.md)")
    e.add_argument("--shrink", type=float, default=0.0, metavar="K",
                   help="shrink colour the distribution does not single out towards gray (0: off; "
                        "models/streamd-base.md)")
    e.add_argument("--cast-correction", type=float, default=0.0, metavar="BETA",
                   help="remove this share of each frame's mean colour, a frame-wide cast (0: off, 1: gray "
                        "world; models/streamd-base.md)")
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
    a.add_argument("--parent", type=int, default=0, metavar="PID",
                   help="end when this process ends (the daemon that started the run)")
    a.add_argument("--json", type=Path)
    a.set_defaults(func=cmd_adapt)

    v = sub.add_parser("eval", help="score a model against ground truth, each folder on its own, beside gray")
    v.add_argument("folders", nargs="+", type=Path,
                   help="subsets to score separately: folders of colour images; of NAME_nir / NAME_rgb pairs "
                        "(gray input, colour truth: scored on colour only); or of videos and frame folders")
    v.add_argument("--model", type=Path, default=None, help="an ONNX model (default: the shipped one), or "
                   "weights (.pt) to decode in PyTorch as --decode says")
    v.add_argument("--temperature", type=float, nargs="*", default=None, help="ONNX: one or more T to compare")
    v.add_argument("--decode", nargs="*", default=None, metavar="T:ALPHA[:SHRINK[:CAST]]",
                   help="weights: the decodings to compare, as streamd export would bake them with --temperature, "
                        "--prior-correction, --shrink and --cast-correction (default: the shipped model's)")
    v.add_argument("--json", type=Path)
    v.add_argument("--sheets", type=Path, help="write a contact sheet per subset here (gray | ours | truth)")
    v.add_argument("--limit", type=int, default=0, help="at most this many images, pairs or videos per subset, "
                   "spread over it (0 = all)")
    v.add_argument("--max-frames", type=int, default=120, help="at most the first N frames of each video")
    v.add_argument("--carry-frames", type=int, help="temporal mode: a camera's carry_frames (default: the "
                   "daemon's); 0 runs the network on every moving frame")
    v.add_argument("--reference", action="store_true",
                   help="score colour from a day reference: each scene of the folders (frames SCENE_000123.jpg) is "
                        "split into its day (the first 60 %%, the reference) and its night, given as gray and as "
                        "near-infrared-like luma, with a wrong reference and under other light; beside gray, the "
                        "copy of the reference and the generic model")
    v.add_argument("--masks", type=Path, help="--reference: foreground masks named as the frames (PNG, 255 = moving "
                   "object, 0 = background): moving objects and background are scored apart")
    v.add_argument("--reference-model", type=Path, default=None,
                   help="--reference: the reference model (default: the shipped streamd-reference.onnx)")
    v.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measure pass-through, pipeline and network speed on this machine")
    b.add_argument("--json", type=Path, help="write every measurement here")
    b.add_argument("--short", action="store_true", help="quick: 360p and 720p, 1 and 2 cameras, 2 s clips")
    b.add_argument("--device", default="cpu", choices=["cpu", "cuda", "torch-cpu"],
                   help="cuda: through PyTorch CUDA, the network alone and the pipeline with 8, 32 and 64 1080p "
                        "cameras (needs models/streamd-base.pt); torch-cpu: the same on the CPU, small")
    b.add_argument("--repeats", type=int, default=0, help="runs per measurement, medians reported (0: 3, --short 2)")
    b.add_argument("--cameras", type=int, nargs="+", help="cuda, torch-cpu: the pipeline's camera counts (default "
                   "8 32 64, torch-cpu 1 2); with --processes, cameras per process")
    b.add_argument("--processes", type=int, default=1, help="cuda, torch-cpu: only the pipeline, as this many "
                   "processes of --cameras each, started together (as several instances of the unit run them)")
    b.add_argument("--hwaccel", default="", choices=["", "cuda"], help="cuda, torch-cpu: the cameras decode on "
                   "NVDEC (falling back to the CPU where it does not open)")
    b.add_argument("--frame-cost", metavar="WxH", help="only the CPU time of each per-frame step of one camera "
                   "of this size, the network replaced by a fixed prediction (--short: 25 frames, else 100)")
    b.add_argument("--reference", metavar="WxH", help="only what colour from a day reference costs per frame of one "
                   "camera of this size, against the generic path, in turns (--short: 20 frames, else 60)")
    b.add_argument("--triton", metavar="HOST:PORT", help="only the network and the pipeline on this Triton "
                   "server's gRPC endpoint against ONNX Runtime in this process, the same model on both sides")
    b.add_argument("--triton-model", default="streamd", metavar="NAME", help="--triton: the model's name on the "
                   "server (default: streamd)")
    b.set_defaults(func=cmd_bench)
    return p


def setup_logging(verbose: bool) -> None:
    """Every log line of the process (streamd's, its libraries', tracebacks included) and every error that
    escapes a thread go out through a RedactingFormatter: no camera credentials in the journal. Left alone
    where the process already has logging set up (streamd called from Python: the caller owns it)."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])

    def thread_died(a: threading.ExceptHookArgs) -> None:
        name = a.thread.name if a.thread else "?"
        log.critical("thread %s ended by an unexpected error", name, exc_info=(a.exc_type, a.exc_value, a.exc_traceback))

    threading.excepthook = thread_died


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    set_up_threads()
    try:
        return args.func(args)
    except cfgmod.ConfigError as e:
        print(f"config error: {redact(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, ModelError) as e:
        print(f"streamd: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # the traceback, through the redacting log handler rather than Python's own
        log.critical("streamd %s: unexpected error", args.command, exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
