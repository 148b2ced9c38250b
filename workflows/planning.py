"""Pure planning: a rolling update's surge arithmetic and batches, a canary's server weights.

No Temporal, no Docker.

Kubernetes semantics: ``max_surge`` and ``max_unavailable`` are integers or percentages of the
desired replica count; a surge percentage rounds up, an unavailable percentage rounds down.
"""

from __future__ import annotations

import math

from pydantic import BaseModel


class SurgeError(ValueError):
    """max_surge and max_unavailable both resolve to 0 for this replica count."""


def resolve(value: int | str, replicas: int, *, round_up: bool) -> int:
    """An integer or ``"N%"`` of ``replicas`` as a replica count."""
    if isinstance(value, int):
        return value
    pct = int(value.rstrip("%"))
    exact = pct * replicas / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def resolve_surge(
    max_surge: int | str, max_unavailable: int | str, replicas: int
) -> tuple[int, int]:
    """``(surge, unavailable)`` as replica counts.

    Raises:
        SurgeError: both resolve to 0, so the update could never make progress.
    """
    surge = resolve(max_surge, replicas, round_up=True)
    unavailable = resolve(max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        raise SurgeError(
            f"max_surge={max_surge!r} and max_unavailable={max_unavailable!r} both resolve to 0 "
            f"for {replicas} replicas: the update could never proceed"
        )
    return surge, unavailable


class Batch(BaseModel):
    """One step of a rolling update."""

    stop_first: list[int]
    """Old replicas (slots) taken out before the new ones start (uses ``max_unavailable``)."""
    start: list[int]
    """New replicas (slots) started, gated healthy and routed."""
    stop_after: list[int]
    """Old replicas taken out once the new ones serve."""


def plan_batches(
    old_slots: list[int], new_replicas: int, surge: int, unavailable: int
) -> list[Batch]:
    """Batches that replace ``old_slots`` by ``new_replicas`` new replicas.

    At every moment the number of containers stays ≤ ``new_replicas + surge`` and the number of
    ready ones ≥ ``new_replicas - unavailable`` (or what was ready to begin with, if less).

    Raises:
        SurgeError: both budgets are 0.
    """
    if surge == 0 and unavailable == 0:
        raise SurgeError("max_surge and max_unavailable are both 0")
    old = sorted(old_slots)
    pending_new = list(range(new_replicas))
    n = new_replicas
    ready_new = 0
    batches: list[Batch] = []
    while pending_new or old:
        ready_total = len(old) + ready_new
        # Take out old ones first only as far as the unavailability budget allows.
        floor_ready = min(n - unavailable, ready_total)
        kill_first = max(0, min(len(old), ready_total - floor_ready))
        if not pending_new:
            kill_first = len(old)  # scale-down tail: nothing left to start
        stop_first, old = old[:kill_first], old[kill_first:]
        total = len(old) + ready_new
        start_count = max(0, min(len(pending_new), n + surge - total))
        start, pending_new = pending_new[:start_count], pending_new[start_count:]
        ready_new += len(start)
        excess = max(0, len(old) + ready_new - n)
        stop_after, old = old[:excess], old[excess:]
        if not (stop_first or start or stop_after):
            raise SurgeError("the rolling update cannot make progress with these budgets")
        batches.append(Batch(stop_first=stop_first, start=start, stop_after=stop_after))
    return batches


MAX_SERVER_WEIGHT = 256
"""The highest server weight HAProxy takes (nginx takes more)."""


def canary_weights(share: int, canary: int, stable: int) -> tuple[int, int]:
    """Server weights ``(canary, stable)``: ``canary`` replicas get ``share`` % of the requests.

    Beside them on the route are ``stable`` replicas; each replica of a side gets that side's
    weight: the pair in 1-256 whose share is nearest. Scaling the stable weight by the replica
    counts alone overflowed 256 (1 stable beside 10 canaries at 10%: the canary got 28%) or
    rounded to 0 (20 stable beside 1 canary at 90%: the canary got everything).
    """
    if share <= 0:
        return 0, 100
    if share >= 100 or stable <= 0:
        return 100, 0
    best = (2.0, 0, 0)
    for a in range(1, MAX_SERVER_WEIGHT + 1):
        exact = a * (100 - share) * canary / (share * stable)
        b = min(MAX_SERVER_WEIGHT, max(1, round(exact)))
        error = abs(canary * a / (canary * a + stable * b) - share / 100)
        if error < best[0] - 1e-12:
            best = (error, a, b)
    return best[1], best[2]
