"""`streamd export --triton DIR`: an exported ONNX model as a Triton Inference Server model repository.

    DIR/<name>/config.pbtxt            ONNX Runtime backend, dynamic batching, the model's metadata
    DIR/<name>/configs/tensorrt.pbtxt  the same through TensorRT (FP16) on a GPU server:
                                       tritonserver --model-config-name=tensorrt
    DIR/<name>/1/model.onnx            the model itself, its ONNX metadata intact

The model's metadata (id, temperature, prior correction, input size) travels as `parameters` of the model
configuration: streamd's Triton provider reads them with the configuration, so frame headers carry the
model id the server runs. Needs no torch: it packages a model, it does not export weights.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from streamd.infer.onnx_runtime import ModelInfo, read_info

MAX_BATCH_SIZE = 64  # frames per server batch; a streamd process sends at most [batch] max_size at once
QUEUE_DELAY_US = 2000  # how long the server may hold a request to batch it with other hosts' requests
PARAMETER_PREFIX = "streamd."
_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")  # a folder of the repository, as Triton names models

_TENSORRT = """
# TensorRT through ONNX Runtime's execution accelerator, FP16: on a GPU server, several times faster than
# the CUDA provider for this network. The first request of each input size builds an engine (minutes);
# the cache keeps it for the next start.
optimization {
  execution_accelerators {
    gpu_execution_accelerator: [
      {
        name: "tensorrt"
        parameters { key: "precision_mode" value: "FP16" }
        parameters { key: "max_workspace_size_bytes" value: "1073741824" }
        parameters { key: "trt_engine_cache_enable" value: "1" }
        parameters { key: "trt_engine_cache_path" value: "/tmp/streamd-tensorrt" }
      }
    ]
  }
}
instance_group [ { kind: KIND_GPU, count: 1 } ]
"""


def metadata_parameters(info: ModelInfo) -> dict[str, str]:
    """The model's metadata as Triton model-configuration parameters (strings, as Triton keeps them)."""
    return {f"{PARAMETER_PREFIX}{key}": str(value) for key, value in (
        ("model_id", info.model_id), ("temperature", info.temperature),
        ("prior_correction", info.prior_correction), ("shrink", info.shrink),
        ("cast_correction", info.cast_correction), ("input_height", info.input_height),
        ("input_width", info.input_width))}


def model_config(name: str, info: ModelInfo, max_batch_size: int = MAX_BATCH_SIZE) -> str:
    """config.pbtxt for the ONNX Runtime backend. L (N, 1, H, W) in, ab (N, 2, H/4, W/4) out; H and W are
    free (multiples of 16), so [model] input_width/input_height of the cameras' hosts need no new export."""
    parameters = "\n".join(f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}'
                           for key, value in metadata_parameters(info).items())
    return f"""# Triton model configuration of the streamd model {info.model_id}, written by `streamd export --triton`.
name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch_size}
input [ {{ name: "L", data_type: TYPE_FP32, dims: [ 1, -1, -1 ] }} ]
output [ {{ name: "ab", data_type: TYPE_FP32, dims: [ 2, -1, -1 ] }} ]
# Requests of several camera hosts are merged into one batch on the server.
dynamic_batching {{ max_queue_delay_microseconds: {QUEUE_DELAY_US} }}
# The model's metadata: streamd reads it with this configuration (frame headers carry the model id).
{parameters}
"""


def write_repository(model: Path, out: Path, name: str = "streamd", max_batch_size: int = MAX_BATCH_SIZE) -> Path:
    """Write the model repository for `model` (an exported ONNX file) under `out`; returns the model's folder.
    A folder of the same name already there is replaced: it is this model's previous export. ValueError for a
    name that cannot be a model's folder."""
    if not _NAME.match(name):
        raise ValueError(f"{name!r} cannot name a Triton model: letters, digits, '_', '-' and '.', not first")
    info = read_info(model)
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "1").mkdir(parents=True)
    (folder / "configs").mkdir()
    shutil.copyfile(model, folder / "1" / "model.onnx")
    config = model_config(name, info, max_batch_size)
    (folder / "config.pbtxt").write_text(config)
    (folder / "configs" / "tensorrt.pbtxt").write_text(
        config.replace('written by `streamd export --triton`.',
                       'written by `streamd export --triton`:\n# the TensorRT variant for GPU servers '
                       '(tritonserver --model-config-name=tensorrt).') + _TENSORRT)
    return folder
