"""`streamd bench`: the short run goes end to end and writes a complete report. Speed is never asserted:
it depends on the machine; the report is what has to be right."""
from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Iterator

import pytest

from streamd.cli import main

HAS_TORCH = importlib.util.find_spec("torch") is not None


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


def test_short_bench_writes_every_section(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--short", "--json", str(out)]) == 0

    def no_nan(token: str):
        raise AssertionError(f"{token} in the report: not JSON")

    result = json.loads(out.read_text(), parse_constant=no_nan)
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
        assert t["ratio_to_passthrough"] == pytest.approx(t["fps"] / passthrough[t["resolution"]]["fps"])

    paced = result["streamd"]["paced"]
    assert len(paced) == 4
    for p in paced:
        assert all(positive(p[k]) for k in ("delivered_fps_per_camera", "latency_p50_ms", "latency_p99_ms",
                                            "cpu_cores", "peak_rss_mib", "sent", "published"))
        assert p["latency_p50_ms"] <= p["latency_p99_ms"] and p["published"] <= p["sent"]
        assert p["delivered_fps_per_camera"] <= p["camera_fps"] + 1e-9

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
    assert all(positive(r["shared_ms"]) and r["cost"] == pytest.approx(r["own_ms"] / r["shared_ms"]) for r in per_camera)

    printed = capsys.readouterr().out
    assert "streamd / pass-through" in printed and "ours / ECCV16 (fps)" in printed


def test_cuda_bench_without_cuda_says_so_and_exits_2(capsys):
    if HAS_TORCH:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: the GPU benchmark would run (benchmarks/gpu.sh)")
    assert main(["bench", "--device", "cuda"]) == 2
    assert "--device cuda" in capsys.readouterr().err
