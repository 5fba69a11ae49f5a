"""The streamd model behind Triton's Python backend, for the tests: ONNX Runtime inside the served function.

The Triton server the tests run (nvidia-pytriton's) has only the Python backend, so the repository that
`streamd export --triton` writes is served with its `platform: "onnxruntime_onnx"` line swapped for
`backend: "python"` and this file beside the model as 1/model.py; the rest of the configuration (batching,
parameters) is the exported one. Runs inside Triton's Python backend stub: imports what that environment has.
"""
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        options = ort.SessionOptions()
        # one thread for the tests, whose machine runs the daemon beside the server; 0 (one per core) to measure
        options.intra_op_num_threads = int(os.environ.get("STREAMD_TRITON_ORT_THREADS", "1"))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as streamd's own sessions
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        """The dynamic batcher hands over several requests (of several clients) at once: one network run."""
        inputs = [pb_utils.get_input_tensor_by_name(r, "L").as_numpy() for r in requests]
        ab = self.session.run(["ab"], {"L": np.concatenate(inputs)})[0]
        responses, start = [], 0
        for lightness in inputs:
            out = pb_utils.Tensor("ab", np.ascontiguousarray(ab[start:start + len(lightness)]))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(lightness)
        return responses
