"""Activities: every side effect of Moorage (Docker engine, health probes, traffic router)."""

from typing import Any

from temporalio import activity

HEARTBEAT_EVERY_S = 2.0
"""How often a long wait inside an activity heartbeats (the heartbeat timeout is 10 s)."""


def heartbeat(*details: Any) -> None:
    """Heartbeat when running as an activity; a no-op in direct calls (benchmarks, test cleanup)."""
    if activity.in_activity():
        activity.heartbeat(*details)
