"""Health waits: until the selected replicas are ready, or a verdict on the one that is not.

Readiness is Docker's HEALTHCHECK status, or Moorage's own probe (``x-moorage.probe``), held for
``min_ready_s``. A replica that exits, turns unhealthy, or is restarted by its restart policy fails
the wait at once; one not ready within its window fails it at the end, named, with its log.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from functools import partial
from typing import Any

import docker
import docker.errors
import requests.exceptions
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities import HEARTBEAT_EVERY_S, classified, heartbeat
from activities.engine_view import EngineView, container_name, instance_of, label_filters
from activities.inputs import ContainerSelector, HealthWait, WaitHealthyInput
from activities.probes import probe_all
from moorage.models import ServiceInstance


class StateChanges:
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
            "label": label_filters(sel),
            "event": list(self.EVENTS),
        }
        self._changed = threading.Event()
        self._stream: Any = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> StateChanges:
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

    def wait(self, timeout: float, beat: Callable[[], None] | None = None) -> bool:
        """Sleep until a change or ``timeout``; True when a change woke it.

        ``beat`` runs every :data:`~activities.HEARTBEAT_EVERY_S` of the sleep: a health check
        interval may be far longer than the activity's heartbeat timeout (10 s).
        """
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            woke = self._changed.wait(max(0.0, min(left, HEARTBEAT_EVERY_S)))
            if woke:
                # Cleared only when it woke the wait: a change set between a timed-out wait and
                # a clear was lost (the next check came a whole interval later).
                self._changed.clear()
            if woke or left <= HEARTBEAT_EVERY_S:
                return woke
            if beat is not None:
                beat()

    def __exit__(self, *exc: object) -> None:
        if self._stream is not None:
            with suppress(Exception):  # closing a stream the engine already closed
                self._stream.close()
        if self._reader is not None:
            self._reader.join(timeout=5)


class HealthWaits(EngineView):
    """The health-wait activities of the executor."""

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
        with StateChanges(self.api, inp.selector) as changes:
            return self._checks(inp, changes, pause, until)

    def _checks(
        self,
        inp: WaitHealthyInput,
        changes: StateChanges,
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
        misses: dict[str, int] = {}  # per replica, the checks in a row it was not ready at
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
                states: list[tuple[dict[str, Any], bool | None, str]] = []
                for info in infos:
                    name = container_name(info)
                    earlier = int(info.get("RestartCount") or 0) if inp.earlier_restarts_ok else 0
                    ok, seen = self._ready(
                        info, inp, checks, infos, restarts.setdefault(name, earlier)
                    )
                    states.append((info, ok, seen))
                # The replicas that run and wait for Moorage's probe: probed side by side.
                running = [info for info, ok, _ in states if ok is None]
                verdicts = iter(
                    probe_all(inp.probe, running, partial(heartbeat, checks)) if inp.probe else []
                )
                now = time.monotonic()
                for info, maybe, seen in states:
                    name = container_name(info)
                    ok, seen = next(verdicts) if maybe is None else (maybe, seen)
                    if ok:
                        misses.pop(name, None)
                        since = ready_since.setdefault(name, now)
                        if now - since < inp.min_ready_s:
                            not_counted.append(name)
                            seen = f"ready {now - since:.1f}s of {inp.min_ready_s:g}s"
                    else:
                        not_counted.append(name)
                        ready_since.pop(name, None)
                        misses[name] = misses.get(name, 0) + 1
                        if inp.fail_after is not None and misses[name] >= inp.fail_after:
                            self._fail_health(
                                f"container {name} not ready at {misses[name]} checks in a row "
                                f"({seen})",
                                info,
                                infos,
                            )
                    last[name] = seen
                if not not_counted:
                    return [instance_of(i) for i in infos], checks, now - began
            now = time.monotonic()
            if now >= give_up:
                break
            if until is not None and now >= until:
                return None, checks, now - began
            changes.wait(
                min(pause, give_up - now, (until - now) if until is not None else pause),
                partial(heartbeat, checks),
            )
        waiting = ", ".join(f"{n}: {last[n]}" for n in not_counted)
        infos = self._find(inp.selector)
        # The replica named is the first one the last check did not count: its probe failed, it
        # was not healthy yet, or it had not stayed ready for min_ready (Docker's own health may
        # say healthy all along while Moorage's probe fails).
        self._fail_health(
            f"not healthy within {window:g}s ({checks} checks, {pause:g}s apart at most) "
            f"({waiting})",
            next((i for i in infos if container_name(i) in not_counted), None),
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
    ) -> tuple[bool | None, str]:
        """Is one container ready now? Fails the wait at once when it exited or is unhealthy.

        None: it runs, and Moorage's probe decides (the caller probes the replicas side by side).

        A replica its restart policy restarted (more than ``earlier_restarts`` times) or is about
        to restart has crashed: that fails the wait too, as an exit does without the policy.
        """
        state = info["State"]
        health = state.get("Health")
        name = container_name(info)
        restarted = int(info.get("RestartCount") or 0)
        restarting = bool(state.get("Restarting"))
        if restarted > earlier_restarts or (restarting and not inp.earlier_restarts_ok):
            how = (
                f"is restarting it (exit code {state.get('ExitCode')})"
                if restarting
                # Running again: the engine has reset its exit code; the log tells why.
                else f"restarted it ({restarted} restart(s))"
            )
            self._fail_health(f"container {name} exited and its restart policy {how}", info, infos)
        if restarting:
            # The engine counts a restart as it begins it: this one is among the earlier ones.
            return False, "restarting"
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
            return None, "to probe"
        if health and health["Status"] != "healthy":
            return False, str(health["Status"])
        return True, str(health["Status"]) if health else "running"

    def _fail_health(
        self, reason: str, info: dict[str, Any] | None, infos: list[dict[str, Any]]
    ) -> None:
        logs = self._logs_tail(info["Id"]) if info else ""
        container = container_name(info) if info else None
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
