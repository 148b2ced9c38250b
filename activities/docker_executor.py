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
import math
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

from activities import HEARTBEAT_EVERY_S, classified, heartbeat, paced_heartbeat
from activities.container_config import (
    ResourceDefaults,
    ensure_volumes,
    healthcheck_config,
    host_options,
    owned_labels,
    project_labels,
    refuse_foreign_container,
    refuse_not_ours,
)
from activities.engine_view import container_name, instance_of
from activities.health import HealthWaits
from activities.inputs import (
    ContainerSelector,
    LabelledContainer,
    ListLabelledInput,
    NetworkInput,
    StartServiceInput,
    StopContainersInput,
    StopWait,
)
from activities.replica_ports import (
    PORT_ATTEMPTS,
    ReplicaPorts,
    bound_ports,
    ephemeral,
    port_taken,
)
from moorage import naming
from moorage.models import ServiceInstance
from moorage.settings import get_settings

T = TypeVar("T")

KILL_WAIT_S = 30.0
"""How long a stop waits for a container to exit after SIGKILL before it fails (retryable)."""


PULL_REFUSED = (
    "not found",
    "manifest unknown",
    "pull access denied",
    "repository does not exist",
    "unauthorized",
    "denied",
    "invalid reference format",
)
"""What a pull failure says when the registry does not have the image, or will not give it."""


def _pull_failure(image: str, message: str, status: int | None = None) -> ApplicationError:
    """A failed pull: for good if the image is not to be had, else retryable."""
    lowered = message.lower()
    if status == 404 or any(words in lowered for words in PULL_REFUSED):
        return ApplicationError(
            f"image {image!r} is not on the engine and could not be pulled: {message}",
            type="ImageNotFound",
            non_retryable=True,
        )
    return ApplicationError(f"image {image!r}: pull failed: {message}", type="ImagePullFailed")


class DockerExecutor(HealthWaits):
    """Container operations on one Docker engine, exposed as activities.

    The health waits come from :class:`HealthWaits`.
    """

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        defaults: ResourceDefaults | None = None,
        replica_ports: tuple[int, int] | None = None,
        instance: str | None = None,
    ):
        super().__init__(
            client or docker.from_env(timeout=120), instance or get_settings().instance
        )
        self.defaults = defaults or ResourceDefaults.from_settings(get_settings())
        self.replica_ports = ReplicaPorts(
            self.api, *(replica_ports or get_settings().replica_port_range())
        )

    # --- helpers -----------------------------------------------------------------------------

    def _remove(self, container_id: str, timeout_s: float = 60.0) -> None:
        """Remove a container and return once the engine no longer has it.

        A 409 ("removal of container … is already in progress", e.g. from an attempt that timed
        out and still runs) is not success yet: that removal may fail and leave a Dead container.

        Raises:
            ApplicationError: still there after ``timeout_s`` (retryable).
        """
        deadline = time.monotonic() + timeout_s
        beat = paced_heartbeat()  # up to a minute: past the 10 s heartbeat timeout
        while True:
            beat(f"removing {container_id[:12]}")
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
        """Pull ``image`` unless the engine has it; the activity heartbeats while it downloads.

        The engine reports a pull as a stream of progress events, and a failure met mid-way as
        one of them (the HTTP status was 200 by then). An image the registry does not have, or
        will not give, fails for good (``ImageNotFound``); anything else (a registry answering
        500, a timeout, a connection cut) is retried (``ImagePullFailed``).

        Raises:
            ApplicationError: ``ImageNotFound`` (non-retryable) or ``ImagePullFailed``.
        """
        try:
            self.api.inspect_image(image)
            return
        except docker.errors.ImageNotFound:
            pass
        beat = paced_heartbeat()
        heartbeat(f"pulling {image}")  # the wait for the first event may be long too
        try:
            for event in self.api.pull(image, stream=True, decode=True):
                if "error" in event:
                    detail = event.get("errorDetail") or {}
                    raise _pull_failure(image, str(detail.get("message") or event["error"]))
                beat(f"pulling {image}: {event.get('status', '')}")
        except docker.errors.APIError as exc:
            raise _pull_failure(image, str(exc.explanation or exc), exc.status_code) from exc
        try:
            self.api.inspect_image(image)
        except docker.errors.ImageNotFound as exc:  # said done, is not there: try again
            raise ApplicationError(
                f"image {image!r}: pulled, yet not on the engine", type="ImagePullFailed"
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
            ApplicationError: the engine refused the network; or the network, or a volume
                labelled with this tenant and project, is another project's or Moorage
                instance's (see :func:`refuse_not_ours`; not retryable).
        """
        name = naming.network_name(inp.tenant, inp.project)
        owner = project_labels(inp.tenant, inp.project)
        with classified(f"network {name}"):
            # Another instance's volumes of this project, and names another project holds:
            # refused here, before any step and before the network is made (a refused first
            # deployment left its network behind). A service checks its volumes again at start.
            wanted = [f"{k}={v}" for k, v in owner.items()]
            for vol in self.api.volumes(filters={"label": wanted}).get("Volumes") or []:
                refuse_not_ours("volume", vol["Name"], vol.get("Labels"), owner, self.instance)
            if inp.revision is not None:
                self._refuse_names_held(inp, inp.revision)
            # The engine matches ``names`` as a substring: "moorage-t-shop" also finds
            # "moorage-t-shop2". Only the exact name counts.
            found = [n for n in self.api.networks(names=[name]) if n["Name"] == name]
            if not found:
                try:
                    self.api.create_network(
                        name,
                        driver="bridge",
                        check_duplicate=True,
                        labels=owned_labels(inp.tenant, inp.project, self.instance),
                    )
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    found = [self.api.inspect_network(name)]  # made meanwhile: whose?
            if found:
                refuse_not_ours("network", name, found[0].get("Labels"), owner, self.instance)
        return name

    @activity.defn(name="remove_network")
    def remove_network(self, inp: NetworkInput) -> bool:
        """Remove the project's network when the project has no container. Idempotent.

        After a deployment was undone while no revision serves (a project's first), its network
        was the one thing left (labelled, and nothing removed it). It stays while any container
        of the project exists, running or not (what a failed deployment kept for inspection:
        the engine lists only running ones as attached, and removes a network under stopped
        ones, which then cannot start), and unless this instance made it (all its labels: an
        unlabelled one may be a user's, or shared by an older Moorage's installations).

        Returns:
            True when it was removed.
        """
        name = naming.network_name(inp.tenant, inp.project)
        owned = owned_labels(inp.tenant, inp.project, self.instance)
        with classified(f"network {name}"):
            found = [n for n in self.api.networks(names=[name]) if n["Name"] == name]
            if not found:
                return False
            labels = found[0].get("Labels") or {}
            if any(labels.get(k) != v for k, v in owned.items()):
                return False
            mine = [f"{k}={v}" for k, v in project_labels(inp.tenant, inp.project).items()]
            if self.api.containers(all=True, filters={"label": mine}):
                return False
            try:
                self.api.remove_network(found[0]["Id"])
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if exc.status_code in (403, 409):  # a container attached since: it stays
                    return False
                raise
        return True

    def _refuse_names_held(self, inp: NetworkInput, revision: int) -> None:
        """Refuse a deployment one of whose volume or container names another project holds.

        Names join their parts with dashes, which the parts may hold: project ``b`` with volume
        ``c-data`` and project ``b-c`` with volume ``data`` name the same volume, and so do
        service ``c-web`` of the one and ``web`` of the other. Found here, at the deployment's
        first step, such a deployment changes nothing; a service's start checks again.

        Raises:
            ApplicationError: see :func:`refuse_not_ours` and :func:`refuse_foreign_container`.
        """
        owner = project_labels(inp.tenant, inp.project)
        for volume in inp.volumes:
            name = naming.volume_name(inp.tenant, inp.project, volume)
            try:
                found = self.api.inspect_volume(name)
            except docker.errors.NotFound:
                continue
            refuse_not_ours("volume", name, found.get("Labels"), owner, self.instance)
        services = {
            naming.container_name(inp.tenant, inp.project, service, revision, slot): service
            for service, replicas in inp.replicas.items()
            for slot in range(replicas)
        }
        if not services:
            return
        # ``name`` matches a substring: one call lists every container of the project's names.
        prefix = naming.network_name(inp.tenant, inp.project)
        for container in self.api.containers(all=True, filters={"name": prefix}):
            for name in container["Names"]:
                service = services.get(name.lstrip("/"))
                if service is not None:
                    refuse_foreign_container(
                        name.lstrip("/"),
                        container["Labels"],
                        {**owner, naming.LABEL_SERVICE: service},
                        self.instance,
                    )

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
                instances.append(instance_of(self._start_one(inp, slot, name, net)))
            return instances

    def _start_one(self, inp: StartServiceInput, slot: int, name: str, net: str) -> dict[str, Any]:
        """Create (or adopt) one replica and start it; its inspect result.

        A replica with ports Moorage chose (a restart policy: see :mod:`activities.replica_ports`)
        that the engine cannot start because one of them was taken meanwhile is made again on
        others, if it never ran: made by this attempt, or by an earlier one that did not start
        it. One that ran (an old replica a rollback restores) is never removed here: the start
        fails, for a retry.
        """
        refused: set[int] = set()
        for attempt in range(1, PORT_ATTEMPTS + 1):
            container_id = self._create(inp, slot, name, net, refused)
            info: dict[str, Any] = self.api.inspect_container(container_id)
            if info["State"]["Running"]:
                return info
            try:
                self.api.start(container_id)
            except docker.errors.APIError as exc:
                # Host ports are bound only where Moorage chose them (a restart policy).
                chosen = bound_ports(info)
                never_ran = info["State"]["Status"] == "created"
                if not chosen or not never_ran or not port_taken(exc) or attempt == PORT_ATTEMPTS:
                    raise
                refused |= chosen
                self._remove(container_id)  # never ran: nothing in it
                continue
            info = self.api.inspect_container(container_id)
            return info
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def _create(
        self, inp: StartServiceInput, slot: int, name: str, net: str, refused: set[int]
    ) -> str:
        """Create one replica's container, or return the id of the one already there.

        ``refused``: ports chosen for it before, which the engine found taken.
        """
        try:
            found = self._adoptable(self.api.inspect_container(name), inp)
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
            naming.LABEL_INSTANCE: self.instance,
        }
        ensure_volumes(self.api, inp.tenant, inp.project, spec, self.instance)
        ports = (
            ephemeral(spec) if spec.restart == "no" else self.replica_ports.choose(spec, refused)
        )
        host_config = self.api.create_host_config(
            port_bindings=ports,
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
                healthcheck=healthcheck_config(spec),
                stop_signal=spec.stop_signal,
                stop_timeout=math.ceil(spec.stop_grace_period_s),
                working_dir=spec.working_dir,
                user=spec.user,
                hostname=f"{spec.name}-{slot}",
                detach=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another attempt created it meanwhile: adopt it
                return str(self._adoptable(self.api.inspect_container(name), inp)["Id"])
            raise
        return str(created["Id"])

    def _adoptable(self, found: dict[str, Any], inp: StartServiceInput) -> dict[str, Any]:
        """A container of a replica's name, found there: this instance's, of this service.

        Raises:
            ApplicationError: ``ContainerOfAnotherProject`` or ``ContainerOfAnotherInstance``
                (not retryable).
        """
        refuse_foreign_container(
            str(found["Name"]).lstrip("/"),
            found["Config"]["Labels"],
            {**project_labels(inp.tenant, inp.project), naming.LABEL_SERVICE: inp.service.name},
            self.instance,
        )
        return found

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
                        self.api.stop(info["Id"], timeout=math.ceil(grace))
                    elif not self._exited_within(info["Id"], grace):
                        self._kill(info["Id"], "SIGKILL")
                        if not self._exited_within(info["Id"], KILL_WAIT_S):
                            raise ApplicationError(
                                f"container {container_name(info)} still runs "
                                f"{KILL_WAIT_S:g} s after SIGKILL"
                            )

            self._parallel(stop, infos)
            return [container_name(i) for i in infos]

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
                stopped=[container_name(i) for i in infos if exited[i["Id"]]],
                running=[container_name(i) for i in infos if not exited[i["Id"]]],
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
            return [container_name(i) for i in infos]

    @activity.defn(name="list_containers")
    def list_containers(self, sel: ContainerSelector) -> list[ServiceInstance]:
        """The selected containers as the engine reports them now.

        Raises:
            ApplicationError: a retryable engine error.
        """
        with classified("list"):
            return [instance_of(i) for i in self._find(sel)]

    @activity.defn(name="list_labelled")
    def list_labelled(self, inp: ListLabelledInput) -> list[LabelledContainer]:
        """Every container carrying Moorage's labels (of one tenant, or of all), of this instance.

        Another instance's containers are not listed: their projects are unknown to this
        instance's Temporal, and ReconcileAll would remove them as orphans.

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
            if not str(lab.get(naming.LABEL_REVISION, "")).isdigit() or not self.owned(lab):
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
            self.remove_network,
            self.start_service,
            self.stop_containers,
            self.stop_containers_briefly,
            self.remove_containers,
            self.list_containers,
            self.wait_healthy,
            self.wait_healthy_briefly,
        ]
