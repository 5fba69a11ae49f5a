"""Races and ordering, driven directly on the objects: frames leave a camera in order, and a model swapped in
by adaptation never lets the old model's prediction through."""
from __future__ import annotations

import threading
import time

import numpy as np

from streamd.frame import Frame
from streamd.sink import OutputTargets, OutputWorker


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
