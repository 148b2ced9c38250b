"""Rolling updates under load: real routers (HAProxy and nginx), real engine, real Temporal."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import docker
import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowHistory
from temporalio.exceptions import ApplicationError

from activities.docker_executor import DockerExecutor
from activities.haproxy import HAPROXY, HAProxyBackend
from activities.inputs import DeleteRoutesInput
from activities.nginx import NginxBackend
from activities.proxy import route_key
from activities.router import TrafficRouter
from moorage import naming
from moorage.models import (
    DeploymentEvent,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    Strategy,
)
from moorage.service import ConflictError, DeploymentService
from moorage.settings import Settings
from tests.helpers import (
    TENANT,
    USER,
    get_version,
    labelled,
    local_activity_markers,
    routed,
    tcp_echo,
    wait_status,
    wait_terminal,
    wait_until,
    worker_port_setting,
)
from tests.load import Load, TcpLoad
from worker import build_router, build_worker
from workflows import steps
from workflows.steps import BRIEF_STEPS, QUICK_STEPS, runs_local

pytestmark = pytest.mark.integration

REPLICAS = 4


def web(image: str, replicas: int = REPLICAS, fail_host: str | None = None) -> str:
    text = (
        f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
        f"    deploy:\n      replicas: {replicas}\n    stop_grace_period: 5s\n"
    )
    if fail_host:
        text += f"    environment:\n      DEMO_FAIL_HOST: {fail_host}\n"
    return text


ROLL = DeployRequest(
    strategy=Strategy.ROLLING_UPDATE,
    max_surge=1,
    max_unavailable=0,
    version="v2",
    health_check_retries=20,
)

HELD_DRAIN_ROUTE_PORTS = worker_port_setting(24500, 24599)
"""The listen ports of the held drain's router."""


async def serve_v1(service: DeploymentService, project: str) -> str:
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v1")
    )
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    url = (await service.get_project(TENANT, project)).routes["web"]
    assert url.startswith("http://127.0.0.1:")
    return url


class Sampler:
    """Samples the engine while a roll runs: containers of the service, and how many are ready;
    and the router: how many servers of the route take new requests (up, not draining)."""

    def __init__(self, client: docker.DockerClient, project: str, router: TrafficRouter):
        self.client, self.project, self.router = client, project, router
        self.max_total, self.min_ready, self.min_serving, self.samples = 0, 10**6, 10**6, 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._sample()
        except BaseException as exc:  # re-raised in the test by __exit__
            self.error = exc

    def _sample(self) -> None:
        route = self.router.load().routes[route_key(TENANT, self.project, "web")]
        while not self._stop.is_set():
            cs = self.client.api.containers(
                all=True,
                filters={"label": [f"moorage.project={self.project}", "moorage.service=web"]},
            )
            running = [c for c in cs if c["State"] == "running"]
            ready = [c for c in running if "(healthy)" in c["Status"]]
            serving = [w for w in self.router.backend.live_servers(route).values() if w > 0]
            self.max_total = max(self.max_total, len(cs))
            self.min_ready = min(self.min_ready, len(ready))
            self.min_serving = min(self.min_serving, len(serving))
            self.samples += 1
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        if self.error is not None:
            raise AssertionError(f"the sampler failed: {self.error!r}") from self.error


def haproxy_worker_pid(router: TrafficRouter) -> int:
    """The pid of HAProxy's worker process: a reload starts a new one."""
    assert isinstance(router.backend, HAProxyBackend)
    info = router.backend.command("show info")
    return int(next(line for line in info.splitlines() if line.startswith("Pid:")).split()[1])


def nginx_config(router: TrafficRouter) -> Path:
    assert isinstance(router.backend, NginxBackend)
    return router.backend.config


@pytest.mark.parametrize(("keepalive", "surge", "unavailable"), [(True, 1, 0), (False, 2, 1)])
async def test_rolling_update_under_load_drops_nothing(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    keepalive: bool,
    surge: int,
    unavailable: int,
) -> None:
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    worker_pid = haproxy_worker_pid(router)
    with (
        Load(url, connections=6, keepalive=keepalive) as load,
        Sampler(docker_client, project, router) as sampler,
    ):
        await asyncio.sleep(0.5)
        dep = await service.deploy(
            TENANT,
            USER,
            project,
            ROLL.model_copy(update={"max_surge": surge, "max_unavailable": unavailable}),
        )
        before = sampler.samples
        state = await wait_terminal(service, dep.id)
        during = sampler.samples - before
        await asyncio.sleep(0.5)
    result = load.result
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert result.failed == 0, result.errors
    assert result.ok > 200
    assert result.versions["v1"] > 0
    assert result.versions["v2"] > 0
    assert load.last_versions(50) == {"v2"}
    # Nothing but v1 answers before the first v2 answer.
    first_v2 = next(i for i, (_, v) in enumerate(result.timeline) if v == "v2")
    assert all(v == "v1" for _, v in result.timeline[:first_v2])
    # Every server change went through the runtime API: the worker that served v1 serves v2,
    # no reload (one would start a new worker).
    assert haproxy_worker_pid(router) == worker_pid
    # Surge arithmetic held on the engine, sampled all through the roll.
    assert during > 10, during
    assert sampler.max_total <= REPLICAS + surge
    assert sampler.min_ready >= REPLICAS - unavailable
    assert sampler.min_serving >= REPLICAS - unavailable  # and routed, not draining
    # Exactly the new replicas are routed.
    new = {c.name for c in labelled(docker_client, project)}
    assert len(new) == REPLICAS
    assert all(
        c.labels["moorage.revision"] == str(dep.revision) for c in labelled(docker_client, project)
    )
    assert routed(router, project) == new
    events = [e.event_type for e in state.events]
    assert events.count(EventType.SERVICE_UPDATING) == 1
    assert events.count(EventType.SERVICE_UPDATED) == 1


def project_of(version: str, *, cache: bool, api_routed: bool) -> str:
    """``web`` (2 replicas) written before the ``api`` it depends on (kept off the router unless
    ``api_routed``); a ``cache`` when asked."""
    text = (
        f"services:\n  web:\n    image: moorage-demo:{version}\n    ports: ['80']\n"
        "    deploy:\n      replicas: 2\n    depends_on: [api]\n"
        f"  api:\n    image: moorage-demo:{version}\n    ports: ['80']\n"
    )
    if not api_routed:
        text += "    x-moorage: {route: false}\n"
    if cache:
        text += f"  cache:\n    image: moorage-demo:{version}\n    ports: ['80']\n"
    return text


async def test_services_roll_one_at_a_time_in_depends_on_order_and_a_dropped_one_goes_last(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    await service.apply_project(TENANT, project, project_of("v1", cache=True, api_routed=True))
    first = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v1"}))
    assert (await wait_terminal(service, first.id)).deployment.status == DeploymentStatus.COMPLETED
    v1_routes = (await service.get_project(TENANT, project)).routes
    assert set(v1_routes) == {"web", "api", "cache"}
    await service.apply_project(TENANT, project, project_of("v2", cache=False, api_routed=False))
    # Applied, not deployed: v1 serves, and so do its routes (they were listed by the applied
    # text's services, so api and cache vanished from the answer while serving).
    assert (await service.get_project(TENANT, project)).routes == v1_routes
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    kinds = {
        EventType.SERVICE_UPDATING: "updating",
        EventType.SERVICE_UPDATED: "updated",
        EventType.SERVICE_REMOVED: "removed",
    }
    steps_seen = [
        (e.service_name, kinds[e.event_type]) for e in state.events if e.event_type in kinds
    ]
    assert steps_seen == [
        ("api", "updating"),
        ("api", "updated"),
        ("web", "updating"),
        ("web", "updated"),
        ("cache", "removed"),
    ]
    # Every api replica was new and healthy before web's first new replica started.
    started = [e for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    assert [e.service_name for e in started] == ["api", "web", "web"]
    left = labelled(docker_client, project)
    assert sorted(c.labels["moorage.service"] for c in left) == ["api", "web", "web"]
    assert {c.labels["moorage.revision"] for c in left} == {str(dep.revision)}
    # v2 takes api off the router and drops cache: once v2 serves, their routes are deleted and
    # their listen ports close.
    routes = (await service.get_project(TENANT, project)).routes
    assert set(routes) == {"web"}
    assert get_version(routes["web"]) == "v2"
    deadline = time.monotonic() + 15
    while True:  # the project deletes them after it recorded the deployment's end
        events = (await service.get_state(TENANT, dep.id)).events
        deleted = [e.service_name for e in events if e.event_type == EventType.ROUTE_DELETED]
        if deleted:
            break
        assert time.monotonic() < deadline, [e.message for e in events[-3:]]
        await asyncio.sleep(0.1)
    assert sorted(d or "" for d in deleted) == ["api", "cache"]
    assert not {route_key(TENANT, project, n) for n in ("api", "cache")} & set(router.load().routes)
    for name in ("api", "cache"):
        port = int(v1_routes[name].rsplit(":", 1)[1].strip("/"))
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()


def web_and_cache(version: str, *, cache: bool) -> str:
    """One replica of ``web``, and a ``cache`` when asked."""
    text = f"services:\n  web:\n    image: moorage-demo:{version}\n    ports: ['80']\n"
    if cache:
        text += f"  cache:\n    image: moorage-demo:{version}\n    ports: ['80']\n"
    return text


@activity.defn(name="delete_routes")
def router_refuses(inp: DeleteRoutesInput) -> list[str]:
    """Stub: the router refuses to delete (the config it would load is refused)."""
    raise ApplicationError(
        "the router refused the reload (stub)", type="RouterError", non_retryable=True
    )


async def test_routes_the_router_refused_to_delete_are_kept_and_deleted_after_the_next_deploy(
    temporal_client: Client,
    settings: Settings,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """The project's other steps are the real ones; only the router's deletion is refused."""
    queue = f"moorage-nodelete-{uuid.uuid4().hex[:6]}"
    svc = DeploymentService(temporal_client, settings.model_copy(update={"task_queue": queue}))
    executor = DockerExecutor(docker_client)

    class RefusingRouter:
        """The real router's activities, but its deletion refused."""

        def activities(self) -> list[Callable[..., Any]]:
            real = [a for a in router.activities() if a.__name__ != "delete_routes"]
            assert len(real) == len(router.activities()) - 1
            return [*real, router_refuses]

    refusing = build_worker(temporal_client, queue, executor, cast(TrafficRouter, RefusingRouter()))
    fast = ROLL.model_copy(update={"health_check_interval": 0.2})
    async with refusing:
        await svc.apply_project(TENANT, project, web_and_cache("v1", cache=True))
        first = await svc.deploy(TENANT, USER, project, fast)
        assert (await wait_terminal(svc, first.id)).deployment.status == (
            DeploymentStatus.COMPLETED
        )
        cache_url = (await svc.get_project(TENANT, project)).routes["cache"]
        await svc.apply_project(TENANT, project, web_and_cache("v2", cache=False))
        second = await svc.deploy(TENANT, USER, project, fast)
        assert (await wait_terminal(svc, second.id)).deployment.status == (
            DeploymentStatus.COMPLETED
        )
        kept = await wait_event(svc, second.id, EventType.ROUTE_DELETE_FAILED)
        assert "routes of cache kept" in kept.message
        assert "the router refused the reload (stub)" in kept.message
        assert kept.details["services"] == ["cache"]
        # The project lists the routes its revision routes; the router keeps the old one (its
        # port still open) until a deletion succeeds.
        assert set((await svc.get_project(TENANT, project)).routes) == {"web"}
    assert route_key(TENANT, project, "cache") in router.load().routes
    socket.create_connection(("127.0.0.1", port_of(cache_url)), timeout=2).close()

    # The next completed deployment (the real router now) deletes it.
    async with build_worker(temporal_client, queue, executor, router):
        await svc.apply_project(TENANT, project, web_and_cache("v3", cache=False))
        third = await svc.deploy(TENANT, USER, project, fast)
        assert (await wait_terminal(svc, third.id)).deployment.status == (
            DeploymentStatus.COMPLETED
        )
        deleted = await wait_event(svc, third.id, EventType.ROUTE_DELETED)
        assert deleted.service_name == "cache"
        assert set((await svc.get_project(TENANT, project)).routes) == {"web"}
    assert route_key(TENANT, project, "cache") not in router.load().routes
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(cache_url)), timeout=2).close()


async def test_an_undone_deployment_deletes_the_route_it_made_for_a_new_service(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """v2 adds ``cache``, whose replica never gets healthy: the rollback removes its container,
    and its route (made at the first step) used to stay, listed under the project's routes and
    listening on its port with no server (503)."""
    fast = ROLL.model_copy(update={"health_check_interval": 0.2})
    await service.apply_project(TENANT, project, web_and_cache("v1", cache=False))
    first = await service.deploy(TENANT, USER, project, fast.model_copy(update={"version": "v1"}))
    assert (await wait_terminal(service, first.id)).deployment.status == (
        DeploymentStatus.COMPLETED
    )
    web_url = (await service.get_project(TENANT, project)).routes["web"]
    broken = web_and_cache("v2", cache=True) + "    command: [sh, -c, 'sleep 1000000']\n"
    await service.apply_project(TENANT, project, broken)
    second = await service.deploy(
        TENANT, USER, project, fast.model_copy(update={"health_check_retries": 10})
    )
    state = await wait_terminal(service, second.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    deleted = await wait_event(service, second.id, EventType.ROUTE_DELETED)
    assert deleted.service_name == "cache"
    assert "the deployment that made it was undone" in deleted.message
    cache_url = deleted.message.split("(", 1)[1].split(")", 1)[0]  # "route of cache deleted (url)"
    assert (await service.get_project(TENANT, project)).routes == {"web": web_url}
    # Nor does the deployment's status list it any more.
    assert (await service.get_state(TENANT, second.id)).routes == {"web": web_url}
    assert route_key(TENANT, project, "cache") not in router.load().routes
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(cache_url)), timeout=2).close()
    assert get_version(web_url) == "v1"
    assert labelled(docker_client, project, revision=str(state.deployment.revision)) == []


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].strip("/"))


async def wait_event(svc: DeploymentService, dep_id: str, kind: EventType) -> DeploymentEvent:
    """The deployment's first event of ``kind`` (the project logs route deletions just after it
    recorded the deployment's end)."""
    deadline = time.monotonic() + 15
    while True:
        events = (await svc.get_state(TENANT, dep_id)).events
        found = [e for e in events if e.event_type == kind]
        if found:
            return found[0]
        assert time.monotonic() < deadline, [e.message for e in events[-3:]]
        await asyncio.sleep(0.1)


async def roll_under_load(
    service: DeploymentService, docker_client: docker.DockerClient, project: str, compose: str
) -> tuple[set[str], DeploymentState, Load]:
    """v1 served, then ``compose`` rolled out (6 health retries) under keep-alive load.

    Returns the old replicas' names, the deployment's end state and the load.
    """
    url = await serve_v1(service, project)
    old = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, compose)
    with Load(url, connections=6, keepalive=True) as load:
        dep = await service.deploy(
            TENANT, USER, project, ROLL.model_copy(update={"health_check_retries": 6})
        )
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.5)
    return old, state, load


async def test_rolling_update_whose_third_replica_never_gets_healthy_rolls_back_under_load(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    old, state, load = await roll_under_load(
        service, docker_client, project, web("moorage-demo:v2", fail_host="web-2")
    )
    d = state.deployment
    assert d.status == DeploymentStatus.ROLLED_BACK, d.message
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["v2"] > 0  # the first two new replicas did serve
    assert load.last_versions(50) == {"v1"}
    failed = [e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED]
    assert len(failed) == 1
    assert failed[0].details["container"].endswith(f"-web-r{d.revision}-2")
    assert "will never get healthy" in failed[0].details["logs"]
    assert labelled(docker_client, project, revision=str(d.revision)) == []
    assert {c.name for c in labelled(docker_client, project)} == old
    assert routed(router, project) == old
    # The serving deployment's instances are the containers that serve: the undo restored the
    # replicas the roll replaced as new containers, and the record listed the removed ones.
    serving = (await service.list_deployments(TENANT, project))[-1]
    instances = (await service.get_state(TENANT, serving.id)).instances
    assert {(i.container_name, i.container_id[:12]) for i in instances} == {
        (c.name, c.id[:12]) for c in labelled(docker_client, project)
    }


def web_on_8080(fail_host: str = "none") -> str:
    """v2 serving on container port 8080 (v1: 80); ``fail_host``'s httpd never starts."""
    return (
        "services:\n  web:\n    image: moorage-demo:v2\n    ports: ['8080']\n"
        f"    deploy:\n      replicas: {REPLICAS}\n    stop_grace_period: 5s\n"
        "    healthcheck:\n"
        "      test: wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1\n"
        "      interval: 1s\n"
        "    command:\n      - sh\n      - -c\n      - |\n"
        "        trap 'exit 0' TERM\n"
        f'        [ "$$(hostname)" = {fail_host} ] || httpd -p 8080 -h /www\n'
        "        sleep 1000000 & wait\n"
    )


@pytest.mark.parametrize("fails", [False, True], ids=["completes", "rolls-back"])
async def test_a_revision_that_moves_the_container_port_rolls_under_load(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    fails: bool,
) -> None:
    """v1 serves on port 80, v2 on 8080. The route used to be emptied when its container port
    changed (every old replica drained before a new one was up), and a rollback looked the old
    replicas up on the new port (ContainerNotServing, retried until the rollback failed)."""
    old, state, load = await roll_under_load(
        service, docker_client, project, web_on_8080("web-2" if fails else "none")
    )
    d = state.deployment
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["v2"] > 0  # through v1's listen port
    if fails:
        assert d.status == DeploymentStatus.ROLLED_BACK, d.message
        assert load.last_versions(50) == {"v1"}
        assert labelled(docker_client, project, revision=str(d.revision)) == []
        assert {c.name for c in labelled(docker_client, project)} == old
        assert routed(router, project) == old
    else:
        assert d.status == DeploymentStatus.COMPLETED, d.message
        assert load.last_versions(50) == {"v2"}
        new = {c.name for c in labelled(docker_client, project)}
        assert len(new) == REPLICAS
        assert not new & old
        assert routed(router, project) == new


CRASH_AFTER_HEALTHY = """    command:
      - sh
      - -c
      - |
        trap 'exit 0' TERM
        httpd -p 80 -h /www
        if [ "$$(hostname)" = web-0 ]; then
          sleep 3; echo 'demo: crashing after it got healthy' >&2; exit 3
        fi
        sleep 1000000 & wait
"""
"""v2 whose first replica serves, passes its gate (the image's HEALTHCHECK, ~1 s), is switched
in, then dies 3 s after its start: while later batches roll."""


async def test_a_new_replica_that_dies_after_its_gate_fails_the_roll_and_it_rolls_back(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    url = await serve_v1(service, project)
    old = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, web("moorage-demo:v2") + CRASH_AFTER_HEALTHY)
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    d = state.deployment
    assert d.status == DeploymentStatus.ROLLED_BACK, d.message
    events = [e.event_type for e in state.events]
    passed = [e for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    assert passed[0].details["containers"] == [naming.container_name(TENANT, project, "web", 2, 0)]
    # Slot 0 passed its gate, then a later gate (a batch's, or the service's last) found it dead.
    failed = [e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED]
    assert len(failed) == 1, [e.message for e in state.events]
    assert events.index(EventType.HEALTH_CHECK_FAILED) > events.index(EventType.HEALTH_CHECK_PASSED)
    assert failed[0].details["container"] == naming.container_name(TENANT, project, "web", 2, 0)
    assert "exit code 3" in failed[0].message
    assert "crashing after it got healthy" in failed[0].details["logs"]
    assert EventType.SERVICE_UPDATED not in events
    assert labelled(docker_client, project, revision=str(d.revision)) == []
    assert {c.name for c in labelled(docker_client, project)} == old
    assert routed(router, project) == old
    with Load(url, connections=2, keepalive=False) as load:
        await asyncio.sleep(1)
    assert load.result.failed == 0
    assert set(load.result.versions) == {"v1"}


async def test_nginx_rolling_update_without_keepalive_drops_nothing(
    nginx_service: DeploymentService,
    docker_client: docker.DockerClient,
    nginx_router: TrafficRouter,
    project: str,
) -> None:
    url = await serve_v1(nginx_service, project)
    assert int(url.rsplit(":", 1)[1].strip("/")) >= 23500  # the nginx router's port range
    await nginx_service.apply_project(TENANT, project, web("moorage-demo:v2"))
    await roll_under(Load(url, connections=6, keepalive=False), nginx_service, project)
    assert routed(nginx_router, project) == {c.name for c in labelled(docker_client, project)}


async def roll_under(load: Load, service: DeploymentService, project: str) -> Load:
    """Roll v2 out (:data:`ROLL`) while ``load`` runs: completed, nothing failed, v1 then v2."""
    with load:
        await asyncio.sleep(0.3)
        dep = await service.deploy(TENANT, USER, project, ROLL)
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.5)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["v1"] > 0
    assert load.last_versions(30) == {"v2"}
    return load


async def test_a_tcp_route_rolls_under_load_and_drops_no_connection(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """A service that speaks no HTTP (``x-moorage: {route: tcp}``), 4 replicas rolled while
    clients open a connection per conversation: none fails, and the version flips."""
    await roll_tcp_under_load(service, docker_client, router, project)


async def test_a_tcp_route_rolls_under_load_through_nginx_and_drops_no_connection(
    nginx_service: DeploymentService,
    docker_client: docker.DockerClient,
    nginx_router: TrafficRouter,
    project: str,
) -> None:
    await roll_tcp_under_load(nginx_service, docker_client, nginx_router, project)


async def roll_tcp_under_load(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """v1 then v2 of :func:`tcp_echo`, rolled under :class:`TcpLoad`."""
    await service.apply_project(TENANT, project, tcp_echo("moorage-demo:v1", REPLICAS))
    first = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v1"}))
    state = await wait_terminal(service, first.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    url = (await service.get_project(TENANT, project)).routes["web"]
    assert url.startswith("tcp://127.0.0.1:")
    await service.apply_project(TENANT, project, tcp_echo("moorage-demo:v2", REPLICAS))
    load = await roll_under(TcpLoad(url, connections=4), service, project)
    assert load.result.ok > 100
    assert routed(router, project) == {c.name for c in labelled(docker_client, project)}


async def test_an_undone_deployment_puts_its_route_back_in_the_serving_revision_s_mode(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """A revision that routes ``web`` in TCP mode switches its route at the first step; when it
    fails, the route speaks HTTP again for the revision that serves."""
    url = await serve_v1(service, project)
    crashing = tcp_echo("moorage-demo:v2", REPLICAS).replace("nc -ll", "exit 3; nc -ll")
    await service.apply_project(TENANT, project, crashing)
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    steps = [e.message for e in state.events if e.event_type == EventType.ROLLBACK_STEP]
    assert "routes back on their ports: web (http)" in steps
    assert router.load().routes[route_key(TENANT, project, "web")].mode == "http"
    assert get_version(url) == "v1"
    assert (await service.get_project(TENANT, project)).routes["web"] == url


async def test_invalid_nginx_config_keeps_the_old_one_serving(
    nginx_service: DeploymentService,
    docker_client: docker.DockerClient,
    nginx_router: TrafficRouter,
    project: str,
) -> None:
    url = await serve_v1(nginx_service, project)
    conf = nginx_config(nginx_router).read_text()
    old = {c.name for c in labelled(docker_client, project)}
    await nginx_service.apply_project(TENANT, project, web("moorage-demo:v2"))
    nginx_backend = nginx_router.backend
    assert isinstance(nginx_backend, NginxBackend)
    nginx_backend.extra_http = "this_is_not_a_directive on;"
    try:
        with Load(url, connections=3, keepalive=False) as load:
            dep = await nginx_service.deploy(TENANT, USER, project, ROLL)
            state = await wait_terminal(nginx_service, dep.id)
    finally:
        nginx_backend.extra_http = ""
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    failed = next(e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED)
    assert "nginx -t refused" in failed.message
    assert "this_is_not_a_directive" in failed.message
    assert failed.details["error_type"] == "RouterConfigInvalid"
    assert nginx_config(nginx_router).read_text() == conf
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions.keys() == {"v1"}
    assert {c.name for c in labelled(docker_client, project)} == old


def restart_from_the_config_file(router: TrafficRouter, project: str) -> set[str]:
    """Stop HAProxy and start it from its config file alone, as a supervisor would (not Moorage's
    start, which writes the config from state.json first), with no router step in between.

    Returns:
        The servers the state had for the project's route; the restarted HAProxy has them.
    """
    backend = router.backend
    assert isinstance(backend, HAProxyBackend)
    with router._locked():
        router.stop()
        assert not backend.running()
        wanted = set(router.load().routes[route_key(TENANT, project, "web")].servers)
        subprocess.run(
            [HAPROXY, "-W", "-D", "-f", str(backend.config), "-p", str(backend.pidfile)],
            check=True,
        )
        wait_until(backend.running, 10, "haproxy up from its config file")
        assert routed(router, project) == wanted
    return wanted


async def test_haproxy_restarted_mid_deployment_comes_back_with_its_routes(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """Restarted from the config file on disk alone (as a supervisor would): the routes the
    deployment had set, live; the roll completes through it."""
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    dep = await service.deploy(
        TENANT, USER, project, ROLL.model_copy(update={"health_check_delay": 1.5})
    )
    # Mid-roll: two batches done.
    await wait_status(
        service,
        dep.id,
        lambda s: sum(e.event_type == EventType.HEALTH_CHECK_PASSED for e in s.events) >= 2,
    )
    set_by_deployment = await asyncio.to_thread(restart_from_the_config_file, router, project)
    assert len(set_by_deployment) >= REPLICAS
    assert {n.rsplit("-r", 1)[1].split("-")[0] for n in set_by_deployment} == {
        "1",
        str(dep.revision),
    }
    assert await asyncio.to_thread(get_version, url) in ("v1", "v2")
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert routed(router, project) == {c.name for c in labelled(docker_client, project)}


async def test_a_router_step_that_finds_haproxy_down_starts_it(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2", replicas=2))
    dep = await service.deploy(
        TENANT, USER, project, ROLL.model_copy(update={"health_check_delay": 1.5})
    )
    await wait_status(
        service,
        dep.id,
        lambda s: any(e.event_type == EventType.SERVICE_STARTED for e in s.events),
    )
    router.stop()  # down before the batch's switch: the switch starts it
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert router.backend.running()
    assert routed(router, project) == {c.name for c in labelled(docker_client, project)}
    assert await asyncio.to_thread(get_version, url) == "v2"


async def roll_history(
    service: DeploymentService, project: str, replicas: int, extra: str
) -> WorkflowHistory:
    """Deploy v1, roll to v2 (``replicas`` of each, ``extra`` Compose lines for the service; both
    must complete); the roll's history."""
    await service.apply_project(TENANT, project, web("moorage-demo:v1", replicas) + extra)
    first = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v1"}))
    assert (await wait_terminal(service, first.id)).deployment.status == DeploymentStatus.COMPLETED
    await service.apply_project(TENANT, project, web("moorage-demo:v2", replicas) + extra)
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    return await service.client.get_workflow_handle(
        naming.deployment_workflow_id(TENANT, dep.id)
    ).fetch_history()


def scheduled(history: WorkflowHistory) -> list[str]:
    """The ordinary activities a history scheduled, in order."""
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


def brief_results(
    history: WorkflowHistory, activity_type: str = "wait_healthy_briefly"
) -> list[dict[str, Any]]:
    """What each run of a brief step (a local activity) returned."""
    return [
        m["result"] for m in local_activity_markers(history) if m["activity_type"] == activity_type
    ]


async def test_quick_and_brief_steps_run_as_local_activities_and_waiting_steps_do_not(
    service: DeploymentService, project: str
) -> None:
    """Network, route, the first seconds of health, the switch, the first seconds of a stop,
    remove and list need no server round trip; start does (and the full health wait or the full
    stop, for a replica not ready or not stopped by then)."""
    probe = "    x-moorage:\n      probe: {type: http, port: 80, path: /, interval: 100ms}\n"
    history = await roll_history(service, project, 2, probe)
    remote = scheduled(history)
    local = [m["activity_type"] for m in local_activity_markers(history)]
    # Per replica: the health gate's first 2 s, the switch, the stop's first 2 s and the removal;
    # per service, a last gate of all its new replicas.
    per_replica = ["wait_healthy_briefly", "route_switch", "stop_containers_briefly"]
    assert sorted(local) == sorted(
        ["ensure_network", "ensure_routes", "list_containers", "wait_healthy_briefly"]
        + [*per_replica, "remove_containers"] * 2
    )
    # ``ensure_route``: the one-route step of deployments started before ``routes-at-once``;
    # ``remove_network``: the project workflow's, after its first deployment was undone.
    assert set(local) == (QUICK_STEPS - {"ensure_route", "remove_network"}) | set(per_replica)
    # Start as an activity; a full health wait only after a brief one without a verdict.
    briefs = brief_results(history)
    assert len(briefs) == 3
    assert all(b["checks"] >= 1 for b in briefs)
    # Each gate checks the new replicas so far: 1, then 2, then both again.
    assert [len(b["instances"] or []) for b in briefs if b["instances"] is not None] == [
        n for n, b in zip([1, 2, 2], briefs, strict=True) if b["instances"] is not None
    ]
    unready = sum(b["instances"] is None for b in briefs)
    # The demo image exits on SIGTERM within the brief stop: no full stop.
    stops = brief_results(history, "stop_containers_briefly")
    assert [len(s["stopped"]) for s in stops] == [1, 1]
    assert all(s["running"] == [] for s in stops)
    assert sorted(remote) == sorted(["start_service"] * 2 + ["wait_healthy"] * unready)


async def test_a_replica_still_running_after_the_brief_stop_gets_the_rest_of_its_grace_then_sigkill(
    service: DeploymentService, project: str, docker_client: docker.DockerClient
) -> None:
    """The demo image's init handles TERM and INT only; PID 1 ignores a SIGUSR2 it has no handler
    for. The brief stop sends it and gives up after 2 s; the full stop (an activity) sends nothing
    more, waits out the 3 s left of the 5 s grace, then kills."""
    deaf = "    stop_signal: SIGUSR2\n"
    deaths: list[dict[str, Any]] = []
    since = int(time.time())
    history = await roll_history(service, project, 1, deaf)
    [brief] = brief_results(history, "stop_containers_briefly")
    old = naming.container_name(TENANT, project, "web", 1, 0)
    assert brief["stopped"] == []
    assert brief["running"] == [old]
    assert 2 <= brief["elapsed_s"] < 3
    # (a full health wait too, if Docker's 1 s check was not done within the brief one)
    assert [a for a in scheduled(history) if a != "wait_healthy"] == [
        "start_service",
        "stop_containers",
    ]
    [full] = [
        json.loads(e.activity_task_scheduled_event_attributes.input.payloads[0].data)
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "stop_containers"
    ]
    assert full["signalled"] is True
    assert full["grace_period_s"] == pytest.approx(5 - brief["elapsed_s"])
    for event in docker_client.api.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"container": old, "event": ["kill", "die"]},
    ):
        at = event["timeNano"] / 1e9
        deaths.append({"status": event["status"], "at": at, **event["Actor"]["Attributes"]})
    # One SIGUSR2 from the brief stop, one SIGKILL at the end of the grace: nothing between.
    assert [(d["status"], d.get("signal")) for d in deaths] == [
        ("kill", "12"),
        ("kill", "9"),
        ("die", None),
    ], deaths
    assert deaths[-1]["exitCode"] == "137"
    # SIGKILL once the 5 s grace is over, counted from the signal: not at the end of the brief 2 s.
    assert 4.5 <= deaths[1]["at"] - deaths[0]["at"] < 7, deaths


async def test_a_replica_not_ready_within_the_brief_wait_gets_the_full_wait(
    service: DeploymentService, project: str
) -> None:
    """The image's HEALTHCHECK first runs 3 s after the start: past the local wait's 2 s."""
    slow = "    healthcheck:\n      interval: 3s\n"
    history = await roll_history(service, project, 1, slow)
    brief, last = brief_results(history)
    assert brief["instances"] is None
    assert brief["checks"] >= 1
    assert 1.5 <= brief["used_s"] < 3  # the full wait got the rest of the window
    assert last["instances"] is not None  # the service's last gate: still healthy
    remote = scheduled(history)
    # The full wait follows the start (and the brief wait); the old replica stops briefly.
    assert remote == ["start_service", "wait_healthy"]


def test_a_quick_or_brief_step_sent_to_a_host_queue_is_an_ordinary_activity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not runs_local("start_service")  # it waits: never local
    monkeypatch.setattr(steps, "activity_queue", lambda name: "moorage-host-b")
    assert not any(runs_local(name) for name in QUICK_STEPS | BRIEF_STEPS)


async def test_a_drain_held_past_the_workflow_task_timeout_completes_and_answers_queries(
    temporal_client: Client, docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """A client that stops reading a large answer holds the old replica's session, so the
    switch's drain (a local activity) waits out a 20 s drain timeout: longer than the 10 s
    workflow task timeout. The worker keeps its task alive meanwhile (no task times out, the
    switch runs once), a query made during the drain is answered at its next heartbeat (~16 s,
    while the drain still runs: the stop, removal and record that follow are local too, so the
    task that ends the drain ends the deployment), the deployment completes."""
    blob = tmp_path / "blob"
    blob.mkdir()
    (blob / "big.bin").write_bytes(b"\0" * (64 << 20))
    queue = f"moorage-drain-{uuid.uuid4().hex[:6]}"
    router = build_router(
        Settings(
            router_dir=tmp_path / "router", route_ports=HELD_DRAIN_ROUTE_PORTS, drain_timeout=20
        ),
        docker_client,
    )
    router.ensure_running()
    service = DeploymentService(
        temporal_client,
        Settings(
            task_queue=queue,
            api_keys="",
            tenant_policies=json.dumps({TENANT: {"bind_paths": [str(blob)]}}),
        ),
    )

    def one(image: str) -> str:
        return (
            f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
            f"    volumes: ['{blob}:/www/blob:ro']\n"
            "    deploy:\n      replicas: 1\n    stop_grace_period: 1s\n"
        )

    try:
        async with build_worker(temporal_client, queue, DockerExecutor(docker_client), router):
            await service.apply_project(TENANT, project, one("moorage-demo:v1"))
            first = await service.deploy(
                TENANT, USER, project, ROLL.model_copy(update={"version": "v1"})
            )
            assert (await wait_terminal(service, first.id)).deployment.status == (
                DeploymentStatus.COMPLETED
            )
            port = (await service.get_project(TENANT, project)).routes["web"].rsplit(":", 1)[1]
            await service.apply_project(TENANT, project, one("moorage-demo:v2"))
            with socket.create_connection(("127.0.0.1", int(port.strip("/"))), timeout=5) as held:
                held.sendall(b"GET /blob/big.bin HTTP/1.0\r\n\r\n")
                assert held.recv(1024).startswith(b"HTTP/1.")  # in flight; read no more
                t0 = time.monotonic()
                dep = await service.deploy(TENANT, USER, project, ROLL)
                await wait_status(
                    service,
                    dep.id,
                    lambda s: any(e.event_type == EventType.HEALTH_CHECK_PASSED for e in s.events),
                    timeout=30,
                )
                await asyncio.sleep(3)  # the switch is draining by now
                q0 = time.monotonic()
                during = await service.get_state(TENANT, dep.id)
                query_s = time.monotonic() - q0
                state = await wait_terminal(service, dep.id, timeout=90)
                took = time.monotonic() - t0
    finally:
        router.stop()
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert took >= 18, f"the held request should hold the drain for ~20 s; took {took:.1f} s"
    assert during.deployment.status == DeploymentStatus.IN_PROGRESS, (query_s, took)
    assert query_s < 10, f"a query during the drain waited {query_s:.1f} s"
    history = await temporal_client.get_workflow_handle(
        naming.deployment_workflow_id(TENANT, dep.id)
    ).fetch_history()
    kinds = {e.WhichOneof("attributes") for e in history.events}
    assert "workflow_task_timed_out_event_attributes" not in kinds
    assert "workflow_task_failed_event_attributes" not in kinds
    switches = [m for m in local_activity_markers(history) if m["activity_type"] == "route_switch"]
    assert [m["attempt"] for m in switches] == [1]


async def test_a_cancel_while_the_deployment_is_rolling_back_is_refused(
    service: DeploymentService,
    temporal_client: Client,
    docker_client: docker.DockerClient,
    project: str,
) -> None:
    """Its undo goes on whatever comes: the cancel was answered 202 and did nothing; and a
    cancel of its workflow (the Web UI's, or its project's closing) cancelled the undo step
    running and the rest of the undo: ``failed``, the replaced replica not restored. The old
    revision's healthcheck runs every 3 s, so restoring the replica the roll replaced takes a
    few seconds of ``rolling_back``."""
    slow = "    healthcheck:\n      interval: 3s\n"
    await service.apply_project(TENANT, project, web("moorage-demo:v1", 2) + slow)
    first = await service.deploy(TENANT, USER, project, ROLL.model_copy(update={"version": "v1"}))
    assert (await wait_terminal(service, first.id)).deployment.status == (
        DeploymentStatus.COMPLETED
    )
    old = {c.name for c in labelled(docker_client, project)}
    # The second new replica never gets healthy: the first one, which replaced an old one, is
    # undone by starting that old one again.
    await service.apply_project(TENANT, project, web("moorage-demo:v2", 2, fail_host="web-1"))
    dep = await service.deploy(TENANT, USER, project, ROLL)
    await wait_status(
        service, dep.id, lambda s: s.deployment.status == DeploymentStatus.ROLLING_BACK, 90
    )
    with pytest.raises(ConflictError, match="rolling_back"):
        await service.cancel(TENANT, USER, dep.id)
    await wait_event(service, dep.id, EventType.ROLLBACK_STEP)
    handle = temporal_client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
    await handle.cancel()
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    [told] = [e for e in state.events if e.event_type == EventType.CANCEL_REQUESTED]
    assert told.message.endswith("during the undo: the undo goes on")
    assert {c.name for c in labelled(docker_client, project)} == old
