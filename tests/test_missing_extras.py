"""Commands that need the `train` extra, run where it is missing: one line naming what to install, no
traceback. The real CLI runs in a subprocess whose path shadows torch and onnx with modules that fail to
import, as they fail where the extra is not installed."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import MODEL, ROOT


def shadow(folder, modules: tuple[str, ...]):
    for name in modules:
        package = folder / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(f'raise ModuleNotFoundError("No module named {name!r}", name={name!r})\n')
    return folder


@pytest.mark.parametrize("args,missing,named", [
    (["train", "{tmp}"], ("torch", "onnx"), "torch"),
    (["export", "{tmp}/w.pt", "-o", "{tmp}/out.onnx"], ("torch", "onnx"), "torch"),
    (["export", "{tmp}/w.pt", "-o", "{tmp}/out.onnx"], ("onnx",), "onnx"),
    (["adapt", "{tmp}", "-o", "{tmp}/out.onnx"], ("torch", "onnx"), "torch"),
    (["quantize", str(MODEL), "-o", "{tmp}/out.onnx", "--calibration", "{tmp}"], ("onnx",), "onnx"),
])
def test_a_missing_train_extra_is_one_line_not_a_traceback(tmp_path, args, missing, named):
    path = shadow(tmp_path / "shadow", missing)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "streamd", *(a.format(tmp=tmp_path) for a in args)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2, run.stderr
    assert lines == [f"streamd {args[0]}: needs {named}, which is not installed here: pip install 'streamd[train]'"], \
        run.stderr
    assert not (tmp_path / "out.onnx").exists()


def test_a_triton_repository_is_written_without_the_train_extra(tmp_path):
    """`streamd export --triton DIR` packages the shipped ONNX model: an image with `streamd[triton]` only (a
    Kubernetes init container) can run it."""
    path = shadow(tmp_path / "shadow", ("torch", "onnx"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)])}
    run = subprocess.run([sys.executable, "-m", "streamd", "export", "--triton", str(tmp_path / "repo")], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "repo" / "streamd" / "1" / "model.onnx").is_file()
