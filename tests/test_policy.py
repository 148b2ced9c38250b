"""Compose policy end to end: per-tenant allowances, ``${VAR}`` interpolation, named volumes,
resource limits, on the real engine."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from temporalio.client import Client

from moorage import naming
from moorage.models import DeploymentStatus, DeployRequest
from moorage.service import DeploymentService, InvalidError
from moorage.settings import Settings
from tests.helpers import TENANT, USER, labelled, wait_terminal

pytestmark = pytest.mark.integration

TRUSTED = "trusted"
BIND_ROOT = Path("/tmp/moorage-policy-test")


@pytest.fixture
def bind_dir() -> Iterator[Path]:
    d = BIND_ROOT / uuid.uuid4().hex[:8]
    d.mkdir(parents=True)
    (d / "index.html").write_text("from the host\n")
    yield d
    for child in d.iterdir():
        child.unlink()
    d.rmdir()


def policy_service(
    client: Client, settings: Settings, policies: dict[str, object]
) -> DeploymentService:
    return DeploymentService(
        client, settings.model_copy(update={"tenant_policies": json.dumps(policies)})
    )


@pytest.fixture
def policed(temporal_client: Client, settings: Settings, worker: None) -> DeploymentService:
    return policy_service(
        temporal_client,
        settings,
        {TRUSTED: {"cap_add": ["NET_ADMIN"], "bind_paths": [str(BIND_ROOT)]}},
    )


async def deploy_ok(service: DeploymentService, tenant: str, project: str) -> None:
    dep = await service.deploy(tenant, USER, project, DeployRequest())
    state = await wait_terminal(service, dep.id, tenant=tenant)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message


def only_container(client: docker.DockerClient, project: str) -> dict[str, object]:
    containers = labelled(client, project)
    assert len(containers) == 1
    info: dict[str, object] = client.api.inspect_container(containers[0].id)
    return info


async def test_an_allowance_holds_for_its_tenant_only(
    policed: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    text = "services:\n  web:\n    image: moorage-demo:v1\n    cap_add: [NET_ADMIN]\n"
    with pytest.raises(InvalidError) as refused:
        await policed.apply_project(TENANT, project, text)
    assert refused.value.field == ["body", "compose", "web", "cap_add"]
    assert "MOORAGE_TENANT_POLICIES" in refused.value.message

    await policed.apply_project(TRUSTED, project, text)
    await deploy_ok(policed, TRUSTED, project)
    host = only_container(docker_client, project)["HostConfig"]
    assert host["CapAdd"] == ["NET_ADMIN"]  # type: ignore[index]


async def test_a_revoked_allowance_refuses_the_next_deploy(
    policed: DeploymentService,
    temporal_client: Client,
    settings: Settings,
    docker_client: docker.DockerClient,
    project: str,
) -> None:
    text = "services:\n  web:\n    image: moorage-demo:v1\n    cap_add: [NET_ADMIN]\n"
    await policed.apply_project(TRUSTED, project, text)
    revoked = policy_service(temporal_client, settings, {})
    with pytest.raises(InvalidError) as refused:
        await revoked.deploy(TRUSTED, USER, project, DeployRequest())
    assert "no longer passes" in refused.value.message
    assert "cap_add" in refused.value.message
    assert await revoked.list_deployments(TRUSTED, project) == []
    assert labelled(docker_client, project) == []


async def test_an_allowed_bind_mount_serves_host_files_and_a_symlink_out_is_refused(
    policed: DeploymentService, docker_client: docker.DockerClient, project: str, bind_dir: Path
) -> None:
    text = (
        "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['80']\n"
        f"    volumes: ['{bind_dir}:/www/host:ro']\n"
    )
    await policed.apply_project(TRUSTED, project, text)
    await deploy_ok(policed, TRUSTED, project)
    info = only_container(docker_client, project)
    mounts = info["Mounts"]
    assert [(m["Type"], m["Source"], m["RW"]) for m in mounts] == [  # type: ignore[attr-defined]
        ("bind", str(bind_dir), False)
    ]
    # The replica serves the host's file (its published port, on 127.0.0.1).
    [binding] = info["NetworkSettings"]["Ports"]["80/tcp"]  # type: ignore[index]
    url = f"http://127.0.0.1:{binding['HostPort']}/host/index.html"
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: ASYNC210
        assert answer.read().decode() == "from the host\n"

    # Allowed as written, but it resolves to /etc on the host: the worker refuses it.
    link = bind_dir / "etc"
    os.symlink("/etc", link)
    try:
        escaping = text.replace(f"'{bind_dir}:", f"'{link}:")
        await policed.apply_project(TRUSTED, project, escaping)
        dep = await policed.deploy(TRUSTED, USER, project, DeployRequest())
        state = await wait_terminal(policed, dep.id, tenant=TRUSTED)
    finally:
        link.unlink()
    assert state.deployment.status in (DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK)
    assert "resolves to '/etc'" in state.deployment.message
    # The revision that served before still does, alone.
    containers = labelled(docker_client, project)
    assert {c.labels["moorage.revision"] for c in containers} == {"1"}


async def test_variables_are_substituted_before_the_check_and_stored_resolved(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    template = (
        "services:\n  web:\n    image: moorage-demo:${TAG}\n    ports: ['80']\n"
        "    environment:\n      GREETING: ${GREETING:-hello}\n      PRICE: $$5\n"
    )
    with pytest.raises(InvalidError) as missing:
        await service.apply_project(TENANT, project, template)
    assert "'TAG' is not set" in missing.value.message
    assert missing.value.field == ["body", "compose", "web", "image"]

    # Validation runs on the result: a variable cannot smuggle in a bind mount.
    with pytest.raises(InvalidError) as smuggled:
        await service.apply_project(
            TENANT,
            project,
            "services:\n  web:\n    image: moorage-demo:v1\n    volumes: ['${SRC}:/host']\n",
            {"SRC": "/"},
        )
    assert smuggled.value.field == ["body", "compose", "web", "volumes"]

    stored = await service.apply_project(TENANT, project, template, {"TAG": "v2"})
    assert "moorage-demo:v2" in (stored.compose or "")
    assert "${" not in (stored.compose or "")
    await deploy_ok(service, TENANT, project)
    env = only_container(docker_client, project)["Config"]["Env"]  # type: ignore[index]
    assert "GREETING=hello" in env
    assert "PRICE=$5" in env
    assert labelled(docker_client, project)[0].image.tags == ["moorage-demo:v2"]


async def test_yes_and_on_reach_the_container_as_written_and_the_stored_text_says_yaml_1_2(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """As Docker Compose reads them (YAML 1.2): ``FLAG: on`` reached the container as
    ``FLAG=true``. The stored text declares ``%YAML 1.2``, so the deployment's own reading of
    it (as a stored revision) is the one the apply checked."""
    text = (
        "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['80']\n"
        "    restart: no\n    environment: {FLAG: on, QUIET: no, 'NO': yes}\n"
    )
    stored = await service.apply_project(TENANT, project, text)
    assert stored.compose == "%YAML 1.2\n---\n" + text
    await deploy_ok(service, TENANT, project)
    env = only_container(docker_client, project)["Config"]["Env"]  # type: ignore[index]
    assert {"FLAG=on", "QUIET=no", "NO=yes"} <= set(env)


async def test_named_volumes_tmpfs_and_resource_limits(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    text = (
        "services:\n"
        "  web:\n    image: moorage-demo:v1\n    volumes: ['data:/data', {type: tmpfs, "
        "target: /scratch, tmpfs: {size: 1m}}]\n    mem_limit: 64m\n    cpus: 0.5\n"
        "  api:\n    image: moorage-demo:v1\n"
        "volumes:\n  data: {}\n"
    )
    await service.apply_project(TENANT, project, text)
    await deploy_ok(service, TENANT, project)
    volume = docker_client.volumes.get(naming.volume_name(TENANT, project, "data"))
    assert volume.attrs["Labels"][naming.LABEL_PROJECT] == project
    containers = {c.labels["moorage.service"]: c for c in labelled(docker_client, project)}
    web = docker_client.api.inspect_container(containers["web"].id)
    assert [m["Name"] for m in web["Mounts"] if m["Type"] == "volume"] == [volume.name]
    assert web["HostConfig"]["Tmpfs"] == {"/scratch": "size=1048576"}
    assert web["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert web["HostConfig"]["NanoCpus"] == 500_000_000
    # A service that sets no limits gets the defaults (MOORAGE_DEFAULT_MEMORY/_CPUS/_PIDS).
    api = docker_client.api.inspect_container(containers["api"].id)["HostConfig"]
    defaults = Settings()
    assert api["Memory"] == defaults.default_memory_bytes()
    assert api["NanoCpus"] == int(defaults.default_cpus * 1e9)
    assert api["PidsLimit"] == defaults.default_pids
