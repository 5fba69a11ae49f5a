"""Colour maths against scikit-image, luma pass-through, edge-aware chroma, day/night detection and the
temporal stabilisation's handling of camera moves and cuts."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import color, data

from streamd.chroma import (
    chroma_planes,
    guide_coefficients,
    lab_to_chroma,
    recombine,
)
from streamd.daynight import DayNight
from streamd.frame import Frame
from streamd.lab import ab_bins, lab_to_rgb, rgb_to_lab, y_to_l_table
from streamd.lightness import lightness_table, luma_to_lightness
from streamd.temporal import Temporal


def test_lab_matches_scikit_image():
    rgb = data.astronaut()[::4, ::4]
    assert np.abs(rgb_to_lab(rgb) - color.rgb2lab(rgb)).max() < 0.5
    lab = color.rgb2lab(rgb)
    assert np.abs(lab_to_rgb(lab).astype(int) - (color.lab2rgb(lab) * 255).round().astype(int)).max() <= 1


@pytest.mark.parametrize("full_range", [True, False])
def test_y_to_l_table_is_l_of_neutral_rgb(full_range):
    table = y_to_l_table(full_range)
    y = np.arange(256)
    level = y if full_range else np.clip((y - 16) / 219 * 255, 0, 255)
    neutral = np.repeat(level[:, None], 3, axis=1)[None] / 255.0
    assert np.abs(table - color.rgb2lab(neutral)[0, :, 0]).max() < 0.01
    assert table[0 if full_range else 16] == pytest.approx(0, abs=1e-4)
    assert table[255 if full_range else 235] == pytest.approx(100, abs=1e-3)


def test_ab_bins_are_the_in_gamut_grid():
    bins = ab_bins()
    assert len(bins) == 262
    assert np.all(bins % 10 == 0)
    # every sRGB colour's nearest grid point is a bin
    rgb = np.random.default_rng(0).integers(0, 256, (5000, 3), dtype=np.uint8)
    cells = {tuple(c) for c in np.round(rgb_to_lab(rgb)[:, 1:] / 10) * 10}
    assert cells <= {tuple(b) for b in bins}
    assert (0.0, 0.0) in {tuple(b) for b in bins}


@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full_range", [True, False])
def test_chroma_from_lab_matches_swscale_round_trip(matrix, full_range):
    """U/V we compute for a colour, converted back by swscale, give that colour again."""
    rgb = data.coffee()[:96:2, :128:2]
    lab = rgb_to_lab(rgb)
    frame = Frame.from_bgr("t", 0, np.ascontiguousarray(rgb[..., ::-1]), matrix=matrix, full_range=full_range)
    # full-resolution chroma, then 2x2 averaged as 4:2:0 stores it
    u, v = lab_to_chroma(lab[..., 0], lab[..., 1:], matrix, full_range)
    frame.u = u.reshape(24, 2, 32, 2).mean((1, 3)).round().astype(np.uint8)
    frame.v = v.reshape(24, 2, 32, 2).mean((1, 3)).round().astype(np.uint8)
    back = frame.to_bgr()[..., ::-1].astype(int)
    assert np.abs(back - rgb.astype(int)).mean() < 4.0


def test_live_chroma_follows_luma_edges():
    """A chroma step predicted at low resolution lands on the luma edge in the U, V planes the live path
    makes, instead of being smeared across it as plain upsampling would."""
    h, w = 64, 64
    luma = np.where(np.arange(w)[None, :] < 37, 70, 180).astype(np.uint8).repeat(h, 0)  # a dark | bright edge
    guide_high = lightness_table(True)[luma]
    ab = np.zeros((2, 16, 16), np.float32)
    ab[0][:, :10] = 40.0  # the dark side is red-ish; the low-res step sits at 37/4 = 9.25
    _, v = chroma_planes(luma, guide_coefficients(ab, guide_high[::4, ::4].copy()), "bt601", True)
    _, v_ideal = lab_to_chroma(guide_high, np.dstack([np.where(luma < 100, 40.0, 0.0), np.zeros((h, w))]), "bt601", True)
    _, v_smeared = lab_to_chroma(guide_high, np.dstack([np.repeat(np.repeat(ab[0], 4, 0), 4, 1), np.zeros((h, w))]),
                                 "bt601", True)
    assert v[:, :33].mean() > 150 and np.abs(v[:, 41:].astype(int) - 128).mean() < 4
    error, smeared = (np.abs(x.astype(int) - v_ideal).mean() for x in (v, v_smeared))
    assert error < 0.5 * smeared, (error, smeared)


def test_recombine_keeps_luma_bit_exact():
    frame = Frame.from_bgr("t", 0, np.ascontiguousarray(data.astronaut()[:, :, ::-1]), matrix="bt709",
                           full_range=False)
    y_before = frame.y.copy()
    lightness = luma_to_lightness(frame, (192, 320))
    ab = np.random.default_rng(1).normal(0, 20, (2, 48, 80)).astype(np.float32)
    out = recombine(frame, ab, lightness)
    assert out.y is frame.y and np.array_equal(out.y, y_before)
    assert out.colorized and out.u.std() > 1


def _frame(u: float, v: float, spread: float = 0.0) -> Frame:
    rng = np.random.default_rng(0)
    y = np.full((64, 64), 120, np.uint8)
    noise = rng.normal(0, spread, (2, 32, 32)) if spread else np.zeros((2, 32, 32))
    return Frame("c", 0, y, np.clip(u + noise[0], 0, 255).astype(np.uint8),
                 np.clip(v + noise[1], 0, 255).astype(np.uint8))


def test_day_night_detection_and_hysteresis():
    assert not DayNight.looks_colour(_frame(128, 128))
    assert not DayNight.looks_colour(_frame(126, 133))  # an infrared camera's uniform warm cast
    assert DayNight.looks_colour(_frame(128, 128, spread=15))
    dn = DayNight(to_night_s=1.0, to_day_s=3.0)
    assert dn.update(_frame(128, 128, 15), 0.0) is True  # first frame decides: day
    assert dn.update(_frame(128, 128), 0.5) is True  # gray for 0.5 s: still day
    assert dn.update(_frame(128, 128), 1.6) is False  # gray for over 1 s: night
    assert dn.update(_frame(128, 128, 15), 2.0) is False  # a flash of colour (headlights) does not flip it
    assert dn.update(_frame(128, 128), 2.1) is False
    assert dn.update(_frame(128, 128, 15), 3.0) is False
    assert dn.update(_frame(128, 128, 15), 6.1) is True  # colour for over 3 s: day again


def bilinear(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W), pixel centres aligned (the centre of output pixel x samples input x' = (x + 0.5)
    w / W - 0.5), clamped at the borders: the resampling the live path is meant to do, in float64."""
    (h, w), (hh, ww) = grid.shape, size
    xs = np.clip((np.arange(ww) + 0.5) * w / ww - 0.5, 0, w - 1)
    ys = np.clip((np.arange(hh) + 0.5) * h / hh - 0.5, 0, h - 1)
    rows = np.stack([np.interp(xs, np.arange(w), row) for row in grid.astype(np.float64)])
    return np.stack([np.interp(ys, np.arange(h), column) for column in rows.T], axis=1)


def reference_chroma(luma: np.ndarray, coeffs: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """What U and V should be, written from the definitions in float64 with scikit-image: Y' -> L of the
    neutral grey of that luma; a, b = A L + B with the grid's coefficients resampled to full size; Lab ->
    sRGB (clipped to the gamut); R'G'B' -> Cb, Cr of the stream's matrix and range. (2, H, W)."""
    level = luma / 255.0 if full_range else np.clip((luma - 16.0) / 219.0, 0, 1)
    lightness = color.rgb2lab(np.repeat(level[..., None], 3, axis=-1))[..., 0]
    a, b = (bilinear(coeffs[..., 2 * i], luma.shape) * lightness + bilinear(coeffs[..., 2 * i + 1], luma.shape)
            for i in range(2))
    rgb = color.lab2rgb(np.dstack([lightness, a, b]))
    kr, kb = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}[matrix]
    y = kr * rgb[..., 0] + (1 - kr - kb) * rgb[..., 1] + kb * rgb[..., 2]
    scale, (lo, hi) = (255.0, (0, 255)) if full_range else (224.0, (16, 240))
    cb = 128 + scale * (rgb[..., 2] - y) / (2 * (1 - kb))
    cr = 128 + scale * (rgb[..., 0] - y) / (2 * (1 - kr))
    return np.clip(np.stack([cb, cr]), lo, hi)


@pytest.mark.filterwarnings("ignore:Conversion from CIE-LAB")  # out-of-gamut colours, clipped as intended
@pytest.mark.parametrize("matrix", ["bt601", "bt709"])
@pytest.mark.parametrize("full_range", [True, False])
def test_live_chroma_planes_match_the_reference_maths(matrix, full_range):
    """chroma_planes, the full-resolution step every colorized frame goes through, against the conversion
    written out independently: its lookup table (Y' in steps of 4, a and b in steps of 2) may cost a code
    value or two, nothing more."""
    rng = np.random.default_rng(2)
    lo, hi = (0, 256) if full_range else (16, 236)
    luma = cv2.resize(rng.integers(lo, hi, (24, 40)).astype(np.uint8), (160, 96), interpolation=cv2.INTER_NEAREST)
    slopes, offsets = rng.uniform(-0.6, 0.6, (12, 20, 2)), rng.uniform(-40, 40, (12, 20, 2))
    coeffs = np.stack([slopes[..., 0], offsets[..., 0], slopes[..., 1], offsets[..., 1]], -1).astype(np.float32)
    u, v = chroma_planes(luma, coeffs, matrix, full_range)
    err = np.abs(np.stack([u, v]).astype(np.float64) - reference_chroma(luma, coeffs, matrix, full_range))
    assert err.mean() < 1.0 and np.percentile(err, 99) <= 4, (err.mean(), np.percentile(err, 99), err.max())
    assert np.stack([u, v]).std() > 10  # the coefficients span strong colours: a constant answer cannot pass


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


def test_chroma_table_is_built_once_for_cameras_starting_together():
    """Every camera's first frame asks for the table at the same moment: one build, one shared table."""
    from concurrent.futures import ThreadPoolExecutor

    from streamd import chroma

    chroma._cached_chroma_table.cache_clear()
    with ThreadPoolExecutor(8) as pool:
        tables = list(pool.map(lambda _: chroma.chroma_table("bt601", False), range(8)))
    assert all(t is tables[0] for t in tables)
    assert chroma._cached_chroma_table.cache_info().misses == 1
