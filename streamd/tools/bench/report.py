"""What `streamd bench` prints: a table per section of its result, the ratios last (the lines worth reading
last)."""
from __future__ import annotations

from streamd.tools.bench.inputs import CLIP_FPS


def table(headers: list[str], rows: list[list]) -> str:
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells)


def indented(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def report(result: dict) -> str:
    """The detail tables, then the ratios: the lines worth reading last."""
    parts = []
    for key, scene in (("streamd", "moving clips: predictions carried along the flow"),
                       ("still_scene", "a still scene: predictions reused")):
        if key not in result:
            continue
        runs = result[key]
        passthrough = result["passthrough"] if key == "streamd" else runs["passthrough"]
        limit = {p["resolution"]: p["fps"] for p in passthrough}
        seconds = result.get("settings", {}).get("paced_clip_seconds")
        clip = f", {seconds:g}-s clips" if seconds else ""
        parts.append(f"streamd, paced, {scene} (the real pipeline, cameras at 25 fps{clip}, every number a median; "
                     f"dropped: of all cameras' frames):\n"
                     + table(["resolution", "cameras", "fps/camera", "dropped", "reused", "carried", "p50 ms",
                              "p99 ms", "CPU cores", "peak RSS MiB"],
                             [[p["resolution"], p["cameras"], p["delivered_fps_per_camera"], p["dropped"], p["reused"],
                               p.get("carried", 0), p["latency_p50_ms"], p["latency_p99_ms"], p["cpu_cores"], p["peak_rss_mib"]]
                              for p in runs["paced"]]))
        parts.append(f"unpaced, every frame, {scene} (frames/s of all cameras together; ms per frame by stage):\n"
                     + table(["resolution", "cameras", "fps", "reused", "carried", "decode", "predict", "finish",
                              "encode", "pass-through fps", "streamd / pass-through"],
                             [[t["resolution"], t["cameras"], t["fps"], t["reused"], t.get("carried", 0),
                               t["decode_ms_per_frame"],
                               t["predict_ms_per_frame"], t["finish_ms_per_frame"], t["encode_ms_per_frame"],
                               limit[t["resolution"]], t["ratio_to_passthrough"]] for t in runs["throughput"]]))
    if result.get("streamd", {}).get("colorize"):
        parts.append("streamd colorize of a moving clip against decoding and encoding the same file alone (wall time "
                     "of the whole file, in turns; medians):\n" + table(
                         ["resolution", "frames", "network runs", "colorize fps", "decode + encode fps",
                          "colorize / decode + encode"],
                         [[c["resolution"], c["frames"], c["network_runs"], c["colorize_fps"], c["passthrough_fps"],
                           c["ratio"]] for c in result["streamd"]["colorize"]]))
    if "network" in result:
        parts.append(f"network alone ({result['network']['baseline']}; {result['network']['rounds']} rounds, each "
                     "network once per round in turn; ratios are medians of the rounds' ratios):\n" + table(
            ["input", "batch", "ours ms/frame", "ours fps", "ECCV16 ms/frame", "ECCV16 fps", "ours / ECCV16 (fps)",
             "int8 ms/frame", "int8 / ECCV16 (fps)"],
            [[r["input"], r["batch"], r["ours"]["ms_per_frame"], r["ours"]["fps"],
              r["eccv16"] and r["eccv16"]["ms_per_frame"], r["eccv16"] and r["eccv16"]["fps"],
              r["ratio_fps_ours_over_eccv16"], r["ours_int8"] and r["ours_int8"]["ms_per_frame"],
              r["ratio_fps_int8_over_eccv16"]] for r in result["network"]["rows"]]))
    if "per_camera_models" in result:
        per = result["per_camera_models"]
        parts.append(f"per-camera models (network at {per['input']}; ms per round of one frame per camera):\n" + table(
            ["cameras", "one shared model", "a model per camera", "cost (x)"],
            [[r["cameras"], r["shared_ms"], r["own_ms"], r["cost"]] for r in per["rows"]]))
    size = result.get("settings", {}).get("camera_size")
    if "torch_network" in result:
        net = result["torch_network"]
        parts.append(f"network alone on {net['device']} ({net['precision']}), input {net['input']}, "
                     f"{size} cameras, one batch each:\n" + table(
                         ["cameras", "preprocess ms", "ours ms/batch", "ours fps", "ECCV16 ms/batch", "ECCV16 fps",
                          "ours / ECCV16 (fps)"],
                         [[r["cameras"], r["preprocess_ms_per_batch"], r["ours"]["ms_per_batch"], r["ours"]["fps"],
                           r["eccv16"]["ms_per_batch"], r["eccv16"]["fps"], r["ratio_fps_ours_over_eccv16"]]
                          for r in net["rows"]]))
    ort_net = result.get("ort_network")
    if ort_net and "error" in ort_net:
        parts.append(f"network alone through ONNX Runtime: FAILED, {ort_net['error']}")
    elif ort_net:
        missing = ", ".join(ort_net["not_installed"])
        parts.append(f"network alone through ONNX Runtime {ort_net['onnxruntime']}, same batches"
                     + (f" (not installed: {missing}; onnxruntime-gpu provides them)" if missing else "") + ":\n"
                     + table(["provider", "batch", "ours ms/batch", "ours fps", "ECCV16 ms/batch", "ECCV16 fps",
                              "ours / ECCV16 (fps)"],
                             [[r["provider"], r["batch"], r["ours"]["ms_per_batch"], r["ours"]["fps"],
                               r["eccv16"]["ms_per_batch"], r["eccv16"]["fps"], r["ratio_fps_ours_over_eccv16"]]
                              for r in ort_net["rows"]]))
    if "torch_processes" in result:
        parts.append(processes_report(result["torch_processes"], size, result["settings"]["camera_fps"]))
    if "frame_cost" in result:
        parts.append(frame_cost_report(result["frame_cost"]))
    if "reference_cost" in result:
        parts.append(reference_cost_report(result["reference_cost"]))
    if "triton" in result:
        parts.append(triton_report(result["triton"]))
    if "error" in result.get("torch_pipeline", {}):
        parts.append(f"the real pipeline: FAILED, {result['torch_pipeline']['error']}")
    elif "torch_pipeline" in result:
        pipe = result["torch_pipeline"]
        parts.append(f"the real pipeline, {size} cameras at {result['settings']['camera_fps']:g} fps, no outputs, "
                     f"full-resolution colour on {pipe['colour_device']}; decode "
                     f"{pipe['decode_cpu_ms_per_frame']:.2f} CPU ms/frame measured apart, "
                     f"{pipe['usable_cores']} usable cores:\n" + table(
                         ["cameras", "total fps", "fps/camera", "dropped", "p50 ms", "p99 ms", "CPU cores",
                          "infer ms/batch", "frames/batch", "infer busy", "finish ms/frame", "finish cores",
                          "decode cores", "limit"],
                         [[r["cameras"], r["total_fps"], r["delivered_fps_per_camera"], r["dropped"],
                           r["latency_p50_ms"], r["latency_p99_ms"], r["cpu_cores"], r["inference_ms_per_batch"],
                           r["frames_per_batch"], r["inference_busy"], r["finish_ms_per_frame"], r["finish_cores"],
                           r["decode_cores"], r["limit"]] for r in pipe["rows"]]))
    return "\n\n".join(parts)


def processes_report(section: dict, size: str, fps: float) -> str:
    failed = [f"{r['processes']} x {r['cameras_per_process']}: FAILED, {'; '.join(r['failed'])}"
              for r in section["rows"] if r["failed"]]
    rows = [[r["processes"], r["cameras_per_process"], r["cameras"], r["total_fps"], r["dropped"],
             r["latency_p50_ms_median"], r["latency_p99_ms_max"], r["cpu_cores"]]
            for r in section["rows"] if not r["failed"]]
    text = (f"the real pipeline over {section['processes']} processes started together, {size} cameras at {fps:g} fps, "
            f"no outputs, colour on {section['colour_device']}"
            + (f", decoded with hwaccel {section['hwaccel']}" if section["hwaccel"] else "") + ":\n")
    if rows:
        text += table(["processes", "cameras each", "cameras", "total fps", "dropped", "p50 ms (median)",
                       "p99 ms (worst)", "CPU cores"], rows)
    return "\n".join([text.rstrip("\n"), *failed])


def frame_cost_report(cost: dict) -> str:
    steps = cost["cpu_ms_per_frame"]
    width = max(map(len, steps))
    lines = [f"CPU per {cost['resolution']} frame, one camera, {cost['frames']} frames (the network, replaced by a "
             f"fixed prediction, ran on {cost['network_runs']}; {cost['carried']} carried, {cost['reused']} reused):"]
    lines += [f"  {step:{width}s} {ms:6.2f} ms" for step, ms in steps.items()]
    lines.append(f"  {'total':{width}s} {sum(steps.values()):6.2f} ms")
    return "\n".join(lines)


def reference_cost_report(cost: dict) -> str:
    ms = cost["ms_per_frame"]
    return (f"one {cost['resolution']} camera, {cost['frames']} gray frames of a still scene, the network on every "
            f"frame (median wall time per frame, the two paths frame by frame in turn):\n"
            f"  generic (L -> network -> colour)                        {ms['generic']:6.2f} ms\n"
            f"  reference (L + fit check + reference -> network -> colour) {ms['reference']:6.2f} ms "
            f"({cost['reference_frames']} of {cost['frames']} frames fitted the reference)\n"
            f"  reference / generic, median of the frames' ratios      {cost['ratio']:6.2f}x\n"
            f"by step (ms, the median of each step's own times):\n"
            + indented(table(["path", *cost["steps_ms_per_frame"]["generic"]],
                             [[path, *(f"{ms:.2f}" for ms in by_step.values())]
                              for path, by_step in cost["steps_ms_per_frame"].items()])))


def triton_report(section: dict) -> str:
    network = table(
        ["batch", "local ms", "Triton ms", "server's model ms", "of it queueing", "protocol ms (mean)"],
        [[r["batch"], r["local_ms"], r["triton_ms"], r["server_model_ms"], r["server_queue_ms"], r["protocol_ms"]]
         for r in section["network"]])
    pipeline = table(
        ["cameras", "provider", "fps/camera", "p50 ms", "p99 ms", "infer ms/batch", "frames/batch", "dropped",
         "CPU cores"],
        [[r["cameras"], r["provider"], r["delivered_fps_per_camera"], r["latency_p50_ms"], r["latency_p99_ms"],
          r["inference_ms_per_batch"], r["frames_per_batch"], r["dropped"], r["cpu_cores"]]
         for r in section["pipeline"]])
    return (f"The network, in this process and on Triton at {section['url']} (model {section['model']}, "
            f"{section['model_id']}):\n{network}\n\nThe paced Pipeline, {section['clip']} cameras at "
            f"{CLIP_FPS:g} fps:\n{pipeline}")
