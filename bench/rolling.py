"""Rolling-update benchmark: Moorage vs the same steps done directly vs Docker Swarm.

4 replicas of the demo image, v1 -> v2, max_surge 1, max_unavailable 0, under constant load from
wrk (6 connections, with and without keep-alive; a separate process, as an operator's clients
would be). Prints, in one run on this machine:

* Moorage's wall time and failed requests, per router backend (HAProxy, nginx);
* the floor: the same steps (start, wait healthy, route, drain, stop, remove; one replica at a
  time) called directly in this process, no Temporal;
* Docker Swarm's ``service update --update-order start-first --update-parallelism 1`` on the same
  images (on a second dockerd when the main one runs live-restore, which swarm mode refuses);
* the ratios Moorage / floor and Moorage / Swarm.

Usage: ``.venv/bin/python bench/rolling.py`` (needs a Docker engine and wrk, as root; starts its
own Temporal dev server, HAProxy and nginx).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.docker_executor import DockerExecutor  # noqa: E402
from activities.inputs import (  # noqa: E402
    ContainerSelector,
    RouteInput,
    RouteServersInput,
    StartServiceInput,
    StopContainersInput,
    WaitHealthyInput,
)
from activities.router import TrafficRouter  # noqa: E402
from moorage import images, naming  # noqa: E402
from moorage.compose import parse_compose  # noqa: E402
from moorage.models import DeploymentStatus, DeployRequest, Strategy  # noqa: E402
from moorage.service import DeploymentService  # noqa: E402
from moorage.settings import Settings  # noqa: E402
from worker import build_router, build_worker  # noqa: E402
from workflows import search_attributes as sa  # noqa: E402

REPLICAS = 4
INTERVAL = 0.25  # health poll interval, the same for Moorage and the floor
TENANT = "bench"
PROBE = "probe"
"""Health gate of the third scenario: Moorage's own HTTP probe every 100 ms."""


class Wrk:
    """wrk as the load generator: a separate process, so it takes no GIL from the worker.

    ``result`` once the block ends: requests and failures (non-2xx answers + socket errors).
    """

    def __init__(self, url: str, connections: int, keepalive: bool):
        self.args = ["wrk", "-c", str(connections), "-t", "2", "-d", "600s", "--timeout", "10s"]
        if not keepalive:
            self.args += ["-H", "Connection: close"]
        self.args.append(url.rstrip("/") + "/version")
        self.requests = self.failed = 0

    def __enter__(self) -> Wrk:
        if shutil.which("wrk") is None:
            raise RuntimeError("wrk is missing: apt-get install wrk")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGINT)  # wrk prints its summary when interrupted
        out, _ = self.proc.communicate(timeout=30)
        found = re.search(r"(\d+) requests in", out)
        if found is None:
            raise RuntimeError(f"wrk printed no summary: {out}")
        self.requests = int(found.group(1))
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sockets = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        self.failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
            sum(int(n) for n in sockets.groups()) if sockets else 0
        )


def compose(image: str, health_interval: str | None = None) -> str:
    text = (
        f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
        f"    deploy:\n      replicas: {REPLICAS}\n    stop_grace_period: 5s\n"
    )
    if health_interval == PROBE:
        # Moorage's own HTTP probe (Swarm gets a HEALTHCHECK at the same interval).
        text += "    x-moorage:\n      probe: {type: http, port: 80, path: /, interval: 100ms}\n"
    elif health_interval:
        # The image's own check, run more often (Swarm gets the same via --health-interval).
        text += f"    healthcheck:\n      interval: {health_interval}\n"
    return text


def cleanup(client: docker.DockerClient, project: str) -> None:
    DockerExecutor(client).purge_project(project)


async def wait_done(svc: DeploymentService, dep_id: str) -> DeploymentStatus:
    while True:
        state = await svc.get_state(TENANT, dep_id)
        project = await svc.get_project(TENANT, state.deployment.project_id)
        if state.deployment.status.terminal and project.active_deployment_id != dep_id:
            return state.deployment.status
        await asyncio.sleep(0.1)


async def moorage_run(
    env: WorkflowEnvironment,
    kind: str,
    workdir: Path,
    client: docker.DockerClient,
    keepalive: bool,
    health_interval: str | None = None,
) -> tuple[float, int, int]:
    queue = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        task_queue=queue, router=kind, router_dir=workdir / kind, route_ports="24000-24999"
    )
    router = build_router(settings, client)
    router.ensure_running()
    worker = build_worker(env.client, queue, DockerExecutor(client), router)
    task = asyncio.create_task(worker.run())
    svc = DeploymentService(env.client, settings)
    project = f"bench{kind[:2]}{uuid.uuid4().hex[:6]}"
    cfg = DeployRequest(
        strategy=Strategy.ROLLING_UPDATE,
        max_surge=1,
        max_unavailable=0,
        health_check_interval=INTERVAL,
    )
    try:
        await svc.apply_project(TENANT, project, compose("moorage-demo:v1", health_interval))
        first = await svc.deploy(TENANT, "bench", project, cfg.model_copy(update={"version": "v1"}))
        assert await wait_done(svc, first.id) == DeploymentStatus.COMPLETED
        url = (await svc.get_project(TENANT, project)).routes["web"]
        await svc.apply_project(TENANT, project, compose("moorage-demo:v2", health_interval))
        with Wrk(url, connections=6, keepalive=keepalive) as load:
            await asyncio.sleep(0.5)
            t0 = time.monotonic()
            dep = await svc.deploy(
                TENANT, "bench", project, cfg.model_copy(update={"version": "v2"})
            )
            status = await wait_done(svc, dep.id)
            wall = time.monotonic() - t0
            await asyncio.sleep(0.5)
        assert status == DeploymentStatus.COMPLETED, status
        return wall, load.failed, load.requests - load.failed
    finally:
        await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        cleanup(client, project)
        router.stop()


def floor_run(
    workdir: Path, client: docker.DockerClient, health_interval: str | None = None
) -> tuple[float, int, int]:
    """The same steps, called directly: no Temporal, no workflow."""
    executor = DockerExecutor(client)
    router: TrafficRouter = build_router(
        Settings(router="haproxy", router_dir=workdir / "floor", route_ports="24000-24999"), client
    )
    router.ensure_running()
    project = f"benchfl{uuid.uuid4().hex[:6]}"
    spec1 = parse_compose(compose("moorage-demo:v1", health_interval)).service("web")
    spec2 = parse_compose(compose("moorage-demo:v2", health_interval)).service("web")
    from activities.inputs import NetworkInput

    executor.ensure_network(NetworkInput(tenant=TENANT, project=project))
    info = router.ensure_route(
        RouteInput(tenant=TENANT, project=project, service="web", container_port="80/tcp")
    )

    def names(rev: int, slots: list[int]) -> list[str]:
        return [naming.container_name(TENANT, project, "web", rev, s) for s in slots]

    def up(rev: int, spec, slots: list[int]) -> None:  # type: ignore[no-untyped-def]
        executor.start_service(
            StartServiceInput(
                tenant=TENANT,
                project=project,
                deployment_id="floor",
                revision=rev,
                version=f"v{rev}",
                service=spec,
                slots=slots,
            )
        )
        sel = ContainerSelector(
            tenant=TENANT, project=project, service="web", revision=rev, slots=slots
        )
        executor.wait_healthy(
            WaitHealthyInput(
                selector=sel,
                expected=len(slots),
                interval_s=INTERVAL,
                retries=200,
                probe=spec.probe,
            )
        )
        router.route_add(
            RouteServersInput(
                tenant=TENANT, project=project, service="web", containers=names(rev, slots)
            )
        )

    def out(rev: int, slots: list[int]) -> None:
        router.route_remove(
            RouteServersInput(
                tenant=TENANT, project=project, service="web", containers=names(rev, slots)
            )
        )

    def dispose(rev: int, slots: list[int]) -> None:
        sel = ContainerSelector(
            tenant=TENANT, project=project, service="web", revision=rev, slots=slots
        )
        executor.stop_containers(StopContainersInput(selector=sel, grace_period_s=5))
        executor.remove_containers(sel)

    try:
        up(1, spec1, list(range(REPLICAS)))
        with Wrk(info.url, connections=6, keepalive=True) as load:
            time.sleep(0.5)
            t0 = time.monotonic()
            for slot in range(REPLICAS):
                up(2, spec2, [slot])
                out(1, [slot])
                dispose(1, [slot])
            wall = time.monotonic() - t0
            time.sleep(0.5)
        return wall, load.failed, load.requests - load.failed
    finally:
        cleanup(client, project)
        router.stop()


NETNS = "moorage-bench-swarm"


@contextmanager
def swarm_engine(client: docker.DockerClient) -> Iterator[dict[str, str]]:
    """An engine that can run swarm mode; yields the environment for the docker CLI.

    Swarm mode refuses a dockerd with live-restore, which Moorage's engine runs with
    (scripts/ensure-engine.sh). Then a second dockerd on this machine, in a network namespace of
    its own (its bridges and iptables never touch the host's) with its own data root and socket,
    gets the same demo images.
    """
    if not client.info().get("LiveRestoreEnabled"):
        yield dict(os.environ)
        return
    root = Path(tempfile.mkdtemp(prefix="moorage-bench-swarm-"))
    (root / "daemon.json").write_text("{}")
    sock = root / "docker.sock"
    subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    subprocess.run(["ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up"], check=True)
    log = (root / "dockerd.log").open("wb")
    proc = subprocess.Popen(
        [
            # nsenter, not `ip netns exec`: that remounts /sys and hides the cgroups dockerd needs.
            "nsenter", f"--net=/run/netns/{NETNS}",
            "dockerd",
            "--config-file", str(root / "daemon.json"),
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "docker.pid"),
            "-H", f"unix://{sock}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        second: docker.DockerClient | None = None
        for _ in range(150):
            try:
                second = docker.DockerClient(base_url=f"unix://{sock}", timeout=120)
                break
            except docker.errors.DockerException:  # not up yet
                time.sleep(0.2)
        if second is None:
            raise RuntimeError(f"the second dockerd did not start; see {root / 'dockerd.log'}")
        images.build_all(second)
        print(
            "swarm: on a second dockerd in its own network namespace (the main one: live-restore)"
        )
        yield env
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
        subprocess.run(["umount", "-R", str(root / "exec")], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True, check=False)
        shutil.rmtree(root, ignore_errors=True)


def swarm_run(env: dict[str, str], health_interval: str | None = None) -> float | None:
    """Docker Swarm's start-first rolling update of the same images (None: no swarm mode)."""
    joined = False
    run = functools.partial(subprocess.run, env=env)
    info = run(
        ["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if info.stdout.strip() != "active":
        result = run(
            ["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            print(f"swarm: not available ({result.stderr.strip()})")
            return None
        joined = True
    name = f"benchswarm{uuid.uuid4().hex[:6]}"
    try:
        run(
            [
                "docker",
                "service",
                "create",
                "--detach=false",
                "--quiet",
                "--name",
                name,
                "--replicas",
                str(REPLICAS),
                "--stop-grace-period",
                "5s",
                *(
                    ["--health-interval", "100ms" if health_interval == PROBE else health_interval]
                    if health_interval
                    else []
                ),
                "moorage-demo:v1",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        t0 = time.monotonic()
        run(
            [
                "docker",
                "service",
                "update",
                "--detach=false",
                "--quiet",
                "--image",
                "moorage-demo:v2",
                "--update-order",
                "start-first",
                "--update-parallelism",
                "1",
                "--update-delay",
                "0s",
                name,
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return time.monotonic() - t0
    finally:
        run(["docker", "service", "rm", name], capture_output=True, check=False)
        if joined:
            run(["docker", "swarm", "leave", "--force"], capture_output=True, check=False)


async def main() -> None:
    client = docker.from_env(timeout=120)
    images.build_all(client)
    workdir = Path(tempfile.mkdtemp(prefix="moorage-bench-"))
    temporal = Path(sys.executable).parent / "temporal"
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal if temporal.exists() else shutil.which("temporal")),
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
        dev_server_log_level="error",
    )
    results: dict[str | None, tuple[list[tuple[str, float, int, int]], float | None]] = {}
    stack = ExitStack()
    try:
        swarm_env = stack.enter_context(swarm_engine(client))
        for interval in (None, "250ms", PROBE):
            rows: list[tuple[str, float, int, int]] = []
            runs = (("haproxy", True), ("haproxy", False), ("nginx", False), ("nginx", True))
            for kind, keepalive in runs if interval is None else runs[:1]:
                wall, failed, ok = await moorage_run(
                    env, kind, workdir, client, keepalive, interval
                )
                mode = "keep-alive" if keepalive else "no keep-alive"
                rows.append((f"moorage {kind} ({mode})", wall, failed, ok))
            floor = await asyncio.to_thread(floor_run, workdir, client, interval)
            rows.append(("floor: same steps, direct calls, no Temporal (haproxy)", *floor))
            swarm = await asyncio.to_thread(swarm_run, swarm_env, interval)
            results[interval] = (rows, swarm)
    finally:
        await env.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
        stack.close()

    for interval, (rows, swarm) in results.items():
        health = {
            None: "the image's HEALTHCHECK (every 1s)",
            PROBE: "Moorage's HTTP probe every 100ms (Swarm: HEALTHCHECK every 100ms)",
        }.get(interval, f"HEALTHCHECK every {interval}")
        print(
            f"\nrolling update, {REPLICAS} replicas, max_surge 1, max_unavailable 0, v1 -> v2, "
            f"6 connections of load; health gate: {health}"
        )
        print(f"{'run':58} {'wall s':>7} {'failed':>7} {'requests':>9}")
        for name, wall, failed, ok in rows:
            print(f"{name:58} {wall:7.2f} {failed:7d} {ok + failed:9d}")
        if swarm is not None:
            print(f"{'docker swarm service update (start-first, parallelism 1)':58} {swarm:7.2f}")
        moorage_haproxy, floor_wall = rows[0][1], rows[-1][1]
        print(
            f"ratio moorage(haproxy) / floor: {moorage_haproxy / floor_wall:.2f}  (target <= 1.15)"
        )
        if swarm is not None:
            print(f"ratio moorage(haproxy) / swarm: {moorage_haproxy / swarm:.2f}  (target <= 0.5)")


if __name__ == "__main__":
    asyncio.run(main())
