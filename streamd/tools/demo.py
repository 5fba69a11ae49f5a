"""`streamd demo`: the whole product on a synthetic gray camera, with nothing to install or connect.

A synthetic camera films scikit-image's photos in gray; the pipeline colorizes it live and publishes over
ZeroMQ and to an MP4 recording; the demo itself subscribes like downstream code would, prints fps and latency, and
writes a side-by-side PNG (gray | colorized | original) of one received frame.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from streamd import config as cfgmod
from streamd.client import Subscriber
from streamd.daemon.pipeline import Pipeline
from streamd.daemon.source import SyntheticCamera


def side_by_side(colour_bgr: np.ndarray, original_bgr: np.ndarray) -> np.ndarray:
    gray = cv2.cvtColor(cv2.cvtColor(colour_bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return np.hstack([gray, colour_bgr, original_bgr])


def run(args: argparse.Namespace) -> int:
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    cfg = cfgmod.parse({
        "camera": [{"name": "demo", "url": "synthetic:", "width": width, "height": height, "fps": args.fps,
                    "duration_s": args.seconds, "file_out": str(args.out)}],
        "zmq": {"endpoint": args.zmq, "format": "bgr24", "hwm": 8},
        "model": {"path": str(args.model)} if args.model else {},
    })
    camera = SyntheticCamera((width, height), args.fps)
    pipeline = Pipeline(cfg)
    subscriber = Subscriber(pipeline.publisher.endpoint, "demo")
    time.sleep(0.2)  # let the subscription reach the publisher before the first frame
    pipeline.start()
    print(f"demo: {width}x{height} at {args.fps:g} fps for {args.seconds:g} s; model "
          f"{pipeline.colorizer.info.model_id} on {pipeline.colorizer.provider}; ZeroMQ {pipeline.publisher.endpoint}")
    received, latencies, snapshot = 0, [], None
    start = last_report = time.monotonic()
    window_start_count = 0
    try:
        while not pipeline.finished() or received == 0:
            got = subscriber.recv(timeout=0.5)
            now = time.monotonic()
            if got is not None:
                header, image = got
                received += 1
                latencies.append(header["latency_ms"])
                if header["colorized"] and (snapshot is None or header["seq"] <= args.fps * 2.5):
                    snapshot = (header["seq"], image.copy())
            if now - last_report >= 1.0:
                lat = latencies[-50:] or [float("nan")]
                print(f"  {now - start:4.1f} s: {(received - window_start_count) / (now - last_report):5.1f} fps, "
                      f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms", flush=True)
                window_start_count, last_report = received, now
            if now - start > args.seconds + 10:
                break
    finally:
        pipeline.stop()
        subscriber.close()
    elapsed = time.monotonic() - start
    runtime = pipeline.cameras["demo"]
    print(f"demo: {received} frames received in {elapsed:.1f} s ({received / elapsed:.1f} fps); "
          f"colorized {runtime.colorized}, dropped {pipeline.dropped('demo')}; latency p50 "
          f"{np.percentile(latencies, 50):.0f} ms, p99 {np.percentile(latencies, 99):.0f} ms")
    if snapshot is None:
        print("demo: no colorized frame arrived over ZeroMQ")
        return 1
    seq, image = snapshot
    png = args.out / "demo.png"
    cv2.imwrite(str(png), side_by_side(image, camera.render(seq)))
    print(f"demo: wrote the recording to {args.out / 'demo'}/ and {png} (gray | colorized | original)")
    return 0
