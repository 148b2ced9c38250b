"""Docker executor steps on the real engine, run as activities outside a worker: what they do
while they wait, and names the engine matches loosely."""

from __future__ import annotations

import time

import docker
import pytest
from temporalio.testing import ActivityEnvironment

from activities import HEARTBEAT_EVERY_S
from activities.docker_executor import DockerExecutor
from activities.inputs import (
    ContainerSelector,
    NetworkInput,
    StartServiceInput,
    StopContainersInput,
)
from moorage import naming
from moorage.compose import parse_compose
from tests.conftest import remove_labelled
from tests.helpers import TENANT, labelled

pytestmark = pytest.mark.integration

# PID 1 without a SIGTERM handler: the kernel drops the signal, so a stop waits out the grace.
DEAF = "services:\n  web:\n    image: moorage-demo:v1\n    command: ['sleep', '600']\n"


def test_a_stop_that_waits_out_the_grace_period_keeps_heartbeating(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Compose's default grace (10 s) equals the workflows' heartbeat timeout: a stop silent for
    that long would be timed out and run again while the first attempt is still stopping."""
    executor = DockerExecutor(docker_client)
    executor.start_service(
        StartServiceInput(
            tenant=TENANT,
            project=project,
            deployment_id="d",
            revision=1,
            version="v1",
            service=parse_compose(DEAF).service("web"),
            slots=[0, 1],
        )
    )
    env = ActivityEnvironment()
    beats: list[float] = []
    env.on_heartbeat = lambda *details: beats.append(time.monotonic())
    selector = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    t0 = time.monotonic()
    stopped = env.run(
        executor.stop_containers, StopContainersInput(selector=selector, grace_period_s=5)
    )
    t1 = time.monotonic()
    assert len(stopped) == 2
    assert t1 - t0 >= 4.5, "the containers ignored SIGTERM: the stop waits out the grace"
    assert all(c.status == "exited" for c in labelled(docker_client, project))
    gaps = [b - a for a, b in zip([t0, *beats], [*beats, t1], strict=True)]
    assert max(gaps) <= HEARTBEAT_EVERY_S + 1, gaps


def test_a_network_whose_name_extends_this_one_is_not_taken_for_it(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The engine's name filter is a substring match: ``…-shop2`` must not pass for ``…-shop``."""
    executor = DockerExecutor(docker_client)
    longer = f"{project}2"
    try:
        executor.ensure_network(NetworkInput(tenant=TENANT, project=longer))
        name = executor.ensure_network(NetworkInput(tenant=TENANT, project=project))
        assert name == naming.network_name(TENANT, project)
        found = [n["Name"] for n in docker_client.api.networks(names=[name])]
        assert sorted(found) == sorted([name, naming.network_name(TENANT, longer)])
    finally:
        remove_labelled(docker_client, longer)
