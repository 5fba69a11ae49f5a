"""The back-off both reconnecting sides use (a camera's source, an RTSP output): the wait doubles after each
failure up to the maximum, with up to 20 % jitter either way, and a success starts it over."""
from __future__ import annotations

import pytest

from streamd.daemon.backoff import Backoff


def test_waits_double_up_to_the_maximum_and_a_success_starts_over():
    backoff = Backoff(initial=0.5, maximum=4.0)
    nominal = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    for expected in nominal:
        assert expected * 0.8 <= backoff.next_delay() <= expected * 1.2
    backoff.reset()
    assert 0.4 <= backoff.next_delay() <= 0.6
    assert 0.8 <= backoff.next_delay() <= 1.2


@pytest.mark.parametrize("failures", [1, 8])
def test_sides_that_failed_together_retry_apart(failures):
    """Cameras that lost the same server at the same moment do not all come back at the same instant."""
    waits = []
    for _ in range(20):
        backoff = Backoff()
        for _ in range(failures - 1):
            backoff.next_delay()
        waits.append(backoff.next_delay())
    assert len(set(waits)) == len(waits)
    assert max(waits) - min(waits) > 0.1 * sum(waits) / len(waits)
