"""Temporal stabilisation's handling of camera moves and cuts, and Reuse: still scenes reuse the last
prediction, moving ones may have it carried along the flow."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from skimage import data

from streamd.frame import Frame
from streamd.colour.lab import rgb_to_lab
from streamd.infer.onnx_runtime import Colorizer
from streamd.steps import check_reuses, colour_frame, lightness_of, predict_fresh, predict_or_reuse
from streamd.colour.temporal import GridFlow, Reuse, Temporal


def _scene(seed: int, shape: tuple[int, int] = (48, 300)) -> tuple[np.ndarray, np.ndarray]:
    """A wide textured scene on the ab grid: L (blobs of 20..80 units) and the colour that goes with it."""
    rng = np.random.default_rng(seed)
    blobs = cv2.GaussianBlur(rng.uniform(0, 1, shape).astype(np.float32), (0, 0), 1.0)
    lightness = 20 + 60 * (blobs - blobs.min()) / (blobs.max() - blobs.min())
    ab = np.stack([lightness - 50, 50 - lightness]).astype(np.float32)
    return lightness, ab


def test_temporal_stabilises_a_pan_and_resets_on_a_cut():
    """The camera pans 3 cells per frame across a scene (L changes in place almost everywhere, which
    without motion compensation counted as a cut): the flicker of the predictions is averaged out along
    the motion. A cut to another scene then takes the new prediction as it is."""
    lightness, colour = _scene(0)
    rng = np.random.default_rng(1)
    temporal, width, step = Temporal(), 84, 3
    raw_error, held_error = [], []
    l_before = None
    for i in range(20):
        window = slice(step * i, step * i + width)
        l_now, truth = lightness[:, window], colour[..., window]
        if l_before is not None:  # L changes in place over most of the picture: what was taken for a cut
            assert np.mean(cv2.blur(np.abs(l_now - l_before), (3, 3)) > Temporal.CHANGE_L) > Temporal.CUT_FRACTION
        l_before = l_now
        predicted = (truth + rng.normal(0, 8, truth.shape)).astype(np.float32)  # per-frame flicker
        out = temporal(l_now, predicted, i / 25)
        if i >= 10:  # interior only: cells entering at the right edge have no past
            raw_error.append(np.abs(predicted - truth)[..., 4:-12].mean())
            held_error.append(np.abs(out - truth)[..., 4:-12].mean())
    assert np.mean(held_error) < 0.75 * np.mean(raw_error)  # 0.58 measured; a reset every frame: 1

    # a cut to a photo (a cut to another random texture of the same statistics can be matched by the flow)
    photo = cv2.resize(rgb_to_lab(data.coffee())[..., 0], (width, 48), interpolation=cv2.INTER_AREA)
    predicted = np.stack([photo - 50, 50 - photo]).astype(np.float32)
    assert np.array_equal(temporal(photo.astype(np.float32), predicted, 20 / 25), predicted)


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
    """Each frame's flow goes to the frame before, composed onto the steps since the prediction: the colour
    edge stays on its L edge however far the camera pans."""
    reuse = Reuse(still_s=1.0, carry_frames=4)
    first = scene(0, arrival=0.0)
    lightness_of(first, (192, 320))
    predicted(first)
    first.prediction[1][:, :, 40:] = -20.0  # a colour edge on the ab grid, at x = 40 cells
    reuse.remember(first)
    stalled = scene(1, arrival=1.5, pan=8)  # the flow would explain it, but the stream stalled for 1.5 s
    lightness_of(stalled, (192, 320))
    assert not reuse.try_reuse(stalled)

    for seq in (1, 2, 3, 4):  # the camera pans 5 pixels a frame: 1.25 cells of the ab grid
        panned = scene(seq, arrival=0.04 * seq, pan=5 * seq)
        lightness_of(panned, (192, 320))
        assert reuse.try_reuse(panned)
        ab = panned.prediction[1]
        edge = 40 - 1.25 * seq  # the content moved left: so did its colour
        assert np.abs(ab[:, 10:38, math.floor(edge) - 3] - 7.0).max() < 1.0
        assert np.abs(ab[:, 10:38, math.ceil(edge) + 2] + 20.0).max() < 1.0
    fifth = scene(5, arrival=0.20, pan=25)
    lightness_of(fifth, (192, 320))
    assert not reuse.try_reuse(fifth)  # carried 4 times in a row: the network sees the camera again
    reuse.remember(predicted(fifth))

    cut = scene(6, arrival=0.24, texture=1)  # another scene altogether: nothing to carry
    cut.y[:96] = 235 - cut.y[:96] // 2  # (at the ab grid's scale, blurred noise looks alike: add structure)
    lightness_of(cut, (192, 320))
    assert not reuse.try_reuse(cut)
    assert reuse.carried == 4 and reuse.reused == 0


def test_temporal_takes_up_the_flow_reuse_made_for_the_same_pair_of_frames():
    """Reuse follows the flow frame to frame and leaves each step's flow on the frame; Temporal, whose
    previous frame is that same frame, takes it up instead of computing it again, for the same colour to
    the last bit. A flow onto another frame is not taken."""
    def run(share_flow: bool) -> tuple[list[np.ndarray], int]:
        reuse, temporal, chroma, flows = Reuse(still_s=0.0, carry_frames=8), Temporal(), [], 0
        for seq in range(8):
            frame = scene(seq, arrival=0.04 * seq, pan=3 * seq)
            lightness_of(frame, (192, 320))
            if not reuse.try_reuse(frame):
                reuse.remember(predicted(frame))
                frame.prediction[1][:, :, 40:] = -20.0
            flows += frame.grid_flow is not None
            if not share_flow:
                frame.grid_flow = None
            chroma.append(colour_frame(frame, temporal).u)
        return chroma, flows

    shared, flows = run(share_flow=True)
    own, _ = run(share_flow=False)
    assert flows == 7  # every frame after the first: all carried
    assert all(np.array_equal(a, b) for a, b in zip(shared, own))

    lightness, ab = _scene(0, (48, 80))
    still = np.dstack(np.meshgrid(np.arange(80, dtype=np.float32), np.arange(48, dtype=np.float32)))
    results = []
    for flow_from in (None, 0.04, 0.0):  # none; onto a frame Temporal did not see; onto its previous frame
        temporal = Temporal()
        temporal(lightness[:, 2:], ab[..., 2:], 0.0)
        flow = None if flow_from is None else GridFlow(still[:, :78], flow_from)  # "nothing moved"
        results.append(temporal(lightness[:, :78], ab[..., :78], 0.08, flow))
    assert np.array_equal(results[1], results[0])  # its own flow: the scene moved 2 cells
    assert not np.array_equal(results[2], results[0])  # the flow given, although wrong


@pytest.mark.parametrize("models, interval_s, carry_frames", [(1, 0.04, 2), (4, 0.04, 2), (1, 0.2, 8)])
def test_cameras_in_step_spread_their_network_runs_over_the_batches(models, interval_s, carry_frames):
    """Four cameras film the same pan from the same moment, so every camera's carry falls due on the same
    batch; they share one model, or each runs its own (adapted) one. Past the first batch (nothing to carry
    yet) a batch runs the network on at most its share: 4 cameras / (2 frames carried + 1), rounded up, 2;
    the others carry on, none more than twice 2 frames in a row; and the network runs no more often than it
    would in step. At 5 fps 8 frames and 8 more would outlast the carry's age limit (1 s): a carry falls due
    after 2 there, so the runs spread the same way."""
    network, size = Colorizer(), (192, 320)
    reuses = [Reuse(still_s=0.0, carry_frames=carry_frames) for _ in range(4)]
    runs, longest = [], 0
    for seq in range(12):
        pan = 4 * min(seq % 10, 10 - seq % 10)  # back and forth, a cell of the ab grid per frame
        frames = []
        for i in range(4):
            frame = scene(seq, arrival=interval_s * seq, pan=pan)
            frame.camera = f"cam{i}"
            frames.append(frame)
        if models == 1:
            runs.append(predict_or_reuse(network, frames, reuses, size))
        else:  # the daemon's way with a model per camera: the batch's checks together, then each model's run
            check_reuses([([f], [r], size) for f, r in zip(frames, reuses)])
            runs.append(sum(predict_fresh(network, [f], [r], size) for f, r in zip(frames, reuses)))
        longest = max(longest, *(r.carried_in_row for r in reuses))
    assert runs[0] == 4 and max(runs[1:]) <= 2, runs
    assert longest <= 2 * 2
    assert sum(runs) <= 4 * 4  # in step: all four at batches 0, 3, 6 and 9
    assert all(f.prediction is not None for f in frames)


def test_temporal_takes_any_float_type_and_layout_and_gives_float32():
    """A model may answer in fp64 (a remote server) or channels-last (a GPU): the filter works on float32
    either way, with the same result."""
    from skimage import data

    rng = np.random.default_rng(0)
    scene = cv2.resize(data.camera(), (100, 48)).astype(np.float32) / 2.55
    ab = rng.normal(0, 10, (2, 48, 80)).astype(np.float32)
    results = []
    for as_given in (lambda x: x, lambda x: x.astype(np.float64),
                     lambda x: np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)):  # channels-last
        temporal = Temporal()
        for i in range(3):  # the first frame's ab passes as it is, the next two are blended
            out = temporal(as_given(np.ascontiguousarray(scene[:, 2 * i:2 * i + 80])), as_given(ab), 0.04 * i)
            assert out.dtype == np.float32 and out.flags.c_contiguous
        results.append(out)
    assert np.abs(results[1] - results[0]).max() < 1e-4 and np.abs(results[2] - results[0]).max() < 1e-4
