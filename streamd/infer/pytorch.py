"""Inference through PyTorch: the network's training weights, for hosts where ONNX Runtime has no GPU
provider (a CUDA host without onnxruntime-gpu or TensorRT).

Same interface as streamd.infer.onnx_runtime.Colorizer (`info`, `provider`, `path`, L batch in, ab batch out), so the
Pipeline runs it unchanged. Needs the `train` extra (torch); nothing imports this module unless it is used.

On CUDA the network runs under fp16 autocast in channels_last layout (the tensor-core path for its
convolutions); the decoding stays in fp32 (AnnealedMean.decode turns autocast off: its sums over the bins
are not normalised until the division). Each batch is replayed from a CUDA graph: the network is a few milliseconds of GPU work
but some hundred kernel launches, each a Python call that needs the GIL, and in the daemon the inference
thread shares the GIL with a decode and an output thread per camera, so launched one by one a 5 ms
batch took over 100 ms (BENCHMARKS.md, GPU). A graph is captured per batch size bucket (powers of two up
to MAX_GRAPH_BATCH); a batch is padded up to its bucket. On the CPU it runs in fp32, as ONNX Runtime does.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from streamd.infer.onnx_runtime import ModelInfo, read_info, shipped_model
from streamd.model.train import build_decoder, load_weights

log = logging.getLogger(__name__)


MAX_GRAPH_BATCH = 64  # larger batches (more cameras than this in one batch) run eagerly


def graph_bucket(batch: int) -> int:
    """The captured batch size a batch of `batch` frames is padded to: the next power of two."""
    return 1 << (batch - 1).bit_length()


class TorchColorizer:
    """Runs an L -> ab module on batches of L (N, 1, H, W) float32 and returns ab (N, 2, H/4, W/4) float32."""

    unavailable: str | None = None  # why inference cannot run now: never, for a model in this process

    def __init__(self, module: torch.nn.Module, info: ModelInfo, path: Path | None, device: str,
                 cuda_graphs: bool = True) -> None:
        self.device = torch.device(device)
        self.info = info
        self.path = path
        self.provider = f"torch-{self.device.type}"
        self.cuda = self.device.type == "cuda"
        self.cuda_graphs = self.cuda and cuda_graphs
        self.precision = "fp16 autocast, channels_last" if self.cuda else "fp32"
        if self.cuda_graphs:
            self.precision += ", CUDA graphs"
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else "CPU"
        module = module.eval().to(self.device)
        self.module = module.to(memory_format=torch.channels_last) if self.cuda else module
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False: autocast's weight cache must not outlive a graph capture
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.cuda, cache_enabled=False):
            return self.module(x).float()

    def _graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        """The graph for batches of `bucket`, captured on first use, with its input and output tensors."""
        if bucket not in self._graphs:
            static_in = torch.zeros((bucket, 1, self.info.input_height, self.info.input_width), device=self.device)
            static_in = static_in.contiguous(memory_format=torch.channels_last)
            side = torch.cuda.Stream(self.device)  # warm-up off the default stream, as capture requires
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(lightness)
            n = len(x)
            same_size = x.shape[2:] == (self.info.input_height, self.info.input_width)
            if self.cuda_graphs and n <= MAX_GRAPH_BATCH and same_size:
                graph, static_in, static_out = self._graph(graph_bucket(n))
                static_in[:n].copy_(x)
                graph.replay()
                return static_out[:n].cpu().numpy()
            x = x.to(self.device)
            if self.cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            return self._forward(x).cpu().numpy()


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
    decoder = build_decoder(weights, info.temperature, info.prior_correction, info.shrink, info.cast_correction)
    colorizer = TorchColorizer(decoder, info, weights_path,
                               device)
    log.info("model %s through PyTorch on %s (%s), input %dx%d, T=%.2f", info.model_id, colorizer.device,
             colorizer.precision, info.input_width, info.input_height, info.temperature)
    return colorizer
