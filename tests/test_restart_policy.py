"""Compose ``restart:``: the engine restarts a replica that exits between deployments, the replica
keeps its host port (so its route still reaches it), and a restart during a deployment fails the
health gate as an exit does. On the real engine, HAProxy and Temporal."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import time
from collections.abc import Iterator

import docker
import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import replica_ports
from activities.docker_executor import DockerExecutor
from activities.inputs import (
    ContainerSelector,
    NetworkInput,
    WaitHealthyInput,
)
from activities.replica_ports import bindable
from moorage import naming
from moorage.compose import parse_compose
from moorage.models import DeploymentConfig, DeploymentStatus, DeployRequest, EventType, Strategy
from moorage.service import DeploymentService
from tests.helpers import (
    TENANT,
    USER,
    get_version,
    labelled,
    start_web,
    version_once_up,
    wait_terminal,
    web_input,
    worker_ports,
)
from workflows import replicas

pytestmark = pytest.mark.integration

ROLL = DeployRequest(
    strategy=Strategy.ROLLING_UPDATE, health_check_retries=60, health_check_interval=0.5
)


def restarting(image: str, policy: str = "always", replicas: int = 1) -> str:
    return (
        f"services:\n  web:\n    image: {image}\n    ports: ['80']\n    restart: {policy}\n"
        f"    deploy:\n      replicas: {replicas}\n    stop_grace_period: 2s\n"
    )


def host_port(container: docker.models.containers.Container) -> str:
    container.reload()
    return str(container.attrs["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"])


def exit_by_itself(container: docker.models.containers.Container) -> None:
    """The replica's PID 1 exits 0 of its own accord (not a stop or kill by the engine's API,
    which the engine's restart policy leaves alone)."""
    container.exec_run(["kill", "1"])


def restarted(container: docker.models.containers.Container, times: int) -> None:
    """Until the engine has restarted the container ``times`` times and it is running again."""
    deadline = time.monotonic() + 15
    while True:
        container.reload()
        state = container.attrs["State"]
        if (
            container.attrs["RestartCount"] >= times
            and state["Running"]
            and not state["Restarting"]
        ):
            return
        assert time.monotonic() < deadline, container.attrs["State"]
        time.sleep(0.1)


async def answers(url: str, version: str) -> None:
    """Until the route at ``url`` answers ``version`` (it may refuse while the replica comes up)."""
    deadline = time.monotonic() + 15
    last: object = None
    while True:
        try:
            last = await asyncio.to_thread(get_version, url)
            if last == version:
                return
        except OSError as exc:
            last = exc
        assert time.monotonic() < deadline, f"{url} answers {last!r}, not {version}"
        await asyncio.sleep(0.1)


async def test_a_replica_restarted_by_its_policy_keeps_its_port_and_its_route(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(TENANT, project, restarting("moorage-demo:v1"))
    first = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v1"}))
    state = await wait_terminal(service, first.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    url = (await service.get_project(TENANT, project)).routes["web"]
    [replica] = labelled(docker_client, project)
    assert replica.attrs["HostConfig"]["RestartPolicy"] == {
        "Name": "always",
        "MaximumRetryCount": 0,
    }
    port = host_port(replica)

    exit_by_itself(replica)
    await asyncio.to_thread(restarted, replica, 1)
    # The engine picks an ephemeral port anew at each restart: this one was chosen by Moorage and
    # stays, so the router, which still sends requests to it, reaches the replica again.
    assert host_port(replica) == port
    await answers(url, "v1")

    # The next deployment rolls it as any other: its restart before the deployment is no crash.
    await service.apply_project(TENANT, project, restarting("moorage-demo:v2"))
    second = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v2"}))
    state = await wait_terminal(service, second.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert await asyncio.to_thread(get_version, url) == "v2"
    assert [c.labels["moorage.revision"] for c in labelled(docker_client, project)] == ["2"]


async def test_a_new_replica_its_policy_keeps_restarting_fails_its_gate_and_rolls_back(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """Restarted after each exit, the replica is ``running`` most of the time: the gate must not
    wait out its 30 s window on it, but fail on the first restart, naming the exit."""
    await service.apply_project(TENANT, project, restarting("moorage-demo:v1", replicas=2))
    first = await service.deploy(TENANT, USER, project, ROLL)
    assert (await wait_terminal(service, first.id)).deployment.status == DeploymentStatus.COMPLETED
    url = (await service.get_project(TENANT, project)).routes["web"]

    await service.apply_project(
        TENANT, project, restarting("moorage-demo:crash", '"on-failure:5"', replicas=2)
    )
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    # Caught restarting (with its exit code) or running again after a restart.
    assert re.search(
        r"exited and its restart policy (is restarting it \(exit code 3\)|restarted it "
        r"\(\d restart\(s\)\))",
        failed.message,
    ), failed.message
    assert "crashing on purpose" in failed.details["logs"]
    assert failed.details["container"].endswith("-web-r2-0")
    assert {c.labels["moorage.revision"] for c in labelled(docker_client, project)} == {"1"}
    assert await asyncio.to_thread(get_version, url) == "v1"


def test_a_restore_wait_counts_only_the_restarts_during_it(
    docker_client: docker.DockerClient, project: str
) -> None:
    """A rollback may adopt an old replica that has run since before the deployment: a restart
    in its past is not this deployment's failure. Any other wait fails on it."""
    start_web(docker_client, project, restarting("moorage-demo:v1"))
    [replica] = labelled(docker_client, project)
    exit_by_itself(replica)
    restarted(replica, 1)
    sel = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    executor = DockerExecutor(docker_client)

    restore = replicas.restore_health_input(DeploymentConfig(health_check_interval=0.2), sel, 1)
    assert restore.earlier_restarts_ok
    [instance] = ActivityEnvironment().run(executor.wait_healthy, restore)
    assert instance.container_id == replica.short_id

    gate = WaitHealthyInput(selector=sel, expected=1, interval_s=0.2, retries=25)
    with pytest.raises(ApplicationError) as info:
        ActivityEnvironment().run(executor.wait_healthy, gate)
    assert info.value.type == "HealthCheckFailed"
    assert "restart policy restarted it (1 restart(s))" in str(info.value)


def test_a_restore_wait_lets_an_old_replica_finish_a_restart_begun_before_it(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The engine counts a restart as it begins it: a replica caught restarting at the wait's
    first look is coming back from an earlier crash, and a rollback waits for it."""
    flaky = restarting("moorage-demo:v1").replace(
        "    restart: always\n",
        "    restart: always\n    command: ['sh', '-c', 'n=$$(cat /n 2>/dev/null || echo 0);"
        " echo $$((n+1)) > /n; [ $$n -ge 5 ] && exec /init.sh; echo crash $$n; exit 1']\n",
    )
    start_web(docker_client, project, flaky)
    [replica] = labelled(docker_client, project)
    # Five exits: the engine waits 0.1 s before the first restart and twice as long before each
    # next one, so it is 1.6 s into restart 5 from ~1.5 s on.
    deadline = time.monotonic() + 20
    while not (replica.attrs["State"]["Restarting"] and replica.attrs["RestartCount"] == 5):
        assert time.monotonic() < deadline, (replica.attrs["RestartCount"], replica.attrs["State"])
        time.sleep(0.05)
        replica.reload()
    sel = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    restore = replicas.restore_health_input(DeploymentConfig(health_check_interval=0.2), sel, 1)
    [instance] = ActivityEnvironment().run(DockerExecutor(docker_client).wait_healthy, restore)
    replica.reload()
    assert replica.attrs["RestartCount"] == 5
    assert instance.health == "healthy"


@pytest.fixture
def ports() -> Iterator[list[int]]:
    """Three consecutive loopback ports nothing holds, below every range the suite uses."""
    mine = worker_ports(16000, 16499)
    starts = range(mine[0], mine[-1] - 1, 3)
    for first in random.sample(starts, min(50, len(starts))):
        if all(bindable(p, "tcp") for p in range(first, first + 3)):
            yield list(range(first, first + 3))
            return
    pytest.fail(f"no three free consecutive ports in {mine[0]}-{mine[-1]}")


@pytest.fixture
def held(ports: list[int]) -> Iterator[int]:
    """The first of ``ports``, which a host process listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))
        sock.listen()
        yield ports[0]


def test_a_port_a_host_process_holds_is_not_chosen(
    docker_client: docker.DockerClient, project: str, ports: list[int], held: int
) -> None:
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[1]))
    [instance] = start_web(docker_client, project, restarting("moorage-demo:v1"), None, executor)
    assert instance.ports["80/tcp"] == f"127.0.0.1:{ports[1]}"
    assert version_once_up(f"http://127.0.0.1:{ports[1]}/") == "v1"


def test_a_port_the_engine_finds_taken_at_the_start_is_chosen_again(
    docker_client: docker.DockerClient,
    project: str,
    ports: list[int],
    held: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taken between the choice and the start (here: the check that it is free is blinded)."""
    monkeypatch.setattr(replica_ports, "bindable", lambda port, protocol: True)
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[1]))
    [instance] = start_web(docker_client, project, restarting("moorage-demo:v1"), None, executor)
    assert instance.ports["80/tcp"] == f"127.0.0.1:{ports[1]}"
    # The replica made on the taken port is gone: one container, the one serving.
    assert [c.short_id for c in labelled(docker_client, project)] == [instance.container_id]
    assert version_once_up(f"http://127.0.0.1:{ports[1]}/") == "v1"


def test_ports_chosen_side_by_side_differ(
    docker_client: docker.DockerClient, ports: list[int]
) -> None:
    """A port chosen for one start and not in a container yet is kept from the next choice."""
    chooser = DockerExecutor(docker_client, replica_ports=(ports[0], ports[2])).replica_ports
    spec = parse_compose(restarting("moorage-demo:v1")).service("web")
    first, second = chooser.choose(spec, set()), chooser.choose(spec, set())
    assert first == {"80/tcp": ("127.0.0.1", ports[0])}
    assert second == {"80/tcp": ("127.0.0.1", ports[1])}


def test_a_replica_an_earlier_attempt_made_and_never_started_is_made_again_on_a_free_port(
    docker_client: docker.DockerClient, project: str, ports: list[int]
) -> None:
    """An attempt that died between the create and the start left a container on a port that
    was taken since: it never ran, so nothing is lost making it again."""
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[1]))
    text = restarting("moorage-demo:v1")
    inp = web_input(project, text)
    name = naming.container_name(TENANT, project, "web", 1, 0)
    net = executor.ensure_network(NetworkInput(tenant=TENANT, project=project))
    left = executor._create(inp, 0, name, net, set())
    assert docker_client.containers.get(left).attrs["State"]["Status"] == "created"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))
        sock.listen()
        [instance] = start_web(docker_client, project, text, [0], executor)
    assert instance.ports["80/tcp"] == f"127.0.0.1:{ports[1]}"
    assert [c.short_id for c in labelled(docker_client, project)] == [instance.container_id]


def test_a_stopped_replica_keeps_its_port(
    docker_client: docker.DockerClient, project: str, ports: list[int]
) -> None:
    """Its port is free on the host while it is down, and still its own (the engine binds it
    again when it restarts): no other replica gets it."""
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[2]))
    text = restarting("moorage-demo:v1")
    [first] = start_web(docker_client, project, text, [0], executor)
    assert first.ports["80/tcp"] == f"127.0.0.1:{ports[0]}"
    docker_client.containers.get(first.container_id).stop(timeout=2)
    assert bindable(ports[0], "tcp")
    [second] = start_web(docker_client, project, text, [1], executor)
    assert second.ports["80/tcp"] == f"127.0.0.1:{ports[1]}"


def test_no_free_port_in_the_range_fails_the_start_and_makes_nothing(
    docker_client: docker.DockerClient, project: str, ports: list[int], held: int
) -> None:
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[0]))
    with pytest.raises(ApplicationError) as info:
        start_web(docker_client, project, restarting("moorage-demo:v1"), None, executor)
    assert info.value.type == "NoFreePort"
    assert not info.value.non_retryable
    assert f"MOORAGE_REPLICA_PORTS {ports[0]}-{ports[0]}" in str(info.value)
    assert labelled(docker_client, project) == []


def test_a_service_without_a_restart_policy_keeps_the_engines_ephemeral_ports(
    docker_client: docker.DockerClient, project: str
) -> None:
    text = restarting("moorage-demo:v1").replace("    restart: always\n", "")
    [instance] = start_web(docker_client, project, text)
    [replica] = labelled(docker_client, project)
    assert replica.attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
    assert replica.attrs["HostConfig"]["PortBindings"]["80/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": ""}
    ]
    assert instance.ports["80/tcp"].startswith("127.0.0.1:")


def test_ports_go_round_the_range_so_a_freed_port_is_not_given_out_again_at_once(
    docker_client: docker.DockerClient,
    project: str,
    ports: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Anything still pointing at a removed replica's port (a stale router entry) must not reach
    the next replica: the choice goes on past it, and comes back to it only after the range."""
    monkeypatch.setattr(replica_ports, "RESERVED_S", 0.0)  # only the rotation keeps ports apart
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[2]))
    text = restarting("moorage-demo:v1")
    chosen = []
    for slot in range(4):
        [instance] = start_web(docker_client, project, text, [slot], executor)
        chosen.append(instance.ports["80/tcp"])
        docker_client.containers.get(instance.container_id).remove(force=True)
    assert chosen == [f"127.0.0.1:{p}" for p in (*ports, ports[0])]
    # A worker started afresh goes on past the highest port a labelled container publishes.
    [kept] = start_web(docker_client, project, text, [4], executor)
    assert kept.ports["80/tcp"] == f"127.0.0.1:{ports[1]}"
    restarted = DockerExecutor(docker_client, replica_ports=(ports[0], ports[2]))
    [after] = start_web(docker_client, project, text, [5], restarted)
    assert after.ports["80/tcp"] == f"127.0.0.1:{ports[2]}"


def test_deploy_restart_policy_reaches_the_engine_and_gets_a_chosen_port(
    docker_client: docker.DockerClient, project: str, ports: list[int]
) -> None:
    """The Swarm spelling is the same engine policy as restart:, with Moorage's port choice."""
    text = (
        "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['80']\n    deploy:\n"
        "      restart_policy: {condition: on-failure, max_attempts: 2}\n"
    )
    executor = DockerExecutor(docker_client, replica_ports=(ports[0], ports[2]))
    [instance] = start_web(docker_client, project, text, None, executor)
    [replica] = labelled(docker_client, project)
    assert replica.attrs["HostConfig"]["RestartPolicy"] == {
        "Name": "on-failure",
        "MaximumRetryCount": 2,
    }
    assert instance.ports["80/tcp"] == f"127.0.0.1:{ports[0]}"


async def test_a_route_published_among_the_workers_replica_ports_fails_the_deploy_naming_it(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """The API checked under its own settings (here another replica range) and let it through;
    the worker's router, under the worker's (17000-19999), refuses before anything runs."""
    elsewhere = DeploymentService(
        service.client, service.settings.model_copy(update={"replica_ports": "20000-20999"})
    )
    text = "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['17005:80']\n"
    await elsewhere.apply_project(TENANT, project, text)
    dep = await elsewhere.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status in (DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK)
    assert "no route for web: port 17005" in state.deployment.message
    failed = [e for e in state.events if e.details.get("error_type") == "RouterPortReserved"]
    assert failed, [e.model_dump() for e in state.events]
    assert (failed[0].service_name, failed[0].details["port"]) == ("web", 17005)
    assert labelled(docker_client, project) == []
