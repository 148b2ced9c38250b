"""The traffic router: one interface, two backends (HAProxy by default, nginx).

Address scheme: every routed service (a service with a container port) gets its own listen port on
the router host, ``http://<bind>:<port>/`` — the Compose file's published port when it gives one,
else the next free port of ``MOORAGE_ROUTE_PORTS`` (default 21000-21999). A route's servers are
exactly the replicas that are healthy and not draining; server names are container names.

The desired state lives in ``<router dir>/state.json`` and the proxy's config file is regenerated
from it on every change, so a restarted proxy comes back with the current routes. Activities here
are host-bound: they run where the proxy runs (see ``workflows.steps.activity_queue``).
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import HEARTBEAT_EVERY_S, classified, heartbeat, paced_heartbeat, poll_pauses
from activities.inputs import (
    DeleteRoutesInput,
    RouteInput,
    RouteServersInput,
    RoutesInput,
    RouteSwitchInput,
    RouteWeightsInput,
)
from activities.proxy import (
    DRAIN_MARGIN_S,
    ListenPortTaken,
    ProxyBackend,
    ProxyUnavailable,
    RouterError,
    RouterState,
    RouteState,
    ServerState,
    backend_name,
    drain_deadline,
    replace_durably,
    route_key,
)
from moorage.models import RouteInfo
from moorage.net import port_free
from moorage.settings import replica_port_refusal

BIND_FAILED = re.compile(
    r"Address already in use\)? for \[\S*:(\d+)\]|bind\(\) to \S*:(\d+) failed \(98"
)
"""The port of a listener a proxy could not bind, in its start's refusal: HAProxy's ``cannot bind
socket (Address already in use) for [127.0.0.1:8080]``, nginx's ``bind() to 127.0.0.1:8080 failed
(98: Address already in use)``."""


def _cancel_deferred() -> contextlib.AbstractContextManager[None]:
    """Inside an activity, a cancel raised into its thread waits until the block ends."""
    if activity.in_activity():
        return activity.shield_thread_cancel_exception()
    return contextlib.nullcontext()


def route_url(mode: str, host: str, port: int) -> str:
    """Where a route serves: ``http://host:port/``, or ``tcp://host:port`` for a TCP route."""
    return f"http://{host}:{port}/" if mode == "http" else f"tcp://{host}:{port}"


def refuse_unrouted_stable(inp: RouteInput, route: RouteState | None) -> None:
    """Refuse when ``route`` lacks a server ``inp.must_route`` names.

    A canary shares a route's traffic between its replicas and the serving revision's, by
    weights on both. A failed deployment with ``rollback_on_failure`` off may have left the route
    sending to its own replicas instead (a blue-green's green after the switch, a rolling
    update's first batches): the canary's weight steps then named servers the route lacks and
    failed, and so did its undo, which left the canary's replicas routed.

    Raises:
        ApplicationError: ``StableNotRouted`` (not retryable).
    """
    routed = set(route.servers) if route is not None else set()
    missing = [name for name in inp.must_route if name not in routed]
    if not missing:
        return
    raise ApplicationError(
        f"{inp.service}: the serving revision's replicas {', '.join(missing)} are not on its "
        f"route, which sends to {', '.join(sorted(routed)) or 'nothing'} (a failed deployment "
        "with rollback_on_failure off leaves it so): a canary shares traffic with them; roll "
        "the failed deployment back first (moorage rollback ID), or deploy with another strategy",
        {"service": inp.service, "missing": missing, "routed": sorted(routed)},
        type="StableNotRouted",
        non_retryable=True,
    )


class TrafficRouter:
    """Routes, their servers and weights; the activities of the traffic router."""

    def __init__(
        self,
        backend: ProxyBackend,
        docker_client: docker.DockerClient | None = None,
        port_range: tuple[int, int] = (21000, 21999),
        drain_timeout_s: float = 10.0,
        replica_ports: tuple[int, int] | None = None,
    ):
        self.backend = backend
        self.dir = backend.dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_file = self.dir / "state.json"
        self.port_range = port_range
        self.replica_ports = replica_ports
        """Where replicas get their host ports (``MOORAGE_REPLICA_PORTS``): no route listens there.
        A stopped replica keeps its port without binding it; a route there would take it."""
        self.drain_timeout_s = drain_timeout_s
        self._docker = docker_client
        self._lock = threading.Lock()

    # --- state -----------------------------------------------------------------------------------

    @property
    def docker(self) -> docker.DockerClient:
        """The engine whose containers the routes point at (same host as the proxy)."""
        if self._docker is None:
            self._docker = docker.from_env(timeout=60)
        return self._docker

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A thread lock for this worker and a file lock for other workers on this host.

        The wait heartbeats: another change may hold them through its drain (up to the drain
        timeout), and a step waiting silently past the 10 s heartbeat timeout was timed out
        and run again, to wait again.
        """
        beat = paced_heartbeat()
        acquired = False
        try:
            # A cancel raised into this thread between the acquire and the flag would leave the
            # lock held for good: it waits until the flag is set.
            with _cancel_deferred():
                while not self._lock.acquire(timeout=HEARTBEAT_EVERY_S / 2):
                    beat("waiting for another router change")
                acquired = True
            with open(self.dir / "state.lock", "w") as lock_file:
                pauses = poll_pauses()
                while True:
                    try:
                        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        beat("waiting for another worker's router change")
                        time.sleep(next(pauses))
                try:
                    yield
                finally:
                    fcntl.flock(lock_file, fcntl.LOCK_UN)
        finally:
            if acquired:
                self._lock.release()

    def load(self) -> RouterState:
        """The desired state on disk."""
        if not self.state_file.exists():
            return RouterState()
        try:
            return RouterState.model_validate_json(self.state_file.read_text())
        except ValueError as exc:  # pydantic's ValidationError: a torn or hand-edited file
            raise RouterError(
                f"{self.state_file} is not the router's state ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}); restore it, or fix it by hand"
            ) from exc

    def _save(self, state: RouterState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.model_dump_json(indent=2))
        replace_durably(tmp, self.state_file)

    def ensure_running(self) -> list[str]:
        """Start the proxy from the state on disk when it is not running.

        Returns:
            The routes it started without: their ports are taken by another process.

        Raises:
            ProxyUnavailable: the proxy runs outside Moorage and does not answer (its config is
                written for it to start from).
            RouterError: it did not start, though every route's port is free.
        """
        with self._locked():
            return self._come_up_if_down()

    def _come_up_if_down(self) -> list[str]:
        """:meth:`ProxyBackend.come_up` when the proxy is down (only then is the state read).

        A proxy cannot start while one of its listen ports is taken (a reboot: another program
        bound it first), and every route stayed dark until that port was free. When the start
        fails so, it starts again without the routes whose ports are taken: the others serve,
        and a later change brings those back once their ports are free (see :meth:`_view`).

        Returns:
            The routes left out (their keys).
        """
        if self.backend.running():
            return []
        state = self.load()
        try:
            self.backend.come_up(state)
            return []
        except ProxyUnavailable:
            raise
        except RouterError as exc:
            # The ports it names: not every port that is not free (a stale master of our own
            # holds its routes' ports, and HAProxy shares them with it: SO_REUSEPORT).
            named = {int(a or b) for a, b in BIND_FAILED.findall(str(exc))}
            taken = {
                k
                for k, r in state.routes.items()
                if r.port in named and not self._port_free(r.port)
            }
            if not taken:
                raise
        self.backend.come_up(state.without(taken))
        return sorted(taken)

    def _view(self, old: RouterState, new: RouterState) -> tuple[RouterState, RouterState]:
        """``old`` and ``new`` as the proxy runs them: without the routes it cannot listen for.

        A route the proxy's config lacks was left out at its start (its port was taken); it
        stays out while its port is taken still, and comes back (a reload) with the first
        change that reaches the proxy once the port is free: any route's, or the next
        deployment of its project (:meth:`ensure_routes` asks). A change that routes servers
        on a route left out, or weighs them, is refused (retryable): they would take no
        request.

        Raises:
            ApplicationError: ``RouterPortTaken`` (retryable), naming the route and the port.
        """
        configured = self.backend.configured_backends()
        parked = {k for k, r in old.routes.items() if r.backend not in configured}
        if not parked:
            return old, new
        dark = {
            k
            for k in parked
            if k in new.routes
            and not self._port_free(new.routes[k].port)
            and not self.backend.serves(new.routes[k].backend)
        }
        for key in sorted(dark):
            before = old.routes[key].servers
            if any(before.get(n) != server for n, server in new.routes[key].servers.items()):
                port = new.routes[key].port
                raise ApplicationError(
                    f"route {key} is down: port {port} on {self.backend.bind} is taken by another "
                    f"process, and {self.backend.name} serves the other routes without it; free "
                    "the port (the next router change brings the route back)",
                    {"route": key, "port": port},
                    type="RouterPortTaken",
                )
        return old.without(parked), new.without(dark)

    def stop(self) -> None:
        """Stop the proxy (its state stays on disk)."""
        self.backend.stop()

    def _up(self) -> None:
        """:meth:`_come_up_if_down` in an activity: a proxy down is worth retrying."""
        with self._proxy_errors(starting=True):
            self._come_up_if_down()

    @contextlib.contextmanager
    def _proxy_errors(self, *, starting: bool = False) -> Iterator[None]:
        """The proxy's errors as activity failures: only a refused change is not worth retrying.

        Raises:
            ApplicationError: ``RouterUnavailable`` (the proxy did not answer or serve in time);
                ``starting``: ``RouterStartFailed`` (it did not start from the state on disk,
                e.g. a route's port another process took: the cause may pass); otherwise
                ``RouterPortTaken`` (another process took a listen port since the router found
                it free: the retry picks another) or ``RouterConfigInvalid`` (non-retryable).
        """
        try:
            yield
        except ProxyUnavailable as exc:
            # Restarted or stopped under us: the retry starts it from the state on disk.
            raise ApplicationError(
                f"{self.backend.name} did not answer: {exc}", type="RouterUnavailable"
            ) from exc
        except RouterError as exc:
            if starting:
                raise ApplicationError(
                    f"{self.backend.name} did not start: {exc}", type="RouterStartFailed"
                ) from exc
            if isinstance(exc, ListenPortTaken):
                raise ApplicationError(
                    f"{self.backend.name} could not listen: {exc}", type="RouterPortTaken"
                ) from exc
            raise ApplicationError(
                f"{self.backend.name} refused the change; the previous config keeps serving: {exc}",
                {"router": self.backend.name, "reason": str(exc)},
                type="RouterConfigInvalid",
                non_retryable=True,
            ) from exc

    def _change(self, mutate: Callable[[RouterState], dict[str, list[str]]]) -> RouterState:
        """Apply ``mutate`` to the state, then to the proxy; saves only what the proxy took.

        The servers it takes out drain with the locks released: every other router change on
        this host (any project's) waited behind a drain, up to the drain timeout each, and the
        wait counted against its step. While they drain, the state records them (other changes
        leave them alone); then, holding the locks again, the servers no change routed again
        meanwhile are deleted.
        """
        token = uuid.uuid4().hex
        with self._locked():
            self._up()
            old = self.load()
            new = old.model_copy(deep=True)
            draining = mutate(new)
            new.forget_drains_of_wanted()
            with self._proxy_errors():
                drain = self.backend.change(*self._view(old, new), draining)
            # Stale once the drain is over (at its deadline, the step's own time permitting)
            # and its change should have deleted them.
            left = drain_deadline(self.drain_timeout_s) - time.monotonic()
            new.record_drains(drain.servers, token, time.time() + left + DRAIN_MARGIN_S)
            self._save(new)
        with self._proxy_errors():
            drain.wait()
        if drain.servers:
            with self._locked():
                state = self.load()
                done = state.end_drains(token)
                # Saved first: servers whose deletion fails are in DRAIN and unlisted, and the
                # next change takes them out as servers the state lacks.
                self._save(state)
                with self._proxy_errors():
                    drain.remove(done)
        return new

    def _refuse_reserved(self, inp: RouteInput) -> None:
        """Refuse a new route whose published port is one replicas get.

        Before the proxy is asked anything: a refusal, not a retry while the proxy is down.
        """
        if self.replica_ports is None:
            return
        why = replica_port_refusal(inp.published_port, self.replica_ports)
        if why is not None:
            raise ApplicationError(
                f"no route for {inp.service}: port {inp.published_port} refused: {why}",
                {"service": inp.service, "port": inp.published_port},
                type="RouterPortReserved",
                non_retryable=True,
            )

    def _port_free(self, port: int) -> bool:
        """:func:`port_free` on the routes' address.

        Raises:
            ApplicationError: ``RouterBindInvalid`` (non-retryable) when no port of that address
                can be bound (not an address of this host).
        """
        try:
            return port_free(self.backend.bind, port)
        except OSError as exc:
            raise ApplicationError(
                f"no route: routes cannot listen on {self.backend.bind} "
                f"(MOORAGE_ROUTER_BIND): {exc}",
                {"bind": self.backend.bind},
                type="RouterBindInvalid",
                non_retryable=True,
            ) from exc

    def _free_port(self, state: RouterState, key: str, wanted: int | None) -> int:
        """A listen port for route ``key``: ``wanted``, else one of the range."""
        taken = {r.port for r in state.routes.values()}
        # A killed attempt may have got the route into the proxy already: its port is ours.
        ours = self.backend.configured_port(backend_name(key))
        if (
            ours is not None
            and ours not in taken
            and wanted in (None, ours)
            # Not if another process took it since (the attempt timed out, or was killed
            # before its reload): then the port is not ours, and another is picked.
            and (self._port_free(ours) or self.backend.serves(backend_name(key)))
        ):
            return ours
        candidates: list[int] = (
            [wanted] if wanted else list(range(self.port_range[0], self.port_range[1] + 1))
        )
        for port in candidates:
            if port not in taken and self._port_free(port):
                return port
        what = (
            f"port {wanted}" if wanted else f"a port in {self.port_range[0]}-{self.port_range[1]}"
        )
        raise ApplicationError(
            f"no route: {what} is not free on the router host",
            type="RouterPortTaken",
            non_retryable=True,
        )

    def _address(self, container: str, container_port: str) -> str | None:
        """``127.0.0.1:<host port>`` of a running container's port; None if it is not running.

        Raises:
            ApplicationError: the engine failed (retryable, or not, as :func:`classified` says).
        """
        with classified(f"inspect {container}"):
            try:
                info = self.docker.api.inspect_container(container)
            except docker.errors.NotFound:
                return None
        if not info["State"]["Running"]:
            return None
        bindings = (info["NetworkSettings"].get("Ports") or {}).get(container_port) or []
        if not bindings:
            return None
        return f"127.0.0.1:{bindings[0]['HostPort']}"

    # --- activities ------------------------------------------------------------------------------

    @activity.defn(name="ensure_route")
    def ensure_route(self, inp: RouteInput) -> RouteInfo:
        """Make sure of the route of one service (see :meth:`ensure_routes`); its URL."""
        [info] = self.ensure_routes(RoutesInput(routes=[inp]))
        return info

    @activity.defn(name="ensure_routes")
    def ensure_routes(self, inp: RoutesInput) -> list[RouteInfo]:
        """Make sure of the routes of a project's routed services, in one change; their URLs.

        A route that does not exist is made: on its Compose ``published`` port, else on the next
        free port of the range. One whose published port changed moves there (``moved_from``
        says from where; a graceful reload: the old port's connections finish, new ones go to
        the new port); one without a published port keeps the port it has. All move at once,
        so the project's services may swap or hand over their ports; a port another route holds
        that does not move away in this change is refused.

        Raises:
            ApplicationError: ``RouterPortTaken`` when a port is not free (naming the route
                that holds it, if one does), ``RouterPortReserved`` when a published port is one
                replicas get, ``RouterConfigInvalid`` when the proxy refused the change, or
                ``StableNotRouted`` when a route lacks a server of its ``must_route`` (before
                any change).
        """
        keys = [route_key(r.tenant, r.project, r.service) for r in inp.routes]
        state = self.load()
        for key, r in zip(keys, inp.routes, strict=True):
            refuse_unrouted_stable(r, state.routes.get(key))
        configured = self.backend.configured_backends()
        changing = [
            r
            for key, r in zip(keys, inp.routes, strict=True)
            if key not in state.routes
            or r.published_port not in (None, state.routes[key].port)
            or r.mode != state.routes[key].mode
            # Left out at the proxy's start (its port was taken): back if the port is free.
            or state.routes[key].backend not in configured
        ]
        if not changing:
            self._set_container_ports(keys, inp.routes)
            return [
                self._info(r, state.routes[k].port, None)
                for k, r in zip(keys, inp.routes, strict=True)
            ]
        for r in changing:
            self._refuse_reserved(r)
        moved: dict[str, int] = {}
        asked = dict(zip(keys, inp.routes, strict=True))

        def mutate(s: RouterState) -> dict[str, list[str]]:
            moved.clear()
            wants = {}  # routes to make or move: key -> published port (None: from the range)
            for key, r in zip(keys, inp.routes, strict=True):
                found = s.routes.get(key)
                if found is None or r.published_port not in (None, found.port):
                    wants[key] = r.published_port
                if found is not None:
                    found.container_port, found.mode = r.container_port, r.mode
            leaving = {s.routes[k].port for k in wants if k in s.routes}
            published = [p for p in wants.values() if p is not None]
            if len(set(published)) != len(published):
                raise ApplicationError(
                    f"no route: two routes ask for one port ({sorted(published)})",
                    type="RouterPortTaken",
                    non_retryable=True,
                )
            ports = {}
            for key, port in wants.items():
                if port is None:
                    continue
                holder = next(
                    (k for k, x in s.routes.items() if x.port == port and k not in wants), None
                )
                if holder is not None:
                    raise ApplicationError(
                        f"no route for {key}: port {port} is the route of {holder}",
                        {"port": port, "route": holder},
                        type="RouterPortTaken",
                        non_retryable=True,
                    )
                # A port a route of this change leaves is the proxy's own until it reloads.
                ports[key] = port if port in leaving else self._free_port(s, key, port)
            for key, port in ports.items():
                if key in s.routes:
                    moved[key] = s.routes[key].port
                    s.routes[key].port = port
                else:
                    s.routes[key] = RouteState(
                        key=key,
                        port=port,
                        container_port=asked[key].container_port,
                        mode=asked[key].mode,
                    )
            for key, port in wants.items():  # new routes without a published port, last
                if port is None:
                    s.routes[key] = RouteState(
                        key=key,
                        port=self._free_port(s, key, None),
                        container_port=asked[key].container_port,
                        mode=asked[key].mode,
                    )
            return {}

        state = self._change(mutate)
        return [
            self._info(r, state.routes[k].port, moved.get(k))
            for k, r in zip(keys, inp.routes, strict=True)
        ]

    def _set_container_ports(self, keys: list[str], routes: list[RouteInput]) -> None:
        """Record the container port each route's new replicas serve on (the state only).

        The old replicas serve on theirs until the roll takes them out (emptying the route
        drained them all before a new replica was up), and the proxy's config does not name it
        (nginx would reload for nothing).
        """
        with self._locked():
            self._up()
            state = self.load()
            changed = False
            for key, r in zip(keys, routes, strict=True):
                route = state.routes.get(key)
                if route is not None and route.container_port != r.container_port:
                    route.container_port = r.container_port
                    changed = True
            if changed:
                self._save(state)

    def _info(self, r: RouteInput, port: int, moved_from: int | None) -> RouteInfo:
        return RouteInfo(
            service=r.service,
            url=route_url(r.mode, self.backend.bind, port),
            port=port,
            moved_from=moved_from,
        )

    def _addresses(
        self, route: RouteState, containers: list[str], container_port: str | None
    ) -> dict[str, str]:
        """Each container's address on the route.

        That is where it publishes ``container_port`` (None: the route's).

        Raises:
            ApplicationError: a container is not running with that port published (retryable:
                it may be restarting).
        """
        port = container_port or route.container_port
        addresses = {}
        for name in containers:
            addr = self._address(name, port)
            if addr is None:
                raise ApplicationError(
                    f"container {name} is not running with {port} published",
                    type="ContainerNotServing",
                )
            addresses[name] = addr
        return addresses

    def _routed(self, route: RouteState, servers: list[str]) -> list[str]:
        """The servers of ``servers`` the route has, in the state or only in the proxy.

        The proxy may have a server the state on disk lacks: an add killed before its save.
        """
        try:
            known = self.backend.known_servers(route)
        except RouterError:
            known = set()  # not running: it starts from the state on disk, without them
        return [n for n in servers if n in route.servers or n in known]

    def _serving(self, route: RouteState, add: dict[str, str], weight: int) -> bool:
        """True when the state and the running proxy both route ``add`` already, at ``weight``.

        Then an add changes nothing, and touches nothing: a rollback re-adding replicas a failed
        switch never took out must not need the proxy to take a new config (nginx reloads cut
        keep-alive connections, and a refused config would fail the rollback too).
        """
        wanted = {n: ServerState(address=a, weight=weight) for n, a in add.items()}
        if any(route.servers.get(n) != server for n, server in wanted.items()):
            return False
        try:
            live = self.backend.live_servers(route)
        except RouterError:
            return False  # not running: the change starts it
        return all(live.get(n) == weight for n in wanted)

    def _switch(
        self, route: RouteState, add: dict[str, str], remove: list[str], weight: int
    ) -> None:
        """One change of a route: ``add`` servers go in (ready) before ``remove`` drain out."""
        if not remove and self._serving(route, add, weight):
            return
        key = route.key

        def mutate(s: RouterState) -> dict[str, list[str]]:
            r = s.routes[key]
            for name, addr in add.items():
                r.servers[name] = ServerState(address=addr, weight=weight)
            for name in remove:
                r.servers.pop(name, None)
            return {key: remove} if remove else {}

        if remove:
            heartbeat("draining")
        self._change(mutate)

    def _route(self, tenant: str, project: str, service: str) -> RouteState | None:
        return self.load().routes.get(route_key(tenant, project, service))

    def _existing_route(self, tenant: str, project: str, service: str) -> RouteState:
        """The route, which must exist.

        Raises:
            ApplicationError: ``RouteMissing`` (non-retryable).
        """
        route = self._route(tenant, project, service)
        if route is None:
            key = route_key(tenant, project, service)
            raise ApplicationError(f"no route {key}", type="RouteMissing", non_retryable=True)
        return route

    @activity.defn(name="route_add")
    def route_add(self, inp: RouteServersInput) -> list[str]:
        """Add running containers to a route (ready to take requests). Idempotent.

        Returns:
            The server names now routed.

        Raises:
            ApplicationError: the route does not exist, a container is not running (retryable:
                it may be restarting), or the proxy refused the change.
        """
        route = self._existing_route(inp.tenant, inp.project, inp.service)
        addresses = self._addresses(route, inp.containers, inp.container_port)
        self._switch(route, addresses, [], inp.weight)
        return list(addresses)

    @activity.defn(name="route_remove")
    def route_remove(self, inp: RouteServersInput) -> list[str]:
        """Take servers out of a route: drain (in-flight requests finish), then delete. Idempotent.

        Returns:
            The server names that were routed and are now gone.

        Raises:
            ApplicationError: the proxy refused the change.
        """
        route = self._route(inp.tenant, inp.project, inp.service)
        if route is None:
            return []
        present = self._routed(route, inp.containers)
        if present:
            self._switch(route, {}, present, inp.weight)
        return present

    @activity.defn(name="route_switch")
    def route_switch(self, inp: RouteSwitchInput) -> list[str]:
        """Switch traffic in one change: route ``add`` (ready), then drain ``remove`` out.

        HAProxy readies the new servers before it drains the old ones; nginx reloads once, not
        twice (each reload cuts some keep-alive connections). Idempotent: a retry after a partial
        change converges on the same routes.

        Returns:
            The server names routed afterwards (``add``).

        Raises:
            ApplicationError: the route does not exist, a container to add is not running
                (retryable), or the proxy refused the change.
        """
        route = self._existing_route(inp.tenant, inp.project, inp.service)
        addresses = self._addresses(route, inp.add, inp.container_port)
        self._switch(route, addresses, self._routed(route, inp.remove), inp.weight)
        return list(addresses)

    @activity.defn(name="route_weights")
    def route_weights(self, inp: RouteWeightsInput) -> dict[str, int]:
        """Set server weights on a route (canary steps). Idempotent.

        No weights is nothing to change, whether the route exists or not (a canary's undo for a
        service without a route).

        Raises:
            ApplicationError: the route or a server is missing, or the proxy refused the change.
        """
        if not inp.weights:
            return {}
        key = route_key(inp.tenant, inp.project, inp.service)

        def mutate(s: RouterState) -> dict[str, list[str]]:
            r = s.routes.get(key)
            if r is None:
                raise ApplicationError(f"no route {key}", type="RouteMissing", non_retryable=True)
            for name, weight in inp.weights.items():
                if name not in r.servers:
                    raise ApplicationError(
                        f"{name} is not a server of {key}", type="RouteMissing", non_retryable=True
                    )
                r.servers[name].weight = weight
            return {}

        state = self._change(mutate)
        return {n: s.weight for n, s in state.routes[key].servers.items()}

    @activity.defn(name="delete_routes")
    def delete_routes(self, inp: DeleteRoutesInput) -> list[str]:
        """Delete the routes of services the project no longer routes. Idempotent.

        Their listen ports close (a graceful reload: connections they hold finish on the old
        worker) and go back to the range. A server still on such a route goes with it: the
        project's workflow asks only once the revision that served it is gone.

        Returns:
            The services whose routes were deleted (those that had one).

        Raises:
            ApplicationError: the proxy refused the change, or did not answer (retryable).
        """
        keys = {route_key(inp.tenant, inp.project, s): s for s in inp.services}
        if not any(k in self.load().routes for k in keys):
            return []
        deleted: list[str] = []

        def mutate(s: RouterState) -> dict[str, list[str]]:
            for key, service in keys.items():
                if s.routes.pop(key, None) is not None:
                    deleted.append(service)
            return {}

        self._change(mutate)
        return deleted

    def activities(self) -> list[Callable[..., Any]]:
        """Every activity of the router, for the worker."""
        return [
            self.ensure_route,
            self.ensure_routes,
            self.route_add,
            self.route_remove,
            self.route_switch,
            self.route_weights,
            self.delete_routes,
        ]
