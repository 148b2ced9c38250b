"""Blue-green and canary under load through HAProxy (the default router), real engine, Temporal."""

from __future__ import annotations

import asyncio
import functools
import urllib.request
from datetime import timedelta

import docker
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError

from activities.router import TrafficRouter
from moorage import naming
from moorage.compose import parse_compose
from moorage.models import (
    CanaryStep,
    Deployment,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    Strategy,
)
from moorage.service import ConflictError, DeploymentService, InvalidError
from tests.conftest import TASK_QUEUE
from tests.helpers import (
    TENANT,
    USER,
    deploy_to_end,
    labelled,
    routed,
    tcp_echo,
    wait_status,
    wait_terminal,
    wait_until,
)
from tests.load import Load, TcpLoad
from workflows.inputs import SteerInput, StrategyInput

pytestmark = pytest.mark.integration


def web(image: str, replicas: int = 2, env: dict[str, str] | None = None) -> str:
    text = f"services:\n  web:\n    image: {image}\n    ports: ['80']\n"
    text += f"    deploy:\n      replicas: {replicas}\n    stop_grace_period: 5s\n"
    if env:
        text += "    environment:\n" + "".join(f"      {k}: '{v}'\n" for k, v in env.items())
    return text


async def serve_v1(service: DeploymentService, project: str, text: str | None = None) -> str:
    """``text`` (default: :func:`web` of v1) served by a rolling update; ``web``'s URL."""
    await service.apply_project(TENANT, project, text or web("moorage-demo:v1"))
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v1")
    )
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    return (await service.get_project(TENANT, project)).routes["web"]


async def blue_then_failing_green(
    service: DeploymentService, client: docker.DockerClient, project: str, after: int
) -> tuple[str, set[str]]:
    """v1 serving (blue), and v2 applied, whose replicas fail ``after`` seconds after their start;
    the route's URL and blue's replicas."""
    url = await serve_v1(service, project)
    blue = {c.name for c in labelled(client, project)}
    await service.apply_project(
        TENANT, project, web("moorage-demo:v2", env={"DEMO_FAIL_AFTER": str(after)})
    )
    return url, blue


def assert_only_blue(
    client: docker.DockerClient, router: TrafficRouter, project: str, blue: set[str]
) -> None:
    """Blue's replicas are the project's only containers, and all its route sends to."""
    assert {c.name for c in labelled(client, project)} == blue
    assert routed(router, project) == blue


BG = DeployRequest(
    strategy=Strategy.BLUE_GREEN, version="v2", health_check_retries=20, post_switch_verify=1
)


async def test_blue_green_auto_promotion_drops_nothing(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    with Load(url, connections=6, keepalive=True) as load:
        dep = await service.deploy(TENANT, USER, project, BG)
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["v1"] > 0
    assert load.last_versions(30) == {"v2"}
    # Its log says what it started, stopped and removed (blue's stop and removal were progress
    # messages only, each overwritten by the next).
    said = [(e.event_type, e.message) for e in state.events]
    assert (EventType.SERVICE_STARTED, "started green web replicas [0, 1] (revision 2)") in said
    assert (EventType.SERVICE_STOPPED, "stopped blue web (revision 1)") in said
    assert (EventType.SERVICE_REMOVED, "removed 2 blue containers (revision 1)") in said
    types = [e.event_type for e in state.events]
    assert types.index(EventType.GREEN_DEPLOYMENT_STARTED) < types.index(EventType.TRAFFIC_SWITCHED)
    assert {c.labels["moorage.revision"] for c in labelled(docker_client, project)} == {
        str(dep.revision)
    }
    assert routed(router, project) == {c.name for c in labelled(docker_client, project)}


async def test_blue_green_manual_promote_with_preview(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    with Load(url, connections=6, keepalive=True) as load:
        dep = await service.deploy(
            TENANT, USER, project, BG.model_copy(update={"auto_promote": False})
        )
        waiting = await wait_status(
            service, dep.id, lambda s: "waiting for promotion" in s.deployment.message
        )
        preview = waiting.routes["web:preview"]
        with urllib.request.urlopen(preview + "version", timeout=5) as resp:  # noqa: ASYNC210
            assert resp.read().decode().strip() == "v2"
        assert load.last_versions(20) == {"v1"}  # green is not serving yet
        await service.steer(TENANT, "carol", dep.id, "promote")
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.last_versions(30) == {"v2"}
    assert any(e.event_type == EventType.PROMOTED and "carol" in e.message for e in state.events)
    # Promoting what is done is refused, and changes nothing.
    with pytest.raises(ConflictError, match="completed"):
        await service.steer(TENANT, USER, dep.id, "promote")
    assert (await service.get_deployment(TENANT, dep.id)).status == DeploymentStatus.COMPLETED


@pytest.mark.parametrize("rollback_on_failure", [True, False])
async def test_blue_green_timeout_without_promote_leaves_blue(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    rollback_on_failure: bool,
) -> None:
    """Green goes even with ``rollback_on_failure`` off: nobody promoted it, nothing failed (it
    used to stay running then, while the event said "green removed")."""
    await serve_v1(service, project)
    blue = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        BG.model_copy(
            update={
                "auto_promote": False,
                "blue_green_timeout": 2,
                "rollback_on_failure": rollback_on_failure,
            }
        ),
    )
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK
    assert "blue_green_timeout" in state.deployment.message
    assert any("not promoted within blue_green_timeout" in e.message for e in state.events)
    assert_only_blue(docker_client, router, project, blue)
    # The preview it dropped is no longer listed (it was, answering 503).
    assert set(state.routes) == {"web"}
    assert set((await service.get_project(TENANT, project)).routes) == {"web"}


async def test_blue_green_failing_health_after_switch_goes_back_to_blue(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    # Green turns unhealthy a few seconds after it starts: after the switch.
    url, blue = await blue_then_failing_green(service, docker_client, project, after=4)
    with Load(url, connections=4, keepalive=True) as load:
        dep = await service.deploy(
            TENANT, USER, project, BG.model_copy(update={"post_switch_verify": 15})
        )
        state = await wait_terminal(service, dep.id, timeout=90)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    types = [e.event_type for e in state.events]
    assert EventType.TRAFFIC_SWITCHED in types
    assert types.index(EventType.TRAFFIC_SWITCHED) < types.index(EventType.DEPLOYMENT_FAILED)
    assert load.last_versions(20) == {"v1"}
    assert_only_blue(docker_client, router, project, blue)


async def test_a_probe_failing_after_the_switch_sends_traffic_back_without_waiting_the_window(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """With an x-moorage probe, a failed check only restarted a replica's "ready since" clock:
    the verify failed at the end of its window (here 20 x 1 s + 30 s), with traffic on the
    broken green all along. Now three failed checks in a row fail it."""
    probe = "    x-moorage:\n      probe: {type: http, port: 80, path: /, interval: 200ms}\n"
    await service.apply_project(TENANT, project, web("moorage-demo:v1") + probe)
    first = await service.deploy(TENANT, USER, project, BG.model_copy(update={"version": "v1"}))
    assert (await wait_terminal(service, first.id)).deployment.status == (
        DeploymentStatus.COMPLETED
    )
    blue = {c.name for c in labelled(docker_client, project)}
    # Green's "/" answers 404 four seconds after it starts: after the switch.
    failing = web("moorage-demo:v2", env={"DEMO_FAIL_AFTER": "4"}) + probe
    await service.apply_project(TENANT, project, failing)
    dep = await service.deploy(
        TENANT, USER, project, BG.model_copy(update={"post_switch_verify": 30})
    )
    state = await wait_terminal(service, dep.id, timeout=90)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    at = {e.event_type: e.created_at for e in state.events}
    assert (at[EventType.DEPLOYMENT_FAILED] - at[EventType.TRAFFIC_SWITCHED]).total_seconds() < 10
    assert "checks in a row" in state.deployment.message
    assert_only_blue(docker_client, router, project, blue)


async def test_green_that_fails_while_waiting_for_promotion_never_takes_traffic(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """Green's gate passed before the wait; the promote came after a replica turned unhealthy:
    it was switched to unchecked, then taken back after the verify."""
    url, blue = await blue_then_failing_green(service, docker_client, project, after=3)
    with Load(url, connections=4, keepalive=True) as load:
        dep = await service.deploy(
            TENANT, USER, project, BG.model_copy(update={"auto_promote": False})
        )
        await wait_status(
            service, dep.id, lambda s: "waiting for promotion" in s.deployment.message
        )

        def green_unhealthy() -> bool:
            green = labelled(docker_client, project, revision=str(dep.revision))
            return bool(green) and all(
                c.attrs["State"].get("Health", {}).get("Status") == "unhealthy" for c in green
            )

        await asyncio.to_thread(wait_until, green_unhealthy, 30, "green unhealthy")
        await service.steer(TENANT, "carol", dep.id, "promote")
        state = await wait_terminal(service, dep.id, timeout=90)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    types = [e.event_type for e in state.events]
    assert EventType.PROMOTED in types
    assert EventType.TRAFFIC_SWITCHED not in types
    assert "unhealthy" in state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.last_versions(20) == {"v1"}
    assert_only_blue(docker_client, router, project, blue)


CANARY = DeployRequest(strategy=Strategy.CANARY, version="v2", health_check_retries=20)


@pytest.mark.parametrize("mode", ["http", "tcp"])
async def test_canary_through_all_steps_drops_nothing(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    mode: str,
) -> None:
    """Also on a TCP route (``x-moorage: {route: tcp}``): the weights share connections."""
    text = web if mode == "http" else functools.partial(tcp_echo, replicas=2)
    url = await serve_v1(service, project, text("moorage-demo:v1"))
    await service.apply_project(TENANT, project, text("moorage-demo:v2"))
    steps = [
        CanaryStep(weight=10),
        CanaryStep(pause=1),
        CanaryStep(weight=50),
        CanaryStep(pause=1),
        CanaryStep(weight=100),
    ]
    load = Load(url, connections=6) if mode == "http" else TcpLoad(url, connections=6)
    with load:
        dep = await service.deploy(
            TENANT, USER, project, CANARY.model_copy(update={"canary_steps": steps})
        )
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.last_versions(30) == {"v2"}
    weights = [
        e.details.get("weight") for e in state.events if e.event_type == EventType.TRAFFIC_SWITCHED
    ]
    assert weights == [10, 50, 100, 100]
    assert routed(router, project) == {c.name for c in labelled(docker_client, project)}


async def test_canary_ten_percent_share_then_promote(
    service: DeploymentService, project: str
) -> None:
    url = await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    steps = [
        CanaryStep(weight=10),
        CanaryStep(pause="manual"),
        CanaryStep(weight=50),
        CanaryStep(weight=100),
    ]
    dep = await service.deploy(
        TENANT, USER, project, CANARY.model_copy(update={"canary_steps": steps})
    )
    await wait_status(service, dep.id, lambda s: "paused until resumed" in s.deployment.message)
    # A hold lasts until the operator ends it: the server used to end the strategy's workflow
    # after 7 days, without its undo (the canary stayed routed).
    strategy = service.client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
    config = (await strategy.describe()).raw_description.execution_config
    assert config.workflow_execution_timeout.ToTimedelta() == timedelta(0)
    with Load(url, connections=4, keepalive=False, pause_s=0.002) as load:
        while load.result.ok < 1500:  # noqa: ASYNC110 - polling a thread-fed counter
            await asyncio.sleep(0.2)
    share = load.result.versions["v2"] / load.result.ok
    assert 0.05 <= share <= 0.15, (share, load.result.versions)
    assert load.result.failed == 0
    await service.steer(TENANT, USER, dep.id, "pause")
    with pytest.raises(ConflictError, match="already paused"):
        await service.steer(TENANT, USER, dep.id, "pause")
    await service.steer(TENANT, USER, dep.id, "promote")
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    weights = [
        e.details.get("weight") for e in state.events if e.event_type == EventType.TRAFFIC_SWITCHED
    ]
    assert weights == [10, 100]  # promote skipped the 50% step


@pytest.mark.parametrize(
    ("request_", "held_at", "action"),
    [
        (
            CANARY.model_copy(
                update={
                    "canary_steps": [
                        CanaryStep(weight=50),
                        CanaryStep(pause="manual"),
                        CanaryStep(weight=100),
                    ]
                }
            ),
            "paused until resumed",
            "resume",
        ),
        (BG.model_copy(update={"auto_promote": False}), "waiting for promotion", "promote"),
    ],
    ids=["canary-paused", "blue-green-waiting-for-promotion"],
)
async def test_a_hold_longer_than_the_progress_deadline_goes_on_when_released(
    service: DeploymentService,
    project: str,
    request_: DeployRequest,
    held_at: str,
    action: str,
) -> None:
    """A pause or a wait for promotion is a hold, not a stall: the progress deadline (8 s) does
    not count it."""
    await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    dep = await service.deploy(
        TENANT, USER, project, request_.model_copy(update={"progress_deadline": 8})
    )
    await wait_status(service, dep.id, lambda s: held_at in s.deployment.message)
    await asyncio.sleep(10)
    held = (await service.get_state(TENANT, dep.id)).deployment
    assert held.status == DeploymentStatus.IN_PROGRESS, held.message
    await service.steer(TENANT, USER, dep.id, action)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message


@pytest.mark.parametrize("rollback_on_failure", [True, False])
async def test_canary_abort_at_fifty_percent(
    service: DeploymentService,
    temporal_client: Client,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
    rollback_on_failure: bool,
) -> None:
    """An abort undoes the canary even with ``rollback_on_failure`` off (it used to end
    ``failed``, the canary left routed at 50%, while the abort answered "traffic back to
    stable"); steering after it is refused, not answered and ignored."""
    url = await serve_v1(service, project)
    stable = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    steps = [CanaryStep(weight=50), CanaryStep(pause="manual"), CanaryStep(weight=100)]
    request = CANARY.model_copy(
        update={"canary_steps": steps, "rollback_on_failure": rollback_on_failure}
    )
    with Load(url, connections=6, keepalive=True) as load:
        dep = await service.deploy(TENANT, USER, project, request)
        await wait_status(service, dep.id, lambda s: "paused until resumed" in s.deployment.message)
        await asyncio.sleep(1)
        await service.steer(TENANT, "dave", dep.id, "abort")
        # Straight to the workflow (the API refuses once the status reads rolling_back): the
        # validator refuses while the undo runs (a second or more), where it used to accept the
        # promote, answer "promoted", record it, and ignore it.
        handle = temporal_client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update("promote", SteerInput(user_id=USER))
        assert "aborted by dave" in str(refused.value.cause)
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert "aborted by dave" in state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.result.versions["v2"] > 0
    assert load.last_versions(30) == {"v1"}
    assert {c.name for c in labelled(docker_client, project)} == stable
    assert routed(router, project) == stable
    assert EventType.PROMOTED not in [e.event_type for e in state.events]
    with pytest.raises(ConflictError):
        await service.steer(TENANT, USER, dep.id, "resume")


async def test_a_cancel_after_an_abort_is_refused_and_the_deployment_ends_rolled_back(
    service: DeploymentService,
    temporal_client: Client,
    docker_client: docker.DockerClient,
    project: str,
) -> None:
    """An abort that lands in a step (here a step's health gate, waiting on a canary whose
    probe fails) leaves the deployment in_progress until the step stops; a cancel then was
    answered 202, and the deployment ended ``cancelled``, not ``rolled_back`` as the abort said."""
    await serve_v1(service, project)
    stable = {c.name for c in labelled(docker_client, project)}
    probe = "    x-moorage:\n      probe: {type: http, port: 80, path: /, interval: 200ms}\n"
    v2 = web("moorage-demo:v2", env={"DEMO_FAIL_AFTER": "8"}) + probe
    await service.apply_project(TENANT, project, v2)
    steps = [CanaryStep(weight=50), CanaryStep(pause="8"), CanaryStep(weight=100)]
    request = CANARY.model_copy(update={"canary_steps": steps, "health_check_retries": 300})
    dep = await service.deploy(TENANT, USER, project, request)
    await wait_status(service, dep.id, lambda s: "paused 8s" in s.deployment.message)
    # The last step's gate, past its first 2 s (a local activity): an ordinary activity.
    handle = temporal_client.get_workflow_handle(naming.deployment_workflow_id(TENANT, dep.id))
    deadline = asyncio.get_running_loop().time() + 60
    while not any(
        a.activity_type.name == "wait_healthy"
        for a in (await handle.describe()).raw_description.pending_activities
    ):
        assert asyncio.get_running_loop().time() < deadline, "no health wait in 60 s"
        await asyncio.sleep(0.2)
    held = (await service.get_state(TENANT, dep.id)).deployment
    assert held.status == DeploymentStatus.IN_PROGRESS, held.message
    await service.steer(TENANT, "dave", dep.id, "abort")
    with pytest.raises(ConflictError, match="was aborted"):
        await service.cancel(TENANT, USER, dep.id)
    # Straight to the workflow, past the API's check: ignored.
    await handle.signal("cancel", USER)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert "aborted by dave" in state.deployment.message
    assert EventType.CANCEL_REQUESTED not in [e.event_type for e in state.events]
    assert {c.name for c in labelled(docker_client, project)} == stable
    started = [e for e in state.events if e.event_type == EventType.SERVICE_STARTED]
    assert [e.message for e in started] == ["started canary web replicas [0, 1] (revision 2)"]


async def test_a_canary_paused_during_its_last_step_holds_before_the_full_shift(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """The last step is a timed pause; a pause asked for during it used to be answered
    "paused", then ignored: the canary took all traffic and stable was retired."""
    await serve_v1(service, project)
    stable = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    steps = [CanaryStep(weight=50), CanaryStep(pause="2")]
    dep = await service.deploy(
        TENANT, USER, project, CANARY.model_copy(update={"canary_steps": steps})
    )
    await wait_status(service, dep.id, lambda s: "paused 2s" in s.deployment.message)
    await service.steer(TENANT, "erin", dep.id, "pause")
    await wait_status(service, dep.id, lambda s: "paused by erin" in s.deployment.message)
    await asyncio.sleep(3)  # past the timed pause
    state = await service.get_state(TENANT, dep.id)
    assert state.deployment.status == DeploymentStatus.IN_PROGRESS, state.deployment.message
    assert stable <= {c.name for c in labelled(docker_client, project)}  # stable still there
    await service.steer(TENANT, "erin", dep.id, "resume")
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert not stable & {c.name for c in labelled(docker_client, project)}


async def test_a_first_canary_serves_from_its_start_and_says_it_takes_all_traffic(
    service: DeploymentService, project: str
) -> None:
    """No stable replicas: routed at weight 0, the canary left its route with no server to send
    to (503) until the first weight step, here through a first pause; and "canary weight 10%"
    hid that it took every request."""
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    steps = [CanaryStep(pause="manual"), CanaryStep(weight=10)]
    dep = await service.deploy(
        TENANT,
        USER,
        project,
        CANARY.model_copy(update={"canary_steps": steps, "version": "v1"}),
    )
    paused = await wait_status(service, dep.id, lambda s: "paused" in s.deployment.message)
    url = paused.routes["web"]
    with Load(url, connections=2, keepalive=True) as load:
        await asyncio.sleep(1)
        await service.steer(TENANT, "erin", dep.id, "resume")
        state = await wait_terminal(service, dep.id)
        await asyncio.sleep(0.3)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert load.result.failed == 0, load.result.errors
    assert load.result.ok > 0
    [ten] = [e for e in state.events if e.event_type == EventType.TRAFFIC_SWITCHED][:1]
    assert ten.message == (
        "step 2/2: canary weight 10% (web: no stable replicas, all traffic on the canary)"
    )


async def test_a_cancel_that_comes_with_the_start_is_honoured(
    temporal_client: Client, worker: None, docker_client: docker.DockerClient, project: str
) -> None:
    """A cancel signal delivered with the strategy workflow's start (signal-with-start: as when
    the project forwards an operator's cancel before the new workflow ran its first task) is
    handled before the run method; it used to be dropped, and the deployment completed."""
    dep = Deployment(
        id=f"{project}.1",
        project_id=project,
        version="v1",
        revision=1,
        strategy=Strategy.ROLLING_UPDATE,
        user_id=USER,
        tenant_id=TENANT,
    )
    handle = await temporal_client.start_workflow(
        "RollingUpdate",
        StrategyInput(deployment=dep, target=parse_compose(web("moorage-demo:v1"))),
        id=f"test-cancel-with-start-{project}",
        task_queue=TASK_QUEUE,
        start_signal="cancel",
        start_signal_args=["frank"],
        result_type=DeploymentState,
    )
    state = await handle.result()
    assert state.deployment.status == DeploymentStatus.CANCELLED, state.deployment.message
    kinds = [e.event_type for e in state.events]
    assert EventType.CANCEL_REQUESTED in kinds
    assert EventType.SERVICE_UPDATING not in kinds
    assert labelled(docker_client, project) == []


async def test_canary_of_a_project_with_a_service_off_the_router_rolls_back(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """The undo "all traffic back to stable" is pushed for every service; for one without a
    route (x-moorage route false) it changes nothing, and the rollback goes on to the end."""

    def with_side(image: str) -> str:
        side = f"  side:\n    image: {image}\n    ports: ['80']\n    x-moorage: {{route: false}}\n"
        return web(image) + side

    await service.apply_project(TENANT, project, with_side("moorage-demo:v1"))
    first = await service.deploy(
        TENANT, USER, project, DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v1")
    )
    assert (await wait_terminal(service, first.id)).deployment.status == DeploymentStatus.COMPLETED
    stable = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, with_side("moorage-demo:v2"))
    steps = [CanaryStep(weight=50), CanaryStep(pause="manual"), CanaryStep(weight=100)]
    dep = await service.deploy(
        TENANT, USER, project, CANARY.model_copy(update={"canary_steps": steps})
    )
    await wait_status(service, dep.id, lambda s: "paused until resumed" in s.deployment.message)
    await service.steer(TENANT, USER, dep.id, "abort")
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    assert {c.name for c in labelled(docker_client, project)} == stable
    assert routed(router, project) == {n for n in stable if "-web-" in n}
    assert set((await service.get_project(TENANT, project)).routes) == {"web"}


async def test_blue_green_starts_a_dependent_once_its_dependency_is_healthy(
    service: DeploymentService, project: str
) -> None:
    """README: a service others depend on is healthy before they start. Blue-green started the
    whole green stack at once: a dependent that needs its dependency at start failed."""
    slow_api = '["sh", "-c", "sleep 2; exec /init.sh"]'
    needs_api = '["sh", "-c", "wget -q -O /dev/null http://api/ || exit 1; exec /init.sh"]'
    compose = (
        f"services:\n  api:\n    image: moorage-demo:v1\n    command: {slow_api}\n"
        f"  web:\n    image: moorage-demo:v1\n    ports: ['80']\n    command: {needs_api}\n"
        "    depends_on: [api]\n"
    )
    await service.apply_project(TENANT, project, compose)
    dep = await service.deploy(TENANT, USER, project, BG.model_copy(update={"version": "v1"}))
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    passed = [e.service_name for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    assert passed[:2] == ["api", "web"]


async def test_a_verify_longer_than_the_progress_deadline_is_a_hold_not_a_stall(
    service: DeploymentService, project: str
) -> None:
    """``post_switch_verify`` is a wait the operator asked for, as a scale-down delay: the
    progress deadline used to count it, and a verify longer than it failed every deployment."""
    await service.apply_project(TENANT, project, web("moorage-demo:v1", replicas=1))
    request = BG.model_copy(update={"post_switch_verify": 4, "progress_deadline": 2.5})
    dep = await service.deploy(TENANT, USER, project, request)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    [switched] = [e for e in state.events if e.event_type == EventType.TRAFFIC_SWITCHED]
    [done] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_COMPLETED]
    assert (done.created_at - switched.created_at).total_seconds() >= 4  # it did verify


async def test_a_canary_step_s_gate_does_not_wait_the_health_delay_again(
    service: DeploymentService, project: str
) -> None:
    """The canary's replicas passed their gate when they started; each step checks them once
    more, and used to wait ``health_check_delay`` (and ``min_ready_seconds``) again first."""
    await serve_v1(service, project)
    await service.apply_project(TENANT, project, web("moorage-demo:v2", replicas=1))
    steps = [CanaryStep(weight=50), CanaryStep(weight=100)]
    request = CANARY.model_copy(update={"canary_steps": steps, "health_check_delay": 3})
    dep = await service.deploy(TENANT, USER, project, request)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    gates = [e for e in state.events if e.event_type == EventType.HEALTH_CHECK_PASSED]
    switches = [e for e in state.events if e.event_type == EventType.TRAFFIC_SWITCHED]
    assert len(gates) == 4  # at the start, before each step, before the full shift
    assert [e.details["weight"] for e in switches] == [50, 100, 100]
    # Three more delays would be 9 s; the checks themselves take milliseconds.
    assert (switches[-1].created_at - gates[0].created_at).total_seconds() < 3


async def test_a_canary_over_what_a_failed_blue_green_left_is_refused_and_changes_nothing(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """A blue-green that failed after its switch with ``rollback_on_failure`` off leaves green
    on the route and blue (the serving revision) off it. A canary's weight steps named blue's
    replicas there and failed, and so did its undo: the canary's replicas stayed, routed. Now it
    is refused at its first step, which changes nothing; the rollback it names, then the canary,
    work."""
    _, blue = await blue_then_failing_green(service, docker_client, project, after=4)
    keep = {"post_switch_verify": 15, "rollback_on_failure": False}
    failed = await service.deploy(TENANT, USER, project, BG.model_copy(update=keep))
    state = await wait_terminal(service, failed.id, timeout=90)
    assert state.deployment.status == DeploymentStatus.FAILED, state.deployment.message
    green = routed(router, project)
    assert green
    assert not green & blue
    left = {c.name for c in labelled(docker_client, project)}
    assert left == blue | green

    await service.apply_project(TENANT, project, web("moorage-demo:v2"))
    request = CANARY.model_copy(update={"version": "v3", "canary_steps": [CanaryStep(weight=50)]})
    dep = await service.deploy(TENANT, USER, project, request)
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.ROLLED_BACK, state.deployment.message
    [event] = [e for e in state.events if e.event_type == EventType.DEPLOYMENT_FAILED]
    assert "replicas " + ", ".join(sorted(blue)) + " are not on its route" in event.message
    assert "moorage rollback ID" in event.message
    assert (event.service_name, event.details["routed"]) == ("web", sorted(green))
    assert EventType.SERVICE_STARTING not in [e.event_type for e in state.events]
    assert {c.name for c in labelled(docker_client, project)} == left
    assert routed(router, project) == green

    back = await service.rollback(TENANT, USER, failed.id)
    assert (await wait_terminal(service, back.id)).deployment.status == (DeploymentStatus.COMPLETED)
    await deploy_to_end(service, project, web("moorage-demo:v2"), request)


async def test_a_blue_green_or_canary_that_changes_a_route_s_mode_is_refused(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """Both serve two revisions on one route while the route takes the new revision's mode at
    the first step: a serving revision that speaks TCP only would be answered as HTTP. Refused
    when asked (422 naming ``strategy``); a rolling update takes it."""
    await serve_v1(service, project)
    serving = {c.name for c in labelled(docker_client, project)}
    await service.apply_project(TENANT, project, tcp_echo("moorage-demo:v2", 2))
    for strategy in (Strategy.BLUE_GREEN, Strategy.CANARY):
        with pytest.raises(InvalidError) as refused:
            await service.deploy(TENANT, USER, project, DeployRequest(strategy=strategy))
        assert "(web http → tcp; x-moorage.route)" in refused.value.message
        assert refused.value.field == ["body", "strategy"]
    assert len(await service.list_deployments(TENANT, project)) == 1
    assert {c.name for c in labelled(docker_client, project)} == serving
    rolling = DeployRequest(strategy=Strategy.ROLLING_UPDATE)
    await deploy_to_end(service, project, tcp_echo("moorage-demo:v2", 2), rolling)
    assert (await service.get_project(TENANT, project)).routes["web"].startswith("tcp://")
