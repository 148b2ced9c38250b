"""``steps.side_by_side``: independent workflow steps run at once, failures wait for the rest."""

from __future__ import annotations

import asyncio

import pytest

from workflows.steps import side_by_side


async def test_results_come_back_in_order() -> None:
    async def step(value: int, delay: float) -> int:
        await asyncio.sleep(delay)
        return value

    assert await side_by_side(step(1, 0.02), step(2, 0.0)) == [1, 2]


async def test_a_failure_is_raised_only_once_every_step_has_ended() -> None:
    ended: list[str] = []

    async def fails() -> None:
        ended.append("fails")
        raise RuntimeError("network refused")

    async def slow() -> None:
        await asyncio.sleep(0.05)
        ended.append("slow")

    with pytest.raises(RuntimeError, match="network refused"):
        await side_by_side(fails(), slow())
    assert ended == ["fails", "slow"]


async def test_a_cancel_reaches_every_step() -> None:
    cancelled: list[int] = []

    async def waits(n: int) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(n)
            raise

    task = asyncio.ensure_future(side_by_side(waits(1), waits(2)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(cancelled) == [1, 2]
