"""Temporal stabilisation, per camera, on the network's ab grid: colour kept steady where the scene is, and
carried along the optical flow where it moves (Temporal); the network skipped on frames whose last prediction
still holds, as it is or carried along the flow (Reuse)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from streamd.frame import Frame


def grid_flow() -> cv2.DISOpticalFlow:
    """DIS optical flow for the ab grid. ULTRAFAST at full grid resolution: the grid is already the input
    downscaled 4x, so the preset's own finest scale (a further 4x) would leave a flow vector per 4x4 cells,
    coarser than objects."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
    dis.setFinestScale(0)
    return dis


# The flow is computed on at most this many cells across: the generic model's grid (80 at its default input)
# as it is; a reference model's colour, at its full input size, on a 4x coarser copy (DIS at 320x192 cost 36x
# more, for motion that the coarse grid resolves as well: the colour there comes from the reference)
FLOW_MAX_WIDTH = 96


def lightness_to_gray(lightness: np.ndarray) -> np.ndarray:
    """L 0..100 -> the 8 bits DIS takes."""
    return np.clip(lightness * 2.55 + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class GridFlow:
    """Where each cell of a frame's grid was in an earlier frame of the same camera: (h, w, 2) float32
    absolute (x, y) grid coordinates, and that earlier frame's arrival. Reuse computes it once per frame on
    the inference thread; Temporal takes it up on the output thread where its own previous frame is that
    one, instead of computing the same flow again."""

    coords: np.ndarray
    previous_arrival: float


def flow_coords(dis: cv2.DISOpticalFlow, gray: np.ndarray, previous_gray: np.ndarray) -> np.ndarray:
    """The optical flow between two frames' 8-bit L on the grid, as where each cell of `gray` was in
    `previous_gray`: (h, w, 2) float32 absolute coordinates (current(x) ~ previous(coords(x)))."""
    h, w = gray.shape
    scale = min(1.0, FLOW_MAX_WIDTH / w)
    if scale < 1:  # a finer grid (a reference model's, at its input size): the flow on a coarser copy of it
        small = (round(w * scale), max(1, round(h * scale)))
        flow = dis.calc(cv2.resize(gray, small, interpolation=cv2.INTER_AREA),
                        cv2.resize(previous_gray, small, interpolation=cv2.INTER_AREA), None)
        flow = cv2.resize(flow, (w, h), interpolation=cv2.INTER_LINEAR) * np.float32(w / small[0])
    else:
        flow = dis.calc(gray, previous_gray, None)
    flow[..., 0] += np.arange(w, dtype=np.float32)
    flow[..., 1] += np.arange(h, dtype=np.float32)[:, None]
    return flow


def outside(coords: np.ndarray) -> np.ndarray:
    """Where `coords` point outside the earlier frame's grid (the same size): nothing to carry there."""
    h, w = coords.shape[:2]
    x, y = coords[..., 0], coords[..., 1]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def compose(earlier: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Chain two maps: where each cell was two frames back, from where it was one frame back (`coords`) and
    where each cell of that frame was in the one before (`earlier`). The earlier step's motion is looked up
    where each cell was and added on; where that lies outside the frame between, the motion at its edge
    goes on, so a cell that left the frame stays outside instead of being pinned to the edge."""
    h, w = coords.shape[:2]
    earlier_motion = earlier.copy()
    earlier_motion[..., 0] -= np.arange(w, dtype=np.float32)
    earlier_motion[..., 1] -= np.arange(h, dtype=np.float32)[:, None]
    return coords + cv2.remap(earlier_motion, coords, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def carry_along(coords: np.ndarray, lightness: np.ndarray, ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An earlier frame's L (h, w) and ab (2, h, w) carried onto the current frame's grid along `coords`:
    the carried L, and the carried ab as (h, w, 2)."""
    # bicubic: the held colour is resampled again every frame, and bilinear's blur, compounded over the
    # ~20 frames it is held, washed it out (DAVIS colourfulness -5.3 % against -3.5 %, docs/temporal.md)
    carried = cv2.remap(np.dstack([lightness, np.moveaxis(ab, 0, -1)]), coords, None, cv2.INTER_CUBIC,
                        borderMode=cv2.BORDER_REPLICATE)
    return carried[..., 0], carried[..., 1:]


class Temporal:
    """Keeps a camera's colour still where its scene is still, and lets it follow what moves.

    Works on the network's low-resolution output (the ab grid). The previous result and the previous L are
    first carried along the motion onto the current frame (optical flow from the current L to the previous
    one, OpenCV's DIS on the grid), then each frame's predicted ab is blended with that warped result, per
    cell, by how little L differs from the warped previous L: ab = w * previous + (1 - w) * predicted, with
    w = HOLD * exp(-(dL / CHANGE_L)^2) and dL the locally averaged difference. So a still wall keeps its
    colour (w near HOLD, an exponential average over about 20 frames), and so does a car or a wall the
    camera pans across, since the flow brings their previous colour along; where the flow is wrong, an
    object is uncovered or something enters the frame, L does not match and the new prediction is taken
    at once, so nothing leaves a coloured ghost. A scene cut (L does not match even after warping, almost
    everywhere), a new frame size or a gap in time starts afresh; so does a day between two nights, since
    colour frames pass through without touching this state. Costs about a millisecond per frame on a CPU
    (docs/temporal.md).
    """

    HOLD = 0.95  # weight of the past where nothing changed (docs/temporal.md: the sweep that chose it)
    CHANGE_L = 6.0  # L units: a difference this large keeps only 1/e of the past
    CUT_FRACTION = 0.6  # frames where this share of the picture does not match even after warping are a cut
    MAX_GAP_S = 1.0

    def __init__(self) -> None:
        self._dis = grid_flow()
        self.reset()

    def reset(self) -> None:
        self._lightness: np.ndarray | None = None
        self._gray: np.ndarray | None = None  # the previous L as 8-bit, for the flow
        self._ab: np.ndarray | None = None
        self._time = 0.0

    def __call__(self, lightness: np.ndarray, ab: np.ndarray, now: float, flow: GridFlow | None = None) -> np.ndarray:
        """lightness (h, w) on the ab grid, ab (2, h, w) -> the stabilised ab (2, h, w), float32. `flow`: the
        frame's flow onto an earlier frame, where Reuse computed one; used when that frame is the previous."""
        # float32 whatever the model returned (OpenCV's arithmetic takes one type; a remote model may send
        # fp64, a GPU one a channels-last layout)
        lightness = np.ascontiguousarray(lightness, dtype=np.float32)
        ab = np.ascontiguousarray(ab, dtype=np.float32)
        gray = lightness_to_gray(lightness)
        fresh = self._ab is None or self._ab.shape != ab.shape or now - self._time > self.MAX_GAP_S
        out = ab
        if not fresh:
            if flow is not None and flow.previous_arrival == self._time and flow.coords.shape[:2] == gray.shape:
                coords = flow.coords
            else:
                coords = flow_coords(self._dis, gray, self._gray)
            prev_l, previous = carry_along(coords, self._lightness, self._ab)
            change = cv2.blur(cv2.absdiff(lightness, prev_l), (3, 3))
            change[outside(coords)] = np.inf  # entered the frame: nothing of it in the past
            if np.count_nonzero(change > self.CHANGE_L) < self.CUT_FRACTION * change.size:
                weight = cv2.exp(cv2.multiply(change, change, scale=-1.0 / self.CHANGE_L ** 2))
                weight *= np.float32(self.HOLD)
                # ab + w (previous - ab), plane by plane in place: a reference model's 320x192 grid made
                # the whole-array form (temporaries of both planes and a transposed copy) 1.1 ms of 4
                out = np.empty(ab.shape, np.float32)
                for c, plane in enumerate(out):
                    np.subtract(previous[..., c], ab[c], out=plane)
                    plane *= weight
                    plane += ab[c]
        self._lightness, self._gray, self._ab, self._time = lightness, gray, out, now
        return out


@dataclass(frozen=True)
class _Link:
    """The last frame of a carry's chain (the predicted frame, or one that reused or carried its
    prediction): its 8-bit L on the grid, its arrival, and where its cells were in the predicted frame
    (None: it is that frame, or matches it cell for cell)."""

    gray: np.ndarray
    arrival: float
    in_last: np.ndarray | None


@dataclass(frozen=True)
class _Prediction:
    cells: np.ndarray  # the L input, area-averaged onto the ab grid
    ab: np.ndarray
    model_id: str | None
    arrival: float


class Reuse:
    """Decides, per camera, whether a gray frame needs the network or can reuse the last prediction.

    Still scenes: a fixed camera at night mostly films a scene that does not change, and running the
    network again there buys nothing (Temporal would keep 95 % of the old colour anyway). A frame reuses
    the last prediction as it is when no cell of the ab grid changed by more than CHANGE_L since the frame
    that was predicted - anything that moves, appears or lights up, even one cell, is predicted afresh -
    for at most `still_s` seconds.

    Moving scenes: up to `carry_frames` frames in a row get the last prediction carried along the optical
    flow (DIS on the ab grid, a fraction of a millisecond) instead of the network, when after that warp at
    most CARRY_MISMATCH of the cells differ by more than CHANGE_L (3x3 mean, as in Temporal) and the
    prediction is under CARRY_MAX_AGE_S old: much content that entered or was uncovered since, a cut, a light
    switched on or a stalled stream sends the frame to the network. Colour is smooth in time (Temporal keeps
    most of it from frame to frame anyway), so most of what the network would say again is known. The flow
    is followed frame to frame, each step composed onto the steps before (where every cell was in the
    predicted frame), and the prediction is resampled from the predicted frame once: each step's flow is
    the one Temporal needs for the same two frames, and travels with the frame (GridFlow) so that Temporal
    does not compute it again; DAVIS and the fixed-camera videos score the same as with the flow from each
    frame straight to the predicted one (docs/temporal.md).

    Either way the reused ab is fitted to the frame's own luma by the guided upsampling. Driven by the
    inference thread, on the frames of each batch in order (a batch's checks may run on the pipeline's pool,
    one thread per camera, before its `remember` calls), so a frame that skips the network never overtakes
    one that does not.
    """

    CHANGE_L = Temporal.CHANGE_L  # the same scale of change that makes Temporal take the new prediction
    # Share of the cells the warp may leave unexplained. Frame to frame, DIS on the coarse grid leaves
    # 3-18 % of DAVIS's hand-held cells (median per video) off by more than CHANGE_L: 5 % carried almost
    # nothing there, 10 % over half the frames; 15 % cost colourfulness (docs/temporal.md)
    CARRY_MISMATCH = 0.10
    CARRY_MAX_AGE_S = Temporal.MAX_GAP_S  # after a longer gap the past is not carried over
    # A camera whose carry is due may carry on to this many times carry_frames while other cameras of the
    # batch renew theirs (streamd.steps.check_reuses): the network runs spread over the batches
    OVERDUE_FACTOR = 2

    def __init__(self, still_s: float, carry_frames: int = 0) -> None:
        self.still_s, self.carry_frames = still_s, carry_frames
        self._last: _Prediction | None = None
        self._carried = 0  # frames carried since the last prediction
        self._dis = grid_flow() if carry_frames else None
        self._link: _Link | None = None  # the chain's last frame, which the next frame's flow goes to
        self._last_arrival: float | None = None  # of the last frame checked
        self._interval: float | None = None  # the camera's frame interval, smoothed
        self.reused = 0
        self.carried = 0

    @property
    def cycle_frames(self) -> int:
        """Frames a prediction is carried before it is due: carry_frames, or fewer where the camera's frames
        come too slowly for that many and as many again (overdue) within CARRY_MAX_AGE_S (5 fps: 2)."""
        if not self.carry_frames or not self._interval:
            return self.carry_frames
        fits = math.floor(self.CARRY_MAX_AGE_S / (self.OVERDUE_FACTOR * self._interval))
        return max(1, min(self.carry_frames, fits))

    @property
    def due(self) -> bool:
        """Whether the last prediction has been carried cycle_frames times in a row, so that the next moving
        frame renews it unless it is let to carry on (try_reuse's `overdue`)."""
        return self._last is not None and self.carry_frames > 0 and self._carried >= self.cycle_frames

    @property
    def carried_in_row(self) -> int:
        """Frames carried since the last prediction."""
        return self._carried

    def try_reuse(self, frame: Frame, overdue: bool = False) -> bool:
        """If the frame can reuse the last prediction, give it that prediction and return True. `overdue`:
        a due carry may go on, up to OVERDUE_FACTOR times carry_frames in a row."""
        if self._last_arrival is not None and frame.arrival > self._last_arrival:
            gap = frame.arrival - self._last_arrival
            self._interval = gap if self._interval is None else 0.8 * self._interval + 0.2 * gap
        self._last_arrival = frame.arrival
        last = self._last
        if last is None or frame.lightness is None:
            return False
        cells = cv2.resize(frame.lightness, last.cells.shape[::-1], interpolation=cv2.INTER_AREA)
        gray = lightness_to_gray(cells)
        if frame.arrival - last.arrival <= self.still_s and np.abs(cells - last.cells).max() <= self.CHANGE_L:
            frame.prediction, frame.model_id = (frame.lightness, last.ab), last.model_id
            self._link = _Link(gray, frame.arrival, None)
            self.reused += 1
            return True
        limit = self.cycle_frames * (self.OVERDUE_FACTOR if overdue else 1)
        link = self._link
        if (self._carried < limit and frame.arrival - last.arrival <= self.CARRY_MAX_AGE_S and link is not None
                and link.gray.shape == gray.shape):
            coords = flow_coords(self._dis, gray, link.gray)
            frame.grid_flow = GridFlow(coords, link.arrival)
            in_last = coords if link.in_last is None else compose(link.in_last, coords)
            ab = self._carry(last, cells, in_last)
            if ab is not None:
                frame.prediction, frame.model_id = (frame.lightness, ab), last.model_id
                self._link = _Link(gray, frame.arrival, in_last)
                self._carried += 1
                self.carried += 1
                return True
        return False

    def _carry(self, last: _Prediction, cells: np.ndarray, in_last: np.ndarray) -> np.ndarray | None:
        """The last prediction carried onto these cells from where they were in its frame (`in_last`), or
        None where that does not explain them."""
        carried_l, carried_ab = carry_along(in_last, last.cells, last.ab)
        unexplained = (cv2.blur(np.abs(carried_l - cells), (3, 3)) > self.CHANGE_L) | outside(in_last)
        if unexplained.mean() > self.CARRY_MISMATCH:
            return None
        return np.ascontiguousarray(np.moveaxis(carried_ab, -1, 0))

    def remember(self, frame: Frame) -> None:
        """A frame came back from the network with its prediction: the chain starts again from it."""
        lightness, ab = frame.prediction
        cells = cv2.resize(lightness, (ab.shape[2], ab.shape[1]), interpolation=cv2.INTER_AREA)
        self._last = _Prediction(cells, ab, frame.model_id, frame.arrival)
        self._link = _Link(lightness_to_gray(cells), frame.arrival, None)
        self._carried = 0

    def forget(self) -> None:
        """Predict the next frame afresh (the model changed)."""
        self._last = None
        self._link = None

    @property
    def last_model_id(self) -> str | None:
        """The model that made the prediction a frame would reuse, or None."""
        return self._last.model_id if self._last else None
