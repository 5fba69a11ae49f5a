"""The models a daemon's cameras run: each file loaded once, through the back-end the config names (ONNX
Runtime, PyTorch with CUDA graphs, a Triton server), shared by the cameras that use it and released when none
does; and the reference model, for cameras with a day reference."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from streamd.config import Config, ConfigError, ModelConfig
from streamd.daemon.systemd import Keepalive
from streamd.infer.onnx_runtime import REFERENCE_MODEL, Colorizer, ModelError, shipped_model

if TYPE_CHECKING:
    from streamd.infer.pytorch import TorchColorizer
    from streamd.infer.triton_client import TritonColorizer

log = logging.getLogger(__name__)


def torch_model(path: str, temperature: float | None) -> TorchColorizer:
    """[model] provider = "torch-cuda": the model's training weights through PyTorch on the GPU, with CUDA
    graphs (streamd.infer.pytorch), for GPU hosts without onnxruntime-gpu; the path the GPU benchmarks measure."""
    try:
        from streamd.infer.pytorch import load_torch_colorizer
    except ImportError as e:
        raise ConfigError("model.provider: 'torch-cuda' needs torch: pip install 'streamd[train]'") from e
    try:
        return load_torch_colorizer(Path(path) if path else None, "cuda", temperature)
    except RuntimeError as e:
        raise ConfigError(f"model.provider: 'torch-cuda', but {e}") from e


def triton_model(m: ModelConfig) -> TritonColorizer:
    """[model] provider = "triton": the model on a Triton Inference Server (streamd.infer.triton_client)."""
    try:
        from streamd.infer.triton_client import ModelMismatch, TritonColorizer
    except ImportError as e:
        raise ConfigError("model.provider: 'triton' needs tritonclient: pip install 'streamd[triton]'") from e
    try:
        return TritonColorizer(m.triton_url, m.triton_model, m.triton_timeout_s)
    except ModelMismatch as e:
        raise ConfigError(f"model.triton_model: {e}") from e


class ModelStore:
    """The generic model ([model] path, or `generic` where the caller gives one), the other models by path as
    cameras ask for them; and the reference model, loaded on request (`load_reference`).

    Models are asked for from the reload thread and the adaptation scheduler's, and used by the inference
    thread: each file is loaded once (a second asker waits for the first load; different files load side by
    side, without the lock, since a TensorRT engine build takes minutes)."""

    def __init__(self, config: Config, keepalive: Keepalive, generic: Colorizer | None = None) -> None:
        self.config = config.model
        self._reference_config = config.reference
        m = self.config
        with keepalive("loading the model", m.load_timeout_s):
            try:
                self.generic = generic or self.load(m.path)
            except (FileNotFoundError, ModelError) as e:  # the config's model or its int8 copy: the operator's
                key = "model.int8" if isinstance(e, FileNotFoundError) and m.int8 == "on" else "model.path"
                raise ConfigError(f"{key}: {e}") from e
        self._models: dict[str, Colorizer] = {"": self.generic}  # by path; "" the generic one
        self._lock = threading.Lock()
        self._loading: dict[str, Future] = {}  # models being loaded, by path: a second asker waits for the first

    def input_size(self, colorizer: Colorizer) -> tuple[int, int]:
        """The (height, width) the model is fed: the config's, else the model's own."""
        m, info = self.config, colorizer.info
        return (m.input_height or info.input_height, m.input_width or info.input_width)

    def load(self, path: str) -> Colorizer:
        """The model at `path` ("": the generic one) through the configured back-end, loaded anew."""
        m = self.config
        if m.provider == "triton" and not path:
            return triton_model(m)
        if m.provider == "torch-cuda":
            return torch_model(path, m.temperature or None)
        # With Triton, a camera's own model (its config's, or adapted to it here) runs in this process.
        provider = "auto" if m.provider == "triton" else m.provider
        colorizer = Colorizer(Path(path) if path else None, provider, m.temperature or None, m.threads,
                              Path(m.cache_dir) if m.cache_dir else None, m.int8)
        fed = self.input_size(colorizer)
        if colorizer.fixed_sides and colorizer.fixed_sides != fed:  # it would fail on every batch
            raise ModelError(f"model {colorizer.path}: its input is fixed at {colorizer.fixed_sides[1]}x"
                             f"{colorizer.fixed_sides[0]}, and this config feeds {fed[1]}x{fed[0]} ([model] "
                             "input_width and input_height)")
        return colorizer

    def get(self, path: str, keepalive: Keepalive) -> Colorizer:
        """The model at `path` ("": the generic one), loaded once however many threads ask for it at the
        same time; `keepalive` wraps a load (and the wait for another thread's)."""
        with self._lock:
            if path in self._models:
                return self._models[path]
            loading = self._loading.get(path)
            mine = loading is None
            if mine:
                loading = self._loading[path] = Future()
        # The lock is not held while a model loads: the main thread must stay free to look up and release
        # other models meanwhile.
        if not mine:
            with keepalive(f"waiting for model {path}", self.config.load_timeout_s):
                return loading.result()
        try:
            with keepalive(f"loading model {path}", self.config.load_timeout_s):
                model = self.load(path)
        except BaseException as e:  # whoever waits for this load hears why it failed, and a later ask tries anew
            with self._lock:
                del self._loading[path]
            loading.set_exception(e)
            raise
        with self._lock:
            self._models[path] = model
            del self._loading[path]
        loading.set_result(model)
        return model

    def release(self, old: Colorizer, in_use: Callable[[Colorizer], bool]) -> None:
        """Free a replaced model (its session, on a GPU its memory) unless `in_use` says a camera still runs
        it; never the generic model."""
        with self._lock:
            if in_use(old):
                return
            for key, colorizer in list(self._models.items()):
                if colorizer is old and key:
                    del self._models[key]

    def loaded(self) -> list[Colorizer]:
        """Every model loaded now, the generic one first."""
        with self._lock:
            return list(self._models.values())

    def holds(self, path: str) -> bool:
        with self._lock:
            return path in self._models

    def load_reference(self, keepalive: Keepalive) -> Colorizer | None:
        """The model that colours from a day reference; None (logged) where it cannot be loaded: those cameras
        then colour without their references."""
        m, path = self.config, self._reference_config.model
        if m.provider == "triton" and not path:  # it would run here, on a host that sends its network's work away
            log.info("cameras colour without day references: with provider = \"triton\" the reference model would "
                     "run on this host's CPU; [reference] model names one to run here all the same")
            return None
        try:
            with keepalive("loading the reference model", m.load_timeout_s):
                provider = "auto" if m.provider in ("triton", "torch-cuda") else m.provider  # it runs here
                model = Colorizer(Path(path) if path else shipped_model(REFERENCE_MODEL), provider,
                                  m.temperature or None, m.threads, Path(m.cache_dir) if m.cache_dir else None, m.int8)
        except (OSError, ModelError, RuntimeError) as e:
            log.error("reference model cannot be loaded (%s): cameras colour without their day references", e)
            return None
        if not model.takes_reference:
            log.error("reference.model %s takes no day reference: cameras colour without their day references",
                      model.path)
            return None
        return model
