"""`streamd bench --triton HOST:PORT`: what inference on a Triton server costs against ONNX Runtime in the
process ([model] provider = "triton" against "cpu"), on this host.

Two measurements, both against the same model on both sides (the server must serve the model this process
would run, `streamd export --triton`; the local side runs it in fp32, as the server does):
* the network call alone per batch, the two providers called in turn; the server's own time in the model
  (queueing for a batch, input, compute, output) comes from its inference statistics, so the rest of the
  Triton call is the protocol: serialisation, gRPC, the backend's transfer;
* the real Pipeline with paced cameras on each provider: delivered fps, latency, inference time per batch and
  this process's CPU cores (what a camera host without a GPU spends when the network runs elsewhere).
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

from streamd.infer.onnx_runtime import Colorizer, InferenceUnavailable
from streamd.tools.bench.inputs import lightness_batch, make_clip
from streamd.tools.bench.throughput import run_paced
from streamd.tools.bench.timing import BenchUnavailable, repeated, time_interleaved

SERVER_STAGES = ("queue", "compute_input", "compute_infer", "compute_output")
NETWORK_BATCHES = (1, 4, 8)
CAMERAS, CAMERAS_SHORT = (1, 4, 8), (1, 2)
ROUNDS, ROUNDS_SHORT = 30, 5
CLIP_S, CLIP_S_SHORT = 6.0, 2.0
CLIP_SIZE = (640, 360)
TIMEOUT_S = 30.0  # a batch of 8 on a loaded CPU server takes about a second; this only bounds a hung one
STATS_WAIT_S = 5.0  # the server counts a request after its response has left: wait for the last ones


def remote_colorizer(url: str, model: str):
    """The Triton provider, connected; BenchUnavailable when tritonclient is missing, the server or its
    model cannot be reached, or the model is not streamd's (the reason named)."""
    try:
        from streamd.infer.triton_client import ModelMismatch, TritonColorizer
    except ImportError as e:
        raise BenchUnavailable(f"--triton needs {e.name}, which is not installed here: "
                               "pip install 'streamd[triton]'") from None
    try:
        remote = TritonColorizer(url, model, timeout_s=TIMEOUT_S)
    except ModelMismatch as e:
        raise BenchUnavailable(str(e)) from None
    if remote.unavailable:
        raise BenchUnavailable(remote.unavailable)
    return remote


def server_ms(url: str, model: str) -> dict[str, float]:
    """The server's cumulative milliseconds per stage of `model` and its count of successful requests."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(model, as_json=True, client_timeout=TIMEOUT_S)
        stats = stats["model_stats"][0]["inference_stats"]
    except (InferenceServerException, KeyError, IndexError) as e:
        raise BenchUnavailable(f"Triton at {url}: no inference statistics for model {model!r} ({e})") from None
    finally:
        client.close()
    totals = {stage: int(stats.get(stage, {}).get("ns", 0)) / 1e6 for stage in SERVER_STAGES}
    return {**totals, "requests": int(stats.get("success", {}).get("count", 0))}


def server_ms_after(url: str, model: str, requests: int) -> dict[str, float]:
    """server_ms once the server has counted at least `requests` (it counts a request after responding);
    BenchUnavailable if it has not within STATS_WAIT_S (its statistics would not cover the measurement)."""
    deadline = time.monotonic() + STATS_WAIT_S
    while True:
        stats = server_ms(url, model)
        if stats["requests"] >= requests:
            return stats
        if time.monotonic() > deadline:
            raise BenchUnavailable(f"Triton at {url} counted {stats['requests']} requests of model {model!r} "
                                   f"where {requests} were sent: its statistics do not cover this measurement")
        time.sleep(0.05)


def network_rows(local: Colorizer, remote, url: str, model: str, rounds: int) -> list[dict]:
    """Per batch size: median ms of the call in this process and on the server (interleaved), and the Triton
    call's mean split into the server's time in the model and the rest. A batch larger than the server's
    max_batch_size goes as several concurrent requests, whose summed server time then exceeds the call's."""
    rows = []
    for batch in NETWORK_BATCHES:
        lightness = lightness_batch((local.info.input_height, local.info.input_width), batch)
        try:
            start = server_ms(url, model)
            for run in (local, remote):  # warm-up: sessions, the server's first request of this shape
                run(lightness)
            # the server counts the warm-up once its response has left, perhaps after this call returned
            before = server_ms_after(url, model, start["requests"] + remote.requests_for(batch))
            seconds = time_interleaved({"local": local, "triton": remote}, lightness, rounds)
        except InferenceUnavailable as e:
            raise BenchUnavailable(f"Triton at {url} failed during the measurement: {e}") from None
        calls = len(seconds["triton"])
        after = server_ms_after(url, model, before["requests"] + calls * remote.requests_for(batch))
        requests = after["requests"] - before["requests"]
        stages = {stage: (after[stage] - before[stage]) / calls for stage in SERVER_STAGES}
        server_model_ms = sum(stages.values())
        rows.append({"batch": batch, "local_ms": statistics.median(seconds["local"]) * 1000,
                     "triton_ms": statistics.median(seconds["triton"]) * 1000,
                     "server_requests_per_call": requests / calls, "server_model_ms": server_model_ms,
                     **{f"server_{stage}_ms": ms for stage, ms in stages.items()},
                     "protocol_ms": statistics.fmean(seconds["triton"]) * 1000 - server_model_ms})
    return rows


def pipeline_rows(local: Colorizer, remote, clip: Path, cameras: tuple[int, ...], work: Path,
                  repeats: int) -> list[dict]:
    """The paced Pipeline with each camera count on each provider (no outputs encoded: the network's side
    is what differs). A server lost on the way would let the cameras pass frames through gray, which would
    time nothing: that ends the measurement."""
    rows = []
    for count in cameras:
        for provider, colorizer in (("local", local), ("triton", remote)):
            result = repeated(lambda: run_paced(clip, count, colorizer, work, encode=False), repeats)
            lost = max(run["uncolorized"] for run in result["runs"])
            if lost:
                raise BenchUnavailable(f"{provider} inference was unavailable for {lost} frames of a "
                                       f"{count}-camera run: {remote.unavailable or 'see the log'}")
            rows.append({"cameras": count, "provider": provider,
                         **{key: value for key, value in result.items() if key != "runs"}})
    return rows


def triton_section(url: str, model: str, short: bool, repeats: int, work: Path) -> dict:
    remote = remote_colorizer(url, model)
    local = Colorizer(provider="cpu", int8="off")  # what the server runs, on this host's CPU
    if remote.info.model_id != local.info.model_id:
        raise BenchUnavailable(f"Triton at {url} serves {remote.info.model_id}, this process would run "
                               f"{local.info.model_id}: export the same model (streamd export --triton)")
    clip = work / "triton-clip.mp4"
    make_clip(clip, CLIP_SIZE, CLIP_S_SHORT if short else CLIP_S)
    return {"url": url, "model": model, "model_id": local.info.model_id,
            "clip": f"{CLIP_SIZE[0]}x{CLIP_SIZE[1]}",
            "network": network_rows(local, remote, url, model, ROUNDS_SHORT if short else ROUNDS),
            "pipeline": pipeline_rows(local, remote, clip, CAMERAS_SHORT if short else CAMERAS, work, repeats)}
