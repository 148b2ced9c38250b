"""Rolling-update benchmark: Moorage vs the same steps done directly vs Docker Swarm.

4 replicas of the demo image, v1 -> v2, max_surge 1, max_unavailable 0, under constant load from
wrk (6 connections, with and without keep-alive; a separate process, as an operator's clients
would be). Prints, in one run on this machine:

* Moorage's wall time and failed requests, per router backend (HAProxy, nginx);
* the floor: the same steps (start, wait healthy, route, drain, stop, remove; one replica at a
  time) called directly in this process, no Temporal;
* Docker Swarm's ``service update --update-order start-first --update-parallelism 1`` on the same
  images (on a second dockerd when the main one runs live-restore, which swarm mode refuses), with
  Swarm's defaults, and once more with ``--update-monitor 1ms`` (Swarm's roll without the 5 s it
  waits after the last task before it calls the update completed);
* the ratios Moorage / floor and Moorage / Swarm.

Usage: ``.venv/bin/python bench/rolling.py`` (needs a Docker engine and wrk, as root; starts its
own Temporal dev server, HAProxy and nginx).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import operator
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import docker
import docker.errors

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from temporalio.client import WorkflowFailureError  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.docker_executor import DockerExecutor  # noqa: E402
from activities.inputs import (  # noqa: E402
    ContainerSelector,
    NetworkInput,
    RouteInput,
    RouteServersInput,
    RouteSwitchInput,
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
from workflows.steps import BRIEF_STOP_S  # noqa: E402

REPLICAS = 4
INTERVAL = DeployRequest.model_fields["health_check_interval"].default
"""Health checks' interval: Moorage's default (the wait also wakes on Docker's health events)."""
TENANT = "bench"
PROBE = "probe"
"""Health gate of the third scenario: Moorage's own HTTP probe every 100 ms."""


class Wrk:
    """wrk as the load generator: a separate process, so it takes no GIL from the worker.

    ``result`` once the block ends: requests and failures (non-2xx answers + socket errors).
    """

    rate: int | None = None
    """Requests per second of all connections together (``--rate``); None: as many as wrk can."""

    def __init__(self, url: str, connections: int, keepalive: bool):
        self.args = ["wrk", "-c", str(connections), "-t", "2", "-d", "600s", "--timeout", "10s"]
        if not keepalive:
            self.args += ["-H", "Connection: close"]
        self.script: IO[str] | None = None
        if self.rate is not None:
            # Each connection waits this long before each request: a steady rate, not a flood.
            self.script = tempfile.NamedTemporaryFile("w", suffix=".lua")  # noqa: SIM115
            self.script.write(f"function delay() return {1000 * connections // self.rate} end\n")
            self.script.flush()
            self.args += ["-s", self.script.name]
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
        if self.script is not None:
            self.script.close()
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sockets = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        self.failed = (int(non_2xx.group(1)) if non_2xx else 0) + (
            sum(int(n) for n in sockets.groups()) if sockets else 0
        )


class CpuMeter:
    """CPU seconds spent by the Temporal dev server and by this process (worker or floor calls).

    On 2 cores that wrk keeps busy, the CPU the orchestration needs is taken from dockerd and the
    containers: it shows up in wall time, not only in these figures.
    """

    def __init__(self, server_port: str):
        self.server_pid: int | None = None
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                args = (entry / "cmdline").read_bytes().split(b"\0")
                if b"start-dev" in args and server_port.encode() in args:
                    self.server_pid = int(entry.name)
                    break
        if self.server_pid is None:
            print(f"cpu: no Temporal dev server process on port {server_port} found; shows 0")

    def _server(self) -> float:
        if self.server_pid is None:
            return 0.0
        fields = Path(f"/proc/{self.server_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @contextmanager
    def measure(self) -> Iterator[list[float]]:
        """Yields a list that holds [server CPU s, own CPU s] once the block ends."""
        result: list[float] = []
        server, own = self._server(), time.process_time()
        yield result
        result += [self._server() - server, time.process_time() - own]


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


async def wait_released(svc: DeploymentService, project: str, dep_id: str) -> None:
    """Wait until the deployment is over and its project has recorded the result (let go of it).

    A long poll on the strategy workflow's result, then short polls of the project. (Polling
    queries every 100 ms, as this did before, cost ~1 CPU-second per run in the worker and the
    Temporal server: on 2 cores that slowed the deployment it measured by 0.5-1 s. Querying the
    closed strategy workflow made the worker replay its whole history: ~30 ms that ended up in
    every measured run.)
    """
    handle = svc.client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep_id))
    with contextlib.suppress(WorkflowFailureError):  # the status says how it ended
        await handle.result()
    while True:
        if (await svc.get_project(TENANT, project)).active_deployment_id != dep_id:
            return
        await asyncio.sleep(0.005)


async def wait_done(svc: DeploymentService, project: str, dep_id: str) -> DeploymentStatus:
    """Wait as :func:`wait_released`; returns how the deployment ended."""
    await wait_released(svc, project, dep_id)
    return (await svc.get_state(TENANT, dep_id)).deployment.status


async def moorage_run(
    env: WorkflowEnvironment,
    kind: str,
    workdir: Path,
    client: docker.DockerClient,
    keepalive: bool,
    meter: CpuMeter,
    health_interval: str | None = None,
) -> tuple[float, int, int, list[float]]:
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
        assert await wait_done(svc, project, first.id) == DeploymentStatus.COMPLETED
        url = (await svc.get_project(TENANT, project)).routes["web"]
        await svc.apply_project(TENANT, project, compose("moorage-demo:v2", health_interval))
        with Wrk(url, connections=6, keepalive=keepalive) as load:
            await asyncio.sleep(0.5)
            with meter.measure() as cpu:
                t0 = time.monotonic()
                dep = await svc.deploy(
                    TENANT, "bench", project, cfg.model_copy(update={"version": "v2"})
                )
                await wait_released(svc, project, dep.id)
                wall = time.monotonic() - t0
            await asyncio.sleep(0.5)
        status = (await svc.get_state(TENANT, dep.id)).deployment.status
        assert status == DeploymentStatus.COMPLETED, status
        return wall, load.failed, load.requests - load.failed, cpu
    finally:
        await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        cleanup(client, project)
        router.stop()


class DirectStack:
    """One service of the demo image behind HAProxy, driven by direct calls: no Temporal.

    The floor rolls it; it also serves the load while Swarm rolls its own service, so both tools
    run with the machine equally busy.
    """

    def __init__(
        self, workdir: Path, client: docker.DockerClient, health_interval: str | None = None
    ):
        self.executor = DockerExecutor(client)
        self.router: TrafficRouter = build_router(
            Settings(router="haproxy", router_dir=workdir / "direct", route_ports="24000-24999"),
            client,
        )
        self.project = f"benchfl{uuid.uuid4().hex[:6]}"
        self.specs = {
            rev: parse_compose(compose(f"moorage-demo:v{rev}", health_interval)).service("web")
            for rev in (1, 2)
        }

    def __enter__(self) -> DirectStack:
        self.router.ensure_running()
        try:
            self.executor.ensure_network(NetworkInput(tenant=TENANT, project=self.project))
            self.url = self.router.ensure_route(
                RouteInput(
                    tenant=TENANT, project=self.project, service="web", container_port="80/tcp"
                )
            ).url
            self.up(1, list(range(REPLICAS)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        cleanup(self.executor.client, self.project)
        self.router.stop()

    def _route_input(self, rev: int, slots: list[int]) -> RouteServersInput:
        names = [naming.container_name(TENANT, self.project, "web", rev, s) for s in slots]
        return RouteServersInput(
            tenant=TENANT, project=self.project, service="web", containers=names
        )

    def _selector(self, rev: int, slots: list[int]) -> ContainerSelector:
        return ContainerSelector(
            tenant=TENANT, project=self.project, service="web", revision=rev, slots=slots
        )

    def prepare(self) -> None:
        """The first steps of every deployment: the project network and the route (both exist)."""
        self.executor.ensure_network(NetworkInput(tenant=TENANT, project=self.project))
        self.router.ensure_route(
            RouteInput(tenant=TENANT, project=self.project, service="web", container_port="80/tcp")
        )

    def up(
        self, rev: int, slots: list[int], route: bool = True, serving: tuple[int, ...] = ()
    ) -> None:
        """Start replicas of revision ``rev``; gate them (and ``serving``) healthy; route them."""
        spec = self.specs[rev]
        self.executor.start_service(
            StartServiceInput(
                tenant=TENANT,
                project=self.project,
                deployment_id="floor",
                revision=rev,
                version=f"v{rev}",
                service=spec,
                slots=slots,
            )
        )
        self.gate(rev, [*serving, *slots])
        if route:
            self.router.route_add(self._route_input(rev, slots))

    def gate(self, rev: int, slots: list[int]) -> None:
        """The health gate of replicas of revision ``rev``."""
        self.executor.wait_healthy(
            WaitHealthyInput(
                selector=self._selector(rev, slots),
                expected=len(slots),
                interval_s=INTERVAL,
                retries=200,
                probe=self.specs[rev].probe,
            )
        )

    def switch(self, new: tuple[int, list[int]], old: tuple[int, list[int]]) -> None:
        """Route the new replicas and drain the old ones out, in one change (as the workflow)."""
        self.router.route_switch(
            RouteSwitchInput(
                tenant=TENANT,
                project=self.project,
                service="web",
                add=self._route_input(*new).containers,
                remove=self._route_input(*old).containers,
            )
        )

    def retire(self, rev: int, slots: list[int]) -> None:
        """Stop drained replicas as the workflow does (the signal and a brief wait; the full stop
        only for one still running), remove them."""
        stop = StopContainersInput(selector=self._selector(rev, slots), grace_period_s=5)
        brief = self.executor.stop_containers_briefly(stop.briefly(BRIEF_STOP_S))
        if brief.running:
            self.executor.stop_containers(stop.after(brief))
        self.executor.remove_containers(self._selector(rev, slots))


def floor_run(
    workdir: Path, client: docker.DockerClient, meter: CpuMeter, health_interval: str | None = None
) -> tuple[float, int, int, list[float]]:
    """The same steps as Moorage's rolling update, called directly: no Temporal, no workflow.

    Network and route (they exist), then per replica: start, wait healthy (it and the new replicas
    before it), switch traffic, stop, remove; then all the new replicas' last health gate, and
    the new revision's containers are listed (the workflow records them).
    """
    with DirectStack(workdir, client, health_interval) as stack:
        with Wrk(stack.url, connections=6, keepalive=True) as load:
            time.sleep(0.5)
            with meter.measure() as cpu:
                t0 = time.monotonic()
                stack.prepare()
                for slot in range(REPLICAS):
                    stack.up(2, [slot], route=False, serving=tuple(range(slot)))
                    stack.switch((2, [slot]), (1, [slot]))
                    stack.retire(1, [slot])
                stack.gate(2, list(range(REPLICAS)))  # the service's last gate
                stack.executor.list_containers(stack._selector(2, list(range(REPLICAS))))
                wall = time.monotonic() - t0
            time.sleep(0.5)
        return wall, load.failed, load.requests - load.failed, cpu


def swarm_loaded_runs(
    workdir: Path,
    client: docker.DockerClient,
    env: dict[str, str],
    health_interval: str | None,
    monitors: tuple[str | None, ...],
) -> list[float | None]:
    """Swarm's rolling update, once per ``--update-monitor`` value, while the same wrk load runs.

    Swarm's routing mesh does not work on this kernel, so the load cannot go through Swarm: it
    goes to a v1 stack behind HAProxy on the main engine instead (the floor's), which keeps the
    machine as busy as during Moorage's run. One stack and one load serve every run.
    """
    with (
        DirectStack(workdir, client, health_interval) as stack,
        Wrk(stack.url, connections=6, keepalive=True),
    ):
        time.sleep(0.5)
        return [swarm_run(env, health_interval, monitor) for monitor in monitors]


NETNS = "moorage-bench-swarm"


@contextmanager
def swarm_engine(client: docker.DockerClient) -> Iterator[dict[str, str] | None]:
    """An engine that can run swarm mode; yields the environment for the docker CLI (None: no
    engine for Swarm here; the bench goes on without it).

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
            # The issue asks for Swarm "where the engine can run swarm mode": go on without it.
            print(f"swarm: skipped, the second dockerd did not start (see {root / 'dockerd.log'})")
            yield None
            return
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


SWARM_SHORT_MONITOR = "1ms"
"""``--update-monitor`` for Swarm's roll without its stability wait (0 means the default, 5 s).

Swarm marks an update completed only once the last new task has run for the monitor period
(``UpdateConfig.Monitor``, 5 s by default; ``docker service update`` waits for that): of Swarm's
default figure, ~5 s is that wait. Moorage has no such wait by default (``min_ready_seconds``, per
batch, is the nearest thing). The bench measures Swarm both ways; the targets use the default.
"""


def swarm_run(
    env: dict[str, str], health_interval: str | None = None, monitor: str | None = None
) -> float | None:
    """Docker Swarm's start-first rolling update of the same images (None: no swarm mode).

    ``monitor``: Swarm's ``--update-monitor``; None leaves Swarm's default (5 s).
    """
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
                *(["--update-monitor", monitor] if monitor else []),
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


SCENARIOS: dict[str, str | None] = {"1s": None, "250ms": "250ms", "probe": PROBE}
"""Health gates: the image's own HEALTHCHECK, the same every 250 ms, Moorage's HTTP probe."""


@dataclass
class Row:
    """One kind of run, repeated: wall times and failed/total requests of every repeat."""

    name: str
    walls: list[float]
    failed: int = 0
    requests: int = 0
    cpus: list[list[float]] = field(default_factory=list)

    def add(self, wall: float, failed: int, ok: int, cpu: list[float] | None = None) -> None:
        self.walls.append(wall)
        self.failed += failed
        self.requests += failed + ok
        if cpu:
            self.cpus.append(cpu)

    def cpu(self) -> str:
        """Median CPU seconds of the Temporal server and of this process, per run."""
        if not self.cpus:
            return ""
        server = statistics.median(c[0] for c in self.cpus)
        own = statistics.median(c[1] for c in self.cpus)
        return f"{server:.2f} / {own:.2f}"

    @property
    def median(self) -> float:
        return statistics.median(self.walls)

    def spread(self) -> str:
        return f"{min(self.walls):.2f}-{max(self.walls):.2f}" if len(self.walls) > 1 else ""


def _row(rows: dict[str, Row], key: str, name: str) -> Row:
    return rows.setdefault(key, Row(name, []))


async def main(scenarios: list[str], repeat: int) -> None:
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
    meter = CpuMeter(env.client.service_client.config.target_host.rsplit(":", 1)[1])
    results: dict[str, dict[str, Row]] = {}
    stack = ExitStack()
    try:
        swarm_env = stack.enter_context(swarm_engine(client))
        for scenario in scenarios:
            interval = SCENARIOS[scenario]
            rows = results[scenario] = {}
            row = functools.partial(_row, rows)

            runs = (("haproxy", True), ("haproxy", False), ("nginx", False), ("nginx", True))
            for _ in range(repeat):
                for kind, keepalive in runs if interval is None else runs[:1]:
                    mode = "keep-alive" if keepalive else "no keep-alive"
                    row(f"{kind}-{mode}", f"moorage {kind} ({mode})").add(
                        *await moorage_run(env, kind, workdir, client, keepalive, meter, interval)
                    )
                row("floor", "floor: same steps, direct calls, no Temporal (haproxy)").add(
                    *await asyncio.to_thread(floor_run, workdir, client, meter, interval)
                )
                if swarm_env is None:
                    continue
                loaded, short = await asyncio.to_thread(
                    swarm_loaded_runs,
                    workdir,
                    client,
                    swarm_env,
                    interval,
                    (None, SWARM_SHORT_MONITOR),
                )
                idle = await asyncio.to_thread(swarm_run, swarm_env, interval)
                if loaded is not None and idle is not None and short is not None:
                    row(
                        "swarm-loaded", "docker swarm service update, same load on the machine"
                    ).add(loaded, 0, 0)
                    row("swarm-idle", "docker swarm service update, idle machine").add(idle, 0, 0)
                    row(
                        "swarm-short",
                        f"docker swarm, same load, --update-monitor {SWARM_SHORT_MONITOR}",
                    ).add(short, 0, 0)
    finally:
        await env.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
        stack.close()

    for scenario, rows in results.items():
        health = {
            "1s": "the image's HEALTHCHECK (every 1s)",
            "probe": "Moorage's HTTP probe every 100ms (Swarm: HEALTHCHECK every 100ms)",
        }.get(scenario, f"HEALTHCHECK every {scenario}")
        pace = f"{Wrk.rate} requests/s" if Wrk.rate else "as fast as wrk can"
        print(
            f"\nrolling update, {REPLICAS} replicas, max_surge 1, max_unavailable 0, v1 -> v2, "
            f"6 connections of load ({pace}); health gate: {health}; median of {repeat} run(s)"
        )
        print(
            f"{'run':58} {'wall s':>7} {'min-max':>11} {'failed':>7} {'requests':>9}"
            f" {'cpu s: temporal / bench process':>32}"
        )
        for key, r in rows.items():
            load = "" if key.startswith("swarm") else f"{r.failed:7d} {r.requests:9d}"
            print(f"{r.name:58} {r.median:7.2f} {r.spread():>11} {load} {r.cpu():>32}")
        moorage = rows["haproxy-keep-alive"]
        print(
            f"ratio moorage(haproxy) / floor: {moorage.median / rows['floor'].median:.2f}"
            f"{paired(moorage, rows['floor'])}  (target <= 1.15)"
        )
        print(f"moorage(haproxy) - floor: {overhead(moorage, rows['floor'])}  (no target)")
        for key, label, target in (
            ("swarm-loaded", "same load", "  (target <= 0.5)"),
            ("swarm-idle", "idle machine", "  (target <= 0.5)"),
            ("swarm-short", f"same load, monitor {SWARM_SHORT_MONITOR}", "  (no target)"),
        ):
            if key in rows:
                print(
                    f"ratio moorage(haproxy) / swarm ({label}): "
                    f"{moorage.median / rows[key].median:.2f}{paired(moorage, rows[key])}{target}"
                )
        if "swarm-short" in rows:
            print(
                f"ratio floor / swarm (same load, monitor {SWARM_SHORT_MONITOR}): "
                f"{rows['floor'].median / rows['swarm-short'].median:.2f}"
                f"{paired(rows['floor'], rows['swarm-short'])}"
            )


def run_by_run(a: Row, b: Row, op: Callable[[float, float], float]) -> list[float]:
    """``op`` of each repeat's two runs (a's, b's); none unless both have the same repeats (2+)."""
    if len(a.walls) < 2 or len(a.walls) != len(b.walls):
        return []
    return [op(x, y) for x, y in zip(a.walls, b.walls, strict=True)]


def overhead(a: Row, b: Row) -> str:
    """What ``a`` adds to ``b`` in seconds: the medians' difference, and run by run.

    The time an orchestrator adds is mostly fixed per roll, so under a light load, where the floor
    is short, it weighs more in the ratio than under a heavy one: the difference shows it whole.
    """
    diffs = run_by_run(a, b, operator.sub)
    text = f"{a.median - b.median:+.2f} s"
    if diffs:
        text += (
            f"; run by run: median {statistics.median(diffs):+.2f} s"
            f" ({min(diffs):+.2f} to {max(diffs):+.2f})"
        )
    return text


def paired(a: Row, b: Row) -> str:
    """The ratio a / b run by run (each repeat runs both within a minute), as median and range.

    This machine's speed drifts by ~15% over minutes; a ratio of runs made side by side is steadier
    than a ratio of medians taken over the whole pass.
    """
    ratios = run_by_run(a, b, operator.truediv)
    if not ratios:
        return ""
    return (
        f"; run by run: median {statistics.median(ratios):.2f}"
        f" ({min(ratios):.2f}-{max(ratios):.2f})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs of each kind; the figures are medians"
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="health gate(s) to run (default: all)",
    )
    parser.add_argument(
        "--rate",
        type=int,
        help="requests per second of the load, all connections together (default: as many as "
        "wrk can send, which keeps both cores busy)",
    )
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if args.rate is not None and not 6 <= args.rate <= 6000:
        parser.error("--rate: between 6 and 6000 requests per second")
    Wrk.rate = args.rate
    asyncio.run(main(args.scenario or list(SCENARIOS), args.repeat))
