"""Inference stage: an ONNX Runtime session over the exported network, L batch in, ab batch out."""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph, InvalidProtobuf

log = logging.getLogger(__name__)

PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


GENERIC_MODEL = "streamd-base.onnx"  # colour from the night's L alone
REFERENCE_MODEL = "streamd-reference.onnx"  # colour from the night's L beside the camera's day reference


def shipped_model(name: str = GENERIC_MODEL) -> Path:
    """A shipped model (by default the generic one): next to the package in a checkout, or under
    <prefix>/share after `pip install`."""
    import sys

    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "models", Path(sys.prefix) / "share" / "streamd" / "models"):
        path = candidate / name
        if path.exists():
            return path
    raise FileNotFoundError(f"the shipped model {name} was found neither in models/ beside the "
                            f"package nor in {Path(sys.prefix) / 'share' / 'streamd' / 'models'}")


def choose_provider(requested: str, available: list[str]) -> tuple[str, str]:
    """Pick an execution provider; returns (provider, why)."""
    if requested != "auto":
        name = PROVIDERS[requested]
        if name not in available:
            raise RuntimeError(f"execution provider {requested!r} requested but not available "
                               f"(onnxruntime offers {', '.join(available)})")
        return name, "requested in the config"
    for key in ("tensorrt", "cuda"):
        if PROVIDERS[key] in available:
            return PROVIDERS[key], f"auto: {key} is the fastest provider installed"
    return PROVIDERS["cpu"], "auto: no GPU provider installed (onnxruntime-gpu gives CUDA and TensorRT)"


class InferenceUnavailable(RuntimeError):
    """Inference cannot run now, for a reason that passes (an inference server that went away): the
    pipeline passes the frames through gray instead of dropping them, and /healthz says degraded."""


def int8_copy(path: Path) -> Path:
    """Where `streamd quantize` puts a model's int8 copy by convention: beside it, named <stem>-int8.onnx."""
    return path.with_name(f"{path.stem}-int8.onnx")


@dataclass(frozen=True)
class ModelInfo:
    model_id: str
    input_height: int
    input_width: int
    temperature: float
    prior_correction: float = 0.0  # baked into the graph by export; the Torch runtime rebuilds it from this
    shrink: float = 0.0  # likewise (streamd.model.network.AnnealedMean)
    cast_correction: float = 0.0  # likewise


REFERENCE_INPUT = "reference"  # a reference model's second input: the day reference's planes (streamd.colour.reference)
REFERENCE_PLANES = 4


class ModelError(ValueError):
    """A model file that is not a colorization model streamd can run: the message names the file and what is
    wrong with it."""


# The metadata `streamd export` writes that a runtime reads, and the type of each; other keys are left alone.
METADATA = {"model_id": str, "input_height": int, "input_width": int, "temperature": float,
            "prior_correction": float, "shrink": float, "cast_correction": float}


def session_info(session: ort.InferenceSession, path: Path, temperature: float | None = None) -> ModelInfo:
    """What `streamd export` wrote into the model's metadata; `temperature` overrides the model's own. Raises
    ModelError for a graph without the L input and ab output, or metadata that does not fit it."""
    inputs, outputs = {i.name: i for i in session.get_inputs()}, {o.name for o in session.get_outputs()}
    if "L" not in inputs or "ab" not in outputs or set(inputs) - {"L", REFERENCE_INPUT}:
        raise ModelError(f"model {path}: not a streamd colorization model (it needs an input named L and an output "
                         f"named ab; it has inputs {sorted(inputs)} and outputs {sorted(outputs)})")
    meta = {}
    for key, value in session.get_modelmeta().custom_metadata_map.items():
        if key in METADATA:
            try:
                meta[key] = METADATA[key](json.loads(value))
            except (ValueError, TypeError):
                raise ModelError(f"model {path}: metadata {key} = {value!r} is not a {METADATA[key].__name__}") from None
    info = ModelInfo(meta.get("model_id", path.stem), meta.get("input_height", 192), meta.get("input_width", 320),
                     temperature if temperature is not None else meta.get("temperature", 0.38),
                     meta.get("prior_correction", 0.0), meta.get("shrink", 0.0), meta.get("cast_correction", 0.0))
    shape = inputs["L"].shape  # its sides may be fixed: [model] input_width and input_height can match them
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 1):
        raise ModelError(f"model {path}: input L has shape {shape}; streamd feeds N x 1 x HEIGHT x WIDTH")
    if REFERENCE_INPUT in inputs:
        shape = inputs[REFERENCE_INPUT].shape
        if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != REFERENCE_PLANES):
            raise ModelError(f"model {path}: input {REFERENCE_INPUT} has shape {shape}; streamd feeds N x "
                             f"{REFERENCE_PLANES} x HEIGHT x WIDTH (a day reference's L, a, b and confidence)")
    return info


def read_info(path: Path, temperature: float | None = None) -> ModelInfo:
    """A model's metadata, for runtimes other than ONNX Runtime (read through a plain CPU session)."""
    return session_info(ort.InferenceSession(str(path), providers=[PROVIDERS["cpu"]]), path, temperature)


class Colorizer:
    """Runs the network on batches of L (N, 1, H, W) float32 and returns ab (N, 2, H/4, W/4)."""

    unavailable: str | None = None  # why inference cannot run now: never, for a model in this process
    takes_reference = False  # a reference model (streamd.colour.reference): L and the camera's day reference in

    def __init__(self, path: Path | None = None, provider: str = "auto", temperature: float | None = None,
                 threads: int = 0, cache_dir: Path | None = None, int8: str = "off") -> None:
        """int8: "off" runs the file given; "auto" runs its int8 copy (int8_copy) instead when the provider
        is the CPU and the copy exists (1.3-2.3x faster there, BENCHMARKS.md; GPUs keep fp32/fp16);
        "on" requires the copy."""
        path = Path(path) if path else shipped_model()
        if not path.exists():
            raise FileNotFoundError(f"model {path} does not exist")
        self.provider, why = choose_provider(provider, ort.get_available_providers())
        quantized = int8_copy(path)
        if int8 == "on" and not quantized.exists():
            raise FileNotFoundError(f"int8 requested but {quantized} does not exist (make it with streamd quantize)")
        if int8 == "on" or (int8 == "auto" and self.provider == PROVIDERS["cpu"] and quantized.exists()):
            path = quantized
        self.path = path
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # Spinning pool threads fight the decode, colour and encode threads for the cores: on a small host
        # the network itself ran faster with them asleep, and one camera kept up only then (BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._override = None
        disabled_optimizers: list[str] = []
        if temperature is not None:  # the graph's `temperature` initializer, replaced for this session
            self._override = ort.OrtValue.ortvalue_from_numpy(np.array([temperature], dtype=np.float32))
            options.add_initializer("temperature", self._override)
            # A model exported at T = 1 divides by one, which NoopElimination removes together with the
            # initializer before the override applies: the override would be silently ignored.
            disabled_optimizers.append("NoopElimination")
        provider_options: dict = {}
        if self.provider == PROVIDERS["tensorrt"]:
            cache = cache_dir or Path(os.environ.get("CACHE_DIRECTORY", Path.home() / ".cache" / "streamd"))
            cache.mkdir(parents=True, exist_ok=True)
            provider_options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                                "trt_fp16_enable": True}
        providers = [(self.provider, provider_options)]
        if self.provider != PROVIDERS["cpu"]:
            providers.append((PROVIDERS["cpu"], {}))
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers,
                                                disabled_optimizers=disabled_optimizers)
        except (InvalidProtobuf, InvalidGraph) as e:  # a file that is not an ONNX model, or a broken one
            raise ModelError(f"model {path}: ONNX Runtime cannot load it ({e})") from e
        self.info = session_info(self.session, path, temperature)
        # A reference model also takes the camera's day reference (streamd.colour.reference) and returns ab at the input's size
        self.takes_reference = any(i.name == REFERENCE_INPUT for i in self.session.get_inputs())
        sides = self.session.get_inputs()[0].shape[2:]
        self.fixed_sides = tuple(sides) if all(isinstance(s, int) for s in sides) else None  # (H, W), or any
        log.info("model %s on %s (%s), input %dx%d, T=%.2f", self.info.model_id, self.provider, why,
                 self.info.input_width, self.info.input_height, self.info.temperature)

    def __call__(self, lightness: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
        """L (N, 1, H, W) -> ab; a reference model also needs the references' planes (N, 4, H, W)."""
        feed = {"L": lightness}
        if self.takes_reference:
            if reference is None:
                raise ValueError(f"model {self.info.model_id} colours from a day reference and got none")
            feed[REFERENCE_INPUT] = reference
        return self.session.run(["ab"], feed)[0]
