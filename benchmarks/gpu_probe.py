"""What the GPU machine offers streamd besides the network: versions, CUDA, and whether PyAV's FFmpeg can
encode H.264 on NVENC and decode it on NVDEC there (its wheel has h264_nvenc and h264_cuvid compiled in;
whether they find the driver's libraries is what this finds out). libx264/h264 run the same steps as the
control, so a failure of the NVIDIA pair is the hardware path's, not the probe's.

    python3 benchmarks/gpu_probe.py OUT/probe.json
"""
from __future__ import annotations

import io
import json
import platform
import sys
import time

import av
from av.codec.hwaccel import HWAccel
import numpy as np

SIZE, FRAMES = (1920, 1080), 50


def gray_frames() -> list[av.VideoFrame]:
    """1080p yuv420p frames whose luma ramp moves, so every frame differs."""
    w, h = SIZE
    ramp = (np.arange(w, dtype=np.uint16)[None, :] + np.arange(h, dtype=np.uint16)[:, None]) % 256
    chroma = np.full((h // 2, w), 128, np.uint8)  # U and V planes, stacked as yuv420p's ndarray layout has them
    return [av.VideoFrame.from_ndarray(np.vstack([((ramp + 4 * i) % 256).astype(np.uint8), chroma]), format="yuv420p")
            for i in range(FRAMES)]


def encode(codec: str, frames: list[av.VideoFrame]) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="h264") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], "yuv420p"
        for frame in frames:
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def decode(codec: str, data: bytes) -> int:
    context = av.CodecContext.create(codec, "r")
    with av.open(io.BytesIO(data), format="h264") as source:  # demux ends with the empty packet that flushes
        return sum(len(context.decode(packet)) for packet in source.demux(video=0))


def decode_hwaccel(data: bytes) -> int:
    """The h264 decoder on NVDEC through PyAV's HWAccel (what hwaccel = "cuda" does for a camera), frames
    downloaded to system memory as the pipeline needs them."""
    with av.open(io.BytesIO(data), format="h264", hwaccel=HWAccel("cuda", allow_software_fallback=False)) as source:
        return sum(1 for frame in source.decode(video=0) if frame.to_ndarray() is not None)


def timed(step, *args) -> tuple[dict, object]:
    """The step's frames/s and what it returned, or the error that stopped it and None."""
    start = time.perf_counter()
    try:
        value = step(*args)
    except Exception as e:  # noqa: BLE001 - the point is to report any failure, whatever FFmpeg raises
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}, None
    return {"ok": True, "fps": FRAMES / (time.perf_counter() - start)}, value


def codec_pair(encoder: str, decoder: str, frames: list[av.VideoFrame]) -> dict:
    encoded, data = timed(encode, encoder, frames)
    # The decoder is tried on the encoder's stream, or on libx264's when the encoder failed.
    decoded, count = timed(decode, decoder, data if data is not None else encode("libx264", frames))
    return {"encoder": encoder, "encode": encoded, "decoder": decoder, "decode": {**decoded, "frames": count}}


def main(path: str) -> None:
    frames = gray_frames()
    report = {"python": platform.python_version(), "av": av.__version__,
              "ffmpeg": av.library_versions.get("libavcodec"),
              "compiled_in": sorted(c for c in av.codecs_available if c.startswith("h264")),
              "control": codec_pair("libx264", "h264", frames), "nvidia": codec_pair("h264_nvenc", "h264_cuvid", frames)}
    decoded, count = timed(decode_hwaccel, encode("libx264", frames))
    report["hwaccel_cuda_decode"] = {**decoded, "frames": count}
    try:
        import torch

        report["torch"], report["cuda"] = torch.__version__, torch.cuda.is_available()
        report["gpu"] = torch.cuda.get_device_name() if report["cuda"] else None
    except ImportError:
        report["torch"] = None
    text = json.dumps(report, indent=2)
    print(text)
    with open(path, "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
