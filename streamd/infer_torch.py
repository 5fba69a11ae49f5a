"""Inference through PyTorch: the network's training weights, for hosts where ONNX Runtime has no GPU
provider (a CUDA host without onnxruntime-gpu or TensorRT, such as the lent benchmark machine).

Same interface as streamd.infer.Colorizer (`info`, `provider`, `path`, L batch in, ab batch out), so the
Pipeline runs it unchanged. Needs the `train` extra (torch); nothing imports this module unless it is used.

On CUDA the network runs under fp16 autocast in channels_last layout (the tensor-core path for its
convolutions); the decoding's softmax stays in fp32 (AnnealedMean upcasts the logits, and autocast keeps
softmax in fp32). On the CPU it runs in fp32, as ONNX Runtime does. Neither CUDA graphs nor torch.compile
are used: the batcher closes a batch at its deadline, so batch sizes vary from batch to batch, and each
size would need its own graph or compilation (or padding to fixed sizes), which has not been measured on
a GPU yet.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from streamd.infer import ModelInfo, read_info, shipped_model
from streamd.model.train import build_decoder, load_weights

log = logging.getLogger(__name__)


class TorchColorizer:
    """Runs an L -> ab module on batches of L (N, 1, H, W) float32 and returns ab (N, 2, H/4, W/4) float32."""

    def __init__(self, module: torch.nn.Module, info: ModelInfo, path: Path | None, device: str) -> None:
        self.device = torch.device(device)
        self.info = info
        self.path = path
        self.provider = f"torch-{self.device.type}"
        self.cuda = self.device.type == "cuda"
        self.precision = "fp16 autocast, channels_last" if self.cuda else "fp32"
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "CPU"
        module = module.eval().to(self.device)
        self.module = module.to(memory_format=torch.channels_last) if self.cuda else module

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cuda):
            x = torch.from_numpy(lightness).to(self.device)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.module(x).float().cpu().numpy()


def load_torch_colorizer(path: Path | None = None, device: str = "cuda",
                         temperature: float | None = None) -> TorchColorizer:
    """The ONNX model's training weights (<stem>.pt beside it) behind the annealed-mean decoding, with the
    ONNX model's id, input size and temperature, so both runtimes compute the same function. Raises
    RuntimeError when the device is unusable here and FileNotFoundError when a file is missing."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("CUDA is not available here (torch.cuda.is_available() is False)")
    onnx_path = Path(path) if path else shipped_model()
    weights_path = onnx_path.with_suffix(".pt")
    if not weights_path.exists():
        raise FileNotFoundError(f"no training weights at {weights_path} (streamd train writes them)")
    info = read_info(onnx_path, temperature)
    weights = load_weights(weights_path)
    colorizer = TorchColorizer(build_decoder(weights, info.temperature, info.prior_correction), info, weights_path,
                               device)
    log.info("model %s through PyTorch on %s (%s), input %dx%d, T=%.2f", info.model_id, colorizer.device,
             colorizer.precision, info.input_width, info.input_height, info.temperature)
    return colorizer
