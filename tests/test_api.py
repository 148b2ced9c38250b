"""The HTTP API against a real Temporal dev server and a real Docker engine."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from typing import cast

import docker
import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client

from api.deps import get_service
from api.main import MAX_BODY_BYTES, create_app
from moorage.compose import ComposeError, parse_compose
from moorage.service import DeploymentService
from moorage.settings import Settings, get_settings
from tests.helpers import TENANT, compose, get_version, labelled, wait_terminal

pytestmark = pytest.mark.integration

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@pytest_asyncio.fixture(loop_scope="session")
async def http(service: DeploymentService, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    api_settings = settings.model_copy(
        update={"api_keys": "key-a=acme/alice,key-b=beta/bob,key-v=acme/vic:viewer"}
    )
    app.dependency_overrides[get_settings] = lambda: api_settings
    app.dependency_overrides[get_service] = lambda: service
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://moorage"
    ) as client:
        yield client


async def test_the_status_shows_a_blue_green_s_preview_route(
    http: httpx.AsyncClient, project: str
) -> None:
    """The README sent operators to ``routes["web:preview"]`` in the deployment status, which
    had no routes: nothing the API answered named the preview route to try before promoting."""
    put = await http.put(
        f"/api/projects/{project}", json={"compose": compose(api_image=None)}, headers=A
    )
    assert put.status_code == 200, put.text
    dep = await http.post(
        f"/api/projects/{project}/deploy",
        json={"strategy": "blue_green", "auto_promote": False, "health_check_retries": 20},
        headers=A,
    )
    assert dep.status_code == 202, dep.text
    dep_id = dep.json()["id"]
    deadline = time.monotonic() + 60
    while (
        "waiting for promotion"
        not in (body := (await http.get(f"/api/deployments/{dep_id}/status", headers=A)).json())[
            "message"
        ]
    ):
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
    preview = body["routes"]["web:preview"]
    assert get_version(preview) == "v1"
    cancel = await http.post(f"/api/deployments/{dep_id}/cancel", headers=A)
    assert cancel.status_code == 202, cancel.text
    while body["status"] != "cancelled":
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.2)
        body = (await http.get(f"/api/deployments/{dep_id}/status", headers=A)).json()


def loc_names(resp: httpx.Response) -> list[str]:
    return [str(part) for item in resp.json()["detail"] for part in item["loc"]]


async def test_healthz_needs_no_key(http: httpx.AsyncClient) -> None:
    resp = await http.get("/healthz")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/projects/x"),
        ("PUT", "/api/projects/x"),
        ("POST", "/api/projects/x/deploy"),
        ("GET", "/api/projects/x/deployments"),
        ("GET", "/api/deployments/x.1"),
        ("GET", "/api/deployments/x.1/status"),
        ("GET", "/api/deployments/x.1/events"),
        ("GET", "/api/deployments/x.1/instances"),
        ("POST", "/api/deployments/x.1/cancel"),
        ("POST", "/api/deployments/x.1/rollback"),
    ],
)
async def test_every_route_needs_a_valid_key(
    http: httpx.AsyncClient, method: str, path: str
) -> None:
    missing = await http.request(method, path)
    assert missing.status_code == 401
    wrong = await http.request(method, path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert "key" in wrong.json()["detail"]


async def test_project_lifecycle_and_deployment_reads(
    http: httpx.AsyncClient,
    service: DeploymentService,
    project: str,
    docker_client: docker.DockerClient,
) -> None:
    resp = await http.put(
        f"/api/projects/{project}", json={"compose": compose(api_image=None)}, headers=A
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["services"] == ["web"]
    assert resp.json()["current_revision"] is None

    got = await http.get(f"/api/projects/{project}", headers=A)
    assert got.status_code == 200
    assert got.json()["compose"] == compose(api_image=None)

    dep = await http.post(f"/api/projects/{project}/deploy", json={"version": "v1"}, headers=A)
    assert dep.status_code == 202, dep.text
    body = dep.json()
    assert body["status"] == "pending"
    assert body["tenant_id"] == "acme"
    assert body["user_id"] == "alice"
    assert body["strategy"] == "recreate"
    dep_id = body["id"]

    # A second deploy while the first runs is refused.
    again = await http.post(f"/api/projects/{project}/deploy", json={}, headers=A)
    assert again.status_code == 409
    assert "running" in again.json()["detail"]

    # Poll through the API itself until it is done.
    for _ in range(300):
        st = await http.get(f"/api/deployments/{dep_id}/status", headers=A)
        assert st.status_code == 200
        if st.json()["status"] in ("completed", "failed", "rolled_back", "cancelled"):
            break
        await asyncio.sleep(0.2)
    assert st.json()["status"] == "completed", st.json()
    assert st.json()["progress"] == 100

    full = await http.get(f"/api/deployments/{dep_id}", headers=A)
    assert full.status_code == 200
    assert full.json()["version"] == "v1"
    assert full.json()["completed_at"] is not None

    events = await http.get(f"/api/deployments/{dep_id}/events", headers=A)
    assert events.status_code == 200
    types = [e["event_type"] for e in events.json()]
    assert types[0] == "deployment_requested"
    assert "deployment_completed" in types

    # The project answers where each routed service is served, and it does serve there.
    routed_project = await http.get(f"/api/projects/{project}", headers=A)
    routes = routed_project.json()["routes"]
    assert list(routes) == ["web"]
    assert routes["web"].startswith("http://127.0.0.1:")
    async with httpx.AsyncClient() as direct:
        served = await direct.get(routes["web"] + "version")
    assert (served.status_code, served.text.strip()) == (200, "v1")

    inst = await http.get(f"/api/deployments/{dep_id}/instances", headers=A)
    assert inst.status_code == 200
    names = {i["container_name"] for i in inst.json()}
    assert names == {c.name for c in labelled(docker_client, project)}
    assert all(i["ports"]["80/tcp"].startswith("127.0.0.1:") for i in inst.json())

    listed = await http.get(f"/api/projects/{project}/deployments", headers=A)
    assert listed.status_code == 200
    assert [d["id"] for d in listed.json()] == [dep_id]

    # Cancel of a finished deployment is refused; so is a rollback with nothing before it.
    cancel = await http.post(f"/api/deployments/{dep_id}/cancel", headers=A)
    assert cancel.status_code == 409
    assert "completed" in cancel.json()["detail"]
    rollback = await http.post(f"/api/deployments/{dep_id}/rollback", headers=A)
    assert rollback.status_code == 409

    # Tenant B sees none of it, on any route.
    for method, path in [
        ("GET", f"/api/projects/{project}"),
        ("POST", f"/api/projects/{project}/deploy"),
        ("GET", f"/api/projects/{project}/deployments"),
        ("GET", f"/api/deployments/{dep_id}"),
        ("GET", f"/api/deployments/{dep_id}/status"),
        ("GET", f"/api/deployments/{dep_id}/events"),
        ("GET", f"/api/deployments/{dep_id}/instances"),
        ("POST", f"/api/deployments/{dep_id}/cancel"),
        ("POST", f"/api/deployments/{dep_id}/rollback"),
    ]:
        resp = await http.request(method, path, headers=B)
        assert resp.status_code == 404, (method, path, resp.text)
        assert "acme" not in resp.text

    # Rollback after a second good revision brings back v1 as a new deployment.
    await http.put(
        f"/api/projects/{project}",
        json={"compose": compose("moorage-demo:v2", api_image=None)},
        headers=A,
    )
    second = (
        await http.post(f"/api/projects/{project}/deploy", json={"version": "v2"}, headers=A)
    ).json()
    svc = service  # key-a's tenant is the helpers' TENANT ("acme")
    assert (await wait_terminal(svc, second["id"])).deployment.status == "completed"
    rb = await http.post(f"/api/deployments/{second['id']}/rollback", headers=A)
    assert rb.status_code == 202, rb.text
    assert rb.json()["rollback_version"] == "v1"
    done = await wait_terminal(svc, rb.json()["id"])
    assert done.deployment.status == "completed", done.deployment.message
    project_now = (await http.get(f"/api/projects/{project}", headers=A)).json()
    assert project_now["current_version"] == "v1"
    assert project_now["current_revision"] == done.deployment.revision


async def test_unknown_ids_are_404(http: httpx.AsyncClient) -> None:
    for path in [
        "/api/projects/nosuchproject",
        "/api/projects/nosuchproject/deployments",
        "/api/deployments/nosuch.3",
        "/api/deployments/garbage",
        "/api/deployments/nosuch.3/events",
        "/api/deployments/UPPER.1/instances",
    ]:
        resp = await http.get(path, headers=A)
        assert resp.status_code == 404, (path, resp.text)
    for path in [
        "/api/deployments/nosuch.3/cancel",
        "/api/deployments/nosuch.3/rollback",
        "/api/projects/nosuchproject/deploy",
    ]:
        resp = await http.post(path, headers=A)
        assert resp.status_code == 404, (path, resp.text)


async def test_invalid_input_is_422_naming_the_field(
    http: httpx.AsyncClient, project: str, docker_client: docker.DockerClient
) -> None:
    bad_id = await http.put("/api/projects/Bad_Name", json={"compose": compose()}, headers=A)
    assert bad_id.status_code == 422
    assert "project_id" in loc_names(bad_id)

    unsupported = "services:\n  web:\n    image: moorage-demo:v1\n    privileged: true\n"
    resp = await http.put(f"/api/projects/{project}", json={"compose": unsupported}, headers=A)
    assert resp.status_code == 422
    assert {"web", "privileged"} <= set(loc_names(resp))
    assert "privileged" in resp.json()["detail"][0]["msg"]
    # A route's published port inside MOORAGE_REPLICA_PORTS (17000-19999 by default) could take
    # a stopped replica's port: refused at once.
    text = 'services:\n  web:\n    image: moorage-demo:v1\n    ports: ["17000:8080"]\n'
    resp = await http.put(f"/api/projects/{project}", json={"compose": text}, headers=A)
    assert resp.status_code == 422, resp.text
    assert {"web", "ports"} <= set(loc_names(resp))
    assert "published port 17000 is inside MOORAGE_REPLICA_PORTS" in resp.text
    # Nothing was created: the project does not exist.
    assert (await http.get(f"/api/projects/{project}", headers=A)).status_code == 404

    ok = await http.put(
        f"/api/projects/{project}", json={"compose": compose(api_image=None)}, headers=A
    )
    assert ok.status_code == 200
    no_image = "services:\n  web:\n    build: .\n"
    resp = await http.put(f"/api/projects/{project}", json={"compose": no_image}, headers=A)
    assert resp.status_code == 422
    assert "image" in resp.json()["detail"][0]["msg"]
    # The stored compose is unchanged and nothing runs.
    assert (await http.get(f"/api/projects/{project}", headers=A)).json()["compose"] == compose(
        api_image=None
    )
    assert labelled(docker_client, project) == []

    for body, field in [
        ({"max_surge": 0, "max_unavailable": 0}, None),
        ({"health_check_retries": -1}, "health_check_retries"),
        ({"health_check_delay": -5}, "health_check_delay"),
        ({"strategy": "yolo"}, "strategy"),
        ({"max_unavailable": "150%"}, "max_unavailable"),
        ({"unknown_field": 1}, "unknown_field"),
        # Accepted by the model (its history must decode); no replica had time to get ready.
        ({"health_check_interval": 1e-300}, "health_check_interval"),
        ({"health_check_interval": 0.009}, "health_check_interval"),
        # Taken for "not given": the default plan ran.
        ({"strategy": "canary", "canary_steps": []}, "canary_steps"),
    ]:
        resp = await http.post(f"/api/projects/{project}/deploy", json=body, headers=A)
        assert resp.status_code == 422, (body, resp.text)
        if field:
            assert field in loc_names(resp), (body, resp.json())
        else:
            assert "max_surge" in resp.text
            assert "max_unavailable" in resp.text
    # Per service: 10% of 4 replicas rounds down to 0, with no surge: refused, naming the service.
    four = await http.put(
        f"/api/projects/{project}",
        json={"compose": compose(api_image=None, web_replicas=4)},
        headers=A,
    )
    assert four.status_code == 200, four.text
    resp = await http.post(
        f"/api/projects/{project}/deploy",
        json={"strategy": "rolling_update", "max_surge": 0, "max_unavailable": "10%"},
        headers=A,
    )
    assert resp.status_code == 422, resp.text
    assert "service 'web'" in resp.text
    assert "max_unavailable" in resp.text
    assert "max_surge" in loc_names(resp)  # refused by the workflow: it had no loc
    resp = await http.put(f"/api/projects/{project}", json={}, headers=A)
    assert resp.status_code == 422
    assert "compose" in loc_names(resp)
    resp = await http.post(
        f"/api/deployments/{project}.1/rollback", json={"to_revision": 0}, headers=A
    )
    assert resp.status_code == 422
    assert "to_revision" in loc_names(resp)
    assert (await http.get(f"/api/projects/{project}/deployments", headers=A)).json() == []
    assert labelled(docker_client, project) == []


async def test_steering_and_reconcile_routes(
    http: httpx.AsyncClient, service: DeploymentService, project: str
) -> None:
    await http.put(f"/api/projects/{project}", json={"compose": compose(api_image=None)}, headers=A)
    dep = (await http.post(f"/api/projects/{project}/deploy", json={}, headers=A)).json()
    await wait_terminal(service, dep["id"])
    for action in ("promote", "pause", "resume", "abort"):
        resp = await http.post(f"/api/deployments/{dep['id']}/{action}", headers=A)
        assert resp.status_code == 409, (action, resp.text)
        assert "completed" in resp.json()["detail"]
        other = await http.post(f"/api/deployments/{dep['id']}/{action}", headers=B)
        assert other.status_code == 404
        assert (await http.post(f"/api/deployments/{dep['id']}/{action}")).status_code == 401
    assert (await http.post(f"/api/deployments/{project}.99/promote", headers=A)).status_code == 404
    rec = await http.post(f"/api/projects/{project}/reconcile", headers=A)
    assert rec.status_code == 200
    assert rec.json() == []
    assert (await http.post(f"/api/projects/{project}/reconcile", headers=B)).status_code == 404
    assert (await service.get_deployment(TENANT, dep["id"])).status == "completed"


async def test_oversized_bodies_are_refused_with_413(http: httpx.AsyncClient, project: str) -> None:
    big = "x" * (2 * 1024 * 1024)
    resp = await http.put(f"/api/projects/{project}", json={"compose": big}, headers=A)
    assert resp.status_code == 413
    # Under the API's cap but over the Compose cap: 422 naming the field.
    resp = await http.put(f"/api/projects/{project}", json={"compose": "x" * 300_000}, headers=A)
    assert resp.status_code == 422
    assert "compose" in loc_names(resp)
    assert (await http.get(f"/api/projects/{project}", headers=A)).status_code == 404


async def test_a_viewer_key_reads_but_cannot_change_anything(
    http: httpx.AsyncClient, service: DeploymentService, project: str
) -> None:
    viewer = {"Authorization": "Bearer key-v"}
    await http.put(f"/api/projects/{project}", json={"compose": compose(api_image=None)}, headers=A)
    dep = (await http.post(f"/api/projects/{project}/deploy", json={}, headers=A)).json()
    await wait_terminal(service, dep["id"])
    assert (await http.get(f"/api/projects/{project}", headers=viewer)).status_code == 200
    assert (
        await http.get(f"/api/deployments/{dep['id']}/events", headers=viewer)
    ).status_code == 200
    for method, path in [
        ("PUT", f"/api/projects/{project}"),
        ("POST", f"/api/projects/{project}/deploy"),
        ("POST", f"/api/projects/{project}/reconcile"),
        ("POST", f"/api/deployments/{dep['id']}/cancel"),
        ("POST", f"/api/deployments/{dep['id']}/rollback"),
        ("POST", f"/api/deployments/{dep['id']}/promote"),
        ("POST", f"/api/deployments/{dep['id']}/abort"),
    ]:
        body = {"compose": compose()} if method == "PUT" else None
        resp = await http.request(method, path, json=body, headers=viewer)
        assert resp.status_code == 403, (method, path, resp.text)
        assert "deployer" in resp.json()["detail"]
    assert len(await service.list_deployments(TENANT, project)) == 1
    assert (await service.get_project(TENANT, project)).compose == compose(api_image=None)


REFUSED_SERVICE_OPTIONS = {
    "privileged": ("privileged", "true"),
    "cap_add": ("cap_add", "[SYS_ADMIN]"),
    "cap_add-module": ("cap_add", "[SYS_MODULE]"),
    "cap_add-all": ("cap_add", "[ALL]"),
    "devices": ("devices", "['/dev/sda:/dev/sda']"),
    "pid": ("pid", "host"),
    "ipc": ("ipc", "host"),
    "uts": ("uts", "host"),
    "network_mode": ("network_mode", "host"),
    "network_mode-container": ("network_mode", "'container:other'"),
    "userns_mode": ("userns_mode", "host"),
    "security_opt": ("security_opt", "['seccomp:unconfined']"),
    "sysctls": ("sysctls", "{net.ipv4.ip_forward: 1}"),
    "cgroup_parent": ("cgroup_parent", "/"),
    "runtime": ("runtime", "runc"),
    "bind-root": ("volumes", "['/:/host']"),
    "bind-relative": ("volumes", "['./data:/data']"),
    "bind-parent": ("volumes", "['../x:/x']"),
    "bind-home": ("volumes", "['~/x:/x']"),
    "bind-long": ("volumes", "[{type: bind, source: /etc, target: /etc}]"),
    "bind-docker-sock": ("volumes", "['/var/run/docker.sock:/var/run/docker.sock']"),
    "bind-docker-sock-long": (
        "volumes",
        "[{type: bind, source: /var/run/docker.sock, target: /var/run/docker.sock}]",
    ),
    "volume-undeclared": ("volumes", "['data:/data']"),
    "volumes_from": ("volumes_from", "[other]"),
    "env_file": ("env_file", "/etc/shadow"),
    "extends": ("extends", "{file: /etc/passwd, service: x}"),
    "configs": ("configs", "[c]"),
    "secrets": ("secrets", "[s]"),
}


@pytest.mark.parametrize("case", list(REFUSED_SERVICE_OPTIONS))
async def test_dangerous_service_options_are_refused_naming_service_and_key(
    http: httpx.AsyncClient, docker_client: docker.DockerClient, project: str, case: str
) -> None:
    key, value = REFUSED_SERVICE_OPTIONS[case]
    text = f"services:\n  web:\n    image: moorage-demo:v1\n    {key}: {value}\n"
    resp = await http.put(f"/api/projects/{project}", json={"compose": text}, headers=A)
    assert resp.status_code == 422, resp.text
    assert {"web", key} <= set(loc_names(resp)), resp.text
    assert (await http.get(f"/api/projects/{project}", headers=A)).status_code == 404
    assert labelled(docker_client, project) == []


REFUSED_TOP_LEVEL = {
    "include": ("include", "[/etc/compose.yml]"),
    "volume-o-bind": ("volumes", "{x: {driver_opts: {type: none, o: bind, device: /etc}}}"),
    "volume-o-bind-rw": ("volumes", "{x: {driver_opts: {o: 'bind,rw', device: /}}}"),
    "volume-device": ("volumes", "{x: {driver_opts: {type: ext4, device: /dev/sda1}}}"),
    "volume-external": ("volumes", "{x: {external: true}}"),
    "volume-driver": ("volumes", "{x: {driver: nfs}}"),
    "network-external": ("networks", "{x: {external: true}}"),
    "networks": ("networks", "{x: {}}"),
    "configs": ("configs", "{x: {file: /etc/shadow}}"),
    "secrets": ("secrets", "{x: {file: /etc/shadow}}"),
}


@pytest.mark.parametrize("case", list(REFUSED_TOP_LEVEL))
async def test_top_level_keys_reading_the_host_are_refused(
    http: httpx.AsyncClient, docker_client: docker.DockerClient, project: str, case: str
) -> None:
    key, value = REFUSED_TOP_LEVEL[case]
    text = f"services:\n  web:\n    image: moorage-demo:v1\n{key}: {value}\n"
    resp = await http.put(f"/api/projects/{project}", json={"compose": text}, headers=A)
    assert resp.status_code == 422, resp.text
    assert any(part.split(".")[0] == key for part in loc_names(resp)), resp.text
    assert (await http.get(f"/api/projects/{project}", headers=A)).status_code == 404
    assert labelled(docker_client, project) == []


def test_only_a_routes_published_port_is_kept_out_of_the_replicas_ports() -> None:
    """The route's listen port is the only published port Moorage binds (on the router)."""
    service = DeploymentService(cast(Client, None), Settings())

    def check(body: str, stored: bool = False) -> None:
        text = "services:\n  web:\n    image: moorage-demo:v1\n" + textwrap.indent(body, "    ")
        service._check_published_ports(parse_compose(text, stored=stored))

    # Other published ports are refused when parsed (nothing would serve them); a stored
    # revision's, which deployed unserved, are not the route's.
    check('ports: ["8080:80", "17001:81"]\n', stored=True)  # the route is the first TCP port
    check('ports: ["8080:80", "17002:53/udp"]\n', stored=True)
    check('ports: ["17003:80"]\nx-moorage: {route: false}\n', stored=True)
    check('ports: ["20000:80"]\n')
    with pytest.raises(ComposeError) as info:
        check('ports: ["19999:80"]\n')
    assert (info.value.service, info.value.key) == ("web", "ports")


@pytest_asyncio.fixture(loop_scope="session")
async def offline_http() -> AsyncIterator[httpx.AsyncClient]:
    """The API with a service whose Temporal client is None: a request that reached Temporal
    would fail (500), so a refusal shows it came first."""
    settings = Settings(api_keys="key-a=acme/alice")
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    app.dependency_overrides[get_service] = lambda: DeploymentService(cast(Client, None), settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://moorage"
    ) as client:
        yield client


WEB = "services:\n  web:\n    image: a\n"
OFFLINE_REFUSALS = {
    # Each was a 500. pydantic refuses a lone surrogate, and FastAPI's 422 quoted it and failed
    # to encode it; in the others the parser raised an exception other than ComposeError, or (the
    # escaped surrogate) accepted what no workflow history can hold.
    "lone surrogate": (WEB + "# \ud800\n", None, None),
    "escaped surrogate": (WEB + '    environment: {A: "\\ud800"}\n', None, None),
    "5000-digit memory": (WEB + f"    mem_limit: '{'9' * 5000}'\n", "web", "mem_limit"),
    "400-digit grace": (WEB + f"    stop_grace_period: {'9' * 400}\n", "web", "stop_grace_period"),
    "port .inf": (WEB + "    ports: [{target: .inf}]\n", "web", "ports"),
}


@pytest.mark.parametrize("case", list(OFFLINE_REFUSALS))
async def test_compose_text_the_parser_choked_on_is_422_naming_the_field(
    offline_http: httpx.AsyncClient, case: str
) -> None:
    text, service, key = OFFLINE_REFUSALS[case]
    # json.dumps escapes a lone surrogate ("\\ud800"), as a client may send it.
    body = json.dumps({"compose": text})
    headers = {**A, "Content-Type": "application/json"}
    resp = await offline_http.put("/api/projects/x", content=body, headers=headers)
    assert resp.status_code == 422, resp.text
    assert loc_names(resp) == ["body", "compose", *(n for n in (service, key) if n)], resp.text


async def test_a_route_port_on_an_address_the_router_does_not_listen_on_is_422(
    offline_http: httpx.AsyncClient,
) -> None:
    """The route listens on MOORAGE_ROUTER_BIND (127.0.0.1 here), whatever the file says."""
    text = WEB + "    ports: ['10.0.0.1:8080:80']\n"
    resp = await offline_http.put("/api/projects/x", json={"compose": text}, headers=A)
    assert resp.status_code == 422, resp.text
    assert loc_names(resp) == ["body", "compose", "web", "ports"], resp.text
    assert "routes listen on 127.0.0.1" in resp.text


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "field"),
    [
        ("POST", "/api/projects/x/deploy", b'{"progress_deadline": NaN}', "application/json",
         "progress_deadline"),
        ("POST", "/api/projects/x/deploy", b'{"max_surge": 1e400}', "application/json",
         "max_surge"),
        ("POST", "/api/projects/x/deploy", b'{"version": Infinity}', "application/json",
         "version"),
        ("POST", "/api/deployments/x.1/rollback", b'{"to_revision": NaN}', "application/json",
         "to_revision"),
        ("PUT", "/api/projects/x", b'{"compose": -Infinity}', "application/json", "compose"),
        ("PUT", "/api/projects/x", b"\xff", "text/plain", None),
        ("POST", "/api/projects/x/deploy", b"\xff\xfe", "application/octet-stream", None),
    ],
)  # fmt: skip
async def test_numbers_json_has_not_and_bytes_that_are_no_text_are_422(
    offline_http: httpx.AsyncClient,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
    field: str | None,
) -> None:
    """Python's JSON parser takes NaN, Infinity and 1e400, and a body without a JSON content
    type is quoted as bytes: FastAPI's 422 quoted them and failed to encode them (a 500)."""
    resp = await offline_http.request(
        method, path, content=body, headers={**A, "Content-Type": content_type}
    )
    assert resp.status_code == 422, resp.text
    if field is not None:
        assert field in loc_names(resp), resp.text


@pytest.mark.parametrize("length", [b"\xb2", b"9" * 5000])
async def test_a_content_length_int_refuses_is_413_not_500(
    offline_http: httpx.AsyncClient, length: bytes
) -> None:
    """'²'.isdigit() and 5,000 digits passed the check; int() then raised (a 500)."""
    resp = await offline_http.get("/healthz", headers=[(b"content-length", length)])
    assert resp.status_code == 413, resp.text


async def test_a_content_length_with_leading_zeros_is_its_number(
    offline_http: httpx.AsyncClient,
) -> None:
    assert (
        await offline_http.get("/healthz", headers=[(b"content-length", b"0" * 30)])
    ).status_code == 200


async def test_a_chunked_body_over_the_cap_is_refused_before_it_is_read_whole(
    offline_http: httpx.AsyncClient,
) -> None:
    """A body sent without Content-Length (chunked) was read whole, however large it was."""
    chunk = b"x" * 65536
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"compose": "'
        while sent < 64 * MAX_BODY_BYTES:  # 64 MiB: the old API read it all, then said 422
            sent += len(chunk)
            yield chunk

    resp = await offline_http.put(
        "/api/projects/x",
        content=endless(),
        headers={"Authorization": "Bearer key-a", "Content-Type": "application/json"},
    )
    assert resp.status_code == 413, resp.text[:200]
    assert str(MAX_BODY_BYTES) in resp.json()["detail"]
    assert sent <= MAX_BODY_BYTES + len(chunk)


async def test_a_chunked_body_under_the_cap_is_read(offline_http: httpx.AsyncClient) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b'{"compose": '
        yield json.dumps("services: [").encode()
        yield b"}"

    resp = await offline_http.put(
        "/api/projects/x",
        content=parts(),
        headers={"Authorization": "Bearer key-a", "Content-Type": "application/json"},
    )
    # The body arrived whole: the Compose text in it is refused naming the field.
    assert resp.status_code == 422, resp.text
    assert "compose" in loc_names(resp)


@pytest.mark.parametrize(
    ("name", "value"),
    [("MOORAGE_API_KEYS", "key-without-a-tenant"), ("MOORAGE_DRAIN_TIMEOUT", "nan")],
)
async def test_uvicorn_run_directly_refuses_invalid_settings_naming_the_variable(
    name: str, value: str
) -> None:
    """``moorage api`` checks the settings before it starts uvicorn; run directly, uvicorn used to
    serve, and every request that read them failed (a 500)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOORAGE_")}
    env[name] = value
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "uvicorn", "api.main:app", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 3, text  # uvicorn's exit when the app refuses to start
    assert f"invalid settings: {name}" in text, text
    assert "Traceback" not in text, text
    assert value not in text, text
