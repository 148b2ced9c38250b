"""Surge arithmetic and rolling-update batches: pure functions."""

from __future__ import annotations

import itertools

import pytest

from activities.inputs import NetworkInput
from moorage.compose import parse_compose
from moorage.models import Deployment, Strategy
from workflows.planning import (
    MAX_SERVER_WEIGHT,
    SurgeError,
    canary_weights,
    plan_batches,
    resolve,
    resolve_surge,
)
from workflows.steps import network_input


@pytest.mark.parametrize(
    ("value", "replicas", "round_up", "expected"),
    [
        (1, 4, True, 1),
        (0, 4, False, 0),
        ("25%", 4, True, 1),
        ("25%", 4, False, 1),
        ("10%", 4, True, 1),  # 0.4 rounds up for surge
        ("10%", 4, False, 0),  # and down for unavailable
        ("50%", 5, True, 3),
        ("50%", 5, False, 2),
        ("100%", 3, True, 3),
        ("0%", 10, True, 0),
        ("34%", 3, False, 1),
        ("33%", 3, False, 0),
    ],
)
def test_resolve(value: int | str, replicas: int, round_up: bool, expected: int) -> None:
    assert resolve(value, replicas, round_up=round_up) == expected


def test_resolve_surge_refuses_both_zero_after_rounding() -> None:
    assert resolve_surge("10%", "10%", 4) == (1, 0)
    with pytest.raises(SurgeError, match="both resolve to 0"):
        resolve_surge("0%", "10%", 4)
    with pytest.raises(SurgeError):
        resolve_surge(0, "24%", 4)
    assert resolve_surge(0, "25%", 4) == (0, 1)


def simulate(old: int, new: int, surge: int, unavailable: int) -> tuple[int, int, list[list[int]]]:
    """Apply the plan; return (max containers, min ready, batch start lists)."""
    batches = plan_batches(list(range(old)), new, surge, unavailable)
    alive_old = set(range(old))
    ready_new: set[int] = set()
    max_total, min_ready = old, old
    for b in batches:
        assert set(b.stop_first) <= alive_old
        alive_old -= set(b.stop_first)
        min_ready = min(min_ready, len(alive_old) + len(ready_new))
        # started but not ready yet
        total = len(alive_old) + len(ready_new) + len(b.start)
        max_total = max(max_total, total)
        min_ready = min(min_ready, len(alive_old) + len(ready_new))
        ready_new |= set(b.start)
        assert set(b.stop_after) <= alive_old
        alive_old -= set(b.stop_after)
        min_ready = min(min_ready, len(alive_old) + len(ready_new))
    assert alive_old == set()
    assert ready_new == set(range(new))
    return max_total, min_ready, [b.start for b in batches]


def test_four_replicas_surge_one_unavailable_zero_goes_one_by_one() -> None:
    max_total, min_ready, starts = simulate(4, 4, 1, 0)
    assert starts == [[0], [1], [2], [3]]
    assert max_total == 5
    assert min_ready == 4


def test_surge_two_unavailable_one() -> None:
    max_total, min_ready, starts = simulate(4, 4, 2, 1)
    assert max_total <= 6
    assert min_ready >= 3
    assert len(starts) == 2  # three at a time: 3 + 1


def test_a_surge_over_100_percent_starts_every_new_replica_at_once() -> None:
    surge, unavailable = resolve_surge("150%", 0, 4)
    assert (surge, unavailable) == (6, 0)
    max_total, min_ready, starts = simulate(4, 4, surge, unavailable)
    assert starts == [[0, 1, 2, 3]]
    assert max_total == 8  # never more new replicas than wanted
    assert min_ready == 4


def test_unavailable_only() -> None:
    max_total, min_ready, starts = simulate(4, 4, 0, 1)
    assert max_total == 4
    assert min_ready == 3
    assert starts == [[0], [1], [2], [3]]


@pytest.mark.parametrize(
    ("old", "new", "surge", "unavailable"),
    [
        c
        for c in itertools.product(range(0, 6), range(1, 6), range(0, 4), range(0, 4))
        if c[2] + c[3] > 0
    ],
)
def test_invariants_hold_for_every_combination(
    old: int, new: int, surge: int, unavailable: int
) -> None:
    max_total, min_ready, _ = simulate(old, new, surge, unavailable)
    assert max_total <= max(old, new + surge)
    assert min_ready >= min(old, new - unavailable)


def test_both_zero_is_refused() -> None:
    with pytest.raises(SurgeError):
        plan_batches([0, 1], 2, 0, 0)


@pytest.mark.parametrize(
    ("share", "canary", "stable"),
    [(10, 4, 4), (10, 10, 1), (90, 1, 20), (50, 3, 7), (1, 1, 50), (99, 50, 1), (25, 2, 3)],
)
def test_canary_weights_give_the_share_whatever_the_replica_counts(
    share: int, canary: int, stable: int
) -> None:
    """10% of 10 canaries beside 1 stable replica used to be 28% (the stable weight, 900, was
    capped at 256); 90% of 1 canary beside 20 stable ones 100% (the stable weight rounded to 0)."""
    a, b = canary_weights(share, canary, stable)
    assert 1 <= a <= MAX_SERVER_WEIGHT
    assert 1 <= b <= MAX_SERVER_WEIGHT
    got = canary * a / (canary * a + stable * b)
    assert got == pytest.approx(share / 100, abs=0.005)


def test_canary_weights_at_the_ends() -> None:
    assert canary_weights(0, 3, 2) == (0, 100)  # stable takes everything
    assert canary_weights(100, 3, 2) == (100, 0)
    assert canary_weights(40, 3, 0) == (100, 0)  # nothing stable to weigh


def test_a_deployment_s_first_step_names_its_replicas_and_the_named_volumes_they_mount() -> None:
    """What the first step checks before anything changes (see ``ensure_network``)."""
    target = parse_compose(
        "services:\n"
        "  db:\n    image: moorage-demo:v1\n"
        "    volumes: ['data:/data', 'logs:/logs', '/anon']\n"
        "    tmpfs: ['/run']\n"
        "  web:\n    image: moorage-demo:v1\n    deploy: {replicas: 3}\n"
        "    volumes: ['logs:/logs']\n"
        "volumes:\n  data: {}\n  logs: {}\n  unused: {}\n"
    )
    dep = Deployment(
        id="shop.4", project_id="shop", version="v4", revision=4,
        strategy=Strategy.ROLLING_UPDATE, user_id="u", tenant_id="acme",
    )  # fmt: skip
    assert network_input(dep, target) == NetworkInput(
        tenant="acme", project="shop", revision=4, replicas={"db": 1, "web": 3},
        volumes=["data", "logs"],
    )  # fmt: skip
