"""Record workflow histories for the replay tests (tests/test_replay.py).

Runs real deployments (recreate, rolling update, a rolled-back one, a cancelled one) on a local
Temporal dev server and the Docker engine, and saves every workflow's history as JSON under
tests/histories/. Re-record only on purpose: a history that no longer replays means the change
would break deployments in flight.

Usage: .venv/bin/python scripts/record_histories.py [OUT_DIR]
(OUT_DIR: somewhere else than tests/histories/, to take only a new history from it)
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402
from temporalio.contrib.pydantic import pydantic_data_converter  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities.docker_executor import DockerExecutor  # noqa: E402
from moorage import images, naming  # noqa: E402
from moorage.models import CanaryStep, DeployRequest, Strategy  # noqa: E402
from moorage.service import DeploymentService  # noqa: E402
from moorage.settings import Settings  # noqa: E402
from tests.helpers import compose, wait_status, wait_terminal  # noqa: E402
from worker import build_router, build_worker  # noqa: E402
from workflows import search_attributes as sa  # noqa: E402

OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "histories"
TENANT = "acme"


async def main() -> None:
    """Record the histories."""
    client = docker.from_env()
    images.build_all(client)
    work = Path(tempfile.mkdtemp())
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
        search_attributes=sa.ALL,
        data_converter=pydantic_data_converter,
    )
    settings = Settings(task_queue="record", router_dir=work / "router", route_ports="24500-24999")
    router = build_router(settings, client)
    worker = build_worker(env.client, "record", DockerExecutor(client), router)
    task = asyncio.create_task(worker.run())
    svc = DeploymentService(env.client, settings)
    project, quiet, dropped = "replay", "replay-unrouted", "replay-dropped"
    undone = "replay-first-undone"
    try:
        await svc.apply_project(TENANT, project, compose("moorage-demo:v1", "moorage-demo:v1"))
        d1 = await svc.deploy(TENANT, "u", project, DeployRequest(version="v1"))
        await wait_terminal(svc, d1.id, tenant=TENANT)
        await svc.apply_project(
            TENANT, project, compose("moorage-demo:v2", "moorage-demo:v2", web_replicas=2)
        )
        d2 = await svc.deploy(
            TENANT, "u", project, DeployRequest(strategy=Strategy.ROLLING_UPDATE, version="v2")
        )
        await wait_terminal(svc, d2.id, tenant=TENANT)
        await svc.apply_project(
            TENANT, project, compose("moorage-demo:unhealthy", "moorage-demo:v2", web_replicas=2)
        )
        d3 = await svc.deploy(
            TENANT,
            "u",
            project,
            DeployRequest(strategy=Strategy.ROLLING_UPDATE, health_check_retries=5),
        )
        await wait_terminal(svc, d3.id, tenant=TENANT)
        await svc.apply_project(TENANT, project, compose("moorage-demo:v3", "moorage-demo:v3"))
        d4 = await svc.deploy(
            TENANT, "u", project, DeployRequest(version="v3", health_check_delay=20)
        )
        await wait_status(svc, d4.id, lambda s: s.deployment.progress >= 40, tenant=TENANT)
        await svc.cancel(TENANT, "u", d4.id)
        await wait_terminal(svc, d4.id, tenant=TENANT)
        await svc.apply_project(TENANT, project, compose("moorage-demo:v1", "moorage-demo:v1"))
        d5 = await svc.deploy(
            TENANT, "u", project, DeployRequest(strategy=Strategy.BLUE_GREEN, post_switch_verify=1)
        )
        await wait_terminal(svc, d5.id, tenant=TENANT)
        await svc.apply_project(TENANT, project, compose("moorage-demo:v2", "moorage-demo:v2"))
        steps = [CanaryStep(weight=50), CanaryStep(pause=1), CanaryStep(weight=100)]
        d6 = await svc.deploy(
            TENANT, "u", project, DeployRequest(strategy=Strategy.CANARY, canary_steps=steps)
        )
        await wait_terminal(svc, d6.id, tenant=TENANT)
        await svc.reconcile(TENANT, "u", project)
        # A service without a port has no route: a recreate stops it before any router change.
        unrouted = "services:\n  worker:\n    image: moorage-demo:{}\n"
        await svc.apply_project(TENANT, quiet, unrouted.format("v1"))
        d7_first = await svc.deploy(TENANT, "u", quiet, DeployRequest())
        await wait_terminal(svc, d7_first.id, tenant=TENANT)
        await svc.apply_project(TENANT, quiet, unrouted.format("v2"))
        d7 = await svc.deploy(TENANT, "u", quiet, DeployRequest(version="v2"))
        await wait_terminal(svc, d7.id, tenant=TENANT)
        # A revision that drops a routed service: the project deletes its route once it serves.
        await svc.apply_project(TENANT, dropped, compose("moorage-demo:v1", "moorage-demo:v1"))
        d8_first = await svc.deploy(TENANT, "u", dropped, DeployRequest())
        await wait_terminal(svc, d8_first.id, tenant=TENANT)
        await svc.apply_project(TENANT, dropped, compose("moorage-demo:v2", api_image=None))
        d8 = await svc.deploy(TENANT, "u", dropped, DeployRequest(version="v2"))
        await wait_terminal(svc, d8.id, tenant=TENANT)
        # A first deployment undone: the project removes the network it made.
        await svc.apply_project(
            TENANT, undone, compose("moorage-demo:unhealthy", "moorage-demo:v1")
        )
        d9 = await svc.deploy(TENANT, "u", undone, DeployRequest(health_check_retries=3))
        await wait_terminal(svc, d9.id, tenant=TENANT)
        await asyncio.sleep(2)  # the route's deletion follows the deployment's end
        OUT.mkdir(parents=True, exist_ok=True)
        names = {
            naming.project_workflow_id(TENANT, project): "project",
            naming.deployment_workflow_id(TENANT, d1.id): "recreate-completed",
            naming.deployment_workflow_id(TENANT, d2.id): "rolling-completed",
            naming.deployment_workflow_id(TENANT, d3.id): "rolling-rolled-back",
            naming.deployment_workflow_id(TENANT, d4.id): "recreate-cancelled",
            naming.deployment_workflow_id(TENANT, d5.id): "bluegreen-completed",
            naming.deployment_workflow_id(TENANT, d6.id): "canary-completed",
            naming.deployment_workflow_id(TENANT, d7.id): "recreate-unrouted-completed",
            naming.project_workflow_id(TENANT, dropped): "project-dropped-service",
            naming.project_workflow_id(TENANT, undone): "project-first-undone",
        }
        for wf_id, name in names.items():
            history = await env.client.get_workflow_handle(wf_id).fetch_history()
            (OUT / f"{name}.json").write_text(history.to_json())
            print(f"saved {name}: {len(history.events)} events")
    finally:
        await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)
        DockerExecutor(client).purge_project(project)
        DockerExecutor(client).purge_project(quiet)
        DockerExecutor(client).purge_project(dropped)
        DockerExecutor(client).purge_project(undone)
        router.stop()
        await env.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
