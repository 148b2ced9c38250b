"""The traffic switch of a rolling update: new replicas in, old ones drained out, one change.

Real HAProxy and nginx in front of real demo containers.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import docker
import pytest
from temporalio.exceptions import ApplicationError

from activities.haproxy import HAProxyBackend
from activities.inputs import (
    RouteInput,
    RouteServersInput,
    RoutesInput,
    RouteSwitchInput,
    RouteWeightsInput,
)
from activities.nginx import NginxBackend, stream_module
from activities.proxy import Drain, RouterError, ServerState, route_key
from activities.replica_ports import bindable
from activities.router import TrafficRouter
from tests.conftest import make_router
from tests.helpers import TENANT, start_web, tcp_echo, worker_ports
from tests.load import tcp_exchange

pytestmark = pytest.mark.integration

WEB = "services:\n  web:\n    image: moorage-demo:v1\n    ports: ['80']\n"


@contextmanager
def web_route(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str, slots: list[int]
) -> Iterator[tuple[TrafficRouter, str, list[str]]]:
    """Replicas ``slots`` of the demo web service and a real proxy of ``kind`` with its route
    (no server yet): yields the router, the route's URL and the container names."""
    names = [i.container_name for i in start_web(docker_client, project, WEB, slots=slots)]
    router = make_router(kind, tmp_path, docker_client)
    try:
        url = router.ensure_route(
            RouteInput(tenant=TENANT, project=project, service="web", container_port="80/tcp")
        ).url
        yield router, url, names
    finally:
        router.stop()


@contextmanager
def tcp_echo_route(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> Iterator[tuple[TrafficRouter, RouteInput, int, list[str]]]:
    """Replicas 0 and 1 of :func:`tcp_echo` and a real proxy of ``kind`` with its TCP route (no
    server yet): yields the router, the route's input, its port and the container names."""
    names = [i.container_name for i in start_web(docker_client, project, tcp_echo(), [0, 1])]
    router = make_router(kind, tmp_path, docker_client)
    route = RouteInput(
        tenant=TENANT, project=project, service="web", container_port="7000/tcp", mode="tcp"
    )
    try:
        yield router, route, router.ensure_route(route).port, names
    finally:
        router.stop()


def servers(project: str, *containers: str) -> RouteServersInput:
    return RouteServersInput(
        tenant=TENANT, project=project, service="web", containers=list(containers)
    )


def count_changes(router: TrafficRouter) -> list[Any]:
    """Record every change the router hands to its proxy."""
    calls: list[Any] = []
    change = router.backend.change

    def counted(*args: Any) -> Drain:
        calls.append(args)
        return change(*args)

    router.backend.change = counted  # type: ignore[method-assign,assignment]
    return calls


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_switch_routes_the_new_replica_and_drains_the_old_in_one_change(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> None:
    with web_route(docker_client, project, tmp_path, kind, [0, 1]) as (router, url, (old, new)):
        router.route_add(servers(project, old))
        route = next(iter(router.load().routes.values()))
        assert router.backend.live_servers(route) == {old: 100}
        changes = count_changes(router)
        switch = RouteSwitchInput(
            tenant=TENANT, project=project, service="web", add=[new], remove=[old]
        )

        routed = router.route_switch(switch)

        assert routed == [new]
        assert len(changes) == 1, "one proxy change (nginx: one reload, not two)"
        route = next(iter(router.load().routes.values()))
        assert set(route.servers) == {new}
        assert router.backend.live_servers(route) == {new: 100}
        with urllib.request.urlopen(url + "version", timeout=5) as answer:
            assert answer.status == 200
        # A retry after the switch went through changes nothing.
        router.route_switch(switch)
        assert len(changes) == 1


def test_a_drain_waits_for_a_reload_s_old_haproxy_worker_that_holds_a_connection(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """A reload (another route added) leaves an old worker holding idle keep-alive connections
    and answering each one's next request with the servers it had: the drain, which saw only
    the new worker, ended at once, the old replica was stopped, and that request got 503."""
    with web_route(docker_client, project, tmp_path, "haproxy", [0, 1]) as (router, url, names):
        old, new = names
        router.route_add(servers(project, old))
        host, port = url.split("//")[1].strip("/").split(":")
        idle = http.client.HTTPConnection(host, int(port), timeout=10)
        idle.request("GET", "/version")
        first = idle.getresponse()
        assert (first.status, first.read().strip()) == (200, b"v1")
        router.ensure_route(  # a new route: HAProxy reloads; the old worker keeps `idle`
            RouteInput(tenant=TENANT, project=project, service="api", container_port="80/tcp")
        )
        switch = RouteSwitchInput(
            tenant=TENANT, project=project, service="web", add=[new], remove=[old]
        )

        def switch_then_stop() -> float:
            began = time.monotonic()
            router.route_switch(switch)
            took = time.monotonic() - began
            docker_client.containers.get(old).stop(timeout=5)  # as the roll does next
            return took

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            switching = pool.submit(switch_then_stop)
            time.sleep(2)
            idle.request("GET", "/version")  # to the old worker, which has only `old`
            answer = idle.getresponse()
            assert answer.status == 200, answer.read()
            took = switching.result(timeout=30)
        assert 1.5 < took < 5, took  # it waited for the old worker, not for its drain timeout
        route = router.load().routes[next(k for k in router.load().routes if k.endswith("web"))]
        assert router.backend.live_servers(route) == {new: 100}


def test_an_address_change_haproxy_refuses_fails_the_change(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """Its answer was accepted whatever it said ("No such server." too), while the config and
    the state recorded the new address."""
    with web_route(docker_client, project, tmp_path, "haproxy", [0]) as (router, _, (web,)):
        router.route_add(servers(project, web))
        backend = router.backend
        assert isinstance(backend, HAProxyBackend)
        route = next(iter(router.load().routes.values()))
        server = route.servers[web]
        moved = ServerState(address="127.0.0.1:9", weight=server.weight)
        row = {"addr": server.address, "uweight": str(server.weight), "status": "UP"}
        with pytest.raises(RouterError, match="No such server"):
            backend._converge(route.backend, "ghost", moved, row)
        backend._converge(route.backend, web, moved, row)  # taken: "IP changed from ..."
        assert backend._all_stats()[route.backend][web]["addr"] == moved.address


def test_re_adding_servers_nginx_already_routes_does_not_reload_it(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """The undo of a switch nginx refused re-adds the old replicas, which never left: that must
    neither reload nginx nor need it to accept a new config."""
    with web_route(docker_client, project, tmp_path, "nginx", [0]) as (router, _, (web,)):
        backend = router.backend
        assert isinstance(backend, NginxBackend)
        routed = servers(project, web)
        router.route_add(routed)
        config = backend.config.read_text()
        backend.extra_http = "this_is_not_a_directive on;"
        changes = count_changes(router)

        assert router.route_add(routed) == [web]

        assert changes == []
        assert backend.config.read_text() == config
        # A real change still goes to nginx, which refuses it.
        with pytest.raises(Exception, match="this_is_not_a_directive"):
            router.route_add(routed.model_copy(update={"weight": 50}))


def get_all(url: str, times: int) -> list[int]:
    """Status of ``times`` requests without keep-alive (each picks a server afresh)."""
    statuses = []
    for _ in range(times):
        request = urllib.request.Request(url + "version", headers={"Connection": "close"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            statuses.append(answer.status)
    return statuses


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_replica_that_dies_while_routed(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> None:
    """A routed replica is killed (its port now refuses connections) and no step has taken it
    out of the route. nginx passes each request on to the live replica at once
    (``proxy_next_upstream error``). HAProxy retries on the same server (no ``option
    redispatch``: it would fail requests while a restarting dockerd rewrites its port rules, see
    test_faults) until its check marks the server DOWN, within ~3 s; from then on, none fails."""
    with web_route(docker_client, project, tmp_path, kind, [0, 1]) as (router, url, (live, dead)):
        router.route_add(servers(project, live, dead))
        route = next(iter(router.load().routes.values()))
        docker_client.containers.get(dead).kill()
        if kind == "haproxy":
            deadline = time.monotonic() + 6
            while dead in router.backend.live_servers(route) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert router.backend.live_servers(route) == {live: 100}
        assert get_all(url, 40) == [200] * 40


def test_a_published_port_among_the_replicas_ports_gets_no_route(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """A route there could take the port of a stopped replica, whose restart would then fail."""
    router = make_router("haproxy", tmp_path, docker_client)
    try:
        inp = RouteInput(tenant=TENANT, project="tports", service="web", container_port="80/tcp")
        with pytest.raises(ApplicationError) as info:
            router.ensure_route(inp.model_copy(update={"published_port": 17005}))
        assert (info.value.type, info.value.non_retryable) == ("RouterPortReserved", True)
        assert "MOORAGE_REPLICA_PORTS (17000-19999)" in str(info.value)
        assert router.load().routes == {}
        # Outside it, the published port is the route's listen port.
        port = next(p for p in worker_ports(16500, 16599) if bindable(p, "tcp"))
        info_ok = router.ensure_route(inp.model_copy(update={"published_port": port}))
        assert info_ok.port == port
    finally:
        router.stop()


def published(project: str, service: str, port: int | None) -> RouteInput:
    """The route of ``service`` on the Compose file's published ``port``."""
    return RouteInput(
        tenant=TENANT, project=project, service=service, container_port="80/tcp",
        published_port=port,
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_route_moves_to_a_changed_published_port(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> None:
    """A new revision's Compose file naming another ``published`` port left the route where it
    was (and a second service asking for the old port then found it taken)."""
    first, second = [p for p in worker_ports(16600, 16699) if bindable(p, "tcp")][:2]
    [name] = [i.container_name for i in start_web(docker_client, project, WEB, slots=[0])]
    router = make_router(kind, tmp_path, docker_client)
    try:
        inp = published(project, "web", first)
        assert router.ensure_route(inp).port == first
        router.route_add(servers(project, name))
        assert get_all(f"http://127.0.0.1:{first}/", 3) == [200] * 3

        moved = router.ensure_route(inp.model_copy(update={"published_port": second}))
        assert (moved.port, moved.moved_from) == (second, first)
        assert moved.url == f"http://127.0.0.1:{second}/"
        assert get_all(moved.url, 3) == [200] * 3  # the servers came along
        with pytest.raises(urllib.error.URLError, match="Connection refused"):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/", timeout=5)
        # No published port: the route keeps the one it has.
        kept = router.ensure_route(inp.model_copy(update={"published_port": None}))
        assert (kept.port, kept.moved_from) == (second, None)
        # The old port is free for another service.
        api = inp.model_copy(update={"service": "api", "published_port": first})
        assert router.ensure_route(api).port == first
    finally:
        router.stop()


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_project_s_services_swap_and_hand_over_published_ports(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> None:
    """Routes moved one service at a time: a port another service of the project still held
    was taken (``RouterPortTaken``), so a swap failed at the first step, whatever the order."""
    a, b, c = [p for p in worker_ports(16600, 16699) if bindable(p, "tcp")][2:5]
    [name] = [i.container_name for i in start_web(docker_client, project, WEB, slots=[0])]
    router = make_router(kind, tmp_path, docker_client)

    def route(service: str, port: int | None) -> RouteInput:
        return published(project, service, port)

    def serves(port: int) -> bool:
        return get_all(f"http://127.0.0.1:{port}/", 1) == [200]

    try:
        router.ensure_routes(RoutesInput(routes=[route("web", a), route("api", b)]))
        for service in ("web", "api"):
            router.route_add(servers(project, name).model_copy(update={"service": service}))
        # Swap, in one change: both move, their servers with them.
        web, api = router.ensure_routes(RoutesInput(routes=[route("web", b), route("api", a)]))
        assert (web.port, web.moved_from, api.port, api.moved_from) == (b, a, a, b)
        assert [serves(a), serves(b)] == [True, True]
        # Hand-over to a new service: "db" takes b while web moves on to c.
        web, db = router.ensure_routes(RoutesInput(routes=[route("web", c), route("db", b)]))
        assert (web.port, web.moved_from, db.port, db.moved_from) == (c, b, b, None)
        assert serves(c)
        # A port a route holds that does not move in the same change is refused, by name.
        with pytest.raises(ApplicationError) as info:
            router.ensure_route(route("api", c))
        assert info.value.type == "RouterPortTaken"
        assert f"port {c} is the route of {TENANT}/{project}/web" in str(info.value)
        other = route("web", b).model_copy(update={"project": f"{project}x"})
        with pytest.raises(ApplicationError, match=f"port {b} is the route of"):
            router.ensure_route(other)
        ports = {k.rsplit("/", 1)[1]: r.port for k, r in router.load().routes.items()}
        assert ports == {"web": c, "api": a, "db": b}
        # No published port: a route keeps the one it has.
        assert router.ensure_routes(RoutesInput(routes=[route("api", None)]))[0].port == a
    finally:
        router.stop()


def test_a_torn_router_state_is_refused_naming_the_file(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """An empty or cut ``state.json`` (a power loss before its bytes reached the disk: the
    writes are synced now) failed every router step with pydantic's validation error."""
    router = make_router("haproxy", tmp_path, docker_client)
    router.state_file.parent.mkdir(parents=True, exist_ok=True)
    router.state_file.write_text('{"routes": {"a": {"po')
    with pytest.raises(RouterError, match=r"state\.json is not the router's state"):
        router.load()


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_a_tcp_route_passes_connections_through_and_drains_them(
    docker_client: docker.DockerClient, project: str, tmp_path: Path, kind: str
) -> None:
    """``x-moorage: {route: tcp}``: a service that speaks no HTTP (a database, a broker) had no
    route but an HTTP one, which answered its clients' bytes 400; now the route passes
    connections through, next to HTTP routes, and a switch drains an open connection."""
    with tcp_echo_route(docker_client, project, tmp_path, kind) as (router, route, port, names):
        old, new = names
        info = router.ensure_route(route)
        assert (info.url, info.port) == (f"tcp://127.0.0.1:{port}", port)
        api = router.ensure_route(route.model_copy(update={"service": "api", "mode": "http"}))
        assert api.url.startswith("http://")
        router.route_add(servers(project, old))
        assert tcp_exchange("127.0.0.1", info.port, b"PING\r\n") == "v1"

        with socket.create_connection(("127.0.0.1", info.port), timeout=10) as held:
            stream = held.makefile("rwb")
            assert stream.readline() == b"v1\n"  # a connection to the old replica, open
            switch = RouteSwitchInput(
                tenant=TENANT, project=project, service="web", add=[new], remove=[old]
            )
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                switched = pool.submit(router.route_switch, switch)
                time.sleep(1.0)
                assert not switched.done(), "the drain waits for the open connection"
                stream.write(b"still here\n")
                stream.flush()
                assert stream.readline() == b"still here\n"
                held.shutdown(socket.SHUT_WR)
                assert switched.result(timeout=15) == [new]
        r = router.load().routes[route_key(TENANT, project, "web")]
        assert (r.mode, set(r.servers)) == ("tcp", {new})
        assert router.backend.live_servers(r) == {new: 100}
        assert tcp_exchange("127.0.0.1", info.port) == "v1"

        # Back to HTTP (a revision that routes it so): the proxy speaks HTTP on that port again.
        router.ensure_route(route.model_copy(update={"mode": "http"}))
        with socket.create_connection(("127.0.0.1", info.port), timeout=10) as sock:
            sock.sendall(b"PING\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 400")


def test_an_nginx_change_that_takes_no_server_out_does_not_wait_for_held_connections(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """Every nginx change reloads, and waited until the workers it retired had exited: one
    holds a TCP route's open connection until its client closes it (or nginx's shutdown
    timeout), so each change, any project's, waited the whole drain timeout (5 s here)."""
    with tcp_echo_route(docker_client, project, tmp_path, "nginx") as (router, _, port, names):
        first, second = names
        router.route_add(servers(project, first))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            assert held.makefile("rb").readline() == b"v1\n"
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                added = pool.submit(router.route_add, servers(project, second))
                # Done with the connection still open: well within the 5 s drain timeout.
                assert added.result(timeout=3) == [second]
                held.sendall(b"after\n")
                assert held.recv(16) == b"after\n"  # the old worker still serves it
        r = router.load().routes[route_key(TENANT, project, "web")]
        assert router.backend.live_servers(r) == {first: 100, second: 100}


def test_an_nginx_removal_waits_for_what_an_earlier_change_s_old_worker_holds(
    docker_client: docker.DockerClient, project: str, tmp_path: Path
) -> None:
    """A canary's last step: its stable server goes to weight 0 (a reload that takes nothing
    out, and so no longer waits for the old worker's connections), then out of the route. The
    removal waits for the connection the first reload's old worker holds to that server, not
    only for the workers its own reload retired (which sent it nothing)."""
    with tcp_echo_route(docker_client, project, tmp_path, "nginx") as (router, _, port, names):
        stable, canary = names
        router.route_add(servers(project, stable))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            assert held.makefile("rb").readline() == b"v1\n"  # on the stable server
            router.route_add(servers(project, canary))
            weights = {stable: 0, canary: 100}
            router.route_weights(
                RouteWeightsInput(tenant=TENANT, project=project, service="web", weights=weights)
            )
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                removed = pool.submit(router.route_remove, servers(project, stable))
                time.sleep(1.0)
                assert not removed.done(), "the removal waits for the held connection"
                held.sendall(b"still\n")
                assert held.recv(16) == b"still\n"
                held.shutdown(socket.SHUT_WR)
                assert removed.result(timeout=15) == [stable]


def test_nginx_s_stream_module_is_found_or_named_for_installing(tmp_path: Path) -> None:
    """TCP routes need nginx's stream module: built in, loaded from nginx's modules path, or a
    refusal that names Debian's package."""
    assert stream_module("configure arguments: --with-http_ssl_module --with-stream") is None
    module = tmp_path / "ngx_stream_module.so"
    module.write_bytes(b"")
    dynamic = f"configure arguments: --modules-path={tmp_path} --with-stream=dynamic --with-x"
    assert stream_module(dynamic) == str(module)
    module.unlink()
    with pytest.raises(RouterError, match=r"apt-get install libnginx-mod-stream; looked for"):
        stream_module(dynamic)
    with pytest.raises(RouterError, match="libnginx-mod-stream"):
        stream_module("configure arguments: --with-http_ssl_module")
    # The tests' nginx has it (setup.sh --tests and .ci/run install it).
    assert (stream_module() or "").endswith("ngx_stream_module.so")
