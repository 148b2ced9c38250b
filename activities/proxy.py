"""The proxy behind the traffic router: its desired state, and the interface of its backends.

:class:`RouterState` is what ``<router dir>/state.json`` holds: every route, its listen port and its
servers. A :class:`ProxyBackend` (HAProxy in :mod:`activities.haproxy`, nginx in
:mod:`activities.nginx`) makes a running proxy serve it; :class:`activities.router.TrafficRouter`
decides what it should be.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, Field
from temporalio import activity

from moorage.compose.models import RouteMode


def replace_durably(tmp: Path, target: Path) -> None:
    """``os.replace(tmp, target)`` once ``tmp`` is on disk, and the rename made durable too.

    Without the syncs a power loss or a kernel panic may leave ``target`` empty (XFS, btrfs,
    ext4 with ``data=writeback``): the router's state unreadable, the proxy's config empty.
    """
    with tmp.open("rb+") as written:
        os.fsync(written.fileno())
    os.replace(tmp, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ServerState(BaseModel):
    """One backend server of a route."""

    address: str
    weight: int = 100


TCP_IDLE = "1h"
"""How long a TCP route's connection may stay idle (a database client's pooled connection), in
either proxy's duration syntax: the 60 s of HTTP routes are for requests."""


class RouteState(BaseModel):
    """One route: a listen port and its servers."""

    key: str
    """``tenant/project/service``."""
    port: int
    container_port: str
    mode: RouteMode = "http"
    """``tcp``: connections passed through (``x-moorage: {route: tcp}``); ``http``: requests."""
    servers: dict[str, ServerState] = Field(default_factory=dict)

    @property
    def backend(self) -> str:
        """Backend (upstream) name in the proxy's config."""
        return backend_name(self.key)


class DrainRecord(BaseModel):
    """A server a change took out of its route and drains, with the router's lock released."""

    by: str
    """The change (a token of its own): only it deletes the server once drained."""
    until: float
    """Wall-clock time (``time.time()``) after which the record is stale: its change was killed,
    and the next change takes the server out as one the state lacks."""


class RouterState(BaseModel):
    """Every route on this router."""

    routes: dict[str, RouteState] = Field(default_factory=dict)
    draining: dict[str, dict[str, DrainRecord]] = Field(default_factory=dict)
    """Route key → server → record: servers out of their route (no longer in ``routes``) that
    the proxy still has, draining. Other changes leave them alone while the record is fresh."""

    def drained_by_another(self, key: str, name: str) -> bool:
        """True when a change (not this one) drains server ``name`` of route ``key`` now."""
        record = self.draining.get(key, {}).get(name)
        return record is not None and record.until > time.time()

    def forget_drains_of_wanted(self) -> None:
        """Drop the records of servers routed again (a rollback), of routes gone, and stale ones.

        The change that drains them then leaves them be: they are another change's now. A stale
        record's server, if the proxy still has it, is taken out as one the state lacks.
        """
        now = time.time()
        for key in list(self.draining):
            route = self.routes.get(key)
            records = self.draining[key]
            for name, record in list(records.items()):
                if (route is not None and name in route.servers) or record.until <= now:
                    del records[name]
            if not records or route is None:
                del self.draining[key]

    def without(self, keys: set[str]) -> RouterState:
        """A copy of this state without the routes ``keys``."""
        copy = self.model_copy(deep=True)
        for key in keys:
            copy.routes.pop(key, None)
        return copy

    def record_drains(self, servers: dict[str, list[str]], by: str, until: float) -> None:
        """Record ``servers`` (route key → names) as drained by change ``by`` until ``until``."""
        for key, names in servers.items():
            for name in names:
                self.draining.setdefault(key, {})[name] = DrainRecord(by=by, until=until)

    def end_drains(self, by: str) -> dict[str, list[str]]:
        """Drop the records of change ``by``; the servers it is still to delete (key → names)."""
        mine: dict[str, list[str]] = {}
        for key in list(self.draining):
            records = self.draining[key]
            for name in [n for n, r in records.items() if r.by == by]:
                del records[name]
                route = self.routes.get(key)
                if route is None or name not in route.servers:
                    mine.setdefault(key, []).append(name)
            if not records:
                del self.draining[key]
        return mine


def backend_name(key: str) -> str:
    """The backend (upstream) name of the route ``key`` in the proxy's config."""
    return "be_" + key.replace("/", "_")


def route_key(tenant: str, project: str, service: str) -> str:
    """The key of a route."""
    return f"{tenant}/{project}/{service}"


class RouterError(Exception):
    """The proxy refused a change (message says why)."""


class ProxyUnavailable(RouterError):
    """The proxy did not answer (stopped or restarting): worth retrying."""


class ListenPortTaken(RouterError):
    """Another process bound a listen port after the router found it free.

    The proxy keeps its previous config; a retry picks another port.
    """


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """Process ``pid``'s state letter and parent pid (``/proc/<pid>/stat``); None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs: not gone, and not a zombie its parent has yet to reap.

    An exited proxy is a zombie until its parent reaps it: init (nginx daemonizes, and
    HAProxy outlives the worker that started it), which may take seconds, or that worker.
    """
    found = _state_and_parent(pid)
    return found is not None and found[0] != "Z"


def live_processes() -> dict[int, int]:
    """Every live process on this host (zombies left out): pid → parent pid, from ``/proc``.

    Read there, not from ``ps``, which may not be installed where the proxy runs.
    """
    result = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _state_and_parent(entry.name)
            if found is not None and found[0] != "Z":
                result[int(entry.name)] = found[1]
    return result


DRAIN_MARGIN_S = 10.0
"""Time a drain leaves its step for what comes after it (deleting the servers, saving the state)."""


def drain_deadline(drain_timeout_s: float) -> float:
    """When a drain that starts now gives up, as a ``time.monotonic()`` value.

    After the drain timeout, or before the step it runs in would time out, whichever comes
    first: a router step has 2 minutes, ``MOORAGE_DRAIN_TIMEOUT`` may be up to an hour. A drain
    that outlasted its step failed the attempt, and every retry drained again, as long: the
    deployment failed, and its undo (another router step) the same way.
    """
    now = time.monotonic()
    deadline = now + drain_timeout_s
    if not activity.in_activity():
        return deadline
    info = activity.info()
    if info.start_to_close_timeout is None:
        return deadline
    elapsed = max(0.0, (datetime.now(UTC) - info.started_time).total_seconds())
    left = info.start_to_close_timeout.total_seconds() - elapsed
    return min(deadline, now + max(0.0, left - min(DRAIN_MARGIN_S, left / 4)))


class Drain:
    """What a change left to do: wait for the servers it took out to drain, then remove them.

    The router waits with its lock released (a drain may take the whole drain timeout, and
    every other project's router step waited behind it), and removes them holding it again.
    This one has nothing to wait for.
    """

    servers: dict[str, list[str]]
    """Route key → servers the proxy still has, draining (recorded in the router's state)."""

    def __init__(self) -> None:
        self.servers = {}

    def wait(self) -> None:
        """Wait until the servers are drained, or the drain timeout is over (heartbeating)."""

    def remove(self, servers: dict[str, list[str]]) -> None:
        """Delete ``servers`` (of :attr:`servers`, those no change wants back) from the proxy."""


class ProxyBackend(ABC):
    """A proxy that serves the router's state: HAProxy or nginx."""

    name: str
    pidfile_name: str
    """The proxy's pid file in the router directory (its master process)."""

    def __init__(
        self, directory: Path, bind: str, drain_timeout_s: float = 10.0, managed: bool = True
    ):
        self.dir = directory
        self.bind = bind
        self.drain_timeout_s = drain_timeout_s
        self.managed = managed
        """False: the proxy runs outside Moorage; it is never started or stopped from here."""
        self.pidfile = directory / self.pidfile_name

    def _pid(self) -> int | None:
        """The master's pid when it is alive (and still the proxy: pids get reused)."""
        try:
            text = self.pidfile.read_text()
            for _ in range(25):
                if text.strip():
                    break
                # HAProxy's master truncates its pid file when it reloads and writes it tens of
                # ms later (seen in ~2% of reads during reloads): it has not gone.
                time.sleep(0.02)
                text = self.pidfile.read_text()
            pid = int(text.split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if self._is_proxy(pid) else None

    def _is_proxy(self, pid: int) -> bool:
        """True when ``pid`` is a live process of this proxy (pids get reused)."""
        try:
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return False
        return comm.startswith(self.name) and process_alive(pid)

    def stop(self) -> None:
        """Stop Moorage's own proxy: SIGTERM to the master, SIGKILL after 5 s."""
        pid = self._pid() if self.managed else None
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not process_alive(pid):
                return
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)

    @abstractmethod
    def running(self) -> bool:
        """True when the proxy process is up."""

    @abstractmethod
    def start(self, state: RouterState) -> None:
        """Write the config for ``state`` and start the proxy."""

    def publish(self, state: RouterState) -> None:
        """Write the config for ``state`` for a proxy run outside Moorage to start from.

        Raises:
            RouterError: the proxy would refuse the config.
        """
        raise NotImplementedError(f"{self.name} is always run by Moorage")

    def come_up(self, state: RouterState) -> None:
        """The proxy is down: start it (one run outside Moorage: write its config).

        Raises:
            ProxyUnavailable: the proxy is run outside Moorage and does not answer.
        """
        if self.managed:
            self.start(state)
            return
        self.publish(state)
        raise ProxyUnavailable(
            f"{self.name} runs outside Moorage (MOORAGE_ROUTER_MANAGED=false) and does not answer "
            f"in {self.dir}; its config is written there: start it"
        )

    @abstractmethod
    def change(self, old: RouterState, new: RouterState, draining: dict[str, list[str]]) -> Drain:
        """Bring the running proxy from ``old`` to ``new``; the drain it leaves to do.

        ``draining`` maps a route key to servers being taken out: they get no new requests from
        now on; their in-flight requests finish during :meth:`Drain.wait`.

        Raises:
            RouterError: the proxy refused the change; the old config keeps serving.
        """

    def apply(self, old: RouterState, new: RouterState, draining: dict[str, list[str]]) -> None:
        """:meth:`change`, then its drain to the end: the servers taken out are gone after it.

        Raises:
            RouterError: the proxy refused the change; the old config keeps serving.
        """
        drain = self.change(old, new, draining)
        drain.wait()
        drain.remove(drain.servers)

    @abstractmethod
    def live_servers(self, route: RouteState) -> dict[str, int]:
        """Servers the running proxy routes to for ``route``: name → weight (0 = draining)."""

    @abstractmethod
    def configured_port(self, backend: str) -> int | None:
        """The port the proxy's config on disk listens on for the route of ``backend``, if any.

        The config is written before the proxy reloads and the state is saved after: a worker
        killed in between leaves a route the proxy serves but the state lacks.
        """

    @abstractmethod
    def configured_backends(self) -> set[str]:
        """The backends (routes) of the proxy's config on disk: what it runs, or starts from.

        The router writes only routes the proxy can listen for: a route whose port another
        process holds is left out (see :meth:`activities.router.TrafficRouter._view`).
        """

    def serves(self, backend: str) -> bool:
        """True when the running proxy has the route of ``backend`` (unknown: True).

        Asked before a port named by the config on disk is taken for a killed attempt's.
        """
        return True

    def known_servers(self, route: RouteState) -> set[str]:
        """Every server the proxy has for ``route``, whatever its state (down, in maintenance)."""
        return set(self.live_servers(route))
