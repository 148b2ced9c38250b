"""The Docker executor: container activities on a real Docker engine.

Every method is a sync activity (the Docker SDK blocks) run on the worker's thread pool. Every one
is idempotent: containers have deterministic names and ``moorage.*`` labels, so a retried start
adopts the container an earlier attempt made, and stopping or removing a container that is gone
succeeds.

Errors are classified here, once: a refused spec, a missing image or a failed health check is a
non-retryable ``ApplicationError``; an engine or network hiccup is left retryable.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import HEARTBEAT_EVERY_S, classified, heartbeat
from activities.container_config import ResourceDefaults, ensure_volumes, host_options
from activities.inputs import (
    ContainerSelector,
    HealthWait,
    LabelledContainer,
    ListLabelledInput,
    NetworkInput,
    StartServiceInput,
    StopContainersInput,
    StopWait,
    WaitHealthyInput,
)
from activities.probes import probe
from moorage import naming
from moorage.compose import ServiceSpec
from moorage.models import ServiceInstance
from moorage.settings import get_settings

T = TypeVar("T")

LOG_TAIL_LINES = 20
"""Lines of a failed container's log carried into the failure and its event."""

NANOS = 1_000_000_000

KILL_WAIT_S = 30.0
"""How long a stop waits for a container to exit after SIGKILL before it fails (retryable)."""


def _name(info: dict[str, Any]) -> str:
    """A container's name from its inspect result."""
    return str(info["Name"]).lstrip("/")


def _label_filters(sel: ContainerSelector) -> list[str]:
    labels = [f"{naming.LABEL_TENANT}={sel.tenant}", f"{naming.LABEL_PROJECT}={sel.project}"]
    if sel.service is not None:
        labels.append(f"{naming.LABEL_SERVICE}={sel.service}")
    if sel.revision is not None:
        labels.append(f"{naming.LABEL_REVISION}={sel.revision}")
    return labels


class _StateChanges:
    """A wake-up for health waits: the engine's events about the selected containers.

    Subscribed on entry, before the first check, so a change between a check and the next wait is
    not missed. ``wait(timeout)`` sleeps up to ``timeout`` and returns early when a container
    started, died, was removed or changed its Docker health status. Without a subscription (the
    engine refused it) it just sleeps.
    """

    EVENTS = ("start", "die", "destroy", "oom", "health_status")

    def __init__(self, api: docker.APIClient, sel: ContainerSelector):
        self._api = api
        self._filters = {
            "type": "container",
            "label": _label_filters(sel),
            "event": list(self.EVENTS),
        }
        self._changed = threading.Event()
        self._stream: Any = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> _StateChanges:
        try:
            self._stream = self._api.events(filters=self._filters, decode=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            return self  # plain sleeping: slower to notice, never wrong
        self._reader = threading.Thread(target=self._read, name="moorage-events", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        with suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            for _ in self._stream:
                self._changed.set()

    def wait(self, timeout: float) -> bool:
        """Sleep until a change or ``timeout``; True when a change woke it."""
        woke = self._changed.wait(timeout)
        self._changed.clear()
        return woke

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            with suppress(Exception):  # closing a stream the engine already closed
                self._stream.close()
        if self._reader is not None:
            self._reader.join(timeout=5)


PORT_ATTEMPTS = 5
"""How many times a replica with fixed host ports is made again when a port was taken."""


def host_ports(spec: ServiceSpec) -> dict[str, tuple[str, int | None]]:
    """The replica's published ports, each on a loopback port of its own.

    Nothing is exposed beyond this host, and replicas of one service never collide. The engine
    picks an ephemeral port when it starts the container, and picks again when it restarts it: a
    replica its restart policy restarted would move, and the router would still send its share of
    requests to the old port. So a service with a restart policy gets ports chosen here, free
    when chosen, which the engine keeps across restarts.
    """
    if spec.restart == "no":
        return {p.key: ("127.0.0.1", None) for p in spec.ports}
    return {p.key: ("127.0.0.1", _free_port(p.protocol)) for p in spec.ports}


def _free_port(protocol: str) -> int:
    kind = socket.SOCK_DGRAM if protocol == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_taken(exc: docker.errors.APIError) -> bool:
    """The engine could not publish a port: another container or a host process holds it."""
    text = str(exc.explanation or exc)
    return "port is already allocated" in text or "address already in use" in text


def _instance(info: dict[str, Any]) -> ServiceInstance:
    """A ``docker inspect`` result → ServiceInstance."""
    labels = info["Config"]["Labels"] or {}
    state = info["State"]
    ports: dict[str, str] = {}
    for port, bindings in (info["NetworkSettings"].get("Ports") or {}).items():
        if bindings:
            ports[port] = f"{bindings[0]['HostIp']}:{bindings[0]['HostPort']}"
    health = state.get("Health")
    return ServiceInstance(
        container_id=info["Id"][:12],
        container_name=_name(info),
        service_name=labels.get(naming.LABEL_SERVICE, ""),
        revision=int(labels.get(naming.LABEL_REVISION, "0")),
        slot=int(labels.get(naming.LABEL_SLOT, "0")),
        image=info["Config"]["Image"],
        status=state["Status"],
        health=health["Status"] if health else None,
        ports=ports,
        deployment_id=labels.get(naming.LABEL_DEPLOYMENT),
    )


def _healthcheck(spec: ServiceSpec) -> dict[str, Any] | None:
    hc = spec.healthcheck
    if hc is None:
        return None
    if hc.disable:
        return {"test": ["NONE"]}
    result: dict[str, Any] = {}
    if hc.test is not None:
        result["test"] = hc.test
    for field, key in (
        ("interval_s", "interval"),
        ("timeout_s", "timeout"),
        ("start_period_s", "start_period"),
    ):
        value = getattr(hc, field)
        if value is not None:
            result[key] = int(value * NANOS)
    if hc.retries is not None:
        result["retries"] = hc.retries
    return result or None


class DockerExecutor:
    """Container operations on one Docker engine, exposed as activities."""

    def __init__(
        self, client: docker.DockerClient | None = None, defaults: ResourceDefaults | None = None
    ):
        self.client = client or docker.from_env(timeout=120)
        self.api = self.client.api
        self.defaults = defaults or ResourceDefaults.from_settings(get_settings())

    # --- helpers -----------------------------------------------------------------------------

    def _find(self, sel: ContainerSelector) -> list[dict[str, Any]]:
        """Inspect results of every container the selector matches, sorted by name."""
        found = self.api.containers(all=True, filters={"label": _label_filters(sel)})
        result = []
        for summary in found:
            try:
                info = self.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue  # removed between list and inspect
            slot = int((info["Config"]["Labels"] or {}).get(naming.LABEL_SLOT, "-1"))
            if sel.slots is None or slot in sel.slots:
                result.append(info)
        return sorted(result, key=lambda i: str(i["Name"]))

    def _logs_tail(self, container_id: str) -> str:
        try:
            raw = self.api.logs(container_id, tail=LOG_TAIL_LINES)
        except docker.errors.APIError:
            return ""
        return raw.decode(errors="replace").strip() if isinstance(raw, bytes) else str(raw)

    def _remove(self, container_id: str, timeout_s: float = 60.0) -> None:
        """Remove a container and return once the engine no longer has it.

        A 409 ("removal of container … is already in progress", e.g. from an attempt that timed
        out and still runs) is not success yet: that removal may fail and leave a Dead container.

        Raises:
            ApplicationError: still there after ``timeout_s`` (retryable).
        """
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.api.remove_container(container_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
            if time.monotonic() > deadline:
                raise ApplicationError(f"container {container_id[:12]} is still being removed")
            time.sleep(0.1)  # the other removal runs; the next try ends with NotFound or redoes it

    def _ensure_image(self, image: str) -> None:
        try:
            self.api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        try:
            self.api.pull(image)
        except docker.errors.APIError as exc:
            raise ApplicationError(
                f"image {image!r} is not on the engine and could not be pulled: {exc.explanation}",
                type="ImageNotFound",
                non_retryable=True,
            ) from exc

    def _parallel(self, fn: Callable[[T], None], items: list[T]) -> None:
        """``fn`` on every item, up to 8 at a time; the activity heartbeats while they run.

        A stop waits out the grace period (Compose's default is 10 s, as long as the heartbeat
        timeout), so the calling thread heartbeats every ``HEARTBEAT_EVERY_S`` until all are done:
        the pool's threads carry no activity context and cannot.
        """
        if not items:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            futures = [pool.submit(fn, item) for item in items]
            pending: set[Future[None]] = set(futures)
            while pending:
                _, pending = wait(pending, timeout=HEARTBEAT_EVERY_S)
                if pending:
                    heartbeat(f"{len(items) - len(pending)} of {len(items)} done")
            for future in futures:
                future.result()

    # --- activities --------------------------------------------------------------------------

    @activity.defn(name="ensure_network")
    def ensure_network(self, inp: NetworkInput) -> str:
        """Create the project's bridge network if it does not exist yet.

        Raises:
            ApplicationError: the engine refused the network.
        """
        name = naming.network_name(inp.tenant, inp.project)
        with classified(f"network {name}"):
            # The engine matches ``names`` as a substring: "moorage-t-shop" also finds
            # "moorage-t-shop2". Only the exact name counts.
            if any(n["Name"] == name for n in self.api.networks(names=[name])):
                return name
            try:
                self.api.create_network(
                    name,
                    driver="bridge",
                    check_duplicate=True,
                    labels={naming.LABEL_TENANT: inp.tenant, naming.LABEL_PROJECT: inp.project},
                )
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
        return name

    @activity.defn(name="start_service")
    def start_service(self, inp: StartServiceInput) -> list[ServiceInstance]:
        """Start the given replicas of one service for one revision; adopt any that exist.

        Raises:
            ApplicationError: ``ImageNotFound`` or ``EngineRefused`` (non-retryable), or an
                engine error (retryable).
        """
        spec = inp.service
        # The network may have been pruned since the deployment made sure of it.
        net = self.ensure_network(NetworkInput(tenant=inp.tenant, project=inp.project))
        with classified(f"service {spec.name}"):
            self._ensure_image(spec.image)
            instances = []
            for slot in inp.slots:
                name = naming.container_name(inp.tenant, inp.project, spec.name, inp.revision, slot)
                heartbeat(name)
                instances.append(_instance(self._start_one(inp, slot, name, net)))
            return instances

    def _start_one(self, inp: StartServiceInput, slot: int, name: str, net: str) -> dict[str, Any]:
        """Create (or adopt) one replica and start it; its inspect result.

        A replica with fixed host ports (a restart policy: see :func:`host_ports`) whose port was
        taken between the choice and the start is made again with other ports.
        """
        for attempt in range(1, PORT_ATTEMPTS + 1):
            container_id = self._create(inp, slot, name, net)
            info: dict[str, Any] = self.api.inspect_container(container_id)
            if info["State"]["Running"]:
                return info
            try:
                self.api.start(container_id)
            except docker.errors.APIError as exc:
                if not _port_taken(exc) or inp.service.restart == "no" or attempt == PORT_ATTEMPTS:
                    raise
                self._remove(container_id)
                continue
            info = self.api.inspect_container(container_id)
            return info
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _create(self, inp: StartServiceInput, slot: int, name: str, net: str) -> str:
        """Create one replica's container, or return the id of the one already there."""
        try:
            found = self.api.inspect_container(name)
            if found["State"]["Status"] not in ("removing", "dead"):
                return str(found["Id"])
            # Going or gone (a removal still running, or one that failed): not adoptable.
            self._remove(str(found["Id"]))
        except docker.errors.NotFound:
            pass
        spec = inp.service
        labels = {
            **spec.labels,
            naming.LABEL_TENANT: inp.tenant,
            naming.LABEL_PROJECT: inp.project,
            naming.LABEL_SERVICE: spec.name,
            naming.LABEL_DEPLOYMENT: inp.deployment_id,
            naming.LABEL_REVISION: str(inp.revision),
            naming.LABEL_SLOT: str(slot),
            naming.LABEL_VERSION: inp.version,
        }
        ensure_volumes(self.api, inp.tenant, inp.project, spec)
        host_config = self.api.create_host_config(
            port_bindings=host_ports(spec),
            **host_options(spec, inp.tenant, inp.project, self.defaults),
        )
        networking = self.api.create_networking_config(
            {net: self.api.create_endpoint_config(aliases=[spec.name])}
        )
        try:
            created = self.api.create_container(
                spec.image,
                command=spec.command,
                entrypoint=spec.entrypoint,
                environment=spec.environment,
                labels=labels,
                name=name,
                ports=[(p.target, p.protocol) for p in spec.ports],
                host_config=host_config,
                networking_config=networking,
                healthcheck=_healthcheck(spec),
                stop_signal=spec.stop_signal,
                stop_timeout=int(spec.stop_grace_period_s),
                working_dir=spec.working_dir,
                user=spec.user,
                hostname=f"{spec.name}-{slot}",
                detach=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another attempt created it meanwhile: adopt it
                return str(self.api.inspect_container(name)["Id"])
            raise
        return str(created["Id"])

    @activity.defn(name="stop_containers")
    def stop_containers(self, inp: StopContainersInput) -> list[str]:
        """Stop the selected containers (in parallel), each within the grace period.

        As ``docker stop``: the stop signal, the grace period, then SIGKILL. With ``signalled``
        (after :meth:`stop_containers_briefly`), no second signal: the rest of the grace period,
        then SIGKILL.

        Returns:
            The names of the containers that were running and are now stopped.

        Raises:
            ApplicationError: a retryable engine error, or a container still running after
                SIGKILL (retryable).
        """
        grace = max(0.0, inp.grace_period_s)
        with classified("stop"):
            infos = [i for i in self._find(inp.selector) if i["State"]["Running"]]

            def stop(info: dict[str, Any]) -> None:
                with suppress(docker.errors.NotFound):
                    if not inp.signalled:
                        self.api.stop(info["Id"], timeout=int(grace))
                    elif not self._exited_within(info["Id"], grace):
                        self._kill(info["Id"], "SIGKILL")
                        if not self._exited_within(info["Id"], KILL_WAIT_S):
                            raise ApplicationError(
                                f"container {_name(info)} still runs {KILL_WAIT_S:g} s after "
                                "SIGKILL"
                            )

            self._parallel(stop, infos)
            return [_name(i) for i in infos]

    @activity.defn(name="stop_containers_briefly")
    def stop_containers_briefly(self, inp: StopContainersInput) -> StopWait:
        """The first ``budget_s`` of :meth:`stop_containers`: the stop signal, then a bounded wait.

        A stop runs it as a local activity, inside the workflow task: most programs exit within
        milliseconds of their stop signal, and then no round trip through the Temporal server is
        needed. A container still running when the budget runs out is left as it is (signalled,
        never killed here): the full stop, an ordinary activity with ``signalled``, waits out the
        rest of the grace period. The workflow runs it once (a retry would signal again); when it
        fails, the full stop does all of it, as ``docker stop``.

        Raises:
            ApplicationError: an engine error.
        """
        if inp.budget_s is None:
            raise ApplicationError(
                "stop_containers_briefly needs budget_s", type="Invalid", non_retryable=True
            )
        budget = inp.budget_s
        with classified("stop"):
            infos = [i for i in self._find(inp.selector) if i["State"]["Running"]]
            start = time.monotonic()
            # Every signal first (each takes milliseconds), so every container gets its whole
            # grace period counted from ``start``, however many wait side by side after.
            exited = {
                i["Id"]: not self._kill(i["Id"], (i["Config"] or {}).get("StopSignal") or "SIGTERM")
                for i in infos
            }

            def wait_for(info: dict[str, Any]) -> None:
                left = start + budget - time.monotonic()
                exited[info["Id"]] = exited[info["Id"]] or self._exited_within(info["Id"], left)

            self._parallel(wait_for, infos)
            return StopWait(
                stopped=[_name(i) for i in infos if exited[i["Id"]]],
                running=[_name(i) for i in infos if not exited[i["Id"]]],
                elapsed_s=time.monotonic() - start,
            )

    def _kill(self, container_id: str, signal: str) -> bool:
        """Send ``signal``; False when the container is gone or no longer running."""
        try:
            self.api.kill(container_id, signal=signal)
            return True
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # "is not running"
                return False
            raise

    def _exited_within(self, container_id: str, timeout_s: float) -> bool:
        """Whether the container is not running (or gone) within ``timeout_s``.

        The engine's wait answers the moment the container exits; no polling.
        """
        if timeout_s > 0:
            try:
                self.api.wait(container_id, timeout=timeout_s)
                return True
            except docker.errors.NotFound:
                return True
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass  # the wait ran out (docker-py reports a read timeout either way)
        try:
            return not self.api.inspect_container(container_id)["State"]["Running"]
        except docker.errors.NotFound:
            return True

    @activity.defn(name="remove_containers")
    def remove_containers(self, sel: ContainerSelector) -> list[str]:
        """Remove the selected containers (forcefully: they are stopped first by the flow).

        Returns:
            The names of the containers removed.

        Raises:
            ApplicationError: a retryable engine error.
        """
        with classified("remove"):
            infos = self._find(sel)

            self._parallel(lambda info: self._remove(str(info["Id"])), infos)
            return [_name(i) for i in infos]

    @activity.defn(name="list_containers")
    def list_containers(self, sel: ContainerSelector) -> list[ServiceInstance]:
        """The selected containers as the engine reports them now.

        Raises:
            ApplicationError: a retryable engine error.
        """
        with classified("list"):
            return [_instance(i) for i in self._find(sel)]

    @activity.defn(name="wait_healthy")
    def wait_healthy(self, inp: WaitHealthyInput) -> list[ServiceInstance]:
        """Wait until every selected container is healthy (Docker HEALTHCHECK) or running.

        After ``delay_s``, checks for ``retries`` x ``interval_s`` seconds (plus ``min_ready_s``),
        ``interval_s`` apart (a shorter probe interval: that far apart); a check comes sooner
        when the engine reports that a selected container started, died or changed its health
        status, so a replica counts the moment Docker marks it healthy. Heartbeats all along, so a
        cancel reaches it and a dead worker is noticed.

        Raises:
            ApplicationError: ``HealthCheckFailed`` (non-retryable) when a container exits, turns
                unhealthy, is missing, or is not healthy in time; the last lines of its log are in
                the message and the details.
        """
        instances, _, _ = self._wait(inp, None)
        assert instances is not None  # with no budget the wait ends healthy or raises
        return instances

    @activity.defn(name="wait_healthy_briefly")
    def wait_healthy_briefly(self, inp: WaitHealthyInput) -> HealthWait:
        """The first ``budget_s`` of :meth:`wait_healthy`: the same checks, then no verdict.

        The health gate runs it as a local activity, inside the workflow task: most replicas are
        ready within a second or two, and then no round trip through the Temporal server is
        needed. Those that are not get the full wait, an ordinary activity, for the checks left.

        Raises:
            ApplicationError: as :meth:`wait_healthy`, when a container fails within the budget.
        """
        if inp.budget_s is None:
            raise ApplicationError(
                "wait_healthy_briefly needs budget_s", type="Invalid", non_retryable=True
            )
        instances, checks, used = self._wait(inp, inp.budget_s)
        return HealthWait(instances=instances, checks=checks, used_s=used)

    def _wait(
        self, inp: WaitHealthyInput, budget_s: float | None
    ) -> tuple[list[ServiceInstance] | None, int, float]:
        """The delay, then the checks (:meth:`_checks`); no verdict once ``budget_s`` is spent."""
        start = time.monotonic()
        until = None if budget_s is None else start + budget_s
        deadline = start + inp.delay_s
        while time.monotonic() < deadline:
            heartbeat("delay")
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        # Moorage's own probe may ask to be polled more often than the deployment's interval.
        pause = min(inp.interval_s, inp.probe.interval_s) if inp.probe else inp.interval_s
        with _StateChanges(self.api, inp.selector) as changes:
            return self._checks(inp, changes, pause, until)

    def _checks(
        self,
        inp: WaitHealthyInput,
        changes: _StateChanges,
        pause: float,
        until: float | None = None,
    ) -> tuple[list[ServiceInstance] | None, int, float]:
        """The checks of :meth:`wait_healthy`, ``pause`` apart (sooner on a state change).

        A replica has ``retries`` x ``interval_s`` seconds to get ready, plus ``min_ready_s`` to
        stay ready: a window of time, however often the checks run (a probe's shorter interval,
        or the engine's events, make more of them, not a shorter wait).

        Returns:
            The instances once all count, the number of checks made and the seconds of the window
            used; (None, checks, seconds) when ``until`` (a monotonic time) comes first.
        """
        last: dict[str, str] = {}
        ready_since: dict[str, float] = {}
        restarts: dict[str, int] = {}  # per replica, the engine's restarts that do not count
        window = inp.retries * inp.interval_s + inp.min_ready_s
        began = time.monotonic()
        give_up = began + window
        checks = 0
        while True:
            checks += 1
            heartbeat(checks)
            with classified("health check"):
                infos = self._find(inp.selector)
                if len(infos) < inp.expected:
                    self._fail_health(
                        f"expected {inp.expected} containers, found {len(infos)}", None, infos
                    )
                not_counted: list[str] = []
                now = time.monotonic()
                for info in infos:
                    name = _name(info)
                    earlier = int(info.get("RestartCount") or 0) if inp.earlier_restarts_ok else 0
                    ok, seen = self._ready(
                        info, inp, checks, infos, restarts.setdefault(name, earlier)
                    )
                    if ok:
                        since = ready_since.setdefault(name, now)
                        if now - since < inp.min_ready_s:
                            not_counted.append(name)
                            seen = f"ready {now - since:.1f}s of {inp.min_ready_s:g}s"
                    else:
                        not_counted.append(name)
                        ready_since.pop(name, None)
                    last[name] = seen
                if not not_counted:
                    return [_instance(i) for i in infos], checks, now - began
            now = time.monotonic()
            if now >= give_up:
                break
            if until is not None and now >= until:
                return None, checks, now - began
            changes.wait(min(pause, give_up - now, (until - now) if until is not None else pause))
        waiting = ", ".join(f"{n}: {last[n]}" for n in not_counted)
        infos = self._find(inp.selector)
        # The replica named is the first one the last check did not count: its probe failed, it
        # was not healthy yet, or it had not stayed ready for min_ready (Docker's own health may
        # say healthy all along while Moorage's probe fails).
        self._fail_health(
            f"not healthy within {window:g}s ({checks} checks, {pause:g}s apart at most) "
            f"({waiting})",
            next((i for i in infos if _name(i) in not_counted), None),
            infos,
        )
        raise AssertionError("unreachable")  # _fail_health always raises

    def _ready(
        self,
        info: dict[str, Any],
        inp: WaitHealthyInput,
        attempt: int,
        infos: list[dict[str, Any]],
        earlier_restarts: int = 0,
    ) -> tuple[bool, str]:
        """Is one container ready now? Fails the wait at once when it exited or is unhealthy.

        A replica its restart policy restarted (more than ``earlier_restarts`` times) or is about
        to restart has crashed: that fails the wait too, as an exit does without the policy.
        """
        state = info["State"]
        health = state.get("Health")
        name = _name(info)
        restarted = int(info.get("RestartCount") or 0)
        if state.get("Restarting"):
            self._fail_health(
                f"container {name} exited (exit code {state.get('ExitCode')}) and its restart "
                "policy is restarting it",
                info,
                infos,
            )
        if restarted > earlier_restarts:
            # Running again: the engine has reset its exit code; the log tells why it exited.
            self._fail_health(
                f"container {name} exited and its restart policy restarted it "
                f"({restarted} restart(s))",
                info,
                infos,
            )
        if state["Status"] in ("exited", "dead") or (not state["Running"] and attempt > 1):
            self._fail_health(
                f"container {name} is {state['Status']} (exit code {state.get('ExitCode')})",
                info,
                infos,
            )
        if health and health["Status"] == "unhealthy" and inp.probe is None:
            self._fail_health(f"container {name} is unhealthy", info, infos)
        if not state["Running"]:
            return False, state["Status"]
        if inp.probe is not None:
            return probe(inp.probe, info)
        if health and health["Status"] != "healthy":
            return False, str(health["Status"])
        return True, str(health["Status"]) if health else "running"

    def _fail_health(
        self, reason: str, info: dict[str, Any] | None, infos: list[dict[str, Any]]
    ) -> None:
        logs = self._logs_tail(info["Id"]) if info else ""
        container = _name(info) if info else None
        health_log = ""
        if info and info["State"].get("Health"):
            entries = info["State"]["Health"].get("Log") or []
            if entries:
                health_log = str(entries[-1].get("Output", "")).strip()
        message = reason
        if health_log:
            message += f"; last health check output: {health_log[:300]}"
        if logs:
            message += f"; last log lines:\n{logs}"
        raise ApplicationError(
            message,
            {"container": container, "logs": logs, "health_output": health_log, "reason": reason},
            type="HealthCheckFailed",
            non_retryable=True,
        )

    @activity.defn(name="list_labelled")
    def list_labelled(self, inp: ListLabelledInput) -> list[LabelledContainer]:
        """Every container carrying Moorage's labels (of one tenant, or of all).

        Raises:
            ApplicationError: a retryable engine error.
        """
        tenant = inp.tenant
        labels = [naming.LABEL_PROJECT] + ([f"{naming.LABEL_TENANT}={tenant}"] if tenant else [])
        with classified("list"):
            found = self.api.containers(all=True, filters={"label": labels})
        result = []
        for c in found:
            lab = c.get("Labels") or {}
            if not str(lab.get(naming.LABEL_REVISION, "")).isdigit():
                continue
            result.append(
                LabelledContainer(
                    name=str(c["Names"][0]).lstrip("/"),
                    tenant=lab.get(naming.LABEL_TENANT, ""),
                    project=lab.get(naming.LABEL_PROJECT, ""),
                    service=lab.get(naming.LABEL_SERVICE, ""),
                    revision=int(lab[naming.LABEL_REVISION]),
                    deployment_id=lab.get(naming.LABEL_DEPLOYMENT),
                    status=c.get("State", ""),
                )
            )
        return sorted(result, key=lambda x: x.name)

    def purge_project(self, project: str) -> list[str]:
        """Remove every container, network and volume labelled for ``project`` (any tenant).

        Not an activity: for throwaway runs (tests, benchmarks, recordings) cleaning up after
        themselves. Returns the container names removed.
        """
        label = f"{naming.LABEL_PROJECT}={project}"
        names = []
        for c in self.api.containers(all=True, filters={"label": label}):
            names.append(str(c["Names"][0]).lstrip("/"))
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_container(c["Id"], force=True, v=True)
        for n in self.api.networks(filters={"label": label}):
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_network(n["Id"])
        for v in self.api.volumes(filters={"label": label}).get("Volumes") or []:
            with contextlib.suppress(docker.errors.NotFound):
                self.api.remove_volume(v["Name"], force=True)
        return names

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of this executor, for the worker."""
        return [
            self.list_labelled,
            self.ensure_network,
            self.start_service,
            self.stop_containers,
            self.stop_containers_briefly,
            self.remove_containers,
            self.list_containers,
            self.wait_healthy,
            self.wait_healthy_briefly,
        ]
