"""Day/night detection: whether a camera's frames are already colour (pass through) or gray (colorize)."""
from __future__ import annotations

import numpy as np

from streamd.frame import Frame


class DayNight:
    """Decides per camera whether frames are colour (day: pass through) or gray (night: colorize).

    A frame looks colour when its chroma varies across the picture; a uniform tint (some infrared cameras
    leave one) does not count. The state changes only after frames have looked the other way for a while,
    longer for leaving night than for entering it, so passing headlights do not flip it.
    """

    SPREAD_THRESHOLD = 3.0  # mean absolute deviation of U and V from their frame means, in code values

    def __init__(self, to_night_s: float = 2.0, to_day_s: float = 5.0) -> None:
        self.to_night_s, self.to_day_s = to_night_s, to_day_s
        self.is_colour: bool | None = None
        self._since: float | None = None  # when frames began to disagree with the state

    @classmethod
    def looks_colour(cls, frame: Frame) -> bool:
        u = frame.u[::4, ::4].astype(np.float32)
        v = frame.v[::4, ::4].astype(np.float32)
        spread = np.abs(u - u.mean()).mean() + np.abs(v - v.mean()).mean()
        return bool(spread > cls.SPREAD_THRESHOLD)

    def update(self, frame: Frame, now: float) -> bool:
        """Feed a frame; returns whether it should pass through unchanged. Also True on a switch."""
        colour = self.looks_colour(frame)
        if self.is_colour is None or colour == self.is_colour:
            self.is_colour = colour if self.is_colour is None else self.is_colour
            self._since = None
            return self.is_colour
        if self._since is None:
            self._since = now
        if now - self._since >= (self.to_day_s if colour else self.to_night_s):
            self.is_colour, self._since = colour, None
        return self.is_colour
