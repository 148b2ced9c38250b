"""The ``moorage`` command line: projects and deployments straight on Temporal, plus the dev stack.

Every refusal (unknown id, conflict, invalid flag or Compose file, Temporal not reachable) is one
``error: …`` line on stderr and exit status 2; ``deploy --watch`` exits 1 when the deployment does
not complete. A process that used a Temporal client can abort at interpreter exit, so :func:`main`
flushes and leaves with ``os._exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import click
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from moorage.compose import ComposeError, parse_compose, resolve_compose
from moorage.envfile import VARIABLE_NAME_RE, EnvFileError, parse_env_file
from moorage.models import (
    NAME_RE,
    Deployment,
    DeploymentEvent,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    ProjectPublic,
    ServiceInstance,
    Strategy,
)
from moorage.service import (
    DeploymentService,
    MoorageError,
    UnavailableError,
    check_deploy_request,
    check_idempotency_key,
)
from moorage.settings import Settings, settings_error
from moorage.temporal import connect

T = TypeVar("T")

CONNECT_TIMEOUT = 15.0
"""Seconds to wait for Temporal to answer before giving up."""
POLL_INTERVAL = 0.3
"""Seconds between two polls of ``--watch``."""
EXIT_REFUSED = 2
"""Exit status of every refusal: usage, validation, not found, conflict, Temporal unreachable."""

# Piped output (scripts, logs) gets wide tables instead of rich's 80-column default.
# No markup: messages quote container logs and proxy errors ("[ALERT] ... [haproxy.cfg:12]"),
# which Rich took for markup (the text dropped, or MarkupError and no output at all).
out = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, markup=False)

app = typer.Typer(
    name="moorage",
    help="Deploy Compose projects on Docker through durable Temporal workflows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
project_app = typer.Typer(help="Create, update and inspect projects.", no_args_is_help=True)
app.add_typer(project_app, name="project")


class CliError(Exception):
    """A refusal the CLI reports as one ``error:`` line."""

    def __init__(self, message: str, code: int = EXIT_REFUSED):
        super().__init__(message)
        self.message = message
        self.code = code


# --- plumbing ---------------------------------------------------------------------------------


def _load_settings(**overrides: str) -> Settings:
    """The settings of the environment (``MOORAGE_*``), checked before any command runs.

    Raises:
        CliError: a variable is invalid (the message names it): ``moorage api`` or ``worker``
            would start and fail every request or step that reads it.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic-settings takes fields
    except ValidationError as exc:
        raise CliError(f"invalid settings: {settings_error(exc)}") from exc


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_root().obj
    if not isinstance(settings, Settings):  # a sub-command invoked without the root callback
        settings = _load_settings()
    return settings


async def _connect(settings: Settings) -> Client:
    try:
        return await asyncio.wait_for(connect(settings), CONNECT_TIMEOUT)
    except (RuntimeError, TimeoutError) as exc:
        reason = str(exc) or f"no answer within {CONNECT_TIMEOUT:.0f}s"
        raise CliError(
            f"Temporal not reachable at {settings.temporal_address} "
            f"(start it with `moorage dev` or set MOORAGE_TEMPORAL_ADDRESS): {reason}"
        ) from exc


WAIT_NOTICE_S = 10.0
"""After this long without an answer, the CLI looks whether a worker polls its task queue."""


POLLED_WITHIN_S = 90.0
"""A worker polled the task queue this recently: it runs (a poll waits up to a minute for a
task; Temporal lists the pollers of the last 5 minutes, a stopped worker among them)."""


async def _worker_polls(client: Client, settings: Settings) -> bool | None:
    """Whether a worker polls the task queue for workflow tasks (None: Temporal did not say)."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    try:
        found = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            )
        )
    except RPCError:
        return None
    now = datetime.now(UTC)
    return any(
        (now - p.last_access_time.ToDatetime(UTC)).total_seconds() < POLLED_WITHIN_S
        for p in found.pollers
    )


def _with_service(
    ctx: typer.Context,
    body: Callable[[DeploymentService, str, str], Awaitable[T]],
    *,
    notice: bool = True,
) -> T:
    """Connect to Temporal and run ``body(service, tenant, user)`` on a fresh event loop.

    A request waits for a worker to take it: with none running it waited in silence, for ever.
    After :data:`WAIT_NOTICE_S` without an answer, a line on stderr says so when no worker polls
    the task queue (not with ``notice=False``: a watch).
    """
    settings = _settings(ctx)

    async def go() -> T:
        client = await _connect(settings)
        task = asyncio.ensure_future(
            body(DeploymentService(client, settings), settings.tenant, settings.user)
        )
        looking = notice
        while looking:  # looked at again every WAIT_NOTICE_S, until it says so once
            done, _ = await asyncio.wait({task}, timeout=WAIT_NOTICE_S)
            if done:
                break
            if await _worker_polls(client, settings) is False:
                looking = False
                print(  # one line, not wrapped to a width
                    f"no worker polls task queue {settings.task_queue!r} at "
                    f"{settings.temporal_address}: the request waits until one does (start "
                    "`moorage worker` or `moorage dev`); Ctrl-C stops waiting, and a request "
                    "already sent may still be carried out once a worker runs",
                    file=sys.stderr,
                    flush=True,
                )
        return await task

    return asyncio.run(go())


def _emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _status_style(status: DeploymentStatus) -> str:
    return {
        DeploymentStatus.COMPLETED: "green",
        DeploymentStatus.FAILED: "red",
        DeploymentStatus.ROLLED_BACK: "yellow",
        DeploymentStatus.CANCELLED: "yellow",
    }.get(status, "cyan")


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        msg = str(error["msg"]).removeprefix("Value error, ")
        loc = ".".join(str(p) for p in error["loc"])
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "invalid options: " + "; ".join(parts)


def _read_compose(path: Path) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise CliError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: cannot read: {exc}") from exc


def _variables(env_file: Path | None, pairs: list[str]) -> dict[str, str]:
    """The variables of ``env_file`` then ``pairs``; a later name wins.

    ``env_file`` is read as Compose reads a ``.env`` file (:mod:`moorage.envfile`): comments,
    quotes, escapes and ``${NAME}`` of names set above it or by a ``pair``. A ``pair`` is
    ``NAME=value`` as the shell gave it (surrounding quotes dropped).

    Raises:
        CliError: a file that cannot be read, or an entry that is not ``NAME=value``.
    """
    given: dict[str, str] = {}
    for entry in pairs:
        name, sep, value = entry.partition("=")
        name = name.strip().removeprefix("export ").strip()
        if not sep or not VARIABLE_NAME_RE.match(name):
            raise CliError(f"--var: {entry!r} is not NAME=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        given[name] = value
    variables: dict[str, str] = {}
    if env_file is not None:
        try:
            text = env_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"--env-file {env_file}: cannot read: {exc}") from exc
        try:
            variables.update(parse_env_file(text, given))
        except EnvFileError as exc:
            raise CliError(f"--env-file {env_file}: {exc}") from exc
    return {**variables, **given}


# --- rendering --------------------------------------------------------------------------------


def _print_deployment(dep: Deployment) -> None:
    style = _status_style(dep.status)
    out.print(
        Text.assemble(
            "deployment ", (dep.id, "bold"), "  ", (str(dep.status), style), f"  {dep.progress}%"
        )
    )
    out.print(f"  project   {dep.project_id}  revision {dep.revision}  version {dep.version}")
    out.print(f"  strategy  {dep.strategy}  by {dep.user_id}")
    if dep.rollback_version:
        out.print(f"  rollback  to version {dep.rollback_version}")
    if dep.previous_revision is not None:
        out.print(f"  previous  revision {dep.previous_revision}")
    out.print(f"  started   {_when(dep.started_at)}  completed {_when(dep.completed_at)}")
    if dep.message:
        out.print(f"  message   {dep.message}")


def _events_table(events: Sequence[DeploymentEvent]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("time", "event", "service", "message"):
        table.add_column(column)
    for e in events:
        table.add_row(_when(e.created_at), str(e.event_type), e.service_name or "", e.message)
    return table


def _instances_table(instances: Sequence[ServiceInstance]) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("container", "service", "rev", "slot", "image", "status", "health", "ports"):
        table.add_column(column)
    for i in instances:
        ports = ", ".join(f"{k}→{v}" for k, v in i.ports.items())
        table.add_row(
            i.container_name,
            i.service_name,
            str(i.revision),
            str(i.slot),
            i.image,
            i.status,
            i.health or "",
            ports,
        )
    return table


# --- watching ---------------------------------------------------------------------------------


async def _watch(service: DeploymentService, tenant: str, dep_id: str) -> DeploymentState:
    """Poll until the deployment is terminal and its project has recorded the result."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[status]}"),
        TextColumn("{task.fields[message]}", markup=False),
        console=err,
    ) as progress:
        task = progress.add_task(dep_id, total=100, status="pending", message="")
        while True:
            state = await service.get_state(tenant, dep_id)
            dep = state.deployment
            progress.update(
                task, completed=dep.progress, status=str(dep.status), message=dep.message
            )
            if dep.status.terminal:
                project = await service.get_project(tenant, dep.project_id)
                if project.active_deployment_id != dep_id:
                    state = await service.get_state(tenant, dep_id)
                    dep = state.deployment
                    progress.update(
                        task, completed=dep.progress, status=str(dep.status), message=dep.message
                    )
                    return state
            await asyncio.sleep(POLL_INTERVAL)


def _watch_and_report(
    ctx: typer.Context, dep_id: str, success: DeploymentStatus, as_json: bool
) -> int:
    """Watch a deployment to its end; 0 when it ends in ``success``, else 1."""
    try:
        state = _with_service(ctx, lambda s, tenant, _user: _watch(s, tenant, dep_id), notice=False)
    except KeyboardInterrupt:
        err.print(f"interrupted: {dep_id} goes on; follow it with `moorage status {dep_id}`")
        return 130
    dep = state.deployment
    if as_json:
        sys.stdout.write(state.model_dump_json(indent=2) + "\n")
    else:
        out.print(_events_table(state.events[-10:]))
        style = _status_style(dep.status)
        out.print(
            Text.assemble(
                f"{dep.id} ", (str(dep.status), style), f": {dep.message}" if dep.message else ""
            )
        )
        for service_name, url in sorted(state.routes.items()):
            out.print(f"  route  {service_name}  {url}")
    return 0 if dep.status == success else 1


# --- commands ---------------------------------------------------------------------------------


@app.callback()
def _root(
    ctx: typer.Context,
    tenant: Annotated[
        str | None, typer.Option("--tenant", help="Tenant to act for (default: MOORAGE_TENANT).")
    ] = None,
    user: Annotated[
        str | None,
        typer.Option("--user", help="User recorded on deployments (default: MOORAGE_USER)."),
    ] = None,
) -> None:
    """Deploy Compose projects on Docker through durable Temporal workflows."""
    overrides = {k: v for k, v in (("tenant", tenant), ("user", user)) if v is not None}
    settings = _load_settings(**overrides)
    if not NAME_RE.match(settings.tenant):
        raise CliError(f"tenant {settings.tenant!r}: 1-40 lowercase letters, digits and dashes")
    ctx.obj = settings


@app.command()
def dev(
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Temporal database, logs and dev API key (default: MOORAGE_DATA_DIR)."),
    ] = None,
    api_port: Annotated[int, typer.Option(help="Port of the HTTP API.", min=1, max=65535)] = 8000,
    temporal_port: Annotated[
        int, typer.Option(help="gRPC port of the Temporal dev server.", min=1, max=65535)
    ] = 7233,
    ui_port: Annotated[
        int, typer.Option(help="Port of the Temporal Web UI.", min=1, max=65535)
    ] = 8233,
) -> None:
    """Run the local stack in the foreground: Temporal dev server, worker and API. Ctrl-C stops it.

    \f
    Raises:
        typer.Exit: with the supervisor's exit status (0 on Ctrl-C/SIGTERM, 1 when a child died).
    """  # noqa: D301 - the form feed ends the --help text (click convention)
    from moorage.dev import DevStack

    ports = {"--api-port": api_port, "--temporal-port": temporal_port, "--ui-port": ui_port}
    for flag, port in ports.items():
        same = [other for other, p in ports.items() if p == port and other != flag]
        if same:
            raise typer.BadParameter(f"{port} is {same[0]}'s too", param_hint=flag)
    stack = DevStack(
        data_dir=data_dir or Settings().data_dir,
        api_port=api_port,
        temporal_port=temporal_port,
        ui_port=ui_port,
    )
    raise typer.Exit(stack.run())


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run a worker (every workflow and the Docker activities) until Ctrl-C or SIGTERM.

    \f
    Raises:
        CliError: Temporal is not reachable.
    """  # noqa: D301 - the form feed ends the --help text (click convention)
    import worker as worker_module

    settings = _settings(ctx)
    try:
        # It shuts the worker down gracefully on SIGINT and SIGTERM, then ends the process.
        worker_module.main(settings)
    except RuntimeError as exc:
        if "connect" not in str(exc):
            raise
        raise CliError(f"Temporal not reachable at {settings.temporal_address}: {exc}") from exc


@app.command()
def api(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Port to listen on (0: any free one).", min=0, max=65535)
    ] = 8000,
) -> None:
    """Serve the HTTP API (api.main:app) with uvicorn until Ctrl-C or SIGTERM."""
    import uvicorn

    uvicorn.run("api.main:app", host=host, port=port)


@app.command()
def images(
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild images that exist already.")
    ] = False,
) -> None:
    """Build the demo images (moorage-demo:v1, …) on the local engine and print their refs.

    \f
    Raises:
        CliError: no Docker engine answers, or busybox is missing.
    """  # noqa: D301 - the form feed ends the --help text (click convention)
    import docker

    from moorage import images as demo

    try:
        client = docker.from_env()
        client.ping()
        built = demo.build_all(client, force=force)
    except docker.errors.DockerException as exc:
        raise CliError(f"Docker engine not reachable: {exc}") from exc
    except FileNotFoundError as exc:
        raise CliError(str(exc)) from exc
    for tag in demo.VARIANTS:
        ref = f"{demo.REPOSITORY}:{tag}"
        out.print(f"{ref}  {'built' if ref in built else 'present'}")


@project_app.command("apply")
def project_apply(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Project id: lowercase letters, digits, dashes.")],
    file: Annotated[Path, typer.Option("-f", "--file", help="Compose file ('-' for stdin).")],
    var: Annotated[
        list[str] | None,
        typer.Option("--var", help="NAME=value for ${NAME} in the Compose file (repeatable)."),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="File of NAME=value lines for ${NAME} (before --var)."),
    ] = None,
) -> None:
    """Create the project (if new) and store its Compose file for the next deployment.

    ${NAME} in the file is substituted from --env-file and --var (never from the environment).

    \f
    Raises:
        CliError: the project id, a variable or the Compose file is refused, or Temporal is not
            reachable.
    """  # noqa: D301 - the form feed ends the --help text (click convention)
    if not NAME_RE.match(name):
        raise CliError(f"project {name!r}: ids are 1-40 lowercase letters, digits and dashes")
    text = _read_compose(file)
    variables = _variables(env_file, var or [])
    settings = _settings(ctx)
    # Refuse a bad file before connecting.
    parse_compose(resolve_compose(text, variables), policy=settings.policy_for(settings.tenant))
    project = _with_service(
        ctx, lambda s, tenant, _user: s.apply_project(tenant, name, text, variables)
    )
    out.print(f"project {project.id}: services {', '.join(project.services)}")


@project_app.command("show")
def project_show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Project id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a project: services, the revision serving now, and its Compose file."""
    project = _with_service(ctx, lambda s, tenant, _user: s.get_project(tenant, name))
    if as_json:
        sys.stdout.write(project.model_dump_json(indent=2) + "\n")
        return
    out.print(Text.assemble("project ", (project.id, "bold"), f"  (tenant {project.tenant_id})"))
    out.print(f"  services  {', '.join(project.services) or '-'}")
    current = (
        f"{project.current_revision} ({project.current_version})"
        if project.current_revision
        else "-"
    )
    out.print(f"  current   revision {current}")
    out.print(f"  active    {project.active_deployment_id or '-'}")
    for service_name, url in sorted(project.routes.items()):
        out.print(f"  route     {service_name}  {url}")
    out.print("compose:")
    out.print(project.compose or "(none)")


@app.command()
def deploy(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Project id.")],
    strategy: Annotated[
        Strategy, typer.Option(help="How the new revision replaces the old.")
    ] = Strategy.RECREATE,
    version: Annotated[
        str | None, typer.Option(help="Label of the new revision (default r<N>).")
    ] = None,
    max_surge: Annotated[
        str | None, typer.Option(help="Rolling update: replicas above desired (N or N%).")
    ] = None,
    max_unavailable: Annotated[
        str | None, typer.Option(help="Rolling update: replicas below desired (N or N%).")
    ] = None,
    health_check_delay: Annotated[
        float | None, typer.Option(help="Seconds before the first check.")
    ] = None,
    health_check_retries: Annotated[
        int | None, typer.Option(help="Checks before giving up.")
    ] = None,
    health_check_interval: Annotated[
        float | None, typer.Option(help="Seconds between checks.")
    ] = None,
    rollback_on_failure: Annotated[
        bool,
        typer.Option("--rollback-on-failure/--no-rollback-on-failure", help="Undo on failure."),
    ] = True,
    blue_green_timeout: Annotated[
        int | None, typer.Option(help="Seconds to wait for promotion.")
    ] = None,
    auto_promote: Annotated[
        bool | None,
        typer.Option(
            "--auto-promote/--manual-promote", help="Blue-green: switch without a promote."
        ),
    ] = None,
    post_switch_verify: Annotated[
        float | None,
        typer.Option(help="Blue-green: seconds green must stay healthy after the switch."),
    ] = None,
    scale_down_delay: Annotated[
        float | None, typer.Option(help="Blue-green: seconds blue is kept after the switch.")
    ] = None,
    canary_steps: Annotated[
        str | None,
        typer.Option(help="Canary steps, e.g. '10,pause:30,50,pause:manual,100' (weights in %)."),
    ] = None,
    progress_deadline: Annotated[
        float | None,
        typer.Option(help="Seconds without progress after which the deployment fails."),
    ] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Repeat-safe key: same key, same deployment.")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow to the end; exit 1 unless completed.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Start a deployment of the project's current Compose file.

    \f
    Raises:
        CliError: an option is invalid, the project unknown or busy, or Temporal not reachable.
        typer.Exit: with status 1 when ``--watch`` sees the deployment end other than completed.
    """  # noqa: D301 - the form feed ends the --help text (click convention)
    options: dict[str, object] = {
        "strategy": strategy,
        "version": version,
        "max_surge": _surge(max_surge, "--max-surge"),
        "max_unavailable": _surge(max_unavailable, "--max-unavailable"),
        "health_check_delay": health_check_delay,
        "health_check_retries": health_check_retries,
        "health_check_interval": health_check_interval,
        "rollback_on_failure": rollback_on_failure,
        "blue_green_timeout": blue_green_timeout,
        "auto_promote": auto_promote,
        "post_switch_verify": post_switch_verify,
        "scale_down_delay": scale_down_delay,
        "canary_steps": _canary_steps(canary_steps),
        "progress_deadline": progress_deadline,
    }
    request = DeployRequest.model_validate({k: v for k, v in options.items() if v is not None})
    check_deploy_request(request)
    check_idempotency_key(idempotency_key)
    dep = _with_service(
        ctx,
        lambda s, tenant, user: s.deploy(
            tenant, user, name, request, idempotency_key=idempotency_key
        ),
    )
    _started(ctx, dep, watch, as_json, DeploymentStatus.COMPLETED)


def _canary_steps(text: str | None) -> list[dict[str, object]] | None:
    """``10,pause:30,50,pause:manual,100`` → canary step objects (validated by the model)."""
    if text is None:
        return None
    result: list[dict[str, object]] = []
    for part in (p.strip() for p in text.split(",")):
        if part.startswith("pause:"):
            value = part.removeprefix("pause:")
            result.append({"pause": value if value == "manual" else _number(value, part)})
        else:
            result.append({"weight": _number(part, part)})
    return result


def _number(value: str, part: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise CliError(
            f"canary_steps: {part!r} is not a weight or pause:<seconds|manual>"
        ) from None


def _surge(value: str | None, flag: str) -> int | str | None:
    """``--max-surge`` / ``--max-unavailable``: an integer, or the text for the model to check.

    Raises:
        CliError: naming ``flag``, for a number int() refuses (``--5``, thousands of digits).
    """
    if value is None:
        return None
    stripped = value.strip()
    if not re.fullmatch(r"-?[0-9]+", stripped):
        if stripped.lstrip("+-").isdigit():  # '--5', '+5', '²': no integer, no percentage
            raise CliError(f"{flag} {value!r}: an integer or a percentage like '25%'")
        return stripped  # 'N%' or a word: the model accepts or refuses it, naming the field
    if len(stripped.lstrip("-").lstrip("0")) > 9:
        raise CliError(f"{flag}: {stripped[:20]}… is too large (at most 9 digits)")
    return int(stripped)


def _started(
    ctx: typer.Context, dep: Deployment, watch: bool, as_json: bool, success: DeploymentStatus
) -> None:
    if watch:
        raise typer.Exit(_watch_and_report(ctx, dep.id, success, as_json))
    if as_json:
        sys.stdout.write(dep.model_dump_json(indent=2) + "\n")
    else:
        out.print(f"{dep.id} {dep.status}")


@app.command()
def status(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id, e.g. shop.3.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the deployment record as JSON.")
    ] = False,
) -> None:
    """Print a deployment's record (status, progress, message) and routes, previews included."""
    state = _with_service(ctx, lambda s, tenant, _user: s.get_state(tenant, deployment_id))
    if as_json:
        sys.stdout.write(state.deployment.model_dump_json(indent=2) + "\n")
    else:
        _print_deployment(state.deployment)
        for service_name, url in sorted(state.routes.items()):
            out.print(f"  route     {service_name}  {url}")


@app.command()
def history(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Project id.")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print {deployments, revisions} as JSON.")
    ] = False,
) -> None:
    """Print a project's deployments (newest first) and the revisions it keeps for rollback."""

    async def body(
        s: DeploymentService, tenant: str, _user: str
    ) -> tuple[list[Deployment], ProjectPublic]:
        return await s.list_deployments(tenant, name), await s.get_project(tenant, name)

    deployments, project = _with_service(ctx, body)
    if as_json:
        _emit_json(
            {
                "deployments": [d.model_dump(mode="json") for d in deployments],
                "revisions": [r.model_dump(mode="json") for r in project.revisions],
            }
        )
        return
    table = Table(title=f"deployments of {name}", box=None, pad_edge=False, title_justify="left")
    for column in ("id", "version", "strategy", "status", "progress", "started", "by", "message"):
        table.add_column(column)
    for d in deployments:
        style = _status_style(d.status)
        table.add_row(
            d.id, d.version, str(d.strategy), Text(str(d.status), style=style), f"{d.progress}%",
            _when(d.started_at), d.user_id, d.message,
        )  # fmt: skip
    out.print(table)
    revisions = Table(title="retained revisions", box=None, pad_edge=False, title_justify="left")
    for column in ("", "revision", "version", "deployment", "status", "created"):
        revisions.add_column(column)
    for r in project.revisions:
        mark = "*" if r.revision == project.current_revision else ""
        revisions.add_row(
            mark, str(r.revision), r.version, r.deployment_id, str(r.status), _when(r.created_at)
        )
    out.print(revisions)


@app.command()
def events(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Print a deployment's event log, oldest first."""
    log = _with_service(ctx, lambda s, tenant, _user: s.events(tenant, deployment_id))
    if as_json:
        _emit_json([e.model_dump(mode="json") for e in log])
    else:
        out.print(_events_table(log))


@app.command()
def instances(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """Print the containers a deployment made."""
    found = _with_service(ctx, lambda s, tenant, _user: s.instances(tenant, deployment_id))
    if as_json:
        _emit_json([i.model_dump(mode="json") for i in found])
    else:
        out.print(_instances_table(found))


@app.command()
def cancel(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id.")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow to the end; exit 1 unless cancelled.")
    ] = False,
) -> None:
    """Cancel a running deployment; it undoes what it did and ends cancelled."""
    dep = _with_service(ctx, lambda s, tenant, user: s.cancel(tenant, user, deployment_id))
    _started(ctx, dep, watch, False, DeploymentStatus.CANCELLED)


@app.command()
def rollback(
    ctx: typer.Context,
    deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id.")],
    to: Annotated[
        int | None, typer.Option("--to", help="Revision to bring back (default: previous).")
    ] = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow to the end; exit 1 unless completed.")
    ] = False,
) -> None:
    """Start a deployment that brings back the previous (or the given) successful revision."""
    dep = _with_service(ctx, lambda s, tenant, user: s.rollback(tenant, user, deployment_id, to))
    _started(ctx, dep, watch, False, DeploymentStatus.COMPLETED)


def _steer_command(action: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        deployment_id: Annotated[str, typer.Argument(metavar="ID", help="Deployment id.")],
    ) -> None:
        result = _with_service(
            ctx, lambda s, tenant, user: s.steer(tenant, user, deployment_id, action)
        )
        out.print(f"{deployment_id} {result}")

    command.__doc__ = doc
    app.command(name=action)(command)


_steer_command("promote", "Blue-green: switch to green now. Canary: skip the remaining steps.")
_steer_command("pause", "Canary: hold before the next step.")
_steer_command("resume", "Canary: go on with the steps (ends a pause step too).")
_steer_command("abort", "Canary: traffic back to stable, canary removed, status rolled_back.")


@app.command()
def reconcile(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Project id (omit with --all).")] = None,
    all_projects: Annotated[
        bool, typer.Option("--all", help="Every project of every tenant (what the schedule runs).")
    ] = False,
) -> None:
    """Remove labelled containers no deployment owns; prints one line per container removed.

    With --all, the containers of unknown projects are removed here; every project that exists
    is asked to reconcile itself, on its own (its reconcile log says what it removed). Exit 1
    when a project's containers could not be removed.
    """
    if all_projects == (name is not None):
        raise CliError("give a project NAME or --all")
    if all_projects:
        events = _with_service(ctx, lambda s, _tenant, _user: s.reconcile_all())
    else:
        events = _with_service(ctx, lambda s, tenant, user: s.reconcile(tenant, user, name or ""))
    for e in events:
        out.print(e.message)
    removed = sum(e.event_type == EventType.ORPHAN_REMOVED for e in events)
    if all_projects:
        out.print(
            f"{removed} container(s) of unknown projects removed; the projects that exist "
            "reconcile themselves (see their reconcile log)"
        )
    else:
        out.print(f"{removed} orphan container(s) removed")
    if any(e.event_type == EventType.RECONCILE_FAILED for e in events):
        raise typer.Exit(1)


# --- entry point ------------------------------------------------------------------------------


def _fail(message: str, code: int = EXIT_REFUSED) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


# typer >= 0.2x vendors click and raises its own exceptions; older typer raises click's.
_CLICK_ERRORS: tuple[type[Exception], ...] = tuple(
    {getattr(typer, "TyperException", click.ClickException), click.ClickException}
)


def _usage_error(exc: Exception) -> int:
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    code = getattr(exc, "exit_code", EXIT_REFUSED)
    if not message.strip() or "\n" in message.strip():
        # No arguments at all: the "error" is the help text (rich help has printed it already).
        if message.strip():
            print(message, file=sys.stderr)
        return int(code)
    ctx = getattr(exc, "ctx", None)
    hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    return _fail(message + hint, int(code))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit status (no ``os._exit``; for tests and embedding)."""
    try:
        result = app(args=argv, prog_name="moorage", standalone_mode=False)
    except SystemExit as exc:  # uvicorn and friends exit this way
        return (
            exc.code
            if isinstance(exc.code, int)
            else (0 if exc.code is None else _fail(str(exc.code), 1))
        )
    except _CLICK_ERRORS as exc:
        return _usage_error(exc)
    except (typer.Abort, click.Abort):
        return _fail("aborted", 130)
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        return _fail(exc.message, exc.code)
    except UnavailableError as exc:  # a step failed: not the command's fault
        return _fail(exc.message, 1)
    except MoorageError as exc:
        return _fail(exc.message)
    except ValidationError as exc:
        return _fail(_validation_message(exc))
    except ComposeError as exc:
        return _fail(f"compose file refused: {exc}")
    except RPCError as exc:
        return _fail(f"Temporal: {exc.message}")
    except Exception as exc:  # one line, never a traceback (MOORAGE_DEBUG=1 shows it)
        if os.environ.get("MOORAGE_DEBUG"):
            traceback.print_exc()
        return _fail(f"{type(exc).__name__}: {exc}", 1)
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``moorage`` console script: run, flush, and leave with ``os._exit``.

    A process that used a Temporal client can abort at interpreter exit (PyGILState_Release),
    so nothing is left to the interpreter's shutdown.
    """
    code = run(argv)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
