"""x-moorage probes (HTTP, TCP), min_ready_seconds, the progress deadline and how the health wait
wakes on the engine's events, on the real parts."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, cast

import docker
import pytest
from temporalio.exceptions import ApplicationError

from activities import health, probes
from activities.docker_executor import DockerExecutor
from activities.health import StateChanges
from activities.inputs import ContainerSelector, WaitHealthyInput
from moorage.compose import ProbeSpec, parse_compose
from moorage.models import DeploymentStatus, DeployRequest, EventType, Strategy
from moorage.service import DeploymentService
from tests.helpers import TENANT, USER, labelled, start_web, wait_terminal

pytestmark = pytest.mark.integration


def probed(probe: str = "", extra: str = "", image: str = "moorage-demo:v1") -> str:
    text = f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
    text += "    deploy:\n      replicas: 2\n"
    if probe or extra:
        text += "    x-moorage:\n"
    if probe:
        text += f"      probe: {probe}\n"
    if extra:
        text += f"      {extra}\n"
    return text


ROLL = DeployRequest(
    strategy=Strategy.ROLLING_UPDATE, health_check_retries=8, health_check_interval=0.5
)


@pytest.mark.parametrize(
    "probe",
    ["{type: http, path: /version, status: 200}", "{type: tcp, port: 80}"],
)
async def test_probe_that_passes(service: DeploymentService, project: str, probe: str) -> None:
    await service.apply_project(TENANT, project, probed(probe))
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message


async def test_http_probe_with_the_wrong_status_never_passes(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(
        TENANT, project, probed("{type: http, path: /missing, status: 200}")
    )
    dep = await service.deploy(TENANT, USER, project, ROLL)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    assert "GET /missing: status 404, expected 200" in failed.message
    # Docker's own HEALTHCHECK passes all along: the replica named is the one the probe failed,
    # with its log.
    assert failed.details["container"].startswith(f"moorage-{TENANT}-{project}-web-r1-"), (
        failed.details
    )
    assert "demo: serving version v1" in failed.details["logs"]
    assert labelled(docker_client, project) == []


async def test_tcp_probe_of_a_port_nothing_listens_on_never_passes(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    text = probed("{type: tcp, port: 81}").replace("ports: ['80']", "ports: ['80', '81']")
    await service.apply_project(TENANT, project, text)
    dep = await service.deploy(
        TENANT, USER, project, ROLL.model_copy(update={"health_check_retries": 4})
    )
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    assert "tcp connect: " in failed.message
    assert failed.details["container"].startswith(f"moorage-{TENANT}-{project}-web-r1-"), (
        failed.details
    )
    assert labelled(docker_client, project) == []


async def test_min_ready_seconds_holds_the_gate(service: DeploymentService, project: str) -> None:
    await service.apply_project(
        TENANT, project, probed("{type: http, path: /}", "min_ready_seconds: 3s")
    )
    dep = await service.deploy(
        TENANT, USER, project, ROLL.model_copy(update={"health_check_retries": 4})
    )
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    started = [e.created_at for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    passed = [e.created_at for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    # A gate per batch, then the service's last gate of all its new replicas: a check, not a
    # second min_ready_seconds.
    assert len(started) + 1 == len(passed) >= 2
    assert (passed[-1] - passed[-2]).total_seconds() < 3
    for s, p in zip(started, passed[:-1], strict=True):
        assert (p - s).total_seconds() >= 3


async def test_a_service_s_own_health_delay_comes_before_the_deployment_s(
    service: DeploymentService, project: str
) -> None:
    await service.apply_project(
        TENANT, project, probed("{type: http, path: /}", "health_check_delay: 2s")
    )
    dep = await service.deploy(TENANT, USER, project, ROLL)  # the deployment's delay: 0
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    started = [e.created_at for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    passed = [e.created_at for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    for s, p in zip(started, passed, strict=False):
        assert (p - s).total_seconds() >= 2


async def test_a_service_s_own_health_retries_come_before_the_deployment_s(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    await service.apply_project(
        TENANT,
        project,
        probed("{type: http, path: /missing, interval: 100ms}", "health_check_retries: 1"),
    )
    dep = await service.deploy(TENANT, USER, project, ROLL)  # 8 retries 0.5 s apart: 4 s
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    failed = next(e for e in state.events if e.event_type == EventType.HEALTH_CHECK_FAILED)
    assert "not healthy within 0.5s" in failed.message
    assert labelled(docker_client, project) == []


async def test_progress_deadline_fails_and_rolls_back(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """A probe that never passes under a health window of 60 s: the deadline comes first.

    (A health delay past the deadline is refused at deploy: see ``test_steering``.)"""
    never = "{type: http, port: 80, path: /nowhere, interval: 200ms}"
    await service.apply_project(TENANT, project, probed(never))
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        ROLL.model_copy(update={"health_check_retries": 120, "progress_deadline": 3}),
    )
    state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert "progress deadline exceeded" in state.deployment.message
    failed = next(e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED)
    assert failed.details["error_type"] == "ProgressDeadlineExceeded"
    assert "no progress for 3s" in failed.message
    assert labelled(docker_client, project) == []


async def test_a_roll_longer_than_its_progress_deadline_that_keeps_moving_completes(
    service: DeploymentService, project: str
) -> None:
    """3 replicas, 3.5 s of health delay each: longer than 8 s in all, never 8 s without a step
    done (the deadline used to bound the whole run, and failed it)."""
    await service.apply_project(TENANT, project, probed().replace("replicas: 2", "replicas: 3"))
    first = await service.deploy(TENANT, USER, project, ROLL)
    assert (await wait_terminal(service, first.id)).deployment.status == DeploymentStatus.COMPLETED
    v2 = probed(image="moorage-demo:v2").replace("replicas: 2", "replicas: 3")
    await service.apply_project(TENANT, project, v2)
    # One replica at a time (max_surge 1), each ~4 s from its start to its gate.
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        ROLL.model_copy(update={"health_check_delay": 3.5, "progress_deadline": 8}),
    )
    state = await wait_terminal(service, dep.id, timeout=60)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    d = state.deployment
    assert d.started_at is not None
    assert d.completed_at is not None
    assert (d.completed_at - d.started_at).total_seconds() > 8.5


def _start_one(client: docker.DockerClient, project: str, compose: str) -> WaitHealthyInput:
    """Start slot 0 of ``web`` straight through the executor; the wait for it, 30 s apart."""
    start_web(client, project, compose)
    selector = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    return WaitHealthyInput(selector=selector, expected=1, interval_s=30, retries=2)


def test_health_wait_counts_a_replica_when_docker_marks_it_healthy(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The wait wakes on the engine's health_status event, not at the next 30 s check."""
    inp = _start_one(docker_client, project, probed())
    t0 = time.monotonic()
    [instance] = DockerExecutor(docker_client).wait_healthy(inp)
    assert instance.health == "healthy"
    assert time.monotonic() - t0 < 15  # the image's HEALTHCHECK passes after ~1 s


def test_health_wait_fails_when_a_replica_dies_without_waiting_out_the_interval(
    docker_client: docker.DockerClient, project: str
) -> None:
    inp = _start_one(
        docker_client, project, probed() + "    command: ['sh', '-c', 'sleep 2; exit 3']\n"
    )
    t0 = time.monotonic()
    with pytest.raises(ApplicationError) as failed:
        DockerExecutor(docker_client).wait_healthy(inp)
    assert failed.value.type == "HealthCheckFailed"
    assert "exit code 3" in str(failed.value)
    assert time.monotonic() - t0 < 15


def _probed_wait(client: docker.DockerClient, project: str, probe: str) -> WaitHealthyInput:
    """Slot 0 behind ``probe``; 3 checks' time at 1 s (the probe may look more often)."""
    compose = probed(probe)
    inp = _start_one(client, project, compose)
    spec = parse_compose(compose).service("web").probe
    return inp.model_copy(update={"probe": spec, "interval_s": 1.0, "retries": 3})


def _health_failure(client: docker.DockerClient, inp: WaitHealthyInput) -> tuple[str, float]:
    """Run a health wait that must fail its check: its message and the seconds it took."""
    t0 = time.monotonic()
    with pytest.raises(ApplicationError) as failed:
        DockerExecutor(client).wait_healthy(inp)
    assert failed.value.type == "HealthCheckFailed"
    return str(failed.value), time.monotonic() - t0


def test_a_probe_more_frequent_than_the_interval_does_not_shorten_the_wait(
    docker_client: docker.DockerClient, project: str
) -> None:
    """Checks every 100 ms, but the replica still has 3 x 1 s to get ready (not 3 x 100 ms)."""
    inp = _probed_wait(docker_client, project, "{type: http, path: /missing, interval: 100ms}")
    message, took = _health_failure(docker_client, inp)
    assert "not healthy within 3s" in message
    assert 2.9 <= took < 10
    checks = int(message.split("within 3s (")[1].split(" checks")[0])
    assert checks >= 10  # it did look every ~100 ms


def test_min_ready_seconds_longer_than_the_checks_at_the_probe_pace_passes(
    docker_client: docker.DockerClient, project: str
) -> None:
    """min_ready 2 s at a 100 ms probe: ready from ~0.1 s, counts at ~2.1 s (within 3 s + 2 s)."""
    inp = _probed_wait(docker_client, project, "{type: http, path: /, interval: 100ms}")
    inp = inp.model_copy(update={"min_ready_s": 2.0})
    t0 = time.monotonic()
    [instance] = DockerExecutor(docker_client).wait_healthy(inp)
    assert instance.slot == 0
    assert 2.0 <= time.monotonic() - t0 < 10


def test_a_brief_health_wait_reports_the_time_it_used(
    docker_client: docker.DockerClient, project: str
) -> None:
    inp = _probed_wait(docker_client, project, "{type: http, path: /missing, interval: 100ms}")
    brief = DockerExecutor(docker_client).wait_healthy_briefly(
        inp.model_copy(update={"budget_s": 0.5})
    )
    assert brief.instances is None
    # Its budget counts from before the engine's event stream is open, its window from after.
    assert 0.3 <= brief.used_s < 3  # the full wait has the rest of the 3 s
    assert brief.checks >= 3


def test_state_changes_wake_on_a_start_and_let_go_of_the_stream(
    docker_client: docker.DockerClient, project: str
) -> None:
    with StateChanges(docker_client.api, ContainerSelector(tenant=TENANT, project=project)) as ch:
        assert not ch.wait(0.2)  # nothing of this project happened
        _start_one(docker_client, project, probed())
        assert ch.wait(10)  # the container's start event
    assert ch._reader is not None  # it did subscribe
    assert not ch._reader.is_alive()  # and closing the stream ended its reader


def test_state_changes_without_an_engine_just_sleep() -> None:
    api = docker.APIClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    with StateChanges(api, ContainerSelector(tenant=TENANT, project="p")) as changes:
        t0 = time.monotonic()
        assert not changes.wait(0.2)
        assert time.monotonic() - t0 >= 0.2


def test_a_brief_health_wait_ends_without_a_verdict_when_its_budget_is_spent(
    docker_client: docker.DockerClient, project: str
) -> None:
    """The image's HEALTHCHECK first passes ~1 s after the start: not within a 0.3 s budget."""
    inp = _start_one(docker_client, project, probed())
    executor = DockerExecutor(docker_client)
    t0 = time.monotonic()
    brief = executor.wait_healthy_briefly(inp.model_copy(update={"budget_s": 0.3}))
    assert brief.instances is None
    assert brief.checks >= 1
    assert time.monotonic() - t0 < 5  # the 30 s pause between checks was cut to the budget
    later = executor.wait_healthy_briefly(inp.model_copy(update={"budget_s": 15}))
    assert later.instances is not None
    assert [i.health for i in later.instances] == ["healthy"]


def test_a_brief_health_wait_fails_a_replica_that_dies_within_it(
    docker_client: docker.DockerClient, project: str
) -> None:
    inp = _start_one(
        docker_client, project, probed() + "    command: ['sh', '-c', 'sleep 1; exit 3']\n"
    )
    with pytest.raises(ApplicationError) as failed:
        DockerExecutor(docker_client).wait_healthy_briefly(inp.model_copy(update={"budget_s": 10}))
    assert failed.value.type == "HealthCheckFailed"
    assert "exit code 3" in str(failed.value)


def test_a_brief_health_wait_needs_a_budget(docker_client: docker.DockerClient) -> None:
    inp = WaitHealthyInput(selector=ContainerSelector(tenant=TENANT, project="p"), expected=0)
    with pytest.raises(ApplicationError) as refused:
        DockerExecutor(docker_client).wait_healthy_briefly(inp)
    assert refused.value.non_retryable


def test_a_long_pause_between_checks_keeps_heartbeating(monkeypatch: pytest.MonkeyPatch) -> None:
    """A health check interval may be minutes, the heartbeat timeout is 10 s: the wait between
    checks heartbeats every HEARTBEAT_EVERY_S (here 0.1 s), and still wakes on a change."""
    monkeypatch.setattr(health, "HEARTBEAT_EVERY_S", 0.1)
    changes = StateChanges(cast(Any, None), ContainerSelector(tenant=TENANT, project="quiet"))
    beats: list[float] = []
    assert changes.wait(0.55, lambda: beats.append(time.monotonic())) is False
    assert len(beats) >= 4, beats
    threading.Timer(0.2, changes._changed.set).start()
    assert changes.wait(60, lambda: None) is True  # True: woken by the change


def test_a_change_just_after_a_timed_out_slice_of_the_wait_still_wakes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wait cleared the change event after every slice: a change set between a slice that
    timed out and the clear was lost, and the check came a whole interval later (seen in CI)."""
    monkeypatch.setattr(health, "HEARTBEAT_EVERY_S", 0.1)

    class LateChange(threading.Event):
        landed = False

        def wait(self, timeout: float | None = None) -> bool:
            woke = super().wait(timeout)
            if not woke and not self.landed:  # a change lands right after the slice timed out
                self.landed = True
                self.set()
            return woke

    changes = StateChanges(cast(Any, None), ContainerSelector(tenant=TENANT, project="quiet"))
    changes._changed = LateChange()
    started = time.monotonic()
    assert changes.wait(5, lambda: None) is True
    assert time.monotonic() - started < 1


@contextmanager
def _server(answer: Callable[[socket.socket], None]) -> Iterator[dict[str, Any]]:
    """A TCP server on 127.0.0.1 that hands each connection to ``answer`` (in a thread); yields
    the inspect data of a container publishing port 80 there."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    try:
        binding = {"HostIp": "127.0.0.1", "HostPort": port}
        yield {"NetworkSettings": {"Ports": {"80/tcp": [binding]}}}
    finally:
        done.set()
        listener.close()


def _trickle(conn: socket.socket) -> None:
    """Read the request, then answer a byte every 0.3 s (the status line takes 4.5 s)."""
    with suppress(OSError), conn:
        conn.recv(4096)
        for byte in b"HTTP/1.1 200 OK\r\n\r\n":
            conn.sendall(bytes([byte]))
            time.sleep(0.3)


def _endless_body(conn: socket.socket) -> None:
    """A 200 whose body never ends (a stream), a chunk every 0.3 s."""
    with suppress(OSError), conn:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        while True:
            conn.sendall(b"data\n")
            time.sleep(0.3)


def test_a_probe_answered_a_byte_at_a_time_fails_within_its_timeout() -> None:
    """The socket timeout bounds each read, not the probe: a byte every 0.3 s held it forever."""
    spec = ProbeSpec(port=80, timeout_s=1.0)
    with _server(_trickle) as info:
        t0 = time.monotonic()
        ok, seen = probes.probe(spec, info)
        took = time.monotonic() - t0
    assert not ok
    assert "no answer within 1s" in seen
    assert took < 2


def test_a_probe_of_a_path_that_streams_passes_on_its_status() -> None:
    """The probe read the whole body: a stream that never ends held it forever."""
    spec = ProbeSpec(port=80, timeout_s=1.0)
    with _server(_endless_body) as info:
        t0 = time.monotonic()
        assert probes.probe(spec, info) == (True, "GET /: 200")
        assert time.monotonic() - t0 < 1


def _answer(raw: bytes) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        with suppress(OSError), conn:
            conn.recv(4096)
            conn.sendall(raw)

    return answer


@pytest.mark.parametrize(
    ("raw", "seen"),
    [
        (b"HTTP/1.0 200 OK\r\n\r\n", (True, "GET /: 200")),
        (b"HTTP/1.1 503 Service Unavailable\r\n", (False, "GET /: status 503, expected 200")),
        (b"", (False, "GET /: connection closed before a status line")),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n",
            (False, "GET /: not an HTTP status line: b'SSH-2.0-OpenSSH_9.2'"),
        ),
        (b"x" * 10000, (False, "GET /: no final status line in the first 8192 bytes")),
        # Interim responses come before the final one (RFC 9110): they were taken as final.
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n", (True, "GET /: 200")),
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n",
            (False, "GET /: status 204, expected 200"),
        ),
        (
            b"HTTP/1.1 103 Early Hints\r\n\r\n",
            (False, "GET /: connection closed before a status line"),
        ),
    ],
)
def test_a_probe_reads_the_status_line(raw: bytes, seen: tuple[bool, str]) -> None:
    with _server(_answer(raw)) as info:
        assert probes.probe(ProbeSpec(port=80, timeout_s=1.0), info) == seen


HANGING = (
    "    command: ['sh', '-c', 'mkdir -p /tmp/w/cgi-bin && printf \"#!/bin/sh\\nsleep 600\\n\""
    " >/tmp/w/cgi-bin/hang && chmod +x /tmp/w/cgi-bin/hang && exec httpd -f -p 80 -h /tmp/w']\n"
)


def test_hung_probes_of_several_replicas_run_side_by_side_and_keep_heartbeating(
    docker_client: docker.DockerClient, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three replicas whose probe never answers, 2 s probe timeout: probed one after another,
    a check took 6 s without a heartbeat (the activity's heartbeat timeout is 10 s: four such
    replicas missed it), and the wait overran its 2 s window by whole checks."""
    compose = probed("{type: http, path: /cgi-bin/hang, timeout: 2s, interval: 100ms}") + HANGING
    start_web(docker_client, project, compose, slots=[0, 1, 2])
    selector = ContainerSelector(tenant=TENANT, project=project, service="web", revision=1)
    inp = WaitHealthyInput(
        selector=selector,
        expected=3,
        interval_s=1.0,
        retries=2,
        probe=parse_compose(compose).service("web").probe,
    )
    beats: list[float] = []
    monkeypatch.setattr(health, "heartbeat", lambda *_: beats.append(time.monotonic()))
    t0 = time.monotonic()
    message, took = _health_failure(docker_client, inp)
    assert "not healthy within 2s" in message
    assert "no answer within 2s" in message
    gaps = [b - a for a, b in zip([t0, *beats], [*beats, t0 + took], strict=True)]
    assert max(gaps) < 3.5, gaps  # one probe timeout and a beat, not three timeouts
    assert took < 2 + 2 * 2 + 1.5, took  # the window, at most one more check of 2 s, a margin
