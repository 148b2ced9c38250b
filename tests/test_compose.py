"""Unit tests of Compose parsing: what is turned into a spec, and what is refused and how."""

from __future__ import annotations

import textwrap

import pytest

from moorage.compose import (
    MAX_COMPOSE_BYTES,
    MAX_EXPANDED_BYTES,
    MAX_INTERPOLATED_BYTES,
    MAX_REPLICAS,
    MAX_SERVICES,
    MAX_SPEC_BYTES,
    MIN_MEMORY_BYTES,
    UNRESTRICTED,
    ComposeError,
    ComposePolicy,
    DeviceSpec,
    HealthcheckSpec,
    MountSpec,
    PortSpec,
    ProjectSpec,
    ServiceSpec,
    VolumeSpec,
    parse_compose,
    parse_memory,
    resolve_compose,
)
from moorage.settings import Settings


def parse(
    text: str,
    *,
    variables: dict[str, str] | None = None,
    policy: ComposePolicy | None = None,
) -> ProjectSpec:
    return parse_compose(textwrap.dedent(text), variables=variables, policy=policy)


def one(
    body: str,
    *,
    variables: dict[str, str] | None = None,
    policy: ComposePolicy | None = None,
    top: str = "",
) -> ServiceSpec:
    """Parse a single service ``web`` whose body (indented under it) is ``body``.

    ``top`` is appended at the top level (e.g. a ``volumes`` declaration).
    """
    body = textwrap.dedent(body)
    image = "" if body.startswith("image:") or "\nimage:" in body else "    image: nginx:1.27\n"
    text = "services:\n  web:\n" + image + textwrap.indent(body, "    ")
    text += textwrap.dedent(top)
    return parse_compose(text, variables=variables, policy=policy).service("web")


def refused(
    body: str,
    *,
    variables: dict[str, str] | None = None,
    policy: ComposePolicy | None = None,
    top: str = "",
) -> ComposeError:
    """The error parsing service ``web`` with ``body`` raises."""
    with pytest.raises(ComposeError) as info:
        one(body, variables=variables, policy=policy, top=top)
    return info.value


# --- the minimal file --------------------------------------------------------------------------


def test_minimal_service_gets_defaults() -> None:
    spec = one("")
    assert spec == ServiceSpec(name="web", image="nginx:1.27")
    assert spec.replicas == 1
    assert spec.stop_grace_period_s == 10.0
    assert spec.healthcheck is None


def test_version_and_name_top_level_keys_are_accepted() -> None:
    project = parse(
        """
        version: "3.9"
        name: shop
        services:
          web:
            image: nginx
        """
    )
    assert project.names == ["web"]


def test_image_is_stripped() -> None:
    project = parse_compose("services:\n  web:\n    image: '  nginx:1.27  '\n")
    assert project.service("web").image == "nginx:1.27"


def test_service_lookup_of_unknown_name_raises_key_error() -> None:
    project = parse_compose("services:\n  web:\n    image: nginx\n")
    with pytest.raises(KeyError):
        project.service("db")


# --- command / entrypoint ----------------------------------------------------------------------


def test_command_string_is_kept_as_string() -> None:
    assert one("command: nginx -g 'daemon off;'").command == "nginx -g 'daemon off;'"


def test_command_list_is_kept_as_list_of_strings() -> None:
    assert one("command: [python, -m, http.server, 8000]").command == [
        "python",
        "-m",
        "http.server",
        "8000",
    ]


def test_entrypoint_string_and_list() -> None:
    assert one("entrypoint: /docker-entrypoint.sh").entrypoint == "/docker-entrypoint.sh"
    assert one("entrypoint: [/bin/sh, -c]").entrypoint == ["/bin/sh", "-c"]


@pytest.mark.parametrize("key", ["command", "entrypoint"])
def test_command_of_mappings_is_refused(key: str) -> None:
    err = refused(f"{key}:\n  a: b\n")
    assert err.service == "web"
    assert err.key == key


# --- environment / labels ----------------------------------------------------------------------


def test_environment_mapping_values_become_strings() -> None:
    env = one(
        """
        environment:
          PLAIN: hello
          NUMBER: 5
          FLOAT: 1.5
          FLAG: true
          DISABLED: false
          EMPTY: ""
        """
    ).environment
    assert env == {
        "PLAIN": "hello",
        "NUMBER": "5",
        "FLOAT": "1.5",
        "FLAG": "true",
        "DISABLED": "false",
        "EMPTY": "",
    }


def test_environment_list_splits_on_first_equals() -> None:
    env = one(
        """
        environment:
          - A=1
          - URL=postgres://u:p@db/x?a=b
          - EMPTY=
        """
    ).environment
    assert env == {"A": "1", "URL": "postgres://u:p@db/x?a=b", "EMPTY": ""}


def test_environment_mapping_entry_without_value_is_refused_naming_the_key() -> None:
    err = refused("environment:\n  SECRET_TOKEN:\n  OTHER: x\n")
    assert err.service == "web"
    assert err.key == "environment.SECRET_TOKEN"
    assert "SECRET_TOKEN" in str(err)


def test_environment_list_entry_without_value_is_refused_naming_the_key() -> None:
    err = refused("environment:\n  - A=1\n  - SECRET_TOKEN\n")
    assert err.service == "web"
    assert err.key == "environment.SECRET_TOKEN"
    assert "SECRET_TOKEN" in str(err)


def test_environment_list_entry_without_a_name_is_refused() -> None:
    err = refused("environment:\n  - =value\n")
    assert err.key == "environment"
    assert "'=value'" in str(err)


def test_environment_nested_value_is_refused() -> None:
    err = refused("environment:\n  A:\n    nested: 1\n")
    assert err.key == "environment.A"


def test_environment_scalar_is_refused() -> None:
    err = refused("environment: A=1\n")
    assert err.key == "environment"


def test_labels_mapping_and_list() -> None:
    assert one("labels:\n  com.example.team: web\n").labels == {"com.example.team": "web"}
    assert one("labels: [com.example.team=web, tier=front]").labels == {
        "com.example.team": "web",
        "tier": "front",
    }


@pytest.mark.parametrize(
    "body",
    [
        "labels:\n  moorage.project: other\n",
        "labels: [moorage.project=other]\n",
    ],
)
def test_reserved_moorage_label_prefix_is_refused(body: str) -> None:
    err = refused(body)
    assert err.service == "web"
    assert err.key == "labels.moorage.project"
    assert "reserved" in str(err)


def test_label_merely_containing_moorage_is_accepted() -> None:
    assert one("labels:\n  com.moorage.x: y\n").labels == {"com.moorage.x": "y"}


# --- ports -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('"80"', PortSpec(target=80)),
        ("80", PortSpec(target=80)),
        ('"8080:80"', PortSpec(target=80, published=8080)),
        ('"127.0.0.1:8080:80"', PortSpec(target=80, published=8080)),
        ('"127.0.0.1::80"', PortSpec(target=80)),
        ('"80/udp"', PortSpec(target=80, protocol="udp")),
        ('"443/tcp"', PortSpec(target=443)),
    ],
)
def test_short_port_syntax(entry: str, expected: PortSpec) -> None:
    assert one(f"ports:\n  - {entry}\n").ports == [expected]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("ports: ['5353:53/udp']", "the router serves TCP only"),
        ("ports: ['8080:80', '8443:443']", "one port per service, its first TCP one (80"),
        (
            "ports: [{target: 80, published: 8080}, {target: 53, published: 53, protocol: udp}]",
            "the router serves TCP only",
        ),
        ("ports: ['5432:5432']\nx-moorage: {route: false}", "x-moorage.route is false"),
    ],
)
def test_a_published_port_nothing_would_serve_is_refused(body: str, why: str) -> None:
    """Only the route's published port is served (by the router); the others were dropped:
    nothing listened on them."""
    with pytest.raises(ComposeError) as info:
        one(body)
    assert info.value.service == "web"
    assert info.value.key == "ports"
    assert "would not be served" in str(info.value)
    assert why in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        "ports: ['8080:80', '443', '53/udp']",
        "ports: ['127.0.0.1:8080:80', '[::1]:8080:80']",  # one port, two address families
        "ports: ['53/udp', '8080:80']",  # the route: the first TCP port
        "ports: ['5432']\nx-moorage: {route: false}",
    ],
)
def test_published_ports_the_router_serves_are_accepted(body: str) -> None:
    assert one(body).ports


def test_a_stored_revision_keeps_its_unserved_published_port() -> None:
    """It deployed (the port unserved): its text must keep parsing."""
    text = "services:\n  web:\n    image: a\n    ports: ['5353:53/udp']\n"
    [port] = parse_compose(text, stored=True).services[0].ports
    assert port == PortSpec(target=53, protocol="udp", published=5353)


@pytest.mark.parametrize(
    ("address", "port", "refused"),
    [
        ("0.0.0.0", "'127.0.0.1:8080:80'", True),  # it was open on every address
        ("0.0.0.0", "'8080:80'", False),
        ("0.0.0.0", "'0.0.0.0:8080:80'", False),
        ("127.0.0.1", "'127.0.0.1:8080:80'", False),
        ("127.0.0.1", "'[::1]:8080:80'", True),
        ("127.0.0.1", "{target: 80, published: 8080, host_ip: 10.0.0.1}", True),
        ("127.0.0.1", "{target: 80, published: 8080, host_ip: 127.0.0.1}", False),
        ("127.0.0.1", "'10.0.0.1::80'", True),  # a port of the range: on the router's address
        # The route's port listed again for another address: each entry's address counts.
        ("127.0.0.1", "'127.0.0.1:8080:80', '10.0.0.1:8080:80'", True),
        ("127.0.0.1", "'10.0.0.1:8080:80', '127.0.0.1:8080:80'", True),
        ("0.0.0.0", "'0.0.0.0:8080:80', '[::]:8080:80'", False),
        (None, "'10.0.0.1:8080:80'", False),  # the address routes listen on: not known here
    ],
)
def test_a_route_port_bound_to_an_address_routes_do_not_listen_on_is_refused(
    address: str | None, port: str, refused: bool
) -> None:
    text = f"services:\n  web:\n    image: a\n    ports: [{port}]\n"
    if not refused:
        assert parse_compose(text, route_address=address).services[0].route_port()
        return
    with pytest.raises(ComposeError) as info:
        parse_compose(text, route_address=address)
    assert (info.value.service, info.value.key) == ("web", "ports")
    assert f"routes listen on {address} (MOORAGE_ROUTER_BIND)" in str(info.value)
    # A stored revision deployed so: it keeps parsing.
    assert parse_compose(text, route_address=address, stored=True).services[0].ports


def test_port_key_is_dockers_name() -> None:
    ports = one("ports: ['80', '53/udp']").ports
    assert [p.key for p in ports] == ["80/tcp", "53/udp"]


def test_long_port_syntax() -> None:
    ports = one(
        """
        ports:
          - target: 80
            published: "8080"
            protocol: tcp
            host_ip: 127.0.0.1
            mode: host
          - target: 53
            protocol: udp
        """
    ).ports
    assert ports == [
        PortSpec(target=80, published=8080),
        PortSpec(target=53, protocol="udp"),
    ]


@pytest.mark.parametrize(
    "entry",
    ['"8000-8010"', '"8000-8010:80"', '"8080:80-81"', '"127.0.0.1:8000-8001:80-81"'],
)
def test_port_ranges_are_refused(entry: str) -> None:
    err = refused(f"ports:\n  - {entry}\n")
    assert err.service == "web"
    assert err.key == "ports"
    assert "ranges" in str(err)


@pytest.mark.parametrize(
    "entry",
    [
        '"80/sctp"',
        '"http"',
        '"0"',
        '"70000"',
        '"70000:80"',
        '"0:80"',
        '"1:2:3:4"',
        '""',
        "true",
        "1.5",
        "[80]",
    ],
)
def test_invalid_short_ports_are_refused(entry: str) -> None:
    err = refused(f"ports:\n  - {entry}\n")
    assert err.service == "web"
    assert err.key == "ports"


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{published: 8080}", "ports"),  # no target
        ("{target: http}", "ports"),
        ("{target: 0}", "ports"),
        ("{target: 80, published: 70000}", "ports"),
        ("{target: 80, published: -1}", "ports"),
        ("{target: true}", "ports"),
        ("{target: 80, protocol: sctp}", "ports.protocol"),
        ("{target: 80, name: web}", "ports.name"),
        ("{target: 80, app_protocol: http}", "ports.app_protocol"),
    ],
)
def test_invalid_long_ports_are_refused(entry: str, key: str) -> None:
    err = refused(f"ports:\n  - {entry}\n")
    assert err.service == "web"
    assert err.key == key


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ('"junk:8080:81"', "ports"),  # the host IP part must be an IP address
        ('"localhost:8080:80"', "ports"),
        ('"[nope]:8080:80"', "ports"),
        ('"[::1]8080:80"', "ports"),
        ("{target: 80, host_ip: not-an-ip}", "ports.host_ip"),
        ("{target: 80, host_ip: 1}", "ports.host_ip"),
        ("{target: 80, mode: bogus}", "ports.mode"),
    ],
)
def test_a_port_host_ip_or_mode_docker_refuses_is_refused(entry: str, key: str) -> None:
    err = refused(f"ports:\n  - {entry}\n")
    assert (err.service, err.key) == ("web", key)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('"[::1]:8080:80"', PortSpec(target=80, published=8080)),
        ('"::8080:80"', None),  # split on ':' it is no port
        ('":8080:80"', PortSpec(target=80, published=8080)),
        ("{target: 80, host_ip: '::1', mode: ingress}", PortSpec(target=80)),
        ("{target: 80, host_ip: 0.0.0.0, mode: host}", PortSpec(target=80)),
        ("{target: 80, published: 8080, host_ip: ''}", PortSpec(target=80, published=8080)),
    ],
)
def test_port_host_ips_and_modes_docker_takes_are_accepted(
    entry: str, expected: PortSpec | None
) -> None:
    if expected is None:
        assert refused(f"ports:\n  - {entry}\n").key == "ports"
    else:
        assert one(f"ports:\n  - {entry}\n").ports == [expected]


def test_two_routes_on_one_published_port_are_refused_naming_the_second_service() -> None:
    """The router failed at deploy time, when it made the second route."""
    with pytest.raises(ComposeError) as info:
        parse(
            """
            services:
              web: {image: a, ports: ["8080:80"]}
              api: {image: b, ports: [{target: 81, published: 8080}]}
            """
        )
    assert (info.value.service, info.value.key) == ("api", "ports")
    assert "'web'" in str(info.value)


@pytest.mark.parametrize(
    "api",
    [
        '["8081:80"]',
        '["9000:9000", "8080"]',  # only the first TCP port is a route's
        '["8080/udp", "8081:80"]',
        '["53/udp", "9000:9000"]',
    ],
)
def test_published_ports_that_no_two_routes_share_are_accepted(api: str) -> None:
    parse(
        f"services:\n  web: {{image: a, ports: ['8080:80']}}\n  api: {{image: b, ports: {api}}}\n"
    )


def test_ports_must_be_a_list() -> None:
    err = refused("ports: '80'\n")
    assert err.key == "ports"


def test_expose_must_be_a_list() -> None:
    assert one("expose: ['9000']").ports == []
    assert refused("expose: '9000'\n").key == "expose"


def test_expose_takes_ports_and_ranges() -> None:
    assert one("expose: [9000, '9001', '8000-8010', '53/udp', '5000-5001/tcp']").ports == []


@pytest.mark.parametrize(
    "entry", ["{a: b}", "[80]", "0", "70000", "'http'", "'90-80'", "'80/icmp'", "true", "1.5"]
)
def test_an_expose_entry_that_is_no_port_is_refused(entry: str) -> None:
    err = refused(f"expose: [{entry}]\n")
    assert (err.service, err.key) == ("web", "expose")


# --- healthcheck -------------------------------------------------------------------------------


def test_healthcheck_string_test_becomes_cmd_shell() -> None:
    hc = one("healthcheck:\n  test: curl -fs http://localhost/ || exit 1\n").healthcheck
    assert hc == HealthcheckSpec(test=["CMD-SHELL", "curl -fs http://localhost/ || exit 1"])


@pytest.mark.parametrize(
    "test",
    [
        ["CMD", "curl", "-fs", "http://localhost/"],
        ["CMD-SHELL", "curl -fs http://localhost/"],
        ["NONE"],
    ],
)
def test_healthcheck_list_test_is_kept(test: list[str]) -> None:
    hc = one(f"healthcheck:\n  test: {test!r}\n").healthcheck
    assert hc is not None
    assert hc.test == test


def test_healthcheck_list_without_cmd_prefix_is_refused() -> None:
    err = refused("healthcheck:\n  test: [curl, -fs, http://localhost/]\n")
    assert err.key == "healthcheck.test"
    assert "CMD" in str(err)


@pytest.mark.parametrize("test", ["[]", "{a: b}", "[CMD, 1]"])
def test_healthcheck_bad_test_is_refused(test: str) -> None:
    assert refused(f"healthcheck:\n  test: {test}\n").key == "healthcheck.test"


def test_healthcheck_durations_and_retries() -> None:
    hc = one(
        """
        healthcheck:
          test: ["CMD", "true"]
          interval: 1m30s
          timeout: 500ms
          start_period: 1h2m3.5s
          retries: 3
        """
    ).healthcheck
    assert hc is not None
    assert hc.interval_s == pytest.approx(90.0)
    assert hc.timeout_s == pytest.approx(0.5)
    assert hc.start_period_s == pytest.approx(3723.5)
    assert hc.retries == 3
    assert hc.disable is False


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("1m1ms", 60.001),
        ("0s", 0.0),
        ("7", 7.0),  # a bare YAML number is seconds
        ("2.5", 2.5),
    ],
)
def test_durations(value: str, seconds: float) -> None:
    # stop_grace_period takes every one of them (a healthcheck no 250us: Docker's floor is 1 ms).
    assert one(f"stop_grace_period: {value}\n").stop_grace_period_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["10 s", "1h 30m", "'10'", "ten", "-5s", "-5", "1d", "true", ".inf", ".nan", "''", "[1s]"],
)
def test_bad_durations_are_refused(value: str) -> None:
    err = refused(f"healthcheck:\n  timeout: {value}\n")
    assert err.service == "web"
    assert err.key == "healthcheck.timeout"


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        # Each would only fail inside the workflow: timedelta() overflows, or Docker refuses it.
        ("x-moorage: {health_check_delay: 99999999999h}", "x-moorage.health_check_delay", "1h"),
        ("x-moorage: {health_check_delay: 3601}", "x-moorage.health_check_delay", "1h"),
        ("x-moorage: {min_ready_seconds: 99999999999h}", "x-moorage.min_ready_seconds", "1h"),
        ("stop_grace_period: 99999999999h", "stop_grace_period", "1h"),
        ("stop_grace_period: 1h1s", "stop_grace_period", "1h"),
        ("healthcheck: {interval: 25h}", "healthcheck.interval", "24h"),
        ("healthcheck: {timeout: 99999999999h}", "healthcheck.timeout", "24h"),
        ("healthcheck: {start_period: 300000000h}", "healthcheck.start_period", "24h"),
        ("healthcheck: {interval: 999us}", "healthcheck.interval", "1ms"),  # Docker's floor
        ("healthcheck: {start_period: 1us}", "healthcheck.start_period", "1ms"),
        ("healthcheck: {retries: 99999999999999999999}", "healthcheck.retries", "10000"),
        ("x-moorage: {probe: {interval: 0}}", "x-moorage.probe.interval", "more than 0"),
        ("x-moorage: {probe: {interval: 1us}}", "x-moorage.probe.interval", "10ms"),
        ("x-moorage: {probe: {interval: 11m}}", "x-moorage.probe.interval", "10m"),
        ("x-moorage: {probe: {timeout: 0s}}", "x-moorage.probe.timeout", "more than 0"),
        ("x-moorage: {probe: {timeout: 1h}}", "x-moorage.probe.timeout", "5s"),
        ("deploy: {restart_policy: {delay: 99999999999h}}", "deploy.restart_policy.delay", ""),
    ],
)
def test_durations_past_their_bounds_are_refused_naming_the_key(
    body: str, key: str, words: str
) -> None:
    err = refused('ports: ["80"]\n' + body + "\n")
    assert (err.service, err.key) == ("web", key)
    assert words in str(err)


@pytest.mark.parametrize(
    "body",
    [
        "x-moorage: {health_check_delay: 1h, min_ready_seconds: 3600}",
        "stop_grace_period: 60m",
        "healthcheck: {interval: 24h, timeout: 1ms, start_period: 0s, retries: 10000}",
        "x-moorage: {probe: {interval: 10ms, timeout: 5s}}",
        "x-moorage: {probe: {interval: 10m, timeout: 1ms}}",
    ],
)
def test_durations_at_their_bounds_are_accepted(body: str) -> None:
    one('ports: ["80"]\n' + body + "\n")


def test_healthcheck_disable() -> None:
    hc = one("healthcheck:\n  disable: true\n").healthcheck
    assert hc is not None
    assert hc.disable is True
    assert hc.test is None


def test_healthcheck_disable_must_be_a_boolean() -> None:
    # bool("false") is True: a string would silently mean the opposite of what it says.
    err = refused("healthcheck:\n  disable: 'false'\n")
    assert err.key == "healthcheck.disable"


@pytest.mark.parametrize("retries", ["-1", "'3'", "true", "1.5"])
def test_healthcheck_bad_retries_are_refused(retries: str) -> None:
    assert refused(f"healthcheck:\n  retries: {retries}\n").key == "healthcheck.retries"


@pytest.mark.parametrize("key", ["start_interval", "intervall"])
def test_healthcheck_unknown_key_is_refused_naming_it(key: str) -> None:
    err = refused(f"healthcheck:\n  test: [CMD, 'true']\n  {key}: 5s\n")
    assert err.service == "web"
    assert err.key == f"healthcheck.{key}"
    assert f"healthcheck.{key}" in str(err)


def test_healthcheck_must_be_a_mapping() -> None:
    assert refused("healthcheck: curl localhost\n").key == "healthcheck"


# --- depends_on and start order ----------------------------------------------------------------


def test_depends_on_list_form() -> None:
    project = parse(
        """
        services:
          web:
            image: nginx
            depends_on: [api, cache]
          api:
            image: api
          cache:
            image: redis
        """
    )
    assert project.service("web").depends_on == ["api", "cache"]
    assert project.names == ["api", "cache", "web"]


def test_depends_on_mapping_form_with_condition() -> None:
    project = parse(
        """
        services:
          web:
            image: nginx
            depends_on:
              api:
                condition: service_healthy
                restart: true
              cache:
          api:
            image: api
          cache:
            image: redis
        """
    )
    assert project.service("web").depends_on == ["api", "cache"]
    assert project.names.index("web") > project.names.index("api")


@pytest.mark.parametrize(
    ("option", "words"),
    [
        ("condition: bogus", "service_healthy"),
        ("condition: service_completed_successfully", "exits"),
        ("condition: null", "service_healthy"),
        ("restart: 'yes'", "true or false"),
        ("required: 1", "true or false"),
    ],
)
def test_a_depends_on_option_moorage_cannot_meet_is_refused_naming_it(
    option: str, words: str
) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(
            "services:\n  web:\n    image: x\n    depends_on:\n      api:\n"
            f"        {option}\n  api:\n    image: y\n"
        )
    assert (info.value.service, info.value.key) == ("web", f"depends_on.api.{option.split(':')[0]}")
    assert words in str(info.value)


def test_depends_on_started_or_healthy_is_accepted() -> None:
    text = (
        "services:\n  web:\n    image: x\n    depends_on:\n"
        "      api: {condition: service_started, required: true}\n"
        "      db: {condition: service_healthy, restart: false}\n"
        "  api:\n    image: y\n  db:\n    image: z\n"
    )
    assert parse_compose(text).service("web").depends_on == ["api", "db"]


def test_depends_on_mapping_with_unknown_option_is_refused() -> None:
    with pytest.raises(ComposeError) as info:
        parse(
            """
            services:
              web:
                image: nginx
                depends_on:
                  api:
                    wait_for: forever
              api:
                image: api
            """
        )
    assert info.value.service == "web"
    assert info.value.key == "depends_on.api.wait_for"


@pytest.mark.parametrize("value", ["api", "[api, 1]", "{api: service_healthy}"])
def test_depends_on_malformed_is_refused(value: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(
            f"services:\n  web:\n    image: x\n    depends_on: {value}\n  api:\n    image: y\n"
        )
    assert info.value.service == "web"
    assert info.value.key is not None
    assert info.value.key.startswith("depends_on")


def test_depends_on_unknown_service_is_refused() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    image: nginx\n    depends_on: [db]\n")
    assert info.value.service == "web"
    assert info.value.key == "depends_on"
    assert "'db'" in str(info.value)


def test_start_order_is_topological_and_otherwise_keeps_file_order() -> None:
    project = parse(
        """
        services:
          web:
            image: nginx
            depends_on: [api]
          worker:
            image: worker
            depends_on: [db, queue]
          api:
            image: api
            depends_on: [db]
          db:
            image: postgres
          queue:
            image: rabbitmq
          docs:
            image: docs
        """
    )
    assert project.names == ["db", "api", "web", "queue", "worker", "docs"]
    for spec in project.services:
        for dep in spec.depends_on:
            assert project.names.index(dep) < project.names.index(spec.name)


def test_diamond_dependency_appears_once() -> None:
    project = parse(
        """
        services:
          top:
            image: x
            depends_on: [left, right]
          left:
            image: x
            depends_on: [base]
          right:
            image: x
            depends_on: [base, base]
          base:
            image: x
        """
    )
    assert project.names == ["base", "left", "right", "top"]


def test_depends_on_cycle_is_refused_naming_the_cycle() -> None:
    with pytest.raises(ComposeError) as info:
        parse(
            """
            services:
              entry:
                image: x
                depends_on: [a]
              a:
                image: x
                depends_on: [b]
              b:
                image: x
                depends_on: [c]
              c:
                image: x
                depends_on: [a]
            """
        )
    assert info.value.key == "depends_on"
    assert info.value.service == "a"
    assert "a -> b -> c -> a" in str(info.value)
    assert "entry" not in str(info.value)


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    image: x\n    depends_on: [web]\n")
    assert "web -> web" in str(info.value)


def test_longest_dependency_chain_is_ordered() -> None:
    # Each service depends on the next one in the file: the sort goes MAX_SERVICES deep.
    n = MAX_SERVICES - 1
    text = "services:\n" + "".join(
        f"  s{i}:\n    image: x\n    depends_on: [s{i + 1}]\n" for i in range(n)
    )
    text += f"  s{n}:\n    image: x\n"
    project = parse_compose(text)
    assert project.names == [f"s{i}" for i in range(n, -1, -1)]


def test_longest_dependency_cycle_is_refused() -> None:
    n = MAX_SERVICES
    text = "services:\n" + "".join(
        f"  s{i}:\n    image: x\n    depends_on: [s{(i + 1) % n}]\n" for i in range(n)
    )
    with pytest.raises(ComposeError, match="cycle: s0 -> s1 -> s2"):
        parse_compose(text)


def test_services_beyond_the_cap_are_refused() -> None:
    ok = "services:\n" + "".join(f"  s{i}:\n    image: x\n" for i in range(MAX_SERVICES))
    assert len(parse_compose(ok).names) == MAX_SERVICES
    with pytest.raises(ComposeError) as info:
        parse_compose(ok + "  one-more:\n    image: x\n")
    assert info.value.service is None
    assert info.value.key == "services"
    assert str(MAX_SERVICES) in str(info.value)


# --- deploy / stop -----------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, MAX_REPLICAS])
def test_deploy_replicas(replicas: int) -> None:
    assert one(f"deploy:\n  replicas: {replicas}\n").replicas == replicas


@pytest.mark.parametrize("replicas", ["0", "-1", str(MAX_REPLICAS + 1), "'2'", "true", "1.5"])
def test_deploy_replicas_out_of_bounds_are_refused(replicas: str) -> None:
    err = refused(f"deploy:\n  replicas: {replicas}\n")
    assert err.key == "deploy.replicas"
    assert str(MAX_REPLICAS) in str(err)


@pytest.mark.parametrize("key", ["placement", "mode", "labels"])
def test_other_deploy_keys_are_refused_naming_them(key: str) -> None:
    err = refused(f"deploy:\n  replicas: 2\n  {key}: {{}}\n")
    assert err.service == "web"
    assert err.key == f"deploy.{key}"
    assert f"deploy.{key}" in str(err)


def test_deploy_must_be_a_mapping() -> None:
    assert refused("deploy: [replicas]\n").key == "deploy"


@pytest.mark.parametrize(("value", "seconds"), [("30s", 30.0), ("1m30s", 90.0), ("3", 3.0)])
def test_stop_grace_period(value: str, seconds: float) -> None:
    assert one(f"stop_grace_period: {value}\n").stop_grace_period_s == pytest.approx(seconds)


@pytest.mark.parametrize("value", [".inf", "-1", "soon"])
def test_bad_stop_grace_period_is_refused(value: str) -> None:
    assert refused(f"stop_grace_period: {value}\n").key == "stop_grace_period"


def test_stop_signal_working_dir_user() -> None:
    spec = one("stop_signal: SIGQUIT\nworking_dir: /srv\nuser: 1000\n")
    assert (spec.stop_signal, spec.working_dir, spec.user) == ("SIGQUIT", "/srv", "1000")


@pytest.mark.parametrize(
    "signal", ["SIGTERM", "term", "SigUsr1", "RTMIN", "SIGRTMIN+3", "rtmax-14", "9", "64", "'015'"]
)
def test_stop_signals_docker_takes_are_accepted(signal: str) -> None:
    assert one(f"stop_signal: {signal}\n").stop_signal == signal.strip("'")


@pytest.mark.parametrize(
    "signal",
    ["SIGBOGUS", "BOGUS", "SIGRTMIN+16", "RTMAX-15", "0", "65", "-1", "''", "' TERM'", "true"],
)
def test_a_stop_signal_docker_refuses_is_refused(signal: str) -> None:
    """It only failed when the deployment created the container."""
    err = refused(f"stop_signal: {signal}\n")
    assert (err.service, err.key) == ("web", "stop_signal")


@pytest.mark.parametrize("path", ["rel/dir", "./srv", "''", "1000", "~/srv"])
def test_a_relative_working_dir_is_refused(path: str) -> None:
    """Docker refused it only when the deployment created the container."""
    err = refused(f"working_dir: {path}\n")
    assert (err.service, err.key) == ("web", "working_dir")
    assert "absolute" in str(err)
    assert refused("user: [root]\n").key == "user"


@pytest.mark.parametrize(
    ("value", "policy", "limit"),
    [
        ('"no"', "no", 0),
        ("no", "no", 0),  # YAML reads an unquoted no as false
        ("always", "always", 0),
        ("unless-stopped", "unless-stopped", 0),
        ("on-failure", "on-failure", 0),
        ('"on-failure:3"', "on-failure", 3),
    ],
)
def test_restart_policy(value: str, policy: str, limit: int) -> None:
    spec = one(f"restart: {value}\n")
    assert (spec.restart, spec.restart_max_retries) == (policy, limit)


def test_no_restart_key_means_no_restart_policy() -> None:
    assert (one("").restart, one("").restart_max_retries) == ("no", 0)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("sometimes", "must be one of no, always, on-failure, unless-stopped"),
        ("yes", "must be one of"),
        ("3", "must be one of"),
        ('"always:2"', "only on-failure takes a retry limit"),
        ('"on-failure:0"', "only on-failure takes a retry limit"),
        ('"on-failure:x"', "only on-failure takes a retry limit"),
        ('"on-failure:1001"', "a whole number from 1 to 1000"),
        ('"on-failure:\u00b2"', "only on-failure takes a retry limit"),  # a digit, not ASCII
    ],
)
def test_bad_restart_policy_is_refused(value: str, says: str) -> None:
    err = refused(f"restart: {value}\n")
    assert (err.service, err.key) == ("web", "restart")
    assert says in str(err)


@pytest.mark.parametrize(
    ("body", "policy", "limit"),
    [
        ("{}", "always", 0),  # condition defaults to any
        ("{condition: any}", "always", 0),
        ("{condition: none}", "no", 0),
        ("{condition: on-failure}", "on-failure", 0),
        ("{condition: on-failure, max_attempts: 3, delay: 0s, window: 0}", "on-failure", 3),
        ("{condition: unless-stopped}", "unless-stopped", 0),  # restart:'s words, as Compose
        ("{condition: no}", "no", 0),
        ("{condition: on-failure, delay: null, window: null}", "on-failure", 0),
    ],
)
def test_deploy_restart_policy_is_the_engine_policy_compose_maps_it_to(
    body: str, policy: str, limit: int
) -> None:
    spec = one(f"deploy:\n  restart_policy: {body}\n")
    assert (spec.restart, spec.restart_max_retries) == (policy, limit)


def test_restart_and_deploy_restart_policy_may_agree_but_not_differ() -> None:
    policy = "restart_policy: {condition: on-failure, max_attempts: 2}"
    same = one(f'restart: "on-failure:2"\ndeploy:\n  {policy}\n')
    assert (same.restart, same.restart_max_retries) == ("on-failure", 2)
    err = refused("restart: unless-stopped\ndeploy:\n  restart_policy: {condition: any}\n")
    assert (err.service, err.key) == ("web", "deploy.restart_policy")
    assert "asks for always and restart for unless-stopped: set one" in str(err)


@pytest.mark.parametrize(
    ("body", "key", "says"),
    [
        ("{condition: sometimes}", "condition", "must be one of none, on-failure, any"),
        ("{condition: null}", "condition", "must be one of none, on-failure, any"),
        ("{condition: [any]}", "condition", "must be one of none, on-failure, any"),
        (
            "{condition: any, max_attempts: 3}",
            "max_attempts",
            "only taken with condition on-failure",
        ),
        ("{condition: on-failure, max_attempts: 0}", "max_attempts", "from 1 to 1000"),
        ("{condition: on-failure, max_attempts: true}", "max_attempts", "from 1 to 1000"),
        ("{delay: 5s}", "delay", "own back-off"),
        ("{window: 2m}", "window", "counts every restart"),
        ("{delay: soon}", "delay", "not a duration"),
        ("{backoff: 1}", "backoff", "not supported"),
        ("any", "", "must be a mapping"),
    ],
)
def test_bad_deploy_restart_policy_is_refused_naming_the_key(
    body: str, key: str, says: str
) -> None:
    err = refused(f"deploy:\n  restart_policy: {body}\n")
    assert (err.service, err.key) == ("web", "deploy.restart_policy" + (f".{key}" if key else ""))
    assert says in str(err)


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("privileged", "true"),
        ("volumes", "['/:/host']"),
        ("network_mode", "host"),
        ("cap_add", "[SYS_ADMIN]"),
        ("ipc", "host"),
        ("env_file", ".env"),
        ("secrets", "[token]"),
    ],
)
def test_unsupported_service_key_is_refused_naming_service_and_key(key: str, value: str) -> None:
    err = refused(f"{key}: {value}\n")
    assert isinstance(err, ValueError)
    assert err.service == "web"
    assert err.key == key
    assert "'web'" in str(err)
    assert f"'{key}'" in str(err)


def test_build_without_image_is_refused_mentioning_image() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    build: .\n")
    assert info.value.service == "web"
    assert info.value.key == "build"
    assert "'image'" in str(info.value)
    assert "does not build" in str(info.value)


def test_build_with_image_is_refused_too() -> None:
    err = refused("build:\n  context: .\n")
    assert err.service == "web"
    assert err.key == "build"
    assert "never builds" in str(err)


@pytest.mark.parametrize("image", ["", "'   '", "123", "[nginx]"])
def test_missing_or_bad_image_is_refused(image: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(f"services:\n  web:\n    image: {image}\n")
    assert info.value.service == "web"
    assert info.value.key == "image"


def test_service_without_image_is_refused() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    command: sleep 1\n")
    assert info.value.key == "image"


@pytest.mark.parametrize("key", ["networks", "secrets", "configs", "include"])
def test_unsupported_top_level_keys_are_refused(key: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(f"services:\n  web:\n    image: nginx\n{key}:\n  data: {{}}\n")
    assert info.value.service is None
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


@pytest.mark.parametrize(
    "text",
    ["", "just a string", "- a\n- b\n", "42", "services: null\n"],
)
def test_not_a_compose_mapping_is_refused(text: str) -> None:
    with pytest.raises(ComposeError, match="services"):
        parse_compose(text)


@pytest.mark.parametrize("text", ["services: {}\n", "services: []\n", "name: x\n"])
def test_empty_or_missing_services_is_refused(text: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(text)
    assert info.value.key == "services"


@pytest.mark.parametrize(
    "text",
    [
        "services:\n  web:\n    image: [unclosed\n",
        "services:\n\tweb: {}\n",
        "services: {web: {image: x}\n",
        "a: 1\n---\nb: 2\n",
    ],
)
def test_invalid_yaml_is_refused(text: str) -> None:
    with pytest.raises(ComposeError, match="not valid YAML"):
        parse_compose(text)


def test_deeply_nested_yaml_is_refused_not_crashed() -> None:
    text = "x-deep: " + "[" * 5000 + "]" * 5000 + "\nservices:\n  web:\n    image: x\n"
    assert len(text) < MAX_COMPOSE_BYTES
    with pytest.raises(ComposeError, match="nested too deeply"):
        parse_compose(text)


def test_yaml_too_large_is_refused() -> None:
    padding = "# " + "x" * 1000 + "\n"
    text = "services:\n  web:\n    image: nginx\n" + padding * (
        MAX_COMPOSE_BYTES // len(padding) + 1
    )
    assert len(text.encode()) > MAX_COMPOSE_BYTES
    with pytest.raises(ComposeError, match=str(MAX_COMPOSE_BYTES)):
        parse_compose(text)


def test_size_limit_counts_bytes_not_characters() -> None:
    # Under the limit in characters, over it in UTF-8 bytes.
    text = "services:\n  web:\n    image: nginx\n# " + "é" * (MAX_COMPOSE_BYTES // 2 + 10) + "\n"
    assert len(text) < MAX_COMPOSE_BYTES < len(text.encode())
    with pytest.raises(ComposeError, match="larger than"):
        parse_compose(text)


def test_yaml_just_under_the_limit_is_accepted() -> None:
    head = "services:\n  web:\n    image: nginx\n"
    text = head + "#" * (MAX_COMPOSE_BYTES - len(head) - 1) + "\n"
    assert len(text.encode()) == MAX_COMPOSE_BYTES
    assert parse_compose(text).names == ["web"]


@pytest.mark.parametrize(
    "name",
    ["-web", "web app", "wéb", "a" * 64, "web/1"],
)
def test_invalid_service_names_are_refused(name: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(f"services:\n  '{name}':\n    image: x\n")
    assert info.value.service == name


def test_a_service_name_whose_replica_hostname_is_too_long_is_refused() -> None:
    """A replica's hostname is <service>-<slot>, and Linux takes at most 64 characters
    (``__NEW_UTS_LEN``): past it the container failed to start (EINVAL) inside the deployment.
    The limit depends on the replicas: 62 characters fit ten replicas (``-9``), not eleven."""
    name = "a" * 62
    ten = f"services:\n  {name}:\n    image: x\n    deploy: {{replicas: 10}}\n"
    assert parse_compose(ten).names == [name]
    eleven = f"services:\n  {name[:61]}:\n    image: x\n    deploy: {{replicas: 11}}\n"
    assert parse_compose(eleven).names == [name[:61]]
    for text in (
        ten.replace("replicas: 10", "replicas: 11"),
        f"services:\n  {'a' * 63}:\n    image: x\n",
    ):
        with pytest.raises(ComposeError) as info:
            parse_compose(text)
        assert info.value.service is not None
        assert "hostname" in str(info.value)
    with pytest.raises(ComposeError, match="at most 64"):
        parse_compose(f"services:\n  {'a' * 65}:\n    image: x\n")


def test_a_service_name_ending_in_a_newline_is_refused() -> None:
    # '$' matched before the trailing newline.
    with pytest.raises(ComposeError) as info:
        parse_compose('services:\n  "web\\n":\n    image: x\n')
    assert info.value.service == "web\n"


def test_service_body_must_be_a_mapping() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web: nginx\n")
    assert info.value.service == "web"
    assert "mapping" in str(info.value)


def test_extension_keys_are_accepted_at_top_level_and_in_services() -> None:
    project = parse(
        """
        x-common: &common
          image: nginx:1.27
        services:
          web:
            <<: *common
            x-owner: team-a
            x-notes:
              anything: [goes, here]
        """
    )
    assert project.service("web") == ServiceSpec(name="web", image="nginx:1.27")


def test_compose_error_without_location_has_no_prefix() -> None:
    err = ComposeError("plain")
    assert str(err) == "plain"
    assert err.service is None
    assert err.key is None


def test_full_example() -> None:
    project = parse(
        """
        services:
          web:
            image: ghcr.io/acme/web:2.1
            command: ["serve", "--port", "80"]
            environment:
              API_URL: http://api:8000
            ports: ["8080:80"]
            healthcheck:
              test: wget -qO- http://localhost/health
              interval: 5s
              retries: 10
            labels: {tier: front}
            depends_on:
              api: {condition: service_healthy}
            deploy: {replicas: 3}
            stop_grace_period: 20s
          api:
            image: ghcr.io/acme/api:2.1
            environment: [DB=postgres://db/app]
            expose: ["8000"]
        """
    )
    assert project.names == ["api", "web"]
    web = project.service("web")
    assert web.replicas == 3
    assert web.ports == [PortSpec(target=80, published=8080)]
    assert web.healthcheck == HealthcheckSpec(
        test=["CMD-SHELL", "wget -qO- http://localhost/health"], interval_s=5.0, retries=10
    )
    assert web.stop_grace_period_s == 20.0
    assert web.labels == {"tier": "front"}
    assert project.service("api").environment == {"DB": "postgres://db/app"}


def test_billion_laughs_is_refused_without_expanding() -> None:
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        lines.append(f"a{i}: &a{i} [{refs}]")
    text = "x-bomb:\n" + "\n".join("  " + line for line in lines)
    text += "\nservices:\n  web:\n    image: moorage-demo:v1\n"
    text += "    command: *a9\n    environment: *a9\n"
    with pytest.raises(ComposeError) as err:
        parse_compose(text)
    assert err.value.service == "web"
    assert err.value.key in ("command", "environment")


def test_specs_stored_before_the_new_fields_still_load() -> None:
    project = ProjectSpec.model_validate({"services": [{"name": "web", "image": "nginx"}]})
    web = project.service("web")
    assert (web.privileged, web.cap_add, web.mounts, web.mem_limit_bytes) == (False, [], [], None)
    assert project.volumes == []


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("pid", "host"),
        ("ipc", "host"),
        ("uts", "host"),
        ("network_mode", "host"),
        ("userns_mode", "host"),
        ("security_opt", "['seccomp:unconfined']"),
        ("sysctls", "{net.ipv4.ip_forward: 1}"),
        ("cgroup_parent", "/"),
        ("runtime", "runc"),
        ("volumes_from", "[db]"),
        ("env_file", ".env"),
        ("extends", "{service: base}"),
        ("configs", "[cfg]"),
        ("secrets", "[token]"),
        ("networks", "[front]"),
        ("memswap_limit", "1g"),
    ],
)
def test_host_reaching_service_keys_stay_refused(key: str, value: str) -> None:
    err = refused(f"{key}: {value}\n", policy=ComposePolicy(privileged=True, bind_paths=["/"]))
    assert (err.service, err.key) == ("web", key)


# --- interpolation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("$TAG", {"TAG": "1"}, "1"),
        ("${TAG}", {"TAG": "1"}, "1"),
        ("${TAG}", {"TAG": ""}, ""),
        ("v-${TAG}-$TAG.x", {"TAG": "1"}, "v-1-1.x"),
        ("${TAG:-v1}", {}, "v1"),
        ("${TAG:-v1}", {"TAG": ""}, "v1"),
        ("${TAG:-v1}", {"TAG": "2"}, "2"),
        ("${TAG-v1}", {}, "v1"),
        ("${TAG-v1}", {"TAG": ""}, ""),
        ("${TAG:-}", {}, ""),
        ("${TAG:?needed}", {"TAG": "3"}, "3"),
        ("${TAG?needed}", {"TAG": ""}, ""),
        ("${TAG:+on}", {"TAG": "x"}, "on"),
        ("${TAG:+on}", {"TAG": ""}, ""),
        ("${TAG+on}", {"TAG": ""}, "on"),
        ("${TAG+on}", {}, ""),
        ("$$TAG", {}, "$TAG"),
        ("$${TAG}", {}, "${TAG}"),
        ("a $$ b", {}, "a $ b"),
        ("$$$TAG", {"TAG": "1"}, "$1"),
        ("${TAG:-a b:c}", {}, "a b:c"),
        ("no dollar", {}, "no dollar"),
    ],
)
def test_interpolation_forms(template: str, variables: dict[str, str], expected: str) -> None:
    spec = one(f"environment:\n  V: '{template}'\n", variables=variables)
    assert spec.environment == {"V": expected}


def test_interpolated_values_are_not_interpolated_again() -> None:
    spec = one("environment:\n  V: ${A}\n", variables={"A": "${B} $$ $C", "B": "no"})
    assert spec.environment == {"V": "${B} $$ $C"}


def test_interpolation_applies_to_values_not_keys() -> None:
    spec = one("environment:\n  $KEY: ${V}\n", variables={"KEY": "no", "V": "yes"})
    assert spec.environment == {"$KEY": "yes"}


@pytest.mark.parametrize(
    "image",
    [
        "nginx",
        "nginx:1.27-alpine",
        "library/nginx",
        "ghcr.io/acme/web:2.1",
        "localhost:5000/team/app_name__x.y-z:v2",
        "Registry.Example.COM:443/a/b",
        "[::1]:5000/app",
        "nginx@sha256:" + "0123456789abcdef" * 4,
        "nginx:1.27@sha256:" + "0123456789abcdef" * 4,
        "app:" + "t" * 128,
    ],
)
def test_image_references_docker_takes_are_accepted(image: str) -> None:
    assert one(f"image: '{image}'\n").image == image


@pytest.mark.parametrize(
    "image",
    [
        "Not A Valid:Ref",
        "Nginx:1.27",  # a repository is lowercase
        "nginx:",
        "nginx:.1",
        "nginx:" + "t" * 129,
        "nginx@sha256:abc",
        "nginx@sha256:" + "0123456789ABCDEF" * 4,
        "nginx@md5:" + "0" * 32,
        "a___b",
        "-nginx",
        "team/",
        "https://ghcr.io/acme/web",
        "nginx:1.27 --privileged",
        "x" * 256,
        "$",
    ],
)
def test_an_image_reference_docker_refuses_is_refused(image: str) -> None:
    """It was accepted, and the deployment failed when it pulled or created the container."""
    err = refused(f"image: '{image}'\n")
    assert (err.service, err.key) == ("web", "image")


def test_image_tag_from_a_variable() -> None:
    assert one("image: nginx:${TAG:-1.27}\n").image == "nginx:1.27"
    assert one("image: nginx:${TAG:-1.27}\n", variables={"TAG": "1.28"}).image == "nginx:1.28"


def test_unset_variable_is_refused_naming_service_key_and_variable() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    image: nginx:${TAG}\n")
    err = info.value
    assert (err.service, err.key) == ("web", "image")
    assert "variable 'TAG' is not set" in str(err)
    assert "${TAG:-" in str(err)


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("environment:\n  A: $TAG\n", "environment.A"),
        ("environment: [A=$TAG]\n", "environment"),
        ("volumes: ['$TAG:/data']\n", "volumes"),
        ("healthcheck:\n  test: [CMD, '${TAG}']\n", "healthcheck.test"),
        ("x-note: ${TAG}\n", "x-note"),
    ],
)
def test_unset_variable_error_names_the_key_path(body: str, key: str) -> None:
    err = refused(body)
    assert (err.service, err.key) == ("web", key)
    assert "'TAG'" in str(err)


def test_unset_variable_outside_services_names_the_top_level_key() -> None:
    with pytest.raises(ComposeError) as info:
        parse("""
            services:
              web: {image: nginx}
            volumes:
              data:
                driver: ${DRIVER}
            """)
    assert (info.value.service, info.value.key) == (None, "volumes.data.driver")
    assert "'DRIVER'" in str(info.value)


def test_variables_never_come_from_the_servers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TAG", "leaked")
    monkeypatch.setenv("SECRET", "leaked")
    err = refused("environment:\n  A: ${SECRET}\n")
    assert (err.service, err.key) == ("web", "environment.A")
    assert one("environment:\n  A: ${SECRET:-none}\n").environment == {"A": "none"}


@pytest.mark.parametrize(
    ("template", "variables", "message"),
    [
        (
            "${TAG:?set TAG to the release}",
            {},
            "variable 'TAG' is required: set TAG to the release",
        ),
        ("${TAG:?set TAG to the release}", {"TAG": ""}, "set TAG to the release"),
        ("${TAG?set TAG}", {}, "variable 'TAG' is required: set TAG"),
        ("${TAG:?}", {}, "variable 'TAG' is required"),
    ],
)
def test_required_variable_errors(template: str, variables: dict[str, str], message: str) -> None:
    err = refused(f"environment:\n  V: '{template}'\n", variables=variables)
    assert (err.service, err.key) == ("web", "environment.V")
    assert message in str(err)


@pytest.mark.parametrize(
    "template",
    ["${}", "${TAG", "x ${TAG", "${1TAG}", "${TAG!}", "${TAG:x}", "$", "cost: 5$", "$1", "$-x"],
)
def test_invalid_interpolation_syntax_is_refused(template: str) -> None:
    err = refused(f"environment:\n  V: '{template}'\n", variables={"TAG": "1"})
    assert (err.service, err.key) == ("web", "environment.V")
    assert "invalid interpolation" in str(err)


@pytest.mark.parametrize("template", ["${A:-${B}}", "${A:-$B}", "${A:?$$}", "${A-$$}"])
def test_defaults_may_not_nest_interpolation(template: str) -> None:
    err = refused(f"environment:\n  V: '{template}'\n", variables={"B": "x"})
    assert (err.service, err.key) == ("web", "environment.V")
    assert "nested interpolation is not supported" in str(err)


def test_interpolated_size_is_capped() -> None:
    big = "x" * (MAX_INTERPOLATED_BYTES // 10)
    assert one("command: ['${V}', '${V}']\n", variables={"V": big}).command == [big, big]
    err = refused("command: [" + ", ".join(["'${V}'"] * 11) + "]\n", variables={"V": big})
    assert (err.service, err.key) == ("web", "command")
    assert str(MAX_INTERPOLATED_BYTES) in str(err)


def test_a_node_yaml_aliases_repeat_is_interpolated_once_and_never_expanded() -> None:
    """Eight levels of ten aliases each name a list 10^8 times: interpolated and escaped once
    per node (before, the walks expanded it), it resolves to text that still holds aliases."""
    lines = ['a0: &a0 ["$$", "${V}"]']
    for i in range(1, 9):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    text = "x-bomb:\n" + "\n".join("  " + line for line in lines)
    err = refused_text(text + "\nservices:\n  web:\n    image: x\n    command: *a8\n", {"V": "v"})
    assert (err.service, err.key) == ("web", "command")  # a list of lists, not of strings

    text += "\nservices:\n  web:\n    image: x\n    command: *a0\n"
    resolved = resolve_compose(text, {"V": "v"})
    assert len(resolved) < 20_000  # expanded: 10^8 lists, gigabytes
    assert parse_compose(resolved).service("web").command == ["$", "v"]


def refused_text(text: str, variables: dict[str, str] | None = None) -> ComposeError:
    with pytest.raises(ComposeError) as info:
        parse_compose(text, variables=variables)
    return info.value


def test_self_referencing_yaml_alias_is_refused() -> None:
    with pytest.raises(ComposeError, match="refers to itself"):
        parse_compose("x-loop: &loop [*loop]\nservices:\n  web:\n    image: x\n")


def test_validation_runs_after_interpolation() -> None:
    err = refused("volumes: ['${SRC}:/data']\n", variables={"SRC": "/"})
    assert (err.service, err.key) == ("web", "volumes")
    assert "'/'" in str(err)
    err = refused("cap_add: ['${CAP}']\n", variables={"CAP": "SYS_ADMIN"})
    assert (err.service, err.key) == ("web", "cap_add")


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("True", True), ("yes", True)])
def test_interpolated_boolean_string_is_a_boolean(value: str, expected: bool) -> None:
    err = refused("privileged: ${P}\n", variables={"P": value})
    assert (err.service, err.key) == ("web", "privileged")
    assert "refused by default" in str(err)
    spec = one("privileged: ${P}\n", variables={"P": value}, policy=ComposePolicy(privileged=True))
    assert spec.privileged is expected


@pytest.mark.parametrize("value", ["false", "FALSE", "no", "off"])
def test_interpolated_false_is_false(value: str) -> None:
    assert one("privileged: ${P}\n", variables={"P": value}).privileged is False


def test_interpolated_numbers_become_numbers_at_typed_keys() -> None:
    spec = one(
        "deploy: {replicas: '${N}'}\ncpus: ${C}\npids_limit: ${P}\n",
        variables={"N": "3", "C": "0.5", "P": "100"},
    )
    assert (spec.replicas, spec.cpus, spec.pids_limit) == (3, 0.5, 100)
    assert refused("deploy: {replicas: '${N}'}\n", variables={"N": "three"}).key == (
        "deploy.replicas"
    )


def test_literal_string_boolean_stays_refused() -> None:
    # Only values interpolation produced are converted; a quoted 'true' is a string, as before.
    err = refused("privileged: 'false'\n")
    assert (err.service, err.key) == ("web", "privileged")
    assert "true or false" in str(err)


# --- privileges --------------------------------------------------------------------------------


def test_privileged_is_refused_by_default_saying_how_to_allow_it() -> None:
    err = refused("privileged: true\n")
    assert (err.service, err.key) == ("web", "privileged")
    assert "refused by default" in str(err)
    assert "allowed per tenant with MOORAGE_TENANT_POLICIES" in str(err)


def test_privileged_is_allowed_by_policy() -> None:
    assert one("privileged: true\n", policy=ComposePolicy(privileged=True)).privileged is True
    assert one("privileged: false\n").privileged is False


@pytest.mark.parametrize("cap", ["SYS_ADMIN", "SYS_MODULE", "ALL", "cap_sys_admin", "NET_ADMIN"])
def test_dangerous_cap_add_is_refused_naming_the_capability(cap: str) -> None:
    err = refused(f"cap_add: [CHOWN, {cap}]\n")
    assert (err.service, err.key) == ("web", "cap_add")
    assert cap.upper().removeprefix("CAP_") in str(err)
    assert "MOORAGE_TENANT_POLICIES" in str(err)


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ("[NET_BIND_SERVICE]", ["NET_BIND_SERVICE"]),
        ("[CAP_CHOWN]", ["CHOWN"]),
        ("[cap_chown, chown, Kill]", ["CHOWN", "KILL"]),
        ("[SETUID, SETGID, NET_RAW, SYS_CHROOT, MKNOD, AUDIT_WRITE]", None),
    ],
)
def test_safe_cap_add_is_accepted_and_normalised(caps: str, expected: list[str] | None) -> None:
    spec = one(f"cap_add: {caps}\ncap_drop: [ALL]\n")
    if expected is not None:
        assert spec.cap_add == expected
    assert spec.cap_drop == ["ALL"]


def test_policy_allows_extra_capabilities() -> None:
    policy = ComposePolicy(cap_add=["cap_net_admin"])
    assert policy.cap_add == ["NET_ADMIN"]
    assert one("cap_add: [NET_ADMIN]\n", policy=policy).cap_add == ["NET_ADMIN"]
    assert refused("cap_add: [SYS_ADMIN]\n", policy=policy).key == "cap_add"


def test_cap_drop_takes_any_capability() -> None:
    assert one("cap_drop: [SYS_ADMIN, cap_net_raw]\n").cap_drop == ["SYS_ADMIN", "NET_RAW"]


@pytest.mark.parametrize("key", ["cap_add", "cap_drop"])
@pytest.mark.parametrize("value", ["SYS_ADMIN", "[1]", "['sys admin']", "[{a: b}]"])
def test_malformed_capability_lists_are_refused(key: str, value: str) -> None:
    assert refused(f"{key}: {value}\n").key == key


@pytest.mark.parametrize("key", ["cap_add", "cap_drop"])
@pytest.mark.parametrize("cap", ["BOGUS", "CAP_BOGUS", "SYS_ADMINN"])
def test_a_name_that_is_no_linux_capability_is_refused(key: str, cap: str) -> None:
    """Docker refused it only when the deployment created the container (cap_add too, under a
    policy that allows everything: the project workflow parses with one)."""
    for policy in (None, UNRESTRICTED):
        err = refused(f"{key}: [CHOWN, {cap}]\n", policy=policy)
        assert (err.service, err.key) == ("web", key)
        assert cap in str(err)


def test_every_linux_capability_and_all_may_be_dropped() -> None:
    spec = one("cap_drop: [ALL, cap_bpf, PERFMON, CHECKPOINT_RESTORE, audit_read]\n")
    assert spec.cap_drop == ["ALL", "BPF", "PERFMON", "CHECKPOINT_RESTORE", "AUDIT_READ"]


@pytest.mark.parametrize(
    "devices",
    ["['/dev/fuse']", "['/dev/sda:/dev/xvda:rwm']", "[{source: /dev/fuse, target: /dev/fuse}]"],
)
def test_devices_are_refused_by_default(devices: str) -> None:
    err = refused(f"devices: {devices}\n")
    assert (err.service, err.key) == ("web", "devices")
    assert "refused by default" in str(err)
    assert "MOORAGE_TENANT_POLICIES" in str(err)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/dev/fuse", DeviceSpec(host_path="/dev/fuse", container_path="/dev/fuse")),
        (
            "/dev/fuse:rw",
            DeviceSpec(host_path="/dev/fuse", container_path="/dev/fuse", permissions="rw"),
        ),
        ("/dev/fuse:/dev/f", DeviceSpec(host_path="/dev/fuse", container_path="/dev/f")),
        (
            "/dev/fuse:/dev/f:r",
            DeviceSpec(host_path="/dev/fuse", container_path="/dev/f", permissions="r"),
        ),
        ("{source: /dev/fuse}", DeviceSpec(host_path="/dev/fuse", container_path="/dev/fuse")),
        (
            "{source: /dev/fuse, target: /dev/f, permissions: rm}",
            DeviceSpec(host_path="/dev/fuse", container_path="/dev/f", permissions="rm"),
        ),
    ],
)
def test_devices_allowed_by_policy(entry: str, expected: DeviceSpec) -> None:
    spec = one(f"devices:\n  - {entry}\n", policy=ComposePolicy(devices=["/dev/fuse"]))
    assert spec.devices == [expected]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("/dev/sda", "devices"),
        ("/dev/../dev/sda:/dev/fuse", "devices"),
        ("/dev/fuse:/dev/f:rwx", "devices"),
        ("dev/fuse", "devices"),
        ("/dev/fuse:dev/f", "devices"),
        ("/a:/b:r:w", "devices"),
        ("{source: /dev/fuse, mode: x}", "devices.mode"),
        ("{target: /dev/fuse}", "devices"),
        ("1", "devices"),
    ],
)
def test_bad_or_unlisted_devices_are_refused_under_a_policy(entry: str, key: str) -> None:
    err = refused(f"devices:\n  - {entry}\n", policy=ComposePolicy(devices=["/dev/fuse"]))
    assert (err.service, err.key) == ("web", key)


# --- service volumes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("/etc:/host-etc", "refused by default"),
        ("/:/host", "refused by default"),
        ("/srv/data:/data:ro", "refused by default"),
        ("./data:/data", "project directory"),
        ("../data:/data", "project directory"),
        (".:/app", "project directory"),
        ("data/sub:/data", "project directory"),
        ("~/data:/data", "home directory"),
        ("~:/home", "home directory"),
    ],
)
def test_short_syntax_bind_mounts_are_refused(entry: str, reason: str) -> None:
    err = refused(f"volumes: ['{entry}']\n")
    assert (err.service, err.key) == ("web", "volumes")
    assert reason in str(err)


def test_long_syntax_bind_mount_is_refused() -> None:
    err = refused("volumes:\n  - {type: bind, source: /etc, target: /host-etc, read_only: true}\n")
    assert (err.service, err.key) == ("web", "volumes")
    assert "'/etc'" in str(err)
    assert "MOORAGE_TENANT_POLICIES" in str(err)


@pytest.mark.parametrize(
    "entry",
    [
        "'/var/run/docker.sock:/var/run/docker.sock'",
        "'/run/docker.sock:/var/run/docker.sock:ro'",
        "'/var/run/../run/./docker.sock:/sock'",
        "{type: bind, source: /var/run/docker.sock, target: /var/run/docker.sock}",
    ],
)
def test_docker_socket_is_refused_explicitly(entry: str) -> None:
    err = refused(f"volumes:\n  - {entry}\n", policy=ComposePolicy(bind_paths=["/srv/data"]))
    assert (err.service, err.key) == ("web", "volumes")
    assert "docker.sock" in str(err)
    assert "root on the host" in str(err)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("/srv/data:/data", MountSpec(type="bind", source="/srv/data", target="/data")),
        (
            "/srv/data/app/:/data:ro",
            MountSpec(type="bind", source="/srv/data/app", target="/data", read_only=True),
        ),
        (
            "/srv//data/./a/../b:/data:rw",
            MountSpec(type="bind", source="/srv/data/b", target="/data"),
        ),
    ],
)
def test_bind_mount_under_a_policy_prefix_is_allowed(entry: str, expected: MountSpec) -> None:
    spec = one(f"volumes: ['{entry}']\n", policy=ComposePolicy(bind_paths=["/srv/data"]))
    assert spec.mounts == [expected]


@pytest.mark.parametrize(
    "source", ["/srv/data/../../etc", "/srv/database", "/srv", "/srv/data/../other", "/"]
)
def test_bind_mount_escaping_the_policy_prefix_is_refused(source: str) -> None:
    policy = ComposePolicy(bind_paths=["/srv/data"])
    for entry in (f"'{source}:/data'", f"{{type: bind, source: '{source}', target: /data}}"):
        err = refused(f"volumes:\n  - {entry}\n", policy=policy)
        assert (err.service, err.key) == ("web", "volumes")
        assert "refused by default" in str(err)


def test_root_prefix_allows_every_host_path_but_not_home_or_relative() -> None:
    policy = ComposePolicy(bind_paths=["/"])
    assert one("volumes: ['/etc:/e:ro']\n", policy=policy).mounts[0].source == "/etc"
    assert refused("volumes: ['~/x:/x']\n", policy=policy).key == "volumes"
    assert refused("volumes: ['./x:/x']\n", policy=policy).key == "volumes"


def test_named_volume_must_be_declared() -> None:
    err = refused("volumes: ['data:/var/lib/data']\n")
    assert (err.service, err.key) == ("web", "volumes")
    assert "'data'" in str(err)
    assert "not declared" in str(err)
    err = refused("volumes:\n  - {type: volume, source: data, target: /d}\n")
    assert (err.service, err.key) == ("web", "volumes.source")


def test_named_anonymous_and_tmpfs_mounts() -> None:
    spec = one(
        """
        volumes:
          - data:/var/lib/data
          - data:/ro:ro,nocopy
          - /cache
          - {type: volume, source: data, target: /long, read_only: true, volume: {nocopy: true}}
          - {type: volume, target: /anon}
          - {type: tmpfs, target: /scratch, tmpfs: {size: 64m}}
          - {type: tmpfs, target: /bytes, tmpfs: {size: 1048576}}
        tmpfs: [/run, /tmp]
        """,
        top="volumes:\n  data:\n",
    )
    assert spec.mounts == [
        MountSpec(type="volume", source="data", target="/var/lib/data"),
        MountSpec(type="volume", source="data", target="/ro", read_only=True, nocopy=True),
        MountSpec(type="volume", target="/cache"),
        MountSpec(type="volume", source="data", target="/long", read_only=True, nocopy=True),
        MountSpec(type="volume", target="/anon"),
        MountSpec(type="tmpfs", target="/scratch", tmpfs_size_bytes=64 * 1024 * 1024),
        MountSpec(type="tmpfs", target="/bytes", tmpfs_size_bytes=1048576),
        MountSpec(type="tmpfs", target="/run"),
        MountSpec(type="tmpfs", target="/tmp"),
    ]
    assert one("tmpfs: /run\n").mounts == [MountSpec(type="tmpfs", target="/run")]


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("{type: npipe, source: '\\\\.\\pipe\\docker_engine', target: /p}", "volumes.type"),
        ("{type: cluster, source: c, target: /c}", "volumes.type"),
        ("{type: image, source: nginx, target: /i}", "volumes.type"),
        ("{source: data, target: /d}", "volumes.type"),
        ("{type: volume, target: relative}", "volumes.target"),
        ("{type: volume, target: /}", "volumes.target"),
        ("{type: volume, target: /d, read_only: 'yes'}", "volumes.read_only"),
        ("{type: volume, target: /d, volume: {subpath: x}}", "volumes.volume.subpath"),
        ("{type: volume, target: /d, bind: {propagation: rprivate}}", "volumes.bind"),
        ("{type: tmpfs, source: x, target: /t}", "volumes.source"),
        ("{type: tmpfs, target: /t, tmpfs: {mode: 1777}}", "volumes.tmpfs.mode"),
        ("{type: tmpfs, target: /t, tmpfs: {size: 0}}", "volumes.tmpfs.size"),
        ("{type: tmpfs, target: /t, tmpfs: {size: lots}}", "volumes.tmpfs.size"),
        ("{type: bind, target: /b}", "volumes"),
        ("{type: volume, target: /d, extra: 1}", "volumes.extra"),
        ("'/srv/data:/d:rshared'", "volumes"),
        ("'/srv/data:/d:z'", "volumes"),
        ("'data:/d:ro,rw'", "volumes"),
        ("'data:relative'", "volumes"),
        ("'relative'", "volumes"),
        ("':/d'", "volumes"),
        ("'a:/b:ro:x'", "volumes"),
        ("'/srv/data:/d:nocopy'", "volumes"),
        ("1", "volumes"),
    ],
)
def test_malformed_or_unsupported_mounts_are_refused(entry: str, key: str) -> None:
    policy = ComposePolicy(bind_paths=["/srv/data"])
    err = refused(f"volumes:\n  - {entry}\n", policy=policy, top="volumes:\n  data:\n")
    assert (err.service, err.key) == ("web", key)


def test_bind_propagation_other_than_private_is_refused() -> None:
    policy = ComposePolicy(bind_paths=["/srv/data"])
    body = "volumes:\n  - {type: bind, source: /srv/data, target: /d, bind: {propagation: %s}}\n"
    assert one(body % "rprivate", policy=policy).mounts[0].source == "/srv/data"
    err = refused(body % "rshared", policy=policy)
    assert (err.service, err.key) == ("web", "volumes.bind.propagation")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("tmpfs: run\n", "tmpfs"),
        ("tmpfs: ['/run:size=64m']\n", "tmpfs"),
        ("tmpfs: {a: b}\n", "tmpfs"),
        ("volumes: data:/d\n", "volumes"),
        ("volumes: ['/a', '/a/']\n", "volumes"),
        ("tmpfs: [/run, /run]\n", "tmpfs"),
    ],
)
def test_bad_tmpfs_and_duplicate_targets_are_refused(body: str, key: str) -> None:
    err = refused(body)
    assert (err.service, err.key) == ("web", key)


# --- top-level volumes and networks ------------------------------------------------------------


def test_top_level_volumes_are_declared() -> None:
    project = parse("""
        services:
          web:
            image: nginx
            volumes: [a:/a, b:/b, c:/c, d:/d]
        volumes:
          a:
          b: {}
          c: {driver: local, external: false, labels: [team=web]}
          d:
            driver: local
            driver_opts: {type: tmpfs, device: tmpfs, o: "size=100m,uid=1000"}
            labels: {tier: cache}
        """)
    assert project.volumes == ["a", "b", "c", "d"]
    assert project.volume_specs[2] == VolumeSpec(name="c", labels={"team": "web"})
    assert project.volume_specs[3] == VolumeSpec(
        name="d",
        driver_opts={"type": "tmpfs", "device": "tmpfs", "o": "size=100m,uid=1000"},
        labels={"tier": "cache"},
    )


@pytest.mark.parametrize(
    ("body", "key", "reason"),
    [
        ("{driver_opts: {type: none, o: bind, device: /srv}}", "driver_opts.o", "bind"),
        ("{driver_opts: {o: 'bind,rw'}}", "driver_opts.o", "bind"),
        ("{driver_opts: {type: tmpfs, device: tmpfs, o: rbind}}", "driver_opts.o", "bind"),
        ("{driver_opts: {type: none, device: /etc}}", "driver_opts.type", "host path"),
        (
            "{driver_opts: {type: nfs, o: 'addr=10.0.0.1', device: ':/x'}}",
            "driver_opts.type",
            "tmpfs",
        ),
        ("{driver_opts: {type: ext4, device: /dev/sda1}}", "driver_opts.type", "tmpfs"),
        ("{driver_opts: {type: tmpfs, device: /dev/sda1}}", "driver_opts.device", "/dev/sda1"),
        ("{driver_opts: {device: /srv/data}}", "driver_opts.device", "/srv/data"),
        ("{driver_opts: {o: 'size=1m'}}", "driver_opts.type", "tmpfs"),
        ("{driver_opts: {type: tmpfs, size: 1m}}", "driver_opts.size", "tmpfs"),
        ("{driver_opts: [type=tmpfs]}", "driver_opts", "mapping"),
        ("{external: true}", "external", "not created by Moorage"),
        ("{external: {name: shared}}", "external", "not created by Moorage"),
        ("{driver: nfs}", "driver", "'local'"),
        ("{driver: rexray/ebs}", "driver", "'local'"),
        ("{name: other-tenant-data}", "name", "another's"),
        ("{labels: {moorage.project: x}}", "labels.moorage.project", "reserved"),
        ("{labels: [a]}", "labels.a", "NAME=value"),
        ("{driver_opts: {type: tmpfs}, extra: 1}", "extra", "not supported"),
        ("[local]", "", "mapping"),
    ],
)
def test_top_level_volume_that_reaches_the_host_is_refused(
    body: str, key: str, reason: str
) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(f"services:\n  web:\n    image: nginx\nvolumes:\n  data: {body}\n")
    assert info.value.service is None
    assert info.value.key == "volumes.data" + (f".{key}" if key else "")
    assert reason in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "volumes: [data]\n",
        "volumes:\n  'bad name': {}\n",
        'volumes:\n  "data\\n": {}\n',  # '$' matched before the newline: Docker refused it later
    ],
)
def test_malformed_top_level_volumes_are_refused(text: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose("services:\n  web:\n    image: nginx\n" + text)
    assert info.value.service is None
    assert info.value.key is not None
    assert info.value.key.startswith("volumes")


@pytest.mark.parametrize("external", ["true", "{name: host-net}", "'${EXT}'"])
def test_external_network_is_refused_with_its_own_reason(external: str) -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(
            f"services:\n  web:\n    image: nginx\nnetworks:\n  front:\n    external: {external}\n",
            variables={"EXT": "true"},
        )
    assert (info.value.service, info.value.key) == (None, "networks.front.external")
    assert "external networks are not created by Moorage and are refused" in str(info.value)


def test_non_external_network_keeps_the_generic_refusal() -> None:
    with pytest.raises(ComposeError) as info:
        parse_compose(
            "services:\n  web:\n    image: nginx\nnetworks:\n  front: {external: false}\n"
        )
    assert (info.value.service, info.value.key) == (None, "networks")
    assert "top-level key 'networks' is not supported by Moorage" in str(info.value)


# --- resources ---------------------------------------------------------------------------------

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("512m", 512 * MIB),
        ("512M", 512 * MIB),
        ("512mb", 512 * MIB),
        ("512MiB", 512 * MIB),
        ("1g", 1024 * MIB),
        ("1GB", 1024 * MIB),
        ("1.5g", 1536 * MIB),
        ("6m", MIN_MEMORY_BYTES),
        ("6144k", MIN_MEMORY_BYTES),
        ("6291456", MIN_MEMORY_BYTES),
        ("'6291456b'", MIN_MEMORY_BYTES),
        ("'1 g'", 1024 * MIB),
        ("2t", 2 * 1024 * 1024 * MIB),
    ],
)
def test_mem_limit(value: str, size: int) -> None:
    assert one(f"mem_limit: {value}\n").mem_limit_bytes == size


@pytest.mark.parametrize(
    "value", ["5m", "1k", "0", "-1", "lots", "1x", "1mm", "m", "''", "true", "1.5", "[1g]", "1e3m"]
)
def test_bad_mem_limit_is_refused(value: str) -> None:
    err = refused(f"mem_limit: {value}\n")
    assert (err.service, err.key) == ("web", "mem_limit")


def test_mem_limit_below_dockers_minimum_says_so() -> None:
    assert "6 MiB" in str(refused("mem_limit: 4m\n"))


def test_parse_memory_works_without_a_service() -> None:
    assert parse_memory("1g", service=None, key="default_memory") == 1024 * MIB
    with pytest.raises(ComposeError) as info:
        parse_memory("1k", service=None, key="default_memory")
    assert (info.value.service, info.value.key) == (None, "default_memory")


@pytest.mark.parametrize(
    ("value", "cpus"), [("0.5", 0.5), ("2", 2.0), ("'1.5'", 1.5), ("0.01", 0.01)]
)
def test_cpus(value: str, cpus: float) -> None:
    assert one(f"cpus: {value}\n").cpus == cpus


@pytest.mark.parametrize("value", ["0", "-1", "0.001", "true", "many", ".nan", ".inf", "100000"])
def test_bad_cpus_are_refused(value: str) -> None:
    assert refused(f"cpus: {value}\n").key == "cpus"


def test_pids_limit() -> None:
    assert one("pids_limit: 100\n").pids_limit == 100


@pytest.mark.parametrize("value", ["0", "-1", "true", "'100'", "1.5", "99999999"])
def test_bad_pids_limit_is_refused(value: str) -> None:
    assert refused(f"pids_limit: {value}\n").key == "pids_limit"


def test_deploy_resources_limits() -> None:
    spec = one("deploy:\n  resources:\n    limits: {memory: 1g, cpus: '0.5', pids: 64}\n")
    assert (spec.mem_limit_bytes, spec.cpus, spec.pids_limit) == (1024 * MIB, 0.5, 64)
    assert one("deploy: {resources: {}}\n").mem_limit_bytes is None


def test_both_forms_agreeing_are_accepted() -> None:
    spec = one(
        "mem_limit: 1024m\ncpus: 1\npids_limit: 64\n"
        "deploy: {resources: {limits: {memory: 1g, cpus: 1.0, pids: 64}}}\n"
    )
    assert (spec.mem_limit_bytes, spec.cpus, spec.pids_limit) == (1024 * MIB, 1.0, 64)


@pytest.mark.parametrize(
    ("short", "limit"),
    [("mem_limit: 1g", "memory: 512m"), ("cpus: 1", "cpus: 2"), ("pids_limit: 10", "pids: 20")],
)
def test_both_forms_disagreeing_are_refused(short: str, limit: str) -> None:
    err = refused(f"{short}\ndeploy: {{resources: {{limits: {{{limit}}}}}}}\n")
    name = limit.split(":")[0]
    assert (err.service, err.key) == ("web", f"deploy.resources.limits.{name}")
    assert short.split(":")[0] in str(err)


@pytest.mark.parametrize(
    ("resources", "key"),
    [
        ("{reservations: {memory: 1g}}", "deploy.resources.reservations"),
        ("{limits: {devices: []}}", "deploy.resources.limits.devices"),
        ("{limits: {memory: 1k}}", "deploy.resources.limits.memory"),
        ("{limits: {cpus: 0}}", "deploy.resources.limits.cpus"),
        ("{limits: {pids: 0}}", "deploy.resources.limits.pids"),
        ("{limits: [memory]}", "deploy.resources.limits"),
        ("{other: 1}", "deploy.resources.other"),
        ("[limits]", "deploy.resources"),
    ],
)
def test_bad_deploy_resources_are_refused(resources: str, key: str) -> None:
    err = refused(f"deploy:\n  resources: {resources}\n")
    assert (err.service, err.key) == ("web", key)
    assert key in str(err)


def test_reservations_say_not_supported() -> None:
    assert "not supported" in str(refused("deploy: {resources: {reservations: {cpus: 1}}}\n"))


HUGE = "9" * 400


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (f"stop_grace_period: {HUGE}", "stop_grace_period"),  # float(int): OverflowError
        (f"stop_grace_period: '{HUGE}s'", "stop_grace_period"),  # was inf, accepted
        (f"healthcheck: {{interval: '{HUGE}h'}}", "healthcheck.interval"),
        (f"cpus: {HUGE}", "cpus"),  # float(int): OverflowError
        (f"mem_limit: '{HUGE}.5m'", "mem_limit"),  # int(inf): OverflowError
        (f"mem_limit: '{'9' * 5000}'", "mem_limit"),  # int() of 5,000 digits: ValueError
        (
            f"deploy: {{resources: {{limits: {{memory: '{HUGE}g'}}}}}}",
            "deploy.resources.limits.memory",
        ),
        (
            f"volumes: [{{type: tmpfs, target: /t, tmpfs: {{size: '{HUGE}.5'}}}}]",
            "volumes.tmpfs.size",
        ),
        ("ports: [{target: .inf}]", "ports"),  # int(inf): OverflowError
        ("ports: [{target: 80, published: .inf}]", "ports"),
        ("ports: [{target: 80.5}]", "ports"),  # was truncated to 80
        (f"restart: 'on-failure:{'9' * 5000}'", "restart"),  # int() of 5,000 digits
    ],
)
def test_overflowing_numbers_are_refused_naming_the_key(body: str, key: str) -> None:
    err = refused(body + "\n")
    assert (err.service, err.key) == ("web", key)
    assert len(str(err)) < 300  # the value is shortened, not quoted whole


def test_leading_zeros_do_not_make_a_memory_size_too_long_to_convert() -> None:
    assert one(f"mem_limit: '{'0' * 5000}6m'\n").mem_limit_bytes == MIN_MEMORY_BYTES


def test_an_interpolated_integer_too_long_to_convert_is_refused_naming_the_key() -> None:
    err = refused("pids_limit: ${N}\n", variables={"N": "9" * 5000})
    assert (err.service, err.key) == ("web", "pids_limit")


# --- settings: tenant policies -----------------------------------------------------------------


def test_policy_for_reads_moorage_tenant_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "MOORAGE_TENANT_POLICIES",
        '{"acme": {"privileged": true, "cap_add": ["net_admin"], '
        '"bind_paths": ["/srv//data/"], "devices": ["/dev/fuse"]}, "beta": {}}',
    )
    settings = Settings()
    assert settings.policy_for("acme") == ComposePolicy(
        privileged=True, cap_add=["NET_ADMIN"], bind_paths=["/srv/data"], devices=["/dev/fuse"]
    )
    assert settings.policy_for("beta") == ComposePolicy()
    assert settings.policy_for("unknown") == ComposePolicy()
    assert Settings(tenant_policies="").policy_for("acme") == ComposePolicy()


@pytest.mark.parametrize(
    ("policies", "expected"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"Not A Tenant": {}}', "'Not A Tenant'"),
        ('{"acme": []}', "tenant 'acme'"),
        ('{"acme": {"bogus": true}}', "tenant 'acme', field 'bogus'"),
        ('{"acme": {"privileged": "yes"}}', "tenant 'acme', field 'privileged'"),
        ('{"acme": {"bind_paths": ["srv/data"]}}', "tenant 'acme', field 'bind_paths'"),
        ('{"acme": {"devices": ["fuse"]}}', "tenant 'acme', field 'devices'"),
        ('{"acme": {"cap_add": ["net admin"]}}', "tenant 'acme', field 'cap_add'"),
        ('{"acme": {"cap_add": "NET_ADMIN"}}', "tenant 'acme', field 'cap_add'"),
    ],
)
def test_invalid_tenant_policies_are_refused(policies: str, expected: str) -> None:
    with pytest.raises(ValueError, match="MOORAGE_TENANT_POLICIES") as info:
        Settings(tenant_policies=policies).policy_for("acme")
    assert expected in str(info.value)


def test_resource_defaults_settings() -> None:
    settings = Settings()
    assert settings.default_memory_bytes() == 512 * MIB
    assert (settings.default_cpus, settings.default_pids, settings.max_active_deployments) == (
        1.0,
        512,
        10,
    )
    with pytest.raises(ValueError, match="default_memory"):
        Settings(default_memory="1k")
    with pytest.raises(ValueError, match="max_active_deployments"):
        Settings(max_active_deployments=0)


# --- resolve_compose: what the project stores ---------------------------------------------------


def test_resolve_keeps_text_without_dollars_verbatim() -> None:
    text = "# a comment\nservices:\n  web:\n    image: moorage-demo:v1\n"
    assert resolve_compose(text, {"UNUSED": "x"}) == text


def test_resolve_substitutes_and_parses_back_to_the_same_project() -> None:
    text = textwrap.dedent(
        """\
        services:
          web:
            image: moorage-demo:${TAG}
            environment:
              PRICE: $$5
              HOME_DIR: ${HOME_DIR:-/home/app}
            deploy:
              replicas: ${N}
        """
    )
    variables = {"TAG": "v2", "N": "3"}
    resolved = resolve_compose(text, variables)
    assert "${" not in resolved
    again = parse_compose(resolved)  # no variables needed any more
    assert again == parse_compose(text, variables=variables)
    web = again.service("web")
    assert web.image == "moorage-demo:v2"
    assert web.environment == {"PRICE": "$5", "HOME_DIR": "/home/app"}
    assert web.replicas == 3
    # Resolving the stored text again changes nothing.
    assert resolve_compose(resolved) == resolve_compose(resolved, {"TAG": "other"})


def test_resolve_names_the_missing_variable() -> None:
    with pytest.raises(ComposeError) as err:
        resolve_compose("services:\n  web:\n    image: x:${TAG}\n")
    assert (err.value.service, err.value.key) == ("web", "image")
    assert "'TAG' is not set" in str(err.value)


def test_unrestricted_policy_allows_what_a_tenant_may_be_granted() -> None:
    text = textwrap.dedent(
        """\
        services:
          web:
            image: x
            privileged: true
            cap_add: [SYS_ADMIN]
            devices: ['/dev/fuse:/dev/fuse']
            volumes: ['/srv/data:/data']
        """
    )
    with pytest.raises(ComposeError):
        parse_compose(text)
    web = parse_compose(text, policy=UNRESTRICTED).service("web")
    assert web.privileged
    assert web.cap_add == ["SYS_ADMIN"]
    assert [m.source for m in web.mounts] == ["/srv/data"]
    # Home and relative paths mean nothing on a server, whatever the policy.
    for source in ("~/x", "./x"):
        with pytest.raises(ComposeError):
            parse_compose(
                f"services:\n  web:\n    image: x\n    volumes: ['{source}:/x']\n",
                policy=UNRESTRICTED,
            )


def test_a_named_volume_mount_carries_its_driver_options() -> None:
    text = textwrap.dedent(
        """\
        services:
          web:
            image: x
            volumes: ['cache:/cache']
        volumes:
          cache:
            driver_opts: {type: tmpfs, device: tmpfs, o: 'size=10m'}
        """
    )
    (mount,) = parse_compose(text).service("web").mounts
    assert mount.driver_opts == {"type": "tmpfs", "device": "tmpfs", "o": "size=10m"}


# --- x-moorage -----------------------------------------------------------------------------------


def test_x_moorage_probe_min_ready_and_the_service_s_own_health_delay_and_retries() -> None:
    spec = one(
        """
        ports: ["8080"]
        x-moorage:
          probe: {path: /healthz, interval: 250ms}
          min_ready_seconds: 5s
          health_check_delay: 1m
          health_check_retries: 7
        """
    )
    assert spec.probe is not None
    assert (spec.probe.type, spec.probe.port, spec.probe.path) == ("http", 8080, "/healthz")
    assert (spec.probe.status, spec.probe.interval_s) == (200, 0.25)
    assert spec.min_ready_seconds == 5
    assert (spec.health_check_delay, spec.health_check_retries) == (60, 7)
    # Without them the deployment's settings apply.
    plain = one("")
    assert (plain.health_check_delay, plain.health_check_retries, plain.probe) == (None, None, None)


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/healthz",
        "/a/b?x=1&y=%20z",
        "/~u/:@!'()*+,;=",
        "/health?checks[]=db",
        "/v1/{id}|x",
        "/a#top",
        "/100%",
    ],
)
def test_probe_paths_that_are_request_targets_are_accepted(path: str) -> None:
    spec = one(f'ports: ["80"]\nx-moorage: {{probe: {{path: "{path}"}}}}\n')
    assert spec.probe is not None
    assert spec.probe.path == path


@pytest.mark.parametrize(
    "path",
    ["/é", "/a b", "/a\\tb", "/a\\x00", "/a\\x7f", "healthz", "''"],
)
def test_a_probe_path_that_is_no_request_target_is_refused(path: str) -> None:
    """http.client raised UnicodeEncodeError on '/é' (InvalidURL on a space) in every probe: the
    health gate failed inside the deployment."""
    err = refused(f'ports: ["80"]\nx-moorage: {{probe: {{path: "{path}"}}}}\n')
    assert (err.service, err.key) == ("web", "x-moorage.probe.path")


def test_a_probe_path_over_2048_characters_is_refused() -> None:
    err = refused('ports: ["80"]\nx-moorage: {probe: {path: /' + "a" * 2048 + "}}\n")
    assert (err.service, err.key) == ("web", "x-moorage.probe.path")
    assert "2048" in str(err)


def test_x_moorage_route_false_keeps_a_service_with_a_port_off_the_router() -> None:
    assert one('ports: ["5432"]\nx-moorage: {route: false}').route_port() is None
    routed = one('ports: ["5432"]\nx-moorage: {route: true}').route_port()
    assert routed is not None
    assert routed.target == 5432
    assert one('ports: ["5432"]').route_port() == routed


def test_x_moorage_route_tcp_routes_connections_and_http_is_the_default() -> None:
    tcp = one('ports: ["5432:5432"]\nx-moorage: {route: tcp}')
    assert (tcp.route, tcp.route_mode) == (True, "tcp")
    port = tcp.route_port()
    assert port is not None
    assert (port.target, port.published) == (5432, 5432)  # a published port it serves
    assert one('ports: ["80"]\nx-moorage: {route: http}').route_mode == "http"
    assert one('ports: ["80"]\nx-moorage: {route: true}').route_mode == "http"
    assert one('ports: ["80"]').route_mode == "http"
    off = one('ports: ["5432"]\nx-moorage: {route: false}')
    assert (off.route_port(), off.route_mode) == (None, "http")


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("x-moorage: {health_check_retries: 0}", "x-moorage.health_check_retries"),
        ("x-moorage: {health_check_retries: '3'}", "x-moorage.health_check_retries"),
        ("x-moorage: {health_check_retries: true}", "x-moorage.health_check_retries"),
        ("x-moorage: {health_check_delay: soon}", "x-moorage.health_check_delay"),
        ("x-moorage: {min_ready_seconds: -1}", "x-moorage.min_ready_seconds"),
        ("x-moorage: {health_check_interval: 1}", "x-moorage.health_check_interval"),
        ("x-moorage: {probe: {type: grpc}}", "x-moorage.probe.type"),
        ("x-moorage: {probe: {port: 81}}", "x-moorage.probe.port"),
        ("x-moorage: {probe: {path: healthz}}", "x-moorage.probe.path"),
        ("x-moorage: {probe: {status: 700}}", "x-moorage.probe.status"),
        ("x-moorage: {route: 'no'}", "x-moorage.route"),
        ("x-moorage: {route: udp}", "x-moorage.route"),
        ("x-moorage: {route: TCP}", "x-moorage.route"),
    ],
)
def test_x_moorage_refusals_name_the_key(body: str, key: str) -> None:
    err = refused('ports: ["80"]\n' + body)
    assert err.service == "web"
    assert err.key == key, str(err)


def test_a_probe_goes_to_a_tcp_port() -> None:
    """The probe connects over TCP: by default it took the first port listed, UDP or not, and a
    probe of a UDP port failed every check, then the deployment, after the health window."""
    spec = one('ports: ["53/udp", "8080"]\nx-moorage: {probe: {type: tcp}}\n')
    assert spec.probe is not None
    assert spec.probe.port == 8080
    err = refused('ports: ["53/udp", "8080"]\nx-moorage: {probe: {type: tcp, port: 53}}\n')
    assert err.key == "x-moorage.probe.port"
    assert "must name a TCP container port" in str(err)


# --- YAML read as Docker Compose reads it --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("services:\n  web:\n    image: a\n    image: b\n", "'image'"),
        ("services:\n  web:\n    image: a\n  web:\n    image: b\n", "'web'"),
        ("services:\n  web:\n    image: a\n    environment: {A: 1, A: 2}\n", "'A'"),
    ],
)
def test_a_key_given_twice_is_refused_with_its_lines(text: str, key: str) -> None:
    """PyYAML kept the last one silently; Docker Compose refuses the file."""
    err = refused_text(text)
    assert f"found key {key} twice (first at line" in str(err)
    assert "line 4" in str(err)


def test_a_key_a_merge_brought_may_be_given_again() -> None:
    text = (
        "x-base: &base {image: a, environment: {A: '1'}}\n"
        "services:\n  web:\n    <<: *base\n    image: b\n"
    )
    web = parse_compose(text).service("web")
    assert (web.image, web.environment) == ("b", {"A": "1"})


def test_timestamps_stay_the_strings_they_were_written_as() -> None:
    """``2024-02-30`` used to crash the parser (PyYAML made it a date: day out of range); other
    timestamps lost their spelling."""
    web = one("environment:\n  BUILD: 2024-02-30\n  AT: 2001-12-14t21:59:43.10-05:00\n")
    assert web.environment == {"BUILD": "2024-02-30", "AT": "2001-12-14t21:59:43.10-05:00"}
    # A '$' makes resolve_compose dump the document again (an image may not hold one).
    assert parse_compose(
        resolve_compose("x-d: 2024-02-30\nservices: {web: {image: a, x-e: '$$'}}\n")
    )


@pytest.mark.parametrize(
    "text",
    [
        "services:\n  web:\n    image: a\n# \ud800\n",  # JSON may carry one
        'services:\n  web:\n    image: a\n    environment: {A: "\\ud800"}\n',  # a YAML escape
        'services:\n  web:\n    image: a\n    labels: {"\\udfff": x}\n',
    ],
)
def test_text_that_is_not_unicode_is_refused(text: str) -> None:
    """A lone surrogate raised UnicodeEncodeError (a 500), or reached the workflow's history."""
    for call in (lambda: parse_compose(text), lambda: resolve_compose(text)):
        with pytest.raises(ComposeError, match="not valid Unicode text"):
            call()


def test_an_integer_too_long_to_convert_is_refused_as_yaml() -> None:
    err = refused_text("x-n: " + "1" * 4301 + "\nservices:\n  web:\n    image: a\n")
    assert "not valid YAML" in str(err)
    assert "4300 digits" in str(err)


@pytest.mark.parametrize("value", ["\ud800", "ok\udcff"])
def test_a_variable_that_is_not_unicode_text_is_refused_by_name(value: str) -> None:
    """JSON can escape a lone surrogate, and a shell passes bytes that are not UTF-8 (Python
    decodes them to surrogates): interpolating either crashed with UnicodeEncodeError."""
    with pytest.raises(ComposeError, match="variable 'IMG' is not valid Unicode text"):
        resolve_compose("services:\n  web:\n    image: ${IMG}\n", {"IMG": value})


def test_a_stored_revision_passes_checks_added_since_it_was_deployed() -> None:
    """The serving revision's text is parsed at every deployment (its replicas are stopped by
    it) and at every replay: a check added later that refused it would stop the project. These
    values deployed before the checks existed; stored, they still parse; new, they are refused."""
    text = (
        "services:\n  web:\n    image: a\n    image: shop/web:2\n"
        "    ports: ['80', {target: 81, mode: bogus, host_ip: nowhere}, 'junk:8080:82']\n"
        "    depends_on: {db: {condition: service_completed_successfully}}\n"
        "    stop_grace_period: 2h\n    expose: ['not a port']\n"
        "    healthcheck: {test: 'true', retries: 20000, interval: 25h}\n"
        "    x-moorage:\n      health_check_delay: 2h\n"
        "      probe: {type: http, path: /, timeout: 10s}\n"
        "  db:\n    image: db\n"
    )
    web = parse_compose(text, policy=UNRESTRICTED, stored=True).service("web")
    assert web.image == "shop/web:2"  # the last of the two, as PyYAML kept it
    assert web.stop_grace_period_s == 7200
    assert [p.published for p in web.ports] == [None, None, 8080]
    assert web.healthcheck is not None
    assert web.healthcheck.retries == 20000
    with pytest.raises(ComposeError):
        parse_compose(text, policy=UNRESTRICTED)
    for line in text.splitlines()[4:]:
        if line.startswith("    ") and ":" in line and not line.startswith("      "):
            one_key = "services:\n  db:\n    image: db\n  web:\n    image: shop/web:2\n"
            one_key += line + "\n"
            if "x-moorage" in line:
                continue
            with pytest.raises(ComposeError):
                parse_compose(one_key, policy=UNRESTRICTED)
    # Still refused when stored: what would crash the deployment, not merely a later rule.
    with pytest.raises(ComposeError):
        parse_compose(
            "services:\n  web:\n    image: a\n    stop_grace_period: " + "9" * 400 + "s\n",
            stored=True,
        )


def test_a_project_that_aliases_expand_past_the_limit_is_refused_naming_the_service() -> None:
    """A 256 KiB file whose command repeats a 100 KB string by alias 20 times was accepted,
    and made a 2 MB (with 54,000 aliases: 5 GB) workflow input at the deployment's start."""
    anchor = "x-s: &s " + "v" * 100_000 + "\n"
    ok = anchor + "services:\n  web:\n    image: x\n    command: [*s, *s, *s, *s, *s]\n"
    assert parse_compose(ok).service("web").command == ["v" * 100_000] * 5
    err = refused_text(
        anchor + "services:\n  web:\n    image: x\n    command: [" + ", ".join(["*s"] * 20) + "]\n"
    )
    assert (err.service, err.key) == ("web", None)
    assert f"larger than {MAX_EXPANDED_BYTES} bytes once its YAML aliases are expanded" in str(err)
    # Counted over the whole project: two services each under the limit, together over it.
    half = "[" + ", ".join(["*s"] * 6) + "]"
    two = anchor + f"services:\n  a:\n    image: x\n    command: {half}\n"
    err = refused_text(two + f"  b:\n    image: x\n    command: {half}\n")
    assert err.service == "b"
    # And the top-level volumes.
    vols = anchor + "services:\n  web:\n    image: x\nvolumes:\n  data:\n    labels:\n"
    err = refused_text(vols + "".join(f"      l{i}: *s\n" for i in range(11)))
    assert (err.service, err.key) == (None, "volumes")
    # A stored revision passes (the check came after texts were stored).
    stored = anchor + "services:\n  web:\n    image: x\n    command: [" + ", ".join(["*s"] * 11)
    assert parse_compose(stored + "]\n", stored=True).service("web").command == ["v" * 100_000] * 11


def test_a_project_larger_parsed_than_a_workflow_input_may_carry_is_refused() -> None:
    """A small file can be large parsed: 20,000 ``tmpfs`` entries are 150 KB of YAML and 2.4 MB
    of spec, more than a deployment's workflow input may carry (Temporal's cap is 2 MiB)."""
    many = "[" + ",".join(f"/t{i}" for i in range(20_000)) + "]"
    text = f"services:\n  db:\n    image: x\n  web:\n    image: x\n    tmpfs: {many}\n"
    assert len(text.encode()) < MAX_COMPOSE_BYTES
    err = refused_text(text)
    assert err.service == "web"
    assert f"over {MAX_SPEC_BYTES}" in str(err)
    assert len(parse_compose(text, stored=True).service("web").mounts) == 20_000
    few = "[" + ",".join(f"/t{i}" for i in range(2_000)) + "]"
    parse_compose(f"services:\n  web:\n    image: x\n    tmpfs: {few}\n")
    # Counted in bytes: 60,000 emoji are 60,000 characters and 240,000 bytes.
    emoji = "x-s: &s " + "\U0001f600" * 60_000 + "\n"
    err = refused_text(emoji + "services:\n  web:\n    image: x\n    command: [*s, *s, *s, *s]\n")
    assert (err.service, f"over {MAX_SPEC_BYTES}" in str(err)) == ("web", True)


@pytest.mark.parametrize(
    ("line", "scalar", "as_11"),
    [
        ("    ports: [50:50]\n", "50:50", "3050"),  # container port 3050, nothing published
        ("    environment: {TIME: 12:30}\n", "12:30", "750"),
        ("    environment: {T: 1:30.5}\n", "1:30.5", "90.5"),
    ],
)
def test_a_scalar_yaml_1_1_reads_otherwise_than_compose_is_refused(
    line: str, scalar: str, as_11: str
) -> None:
    """PyYAML reads YAML 1.1's base-60 numbers, Docker Compose does not: ``ports: [50:50]``
    became container port 3050, ``TIME: 12:30`` reached the container as ``TIME=750``."""
    err = refused_text("services:\n  web:\n    image: a\n" + line)
    column = line.rindex(scalar) + 1
    assert f"line 4, column {column}: {scalar} reads as {as_11}" in str(err)
    assert f'quote it ("{scalar}")' in str(err)
    # Quoted, it is the text Compose reads.
    quoted = line.replace(scalar, f"'{scalar}'")
    assert parse_compose("services:\n  web:\n    image: a\n" + quoted)


def test_scalars_both_yaml_versions_read_alike_are_taken() -> None:
    """Compose (go-yaml) reads octal ``022``, ``0b101`` and ``1_000`` as PyYAML does."""
    web = one(
        "environment: {F: 1.5, G: -3, H: 0x1F, I: 0, T: true, U: False, E: 1e3, UMASK: 022,"
        " B: 0b101, N: 1_000}\n"
        "deploy: {replicas: 2}\n"
    )
    assert web.environment == {
        "F": "1.5", "G": "-3", "H": "31", "I": "0", "T": "true", "U": "false", "E": "1e3",
        "UMASK": "18", "B": "5", "N": "1000",
    }  # fmt: skip
    assert web.replicas == 2


_WORDS_TEXT = (
    "services:\n"
    "  db: {image: a}\n"
    "  web:\n"
    "    image: a\n"
    "    command: [echo, yes, On]\n"
    "    environment: {DEBUG: on, NO: '1', T: true}\n"
    "    labels: {quiet: off}\n"
    "    privileged: yes\n"
    "    restart: no\n"
    "    depends_on: {db: {condition: service_started, required: yes}}\n"
    "    healthcheck: {test: [CMD, x], disable: No}\n"
    "    volumes: [{type: volume, source: data, target: /d, read_only: YES, "
    "volume: {nocopy: off}}]\n"
    "    x-moorage: {route: no}\n"
    "volumes:\n  data: {external: no}\n"
)


def _read_as_compose_reads(spec: ProjectSpec) -> None:
    web = spec.service("web")
    assert web.command == ["echo", "yes", "On"]
    assert web.environment == {"DEBUG": "on", "NO": "1", "T": "true"}
    assert web.labels == {"quiet": "off"}
    assert web.privileged is True
    assert web.restart == "no"
    assert web.healthcheck is not None
    assert web.healthcheck.disable is False
    assert web.mounts[0].read_only is True
    assert web.mounts[0].nocopy is False
    assert web.route is False


def test_yes_no_on_off_are_text_as_compose_reads_them_and_booleans_where_a_key_wants_one() -> None:
    """YAML 1.1 (PyYAML) reads them as booleans, Docker Compose (YAML 1.2) as text: ``command:
    [echo, yes]`` ran ``echo True``, ``DEBUG: on`` reached the container as ``DEBUG=true``, and
    ``NO: '1'`` (a key) set ``False=1``. Where a key wants a boolean, Compose converts them."""
    _read_as_compose_reads(parse_compose(_WORDS_TEXT, policy=UNRESTRICTED))
    assert refused("privileged: nope\n").key == "privileged"
    assert refused("x-moorage: {route: 'yes'}\n").key == "x-moorage.route"  # quoted: text
    assert refused("restart: on\n").key == "restart"


def test_a_text_holding_such_words_is_stored_declaring_yaml_1_2_and_reads_alike_stored() -> None:
    """The stored text is read again at every deployment, replay and rollback, as a stored
    revision (``stored=True``): texts stored before read the words as booleans, as deployed;
    the ones stored since declare ``%YAML 1.2`` and read as they were checked."""
    stored = resolve_compose(_WORDS_TEXT)
    assert stored == "%YAML 1.2\n---\n" + _WORDS_TEXT
    _read_as_compose_reads(parse_compose(stored, policy=UNRESTRICTED, stored=True))
    # Unmarked (stored before): the reading it was deployed with.
    old = parse_compose(_WORDS_TEXT, policy=UNRESTRICTED, stored=True).service("web")
    assert old.command == ["echo", "True", "True"]
    assert old.environment["DEBUG"] == "true"
    # An explicit document start gets the directive alone (not a second document).
    explicit = resolve_compose("# c\n---\n" + _WORDS_TEXT)
    assert explicit == "%YAML 1.2\n# c\n---\n" + _WORDS_TEXT
    _read_as_compose_reads(parse_compose(explicit, policy=UNRESTRICTED, stored=True))
    # Interpolated, the text is written anew: declared too, the words written plain.
    text = _WORDS_TEXT.replace("T: true", "T: '$${X}'")
    written = resolve_compose(text)
    assert written.startswith("%YAML 1.2\n---\n")
    assert "privileged: yes" in written
    spec = parse_compose(written, policy=UNRESTRICTED, stored=True)
    assert spec.service("web").environment["T"] == "${X}"
    assert spec.service("web").privileged is True
    # A byte order mark is dropped (PyYAML skips one only at the very start: after the
    # directive it was refused as part of the first key).
    bom = resolve_compose("\ufeff" + _WORDS_TEXT)
    assert bom == "%YAML 1.2\n---\n" + _WORDS_TEXT
    # Without such words, a text is stored as it was given.
    plain = "services:\n  web: {image: a, command: [echo, 'yes']}\n"
    assert resolve_compose(plain) == plain
    with pytest.raises(ComposeError, match=r"declares %YAML 1\.1"):
        resolve_compose("%YAML 1.1\n---\n" + _WORDS_TEXT)
    # The reader's own refusal (a control character) is a refusal, not a crash (a 500).
    with pytest.raises(ComposeError, match="unacceptable character"):
        resolve_compose('services:\n  web: {image: a, environment: {A: "x\x07y"}}\n')


def test_a_stored_revision_keeps_its_yaml_1_1_reading() -> None:
    """Deployed as read then: its rollback and its replays must read it the same."""
    spec = parse_compose("services:\n  web:\n    image: a\n    ports: [50:50]\n", stored=True)
    assert [(p.target, p.published) for p in spec.services[0].ports] == [(3050, None)]


def test_a_service_named_like_a_preview_route_is_refused() -> None:
    """A blue-green's preview of ``web`` is the route of the pseudo-service ``preview-of-web``:
    a real service so named shared its route (green replicas in its traffic), and lost it when
    a later revision dropped ``web``."""
    err = refused_text("services:\n  web: {image: a}\n  preview-of-web: {image: a}\n")
    assert err.service == "preview-of-web"
    assert "'preview-of-' are Moorage's" in str(err)
    assert parse_compose("services:\n  preview-web: {image: a}\n").names == ["preview-web"]


def test_service_names_that_differ_only_in_case_are_refused() -> None:
    """nginx takes upstream names without case: ``Web`` and ``web`` failed every deployment's
    ``nginx -t``; ``Preview-of-web`` met the blue-green preview of ``web`` there."""
    err = refused_text("services:\n  web: {image: a}\n  Web: {image: a}\n")
    assert err.service == "Web"
    assert "differ only in case from 'web'" in str(err)
    err = refused_text("services:\n  web: {image: a}\n  Preview-of-web: {image: a}\n")
    assert "'preview-of-' are Moorage's" in str(err)
    assert parse_compose("services:\n  web: {image: a}\n  Web2: {image: a}\n").names
