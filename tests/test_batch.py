"""The batcher: newest frame per camera, full batches leave at once, partial ones at the deadline; still
scenes reuse the last prediction."""
from __future__ import annotations

import threading
import time

import cv2
import numpy as np

from streamd.batch import Batcher
from streamd.frame import Frame
from streamd.steps import lightness_of
from streamd.temporal import Reuse


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


def scene(seq: int, arrival: float, square_at: int | None = None, pan: int = 0, texture: int = 0) -> Frame:
    """A 320x192 gray night frame of a textured scene, optionally with a bright square at x = square_at,
    the camera panned `pan` pixels to the right."""
    rng = np.random.default_rng(texture)
    y = cv2.GaussianBlur(rng.integers(40, 200, (192, 400), dtype=np.uint8), (0, 0), 3)[:, 40 + pan:360 + pan].copy()
    if square_at is not None:
        y[80:112, square_at:square_at + 32] = 235
    chroma = np.full((96, 160), 128, np.uint8)
    return Frame("cam", seq, y, chroma, chroma.copy(), arrival=arrival)


def predicted(f: Frame) -> Frame:
    """What inference hands back: the frame with (L, ab) - here a constant ab."""
    f.prediction, f.model_id = (lightness_of(f, (192, 320)), np.full((2, 48, 80), 7.0, np.float32)), "m"
    return f


def test_still_scene_reuses_the_last_prediction_and_anything_that_moves_is_predicted():
    still = Reuse(still_s=1.0)
    first = scene(0, arrival=0.0)
    lightness_of(first, (192, 320))
    assert not still.try_reuse(first)  # nothing predicted yet
    still.remember(predicted(first))

    same = scene(1, arrival=0.04)
    lightness_of(same, (192, 320))
    assert still.try_reuse(same)
    assert same.model_id == "m" and np.array_equal(same.prediction[1], first.prediction[1])
    assert same.prediction[0] is same.lightness  # the reused ab is fitted to this frame's own L

    moving = scene(2, arrival=0.08, square_at=100)  # one small object appears: 32x32 of 320x192 pixels
    lightness_of(moving, (192, 320))
    assert not still.try_reuse(moving)

    late = scene(3, arrival=1.5)  # the same still scene, but the prediction is too old
    lightness_of(late, (192, 320))
    assert not still.try_reuse(late)

    still.remember(predicted(moving))
    again = scene(4, arrival=0.12, square_at=100)
    lightness_of(again, (192, 320))
    assert still.try_reuse(again)  # compared with the last prediction's frame, which had the square
    still.forget()
    assert not still.try_reuse(again)  # forgotten (e.g. a new model): predicted afresh
    assert still.reused == 2


def test_a_moving_scene_carries_the_prediction_along_the_flow_for_a_few_frames():
    reuse = Reuse(still_s=1.0, carry_frames=2)
    first = scene(0, arrival=0.0)
    lightness_of(first, (192, 320))
    predicted(first)
    first.prediction[1][:, :, 40:] = -20.0  # a colour edge on the ab grid, at x = 40 cells
    reuse.remember(first)
    stalled = scene(1, arrival=1.5, pan=8)  # the flow would explain it, but the stream stalled for 1.5 s
    lightness_of(stalled, (192, 320))
    assert not reuse.try_reuse(stalled)

    for seq in (1, 2):  # the camera pans 8 pixels a frame: 2 cells of the ab grid
        panned = scene(seq, arrival=0.04 * seq, pan=8 * seq)
        lightness_of(panned, (192, 320))
        assert reuse.try_reuse(panned)
        ab = panned.prediction[1]
        edge = 40 - 2 * seq  # the content moved left: so did its colour
        assert np.abs(ab[:, 10:38, edge - 3] - 7.0).max() < 1.0 and np.abs(ab[:, 10:38, edge + 2] + 20.0).max() < 1.0
    third = scene(3, arrival=0.12, pan=24)
    lightness_of(third, (192, 320))
    assert not reuse.try_reuse(third)  # carried twice in a row: the network sees the camera again
    reuse.remember(predicted(third))

    cut = scene(4, arrival=0.16, texture=1)  # another scene altogether: nothing to carry
    cut.y[:96] = 235 - cut.y[:96] // 2  # (at the ab grid's scale, blurred noise looks alike: add structure)
    lightness_of(cut, (192, 320))
    assert not reuse.try_reuse(cut)
    assert reuse.carried == 2 and reuse.reused == 0


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
