"""A real Triton Inference Server for the tests: nvidia-pytriton's tritonserver
binary, in its own environment (scripts/triton-server-env), started by server.py with the repository that
`streamd export --triton` writes, served through the Python backend by model.py (ONNX Runtime inside)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import tritonclient.grpc as grpcclient

from streamd.cli import main
from tests.conftest import MODEL, ROOT, free_port

HERE = Path(__file__).resolve().parent


class ServerEnvironmentMissing(RuntimeError):
    pass


def triton_python() -> Path:
    """The interpreter of the Triton server's environment."""
    python = Path(os.environ.get("STREAMD_TRITON_PYTHON", ROOT / ".venv-triton" / "bin" / "python"))
    if not python.exists():
        raise ServerEnvironmentMissing(f"no Triton server environment at {python} (scripts/triton-server-env makes "
                                       "it, and scripts/test runs that; or point $STREAMD_TRITON_PYTHON at one with "
                                       "nvidia-pytriton and onnxruntime)")
    return python


def exported_repository(out: Path, max_batch: int = 64, model: Path = MODEL) -> Path:
    """`streamd export --triton` of a model (the shipped one), made to run on the server's Python backend."""
    if main(["export", "--triton", str(out), "--model", str(model), "--triton-max-batch", str(max_batch)]) != 0:
        raise RuntimeError("streamd export --triton failed")
    config = out / "streamd" / "config.pbtxt"
    text = config.read_text()
    if text.count('platform: "onnxruntime_onnx"') != 1:
        raise RuntimeError(f"{config} does not name the ONNX Runtime platform once")
    config.write_text(text.replace('platform: "onnxruntime_onnx"', 'backend: "python"'))
    shutil.copyfile(HERE / "model.py", out / "streamd" / "1" / "model.py")
    return out


class TritonServer:
    """A Triton server process group on fixed ports, so that it can be killed and started again."""

    def __init__(self, repository: Path, workdir: Path, threads: int = 1) -> None:
        """`threads`: ONNX Runtime's intra-op threads in the server (0: one per core)."""
        self.repository, self.workdir, self.threads = repository, workdir, threads
        self.grpc, self.http, self.metrics = free_port(), free_port(), free_port()
        self.url = f"127.0.0.1:{self.grpc}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> None:
        self.starts += 1
        env = {**os.environ, "TMPDIR": str(self.workdir), "STREAMD_TRITON_ORT_THREADS": str(self.threads)}
        with open(self.workdir / f"triton-{self.starts}.log", "w") as log:
            # its own session: killing the group takes tritonserver and the backend stub with it
            self.proc = subprocess.Popen(
                [str(triton_python()), str(HERE / "server.py"), str(self.repository),
                 "--grpc-port", str(self.grpc), "--http-port", str(self.http), "--metrics-port", str(self.metrics)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        client = grpcclient.InferenceServerClient(self.url)
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the Triton server ended: {self.log()[-3000:]}")
                try:
                    if client.is_model_ready("streamd", client_timeout=1.0):
                        return
                except Exception:  # not listening yet
                    pass
                time.sleep(0.3)
            raise TimeoutError(f"Triton did not serve the model within {timeout:.0f} s: {self.log()[-3000:]}")
        finally:
            client.close()

    def log(self) -> str:
        return (self.workdir / f"triton-{self.starts}.log").read_text()

    def kill(self) -> None:
        """Gone without a word, as a crashed or unplugged server is."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.proc is not None:  # the shared memory the killed Python backend could not release
            for leftover in Path("/dev/shm").glob(f"pytrtion{self.proc.pid}-*"):
                leftover.unlink(missing_ok=True)


