"""Fuzzing the HTTP API from its own OpenAPI document: no request may get a 5xx.

Black box: ``moorage dev`` (a real Temporal dev server, worker, API and router) serves the API,
and schemathesis sends it generated requests, with a deployer key, bounded per operation.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from tests.helpers import free_ports, worker_port_setting
from tests.test_cli import ROOT

FUZZ_ROUTE_PORTS = worker_port_setting(24000, 24099)
"""The listen ports of the fuzzed `moorage dev`'s router."""

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def dev_api(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[dict[str, str]]:
    """``moorage dev`` on free ports; yields its URL and the dev key; stops it afterwards."""
    data = tmp_path_factory.mktemp("fuzz")
    api_port, temporal_port, ui_port = free_ports(3)
    env = {
        **os.environ,
        "MOORAGE_ROUTE_PORTS": FUZZ_ROUTE_PORTS,
        "MOORAGE_RECONCILE_EVERY": "0",
        "MOORAGE_TASK_QUEUE": "moorage-fuzz",
    }
    log = (data / "dev.out").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "moorage.cli", "dev",
            "--data-dir", str(data / "dev"),
            "--temporal-port", str(temporal_port),
            "--ui-port", str(ui_port),
            "--api-port", str(api_port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while b"export MOORAGE_TEMPORAL_ADDRESS" not in (data / "dev.out").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"moorage dev did not start: {(data / 'dev.out').read_text()}")
            time.sleep(0.2)
        key = (data / "dev" / "dev-api-key").read_text().strip()
        yield {"url": f"http://127.0.0.1:{api_port}", "key": key}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert b"Traceback" not in (data / "dev.out").read_bytes()
    for name in ("api", "worker"):
        text = (data / "dev" / "logs" / f"{name}.log").read_text()
        assert "Traceback" not in text, f"{name} log:\n{text[-3000:]}"


def test_no_request_gets_a_server_error(dev_api: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{dev_api['url']}/openapi.json")
    headers = {"Authorization": f"Bearer {dev_api['key']}"}
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the API's own OpenAPI is invalid: {result.err()}"
        operations.append(result.ok())
    statuses: Counter[int] = Counter()
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            response = case.call(base_url=dev_api["url"], headers=headers, timeout=30)
            statuses[response.status_code] += 1
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    print(f"fuzzed {len(operations)} operations: {sum(statuses.values())} requests, {statuses}")
    # Not all refusals: some requests got through authentication and validation.
    assert sum(statuses.values()) >= len(operations) * 5
    assert set(statuses) - {401, 403, 422}


def test_the_fuzzed_api_is_the_served_one(dev_api: dict[str, str]) -> None:
    """The schema the fuzzer read lists the deploy routes (it is not an empty document)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{dev_api['url']}/openapi.json", timeout=10) as resp:
        paths = json.loads(resp.read())["paths"]
    assert "/api/projects/{project_id}/deploy" in paths
    assert len(paths) >= 10
