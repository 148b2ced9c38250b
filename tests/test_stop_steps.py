"""``replicas.stop_containers``: the brief stop, the full stop after it, and a cancel in between.

Workflow logic with stub steps (no Temporal, no engine): ``steps.call`` is replaced by a stub
that records each call and answers as the test says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from temporalio import workflow
from temporalio.exceptions import ApplicationError

from activities.inputs import ContainerSelector, StopContainersInput, StopWait
from workflows import replicas, steps

SEL = ContainerSelector(tenant="t", project="p", service="web", revision=1)


class Steps:
    """Stub ``steps.call``: records (activity, input) and answers from ``answers``."""

    def __init__(self, **answers: Callable[[StopContainersInput], Any]):
        self.answers = answers
        self.calls: list[tuple[str, StopContainersInput]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def call(self, activity: str, arg: StopContainersInput, **_: Any) -> Any:
        self.calls.append((activity, arg))
        await self.release.wait()
        return self.answers[activity](arg)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Callable[..., Steps]:
    def make(**answers: Callable[[StopContainersInput], Any]) -> Steps:
        fake = Steps(**answers)
        monkeypatch.setattr(steps, "call", fake.call)
        monkeypatch.setattr(steps, "runs_local", lambda name: True)
        monkeypatch.setattr(workflow, "patched", lambda patch_id: True)
        return fake

    return make


def still_running(inp: StopContainersInput) -> StopWait:
    return StopWait(stopped=["a"], running=["b"], elapsed_s=2.0)


async def test_a_container_still_running_gets_the_rest_of_its_grace_and_no_second_signal(
    stub: Callable[..., Steps],
) -> None:
    fake = stub(stop_containers_briefly=still_running, stop_containers=lambda inp: ["b"])
    assert await replicas.stop_containers(SEL, 10) == ["a", "b"]
    [(brief, b), (full, f)] = fake.calls
    assert (brief, b.budget_s, b.signalled) == (
        "stop_containers_briefly",
        steps.BRIEF_STOP_S,
        False,
    )
    assert (full, f.grace_period_s, f.signalled) == ("stop_containers", 8.0, True)


async def test_when_every_container_stopped_briefly_there_is_no_full_stop(
    stub: Callable[..., Steps],
) -> None:
    fake = stub(
        stop_containers_briefly=lambda inp: StopWait(stopped=["a"], running=[], elapsed_s=0.2)
    )
    assert await replicas.stop_containers(SEL, 10) == ["a"]
    assert [c[0] for c in fake.calls] == ["stop_containers_briefly"]


async def test_a_brief_stop_that_fails_leaves_it_all_to_the_full_stop(
    stub: Callable[..., Steps],
) -> None:
    """Not retried (a retry would signal again): the full stop signals, waits, kills."""

    def fails(inp: StopContainersInput) -> StopWait:
        raise ApplicationError("engine hiccup")

    fake = stub(stop_containers_briefly=fails, stop_containers=lambda inp: ["a", "b"])
    assert await replicas.stop_containers(SEL, 10) == ["a", "b"]
    [_, (full, f)] = fake.calls
    assert (full, f.grace_period_s, f.signalled) == ("stop_containers", 10, False)


async def test_a_cancel_during_the_brief_stop_waits_until_the_stop_has_ended(
    stub: Callable[..., Steps],
) -> None:
    """A container signalled and still running must not be left for the undo to adopt: the
    full stop runs, then the cancel goes on; a second cancel (abort, deadline) waits as well."""
    fake = stub(stop_containers_briefly=still_running, stop_containers=lambda inp: ["b"])
    fake.release.clear()
    task = asyncio.ensure_future(replicas.stop_containers(SEL, 10))
    await asyncio.sleep(0.01)
    assert [c[0] for c in fake.calls] == ["stop_containers_briefly"]
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done(), "the cancel waits for the stop"
    fake.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c[0] for c in fake.calls] == ["stop_containers_briefly", "stop_containers"]
