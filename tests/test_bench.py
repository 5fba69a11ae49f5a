"""`streamd bench`: the short run goes end to end and writes a complete report. Speed is never asserted:
it depends on the machine; the report is what has to be right."""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator

import numpy as np
import pytest

from streamd.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None
CLIP_FRAMES = 50  # the clips of --short and of the torch-cpu run: 2 s at 25 fps


def numbers(node) -> Iterator[float]:
    """Every number anywhere in a JSON document."""
    if isinstance(node, dict):
        for value in node.values():
            yield from numbers(value)
    elif isinstance(node, list):
        for value in node:
            yield from numbers(value)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield node


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def strict_json(path) -> dict:
    """The report, refusing NaN and Infinity (Python writes them, JSON has neither)."""
    def no_nan(token: str):
        raise AssertionError(f"{token} in the report: not JSON")

    return json.loads(path.read_text(), parse_constant=no_nan)


def test_short_bench_writes_every_section(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--short", "--json", str(out)]) == 0
    result = strict_json(out)
    assert all(math.isfinite(v) and v >= 0 for v in numbers(result))
    assert result["command"] == f"streamd bench --device cpu --short --json {out}"
    assert result["date"] and result["machine"]["cpu"] and positive(result["machine"]["cores"])
    assert result["machine"]["onnxruntime"] and result["machine"]["av"] and result["machine"]["provider"]

    passthrough = {p["resolution"]: p for p in result["passthrough"]}
    assert set(passthrough) == {"640x360", "1280x720"}
    assert all(positive(p["fps"]) and len(p["runs"]) == 2 for p in passthrough.values())

    throughput = result["streamd"]["throughput"]
    assert {(t["resolution"], t["cameras"]) for t in throughput} == {(r, c) for r in passthrough for c in (1, 2)}
    for t in throughput:
        assert all(positive(t[k]) for k in ("fps", "ratio_to_passthrough", "cpu_cores", "predict_ms_per_frame",
                                            "decode_ms_per_frame", "finish_ms_per_frame", "encode_ms_per_frame"))
        # a moving scene: no frame reuses a still prediction, and every camera carries some along the flow
        assert all(run["reused"] == 0 and run["carried"] >= t["cameras"] for run in t["runs"])

    paced = result["streamd"]["paced"]
    assert len(paced) == 4
    for p in paced:
        assert all(positive(p[k]) for k in ("delivered_fps_per_camera", "latency_p50_ms", "latency_p99_ms",
                                            "cpu_cores", "peak_rss_mib", "sent", "published"))
        for run in p["runs"]:
            assert run["sent"] == p["cameras"] * CLIP_FRAMES  # every camera played the whole clip once
            assert run["published"] + run["dropped"] == run["sent"]  # every frame out, or counted as dropped
            assert 1 <= run["frames_per_batch"] <= p["cameras"] and run["carried"] > 0
            # each frame coloured by the network, a still prediction or a carry (no model fails here); the
            # Pipeline's warm-up, its one call before the cameras start, not charged
            assert run["network_frames"] + run["reused"] + run["carried"] == run["colorized"] > 0

    still = result["still_scene"]
    assert [p["resolution"] for p in still["passthrough"]] == ["1280x720"]
    assert [(t["cameras"], t["frames_per_camera"]) for t in still["throughput"]] == [(1, 50)]
    assert still["throughput"][0]["reused"] > 0 and still["paced"][0]["reused"] > 0  # the scene is still
    assert result["streamd"]["throughput"][0]["reused"] == 0  # the moving clips never are

    rows = result["network"]["rows"]
    assert {(r["input"], r["batch"]) for r in rows} == {("320x192", 1), ("320x192", 8)}
    for r in rows:
        assert positive(r["ours"]["fps"]) and positive(r["ours"]["ms_per_frame"])
        if HAS_TORCH:
            assert positive(r["eccv16"]["fps"]) and positive(r["ratio_fps_ours_over_eccv16"])
        else:
            assert r["ratio_fps_ours_over_eccv16"] is None and "torch" in result["network"]["baseline"]

    per_camera = result["per_camera_models"]["rows"]
    assert [r["cameras"] for r in per_camera] == [4, 8]
    assert all(positive(r["shared_ms"]) and positive(r["own_ms"]) and positive(r["cost"]) for r in per_camera)

    printed = capsys.readouterr().out
    assert "streamd / pass-through" in printed and "ours / ECCV16 (fps)" in printed


def test_cuda_bench_without_cuda_says_so_and_exits_2(capsys):
    if HAS_TORCH:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: the GPU benchmark would run (benchmarks/gpu.sh)")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err


@pytest.fixture
def one_torch_thread():
    """torch's CPU thread pool spins, and on a loaded 2-core machine that made the network 10x slower
    (0.86 s instead of 0.08 s a frame): one thread keeps this test well under a minute."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch backend needs torch (the train extra)")
def test_torch_cpu_bench_runs_network_and_pipeline(tmp_path, capsys, one_torch_thread):
    """The GPU run's code path (benchmarks/gpu.sh), on the CPU with 1 and 2 small cameras."""
    out = tmp_path / "t.json"
    assert main(["bench", "--device", "torch-cpu", "--json", str(out)]) == 0
    result = strict_json(out)
    assert all(math.isfinite(v) and v >= 0 for v in numbers(result))
    assert result["command"] == f"streamd bench --device torch-cpu --json {out}"
    assert result["machine"]["provider"] == "torch-cpu" and result["settings"]["precision"] == "fp32"

    network = result["torch_network"]
    assert [r["cameras"] for r in network["rows"]] == [1, 2] and network["input"] == "320x192"
    for r in network["rows"]:
        assert positive(r["ours"]["fps"]) and positive(r["eccv16"]["fps"]) and positive(r["preprocess_ms_per_batch"])
        assert positive(r["ratio_fps_ours_over_eccv16"])

    ort_net = result["ort_network"]  # on a GPU host: the TensorRT and CUDA providers; here the CPU one
    assert ort_net["providers_measured"] == ["cpu"] and ort_net["not_installed"] == []
    assert [(r["provider"], r["batch"]) for r in ort_net["rows"]] == [("cpu", 1), ("cpu", 2)]
    for r in ort_net["rows"]:
        assert positive(r["ours"]["ms_per_batch"]) and positive(r["eccv16"]["ms_per_batch"])
        assert positive(r["ratio_fps_ours_over_eccv16"])

    pipeline = result["torch_pipeline"]
    assert positive(pipeline["decode_cpu_ms_per_frame"]) and positive(pipeline["usable_cores"])
    assert [(r["resolution"], r["cameras"]) for r in pipeline["rows"]] == [("640x360", 1), ("640x360", 2)]
    for r in pipeline["rows"]:
        assert all(positive(r[k]) for k in ("total_fps", "delivered_fps_per_camera", "published", "latency_p50_ms",
                                            "cpu_cores", "inference_ms_per_batch", "inference_busy",
                                            "finish_ms_per_frame", "finish_cores", "decode_cores"))
        assert r["sent"] == r["cameras"] * CLIP_FRAMES  # every camera played the whole clip once
        assert r["published"] + r["dropped"] == r["sent"]  # every frame out, or counted as dropped
        assert 1 <= r["frames_per_batch"] <= r["batch_max"] == r["cameras"]
        assert r["limit"] in {"none (keeps up)", "inference", "CPU (decode + colour)", "neither saturated (threads)"}

    printed = capsys.readouterr().out
    assert "PyTorch" in printed and "the real pipeline" in printed and "infer ms/batch" in printed
    assert "network alone through ONNX Runtime" in printed


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch backend needs torch (the train extra)")
def test_processes_wait_for_each_other_and_account_for_every_frame(tmp_path, capsys, monkeypatch):
    """--processes: each process loads and warms up on its own, none starts its cameras before all are ready,
    and every frame of every process's cameras is published or counted as dropped. hwaccel = "cuda" where no
    CUDA device opens falls back to the CPU decoder, so the cameras still run."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned processes' torch: see one_torch_thread
    out = tmp_path / "p.json"
    assert main(["bench", "--device", "torch-cpu", "--processes", "2", "--cameras", "1", "--hwaccel", "cuda",
                 "--json", str(out)]) == 0
    result = strict_json(out)
    assert result["command"] == f"streamd bench --device torch-cpu --cameras 1 --processes 2 --hwaccel cuda --json {out}"
    assert "torch_network" not in result  # the parent loads no model: only the pipeline is measured
    [row] = result["torch_processes"]["rows"]
    assert (row["processes"], row["cameras_per_process"], row["failed"]) == (2, 1, [])
    runs = row["per_process"]
    assert sorted(r["process"] for r in runs) == [0, 1]
    assert min(r["started"] for r in runs) >= max(r["ready"] for r in runs)  # nobody started before all were ready
    for r in runs:
        assert r["sent"] == CLIP_FRAMES and r["published"] > 0
        assert r["published"] + r["dropped"] == r["sent"]
    assert "the real pipeline over 2 processes" in capsys.readouterr().out


def test_frame_cost_runs_every_frame_through_the_daemons_steps(tmp_path, capsys):
    """--frame-cost: every frame of a moving clip through each step, the network (a fixed stand-in) deciding
    as the daemon's default camera does: each frame either runs the network or is carried along the flow,
    on average at most carry_frames carried per run."""
    from streamd.tools.bench.frame_cost import STEPS
    from streamd.config import CameraConfig

    out = tmp_path / "f.json"
    assert main(["bench", "--frame-cost", "640x360", "--short", "--json", str(out)]) == 0
    cost = strict_json(out)["frame_cost"]
    assert cost["resolution"] == "640x360" and cost["frames"] == 25
    assert list(cost["cpu_ms_per_frame"]) == list(STEPS) and all(map(positive, cost["cpu_ms_per_frame"].values()))
    cycle = CameraConfig("bench", "").carry_frames + 1
    assert cost["reused"] == 0 and cost["carried"] > 0  # the clip pans: carried along the flow, never still
    assert cost["network_runs"] + cost["carried"] == cost["frames"]
    assert cost["network_runs"] >= math.ceil(cost["frames"] / cycle)
    assert "chroma planes" in capsys.readouterr().out


def test_reference_cost_times_both_paths_frame_by_frame(tmp_path, capsys):
    """--reference: the same still clip through the generic path and the reference path in turns, every frame
    through the network; the clip's view is its reference, so every frame of the reference path fits it."""
    out = tmp_path / "r.json"
    assert main(["bench", "--reference", "640x360", "--short", "--json", str(out)]) == 0
    cost = strict_json(out)["reference_cost"]
    assert cost["resolution"] == "640x360" and cost["frames"] == 20 and cost["reference_frames"] == 20
    assert all(map(positive, cost["ms_per_frame"].values())) and positive(cost["ratio"])
    steps = cost["steps_ms_per_frame"]
    assert set(steps) == {"generic", "reference"} and all(map(positive, steps["reference"].values()))
    # the generic path checks no fit and makes no planes: its second step is a function call
    assert steps["generic"]["fit check and planes"] < 0.2 * steps["reference"]["fit check and planes"]
    # each path's steps account for its frames (medians of parts against the median of wholes: roughly)
    for path, by_step in steps.items():
        assert 0.7 < sum(by_step.values()) / cost["ms_per_frame"][path] < 1.3
    printed = capsys.readouterr().out
    assert "reference / generic" in printed and "by step" in printed and "fit check and planes" in printed


@pytest.mark.parametrize("argv, problem", [
    (["--reference", "640x361"], "must be even"),
    (["--reference", "640x360", "--frame-cost", "640x360"], "separate runs"),
    (["--frame-cost", "641x360"], "must be even"),
    (["--frame-cost", "wide"], "not WIDTHxHEIGHT"),
    (["--cameras", "4"], "only with --device"),
    (["--device", "torch-cpu", "--processes", "0"], "1 or more"),
    (["--triton", "127.0.0.1:8001", "--frame-cost", "640x360"], "separate runs"),
    (["--triton", "127.0.0.1:8001", "--device", "torch-cpu"], "leave --device at cpu"),
])
def test_bad_bench_options_exit_2_naming_the_option(argv, problem, capsys):
    assert main(["bench", *argv]) == 2
    assert problem in capsys.readouterr().err


@pytest.mark.skipif(not HAS_TORCH, reason="the PyTorch backend needs torch (the train extra)")
def test_torch_backend_computes_what_the_onnx_model_computes(one_torch_thread):
    """The GPU numbers are only streamd's if the PyTorch backend is the shipped model: same weights, same
    decoding, same temperature (fp32 on the CPU, so any difference is the runtimes' rounding)."""
    from streamd.tools.bench.inputs import lightness_batch
    from streamd.infer.onnx_runtime import Colorizer
    from streamd.infer.pytorch import load_torch_colorizer

    onnx, torch_backend = Colorizer(), load_torch_colorizer(device="cpu")
    lightness = lightness_batch((192, 320), 2)
    assert torch_backend.info == onnx.info and torch_backend.provider == "torch-cpu"
    ab = torch_backend(lightness)
    assert ab.shape == (2, 2, 48, 80) and ab.dtype == np.float32
    assert np.abs(ab - onnx(lightness)).max() < 0.01  # ab units span about -110..110


@pytest.mark.parametrize("delivered,busy,cores,expected", [
    (24.9, 0.99, 2.0, "none (keeps up)"),  # every frame through, however busy
    (10.0, 0.95, 1.2, "inference"),  # the inference thread busy most of the time, the cores not
    (10.0, 0.50, 1.9, "CPU (decode + colour)"),  # the cores taken, the network waiting
    (10.0, 0.50, 1.0, "neither saturated (threads)"),
])
def test_the_limiting_stage_is_named_from_the_measurements(delivered, busy, cores, expected):
    from streamd.tools.bench.pytorch import limiting_stage

    row = {"delivered_fps_per_camera": delivered, "camera_fps": 25.0, "inference_busy": busy, "cpu_cores": cores}
    assert limiting_stage(row, usable_cores=2) == expected
