"""Unit tests of the shared models, deployment ids and settings parsing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from moorage import naming
from moorage.models import (
    NAME_RE,
    TERMINAL_STATUSES,
    Deployment,
    DeploymentConfig,
    DeploymentEvent,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    RevisionInfo,
    ServiceInstance,
    Strategy,
    is_zero,
    parse_surge,
)
from moorage.settings import ApiKey, Settings, settings_error
from worker import run_worker

# --- DeploymentConfig --------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    cfg = DeploymentConfig()
    assert cfg.strategy is Strategy.RECREATE
    assert (cfg.max_surge, cfg.max_unavailable) == (1, 0)
    assert cfg.rollback_on_failure is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("health_check_delay", -0.1),
        ("health_check_delay", 3601),
        ("health_check_retries", 0),
        ("health_check_retries", -1),
        ("health_check_retries", 10_001),
        ("health_check_interval", 0),
        ("health_check_interval", -1),
        ("health_check_interval", 601),
        ("blue_green_timeout", -1),
        ("blue_green_timeout", 86_401),
    ],
)
def test_out_of_range_numbers_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentConfig(**{field: value})
    assert info.value.errors()[0]["loc"] == (field,)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("health_check_delay", 0),
        ("health_check_delay", 3600),
        ("health_check_retries", 1),
        ("health_check_retries", 10_000),
        ("health_check_interval", 0.05),
        ("blue_green_timeout", 0),
    ],
)
def test_boundary_numbers_are_accepted(field: str, value: float) -> None:
    assert getattr(DeploymentConfig(**{field: value}), field) == value


@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        (0, 0),
        (3, 3),
        ("25%", "25%"),
        (" 25% ", "25%"),
        ("025%", "25%"),
        ("100%", "100%"),
        ("0%", "0%"),
    ],
)
def test_max_surge_integers_and_percentages_are_accepted_and_normalised(
    value: int | str, normalised: int | str
) -> None:
    assert DeploymentConfig(max_surge=value, max_unavailable=1).max_surge == normalised
    assert DeploymentConfig(max_surge=1, max_unavailable=value).max_unavailable == normalised


@pytest.mark.parametrize("value", ["-1", "-1%", "abc", "1", "%", "2.5%", -1, "1000%"])
@pytest.mark.parametrize("field", ["max_surge", "max_unavailable"])
def test_bad_surge_values_are_refused(field: str, value: int | str) -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentConfig(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


@pytest.mark.parametrize("value", ["150%", "101%", "999%"])
def test_a_surge_may_be_over_100_percent_an_unavailability_may_not(value: str) -> None:
    """Kubernetes' rule: only maxUnavailable is capped at 100%."""
    assert DeploymentConfig(max_surge=value).max_surge == value
    with pytest.raises(ValidationError, match="at most 100%") as info:
        DeploymentConfig(max_unavailable=value)
    assert info.value.errors()[0]["loc"][0] == "max_unavailable"


@pytest.mark.parametrize("value", [1.5, None, [1]])
def test_surge_values_of_other_types_are_refused(value: Any) -> None:
    with pytest.raises(ValidationError):
        DeploymentConfig(max_surge=value)


@pytest.mark.parametrize("field", ["max_surge", "max_unavailable"])
def test_boolean_surge_values_are_refused(field: str) -> None:
    with pytest.raises(ValidationError):
        DeploymentConfig(**{field: True})


def test_boolean_surge_values_are_refused_from_json() -> None:
    with pytest.raises(ValidationError):
        DeploymentConfig.model_validate_json('{"max_surge": true}')


def test_parse_surge_refuses_booleans_directly() -> None:
    for value in (True, False):
        with pytest.raises(ValueError, match="max_surge"):
            parse_surge(value, "max_surge")


@pytest.mark.parametrize(
    ("surge", "unavailable"),
    [(0, 0), ("0%", 0), (0, "0%"), ("0%", "0%"), ("00%", 0)],
)
def test_both_zero_is_refused(surge: int | str, unavailable: int | str) -> None:
    with pytest.raises(ValidationError, match="both 0"):
        DeploymentConfig(max_surge=surge, max_unavailable=unavailable)


@pytest.mark.parametrize(("surge", "unavailable"), [(0, 1), (1, 0), ("0%", "1%"), ("1%", 0)])
def test_one_zero_is_accepted(surge: int | str, unavailable: int | str) -> None:
    cfg = DeploymentConfig(max_surge=surge, max_unavailable=unavailable)
    assert not (is_zero(cfg.max_surge) and is_zero(cfg.max_unavailable))


def test_extra_keys_are_refused() -> None:
    with pytest.raises(ValidationError) as info:
        DeploymentConfig.model_validate({"strategy": "recreate", "maxSurge": 2})
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    assert info.value.errors()[0]["loc"] == ("maxSurge",)


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ValidationError):
        DeploymentConfig.model_validate({"strategy": "RollingUpdate"})


def test_config_from_json_uses_enum_values() -> None:
    cfg = DeploymentConfig.model_validate_json(
        '{"strategy": "rolling_update", "max_surge": "50%", "max_unavailable": 1}'
    )
    assert cfg.strategy is Strategy.ROLLING_UPDATE
    assert cfg.max_surge == "50%"


# --- DeployRequest -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v2", "1.2.3", "1.2.3-rc.1+build.5", "release_2024", "a" * 64])
def test_deploy_request_accepts_version_labels(version: str) -> None:
    assert DeployRequest(version=version).version == version


@pytest.mark.parametrize("version", ["", "v 2", "v/2", "v2;rm", "a" * 65, "v2\n", "ü/2"])
def test_deploy_request_refuses_bad_versions(version: str) -> None:
    with pytest.raises(ValidationError) as info:
        DeployRequest(version=version)
    assert info.value.errors()[0]["loc"] == ("version",)


def test_deploy_request_version_is_optional_and_config_rules_still_apply() -> None:
    assert DeployRequest().version is None
    with pytest.raises(ValidationError, match="both 0"):
        DeployRequest(version="v1", max_surge=0, max_unavailable=0)
    with pytest.raises(ValidationError):
        DeployRequest.model_validate({"version": "v1", "dry_run": True})


# --- statuses and JSON -------------------------------------------------------------------------


STATUS_TABLE = [
    (DeploymentStatus.PENDING, False),
    (DeploymentStatus.IN_PROGRESS, False),
    (DeploymentStatus.ROLLING_BACK, False),
    (DeploymentStatus.COMPLETED, True),
    (DeploymentStatus.FAILED, True),
    (DeploymentStatus.ROLLED_BACK, True),
    (DeploymentStatus.CANCELLED, True),
]
"""Every status, and whether it is terminal: written out, not derived from the code."""


@pytest.mark.parametrize(("status", "terminal"), STATUS_TABLE)
def test_deployment_status_terminal(status: DeploymentStatus, terminal: bool) -> None:
    assert status.terminal is terminal


def test_every_status_is_classified() -> None:
    """A status added without a place in the table above fails here (the table decides)."""
    classified = {status for status, _ in STATUS_TABLE}
    assert classified == set(DeploymentStatus)
    assert {s for s, terminal in STATUS_TABLE if terminal} == TERMINAL_STATUSES


def _deployment(**overrides: Any) -> Deployment:
    fields: dict[str, Any] = {
        "id": "shop.3",
        "project_id": "shop",
        "version": "v3",
        "revision": 3,
        "strategy": Strategy.ROLLING_UPDATE,
        "status": DeploymentStatus.IN_PROGRESS,
        "progress": 40,
        "started_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        "previous_revision": 2,
        "user_id": "alice",
        "tenant_id": "acme",
        "config": DeploymentConfig(strategy=Strategy.ROLLING_UPDATE, max_surge="25%"),
    }
    fields.update(overrides)
    return Deployment(**fields)


def test_deployment_json_is_snake_case_with_enum_values() -> None:
    data = json.loads(_deployment().model_dump_json())
    assert data["strategy"] == "rolling_update"
    assert data["status"] == "in_progress"
    assert data["project_id"] == "shop"
    assert data["previous_revision"] == 2
    assert data["rollback_version"] is None
    assert data["started_at"] == "2025-01-02T03:04:05Z"
    assert data["config"]["max_surge"] == "25%"
    assert data["config"]["strategy"] == "rolling_update"
    for key in [*data, *data["config"]]:
        assert key == key.lower(), key
        assert key.isidentifier(), key


def test_deployment_state_round_trips_through_json() -> None:
    state = DeploymentState(
        deployment=_deployment(status=DeploymentStatus.ROLLING_BACK),
        events=[
            DeploymentEvent(
                event_type=EventType.HEALTH_CHECK_FAILED,
                service_name="web",
                message="unhealthy",
                details={"attempts": 3},
                created_at=datetime(2025, 1, 2, tzinfo=UTC),
            )
        ],
        instances=[
            ServiceInstance(
                container_id="abc",
                container_name=naming.container_name("acme", "shop", "web", 3, 0),
                service_name="web",
                revision=3,
                slot=0,
                image="nginx",
                status="running",
                ports={"80/tcp": "127.0.0.1:49153"},
            )
        ],
    )
    text = state.model_dump_json()
    assert '"event_type":"health_check_failed"' in text
    assert '"status":"rolling_back"' in text
    assert DeploymentState.model_validate_json(text) == state


@pytest.mark.parametrize("progress", [-1, 101])
def test_deployment_progress_is_a_percentage(progress: int) -> None:
    with pytest.raises(ValidationError):
        _deployment(progress=progress)


# --- deployment ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("project", "revision"),
    [("shop", 1), ("shop", 42), ("a", 999_999_999), ("my-shop-2", 7), ("0", 0)],
)
def test_split_deployment_id_round_trips(project: str, revision: int) -> None:
    dep_id = naming.deployment_id(project, revision)
    assert naming.split_deployment_id(dep_id) == (project, revision)


def test_split_deployment_id_uses_the_last_dot() -> None:
    assert naming.split_deployment_id("a.b.3") == ("a.b", 3)


@pytest.mark.parametrize(
    "dep_id",
    ["shop", "shop.", ".3", "shop.x", "shop.-1", "shop.+1", "shop.1e3", "shop.1234567890", ""],
)
def test_split_deployment_id_refuses_other_forms(dep_id: str) -> None:
    assert naming.split_deployment_id(dep_id) is None


@pytest.mark.parametrize("dep_id", ["shop.\u00b2", "shop.\uff13"])
def test_split_deployment_id_refuses_non_ascii_digits(dep_id: str) -> None:
    assert naming.split_deployment_id(dep_id) is None


# --- settings ----------------------------------------------------------------------------------


def test_parsed_api_keys() -> None:
    settings = Settings(api_keys=" k1=acme/alice , k2=beta-2/bob,, k3=acme/ci/deploy ,")
    assert settings.parsed_api_keys() == {
        "k1": ApiKey(tenant_id="acme", user_id="alice"),
        "k2": ApiKey(tenant_id="beta-2", user_id="bob"),
        "k3": ApiKey(tenant_id="acme", user_id="ci/deploy"),
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("k=acme/alice:viewer:deployer", "user 'alice:viewer' has a ':'"),
        ("k=acme/alice,k=beta/bob", "a key is given twice (tenants 'acme' and 'beta')"),
    ],
)
def test_api_keys_that_meant_something_else_are_refused(raw: str, message: str) -> None:
    """A doubled role made user "alice:viewer" a deployer; a key given twice went silently to
    the later tenant."""
    with pytest.raises(ValueError, match=re.escape(message)):
        Settings(api_keys=raw).parsed_api_keys()


@pytest.mark.parametrize("raw", ["", " ", ",", " , "])
def test_parsed_api_keys_empty(raw: str) -> None:
    assert Settings(api_keys=raw).parsed_api_keys() == {}


@pytest.mark.parametrize(
    "raw",
    [
        "k1",
        "k1=acme",
        "k1=acme/",
        "k1=/alice",
        "=acme/alice",
        "k1=Acme/alice",
        "k1=ac_me/alice",
        "k1=-acme/alice",
        "k1=acme/alice,broken",
    ],
)
def test_parsed_api_keys_errors(raw: str) -> None:
    with pytest.raises(ValueError, match="key=tenant/user"):
        Settings(api_keys=raw).parsed_api_keys()


def test_settings_read_moorage_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_API_KEYS", "secret=acme/alice")
    monkeypatch.setenv("MOORAGE_TEMPORAL_ADDRESS", "temporal.example:7233")
    monkeypatch.setenv("MOORAGE_TEMPORAL_TLS", "true")
    settings = Settings()
    assert settings.parsed_api_keys() == {"secret": ApiKey(tenant_id="acme", user_id="alice")}
    assert settings.temporal_address == "temporal.example:7233"
    assert settings.temporal_tls is True


def test_temporal_address_and_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    """They failed at the first connection (a traceback; every API request a 500)."""
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    ok = Settings(
        temporal_address="temporal.example:7233", temporal_tls=True,
        temporal_tls_cert=pem, temporal_tls_key=pem, temporal_tls_ca=pem,
    )  # fmt: skip
    assert ok.temporal_tls_ca == pem
    assert Settings(temporal_address="[::1]:7233").temporal_address == "[::1]:7233"
    refused: dict[str, dict[str, Any]] = {
        "MOORAGE_TEMPORAL_ADDRESS '': host:port": {"temporal_address": ""},
        "MOORAGE_TEMPORAL_ADDRESS 'temporal.example': host:port": {
            "temporal_address": "temporal.example"
        },
        "MOORAGE_TEMPORAL_ADDRESS 'h:70000'": {"temporal_address": "h:70000"},
        "MOORAGE_TEMPORAL_TLS_CA is set but MOORAGE_TEMPORAL_TLS is not true": {
            "temporal_tls_ca": pem
        },
        "MOORAGE_TEMPORAL_TLS_CERT and MOORAGE_TEMPORAL_TLS_KEY go together": {
            "temporal_tls": True,
            "temporal_tls_cert": pem,
        },
        f"MOORAGE_TEMPORAL_TLS_CA '{tmp_path}/none.pem': No such file": {
            "temporal_tls": True,
            "temporal_tls_ca": tmp_path / "none.pem",
        },
    }
    for message, fields in refused.items():
        with pytest.raises(ValidationError, match=re.escape(message)):
            Settings(**fields)


def test_instance_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOORAGE_INSTANCE", raising=False)  # set for each pytest-xdist process
    assert Settings().instance == "default"
    monkeypatch.setenv("MOORAGE_INSTANCE", "staging-2")
    assert Settings().instance == "staging-2"
    for bad in ("", "Staging", "has space", "-lead", "x" * 64):
        monkeypatch.setenv("MOORAGE_INSTANCE", bad)
        with pytest.raises(ValidationError) as info:
            Settings()
        assert info.value.errors()[0]["loc"] == ("instance",), bad
        assert f"MOORAGE_INSTANCE {bad!r}: 1-63 lowercase letters" in str(info.value)


def test_retained_revisions_bounds() -> None:
    with pytest.raises(ValidationError):
        Settings(retained_revisions=0)
    assert Settings(retained_revisions=1).retained_revisions == 1


def test_parsed_api_keys_roles() -> None:
    keys = Settings(
        api_keys="k1=acme/alice:viewer,k2=acme/bob:deployer,k3=acme/carol"
    ).parsed_api_keys()
    assert keys["k1"] == ApiKey(tenant_id="acme", user_id="alice", role="viewer")
    assert keys["k2"] == ApiKey(tenant_id="acme", user_id="bob", role="deployer")
    assert keys["k3"].role == "deployer"
    with pytest.raises(ValueError, match="role 'admin'"):
        Settings(api_keys="k=acme/dave:admin").parsed_api_keys()


@pytest.mark.parametrize(
    ("field", "value", "env"),
    [
        ("route_ports", "21000", "MOORAGE_ROUTE_PORTS"),
        ("route_ports", "2-1", "MOORAGE_ROUTE_PORTS"),
        ("replica_ports", "17000-70000", "MOORAGE_REPLICA_PORTS"),
        ("replica_ports", "0-10", "MOORAGE_REPLICA_PORTS"),
        ("replica_ports", "\u00b9-\u00b2", "MOORAGE_REPLICA_PORTS"),
    ],
)
def test_a_bad_port_range_names_its_variable(field: str, value: str, env: str) -> None:
    settings = Settings().model_copy(update={field: value})
    with pytest.raises(ValueError, match=env):
        settings.port_range() if field == "route_ports" else settings.replica_port_range()


def test_port_ranges() -> None:
    settings = Settings(route_ports="21000-21009", replica_ports="17000-17000")
    assert settings.port_range() == (21000, 21009)
    assert settings.replica_port_range() == (17000, 17000)


def test_replica_ports_overlapping_route_ports_are_refused() -> None:
    settings = Settings(route_ports="21000-21999", replica_ports="19000-21000")
    with pytest.raises(ValueError, match="overlaps MOORAGE_ROUTE_PORTS"):
        settings.replica_port_range()


async def test_the_worker_refuses_to_start_with_overlapping_port_ranges(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = Settings(route_ports="21000-21999", replica_ports="20000-21000")
    with pytest.raises(SystemExit) as exited:
        await run_worker(settings)
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith(
        "error: MOORAGE_REPLICA_PORTS 20000-21000 overlaps MOORAGE_ROUTE_PORTS"
    )


async def test_the_worker_refuses_a_router_directory_the_proxy_config_cannot_hold(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """It went unquoted into nginx's and HAProxy's config: a space made every router step fail
    to start the proxy, and the worker's start with a traceback."""
    for bad in ("My Projects", "a;b"):
        with pytest.raises(SystemExit) as exited:
            await run_worker(Settings(router_dir=tmp_path / bad))
        assert exited.value.code == 2
        assert capsys.readouterr().err.startswith(f"error: MOORAGE_ROUTER_DIR '{tmp_path / bad}'")


@pytest.mark.parametrize(
    ("env", "value"),
    [
        # Each passed Settings() and failed later: the reconcile schedule's timedelta, every
        # container's nano_cpus or pids_limit, every API request (500), every route.
        ("MOORAGE_RECONCILE_EVERY", "inf"),
        ("MOORAGE_RECONCILE_EVERY", "nan"),
        ("MOORAGE_RECONCILE_EVERY", "1e300"),
        ("MOORAGE_DEFAULT_CPUS", "inf"),
        ("MOORAGE_DEFAULT_CPUS", "nan"),
        ("MOORAGE_DEFAULT_CPUS", "0.001"),
        ("MOORAGE_DEFAULT_CPUS", "100000"),
        ("MOORAGE_DEFAULT_PIDS", "99999999999999999999"),
        ("MOORAGE_DRAIN_TIMEOUT", "nan"),
        ("MOORAGE_API_KEYS", "garbage"),
        ("MOORAGE_API_KEYS", "k=acme/alice:root"),
        ("MOORAGE_ROUTE_PORTS", "x"),
        ("MOORAGE_REPLICA_PORTS", "17000-70000"),
    ],
)
def test_a_setting_that_would_fail_later_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    message = settings_error(info.value)
    assert message.startswith(env), message
    if env == "MOORAGE_API_KEYS":
        assert value not in message  # a secret is never echoed


def test_settings_at_their_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    for env, value in (
        ("MOORAGE_RECONCILE_EVERY", "0"),
        ("MOORAGE_DEFAULT_CPUS", "0.01"),
        ("MOORAGE_DEFAULT_PIDS", "4194304"),
        ("MOORAGE_API_KEYS", "k=acme/alice:viewer"),
        ("MOORAGE_ROUTE_PORTS", "1-65535"),
    ):
        monkeypatch.setenv(env, value)
    settings = Settings()
    assert (settings.default_cpus, settings.default_pids) == (0.01, 4_194_304)


def test_router_bind_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOORAGE_ROUTER_BIND", raising=False)
    assert Settings().router_bind == "127.0.0.1"
    monkeypatch.setenv("MOORAGE_ROUTER_BIND", "0.0.0.0")
    assert Settings().router_bind == "0.0.0.0"
    for bad in ("", "localhost", "::1", "127.0.0.256"):
        monkeypatch.setenv("MOORAGE_ROUTER_BIND", bad)
        with pytest.raises(ValidationError) as info:
            Settings()
        assert info.value.errors()[0]["loc"] == ("router_bind",), bad
        assert f"MOORAGE_ROUTER_BIND {bad!r}: an IPv4 address" in str(info.value)


@pytest.mark.parametrize("name", ["shop\n", "Shop", "-shop", "a" * 41, ""])
def test_a_project_or_tenant_id_must_be_the_whole_text(name: str) -> None:
    """``$`` matched before a trailing newline: "shop\\n" passed as an id, and failed later as
    part of a container's name."""
    assert NAME_RE.match(name) is None
    assert NAME_RE.match("shop-2") is not None


def _revision(n: int, size: int) -> RevisionInfo:
    return RevisionInfo(
        revision=n, version=f"v{n}", deployment_id=f"shop.{n}",
        status=DeploymentStatus.COMPLETED, compose="#" * size,
        created_at=datetime(2025, 1, 2, tzinfo=UTC),
    )  # fmt: skip


def test_retained_revisions_fit_a_byte_budget_newest_first_and_keep_the_newest() -> None:
    """Ten revisions of a 256 KiB file made the project's state and its answers larger than a
    Temporal payload may be (2 MiB): every workflow task of the project failed."""
    from workflows.project import RETAINED_COMPOSE_BYTES, retain_within, retained_bytes

    small = [_revision(n, 5_000) for n in range(1, 11)]
    assert retain_within(small, RETAINED_COMPOSE_BYTES) == small
    big = [_revision(n, 250 * 1024) for n in range(1, 11)]
    kept = retain_within(big, RETAINED_COMPOSE_BYTES)
    assert [r.revision for r in kept] == [9, 10]
    assert retained_bytes(kept) <= RETAINED_COMPOSE_BYTES
    huge = [_revision(1, 10), _revision(2, RETAINED_COMPOSE_BYTES + 1)]
    assert [r.revision for r in retain_within(huge, RETAINED_COMPOSE_BYTES)] == [2]


def test_retained_revisions_are_counted_as_they_travel_escapes_and_all() -> None:
    """A 256 KiB Compose file of blank lines is 512 KiB as a JSON string: counted raw, two such
    revisions fitted the budget, and with the project's applied file and its serving revision
    beside them the state passed 2 MiB (its next continue-as-new failed)."""
    from workflows.inputs import ProjectState
    from workflows.project import RETAINED_COMPOSE_BYTES, json_bytes, retain_within

    text = "services:\n  web: {image: a}\n" + "\n" * (256 * 1024 - 30)
    revisions = [_revision(n, 0).model_copy(update={"compose": text + f"#{n}"}) for n in (1, 2)]
    kept = retain_within(revisions, RETAINED_COMPOSE_BYTES)
    assert [r.revision for r in kept] == [2]
    state = ProjectState(
        tenant_id="acme", project_id="shop", compose=text, current=revisions[1], revisions=kept
    )
    assert json_bytes(state) < 2 * 1024 * 1024


def test_a_failed_container_s_log_tail_is_bounded_and_cut_at_a_line() -> None:
    """Twenty lines could be megabytes (a minified JSON log): the event keeps them in the
    project's state."""
    from activities.engine_view import LOG_TAIL_CHARS, bounded_tail

    assert bounded_tail("a\nb") == "a\nb"
    one_line = "x" * 5_000_000
    assert bounded_tail(one_line) == "\u2026" + "x" * (LOG_TAIL_CHARS - 1)
    lines = "\n".join(f"line {i} " + "y" * 300 for i in range(20))
    tail = bounded_tail(lines)
    assert len(tail) <= LOG_TAIL_CHARS
    assert tail.startswith("\u2026line ")
    assert tail.endswith("line 19 " + "y" * 300)


def _failed_record(n: int, log_kib: int) -> DeploymentState:
    logs = "\n".join(f"line {i} " + "z" * 1000 for i in range(log_kib))
    event = DeploymentEvent(
        event_type=EventType.HEALTH_CHECK_FAILED,
        message=f"replica not healthy; last log lines:\n{logs}",
        details={"container": f"c{n}", "logs": logs, "health_output": "h" * 4000},
        created_at=datetime(2025, 1, 2, tzinfo=UTC),
    )
    return DeploymentState(deployment=_deployment(id=f"shop.{n}", revision=n), events=[event])


def test_the_project_state_is_kept_under_its_budget_newest_records_whole() -> None:
    """A hundred failed deployments with their log tails made the project's state larger than
    a continue-as-new may carry (2 MiB): the project's workflow then failed every task."""
    from workflows.inputs import ProjectState
    from workflows.project import KEPT_WHOLE, STATE_BUDGET_BYTES, fit_state, json_bytes

    state = ProjectState(
        tenant_id="acme", project_id="shop", deployments=[_failed_record(n, 20) for n in range(100)]
    )
    assert json_bytes(state) > 2 * 1024 * 1024
    newest = [r.model_copy(deep=True) for r in state.deployments[-KEPT_WHOLE:]]
    fit_state(state)
    assert json_bytes(state) <= STATE_BUDGET_BYTES
    assert len(state.deployments) == 100  # the logs were enough
    assert state.deployments[-KEPT_WHOLE:] == newest
    [slim] = state.deployments[0].events
    assert slim.message.startswith("replica not healthy; last log lines: \u2026 (logs dropped")
    assert slim.details == {"container": "c0"}
    # Then the logs of the newest ten but one; then records go, oldest first.
    huge = ProjectState(
        tenant_id="acme", project_id="shop", deployments=[_failed_record(n, 200) for n in range(12)]
    )
    fit_state(huge, budget=1024 * 1024)
    assert json_bytes(huge) <= 1024 * 1024
    assert len(huge.deployments) == 12
    assert "logs" in huge.deployments[-1].events[0].details
    assert "logs" not in huge.deployments[-2].events[0].details
    fit_state(huge, budget=300 * 1024)  # the newest alone is ~400 KiB: it stays, alone
    assert [r.deployment.revision for r in huge.deployments] == [11]
