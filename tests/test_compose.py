"""Unit tests of Compose parsing: what is turned into a spec, and what is refused and how."""

from __future__ import annotations

import textwrap

import pytest

from moorage.compose import (
    MAX_COMPOSE_BYTES,
    MAX_REPLICAS,
    ComposeError,
    HealthcheckSpec,
    PortSpec,
    ProjectSpec,
    ServiceSpec,
    parse_compose,
)


def parse(text: str) -> ProjectSpec:
    return parse_compose(textwrap.dedent(text))


def one(body: str) -> ServiceSpec:
    """Parse a single service ``web`` whose body (indented under it) is ``body``."""
    text = "services:\n  web:\n    image: nginx:1.27\n" + textwrap.indent(
        textwrap.dedent(body), "    "
    )
    return parse_compose(text).service("web")


def refused(body: str) -> ComposeError:
    """The error parsing service ``web`` with ``body`` raises."""
    with pytest.raises(ComposeError) as info:
        one(body)
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
        ('"5353:53/udp"', PortSpec(target=53, protocol="udp", published=5353)),
        ('"443/tcp"', PortSpec(target=443)),
    ],
)
def test_short_port_syntax(entry: str, expected: PortSpec) -> None:
    assert one(f"ports:\n  - {entry}\n").ports == [expected]


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


def test_ports_must_be_a_list() -> None:
    err = refused("ports: '80'\n")
    assert err.key == "ports"


def test_expose_must_be_a_list() -> None:
    assert one("expose: ['9000']").ports == []
    assert refused("expose: '9000'\n").key == "expose"


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
    hc = one(f"healthcheck:\n  interval: {value}\n").healthcheck
    assert hc is not None
    assert hc.interval_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    ["10 s", "1h 30m", "'10'", "ten", "-5s", "-5", "1d", "true", ".inf", ".nan", "''", "[1s]"],
)
def test_bad_durations_are_refused(value: str) -> None:
    err = refused(f"healthcheck:\n  timeout: {value}\n")
    assert err.service == "web"
    assert err.key == "healthcheck.timeout"


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


def test_long_dependency_chain_does_not_hit_the_recursion_limit() -> None:
    # Each service depends on the next one in the file: a naive recursive sort goes 1500 deep.
    n = 1500
    text = "services:\n" + "".join(
        f"  s{i}:\n    image: x\n    depends_on: [s{i + 1}]\n" for i in range(n)
    )
    text += f"  s{n}:\n    image: x\n"
    project = parse_compose(text)
    assert project.names == [f"s{i}" for i in range(n, -1, -1)]


def test_long_dependency_cycle_is_refused() -> None:
    n = 1500
    text = "services:\n" + "".join(
        f"  s{i}:\n    image: x\n    depends_on: [s{(i + 1) % n}]\n" for i in range(n)
    )
    with pytest.raises(ComposeError, match="cycle: s0 -> s1 -> s2"):
        parse_compose(text)


# --- deploy / stop -----------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, MAX_REPLICAS])
def test_deploy_replicas(replicas: int) -> None:
    assert one(f"deploy:\n  replicas: {replicas}\n").replicas == replicas


@pytest.mark.parametrize("replicas", ["0", "-1", str(MAX_REPLICAS + 1), "'2'", "true", "1.5"])
def test_deploy_replicas_out_of_bounds_are_refused(replicas: str) -> None:
    err = refused(f"deploy:\n  replicas: {replicas}\n")
    assert err.key == "deploy.replicas"
    assert str(MAX_REPLICAS) in str(err)


@pytest.mark.parametrize("key", ["resources", "restart_policy", "placement", "mode"])
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
    assert refused("user: [root]\n").key == "user"


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("privileged", "true"),
        ("volumes", "['/:/host']"),
        ("network_mode", "host"),
        ("cap_add", "[SYS_ADMIN]"),
        ("restart", "always"),
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


@pytest.mark.parametrize("key", ["volumes", "networks", "secrets", "configs", "include"])
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
