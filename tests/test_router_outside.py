"""HAProxy run outside Moorage, as the README's production setup: a container on the host network
that shares the router directory at the same path (``MOORAGE_ROUTER_MANAGED=false``). Real engine,
real Temporal, real HAProxy in a real container."""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import tarfile
import urllib.error
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.docker_executor import DockerExecutor
from activities.haproxy import HAPROXY
from activities.inputs import RouteInput
from activities.proxy import ProxyUnavailable
from activities.router import TrafficRouter
from moorage.models import DeploymentStatus, DeployRequest, Strategy
from moorage.service import DeploymentService
from moorage.settings import Settings
from tests.helpers import TENANT, USER, get_version, wait_terminal, wait_until, worker_port_setting
from tests.load import Load
from worker import build_router, build_worker

OUTSIDE_ROUTE_PORTS = worker_port_setting(25000, 25499)
"""The listen ports of the proxy in a container."""

pytestmark = pytest.mark.integration

IMAGE = "moorage-test-haproxy"


def host_haproxy() -> Path:
    """This host's HAProxy binary (the image holds it at the same path)."""
    return Path(shutil.which(HAPROXY) or HAPROXY).resolve()


def haproxy_image(client: docker.DockerClient) -> str:
    """An image of this host's HAProxy binary and the libraries it links (no registry here: in
    production it would be ``haproxy:2.6``); rebuilt when the binary changes."""
    binary = host_haproxy()
    tag = hashlib.sha256(binary.read_bytes()).hexdigest()[:12]
    ref = f"{IMAGE}:{tag}"
    try:
        client.images.get(ref)
        return ref
    except docker.errors.ImageNotFound:
        pass
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    libs = [w for line in ldd.splitlines() for w in line.split() if w.startswith("/")]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in [str(binary), *libs]:
            data = Path(path).resolve().read_bytes()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        passwd = b"root:x:0:0:root:/:/sbin/nologin\n"
        info = tarfile.TarInfo("etc/passwd")
        info.size = len(passwd)
        tar.addfile(info, io.BytesIO(passwd))
    client.api.import_image_from_data(
        buf.getvalue(), repository=IMAGE, tag=tag, changes=[f'CMD ["{binary}", "-v"]']
    )
    return ref


class OutsideProxy:
    """The README's container: host network, the router directory mounted at the same path."""

    def __init__(self, client: docker.DockerClient, directory: Path):
        self.client = client
        self.dir = directory
        self.name = f"moorage-test-haproxy-{uuid.uuid4().hex[:8]}"
        self.container: docker.models.containers.Container | None = None

    def run(self) -> None:
        d = str(self.dir)
        self.container = self.client.containers.run(
            haproxy_image(self.client),
            [str(host_haproxy()), "-W", "-S", f"{d}/master.sock", "-f", f"{d}/haproxy.cfg"],
            name=self.name,
            network_mode="host",
            volumes={d: {"bind": d, "mode": "rw"}},
            detach=True,
        )

    def remove(self) -> None:
        if self.container is not None:
            self.container.remove(force=True)


@pytest.fixture
def outside(
    tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[tuple[TrafficRouter, OutsideProxy]]:
    settings = Settings(
        router="haproxy",
        router_dir=tmp_path / "router",
        route_ports=OUTSIDE_ROUTE_PORTS,
        drain_timeout=5,
        router_managed=False,
    )
    router = build_router(settings, docker_client)
    proxy = OutsideProxy(docker_client, router.dir)
    try:
        yield router, proxy
    finally:
        proxy.remove()


def test_managed_false_is_haproxy_only() -> None:
    with pytest.raises(ValueError, match="MOORAGE_ROUTER_MANAGED=false"):
        Settings(router="nginx", router_managed=False)


async def test_haproxy_in_a_container_serves_routes_rolls_and_comes_back_after_a_restart(
    temporal_client: Client,
    docker_client: docker.DockerClient,
    outside: tuple[TrafficRouter, OutsideProxy],
    project: str,
) -> None:
    router, proxy = outside
    # Not up yet: the worker writes the config the container starts from, and starts nothing.
    with pytest.raises(ProxyUnavailable, match="MOORAGE_ROUTER_MANAGED=false"):
        router.ensure_running()
    assert (router.dir / "haproxy.cfg").exists()
    proxy.run()
    wait_until(router.backend.running)

    queue = f"outside-{uuid.uuid4().hex[:6]}"
    service = DeploymentService(temporal_client, Settings(task_queue=queue))
    compose = "services:\n  web:\n    image: moorage-demo:{v}\n    ports: ['80']\n"
    compose += "    deploy:\n      replicas: 2\n"
    roll = DeployRequest(strategy=Strategy.ROLLING_UPDATE, max_surge=1, max_unavailable=0)
    async with build_worker(temporal_client, queue, DockerExecutor(docker_client), router):
        await service.apply_project(TENANT, project, compose.format(v="v1"))
        dep = await service.deploy(TENANT, USER, project, roll)
        state = await wait_terminal(service, dep.id)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        # The new route's listen port came through a reload on the master CLI.
        url = (await service.get_project(TENANT, project)).routes["web"]
        assert await asyncio.to_thread(get_version, url) == "v1"

        await service.apply_project(TENANT, project, compose.format(v="v2"))
        with Load(url, connections=4, keepalive=True) as load:
            dep = await service.deploy(TENANT, USER, project, roll)
            state = await wait_terminal(service, dep.id)
            await asyncio.sleep(0.3)
        assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
        assert load.result.failed == 0, load.result.errors
        assert load.last_versions(20) == {"v2"}

    # Restarted (by its supervisor, or an operator): it comes back with the current routes.
    assert proxy.container is not None
    proxy.container.restart(timeout=5)
    wait_until(router.backend.running)
    assert get_version(url) == "v2"

    # Stopped: a router step fails, worth retrying, and Moorage starts no HAProxy of its own.
    proxy.container.stop(timeout=5)
    with pytest.raises(ApplicationError) as failed:
        router.ensure_route(
            RouteInput(tenant=TENANT, project=project, service="web", container_port="80/tcp")
        )
    assert failed.value.type == "RouterUnavailable"
    assert not failed.value.non_retryable
    assert not router.backend.running()
    assert not (router.dir / "haproxy.pid").exists()  # never started by Moorage
    with pytest.raises(urllib.error.URLError, match="refused"):
        get_version(url)
