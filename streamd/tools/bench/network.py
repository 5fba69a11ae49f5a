"""The network alone: the shipped model against Zhang et al.'s ECCV16 architecture in identical ONNX Runtime
sessions (and ours in int8, as the daemon runs it on a CPU), and what a model per camera costs against one
model shared by all."""
from __future__ import annotations

import warnings
from pathlib import Path

from streamd.infer.onnx_runtime import Colorizer
from streamd.tools.bench.inputs import lightness_batch
from streamd.tools.bench.timing import median_ratio, network_timing, time_interleaved, time_network


NETWORK_BATCHES = (1, 8)
NETWORK_ROUNDS = 7  # at least, in full mode: the network comparison is cheap, and the noisiest on a shared host
PER_CAMERA_MODEL_CAMERAS = (4, 8)


def export_eccv16(path: Path, temperature: float) -> None:
    """Zhang et al.'s ECCV16 network (random weights: speed only) behind the same annealed-mean decoding
    as ours, exported as `streamd export` exports ours, so both graphs map L to ab. Its head is sized to
    our 262 bins instead of the paper's 313: under 0.2% of its FLOPs."""
    import torch

    from streamd.colour.lab import ab_bins
    from streamd.model.export import OPSET
    from streamd.model.network import ECCV16, AnnealedMean

    bins = torch.from_numpy(ab_bins())
    model = AnnealedMean(ECCV16(len(bins)), bins, temperature).eval()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated; streamd export uses it too
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, 1, 192, 320), str(path), input_names=["L"], output_names=["ab"],
                          opset_version=OPSET, dynamic_axes={"L": {0: "batch", 2: "height", 3: "width"},
                                                             "ab": {0: "batch", 2: "height_4", 3: "width_4"}},
                          dynamo=False)


def eccv16_colorizer(work: Path, temperature: float) -> tuple[Colorizer | None, str]:
    """The ECCV16 baseline in a session made exactly like the shipped model's, or None and why not."""
    path = work / "eccv16.onnx"
    try:
        export_eccv16(path, temperature)
    except ImportError as e:  # torch and onnx come with the train extra, which serving does not need
        return None, f"{e.name} is not importable (pip install '.[train]'): ECCV16 baseline and ratio skipped"
    return Colorizer(path), "ECCV16 architecture, random weights, same decoding and ONNX Runtime settings"


def network_section(colorizer: Colorizer, work: Path, sizes: list[tuple[int, int]], repeats: int,
                    int8: Colorizer | None = None) -> dict:
    """Ours against ECCV16 at the same input sizes and batches: ms per frame, fps and the fps ratio; also
    ours in int8 (what the daemon runs on a CPU) where the model has an int8 copy."""
    baseline, note = eccv16_colorizer(work, colorizer.info.temperature)
    print(f"network: {note}", flush=True)
    rows = []
    for size in sizes:
        # Untimed, once per size: thread pool and memory arena set-up. ONNX Runtime's CPU kernels are not
        # specialised per batch size, so one frame warms every batch.
        for session in filter(None, (colorizer, baseline, int8)):
            session(lightness_batch(size, 1))
        for batch in NETWORK_BATCHES:
            lightness = lightness_batch(size, batch)
            networks = {"ours": colorizer, "eccv16": baseline, "ours_int8": int8}
            seconds = time_interleaved({k: v for k, v in networks.items() if v}, lightness, repeats)
            ours, eccv16, ours_int8 = (network_timing(seconds[k], batch) if k in seconds else None for k in networks)
            rows.append({"input": f"{size[1]}x{size[0]}", "batch": batch, "ours": ours, "eccv16": eccv16,
                         "ratio_fps_ours_over_eccv16": median_ratio(seconds["ours"], seconds["eccv16"])
                         if eccv16 else None,
                         "ours_int8": ours_int8,
                         "ratio_fps_int8_over_eccv16": median_ratio(seconds["ours_int8"], seconds["eccv16"])
                         if eccv16 and int8 else None})
            print(f"network {rows[-1]['input']} batch {batch}: ours {ours['ms_per_frame']:.1f} ms/frame"
                  + (f", ECCV16 {eccv16['ms_per_frame']:.1f} ms/frame" if eccv16 else ""), flush=True)
    return {"baseline": note, "ort_intra_op_threads": 0, "rounds": repeats, "rows": rows}


def per_camera_models_section(colorizer: Colorizer, size: tuple[int, int], repeats: int) -> dict:
    """What per-camera (adapted) models cost: N cameras sharing one model run as one batch of N; N cameras
    with a model each run N batches of one, one per model (as Pipeline._colorize does)."""
    rows = []
    for cameras in PER_CAMERA_MODEL_CAMERAS:
        own_models = [Colorizer(colorizer.path) for _ in range(cameras)]  # separate sessions, same weights
        one_frame, frames = lightness_batch(size, 1), lightness_batch(size, cameras)
        for session in own_models:
            session(one_frame)
        shared = time_network(colorizer, frames, repeats)
        own = time_network(lambda x: [session(x[i:i + 1]) for i, session in enumerate(own_models)], frames, repeats)
        rows.append({"cameras": cameras, "shared_ms": shared["ms_per_batch"], "own_ms": own["ms_per_batch"],
                     "cost": own["ms_per_batch"] / shared["ms_per_batch"]})
        print(f"{cameras} cameras: one shared model {shared['ms_per_batch']:.1f} ms, a model each "
              f"{own['ms_per_batch']:.1f} ms", flush=True)
    return {"input": f"{size[1]}x{size[0]}", "rows": rows}
