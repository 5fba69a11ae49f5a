"""Day/night detection: a uniform tint is not colour, and the state changes only after a while."""
from __future__ import annotations

import numpy as np

from streamd.colour.daynight import DayNight
from streamd.frame import Frame


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
