"""Recreate end to end on a real Temporal dev server and a real Docker engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import docker
import pytest

from activities.router import TrafficRouter
from moorage import naming
from moorage.models import DeploymentStatus, DeployRequest, EventType
from moorage.service import DeploymentService
from tests.helpers import (
    TENANT,
    USER,
    compose,
    deploy_to_end,
    labelled,
    serving_version,
    wait_terminal,
)

pytestmark = pytest.mark.integration


async def test_recreate_two_services_with_depends_on(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(TENANT, project, compose("moorage-demo:v1", "moorage-demo:v1"))
    first = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    assert first.status == DeploymentStatus.PENDING
    state = await wait_terminal(service, first.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert serving_version(docker_client, project, "web") == {"v1"}

    await service.apply_project(TENANT, project, compose("moorage-demo:v2", "moorage-demo:v2"))
    second = await service.deploy(TENANT, USER, project, DeployRequest(version="v2"))

    # Sample progress and the engine while it runs: old and new never run together.
    seen_progress: list[int] = []
    overlap = []
    while True:
        st = await service.get_state(TENANT, second.id)
        seen_progress.append(st.deployment.progress)
        running = {
            c.labels["moorage.revision"]
            for c in docker_client.containers.list(filters={"label": f"moorage.project={project}"})
        }
        if len(running) > 1:
            overlap.append(running)
        if st.deployment.status.terminal:
            break
        await asyncio.sleep(0.05)
    state = await wait_terminal(service, second.id)
    dep = state.deployment
    assert dep.status == DeploymentStatus.COMPLETED, dep.message
    assert dep.progress == 100
    assert overlap == []
    assert seen_progress == sorted(seen_progress)

    types = [e.event_type for e in state.events]
    progress_marks = [
        e
        for e in types
        if e
        in (
            EventType.SERVICE_STOPPED,
            EventType.SERVICE_REMOVED,
            EventType.SERVICE_STARTED,
            EventType.HEALTH_CHECK_PASSED,
            EventType.INSTANCES_RECORDED,
            EventType.DEPLOYMENT_COMPLETED,
        )
    ]
    # In order: stop (web before api), remove, start (api before web), health, instances, done.
    assert progress_marks[:2] == [EventType.SERVICE_STOPPED, EventType.SERVICE_STOPPED]
    assert progress_marks[2] == EventType.SERVICE_REMOVED
    assert progress_marks[-2:] == [EventType.INSTANCES_RECORDED, EventType.DEPLOYMENT_COMPLETED]
    stopped = [e.service_name for e in state.events if e.event_type == EventType.SERVICE_STOPPED]
    started = [e.service_name for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    assert stopped == ["web", "api"]
    assert started == ["api", "web"]
    assert types[0] == EventType.DEPLOYMENT_REQUESTED
    assert types[1] == EventType.DEPLOYMENT_STARTED

    # Instances match what the engine reports.
    engine = {c.name: c for c in labelled(docker_client, project)}
    assert {i.container_name for i in state.instances} == set(engine)
    assert all(c.labels["moorage.revision"] == str(dep.revision) for c in engine.values())
    assert {i.service_name for i in state.instances} == {"api", "web"}
    assert serving_version(docker_client, project, "web") == {"v2"}
    assert serving_version(docker_client, project, "api") == {"v2"}


async def deploy_v1(service: DeploymentService, project: str, text: str | None = None) -> str:
    await service.apply_project(
        TENANT, project, text or compose("moorage-demo:v1", "moorage-demo:v1")
    )
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    return dep.id


async def test_unhealthy_revision_rolls_back_automatically(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await deploy_v1(service, project)
    v1_containers = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(
        TENANT, project, compose("moorage-demo:unhealthy", "moorage-demo:v2")
    )
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(version="bad", health_check_retries=20)
    )
    state = await wait_terminal(service, dep.id)
    d = state.deployment
    assert d.status == DeploymentStatus.ROLLED_BACK, d.message
    assert "unhealthy" in d.message
    failed = [e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED]
    assert len(failed) == 1
    assert failed[0].service_name == "web"
    assert failed[0].details["container"].endswith(f"-web-r{d.revision}-0")
    assert "serving version bad" not in failed[0].details["logs"]  # the log is the container's own
    assert "demo: serving version unhealthy" in failed[0].details["logs"]
    types = [e.event_type for e in state.events]
    assert (
        types.index(EventType.DEPLOYMENT_FAILED)
        < types.index(EventType.ROLLBACK_STARTED)
        < types.index(EventType.ROLLBACK_COMPLETED)
    )
    # The previous revision serves again; nothing of the failed revision is left.
    assert labelled(docker_client, project, revision=str(d.revision)) == []
    assert {c.name for c in labelled(docker_client, project)} == v1_containers
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert serving_version(docker_client, project, "api") == {"v1"}
    project_now = await service.get_project(TENANT, project)
    assert project_now.current_version == "v1"
    assert project_now.active_deployment_id is None


async def test_crashing_revision_fails_fast_with_its_log(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await deploy_v1(service, project, compose("moorage-demo:v1", api_image=None))
    await service.apply_project(TENANT, project, compose("moorage-demo:crash", api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version="crash"))
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    assert "exit code 3" in failed.message
    assert "crashing on purpose" in failed.details["logs"]
    assert labelled(docker_client, project, revision=str(state.deployment.revision)) == []
    assert serving_version(docker_client, project, "web") == {"v1"}


async def test_a_restored_service_that_needs_its_health_delay_comes_back(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """v1's first health check comes 4 s after its start (its x-moorage delay says so). The
    undo started it cold and gave it 60 checks of the failed deployment's 0.05 s (3 s), no
    delay: the restore failed, the deployment ended ``failed`` and nothing served."""
    slow = (
        "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['80']\n"
        "    healthcheck:\n      interval: 4s\n"
        "    x-moorage: {health_check_delay: 4}\n"
    )
    await deploy_v1(service, project, slow)
    await service.apply_project(TENANT, project, compose("moorage-demo:crash", api_image=None))
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        DeployRequest(version="crash", health_check_interval=0.05, health_check_retries=20),
    )
    state = await wait_terminal(service, dep.id, timeout=90)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert labelled(docker_client, project, revision=str(state.deployment.revision)) == []


async def test_without_rollback_on_failure_the_status_is_failed(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(TENANT, project, compose("moorage-demo:crash", api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(rollback_on_failure=False))
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.FAILED
    assert "rollback_on_failure" in state.deployment.message
    assert EventType.ROLLBACK_STARTED not in [e.event_type for e in state.events]
    # Left as it failed, for the operator to inspect.
    assert [c.status for c in labelled(docker_client, project)] == ["exited"]
    # A deployment after it, undone while still no revision serves, leaves the network to the
    # kept container (the engine lists only running containers as a network's own).
    await deploy_missing_image(service, project)
    [kept] = labelled(docker_client, project)
    await asyncio.sleep(2)  # the removal would follow the recorded result
    assert docker_client.networks.list(names=[naming.network_name(TENANT, project)])
    kept.start()  # still on its network: it can start


async def deploy_missing_image(service: DeploymentService, project: str) -> None:
    """Apply and deploy an image no registry has: the deployment ends rolled back."""
    await deploy_to_end(
        service,
        project,
        compose("moorage-demo:doesnotexist", api_image=None),
        DeployRequest(),
        status=DeploymentStatus.ROLLED_BACK,
    )


async def test_missing_image_fails_once_and_rolls_back(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await deploy_v1(service, project, compose("moorage-demo:v1", api_image=None))
    await service.apply_project(
        TENANT, project, compose("moorage-demo:doesnotexist", api_image=None)
    )
    dep = await service.deploy(TENANT, USER, project, DeployRequest())
    state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    assert "moorage-demo:doesnotexist" in state.deployment.message
    assert serving_version(docker_client, project, "web") == {"v1"}


async def test_a_first_deployment_undone_leaves_no_network(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """A project's first deployment rolled back: its containers went, its network stayed
    (labelled, and nothing removed it). The next deployment makes it again."""
    await deploy_missing_image(service, project)
    assert labelled(docker_client, project) == []
    mine = {"label": f"{naming.LABEL_PROJECT}={project}"}
    deadline = asyncio.get_running_loop().time() + 15
    while docker_client.networks.list(filters=mine):  # removed after the result is recorded
        assert asyncio.get_running_loop().time() < deadline, "the project's network stayed"
        await asyncio.sleep(0.2)
    v1 = compose("moorage-demo:v1", api_image=None)
    await deploy_to_end(service, project, v1, DeployRequest())
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert len(docker_client.networks.list(filters=mine)) == 1


@pytest.mark.parametrize("phase", [EventType.SERVICE_STARTING, EventType.SERVICE_STARTED])
async def test_cancel_mid_deployment_restores_the_previous_revision(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, phase: EventType
) -> None:
    await deploy_v1(service, project)
    v1_containers = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, compose("moorage-demo:v2", "moorage-demo:v2"))
    # A long health delay parks the deployment in its health phase, with the new revision started.
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(version="v2", health_check_delay=60)
    )
    from tests.helpers import wait_status

    # SERVICE_STARTING: the cancel meets start_service; SERVICE_STARTED: it meets the health wait.
    await wait_status(
        service,
        dep.id,
        lambda s: s.deployment.progress >= 40 and any(e.event_type == phase for e in s.events),
    )
    await service.cancel(TENANT, "carol", dep.id)
    state = await wait_terminal(service, dep.id, timeout=60)
    d = state.deployment
    assert d.status == DeploymentStatus.CANCELLED, d.message
    cancelled = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_CANCELLED]
    assert cancelled
    assert "carol" in cancelled[-1].message
    assert labelled(docker_client, project, revision=str(d.revision)) == []
    assert {c.name for c in labelled(docker_client, project)} == v1_containers
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert (await service.get_project(TENANT, project)).current_version == "v1"


@pytest.mark.parametrize("found_moved", [False, True], ids=["moved-by-the-step", "found-moved"])
async def test_a_route_moved_to_a_new_published_port_moves_back_when_the_deployment_is_undone(
    service: DeploymentService, router: TrafficRouter, project: str, found_moved: bool
) -> None:
    """The old revision must serve where its clients know it: its published port. Also when
    the step found the route moved already (its first attempt killed after the move), and so
    could not say from where."""
    from activities.inputs import RouteInput
    from activities.replica_ports import bindable
    from tests.helpers import get_version, worker_ports

    ports = [p for p in worker_ports(16700, 16799) if bindable(p, "tcp")]
    old, new = ports[2:4] if found_moved else ports[:2]

    def web(image: str, port: int) -> str:
        return f"services:\n  web:\n    image: {image}\n    ports: ['{port}:80']\n"

    await service.apply_project(TENANT, project, web("moorage-demo:v1", old))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    assert (await service.get_project(TENANT, project)).routes["web"].endswith(f":{old}/")
    if found_moved:  # what the killed first attempt did
        moved = RouteInput(
            tenant=TENANT, project=project, service="web", container_port="80/tcp",
            published_port=new,
        )  # fmt: skip
        assert router.ensure_route(moved).moved_from == old

    await service.apply_project(TENANT, project, web("moorage-demo:unhealthy", new))
    bad = await service.deploy(TENANT, USER, project, DeployRequest(health_check_retries=2))
    state = await wait_terminal(service, bad.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    steps = [e.message for e in state.events if e.event_type == EventType.ROLLBACK_STEP]
    assert f"routes back on their ports: web {old}" in steps
    url = (await service.get_project(TENANT, project)).routes["web"]
    assert url == f"http://127.0.0.1:{old}/"
    assert get_version(url) == "v1"


async def test_services_that_swapped_ports_swap_back_when_the_deployment_is_undone(
    service: DeploymentService, project: str
) -> None:
    from activities.replica_ports import bindable
    from tests.helpers import get_version, worker_ports

    a, b = [p for p in worker_ports(16700, 16799) if bindable(p, "tcp")][4:6]

    def two(image: str, web: int, api: int) -> str:
        return (
            f"services:\n  api:\n    image: moorage-demo:v1\n    ports: ['{api}:80']\n"
            f"  web:\n    image: {image}\n    ports: ['{web}:80']\n"
        )

    await service.apply_project(TENANT, project, two("moorage-demo:v1", a, b))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    await service.apply_project(TENANT, project, two("moorage-demo:unhealthy", b, a))
    bad = await service.deploy(TENANT, USER, project, DeployRequest(health_check_retries=2))
    state = await wait_terminal(service, bad.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    steps = [e.message for e in state.events if e.event_type == EventType.ROLLBACK_STEP]
    assert f"routes back on their ports: api {b}, web {a}" in steps
    routes = (await service.get_project(TENANT, project)).routes
    assert routes == {"api": f"http://127.0.0.1:{b}/", "web": f"http://127.0.0.1:{a}/"}
    assert get_version(routes["web"]) == "v1"


def web_only(image: str) -> str:
    return f"services:\n  web:\n    image: {image}\n    ports: ['80']\n    stop_grace_period: 2s\n"


async def test_a_recreate_stops_what_a_failed_deployment_left_before_it_starts(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """A failed deployment with ``rollback_on_failure`` off keeps its replicas; a recreate after
    it stopped only the serving revision's, and its own started beside them (two databases on
    one volume), until the reconciliation after it removed them."""
    await deploy_to_end(service, project, web_only("moorage-demo:v1"), DeployRequest(version="v1"))
    failed = (
        await deploy_to_end(
            service,
            project,
            web_only("moorage-demo:unhealthy"),
            DeployRequest(version="v2", rollback_on_failure=False, health_check_retries=2),
            DeploymentStatus.FAILED,
        )
    ).deployment
    left = {c.name for c in labelled(docker_client, project, revision=str(failed.revision))}
    assert left
    assert {c.status for c in labelled(docker_client, project, revision=str(failed.revision))} == {
        "running"
    }
    await service.apply_project(TENANT, project, web_only("moorage-demo:v3"))
    began = datetime.now(UTC)
    third = await service.deploy(TENANT, USER, project, DeployRequest(version="v3"))
    state = await wait_terminal(service, third.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    seen = docker_client.events(
        since=began - timedelta(seconds=1),
        until=datetime.now(UTC) + timedelta(seconds=1),
        decode=True,
        filters={"label": f"moorage.project={project}", "type": "container"},
    )
    order = [
        (e["Action"], e["Actor"]["Attributes"].get("name", "")) for e in seen
        if e["Action"] in ("die", "start")
    ]  # fmt: skip
    died = [i for i, (what, name) in enumerate(order) if what == "die" and name in left]
    started = [
        i
        for i, (what, name) in enumerate(order)
        if what == "start" and f"-r{third.revision}-" in name
    ]
    assert died, order
    assert started, order
    assert max(died) < min(started), order
    [said] = [e for e in state.events if "failed deployments left" in e.message]
    assert set(said.details["containers"]) == left
