"""A real Triton Inference Server for the tests and the Triton benchmark, from the nvidia-pytriton package.

    <triton venv>/bin/python tests/triton/server.py REPOSITORY --grpc-port P --http-port Q --metrics-port R

Runs in its own virtual environment (scripts/triton-server-env makes it), not in streamd's: nvidia-pytriton
pins numpy < 2, below what streamd's OpenCV and scikit-image wheels need. Serves every model of REPOSITORY
(one written by `streamd export --triton`, made to run on the Python backend: tests/triton/model.py) on
127.0.0.1 until killed.
"""
from __future__ import annotations

import argparse
import os
import sysconfig
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("repository", type=Path)
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--http-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    args = p.parse_args()
    # The Python backend's stub embeds libpython and runs this interpreter's standard library: it must load
    # this interpreter's libpython, not another build's of the same version the loader may find first
    # (a distribution's /usr/lib one beside a pyenv or venv Python fails inside `threading`).
    libdir = sysconfig.get_config_var("LIBDIR")
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, os.environ.get("LD_LIBRARY_PATH")]))

    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    config = TritonConfig(model_repository=args.repository, grpc_address="127.0.0.1", grpc_port=args.grpc_port,
                          http_address="127.0.0.1", http_port=args.http_port, metrics_address="127.0.0.1",
                          metrics_port=args.metrics_port, exit_timeout_secs=1)
    # the inference statistics open (read-only, and the server listens on 127.0.0.1 only): the cost script
    # reads the server's own compute time from them
    security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
    with Triton(config=config, security_config=security) as triton:
        triton.serve()


if __name__ == "__main__":
    main()
