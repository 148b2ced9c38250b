"""What the executor reads of the engine: the selected containers, their names, logs and states.

Shared by the container steps (:mod:`activities.docker_executor`) and the health waits
(:mod:`activities.health`).
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors

from activities.inputs import ContainerSelector
from moorage import naming
from moorage.models import ServiceInstance

LOG_TAIL_LINES = 20
"""Lines of a failed container's log carried into the failure and its event."""
LOG_TAIL_CHARS = 4096
"""At most this much of them: the event stays in the project's state, which travels whole
through every continue-as-new (Temporal caps a payload at 2 MiB), and one line may be megabytes
(a minified JSON log)."""


def bounded_tail(text: str, limit: int = LOG_TAIL_CHARS) -> str:
    """The end of ``text``, at most ``limit`` characters, cut at a line start where it can be."""
    if len(text) <= limit:
        return text
    tail = text[-(limit - 1) :]
    newline = tail.find("\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]
    return "…" + tail


def container_name(info: dict[str, Any]) -> str:
    """A container's name from its inspect result."""
    return str(info["Name"]).lstrip("/")


def label_filters(sel: ContainerSelector) -> list[str]:
    """The engine's label filters for the selector (its slots are filtered afterwards)."""
    labels = [f"{naming.LABEL_TENANT}={sel.tenant}", f"{naming.LABEL_PROJECT}={sel.project}"]
    if sel.service is not None:
        labels.append(f"{naming.LABEL_SERVICE}={sel.service}")
    if sel.revision is not None:
        labels.append(f"{naming.LABEL_REVISION}={sel.revision}")
    return labels


def instance_of(info: dict[str, Any]) -> ServiceInstance:
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
        container_name=container_name(info),
        service_name=labels.get(naming.LABEL_SERVICE, ""),
        revision=int(labels.get(naming.LABEL_REVISION, "0")),
        slot=int(labels.get(naming.LABEL_SLOT, "0")),
        image=info["Config"]["Image"],
        status=state["Status"],
        health=health["Status"] if health else None,
        ports=ports,
        deployment_id=labels.get(naming.LABEL_DEPLOYMENT),
    )


class EngineView:
    """The containers of one Moorage instance on one Docker engine, read through its API.

    ``instance``: ``MOORAGE_INSTANCE``; another instance's containers are not seen.
    """

    def __init__(self, client: docker.DockerClient, instance: str = naming.DEFAULT_INSTANCE):
        self.client = client
        self.api = client.api
        self.instance = instance
        """The Moorage instance whose containers this view sees, makes and reconciles."""

    def owned(self, labels: dict[str, str] | None) -> bool:
        """Whether a container with these labels is this instance's."""
        return naming.instance_label(labels) == self.instance

    def _find(self, sel: ContainerSelector) -> list[dict[str, Any]]:
        """Inspect results of every container the selector matches, sorted by name."""
        found = self.api.containers(all=True, filters={"label": label_filters(sel)})
        result = []
        for summary in found:
            try:
                info = self.api.inspect_container(summary["Id"])
            except docker.errors.NotFound:
                continue  # removed between list and inspect
            if not self.owned(info["Config"]["Labels"]):
                continue  # another Moorage's, with a project of the same name
            slot = int((info["Config"]["Labels"] or {}).get(naming.LABEL_SLOT, "-1"))
            if sel.slots is None or slot in sel.slots:
                result.append(info)
        return sorted(result, key=lambda i: str(i["Name"]))

    def _logs_tail(self, container_id: str) -> str:
        try:
            raw = self.api.logs(container_id, tail=LOG_TAIL_LINES)
        except docker.errors.APIError:
            return ""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        return bounded_tail(text.strip())
