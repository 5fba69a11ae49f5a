"""Colour maths against scikit-image, luma pass-through, edge-aware chroma and the live chroma planes
against the conversion written out independently."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import color, data

from streamd.colour.chroma import guide_coefficients, lab_to_chroma, recombine
from streamd.frame import Frame
from streamd.colour.lab import ab_bins, lab_to_rgb, rgb_to_lab, y_to_l_table
from streamd.colour.lightness import lightness_table, luma_at_chroma_size, luma_to_lightness


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


def bt709_limited_range(rgb: np.ndarray) -> np.ndarray:
    """Cb, Cr (..., 2) of R'G'B' in 0..1 as ITU-R BT.709 defines them for 8-bit video ("limited") range:
    Y' = 0.2126 R' + 0.7152 G' + 0.0722 B'; Cb = (B' - Y') / 1.8556 and Cr = (R' - Y') / 1.5748, each from -0.5
    to 0.5, quantized as 128 + 224 x (16 to 240)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return np.stack([128 + 224 * (b - y) / 1.8556, 128 + 224 * (r - y) / 1.5748], axis=-1)


def test_limited_range_chroma_is_bt709s_own():
    """The colour of an H.264 camera (BT.709, limited range) as the standard quantizes it: saturated colours
    reach 16 and 240, the values every decoder expands back to full saturation (a scale of 219, the luma's,
    would leave each colour 2 % paler)."""
    rng = np.random.default_rng(3)
    primaries = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1]], float)
    rgb = np.concatenate([primaries, rng.uniform(0, 1, (500, 3))])[None]
    lab = color.rgb2lab(rgb)
    u, v = lab_to_chroma(lab[..., 0], lab[..., 1:], "bt709", full_range=False)
    got, expected = np.stack([u, v], axis=-1)[0].astype(float), bt709_limited_range(rgb)[0]
    assert np.abs(got - expected).max() <= 1.0, np.abs(got - expected).max()
    assert got[:3].tolist() == [[102, 240], [42, 26], [240, 118]]  # red, green, blue: BT.709's published values


def test_live_chroma_follows_luma_edges():
    """A chroma step predicted at low resolution lands on the luma edge in the U, V planes the live path
    makes, instead of being smeared across it as plain upsampling would."""
    h, w = 64, 64  # the chroma planes' size
    luma = np.where(np.arange(2 * w)[None, :] < 74, 70, 180).astype(np.uint8).repeat(2 * h, 0)  # dark | bright
    frame = Frame.from_bgr("t", 0, np.dstack([luma] * 3), matrix="bt601", full_range=True)
    # the dark side is red-ish: the prediction on the grid is that colour averaged over each cell, so the step
    # falls inside cell 9 (37 / 4 = 9.25), as a network's does, which sees the edge only at 1/4
    ab = np.zeros((2, 16, 16), np.float32)
    ab[0][:, :9], ab[0][:, 9] = 40.0, 40.0 * 0.25
    v = recombine(frame, ab, luma_to_lightness(frame, (64, 64))).v
    guide_high = lightness_table(True)[frame.luma_half]
    _, v_ideal = lab_to_chroma(guide_high, np.dstack([np.where(frame.luma_half < 100, 40.0, 0.0), np.zeros((h, w))]),
                               "bt601", True)
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
    neutral grey of that luma; a, b = A L + B with the grid's coefficients of a and b resampled to full size;
    Lab -> sRGB (clipped to the gamut); R'G'B' -> Cb, Cr of the stream's matrix and range. (2, H, W)."""
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
@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea"])
def test_live_chroma_planes_match_the_reference_maths(matrix, full_range, photo):
    """recombine, the step every colorized frame goes through, against the conversion written out
    independently: the prediction upsampled edge-aware as a and b, then Lab -> YUV exactly per sample. The
    live path converts on the grid and upsamples U and V instead. On real photos, with their own colour as the prediction, that costs under a code value
    on average; the largest differences, a few code values at one sample in a hundred, sit on strong edges
    where a cell's colour meets another's luma, and do not show (the validation sets score within 0.01 dB of
    the exact path)."""
    rgb = getattr(data, photo)()
    rgb = rgb[:rgb.shape[0] // 4 * 4, :rgb.shape[1] // 4 * 4]
    frame = Frame.from_bgr("t", 0, np.ascontiguousarray(rgb[..., ::-1]), matrix=matrix, full_range=full_range)
    lightness = luma_to_lightness(frame, (192, 320))
    ab = np.moveaxis(cv2.resize(rgb_to_lab(rgb)[..., 1:], (80, 48), interpolation=cv2.INTER_AREA), -1, 0)
    guide_low = cv2.resize(lightness, (80, 48), interpolation=cv2.INTER_AREA)
    expected = reference_chroma(luma_at_chroma_size(frame), guide_coefficients(ab, guide_low), matrix, full_range)
    recombine(frame, np.ascontiguousarray(ab, dtype=np.float32), lightness)
    err = np.abs(np.stack([frame.u, frame.v]).astype(np.float64) - expected)
    assert err.mean() < 1.0 and np.percentile(err, 99) <= 8, (err.mean(), np.percentile(err, 99), err.max())
    assert np.stack([frame.u, frame.v]).std() > 4  # the photos' colours: a constant answer cannot pass
