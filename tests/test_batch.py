"""The batcher: one frame per camera, its oldest within the delay budget (with none, the newest); full batches
leave at once, partial ones at the deadline."""
from __future__ import annotations

import threading
import time

import numpy as np

from streamd.daemon.backlog import MAX_FRAMES, Backlog
from streamd.daemon.batch import Batcher
from streamd.frame import Frame


def frame(camera: str, seq: int, arrival: float | None = None) -> Frame:
    plane = np.zeros((4, 4), np.uint8)
    return Frame(camera, seq, plane, plane[:2, :2], plane[:2, :2], arrival=time.monotonic() if arrival is None else arrival)


def test_without_a_budget_the_newest_frame_wins_and_drops_are_counted():
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


def test_frames_within_the_budget_wait_and_leave_in_order_one_per_camera_and_batch():
    """A stall of inference shorter than the budget costs latency, not frames: the frames queued meanwhile
    leave oldest first, one per camera and batch, so each camera's reach the network in order."""
    b = Batcher(max_size=2, deadline_s=0.01, max_delay_s=5.0)
    for seq in range(3):
        b.put(frame("a", seq))
    b.put(frame("b", 0))
    assert b.waiting() == 4
    batches = [[(f.camera, f.seq) for f in b.next_batch(timeout=1)] for _ in range(3)]
    assert batches == [[("a", 0), ("b", 0)], [("a", 1)], [("a", 2)]]
    assert b.dropped == {} and b.pending() == 1  # the last batch is still in flight
    b.done()
    assert b.pending() == 0


def test_a_frame_past_the_budget_is_dropped_only_for_a_newer_one():
    """Frames older than the budget are dropped when newer frames of their camera wait behind them (that
    camera outpaces inference); the newest is sent however late, and other cameras lose nothing."""
    b = Batcher(max_size=2, deadline_s=0.01, max_delay_s=0.1)
    now = time.monotonic()
    for seq, age in enumerate((0.5, 0.3, 0.2, 0.05)):
        b.put(frame("a", seq, arrival=now - age))
    b.put(frame("b", 0, arrival=now - 0.5))  # alone: late, but nothing newer to show instead
    assert sorted((f.camera, f.seq) for f in b.next_batch(timeout=1)) == [("a", 3), ("b", 0)]
    assert b.dropped == {"a": 3}
    b.discard("a")
    assert b.dropped == {}  # removed: a camera added again under its name counts afresh, as its other counters


def test_a_backlog_holds_at_most_max_frames_whatever_the_budget():
    backlog = Backlog(max_delay_s=3600.0)
    for seq in range(MAX_FRAMES + 3):
        backlog.push(frame("a", seq))
    assert len(backlog) == MAX_FRAMES and backlog.dropped == 3
    assert backlog.pop().seq == 3


def test_a_closed_batcher_hands_out_what_waits_then_counts_late_comers_as_dropped():
    b = Batcher(max_size=4, deadline_s=10.0, max_delay_s=5.0)
    b.put(frame("a", 0))
    b.put(frame("a", 1))
    b.close()
    b.put(frame("a", 2))  # a camera that had not stopped yet
    assert b.closed and b.dropped == {"a": 1}
    assert [f.seq for f in b.next_batch(timeout=5)] == [0]  # at once: no deadline to wait for once closed
    assert [f.seq for f in b.next_batch(timeout=5)] == [1]
    start = time.monotonic()
    assert b.next_batch(timeout=5) == [] and time.monotonic() - start < 1


def test_an_abandoned_batcher_counts_what_waits_as_dropped():
    b = Batcher(max_size=4, deadline_s=10.0, max_delay_s=5.0)
    for seq in range(3):
        b.put(frame("a", seq))
    b.put(frame("b", 0))
    b.abandon()
    assert b.closed and b.dropped == {"a": 3, "b": 1} and b.pending() == 0
    assert b.next_batch(timeout=5) == []
