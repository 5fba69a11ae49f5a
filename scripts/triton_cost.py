"""What inference on a Triton server costs against ONNX Runtime in the process ([model] provider = "triton"
against "cpu"), on this host: the network call alone per batch of 1, 4 and 8 frames, and the real Pipeline
with 1, 4 and 8 paced cameras (streamd.bench.run_paced), delivered fps, latency and inference time per batch.

    scripts/triton-server-env            # once: the Triton server's environment
    python scripts/triton_cost.py --json triton-cost.json

The server is the tests' (tests/triton: nvidia-pytriton's tritonserver, the exported repository on the Python
backend with ONNX Runtime inside, the same fp32 model as the local side, which runs with int8 off). Both run
on this host, so what the Triton path adds is the protocol (serialisation, gRPC over loopback, the Python
backend's shared memory), not a network or a faster server; the two ONNX Runtimes share its cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tritonclient.grpc as grpcclient  # noqa: E402

from streamd import bench  # noqa: E402
from streamd.infer import Colorizer  # noqa: E402
from streamd.infer_triton import TritonColorizer  # noqa: E402
from tests.conftest import MODEL  # noqa: E402
from tests.triton import TritonServer, exported_repository  # noqa: E402


def server_ms(url: str) -> dict[str, float]:
    """The server's cumulative milliseconds in the model (queue, input, compute, output) and its request count."""
    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics("streamd", as_json=True)["model_stats"][0]["inference_stats"]
    finally:
        client.close()
    totals = {key: int(stats[key].get("ns", 0)) / 1e6 for key in ("queue", "compute_input", "compute_infer",
                                                                    "compute_output")}
    return {**totals, "requests": int(stats["success"].get("count", 0))}


def network(local: Colorizer, remote: TritonColorizer, url: str, batches: list[int], rounds: int) -> list[dict]:
    """Per batch size: the call in this process and on the server, interleaved, and how the Triton call's
    time divides into the server's model time (its statistics) and the rest, the protocol."""
    rows = []
    for batch in batches:
        lightness = bench.lightness_batch((192, 320), batch)
        for run in (local, remote):  # warm-up: sessions, the server's first request of this shape
            run(lightness)
        before = server_ms(url)
        seconds = bench.time_interleaved({"local": local, "triton": remote}, lightness, rounds)
        after = server_ms(url)
        requests = after["requests"] - before["requests"]
        model = {k: (after[k] - before[k]) / requests for k in ("queue", "compute_input", "compute_infer",
                                                              "compute_output")}
        triton_mean_ms = statistics.fmean(seconds["triton"]) * 1000
        rows.append({"batch": batch, "local_ms": statistics.median(seconds["local"]) * 1000,
                     "triton_ms": statistics.median(seconds["triton"]) * 1000,
                     "server_model_ms": sum(model.values()), **{f"server_{k}_ms": v for k, v in model.items()},
                     "protocol_ms": triton_mean_ms - sum(model.values())})
    return rows


def pipeline(local: Colorizer, remote: TritonColorizer, clip: Path, cameras: list[int], work: Path,
             repeats: int) -> list[dict]:
    rows = []
    for count in cameras:
        for name, colorizer in (("local", local), ("triton", remote)):
            result = bench.repeated(lambda: bench.run_paced(clip, count, colorizer, work, encode=False), repeats)
            rows.append({"cameras": count, "provider": name, **{k: v for k, v in result.items() if k != "runs"}})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--rounds", type=int, default=30, help="interleaved calls per batch size")
    p.add_argument("--repeats", type=int, default=2, help="pipeline runs per configuration (median)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the cameras' clip")
    p.add_argument("--size", default="640x360")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = TritonServer(exported_repository(work / "repo"), work, threads=0)  # ONNX Runtime on every core
        server.start()
        try:
            local = Colorizer(MODEL, "cpu", int8="off")
            remote = TritonColorizer(server.url, "streamd", timeout_s=30.0)
            clip = work / "clip.mp4"
            bench.make_clip(clip, size, args.seconds)
            result = {"machine": bench.machine_info("CPUExecutionProvider"), "size": args.size,
                      "network": network(local, remote, server.url, [1, 4, 8], args.rounds),
                      "pipeline": pipeline(local, remote, clip, [1, 4, 8], work, args.repeats)}
        finally:
            server.kill()
    print(bench.table(["batch", "local ms", "Triton ms", "of which server model ms", "of which protocol ms (mean)"],
                      [[r["batch"], r["local_ms"], r["triton_ms"], r["server_model_ms"], r["protocol_ms"]]
                       for r in result["network"]]))
    print()
    print(bench.table(["cameras", "provider", "fps/camera", "p50 ms", "p99 ms", "inference ms/batch", "frames/batch",
                       "dropped", "CPU cores"],
                      [[r["cameras"], r["provider"], r["delivered_fps_per_camera"], r["latency_p50_ms"],
                        r["latency_p99_ms"], r["inference_ms_per_batch"], r["frames_per_batch"], r["dropped"],
                        r["cpu_cores"]] for r in result["pipeline"]]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
