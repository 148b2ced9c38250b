"""The ``moorage`` CLI, run as a subprocess: refusals, the deploy lifecycle on real Temporal and
Docker, and the ``moorage dev`` supervisor.

Subprocesses are awaited with asyncio so the in-process worker keeps running on the session loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from moorage import naming
from moorage.dev import dev_api_key
from moorage.models import Deployment, DeploymentEvent, DeploymentStatus, EventType, ServiceInstance
from tests.conftest import TASK_QUEUE
from tests.helpers import compose, free_port, free_ports

ROOT = Path(__file__).resolve().parent.parent
TENANT = "cli-tests"


@dataclass
class Result:
    code: int
    out: str
    err: str


async def moorage(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moorage.cli", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, "MOORAGE_TENANT": TENANT, "COLUMNS": "200", **(env or {})},
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def assert_refused(result: Result, *words: str) -> None:
    """Exit 2, one ``error:`` line on stderr that names ``words``, and no traceback anywhere."""
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: "), result.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in result.out + result.err


# --- refusals that never reach Temporal ------------------------------------------------------


@pytest.fixture
def nowhere() -> dict[str, str]:
    """An address where no Temporal listens: a refusal must come before any connect."""
    return {"MOORAGE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (
            ["deploy", "x", "--max-surge", "0", "--max-unavailable", "0"],
            ["max_surge", "max_unavailable"],
        ),
        (["deploy", "x", "--max-surge", "lots"], ["max_surge", "percentage"]),
        # int() raised ValueError on these: exit 1 and a Python message.
        (["deploy", "x", "--max-surge=--5"], ["--max-surge", "'--5'"]),
        (["deploy", "x", "--max-surge", "9" * 5000], ["--max-surge", "too large"]),
        (["deploy", "x", "--max-unavailable=\u00b2"], ["--max-unavailable"]),
        (["deploy", "x", "--canary-steps", "10,bogus"], ["canary_steps", "bogus"]),
        (["deploy", "x", "--canary-steps", "10,pause:-5"], ["canary_steps", "pause"]),
        (["deploy", "x", "--canary-steps", "150"], ["canary_steps", "100"]),
        (["deploy", "x", "--health-check-retries", "0"], ["health_check_retries", "greater"]),
        (["deploy", "x", "--health-check-interval", "1e-300"], ["health_check_interval", "0.01"]),
        (["deploy", "x", "--version", "no spaces"], ["version"]),
        (["deploy", "x", "--strategy", "yolo"], ["--strategy", "yolo"]),
        (["deploy", "x", "--bogus"], ["--bogus"]),
        (["deploy"], ["name"]),
        (["status", "x.1", "--json", "extra"], ["extra"]),
        (["--tenant", "Not-Valid", "status", "x.1"], ["tenant", "Not-Valid"]),
        # bind() raised OverflowError: exit 1, no flag named.
        (["dev", "--temporal-port", "70000"], ["--temporal-port", "65535"]),
        (["dev", "--api-port", "-1"], ["--api-port", "1"]),
        (["dev", "--ui-port", "7233"], ["--ui-port", "--temporal-port"]),
        # uvicorn raised OverflowError: exit 1 (or, with a host name, listened on port 4464).
        (["api", "--port", "70000"], ["--port", "65535"]),
        # The API refuses over 200 characters; the CLI took any, into the project's state.
        (["deploy", "x", "--idempotency-key", "k" * 201], ["Idempotency-Key", "200"]),
        # It could only fail: the wait for a promotion timed out at once.
        (
            [
                "deploy",
                "x",
                "--strategy",
                "blue_green",
                "--manual-promote",
                "--blue-green-timeout",
                "0",
            ],
            ["blue_green_timeout", "auto_promote"],
        ),
    ],
)
async def test_bad_options_are_one_line_and_exit_2(
    args: list[str], words: list[str], nowhere: dict[str, str]
) -> None:
    assert_refused(await moorage(*args, env=nowhere), *words)


async def test_apply_missing_file(tmp_path: Path, nowhere: dict[str, str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert_refused(
        await moorage("project", "apply", "x", "-f", str(missing), env=nowhere),
        str(missing),
        "no such file",
    )


async def test_apply_refuses_build_without_image(tmp_path: Path, nowhere: dict[str, str]) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web:\n    build: .\n")
    assert_refused(
        await moorage("project", "apply", "x", "-f", str(path), env=nowhere), "'web'", "'build'"
    )


async def test_apply_refuses_bad_project_id(tmp_path: Path, nowhere: dict[str, str]) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(compose(api_image=None))
    assert_refused(
        await moorage("project", "apply", "Bad_Name", "-f", str(path), env=nowhere), "Bad_Name"
    )


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([], ["'web'", "'image'", "'TAG' is not set"]),
        (["--var", "TAG"], ["--var", "'TAG'", "NAME=value"]),
        (["--var", "1X=v"], ["--var", "1X=v"]),
        (["--var", "TAG=v1", "--var", "SRC=/"], ["'web'", "'volumes'"]),
        (["--env-file", "/nonexistent/env"], ["--env-file", "cannot read"]),
    ],
)
async def test_apply_variables_are_checked_before_connecting(
    tmp_path: Path, nowhere: dict[str, str], extra: list[str], words: list[str]
) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(
        "services:\n  web:\n    image: moorage-demo:${TAG}\n    volumes: ['${SRC:-data}:/d']\n"
        "volumes:\n  data: {}\n"
    )
    result = await moorage("project", "apply", "x", "-f", str(path), *extra, env=nowhere)
    assert_refused(result, *words)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        # UnicodeDecodeError escaped: exit 1 and a Python message.
        ("TAG=caf\u00e9\n".encode("latin-1"), ["cannot read"]),
        # Compose would take ${HOST} from the shell: Moorage reads no environment.
        (b"TAG=v1 # the tag\nURL=${HOST}:80\n", ["line 2", "${HOST} is not set above"]),
    ],
)
async def test_apply_env_file_refusals_name_the_file(
    tmp_path: Path, nowhere: dict[str, str], content: bytes, words: list[str]
) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text("services:\n  web:\n    image: moorage-demo:${TAG}\n")
    env_file = tmp_path / "vars.env"
    env_file.write_bytes(content)
    result = await moorage(
        "project", "apply", "x", "-f", str(path), "--env-file", str(env_file), env=nowhere
    )
    assert_refused(result, "--env-file", str(env_file), *words)


@pytest.mark.parametrize(
    ("args", "env", "value"),
    [
        # `moorage api` started and answered 500 to every request; the worker failed every start
        # or the reconcile schedule; neither may start at all.
        (["api", "--port", "0"], "MOORAGE_API_KEYS", "garbage"),
        (["api", "--port", "0"], "MOORAGE_ROUTE_PORTS", "x"),
        (["worker"], "MOORAGE_DEFAULT_CPUS", "inf"),
        (["worker"], "MOORAGE_RECONCILE_EVERY", "inf"),
        (["worker"], "MOORAGE_DEFAULT_PIDS", "99999999999999999999"),
        (["status", "x.1"], "MOORAGE_API_KEYS", "k=acme/alice:root"),
        # These failed at the first connection: a traceback, exit 1 (the API: a 500 each time).
        (["status", "x.1"], "MOORAGE_TEMPORAL_ADDRESS", ""),
        (["worker"], "MOORAGE_TEMPORAL_TLS_CA", "/nonexistent/ca.pem"),
    ],
)
async def test_a_bad_setting_stops_every_command_at_start_naming_it(
    nowhere: dict[str, str], args: list[str], env: str, value: str
) -> None:
    try:
        result = await moorage(*args, env={**nowhere, env: value}, timeout=30)
    except TimeoutError:
        pytest.fail(f"moorage {' '.join(args)} started with {env}={value}")
    assert_refused(result, env, "invalid settings")
    if env == "MOORAGE_API_KEYS":
        assert value not in result.err


async def test_temporal_not_reachable(nowhere: dict[str, str]) -> None:
    result = await moorage("status", "x.1", env=nowhere)
    assert_refused(result, "Temporal not reachable", nowhere["MOORAGE_TEMPORAL_ADDRESS"])


async def test_help_exits_0() -> None:
    result = await moorage("deploy", "--help")
    assert result.code == 0, result
    for flag in (
        "--strategy",
        "--max-surge",
        "--no-rollback-on-failure",
        "--idempotency-key",
        "--watch",
    ):
        assert flag in result.out


# --- the lifecycle on real Temporal and Docker -----------------------------------------------


@pytest.fixture
def cli_env(temporal_env: WorkflowEnvironment, worker: None) -> dict[str, str]:
    return {
        "MOORAGE_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        "MOORAGE_TASK_QUEUE": TASK_QUEUE,
    }


@pytest.mark.integration
async def test_a_request_no_worker_takes_says_what_it_waits_for(
    temporal_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """With Temporal up and no worker on the task queue, the CLI waited in silence, for ever."""
    queue = f"no-worker-{os.getpid()}-{time.monotonic_ns()}"
    compose_file = tmp_path / "c.yaml"
    compose_file.write_text(compose(api_image=None))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moorage.cli", "project", "apply", "lonely", "-f", str(compose_file),
        stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stdin=asyncio.subprocess.DEVNULL, cwd=ROOT,
        env={
            **os.environ, "MOORAGE_TENANT": TENANT, "MOORAGE_TASK_QUEUE": queue,
            "MOORAGE_TEMPORAL_ADDRESS": temporal_env.client.service_client.config.target_host,
        },
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stderr.readline(), 30)  # type: ignore[union-attr]
        assert f"no worker polls task queue {queue!r}".encode() in line, line
        assert proc.returncode is None  # it waits on
    finally:
        proc.kill()
        await proc.wait()
        handle = temporal_env.client.get_workflow_handle(
            naming.project_workflow_id(TENANT, "lonely")
        )
        with contextlib.suppress(Exception):
            await handle.terminate("test over")


@pytest.mark.integration
async def test_the_notice_tells_a_polled_task_queue_from_one_nobody_polls(
    temporal_env: WorkflowEnvironment, worker: None
) -> None:
    """A request that ran long (a reconcile stopping containers) printed "still waiting for a
    worker" with a worker busy on it."""
    from moorage.cli import _worker_polls
    from moorage.settings import Settings

    client = temporal_env.client
    deadline = time.monotonic() + 10  # the worker just started: its first poll shows soon
    while not await _worker_polls(client, Settings(task_queue=TASK_QUEUE)):
        assert time.monotonic() < deadline, "the test worker never showed as a poller"
        await asyncio.sleep(0.2)
    assert await _worker_polls(client, Settings(task_queue="nobody-polls-this")) is False


@pytest.mark.integration
async def test_apply_deploy_watch_and_inspect(
    cli_env: dict[str, str], project: str, tmp_path: Path
) -> None:
    v1 = tmp_path / "v1.yaml"
    v1.write_text(compose("moorage-demo:v1", api_image=None))

    applied = await moorage("project", "apply", project, "-f", str(v1), env=cli_env)
    assert applied.code == 0, applied
    assert "web" in applied.out

    # ${VAR} from --env-file, then --var (a later name wins); stored substituted.
    template = tmp_path / "template.yaml"
    template.write_text(compose("moorage-demo:${TAG}", api_image=None))
    env_file = tmp_path / "vars.env"
    env_file.write_text("# the tag\nexport TAG='v0'\n\n")
    templated = await moorage(
        "project", "apply", project, "-f", str(template), "--env-file", str(env_file),
        "--var", "TAG=v1", env=cli_env,
    )  # fmt: skip
    assert templated.code == 0, templated

    shown = await moorage("project", "show", project, env=cli_env)
    assert shown.code == 0, shown
    assert "moorage-demo:v1" in shown.out
    assert "${TAG}" not in shown.out
    assert "moorage-demo:v0" not in shown.out
    assert "revision -" in shown.out

    deployed = await moorage("deploy", project, "--version", "v1", "--watch", env=cli_env)
    assert deployed.code == 0, deployed
    dep_id = f"{project}.1"
    assert f"{dep_id} completed" in deployed.out
    assert "deployment_completed" in deployed.out  # the final events
    [route] = [line.split() for line in deployed.out.splitlines() if "route" in line.split()]
    assert route[:2] == ["route", "web"]
    assert route[2].startswith("http://127.0.0.1:")
    shown_after = await moorage("project", "show", project, env=cli_env)
    assert f"route     web  {route[2]}" in shown_after.out

    status = await moorage("status", dep_id, "--json", env=cli_env)
    assert status.code == 0, status
    dep = Deployment.model_validate_json(status.out)
    assert (dep.id, dep.status, dep.version, dep.progress) == (
        dep_id,
        DeploymentStatus.COMPLETED,
        "v1",
        100,
    )
    assert dep.tenant_id == TENANT
    assert dep.user_id == "cli"

    text_status = await moorage("status", dep_id, env=cli_env)
    assert text_status.code == 0, text_status
    assert "completed" in text_status.out

    events = await moorage("events", dep_id, "--json", env=cli_env)
    assert events.code == 0, events
    log = [DeploymentEvent.model_validate(e) for e in json.loads(events.out)]
    assert log[0].event_type == EventType.DEPLOYMENT_REQUESTED
    assert log[-1].event_type == EventType.DEPLOYMENT_COMPLETED
    text_events = await moorage("events", dep_id, env=cli_env)
    assert text_events.code == 0, text_events
    assert "health_check_passed" in text_events.out

    instances = await moorage("instances", dep_id, "--json", env=cli_env)
    assert instances.code == 0, instances
    found = [ServiceInstance.model_validate(i) for i in json.loads(instances.out)]
    assert [(i.service_name, i.status, i.health) for i in found] == [("web", "running", "healthy")]
    text_instances = await moorage("instances", dep_id, env=cli_env)
    assert found[0].container_name in text_instances.out

    history = await moorage("history", project, "--json", env=cli_env)
    assert history.code == 0, history
    data = json.loads(history.out)
    assert [d["id"] for d in data["deployments"]] == [dep_id]
    assert [(r["revision"], r["version"]) for r in data["revisions"]] == [(1, "v1")]
    text_history = await moorage("history", project, env=cli_env)
    assert dep_id in text_history.out
    assert "retained revisions" in text_history.out

    # Unknown ids are refusals too.
    assert_refused(await moorage("status", f"{project}.99", env=cli_env), "not found")
    assert_refused(await moorage("events", "no-such-project.1", env=cli_env), "not found")
    assert_refused(await moorage("instances", "not-an-id", env=cli_env), "not found")
    assert_refused(await moorage("project", "show", "no-such-project", env=cli_env), "not found")
    assert_refused(await moorage("history", "no-such-project", env=cli_env), "not found")
    # Nothing to roll back to, and nothing running to cancel.
    assert_refused(await moorage("rollback", dep_id, env=cli_env))
    assert_refused(await moorage("cancel", dep_id, env=cli_env), "only a running deployment")

    # v2, then roll back to v1 with --watch.
    v2 = tmp_path / "v2.yaml"
    v2.write_text(compose("moorage-demo:v2", api_image=None))
    assert (await moorage("project", "apply", project, "-f", str(v2), env=cli_env)).code == 0
    second = await moorage("deploy", project, "--version", "v2", "--watch", env=cli_env)
    assert second.code == 0, second
    back = await moorage("rollback", f"{project}.2", "--watch", env=cli_env)
    assert back.code == 0, back
    assert f"{project}.3 completed" in back.out
    rolled = Deployment.model_validate_json(
        (await moorage("status", f"{project}.3", "--json", env=cli_env)).out
    )
    assert rolled.rollback_version == "v1"


@pytest.mark.integration
async def test_deploy_without_watch_conflict_and_cancel(
    cli_env: dict[str, str], project: str, tmp_path: Path
) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(compose("moorage-demo:v1", api_image=None))
    assert (await moorage("project", "apply", project, "-f", str(path), env=cli_env)).code == 0

    # A long health-check delay keeps the deployment running while we poke at it.
    started = await moorage("deploy", project, "--health-check-delay", "120", env=cli_env)
    assert started.code == 0, started
    dep_id = f"{project}.1"
    assert started.out.split() == [dep_id, "pending"]

    busy = await moorage("deploy", project, env=cli_env)
    assert_refused(busy)

    cancelled = await moorage("cancel", dep_id, "--watch", env=cli_env)
    assert cancelled.code == 0, cancelled
    assert f"{dep_id} cancelled" in cancelled.out


@pytest.mark.integration
async def test_deploy_watch_exits_1_when_the_deployment_fails(
    cli_env: dict[str, str], project: str, tmp_path: Path
) -> None:
    path = tmp_path / "compose.yaml"
    path.write_text(compose("moorage-demo:unhealthy", api_image=None))
    assert (await moorage("project", "apply", project, "-f", str(path), env=cli_env)).code == 0
    result = await moorage("deploy", project, "--watch", "--no-rollback-on-failure", env=cli_env)
    assert result.code == 1, result
    assert f"{project}.1 failed" in result.out
    assert "Traceback" not in result.out + result.err


# --- moorage dev -----------------------------------------------------------------------------


def test_dev_api_key_is_made_once(tmp_path: Path) -> None:
    key = dev_api_key(tmp_path)
    assert len(key) >= 32
    assert dev_api_key(tmp_path) == key
    assert (tmp_path / "dev-api-key").stat().st_mode & 0o077 == 0


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def pid_in(pidfile: Path) -> int | None:
    """The first pid a pid file holds; None while it is missing or not written yet."""
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path: the router's sockets go in it, and HAProxy binds no
    socket path over 97 characters (pytest's own, under pytest-xdist, come close)."""
    path = Path(tempfile.mkdtemp(prefix="mdev-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dev_that_fails(
    data_dir: Path, temporal_port: int, ui_port: int, api_port: int
) -> subprocess.CompletedProcess[str]:
    """``moorage dev`` run to its end (it is expected to refuse to start)."""
    return subprocess.run(
        [
            sys.executable, "-m", "moorage.cli", "dev", "--data-dir", str(data_dir),
            "--temporal-port", str(temporal_port), "--ui-port", str(ui_port),
            "--api-port", str(api_port),
        ],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


def test_a_dev_that_cannot_start_leaves_the_running_proxy_alone(short_dir: Path) -> None:
    """A second ``moorage dev`` in a checkout (its ports taken by the first) stopped the first's
    HAProxy on its way out: every route of the running stack went dark."""
    fake = short_dir / "bin" / "haproxy"  # a process the router takes for its HAProxy
    fake.parent.mkdir()
    shutil.copy("/bin/sleep", fake)
    proxy = subprocess.Popen([str(fake), "60"])
    router = short_dir / "router-haproxy"
    router.mkdir()
    (router / "haproxy.pid").write_text(f"{proxy.pid}\n")
    temporal_port, ui_port, api_port = free_ports(3)
    taken = socket.socket()
    try:
        taken.bind(("127.0.0.1", temporal_port))
        taken.listen()
        done = dev_that_fails(short_dir, temporal_port, ui_port, api_port)
        assert done.returncode == 2, done.stderr
        assert f"port {temporal_port} (Temporal) is in use" in done.stderr
        assert proxy.poll() is None, "dev stopped the running stack's proxy"
    finally:
        taken.close()
        proxy.kill()
        proxy.wait()


def test_dev_with_a_data_dir_that_is_a_file_says_so(tmp_path: Path) -> None:
    """It exited 1 with a NotADirectoryError traceback."""
    path = tmp_path / "a-file"
    path.write_text("")
    done = dev_that_fails(path, *free_ports(3))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --data-dir {path}: Not a directory"), done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGHUP], ids=["sigint", "sighup"])
async def test_dev_starts_the_stack_and_stops_it_on_sigint(
    short_dir: Path, docker_client: object, stop: signal.Signals
) -> None:
    """And on SIGHUP (a closed terminal), which left every child running."""
    temporal_port, ui_port, api_port = free_ports(3)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moorage.cli", "dev",
        "--data-dir", str(short_dir),
        "--temporal-port", str(temporal_port),
        "--ui-port", str(ui_port),
        "--api-port", str(api_port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        stdin=asyncio.subprocess.DEVNULL,
        cwd=ROOT,
    )  # fmt: skip
    api = f"http://127.0.0.1:{api_port}"
    banner = f"export MOORAGE_TEMPORAL_ADDRESS=127.0.0.1:{temporal_port}"
    seen = b""
    try:
        # The banner comes once all three answer; a signal before it would skip it.
        deadline = time.monotonic() + 90
        while banner.encode() not in seen:
            assert time.monotonic() < deadline, (
                f"moorage dev: no banner after 90 s: {seen.decode()}"
            )
            line = await asyncio.wait_for(proc.stdout.readline(), 90)  # type: ignore[union-attr]
            assert line, f"moorage dev exited early: {seen.decode()}"
            seen += line
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{api}/healthz")).status_code == 200
            key = (short_dir / "dev-api-key").read_text().strip()
            # The API knows the dev key (401 without it) and reaches Temporal (404, not 503).
            assert (await http.get(f"{api}/api/projects/nope")).status_code == 401
            answer = await http.get(
                f"{api}/api/projects/nope", headers={"Authorization": f"Bearer {key}"}
            )
            assert answer.status_code == 404, answer.text

        # The worker starts the proxy (a daemon of its own, not a child of dev).
        pidfile = short_dir / "router-haproxy" / "haproxy.pid"
        deadline = time.monotonic() + 15
        while (haproxy := pid_in(pidfile)) is None or not alive(haproxy):
            assert time.monotonic() < deadline, "the worker's HAProxy did not start"
            await asyncio.sleep(0.05)
        children = children_of(proc.pid)
        assert len(children) == 3, children
        assert all(os.getpgid(c) == c for c in children)  # each its own group

        proc.send_signal(stop)
        output, _ = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = (seen + output).decode()
    assert proc.returncode == 0, text
    assert banner in text
    assert f"http://127.0.0.1:{ui_port}" in text
    assert key in text
    assert "Traceback" not in text
    assert [c for c in children if alive(c)] == []
    assert not alive(haproxy)  # dev stopped the proxy too
    for name in ("temporal", "worker", "api"):
        assert (short_dir / "logs" / f"{name}.log").exists()


def test_messages_with_brackets_print_as_they_are() -> None:
    """Event messages quote container logs and proxy errors. Rich took their brackets for
    markup: ``[emerg]`` vanished, and ``[/x/haproxy.cfg:12]`` (a closing tag) raised MarkupError,
    so ``moorage events`` printed nothing but the error."""
    from datetime import UTC, datetime

    from moorage import cli

    text = "[ALERT] parsing [/x/haproxy.cfg:12] : [emerg] unknown keyword"
    event = DeploymentEvent(
        event_type=EventType.DEPLOYMENT_FAILED, message=text, created_at=datetime.now(UTC)
    )
    dep = Deployment(
        id="shop.2", project_id="shop", version="v2", revision=2, strategy="rolling_update",
        status=DeploymentStatus.ROLLED_BACK, user_id="cli", tenant_id="acme",
        message=f"rolled back: {text}",
    )  # fmt: skip
    with cli.out.capture() as captured:
        cli.out.print(cli._events_table([event]))
        cli._print_deployment(dep)
    printed = captured.get()
    assert text in printed
    assert f"message   rolled back: {text}" in printed
    assert "deployment shop.2  rolled_back  0%" in printed
