"""What a service's Compose spec asks of the engine beyond image and command.

Mounts, devices, privileges and resource limits, turned into ``create_host_config`` options. The
Compose parser has already refused what the tenant's policy does not allow; this module checks
once more what only the Docker host can see (a bind source that is a symlink), scopes named
volumes to their project and fills in resource limits the Compose file leaves unset.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import docker
import docker.types
from temporalio.exceptions import ApplicationError

from moorage import naming
from moorage.compose import MountSpec, ServiceSpec
from moorage.settings import Settings

NANOS_PER_CPU = 1_000_000_000
NANOS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ResourceDefaults:
    """Limits a container gets when its Compose service sets none."""

    memory_bytes: int
    cpus: float
    pids: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ResourceDefaults:
        """``MOORAGE_DEFAULT_MEMORY`` / ``_CPUS`` / ``_PIDS``."""
        return cls(
            memory_bytes=settings.default_memory_bytes(),
            cpus=settings.default_cpus,
            pids=settings.default_pids,
        )


def _bind_source(mount: MountSpec) -> str:
    """The bind source, refused when the host resolves it elsewhere (a symlink on the way).

    The policy allowed the path as written; a symlink below an allowed prefix could point
    anywhere, so the path must be its own real path. (Checked where the worker runs: on the
    Docker host for a local engine.)

    Raises:
        ApplicationError: the path resolves elsewhere (non-retryable).
    """
    source = mount.source or ""
    if os.path.lexists(source) and os.path.realpath(source) != source:
        raise ApplicationError(
            f"bind mount of {source!r} is refused: it resolves to "
            f"{os.path.realpath(source)!r} on the host (a symlink on the way)",
            type="PolicyRefused",
            non_retryable=True,
        )
    return source


def owned_labels(tenant: str, project: str, instance: str) -> dict[str, str]:
    """The labels of a project's network or volume made by Moorage ``instance``."""
    return {**project_labels(tenant, project), naming.LABEL_INSTANCE: instance}


def refuse_not_ours(
    kind: str,
    name: str,
    labels: dict[str, str] | None,
    owner: dict[str, str],
    instance: str,
) -> None:
    """Refuse a network, volume or container of this name that another project or instance made.

    Names join tenant, project (and volume, or service) with dashes, which the names may hold
    too: tenant ``a`` with project ``b-c`` and tenant ``a-b`` with project ``c`` both name their
    network ``moorage-a-b-c``, and the second used to join the first's network, mount its
    volumes and adopt its containers. ``owner``: the labels that say whose it must be (tenant,
    project, service). Two installations on one engine deploying the same project would share
    them too; one made before the instance label (it has none) is any instance's, so an
    installation's own, made by an older Moorage, keeps working.

    Raises:
        ApplicationError: ``<Kind>OfAnotherProject`` or ``<Kind>OfAnotherInstance`` (not
            retryable).
    """
    refuse_another_projects(kind, name, labels, owner)
    made_by = (labels or {}).get(naming.LABEL_INSTANCE)
    if made_by is None or made_by == instance:
        return
    raise ApplicationError(
        f"{kind} {name} belongs to Moorage instance {made_by!r}, not to this one ({instance!r}): "
        "two instances on one engine must not deploy the same tenant and project",
        {kind: name, "instance": made_by},
        type=f"{kind.capitalize()}OfAnotherInstance",
        non_retryable=True,
    )


def refuse_foreign_container(
    name: str, labels: dict[str, str] | None, owner: dict[str, str], instance: str
) -> None:
    """Refuse a container of a replica's name that another project, service or instance made.

    Unlike a network or volume, a container without the instance label is the default
    instance's (see :func:`moorage.naming.instance_label`).

    Raises:
        ApplicationError: ``ContainerOfAnotherProject`` or ``ContainerOfAnotherInstance`` (not
            retryable).
    """
    refuse_another_projects("container", name, labels, owner)
    made_by = naming.instance_label(labels)
    if made_by == instance:
        return
    raise ApplicationError(
        f"container {name} belongs to Moorage instance {made_by!r}, not to this one "
        f"({instance!r}): two instances on one engine must not deploy the same tenant, "
        "project, service, revision and slot",
        {"container": name, "instance": made_by},
        type="ContainerOfAnotherInstance",
        non_retryable=True,
    )


def refuse_another_projects(
    kind: str, name: str, labels: dict[str, str] | None, owner: dict[str, str]
) -> None:
    """Refuse what carries another tenant, project or service than ``owner`` says it must.

    Raises:
        ApplicationError: ``<Kind>OfAnotherProject`` (not retryable).
    """
    found = labels or {}
    if any(k in found and found[k] != v for k, v in owner.items()):
        whose = ", ".join(f"{k.removeprefix('moorage.')} {found[k]!r}" for k in owner if k in found)
        ours = ", ".join(f"{k.removeprefix('moorage.')} {v!r}" for k, v in owner.items())
        raise ApplicationError(
            f"{kind} {name} belongs to {whose}, not to {ours}: their names are the same "
            "(dashes join the parts); rename one of the projects",
            # Whose it is, apart: a ``service`` key in the details names the deployment's
            # service at fault in its failure event, and this one is the other project's.
            {
                kind: name,
                "held_by": {k.removeprefix("moorage."): found[k] for k in owner if k in found},
            },
            type=f"{kind.capitalize()}OfAnotherProject",
            non_retryable=True,
        )


def project_labels(tenant: str, project: str) -> dict[str, str]:
    """The labels that say which project a network or volume is."""
    return {naming.LABEL_TENANT: tenant, naming.LABEL_PROJECT: project}


def ensure_volumes(
    api: docker.APIClient, tenant: str, project: str, spec: ServiceSpec, instance: str
) -> None:
    """Create the project's named volumes this service mounts (idempotent; data persists).

    Raises:
        ApplicationError: a volume is another project's or Moorage instance's (see
            :func:`refuse_not_ours`).
    """
    for mount in spec.mounts:
        if mount.type == "volume" and mount.source:
            name = naming.volume_name(tenant, project, mount.source)
            # The engine answers with the volume there, if there is one (its labels unchanged).
            volume = api.create_volume(
                name,
                driver="local",
                driver_opts=mount.driver_opts or None,
                # The Compose file's own (no moorage.* among them: refused), then Moorage's.
                labels={**mount.volume_labels, **owned_labels(tenant, project, instance)},
            )
            refuse_not_ours(
                "volume", name, volume.get("Labels"), project_labels(tenant, project), instance
            )


def host_options(
    spec: ServiceSpec, tenant: str, project: str, defaults: ResourceDefaults
) -> dict[str, Any]:
    """``create_host_config`` options: mounts, devices, privileges and limits of the service.

    Raises:
        ApplicationError: a bind source resolves elsewhere than written (non-retryable).
    """
    mounts: list[docker.types.Mount] = []
    tmpfs: dict[str, str] = {}
    for m in spec.mounts:
        if m.type == "tmpfs":
            # A read-only tmpfs was mounted writable (its read_only dropped).
            size = [f"size={m.tmpfs_size_bytes}"] if m.tmpfs_size_bytes else []
            tmpfs[m.target] = ",".join([*size, *(["ro"] if m.read_only else [])])
        elif m.type == "bind":
            mounts.append(
                docker.types.Mount(m.target, _bind_source(m), type="bind", read_only=m.read_only)
            )
        else:
            source = naming.volume_name(tenant, project, m.source) if m.source else ""
            mounts.append(
                docker.types.Mount(
                    m.target, source, type="volume", read_only=m.read_only, no_copy=m.nocopy
                )
            )
    options: dict[str, Any] = {
        "mem_limit": spec.mem_limit_bytes or defaults.memory_bytes,
        "nano_cpus": int((spec.cpus or defaults.cpus) * NANOS_PER_CPU),
        "pids_limit": spec.pids_limit or defaults.pids,
    }
    if spec.restart != "no":
        options["restart_policy"] = {
            "Name": spec.restart,
            "MaximumRetryCount": spec.restart_max_retries,
        }
    if mounts:
        options["mounts"] = mounts
    if tmpfs:
        options["tmpfs"] = tmpfs
    if spec.privileged:
        options["privileged"] = True
    if spec.cap_add:
        options["cap_add"] = spec.cap_add
    if spec.cap_drop:
        options["cap_drop"] = spec.cap_drop
    if spec.devices:
        options["devices"] = [
            f"{d.host_path}:{d.container_path}:{d.permissions}" for d in spec.devices
        ]
    return options


def healthcheck_config(spec: ServiceSpec) -> dict[str, Any] | None:
    """The Compose ``healthcheck`` as the engine's ``Healthcheck`` (None: the image's own)."""
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
            result[key] = int(value * NANOS_PER_S)
    if hc.retries is not None:
        result["retries"] = hc.retries
    return result or None
