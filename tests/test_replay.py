"""Replay saved histories of every workflow through the current code.

A change to workflow code that would break deployments in flight (non-determinism) fails here.
The histories were recorded from real deployments by scripts/record_histories.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from worker import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def test_there_are_histories_of_every_strategy_and_outcome() -> None:
    names = {p.stem for p in HISTORIES}
    assert {
        "project",
        "recreate-completed",
        "rolling-completed",
        "rolling-rolled-back",
        # Rolling updates started before the traffic switch became one step (patch
        # "rolling-switch-traffic") must still replay.
        "rolling-completed-before-switch",
        "rolling-rolled-back-before-switch",
        # Every workflow started before quick steps ran as local activities (patch
        # "local-quick-steps") must still replay.
        "project-before-local",
        "recreate-completed-before-local",
        "recreate-cancelled-before-local",
        "rolling-completed-before-local",
        "rolling-rolled-back-before-local",
        "bluegreen-completed-before-local",
        "canary-completed-before-local",
        # Every strategy's workflow started before the first seconds of the health gate and the
        # router changes ran as local activities (patch "local-brief-steps") must still replay.
        "recreate-completed-before-brief",
        "recreate-cancelled-before-brief",
        "rolling-completed-before-brief",
        "rolling-rolled-back-before-brief",
        "bluegreen-completed-before-brief",
        "canary-completed-before-brief",
        # ... and before a stop's signal and its first seconds ran as a local activity (patch
        # "local-brief-stop").
        "recreate-completed-before-stop",
        "recreate-cancelled-before-stop",
        "rolling-completed-before-stop",
        "rolling-rolled-back-before-stop",
        "bluegreen-completed-before-stop",
        "canary-completed-before-stop",
        # A recreate whose service has no route stops it before any brief step has asked for
        # its patch: asking for "local-brief-steps" at the stop would break its replay.
        "recreate-unrouted-completed-before-stop",
        # Rolling updates started before every batch's gate and a last one per service checked
        # all the new replicas so far (patch "rolling-gate-all-new").
        "rolling-completed-before-gate",
        "rolling-rolled-back-before-gate",
        # Every strategy's workflow started before the progress deadline counted time without
        # progress (patch "progress-deadline-idle").
        "recreate-completed-before-deadline",
        "recreate-cancelled-before-deadline",
        "recreate-unrouted-completed-before-deadline",
        "rolling-completed-before-deadline",
        "rolling-rolled-back-before-deadline",
        "bluegreen-completed-before-deadline",
        "canary-completed-before-deadline",
        # A project whose revision dropped a routed service: the route is deleted once the
        # revision serves (patch "delete-routes-not-served", asked at the start of a run); before
        # that change it stayed; and a run that began before it and went on after it (a worker
        # with the new code replaying it) keeps it to the run's end.
        "project-dropped-service",
        "project-dropped-service-before-delete",
        "project-dropped-service-mixed",
        "recreate-unrouted-completed",
        # A project whose first deployment was undone: it removes the network the deployment
        # made (patch "first-undone-removes-network", asked only on that branch).
        "project-first-undone",
        "recreate-cancelled",
        "bluegreen-completed",
        "canary-completed",
    } <= names


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"replay-{path.stem}", path.read_text())  # noqa: ASYNC240
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure
