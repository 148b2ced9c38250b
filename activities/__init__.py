"""Activities: every side effect of Moorage (Docker engine, health probes, traffic router)."""

import time
from collections.abc import Callable
from typing import Any

from temporalio import activity

HEARTBEAT_EVERY_S = 2.0
"""How often a long wait inside an activity heartbeats (the heartbeat timeout is 10 s)."""


def heartbeat(*details: Any) -> None:
    """Heartbeat when running as an activity.

    A no-op in direct calls (benchmarks, test cleanup) and in a local activity, which has no
    heartbeat: it runs inside a workflow task that the worker keeps alive while it runs.
    """
    if activity.in_activity() and not activity.info().is_local:
        activity.heartbeat(*details)


def paced_heartbeat(every_s: float = HEARTBEAT_EVERY_S) -> Callable[[str], None]:
    """A heartbeat for a polling loop: sends at most one every ``every_s`` however often called."""
    last = time.monotonic()

    def beat(detail: str) -> None:
        nonlocal last
        if time.monotonic() - last >= every_s:
            heartbeat(detail)
            last = time.monotonic()

    return beat
