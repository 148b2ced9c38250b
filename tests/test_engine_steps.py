"""Docker executor steps on the real engine, run as activities outside a worker: what they do
while they wait, and names the engine matches loosely."""

from __future__ import annotations

import threading
import time

import docker
import docker.errors
import pytest
from temporalio.testing import ActivityEnvironment

from activities import HEARTBEAT_EVERY_S
from activities.docker_executor import DockerExecutor
from activities.inputs import (
    ContainerSelector,
    NetworkInput,
    StopContainersInput,
)
from moorage import naming
from tests.conftest import remove_labelled
from tests.helpers import TENANT, labelled, start_web

pytestmark = pytest.mark.integration

# PID 1 without a SIGTERM handler: the kernel drops the signal, so a stop waits out the grace.
DEAF = "services:\n  web:\n    image: moorage-demo:v1\n    command: ['sleep', '600']\n"


def test_a_stop_that_waits_out_the_grace_period_keeps_heartbeating(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Compose's default grace (10 s) equals the workflows' heartbeat timeout: a stop silent for
    that long would be timed out and run again while the first attempt is still stopping."""
    executor = DockerExecutor(docker_client)
    start_web(docker_client, project, DEAF, slots=[0, 1])
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


# Shuts down gracefully in 1.5 s on SIGTERM and logs every SIGTERM it gets: a second one (which
# many programs take as "quit now") shows in the log. Says "ready" once its trap is set.
GRACEFUL = (
    "services:\n  web:\n    image: moorage-demo:v1\n"
    "    command: ['sh', '-c', \"n=0; trap 'n=1; echo TERM' TERM; echo ready; while :; do"
    ' if [ $$n = 1 ]; then sleep 1.5; echo done; exit 0; fi; sleep 0.1; done"]\n'
)


def trap_set(client: docker.DockerClient, container_id: str, said: bytes = b"ready") -> None:
    """Wait until the container's shell says ``said``, after its ``trap``: a signal that came
    before would be dropped (PID 1 without a handler), and the test would wait out the grace."""
    deadline = time.monotonic() + 10
    while said not in client.api.logs(container_id):
        assert time.monotonic() < deadline, "the container never set its trap"
        time.sleep(0.02)


def _stop_input(project: str, grace_s: float, budget_s: float | None = None) -> StopContainersInput:
    selector = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    return StopContainersInput(selector=selector, grace_period_s=grace_s, budget_s=budget_s)


def test_a_brief_stop_of_a_container_that_exits_on_its_stop_signal_stops_it(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The demo image exits on SIGTERM; a service's own ``stop_signal`` is the one sent."""
    executor = DockerExecutor(docker_client)
    [demo] = start_web(docker_client, project, "services:\n  web:\n    image: moorage-demo:v1\n")
    trap_set(docker_client, demo.container_id, b"demo: serving")  # the demo's init traps first
    result = executor.stop_containers_briefly(_stop_input(project, 10, budget_s=5))
    assert result.stopped == [demo.container_name]
    assert result.running == []
    assert result.elapsed_s < 2, "it returns when the container exits, not at the budget"
    executor.remove_containers(_stop_input(project, 0).selector)
    # PID 1 ignores SIGTERM without a handler; this one handles only SIGUSR1, its stop signal.
    usr1 = (
        "services:\n  web:\n    image: moorage-demo:v1\n    stop_signal: SIGUSR1\n"
        "    command: ['sh', '-c', \"trap 'exit 0' USR1; echo ready;"
        ' while :; do sleep 0.1; done"]\n'
    )
    [own] = start_web(docker_client, project, usr1)
    trap_set(docker_client, own.container_id)
    result = executor.stop_containers_briefly(_stop_input(project, 10, budget_s=5))
    assert result.stopped == [own.container_name]
    assert result.elapsed_s < 2
    assert docker_client.api.inspect_container(own.container_id)["State"]["ExitCode"] == 0


def test_a_brief_stop_leaves_a_deaf_container_running_and_the_full_stop_kills_it_after_the_grace(
    docker_client: docker.DockerClient, project: str
) -> None:
    executor = DockerExecutor(docker_client)
    [deaf] = start_web(docker_client, project, DEAF)
    result = executor.stop_containers_briefly(_stop_input(project, 10, budget_s=0.5))
    assert result.stopped == []
    assert result.running == [deaf.container_name]
    assert 0.5 <= result.elapsed_s < 1.5
    assert docker_client.api.inspect_container(deaf.container_id)["State"]["Running"]
    rest = _stop_input(project, 1.5).model_copy(update={"signalled": True})
    t0 = time.monotonic()
    assert executor.stop_containers(rest) == [deaf.container_name]
    took = time.monotonic() - t0
    assert 1.4 <= took < 5, took
    state = docker_client.api.inspect_container(deaf.container_id)["State"]
    assert not state["Running"], state
    assert state["ExitCode"] == 137, state  # SIGKILL


def test_the_full_stop_after_a_brief_one_does_not_signal_again(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The brief stop gives up while the container shuts down gracefully; the full stop lets it
    finish (exit 0) and sends no second SIGTERM, where ``docker stop`` would."""
    executor = DockerExecutor(docker_client)
    [c] = start_web(docker_client, project, GRACEFUL)
    trap_set(docker_client, c.container_id)
    brief = executor.stop_containers_briefly(_stop_input(project, 10, budget_s=0.5))
    assert brief.running == [c.container_name]
    rest = _stop_input(project, 10).after(brief)
    t0 = time.monotonic()
    assert executor.stop_containers(rest) == [c.container_name]
    assert time.monotonic() - t0 < 3, "it returned when the container exited, not at the grace"
    state = docker_client.api.inspect_container(c.container_id)["State"]
    assert state["ExitCode"] == 0, state
    log = docker_client.api.logs(c.container_id).decode().split()
    assert log == ["ready", "TERM", "done"], log


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


# 30,000 files in the container's layer: the engine takes ~0.4 s to remove it, a window in which
# a second removal gets 409 "removal of container … is already in progress".
SLOW_TO_REMOVE = (
    "services:\n  web:\n    image: moorage-demo:v1\n"
    "    command: ['sh', '-c', 'mkdir /d && cd /d && seq 1 30000 | xargs touch && echo filled"
    " && sleep 600']\n"
)


def _slow_to_remove(client: docker.DockerClient, project: str) -> str:
    """Start slot 0 with a heavy layer; returns its id once the layer is filled."""
    [instance] = start_web(client, project, SLOW_TO_REMOVE)
    deadline = time.monotonic() + 60
    while b"filled" not in client.api.logs(instance.container_id):
        assert time.monotonic() < deadline, "the layer was not filled in 60 s"
        time.sleep(0.2)
    client.api.kill(instance.container_id)
    return instance.container_id


def _removal_running(client: docker.DockerClient, container_id: str) -> threading.Thread:
    """Another removal of the container (e.g. an attempt that timed out and still runs)."""
    other = threading.Thread(target=client.api.remove_container, args=(container_id,))
    other.start()
    deadline = time.monotonic() + 5
    while client.api.inspect_container(container_id)["State"]["Status"] != "removing":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return other


def test_a_remove_that_meets_a_removal_in_progress_returns_once_it_is_gone(
    docker_client: docker.DockerClient, project: str
) -> None:
    container_id = _slow_to_remove(docker_client, project)
    other = _removal_running(docker_client, container_id)
    selector = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    removed = DockerExecutor(docker_client).remove_containers(selector)
    gone = False
    try:
        docker_client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        gone = True
    other.join()
    assert len(removed) == 1
    assert gone, "remove_containers returned while the engine still had the container"


def test_a_start_does_not_adopt_a_container_being_removed(
    docker_client: docker.DockerClient, project: str
) -> None:
    """A retried start finds its replica's name on a container an undo is removing: it waits
    for it to go and makes a new one, instead of starting one that cannot start."""
    container_id = _slow_to_remove(docker_client, project)
    other = _removal_running(docker_client, container_id)
    [instance] = start_web(docker_client, project, DEAF)
    other.join()
    assert instance.container_id != container_id
    assert docker_client.api.inspect_container(instance.container_id)["State"]["Running"]


# Shuts down in 0.3 s on SIGTERM: within a grace period of 800 ms.
QUICK_ENOUGH = (
    "services:\n  web:\n    image: moorage-demo:v1\n    stop_grace_period: 800ms\n"
    "    command: ['sh', '-c', \"n=0; trap 'n=1' TERM; echo ready; while :; do"
    ' if [ $$n = 1 ]; then sleep 0.3; exit 0; fi; sleep 0.05; done"]\n'
)


def test_a_grace_period_under_a_second_is_not_cut_to_nothing(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The engine takes whole seconds, and 800 ms was cut to 0: SIGKILL right after SIGTERM
    (the full stop, and the container's own stop timeout, as ``docker stop`` and a dockerd
    shutdown use it)."""
    executor = DockerExecutor(docker_client)
    [started] = start_web(docker_client, project, QUICK_ENOUGH, slots=[0])
    info = docker_client.api.inspect_container(started.container_name)
    assert info["Config"]["StopTimeout"] == 1
    trap_set(docker_client, started.container_name)
    ActivityEnvironment().run(executor.stop_containers, _stop_input(project, 0.8))
    state = docker_client.api.inspect_container(started.container_name)["State"]
    assert (state["Status"], state["ExitCode"]) == ("exited", 0)  # not SIGKILL'd (137)


def test_a_read_only_tmpfs_and_a_volume_s_labels_reach_the_engine(
    docker_client: docker.DockerClient, project: str
) -> None:
    """A tmpfs mounted ``read_only`` was writable (its ``ro`` dropped), and a volume's Compose
    ``labels`` were checked, then dropped."""
    text = (
        "services:\n  web:\n    image: moorage-demo:v1\n    volumes:\n"
        "      - {type: tmpfs, target: /cache, read_only: true}\n"
        "      - {type: tmpfs, target: /scratch, tmpfs: {size: 1048576}}\n"
        "      - data:/data\n"
        "volumes:\n  data:\n    labels: {team: web}\n"
    )
    try:
        [started] = start_web(docker_client, project, text)
        host = docker_client.api.inspect_container(started.container_name)["HostConfig"]
        assert host["Tmpfs"] == {"/cache": "ro", "/scratch": "size=1048576"}
        volume = docker_client.api.inspect_volume(naming.volume_name(TENANT, project, "data"))
        assert volume["Labels"]["team"] == "web"
        assert volume["Labels"][naming.LABEL_PROJECT] == project
    finally:
        DockerExecutor(docker_client).purge_project(project)
