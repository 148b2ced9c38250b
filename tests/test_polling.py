"""Polling helpers of the activities (pure functions: no engine, no proxy)."""

from __future__ import annotations

import itertools

from activities import poll_pauses


def test_poll_pauses_start_short_and_double_up_to_the_cap() -> None:
    # A drain mostly ends within milliseconds (the one request in flight): the first pauses are
    # short; a long drain (up to the drain timeout) polls no more often than every 50 ms.
    assert list(itertools.islice(poll_pauses(), 7)) == [0.005, 0.01, 0.02, 0.04, 0.05, 0.05, 0.05]
    assert list(itertools.islice(poll_pauses(first_s=0.1, cap_s=0.3), 4)) == [0.1, 0.2, 0.3, 0.3]
