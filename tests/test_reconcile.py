"""Orphan reconciliation: labelled containers nobody owns are found and removed, with events."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import pytest
from temporalio import activity
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.container_config import ensure_volumes
from activities.docker_executor import DockerExecutor
from activities.inputs import (
    ContainerSelector,
    ListLabelledInput,
    NetworkInput,
    RouteServersInput,
    StartServiceInput,
)
from activities.proxy import route_key
from activities.router import TrafficRouter
from moorage import naming
from moorage.compose import parse_compose
from moorage.models import (
    DeploymentEvent,
    DeploymentStatus,
    DeployRequest,
    EventType,
    ServiceInstance,
)
from moorage.service import ConflictError, DeploymentService, UnavailableError
from moorage.settings import Settings
from tests.conftest import temporal_binary
from tests.helpers import (
    TENANT,
    USER,
    compose,
    free_ports,
    get_version,
    labelled,
    wait_terminal,
    web_input,
)
from worker import WORKFLOWS, build_worker, ensure_reconcile_schedule
from workflows import search_attributes as sa
from workflows.reconcile import SCHEDULE_ID

pytestmark = pytest.mark.integration


def orphan_input(project: str, revision: int, tenant: str = TENANT) -> StartServiceInput:
    return StartServiceInput(
        tenant=tenant,
        project=project,
        deployment_id=f"{project}.{revision}",
        revision=revision,
        version="lost",
        service=parse_compose(compose(api_image=None)).service("web"),
        slots=[0],
    )


def _legacy_labels(project: str) -> dict[str, str]:
    """What a network or volume was labelled before the instance label: no instance."""
    return {naming.LABEL_TENANT: TENANT, naming.LABEL_PROJECT: project}


def legacy_network(client: docker.DockerClient, project: str) -> None:
    """The project's network, as made before the instance label: any instance's."""
    client.api.create_network(naming.network_name(TENANT, project), labels=_legacy_labels(project))


def make_orphan(
    client: docker.DockerClient,
    project: str,
    revision: int,
    tenant: str = TENANT,
    instance: str | None = None,
) -> str:
    """What a crash between 'create' and 'record' leaves: a labelled container no record knows
    (made by the Moorage ``instance``; default: this test process's, as its worker)."""
    executor = DockerExecutor(client, instance=instance)
    return executor.start_service(orphan_input(project, revision, tenant))[0].container_name


async def test_reconcile_removes_orphans_of_a_project(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    await service.apply_project(TENANT, project, compose(api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest())
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    serving = {c.name for c in labelled(docker_client, project)}
    orphan = make_orphan(docker_client, project, revision=7)
    router.route_add(
        RouteServersInput(tenant=TENANT, project=project, service="web", containers=[orphan])
    )
    assert orphan in router.load().routes[route_key(TENANT, project, "web")].servers

    events = await service.reconcile(TENANT, "ops", project)

    assert [e.event_type for e in events] == [EventType.ORPHAN_REMOVED]
    assert events[0].details["container"] == orphan
    assert events[0].details["by"] == "ops"
    assert {c.name for c in labelled(docker_client, project)} == serving
    assert orphan not in router.load().routes[route_key(TENANT, project, "web")].servers
    # Nothing left to do the second time.
    assert await service.reconcile(TENANT, "ops", project) == []


async def test_reconcile_is_refused_while_a_deployment_runs(
    service: DeploymentService, project: str
) -> None:
    await service.apply_project(TENANT, project, compose(api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(health_check_delay=3))
    with pytest.raises(ConflictError):
        await service.reconcile(TENANT, USER, project)
    await wait_terminal(service, dep.id)


async def test_reconcile_all_removes_containers_of_unknown_projects(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    # `project` was never applied: no project workflow owns these.
    orphan = make_orphan(docker_client, project, revision=1)
    events = await service.reconcile_all(TENANT)
    mine = [e for e in events if e.details.get("project") == project]
    assert [e.details["container"] for e in mine] == [orphan]
    assert mine[0].event_type == EventType.ORPHAN_REMOVED
    assert labelled(docker_client, project) == []


async def test_reconcile_all_goes_on_past_a_project_whose_containers_cannot_be_removed(
    temporal_client: Client,
    settings: Settings,
    docker_client: docker.DockerClient,
    project: str,
) -> None:
    """One unknown project's removal failing (the engine: "device or resource busy") failed
    the whole pass: the projects after it were never reconciled while the fault lasted."""
    stuck, other = f"{project}-a", f"{project}-b"  # the stuck one comes first
    executor = DockerExecutor(docker_client)

    @activity.defn(name="remove_containers")
    def busy_for_one(sel: ContainerSelector) -> list[str]:
        """The real removal, except for ``stuck``'s containers (workflow logic under test)."""
        if sel.project == stuck:
            raise ApplicationError(
                "device or resource busy (stub)", type="EngineRefused", non_retryable=True
            )
        return executor.remove_containers(sel)

    queue = f"reconcile-busy-{uuid.uuid4().hex[:6]}"
    svc = DeploymentService(temporal_client, settings.model_copy(update={"task_queue": queue}))
    kept = make_orphan(docker_client, stuck, revision=1)
    gone = make_orphan(docker_client, other, revision=1)
    try:
        async with Worker(
            temporal_client,
            task_queue=queue,
            workflows=WORKFLOWS,
            activities=[executor.list_labelled, busy_for_one],
            activity_executor=ThreadPoolExecutor(2),
        ):
            events = await svc.reconcile_all(TENANT)
        mine = {
            e.details["project"]: e for e in events if e.details.get("project") in (stuck, other)
        }
        assert mine[stuck].event_type == EventType.RECONCILE_FAILED
        assert "device or resource busy (stub)" in mine[stuck].message
        assert (mine[other].event_type, mine[other].details["container"]) == (
            EventType.ORPHAN_REMOVED,
            gone,
        )
        assert labelled(docker_client, other) == []
        assert [c.name for c in labelled(docker_client, stuck)] == [kept]
    finally:
        executor.purge_project(stuck)
        executor.purge_project(other)


async def test_reconcile_all_leaves_the_containers_of_another_instance(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """Another Moorage, with its own Temporal, on the same engine: its projects are unknown here,
    and ReconcileAll used to remove their containers as orphans."""
    theirs = make_orphan(docker_client, project, revision=1, instance="elsewhere")
    events = await service.reconcile_all(TENANT)
    assert [e for e in events if e.details.get("project") == project] == []
    (kept,) = labelled(docker_client, project)
    assert (kept.name, kept.status) == (theirs, "running")
    assert kept.labels[naming.LABEL_INSTANCE] == "elsewhere"


def test_only_the_instances_own_containers_are_listed_and_unlabelled_ones_are_defaults(
    docker_client: docker.DockerClient, project: str
) -> None:
    legacy_network(docker_client, project)  # both instances may use it
    mine = make_orphan(docker_client, project, revision=1, instance="here")
    make_orphan(docker_client, project, revision=2, instance="elsewhere")
    # Made before the label: same labels otherwise, no moorage.instance.
    older = next(c for c in labelled(docker_client, project) if c.name == mine)
    legacy = f"{project}-legacy"
    docker_client.containers.create(
        older.image.id,
        name=legacy,
        labels={
            k: v
            for k, v in older.labels.items()
            if k.startswith(naming.LABEL_PREFIX) and k != naming.LABEL_INSTANCE
        }
        | {naming.LABEL_REVISION: "3"},
    )
    listing = ListLabelledInput(tenant=TENANT)

    def names(instance: str) -> set[str]:
        found = DockerExecutor(docker_client, instance=instance).list_labelled(listing)
        return {c.name for c in found if c.project == project}

    assert names("here") == {mine}
    assert names("default") == {legacy}
    assert len(names("elsewhere")) == 1
    # Every step sees its own instance's containers only (a project of the same name elsewhere).
    here = DockerExecutor(docker_client, instance="here")
    everything = ContainerSelector(tenant=TENANT, project=project)
    assert [i.container_name for i in here.list_containers(everything)] == [mine]
    assert here.remove_containers(everything) == [mine]
    assert len(labelled(docker_client, project)) == 2


def test_a_start_never_adopts_a_container_of_another_instance(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Names are tenant, project, service, revision and slot: a start used to take over the
    container of that name whatever made it."""
    legacy_network(docker_client, project)  # both instances may use it (else it refuses first)
    theirs = make_orphan(docker_client, project, revision=1, instance="elsewhere")
    with pytest.raises(ApplicationError) as info:
        DockerExecutor(docker_client, instance="here").start_service(orphan_input(project, 1))
    assert (info.value.type, info.value.non_retryable) == ("ContainerOfAnotherInstance", True)
    assert f"container {theirs} belongs to Moorage instance 'elsewhere'" in str(info.value)
    (kept,) = labelled(docker_client, project)
    assert (kept.name, kept.labels[naming.LABEL_INSTANCE]) == (theirs, "elsewhere")


async def test_the_worker_schedules_reconciliation_once(
    temporal_client: Client, settings: Settings
) -> None:
    with contextlib.suppress(RPCError):  # made by an earlier worker on this server
        await temporal_client.get_schedule_handle(SCHEDULE_ID).delete()
    assert (
        await ensure_reconcile_schedule(
            temporal_client, settings.model_copy(update={"reconcile_every": 0})
        )
        is False
    )
    handle = temporal_client.get_schedule_handle(SCHEDULE_ID)
    try:
        assert await ensure_reconcile_schedule(temporal_client, settings) is True
        assert await ensure_reconcile_schedule(temporal_client, settings) is False
        desc = await handle.describe()
        assert desc.schedule.spec.intervals[0].every.total_seconds() == settings.reconcile_every
        # Changed settings change it (it was kept as first made), not an operator's pause;
        # 0 leaves it alone.
        await handle.pause(note="held by ops")
        changed = settings.model_copy(update={"reconcile_every": 42.0, "task_queue": "elsewhere"})
        assert await ensure_reconcile_schedule(temporal_client, changed) is True
        desc = await handle.describe()
        assert (desc.schedule.state.paused, desc.schedule.state.note) == (True, "held by ops")
        assert [i.every.total_seconds() for i in desc.schedule.spec.intervals] == [42.0]
        assert isinstance(desc.schedule.action, ScheduleActionStartWorkflow)
        assert desc.schedule.action.task_queue == "elsewhere"
        assert await ensure_reconcile_schedule(temporal_client, changed) is False
        off = settings.model_copy(update={"reconcile_every": 0})
        assert await ensure_reconcile_schedule(temporal_client, off) is False
        assert (await handle.describe()).schedule.spec.intervals[0].every.total_seconds() == 42
    finally:
        await temporal_client.get_schedule_handle(SCHEDULE_ID).delete()


@activity.defn(name="list_containers")
def engine_down(inp: ContainerSelector) -> list[ServiceInstance]:
    """Stub: the engine does not answer (past the steps' retries)."""
    raise ApplicationError(
        "engine unreachable (stub)", type="EngineUnreachable", non_retryable=True
    )


@contextlib.asynccontextmanager
async def project_with_the_engine_down(
    temporal_client: Client, settings: Settings, project: str
) -> AsyncIterator[tuple[DeploymentService, WorkflowHandle[Any, Any]]]:
    """``project`` applied on a worker whose engine does not answer (:func:`engine_down`)."""
    queue = f"reconcile-down-{uuid.uuid4().hex[:6]}"
    svc = DeploymentService(temporal_client, settings.model_copy(update={"task_queue": queue}))
    async with Worker(
        temporal_client,
        task_queue=queue,
        workflows=WORKFLOWS,
        activities=[engine_down],
        activity_executor=ThreadPoolExecutor(2),
    ):
        await svc.apply_project(TENANT, project, compose(api_image=None))
        handle = temporal_client.get_workflow_handle(naming.project_workflow_id(TENANT, project))
        try:
            yield svc, handle
        finally:
            await handle.terminate("test over")


async def test_a_scheduled_reconcile_that_fails_leaves_the_project_running(
    temporal_client: Client, settings: Settings, project: str
) -> None:
    """The scheduled pass runs in the project's own loop: its failure is logged, and the
    project's workflow (the project itself) lives on."""
    async with project_with_the_engine_down(temporal_client, settings, project) as (svc, handle):
        await handle.signal("reconcile_requested")
        deadline = time.monotonic() + 15
        while not (log := await handle.query("reconcile_log", result_type=list[DeploymentEvent])):
            assert time.monotonic() < deadline, "no reconcile logged"
            await asyncio.sleep(0.1)
        assert [e.event_type for e in log] == [EventType.RECONCILE_FAILED]
        assert "engine unreachable (stub)" in log[0].message
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
        assert (await svc.get_project(TENANT, project)).id == project


async def test_a_reconcile_whose_engine_is_down_answers_unavailable(
    temporal_client: Client, settings: Settings, project: str
) -> None:
    """It answered 400 (API) and exit 2 (CLI), as if the request were wrong."""
    async with project_with_the_engine_down(temporal_client, settings, project) as (svc, _):
        with pytest.raises(UnavailableError, match=r"engine unreachable \(stub\)") as info:
            await svc.reconcile(TENANT, USER, project)
        assert info.value.status_code == 503


VOLUMED = (
    "services:\n  web:\n    image: moorage-demo:v1\n    volumes: ['data:/data']\n"
    "volumes:\n  data: {}\n"
)


@pytest.mark.parametrize("kind", ["network", "volume"])
def test_a_start_never_uses_the_network_or_volume_of_another_instance(
    docker_client: docker.DockerClient, project: str, kind: str
) -> None:
    """Their names are tenant and project (and volume): two installations deploying the same
    project shared them (one database's files under two)."""
    api = docker_client.api
    theirs = {**_legacy_labels(project), naming.LABEL_INSTANCE: "elsewhere"}
    network = naming.network_name(TENANT, project)
    volume = naming.volume_name(TENANT, project, "data")
    legacy = _legacy_labels(project)  # the other one: any instance's
    api.create_network(network, driver="bridge", labels=theirs if kind == "network" else legacy)
    api.create_volume(volume, driver="local", labels=theirs if kind == "volume" else legacy)
    with pytest.raises(ApplicationError) as info:
        DockerExecutor(docker_client, instance="here").start_service(web_input(project, VOLUMED))
    kind_cap = kind.capitalize()
    assert (info.value.type, info.value.non_retryable) == (f"{kind_cap}OfAnotherInstance", True)
    name = network if kind == "network" else volume
    assert f"{kind} {name} belongs to Moorage instance 'elsewhere'" in str(info.value)
    assert labelled(docker_client, project) == []  # refused before any container was made


def test_networks_and_volumes_carry_the_instance_and_unlabelled_ones_are_shared(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Made before the label, a network or volume has none: any instance may use it (an
    installation's own, made by an older Moorage, must keep working). New ones carry it."""
    api = docker_client.api
    api.create_network(naming.network_name(TENANT, project), labels=_legacy_labels(project))
    api.create_volume(naming.volume_name(TENANT, project, "data"), labels=_legacy_labels(project))
    DockerExecutor(docker_client, instance="here").start_service(web_input(project, VOLUMED))
    other = f"{project}b"
    try:
        DockerExecutor(docker_client, instance="here").start_service(web_input(other, VOLUMED))
        net = api.inspect_network(naming.network_name(TENANT, other))
        vol = api.inspect_volume(naming.volume_name(TENANT, other, "data"))
        assert net["Labels"][naming.LABEL_INSTANCE] == "here"
        assert vol["Labels"][naming.LABEL_INSTANCE] == "here"
    finally:
        DockerExecutor(docker_client).purge_project(other)


def test_a_project_whose_names_another_project_s_also_spell_is_refused(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Names join tenant, project and the rest with dashes, which the parts may hold too: tenant
    'acme' with project 'tX-pY' and tenant 'acme-tX' with project 'pY' name the same network,
    volumes and containers. The second joined the first's network, mounted its volume and
    adopted its container."""
    other = f"p{uuid.uuid4().hex[:10]}"
    first = (TENANT, f"{project}-{other}")
    second = (f"{TENANT}-{project}", other)
    assert naming.network_name(*first) == naming.network_name(*second)
    spec = parse_compose(VOLUMED).service("web")

    def start(tenant: str, name: str) -> StartServiceInput:
        return StartServiceInput(
            tenant=tenant, project=name, deployment_id="d", revision=1, version="v1",
            service=spec, slots=[0],
        )  # fmt: skip

    executor = DockerExecutor(docker_client)
    try:
        [made] = executor.start_service(start(*first))
        with pytest.raises(ApplicationError) as network:
            executor.ensure_network(NetworkInput(tenant=second[0], project=second[1]))
        with pytest.raises(ApplicationError) as volume:
            ensure_volumes(docker_client.api, *second, spec, executor.instance)
        with pytest.raises(ApplicationError) as container:
            executor._adoptable(
                docker_client.api.inspect_container(made.container_name), start(*second)
            )
        for refused, kind in [(network, "Network"), (volume, "Volume"), (container, "Container")]:
            assert (refused.value.type, refused.value.non_retryable) == (
                f"{kind}OfAnotherProject",
                True,
            )
            assert f"belongs to tenant {TENANT!r}, project {first[1]!r}" in str(refused.value)
        assert f"belongs to tenant {TENANT!r}, project {first[1]!r}, not to tenant" in str(
            network.value
        )
        assert "rename one of the projects" in str(volume.value)
        # Nothing of the second project was made; the first's container still runs.
        assert labelled(docker_client, second[1]) == []
        assert docker_client.containers.get(made.container_name).status == "running"
    finally:
        executor.purge_project(first[1])
        executor.purge_project(second[1])


def test_a_volume_another_instance_made_refuses_the_project_at_its_first_step(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The network check runs first in every deployment; a volume was checked only when the
    service mounting it started (in a recreate, after the old revision was stopped)."""
    docker_client.api.create_volume(
        naming.volume_name(TENANT, project, "data"),
        labels={**_legacy_labels(project), naming.LABEL_INSTANCE: "elsewhere"},
    )
    with pytest.raises(ApplicationError) as info:
        DockerExecutor(docker_client, instance="here").ensure_network(
            NetworkInput(tenant=TENANT, project=project)
        )
    assert (info.value.type, info.value.non_retryable) == ("VolumeOfAnotherInstance", True)


def test_a_deployment_s_first_step_refuses_volume_and_container_names_another_project_holds(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Project 'p' with volume 'x-data' and service 'x-web' spells what project 'p-x' calls
    volume 'data' and service 'web'; the network names differ, so only the start of the service
    that mounts or names them found it, after the services before it had rolled."""
    first = f"{project}-x"
    executor = DockerExecutor(docker_client)
    try:
        [made] = executor.start_service(web_input(first, VOLUMED))  # revision 1
        volume = NetworkInput(tenant=TENANT, project=project, revision=1, volumes=["x-data"])
        container = NetworkInput(tenant=TENANT, project=project, revision=1, replicas={"x-web": 2})
        for inp, kind, name in [
            (volume, "Volume", naming.volume_name(TENANT, first, "data")),
            (container, "Container", made.container_name),
        ]:
            with pytest.raises(ApplicationError) as info:
                executor.ensure_network(inp)
            assert (info.value.type, info.value.non_retryable) == (f"{kind}OfAnotherProject", True)
            assert f"{kind.lower()} {name} belongs to tenant {TENANT!r}, project {first!r}" in str(
                info.value
            )
        # Names of another revision, or nothing the deployment names: no refusal.
        executor.ensure_network(container.model_copy(update={"revision": 2}))
        executor.ensure_network(NetworkInput(tenant=TENANT, project=project))
        assert docker_client.containers.get(made.container_name).status == "running"
    finally:
        executor.purge_project(first)
        executor.purge_project(project)


async def test_a_deployment_that_would_take_another_project_s_names_changes_nothing(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """Refused at the first step: no service of it rolled before the one whose name is
    taken, and the other project's replica serves on."""
    first = f"{project}-x"
    executor = DockerExecutor(docker_client)
    try:
        [theirs] = executor.start_service(web_input(first, compose(api_image=None)))  # r1
        ours = compose().replace("  web:", "  x-web:")  # api, then x-web (depends on api)
        await service.apply_project(TENANT, project, ours)
        dep = await service.deploy(TENANT, USER, project, DeployRequest(strategy="rolling_update"))
        state = await wait_terminal(service, dep.id)
        assert state.deployment.status == DeploymentStatus.ROLLED_BACK
        assert [e for e in state.events if e.service_name] == []  # no service was touched
        [failed] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED]
        assert f"container {theirs.container_name} belongs to tenant" in failed.message
        assert failed.details["held_by"] == {"tenant": TENANT, "project": first, "service": "web"}
        assert labelled(docker_client, project) == []
        # Not even the project's network: the refusal comes before it is made (it was left).
        network = naming.network_name(TENANT, project)
        names = [n.name for n in docker_client.networks.list(names=[network])]
        assert network not in names  # (the filter matches a substring: first's is listed too)
        assert docker_client.containers.get(theirs.container_name).status == "running"
    finally:
        executor.purge_project(first)


async def test_a_refused_rolling_update_leaves_a_moved_route_where_it_was(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """v2 moves web's published port and mounts a volume another project holds. The rolling
    update made sure of its routes beside the name check, so the route had moved when the
    refusal came; with ``rollback_on_failure`` off nothing moved it back (v1 served on the new
    port only)."""
    first = f"{project}-x"
    executor = DockerExecutor(docker_client)
    old_port, new_port = free_ports(2)
    v1 = f"services:\n  web:\n    image: moorage-demo:v1\n    ports: ['{old_port}:80']\n"
    v2 = (
        f"services:\n  web:\n    image: moorage-demo:v2\n    ports: ['{new_port}:80']\n"
        "    volumes: ['x-data:/data']\nvolumes:\n  x-data: {}\n"
    )
    roll = DeployRequest(strategy="rolling_update", rollback_on_failure=False)
    try:
        executor.start_service(web_input(first, VOLUMED))  # volume "data" of project first
        await service.apply_project(TENANT, project, v1)
        dep = await service.deploy(TENANT, USER, project, roll.model_copy(update={"version": "v1"}))
        assert (await wait_terminal(service, dep.id)).deployment.status == (
            DeploymentStatus.COMPLETED
        )
        url = (await service.get_project(TENANT, project)).routes["web"]
        await service.apply_project(TENANT, project, v2)
        dep = await service.deploy(TENANT, USER, project, roll)
        state = await wait_terminal(service, dep.id)
        assert state.deployment.status == DeploymentStatus.FAILED
        [failed] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED]
        assert failed.details["error_type"] == "VolumeOfAnotherProject", failed.message
        assert (await service.get_project(TENANT, project)).routes["web"] == url
        assert get_version(url) == "v1"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", new_port), timeout=2).close()
    finally:
        executor.purge_project(first)


async def test_a_project_that_cannot_take_another_signal_keeps_its_containers(
    docker_client: docker.DockerClient, router: TrafficRouter, project: str
) -> None:
    """A Temporal that takes 2 signals per workflow run: the project's workflow (a stand-in that
    runs and never ends) has had them, so ReconcileAll cannot ask it to reconcile. Any signal
    failure was taken for "no such project": its containers, serving ones included, were
    removed. (A project held for months meets the default limit, 10,000.)"""
    tenant = f"lim{uuid.uuid4().hex[:6]}"  # its own tenant: ReconcileAll lists it alone
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        port=free_ports(1)[0],
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
        dev_server_extra_args=[
            "--dynamic-config-value",
            "history.maximumSignalsPerExecution=2",
        ],
    )
    kept = make_orphan(docker_client, project, revision=1, tenant=tenant)
    try:
        stand_in = await env.client.start_workflow(
            "NobodyRunsThis",
            id=naming.project_workflow_id(tenant, project),
            task_queue=f"nobody-{uuid.uuid4().hex[:6]}",
        )
        for _ in range(2):
            await stand_in.signal("reconcile_requested")
        queue = f"moorage-limit-{uuid.uuid4().hex[:6]}"
        async with build_worker(env.client, queue, DockerExecutor(docker_client), router):
            events = await env.client.execute_workflow(
                "ReconcileAll",
                ListLabelledInput(tenant=tenant),
                id=f"reconcile-all-{uuid.uuid4().hex[:6]}",
                task_queue=queue,
                result_type=list[DeploymentEvent],
            )
        [event] = events
        assert event.event_type == EventType.RECONCILE_FAILED
        assert "could not be asked to reconcile, its containers kept" in event.message
        assert "signal limit" in event.message
        assert [c.name for c in labelled(docker_client, project)] == [kept]
    finally:
        await env.shutdown()
        DockerExecutor(docker_client).purge_project(project)
