"""Record one project run that spans a change of the project workflow (tests/test_replay.py).

Phase "old", run from a checkout of the code before the change: v1 (web + api), then v2 without
api. Phase "new", run from this checkout: v3 without api, completed by a worker that replays the
run from its start; saves the project's history. Both against one Temporal server, e.g.::

    temporal server start-dev --headless --port 27433 <search attribute flags>
    (cd ../old && PYTHONPATH=. python ../main/scripts/record_mixed_history.py \
        127.0.0.1:27433 old /tmp/mixed)
    PYTHONPATH=. python scripts/record_mixed_history.py 127.0.0.1:27433 new /tmp/mixed \
        tests/histories/project-dropped-service-mixed.json

Recorded for the route deletion (patch "delete-routes-not-served"): old code b40439f.
"""

import asyncio
import sys
from pathlib import Path

import docker
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from activities.docker_executor import DockerExecutor
from moorage import naming
from moorage.models import DeployRequest
from moorage.service import DeploymentService
from moorage.settings import Settings
from tests.helpers import compose, wait_terminal
from worker import build_router, build_worker

TENANT, PROJECT = "acme", "replay-mixed"


async def main(address: str, phase: str, work: Path, out: Path | None) -> None:
    """Run one phase against the server at ``address``."""
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    engine = docker.from_env()
    settings = Settings(task_queue="mixed", router_dir=work / "router", route_ports="24500-24999")
    router = build_router(settings, engine)
    worker = build_worker(client, "mixed", DockerExecutor(engine), router)
    task = asyncio.create_task(worker.run())
    svc = DeploymentService(client, settings)
    try:
        if phase == "old":
            await svc.apply_project(TENANT, PROJECT, compose("moorage-demo:v1", "moorage-demo:v1"))
            d1 = await svc.deploy(TENANT, "u", PROJECT, DeployRequest(version="v1"))
            await wait_terminal(svc, d1.id, tenant=TENANT)
            await svc.apply_project(TENANT, PROJECT, compose("moorage-demo:v2", api_image=None))
            d2 = await svc.deploy(TENANT, "u", PROJECT, DeployRequest(version="v2"))
            print("old:", (await wait_terminal(svc, d2.id, tenant=TENANT)).deployment.status)
        else:
            await svc.apply_project(TENANT, PROJECT, compose("moorage-demo:v3", api_image=None))
            d3 = await svc.deploy(TENANT, "u", PROJECT, DeployRequest(version="v3"))
            print("new:", (await wait_terminal(svc, d3.id, tenant=TENANT)).deployment.status)
            await asyncio.sleep(2)
            history = await client.get_workflow_handle(
                naming.project_workflow_id(TENANT, PROJECT)
            ).fetch_history()
            assert out is not None
            await asyncio.to_thread(out.write_text, history.to_json())
            print(f"saved {out.name}: {len(history.events)} events")
            DockerExecutor(engine).purge_project(PROJECT)
            router.stop()
    finally:
        await worker.shutdown()
        await asyncio.gather(task, return_exceptions=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[0], args[1], Path(args[2]), Path(args[3]) if len(args) > 3 else None))
