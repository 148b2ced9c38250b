"""Activities: every side effect of Moorage (Docker engine, health probes, traffic router)."""

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

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


def poll_pauses(first_s: float = 0.005, cap_s: float = 0.05) -> Iterator[float]:
    """Pauses for a polling loop that usually ends within milliseconds: doubling up to ``cap_s``.

    A drain mostly waits for the one request in flight, a millisecond or two: a fixed 50 ms
    pause cost a rolling update ~45 ms per batch. The pauses are 5, 10, 20, 40, 50, 50... ms.
    """
    pause = first_s
    while True:
        yield pause
        pause = min(cap_s, pause * 2)


@contextmanager
def classified(what: str) -> Iterator[None]:
    """Turn Docker SDK errors into retryable or non-retryable failures."""
    # Imported here: the CLI and the API read the activities' inputs from this package and never
    # talk to the engine (the Docker SDK and requests are ~0.1 s of every CLI call's start).
    import docker.errors
    import requests.exceptions

    try:
        yield
    except ApplicationError:
        raise
    except docker.errors.ImageNotFound as exc:
        raise ApplicationError(
            f"{what}: image not found: {exc.explanation}", type="ImageNotFound", non_retryable=True
        ) from exc
    except docker.errors.APIError as exc:
        if exc.is_client_error() and exc.status_code not in (404, 409):
            raise ApplicationError(
                f"{what}: the engine refused it: {exc.explanation}",
                type="EngineRefused",
                non_retryable=True,
            ) from exc
        raise ApplicationError(f"{what}: engine error: {exc}", type="EngineError") from exc
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        raise ApplicationError(
            f"{what}: engine unreachable: {exc}", type="EngineUnreachable"
        ) from exc
