"""The batcher: newest frame per camera, full batches leave at once, partial ones at the deadline."""
from __future__ import annotations

import threading
import time

import numpy as np

from streamd.daemon.batch import Batcher
from streamd.frame import Frame


def frame(camera: str, seq: int) -> Frame:
    plane = np.zeros((4, 4), np.uint8)
    return Frame(camera, seq, plane, plane[:2, :2], plane[:2, :2])


def test_newest_frame_wins_and_drops_are_counted():
    b = Batcher(max_size=4, deadline_s=0.01)
    for seq in range(5):
        b.put(frame("a", seq))
    b.put(frame("b", 0))
    batch = b.next_batch(timeout=1)
    assert [(f.camera, f.seq) for f in batch] == [("a", 4), ("b", 0)]
    assert b.dropped == {"a": 4}


def test_full_batch_leaves_without_waiting_for_the_deadline():
    b = Batcher(max_size=2, deadline_s=5.0)
    b.put(frame("a", 0))
    b.put(frame("b", 0))
    start = time.monotonic()
    assert len(b.next_batch(timeout=1)) == 2
    assert time.monotonic() - start < 1.0


def test_partial_batch_leaves_at_the_deadline_with_late_arrivals():
    b = Batcher(max_size=3, deadline_s=0.3)
    b.put(frame("a", 0))
    threading.Timer(0.1, lambda: b.put(frame("b", 0))).start()
    start = time.monotonic()
    batch = b.next_batch(timeout=1)
    waited = time.monotonic() - start
    assert {f.camera for f in batch} == {"a", "b"}
    assert 0.2 < waited < 2.0


def test_empty_batcher_times_out_and_close_wakes_waiters():
    b = Batcher(max_size=2, deadline_s=0.05)
    assert b.next_batch(timeout=0.1) == []
    threading.Timer(0.1, b.close).start()
    start = time.monotonic()
    assert b.next_batch(timeout=5) == []
    assert time.monotonic() - start < 2


def test_a_discarded_frame_takes_its_deadline_with_it():
    """A camera removed while its frame waited longest: the batch's deadline runs from the frames still
    waiting, so the batch waits for the other cameras instead of leaving at once on the removed frame's
    expired deadline."""
    b = Batcher(max_size=3, deadline_s=0.5)
    b.put(frame("gone", 0))
    time.sleep(0.6)  # the gone camera's frame is past its deadline
    b.put(frame("a", 0))
    b.discard("gone")
    b.put(frame("b", 0))
    start = time.monotonic()
    batch = b.next_batch(timeout=5)
    assert [f.camera for f in batch] == ["a", "b"]
    assert time.monotonic() - start >= 0.3  # waited (about) a's own deadline for a third camera
