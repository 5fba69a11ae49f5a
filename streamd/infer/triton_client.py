"""Inference on a Triton Inference Server over gRPC ([model] provider = "triton"): camera hosts without a GPU
share the GPUs of a few inference servers (docs/scaling.md).

Same interface as streamd.infer.onnx_runtime.Colorizer (`info`, `provider`, `path`, `unavailable`; L batch in, ab batch
out), so the Pipeline runs it unchanged: a cross-camera batch of the process goes to the server as it is,
split into requests of at most the model's max_batch_size that are all sent at once (async_infer) and
merged again in order. The inference thread waits on them without the GIL, so the cameras' decode and
colour threads go on working while the frames are on the network, and the server's dynamic batcher merges
the requests of several hosts.

The model's id, input size and temperature come from the parameters of the model's configuration on the
server (`streamd export --triton` writes them), so frame headers name the model the server runs.

A server that cannot be reached, does not answer within the timeout or fails a request makes the provider
unavailable: calls raise InferenceUnavailable at once (the pipeline passes those frames through gray and
counts them; /healthz says degraded, with this reason) until the next reconnect attempt, 0.5 s after the
loss and then doubling to 5 s, succeeds. Each attempt opens a new gRPC channel and reads the model's
configuration again, so a server restarted with a new model is followed. Needs the `triton` extra
(tritonclient[grpc]); nothing imports this module unless it is used.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from streamd.infer.onnx_runtime import InferenceUnavailable, ModelInfo
from streamd.model.triton_repo import PARAMETER_PREFIX

log = logging.getLogger(__name__)

RETRY_FIRST_S, RETRY_MAX_S = 0.5, 5.0
DEFAULT_INPUT = (192, 320)  # the shipped model's, until a server says otherwise


class ModelMismatch(ValueError):
    """The server's model is not one streamd can run: wrong tensors, or no batching."""


def model_info(config: dict, name: str) -> tuple[ModelInfo, int]:
    """(the model's metadata, its max_batch_size) from its Triton configuration (as JSON)."""
    inputs = {t["name"]: t for t in config.get("input", [])}
    outputs = {t["name"]: t for t in config.get("output", [])}
    if inputs.get("L", {}).get("data_type") != "TYPE_FP32" or outputs.get("ab", {}).get("data_type") != "TYPE_FP32":
        raise ModelMismatch(f"Triton model {name!r} does not take FP32 'L' and give FP32 'ab' (it has inputs "
                            f"{sorted(inputs)} and outputs {sorted(outputs)}): not a streamd model")
    max_batch = int(config.get("max_batch_size", 0))
    if max_batch < 1:
        raise ModelMismatch(f"Triton model {name!r} has max_batch_size 0: streamd sends batches "
                            "(streamd export --triton writes a batching configuration)")
    params = {key[len(PARAMETER_PREFIX):]: value.get("string_value", "")
              for key, value in config.get("parameters", {}).items() if key.startswith(PARAMETER_PREFIX)}
    if "model_id" not in params:
        log.warning("Triton model %r has no %smodel_id parameter (not written by streamd export --triton): frames "
                    "are labelled %r", name, PARAMETER_PREFIX, f"triton:{name}")
    try:
        info = ModelInfo(params.get("model_id", f"triton:{name}"),
                         int(params.get("input_height", DEFAULT_INPUT[0])),
                         int(params.get("input_width", DEFAULT_INPUT[1])),
                         float(params.get("temperature", 0.0)), float(params.get("prior_correction", 0.0)),
                         float(params.get("shrink", 0.0)), float(params.get("cast_correction", 0.0)))
    except ValueError as e:
        raise ModelMismatch(f"Triton model {name!r}: a {PARAMETER_PREFIX}* parameter is not a number ({e})") from e
    return info, max_batch


def _describe(error: InferenceServerException) -> str:
    return str(error).splitlines()[0][:300]


class TritonColorizer:
    """L (N, 1, H, W) float32 -> ab (N, 2, H/4, W/4) float32 on a Triton server's model."""

    provider = "triton"
    path = None  # the model file lives on the server

    def __init__(self, url: str, model: str, timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Connects once; a server that cannot be reached yet leaves the provider unavailable (the cameras
        start and flow gray until it is up). Raises ModelMismatch when the server's model is not streamd's."""
        self.url, self.model, self.timeout_s, self._clock = url, model, timeout_s, clock
        self.info = ModelInfo(f"triton:{model}", *DEFAULT_INPUT, temperature=0.0)
        self.unavailable: str | None = None  # why inference cannot run now; None while it can
        self._client: grpcclient.InferenceServerClient | None = None
        self._max_batch = 1
        self._retry_s = RETRY_FIRST_S
        self._retry_at = 0.0
        self._output = grpcclient.InferRequestedOutput("ab")
        try:
            self._connect()
        except InferenceUnavailable as e:
            self._lost(str(e))

    def _connect(self) -> None:
        """A new channel, and the model's configuration read through it."""
        self._close()
        client = grpcclient.InferenceServerClient(self.url)
        try:
            config = client.get_model_config(self.model, as_json=True, client_timeout=self.timeout_s)["config"]
        except InferenceServerException as e:
            client.close()
            raise InferenceUnavailable(f"Triton at {self.url}, model {self.model!r}: {_describe(e)}") from e
        info, self._max_batch = model_info(config, self.model)
        if info != self.info:
            log.info("model %s on Triton at %s (model %r, max batch %d), input %dx%d, T=%.2f", info.model_id,
                     self.url, self.model, self._max_batch, info.input_width, info.input_height, info.temperature)
        self.info, self._client = info, client

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _lost(self, reason: str) -> None:
        if self.unavailable is None:
            log.warning("inference unavailable: %s; night frames pass through gray until the server is back", reason)
            self._retry_s = RETRY_FIRST_S
        self.unavailable = reason
        self._retry_at = self._clock() + self._retry_s
        self._retry_s = min(2 * self._retry_s, RETRY_MAX_S)
        self._close()

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        if self.unavailable is not None:
            if self._clock() < self._retry_at:
                raise InferenceUnavailable(self.unavailable)
            try:
                self._connect()
            except (InferenceUnavailable, ModelMismatch) as e:
                self._lost(str(e))
                raise InferenceUnavailable(str(e)) from e
        try:
            ab = self._infer(lightness)
        except InferenceUnavailable as e:
            self._lost(str(e))
            raise
        if self.unavailable is not None:
            log.info("inference is back: Triton at %s answers (model %s)", self.url, self.info.model_id)
            self.unavailable = None
        return ab

    def requests_for(self, batch: int) -> int:
        """How many requests a call with `batch` frames sends (the server takes at most max_batch_size)."""
        return -(-batch // self._max_batch)

    def _infer(self, lightness: np.ndarray) -> np.ndarray:
        """All requests of the batch in flight at once; their answers in order."""
        chunks = [lightness[i:i + self._max_batch] for i in range(0, len(lightness), self._max_batch)]
        results: list = [None] * len(chunks)
        errors: list[InferenceServerException] = []
        left = [len(chunks)]
        lock, done = threading.Lock(), threading.Event()

        def answered(index: int, result, error) -> None:  # on a gRPC thread
            with lock:
                results[index] = result
                if error is not None:
                    errors.append(error)
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        for index, chunk in enumerate(chunks):
            tensor = grpcclient.InferInput("L", list(chunk.shape), "FP32")
            tensor.set_data_from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
            try:
                self._client.async_infer(self.model, [tensor], partial(answered, index), outputs=[self._output],
                                         client_timeout=self.timeout_s)
            except InferenceServerException as e:
                raise InferenceUnavailable(f"Triton at {self.url}: {_describe(e)}") from e
        # the client's own deadline ends each request; the margin only covers its callback
        if not done.wait(self.timeout_s + 1.0):
            raise InferenceUnavailable(f"Triton at {self.url}: no answer within {self.timeout_s:g} s")
        if errors:
            raise InferenceUnavailable(f"Triton at {self.url}, model {self.model!r}: {_describe(errors[0])}")
        return np.concatenate([result.as_numpy("ab") for result in results])
