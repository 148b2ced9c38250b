"""Rollback to any retained revision, idempotent requests, concurrent deploys, bad-after-bad."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import docker
import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.router import TrafficRouter
from moorage import naming
from moorage.models import (
    Deployment,
    DeploymentEvent,
    DeploymentState,
    DeploymentStatus,
    DeployRequest,
    EventType,
    Strategy,
)
from moorage.service import ConflictError, DeploymentService, InvalidError
from tests.helpers import (
    TENANT,
    USER,
    compose,
    labelled,
    routed,
    serving_version,
    wait_status,
    wait_terminal,
)
from workflows.inputs import DeployInput, ProjectState
from workflows.project import STATE_BUDGET_BYTES, json_bytes

pytestmark = pytest.mark.integration


def web(image: str) -> str:
    return compose(image, api_image=None)


async def ship(
    service: DeploymentService, project: str, image: str, version: str, **cfg: object
) -> str:
    await service.apply_project(TENANT, project, web(image))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version=version, **cfg))
    state = await wait_terminal(service, dep.id)
    return state.deployment.status.value


async def test_rollback_to_any_retained_revision(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    assert await ship(service, project, "moorage-demo:v1", "v1") == "completed"
    assert await ship(service, project, "moorage-demo:v2", "v2") == "completed"
    assert await ship(service, project, "moorage-demo:v3", "v3") == "completed"
    proj = await service.get_project(TENANT, project)
    assert [r.version for r in proj.revisions] == ["v1", "v2", "v3"]
    serving = proj.current_revision
    assert serving is not None
    deps = await service.list_deployments(TENANT, project)
    latest = deps[0].id

    # Rolling back to what serves already is refused, and so is a revision that is not retained.
    with pytest.raises(ConflictError, match="already serving"):
        await service.rollback(TENANT, USER, latest, to_revision=serving)
    with pytest.raises(InvalidError, match="not a retained"):
        await service.rollback(TENANT, USER, latest, to_revision=99)

    rb = await service.rollback(TENANT, "bob", latest, to_revision=1)
    assert rb.rollback_version == "v1"
    assert rb.id != latest
    state = await wait_terminal(service, rb.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert state.events[0].details["user"] == "bob"
    assert serving_version(docker_client, project, "web") == {"v1"}
    # The default target is the revision before the serving one.
    proj = await service.get_project(TENANT, project)
    assert proj.current_version == "v1"
    # Without a revision, an older deployment than the serving one is refused: the default
    # target is the revision before the serving one.
    with pytest.raises(ConflictError, match=f"deployment {latest} is older than the serving"):
        await service.rollback(TENANT, USER, latest)
    rb2 = await service.rollback(TENANT, USER, rb.id)
    assert rb2.rollback_version == "v3"  # retained revisions before the serving (v1 as rev 4): v3
    assert (await wait_terminal(service, rb2.id)).deployment.status == DeploymentStatus.COMPLETED
    assert serving_version(docker_client, project, "web") == {"v3"}

    # A later deployment that failed and was left as it failed (v3's replicas stopped by the
    # recreate, the new one never healthy): its rollback brings the serving revision back over
    # what it left. It used to take the revision before the serving one instead.
    await service.apply_project(TENANT, project, web("moorage-demo:unhealthy"))
    failed = await service.deploy(
        TENANT,
        USER,
        project,
        DeployRequest(version="v4", rollback_on_failure=False, health_check_retries=2),
    )
    state = await wait_terminal(service, failed.id)
    assert state.deployment.status == DeploymentStatus.FAILED, state.deployment.message
    rb3 = await service.rollback(TENANT, USER, failed.id)
    assert rb3.rollback_version == "v3"
    assert (await wait_terminal(service, rb3.id)).deployment.status == DeploymentStatus.COMPLETED
    # What the failed one left is no deployment's now: the project removes it once the rollback
    # has completed (it used to wait for the next scheduled reconciliation).
    log = await wait_reconciled(service, project)
    assert {e.details["revision"] for e in log} == {failed.revision}
    assert {e.details["by"] for e in log} == {f"deployment {rb3.id}"}
    assert await service.reconcile(TENANT, USER, project) == []
    assert serving_version(docker_client, project, "web") == {"v3"}
    assert {c.labels["moorage.revision"] for c in labelled(docker_client, project)} == {
        str(rb3.revision)
    }


async def wait_reconciled(service: DeploymentService, project: str) -> list[DeploymentEvent]:
    """The project's reconcile log, once it has an entry."""
    handle = service.client.get_workflow_handle(naming.project_workflow_id(TENANT, project))
    for _ in range(100):
        log: list[DeploymentEvent] = await handle.query(
            "reconcile_log", result_type=list[DeploymentEvent]
        )
        if log:
            return log
        await asyncio.sleep(0.1)
    raise AssertionError("nothing reconciled")


async def test_what_a_failed_deployment_left_stays_until_a_later_one_completes(
    service: DeploymentService,
    docker_client: docker.DockerClient,
    router: TrafficRouter,
    project: str,
) -> None:
    """With ``rollback_on_failure`` off a deployment is left as it failed, for the operator; a
    blue-green that failed after its switch leaves green as all the route has. Reconciliation
    (the scheduled one too) used to remove it: nothing routed at all."""
    assert await ship(service, project, "moorage-demo:v1", "v1") == "completed"
    failing = web("moorage-demo:v2") + "    environment:\n      DEMO_FAIL_AFTER: '3'\n"
    await service.apply_project(TENANT, project, failing)
    failed = await service.deploy(
        TENANT, USER, project,
        DeployRequest(
            strategy=Strategy.BLUE_GREEN, version="v2", rollback_on_failure=False,
            post_switch_verify=20,
        ),
    )  # fmt: skip
    state = await wait_terminal(service, failed.id)
    assert state.deployment.status == DeploymentStatus.FAILED, state.deployment.message
    green = {c.name for c in labelled(docker_client, project, revision="2")}
    assert routed(router, project) == green  # blue was drained out at the switch

    assert await service.reconcile(TENANT, USER, project) == []
    assert routed(router, project) == green
    assert {c.name for c in labelled(docker_client, project, revision="2")} == green


async def test_a_rollback_whose_surge_cannot_roll_its_revision_rolls_with_the_defaults(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """A rollback rolls with its deployment's max_surge and max_unavailable, which may resolve
    to 0 and 0 for the revision it brings back (here 0 and 50% of 1 replica): it was accepted,
    then failed at once."""
    assert await ship(service, project, "moorage-demo:v1", "v1") == "completed"
    await service.apply_project(TENANT, project, compose("moorage-demo:v2", None, web_replicas=2))
    two = await service.deploy(
        TENANT, USER, project,
        DeployRequest(
            strategy=Strategy.ROLLING_UPDATE, version="v2", max_surge=0, max_unavailable="50%"
        ),
    )  # fmt: skip
    assert (await wait_terminal(service, two.id)).deployment.status == DeploymentStatus.COMPLETED
    rb = await service.rollback(TENANT, USER, two.id)
    state = await wait_terminal(service, rb.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert (state.deployment.config.max_surge, state.deployment.config.max_unavailable) == (1, 0)
    assert serving_version(docker_client, project, "web") == {"v1"}


async def test_large_revisions_are_retained_within_a_byte_budget(
    service: DeploymentService, project: str
) -> None:
    """Ten revisions of a 256 KiB file made the project's state larger than a Temporal payload
    may be: its next continue-as-new, or answer, failed the workflow task, for ever."""
    padding = "#" + "x" * 200 + "\n"
    big = web("moorage-demo:v1") + padding * (200 * 1024 // len(padding))
    for n in range(3):
        await service.apply_project(TENANT, project, big + f"# {n}\n")
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version=f"v{n}"))
        assert (await wait_terminal(service, dep.id)).deployment.status == "completed"
    proj = await service.get_project(TENANT, project)
    assert [r.version for r in proj.revisions] == ["v1", "v2"]  # 3 x 200 KiB > 512 KiB


async def test_a_rollback_naming_an_older_deployment_rolls_as_the_serving_one_would(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """``rollback shop.1 --to 1`` with shop.1 a recreate and shop.2 (serving) a rolling update:
    the rollback took shop.1's strategy and config, and recreated (with downtime)."""
    assert await ship(service, project, "moorage-demo:v1", "v1") == "completed"  # recreate
    assert (
        await ship(service, project, "moorage-demo:v2", "v2", strategy=Strategy.ROLLING_UPDATE)
        == "completed"
    )
    first = (await service.list_deployments(TENANT, project))[-1]
    assert first.strategy == Strategy.RECREATE
    rb = await service.rollback(TENANT, USER, first.id, to_revision=1)
    assert rb.strategy == Strategy.ROLLING_UPDATE
    state = await wait_terminal(service, rb.id)
    assert state.deployment.status == DeploymentStatus.COMPLETED, state.deployment.message
    assert serving_version(docker_client, project, "web") == {"v1"}


async def test_an_apply_adds_its_text_to_the_history_not_the_whole_project(
    service: DeploymentService, project: str
) -> None:
    """An apply answered the whole project (its text and every retained revision's), kept in
    the history: a few applies of large files during a held deployment (no continue-as-new
    then) took the history toward Temporal's 50 MB end of the workflow."""
    text = web("moorage-demo:v1") + ("# " + "x" * 78 + "\n") * 400  # 32 KB
    await service.apply_project(TENANT, project, text)
    dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
    assert (await wait_terminal(service, dep.id)).deployment.status == DeploymentStatus.COMPLETED
    handle = service.client.get_workflow_handle(naming.project_workflow_id(TENANT, project))

    async def size() -> int:
        info = (await handle.describe()).raw_description.workflow_execution_info
        return int(info.history_size_bytes)

    before = await size()
    answer = await service.apply_project(TENANT, project, text)
    grew = await size() - before
    assert answer.compose == text  # the API still answers the project
    assert [r.version for r in answer.revisions] == ["v1"]
    assert len(text) < grew < 1.2 * len(text), grew


async def test_a_strategy_workflow_that_cannot_start_fails_its_deployment_not_the_project(
    service: DeploymentService, project: str
) -> None:
    """Its id still running (a project reset or re-created with the same revisions): the child's
    start raised, and with it the project workflow failed, its state lost (ReconcileAll would
    then remove its containers as nobody's)."""
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    squatter = await service.client.start_workflow(
        "NoSuchWorkflow",
        id=naming.deployment_workflow_id(TENANT, f"{project}.1"),
        task_queue=f"nobody-polls-{project}",
    )
    try:
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v1"))
        state = await wait_terminal(service, dep.id)
        assert state.deployment.status == DeploymentStatus.FAILED
        assert "strategy workflow did not start" in state.deployment.message
    finally:
        await squatter.terminate()
    # The project lives on: the next deployment runs.
    again = await service.deploy(TENANT, USER, project, DeployRequest(version="v1b"))
    assert (await wait_terminal(service, again.id)).deployment.status == (
        DeploymentStatus.COMPLETED
    )


async def test_same_idempotency_key_gives_the_same_deployment(
    service: DeploymentService, project: str
) -> None:
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    first = await service.deploy(TENANT, USER, project, DeployRequest(), idempotency_key="k-1")
    again = await service.deploy(TENANT, USER, project, DeployRequest(), idempotency_key="k-1")
    assert again.id == first.id
    # The deployment as it is now (the project's record said pending, 0%, until its end).
    await wait_status(service, first.id, lambda s: s.deployment.progress > 0)
    now = await service.deploy(TENANT, USER, project, DeployRequest(), idempotency_key="k-1")
    assert (now.id, now.status != DeploymentStatus.PENDING) == (first.id, True)
    assert not now.status.terminal, now.message
    assert now.progress > 0
    # Another request under the key is refused by name: it got the first one's deployment
    # back, and never ran.
    for other in (DeployRequest(version="v9"), DeployRequest(max_surge=2)):
        with pytest.raises(InvalidError, match="for another request") as reused:
            await service.deploy(TENANT, USER, project, other, idempotency_key="k-1")
        assert reused.value.field == ["header", "Idempotency-Key"]
    # Two such requests at once both pass the API's check: the workflow refuses the second.
    handle = service.client.get_workflow_handle(naming.project_workflow_id(TENANT, project))
    with pytest.raises(WorkflowUpdateFailedError) as raced:
        await handle.execute_update(
            "deploy",
            DeployInput(request=DeployRequest(version="v9"), user_id=USER, idempotency_key="k-1"),
        )
    assert isinstance(raced.value.cause, ApplicationError)
    assert raced.value.cause.type == "Invalid"
    await wait_terminal(service, first.id)
    after = await service.deploy(TENANT, USER, project, DeployRequest(), idempotency_key="k-1")
    assert after.id == first.id
    assert len(await service.list_deployments(TENANT, project)) == 1


async def test_the_key_of_a_deployment_no_longer_kept_is_refused_by_name(
    service: DeploymentService, project: str
) -> None:
    """A project keeps its last 100 deployments and 200 keys: a key whose deployment was let go
    passed the update's validator and failed its handler, and with it every workflow task of the
    project (the deploy hung, the project answered nothing more)."""
    handle = await service.client.start_workflow(
        "Project",
        ProjectState(
            tenant_id=TENANT, project_id=project, compose=web("moorage-demo:v1"),
            next_revision=102, idempotency={"k-old": f"{project}.1"},
        ),
        id=naming.project_workflow_id(TENANT, project),
        task_queue=service.settings.task_queue,
    )  # fmt: skip
    try:
        with pytest.raises(ConflictError, match=f"'k-old' was used by deployment {project}.1"):
            await asyncio.wait_for(
                service.deploy(TENANT, USER, project, DeployRequest(), idempotency_key="k-old"), 20
            )
        assert (await service.get_project(TENANT, project)).id == project  # still answering
        assert await service.list_deployments(TENANT, project) == []
    finally:
        await handle.terminate("test over")


async def test_a_project_near_the_payload_cap_drops_old_logs_when_a_deployment_ends(
    service: DeploymentService, project: str
) -> None:
    """The state travels whole through every continue-as-new (2 MiB at most): old records'
    log tails go once it passes its budget."""
    logs = "\n".join("x" * 1000 for _ in range(4))
    old = [
        DeploymentState(
            deployment=Deployment(
                id=f"{project}.{n}", project_id=project, version=f"v{n}", revision=n,
                strategy=Strategy.RECREATE, status=DeploymentStatus.ROLLED_BACK,
                user_id=USER, tenant_id=TENANT,
            ),
            events=[
                DeploymentEvent(
                    event_type=EventType.HEALTH_CHECK_FAILED, message=f"unhealthy:\n{logs}",
                    details={"logs": logs * 10}, created_at=datetime.now(UTC),
                )
            ],
        )
        for n in range(1, 41)
    ]  # fmt: skip
    state = ProjectState(
        tenant_id=TENANT, project_id=project, compose=web("moorage-demo:v1"), next_revision=41,
        deployments=old,
    )  # fmt: skip
    assert STATE_BUDGET_BYTES < json_bytes(state) < 2 * 1024 * 1024
    handle = await service.client.start_workflow(
        "Project", state, id=naming.project_workflow_id(TENANT, project),
        task_queue=service.settings.task_queue,
    )  # fmt: skip
    try:
        dep = await service.deploy(TENANT, USER, project, DeployRequest(version="v41"))
        assert (await wait_terminal(service, dep.id)).deployment.status == "completed"
        kept = await service.list_deployments(TENANT, project)
        assert len(kept) == 41
        first = await service.events(TENANT, f"{project}.1")
        assert first[0].message.startswith("unhealthy: \u2026 (logs dropped")
        assert "logs" not in first[0].details
        last_old = await service.events(TENANT, f"{project}.40")
        assert "logs" in last_old[0].details  # among the newest ten: whole
    finally:
        await handle.terminate("test over")


async def test_two_deploys_at_the_same_moment_one_runs_one_gets_409(
    service: DeploymentService, project: str
) -> None:
    await service.apply_project(TENANT, project, web("moorage-demo:v1"))
    results = await asyncio.gather(
        service.deploy(TENANT, USER, project, DeployRequest(version="a")),
        service.deploy(TENANT, USER, project, DeployRequest(version="b")),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(accepted) == 1
    assert len(refused) == 1
    assert isinstance(refused[0], ConflictError)
    await wait_terminal(service, accepted[0].id)
    assert len(await service.list_deployments(TENANT, project)) == 1


async def test_bad_after_bad_then_good(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    assert await ship(service, project, "moorage-demo:v1", "v1") == "completed"
    assert (
        await ship(service, project, "moorage-demo:unhealthy", "bad1", health_check_retries=10)
        == "rolled_back"
    )
    assert serving_version(docker_client, project, "web") == {"v1"}
    assert await ship(service, project, "moorage-demo:crash", "bad2") == "rolled_back"
    assert serving_version(docker_client, project, "web") == {"v1"}
    proj = await service.get_project(TENANT, project)
    assert proj.current_version == "v1"
    assert [r.version for r in proj.revisions] == ["v1"]
    assert (
        await ship(service, project, "moorage-demo:v2", "good", strategy=Strategy.ROLLING_UPDATE)
        == "completed"
    )
    assert serving_version(docker_client, project, "web") == {"v2"}
    # Only the serving revision's containers exist.
    revisions = {c.labels["moorage.revision"] for c in labelled(docker_client, project)}
    assert revisions == {str((await service.get_project(TENANT, project)).current_revision)}


async def test_the_deployment_list_and_a_cancel_answer_a_running_deployment_as_it_is(
    service: DeploymentService, project: str
) -> None:
    """The project's record of a running deployment says pending, 0%, until it ends: the list
    (``history``) and the cancel's answer showed that while the deployment was half done."""
    await service.apply_project(TENANT, project, compose(api_image=None))
    dep = await service.deploy(TENANT, USER, project, DeployRequest(health_check_delay=5))
    running = await wait_status(
        service,
        dep.id,
        lambda s: s.deployment.status == DeploymentStatus.IN_PROGRESS and s.deployment.progress > 0,
    )
    [listed] = await service.list_deployments(TENANT, project)
    assert listed.status == DeploymentStatus.IN_PROGRESS
    assert listed.progress >= running.deployment.progress > 0
    answered = await service.cancel(TENANT, USER, dep.id)
    assert answered.status != DeploymentStatus.PENDING
    assert answered.progress > 0
    state = await wait_terminal(service, dep.id)
    assert state.deployment.status == DeploymentStatus.CANCELLED
    [ended] = await service.list_deployments(TENANT, project)
    assert ended.status == DeploymentStatus.CANCELLED


async def test_a_healthcheck_slower_than_the_health_window_is_refused_at_deploy(
    service: DeploymentService, docker_client: docker.DockerClient, project: str
) -> None:
    """Docker's first check comes one interval after the start: an interval of 90 s under the
    default window (60 checks 1 s apart) failed every deployment, after the whole minute."""
    text = compose(api_image=None) + (
        "    healthcheck:\n      test: ['CMD', 'true']\n      interval: 90s\n"
    )
    await service.apply_project(TENANT, project, text)
    with pytest.raises(InvalidError, match=r"service 'web': its healthcheck.interval \(90s\)"):
        await service.deploy(TENANT, USER, project, DeployRequest())
    assert await service.list_deployments(TENANT, project) == []
    assert labelled(docker_client, project) == []
    # With an x-moorage probe, the probe decides: the healthcheck's interval does not matter.
    probed = text + "    x-moorage: {probe: {type: tcp}}\n"
    await service.apply_project(TENANT, project, probed)
    dep = await service.deploy(TENANT, USER, project, DeployRequest())
    await service.cancel(TENANT, USER, dep.id)
    await wait_terminal(service, dep.id)
    await service.apply_project(TENANT, project, text)
    # Given the time, it deploys.
    dep = await service.deploy(
        TENANT, USER, project, DeployRequest(health_check_retries=100, health_check_interval=1)
    )
    assert dep.status == DeploymentStatus.PENDING
    await service.cancel(TENANT, USER, dep.id)
    await wait_terminal(service, dep.id)
