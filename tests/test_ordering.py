"""Races and ordering, driven directly on the objects: frames leave a camera in order, and a model swapped in
by adaptation never lets the old model's prediction through."""
from __future__ import annotations

import threading
import time

import numpy as np

from streamd.frame import Frame
from streamd.daemon.sink import OutputTargets, OutputWorker


def small_frame(seq: int) -> Frame:
    plane = np.full((8, 8), 100, np.uint8)
    return Frame("cam", seq, plane, plane[:4, :4].copy(), plane[:4, :4].copy())


def test_an_older_frame_never_overwrites_or_follows_a_newer_one_in_the_output_slot():
    """At a day/night switch, day frames go straight to the outputs while the last gray frame is still in
    inference: when it comes back it is older than what the slot holds (or already sent)."""
    sent, first_taken, release = [], threading.Event(), threading.Event()

    def prepare(frame: Frame) -> Frame:
        sent.append(frame.seq)
        first_taken.set()
        release.wait(10)  # the output thread is busy with this frame while others arrive
        return frame

    worker = OutputWorker("cam", OutputTargets(), prepare=prepare)
    try:
        worker.put(small_frame(3))
        assert first_taken.wait(10)
        worker.put(small_frame(5))  # a day frame, straight from the decode thread
        worker.put(small_frame(4))  # the gray frame before it, back from inference
        release.set()
        for _ in range(200):
            if worker.idle:
                break
            time.sleep(0.01)
        worker.put(small_frame(2))  # older than what was sent already
        worker.put(small_frame(6))
    finally:
        worker.close()
    assert sent == [3, 5, 6]
    assert worker.dropped == 2


def test_an_output_stalled_within_the_budget_sends_every_frame_in_order():
    """A camera's outputs held up (an encoder opening, the CPU taken by a batch) for less than the delay
    budget send the frames that came meanwhile, in order; with no budget, only the newest of them."""
    for budget, expected in ((5.0, [1, 2, 3, 4]), (0.0, [1, 4])):
        sent, first_taken, release = [], threading.Event(), threading.Event()

        def prepare(frame: Frame) -> Frame:
            sent.append(frame.seq)
            first_taken.set()
            release.wait(10)
            return frame

        worker = OutputWorker("cam", OutputTargets(), prepare=prepare, max_delay_s=budget)
        try:
            worker.put(small_frame(1))
            assert first_taken.wait(10)
            for seq in (2, 3, 4):
                worker.put(small_frame(seq))
            release.set()
            for _ in range(200):
                if worker.idle:
                    break
                time.sleep(0.01)
        finally:
            worker.close()
        assert sent == expected
        assert worker.dropped == 4 - len(expected) and worker.published == len(expected)


class HeldNetwork:
    """The shipped model, whose next call waits until released: a batch caught in the middle of inference."""

    def __init__(self) -> None:
        from streamd.infer.onnx_runtime import Colorizer

        self.model = Colorizer()
        self.info, self.provider, self.path = self.model.info, self.model.provider, self.model.path
        self.entered, self.release = threading.Event(), threading.Event()

    def __call__(self, lightness: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait(30)
        return self.model(lightness)


def still_frame(seq: int, arrival: float) -> Frame:
    from skimage import data

    bgr = np.ascontiguousarray(data.astronaut()[::2, ::2, ::-1])
    frame = Frame.from_bgr("gate", seq, bgr, arrival=arrival)
    frame.u[:] = 128
    frame.v[:] = 128
    return frame


def idle_pipeline(network=None):
    """A pipeline with one camera whose source ends at once (a file that does not exist): its batches are
    driven by the test, on the pipeline's own code."""
    from streamd import config as cfgmod
    from streamd.daemon.pipeline import Pipeline

    cfg = cfgmod.parse({"camera": [{"name": "gate", "url": "/nonexistent/gate.mp4", "collect": False}],
                        "zmq": {"endpoint": ""}})
    pipeline = Pipeline(cfg, network)
    pipeline.add_camera(cfg.cameras[0])
    return pipeline


def test_an_adapted_model_swapped_in_during_a_batch_never_lets_the_old_prediction_through():
    """The scheduler swaps a camera's model while the inference thread is inside a batch of that camera: the
    batch's prediction (the old model's) must not be remembered for reuse after the swap, or the still
    scene would keep showing the old model."""
    from streamd.config import CameraConfig
    from tests.conftest import MODEL

    network = HeldNetwork()
    pipeline = idle_pipeline(network)
    try:
        runtime = pipeline.cameras["gate"]
        adapted = pipeline.model_for(CameraConfig("gate", "x", model=str(MODEL)))  # loaded beforehand
        batch = threading.Thread(target=lambda: pipeline._run_batch([still_frame(1, 100.0)]))
        batch.start()
        assert network.entered.wait(30)
        swap = threading.Thread(target=pipeline.use_adapted, args=("gate", MODEL))
        swap.start()
        swap.join(1.0)
        assert swap.is_alive()  # the swap may not complete while the batch is in the network...
        network.release.set()
        batch.join(30)
        swap.join(30)
        assert runtime.colorizer is adapted
        pipeline._run_batch([still_frame(2, 100.1)])  # the same still scene, 0.1 s later
        assert runtime.reuse.reused == 0  # ...so this frame ran the new model instead of reusing the old one
        assert runtime.colorized == 2
    finally:
        network.release.set()
        pipeline.stop()


def test_a_model_asked_for_by_two_threads_at_once_is_loaded_once(monkeypatch):
    """The reload thread (a camera's config names the model) and the scheduler (the same file as its
    adapted model) both ask for a model that is not loaded yet."""
    from streamd.config import CameraConfig
    from streamd.daemon.models import ModelStore
    from tests.conftest import MODEL

    pipeline = idle_pipeline()
    loads, load = [], ModelStore.load

    def counted(self, path):
        loads.append(path)
        return load(self, path)

    monkeypatch.setattr(ModelStore, "load", counted)
    try:
        start = threading.Barrier(2)
        reload = threading.Thread(target=lambda: (start.wait(), pipeline.model_for(CameraConfig("gate", "x", model=str(MODEL)))))
        adapt = threading.Thread(target=lambda: (start.wait(), pipeline.use_adapted("gate", MODEL)))
        reload.start(), adapt.start()
        reload.join(60), adapt.join(60)
        assert loads == [str(MODEL)]
    finally:
        pipeline.stop()


def test_a_model_being_loaded_does_not_hold_up_another(tmp_path, monkeypatch):
    """An adapted model that takes long to load (a TensorRT engine build: minutes) must not block the reload
    thread's load of another file, nor its lookups; whoever waits on the slow file gets it once it is there."""
    import shutil

    from streamd.config import CameraConfig
    from streamd.daemon.models import ModelStore
    from tests.conftest import MODEL

    pipeline = idle_pipeline()
    slow, other = tmp_path / "slow.onnx", tmp_path / "other.onnx"
    shutil.copy(MODEL, slow), shutil.copy(MODEL, other)
    entered, release, load = threading.Event(), threading.Event(), ModelStore.load

    def held(self, path):
        if path == str(slow):
            entered.set()
            assert release.wait(60)
        return load(self, path)

    monkeypatch.setattr(ModelStore, "load", held)
    got = {}
    try:
        builder = threading.Thread(target=lambda: got.setdefault("slow", pipeline.model_for(
            CameraConfig("gate", "x", model=str(slow)))))
        builder.start()
        assert entered.wait(30)
        waiter = threading.Thread(target=lambda: got.setdefault("waited", pipeline.model_for(
            CameraConfig("yard", "x", model=str(slow)))))
        waiter.start()
        other_model = pipeline.model_for(CameraConfig("door", "x", model=str(other)))  # while slow.onnx loads
        assert other_model.path == other and builder.is_alive() and waiter.is_alive()
        release.set()
        builder.join(60), waiter.join(60)
        assert got["slow"] is got["waited"] and got["slow"].path == slow
    finally:
        release.set()
        pipeline.stop()
