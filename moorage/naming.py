"""Deterministic names and labels for everything Moorage creates on a Docker engine.

A retried activity finds what an earlier attempt made by these names and labels, so every
activity can be idempotent.
"""

from __future__ import annotations

LABEL_PREFIX = "moorage."
LABEL_TENANT = "moorage.tenant"
LABEL_PROJECT = "moorage.project"
LABEL_SERVICE = "moorage.service"
LABEL_DEPLOYMENT = "moorage.deployment"
LABEL_REVISION = "moorage.revision"
LABEL_SLOT = "moorage.slot"
LABEL_VERSION = "moorage.version"
LABEL_INSTANCE = "moorage.instance"
"""Which Moorage installation made the container (``MOORAGE_INSTANCE``), on an engine several
share."""
DEFAULT_INSTANCE = "default"
"""The instance of a container made before the label was (it has none)."""


def instance_label(labels: dict[str, str] | None) -> str:
    """The Moorage instance a container with these labels belongs to."""
    return (labels or {}).get(LABEL_INSTANCE, DEFAULT_INSTANCE)


def container_name(tenant: str, project: str, service: str, revision: int, slot: int) -> str:
    """The container of one replica (``slot``) of a service in one revision."""
    return f"moorage-{tenant}-{project}-{service}-r{revision}-{slot}"


def network_name(tenant: str, project: str) -> str:
    """The project's own bridge network: services reach each other by service name on it."""
    return f"moorage-{tenant}-{project}"


def volume_name(tenant: str, project: str, volume: str) -> str:
    """A named volume of the project (its data outlives deployments)."""
    return f"moorage-{tenant}-{project}-{volume}"


def deployment_id(project: str, revision: int) -> str:
    """A deployment's id, unique within its tenant."""
    return f"{project}.{revision}"


def split_deployment_id(dep_id: str) -> tuple[str, int] | None:
    """``shop.3`` → ``("shop", 3)``; None when the id is not of that form."""
    project, dot, rev = dep_id.rpartition(".")
    if not dot or not project or not rev.isascii() or not rev.isdigit() or len(rev) > 9:
        return None
    return project, int(rev)


def project_workflow_id(tenant: str, project: str) -> str:
    """The entity workflow of a project.

    The tenant is part of every workflow id, so one tenant can never address another's workflow.
    """
    return f"moorage/{tenant}/project/{project}"


def deployment_workflow_id(tenant: str, dep_id: str) -> str:
    """The strategy (child) workflow of one deployment."""
    return f"moorage/{tenant}/deployment/{dep_id}"
