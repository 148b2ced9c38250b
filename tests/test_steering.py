"""Steering validators of the strategy workflows: workflow logic, no Temporal, no engine."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from workflows.canary import CanaryWorkflow
from workflows.inputs import SteerInput


def test_a_canary_promoted_refuses_a_pause() -> None:
    """Between a promote and the end of the step it came in (a health gate, a drain), a pause
    was answered "paused", recorded, then ignored: the canary went to 100% all the same."""
    canary = CanaryWorkflow()
    canary._stepping = True
    canary._validate_pause(SteerInput(user_id="u"))  # in its steps: a pause is taken
    canary._promoted_by = "carol"
    with pytest.raises(ApplicationError, match="cannot pause: promoted by carol"):
        canary._validate_pause(SteerInput(user_id="u"))


def test_an_update_whose_step_timed_out_is_unavailable_not_a_bad_request() -> None:
    """Only an ``ApplicationError`` in the chain was told apart: a step that timed out (no
    ``ApplicationError`` in it) answered 400, as if the request were wrong."""
    from temporalio.client import WorkflowUpdateFailedError
    from temporalio.exceptions import ActivityError, RetryState, TimeoutError, TimeoutType

    from moorage.service import UnavailableError, _refusal

    timeout = TimeoutError(
        "heartbeat timeout", type=TimeoutType.HEARTBEAT, last_heartbeat_details=[]
    )
    step = ActivityError(
        "Activity task timed out", scheduled_event_id=5, started_event_id=6, identity="w",
        activity_type="list_containers", activity_id="1", retry_state=RetryState.TIMEOUT,
    )  # fmt: skip
    step.__cause__ = timeout
    refusal = _refusal(WorkflowUpdateFailedError(step))
    assert isinstance(refusal, UnavailableError)
    assert refusal.status_code == 503
    assert refusal.message == "a step failed: Activity task timed out: heartbeat timeout"


@pytest.mark.parametrize(
    ("x_moorage", "request_", "refused"),
    [
        ("", {"health_check_delay": 900}, True),  # the default deadline: 900 s
        ("", {"health_check_delay": 899}, False),
        ("", {"health_check_delay": 60, "progress_deadline": 60}, True),
        ("{min_ready_seconds: 30}", {"health_check_delay": 30, "progress_deadline": 60}, True),
        ("{min_ready_seconds: 29}", {"health_check_delay": 30, "progress_deadline": 60}, False),
        # The service's own delay comes first.
        ("{health_check_delay: 100}", {"health_check_delay": 1, "progress_deadline": 100}, True),
        ("{health_check_delay: 1}", {"health_check_delay": 100, "progress_deadline": 100}, False),
    ],
)
def test_a_health_gate_no_shorter_than_the_progress_deadline_is_told(
    x_moorage: str, request_: dict[str, object], refused: bool
) -> None:
    """The gate records nothing until it ends: one that cannot end before the deadline failed
    every deployment there (15 minutes in, by default)."""
    from moorage.compose import parse_compose
    from moorage.models import DeployRequest
    from workflows.project import _health_refusal

    text = "services:\n  db:\n    image: a\n"
    if x_moorage:
        text += f"    x-moorage: {x_moorage}\n"
    why = _health_refusal(DeployRequest.model_validate(request_), parse_compose(text))
    assert (why is not None) == refused, why
    if refused:
        assert why is not None
        assert why.startswith("service 'db': its health gate takes at least")
        assert "progress_deadline" in why


@pytest.mark.parametrize(
    ("healthcheck", "request_", "refused"),
    [
        ("{test: [CMD, 'true'], interval: 90s}", {}, True),  # 90 s against 60 x 1 s
        ("{test: [CMD, 'true'], interval: 90s}", {"health_check_retries": 100}, False),
        ("{test: [CMD, 'true'], interval: 50s}", {"health_check_delay": 5}, False),
        ("{test: [CMD, 'true']}", {"health_check_retries": 10}, True),  # Docker's 30 s
        # Docker 25+ checks every 5 s during a start period.
        ("{test: [CMD, 'true'], interval: 90s, start_period: 60s}", {}, False),
        ("{interval: 90s}", {}, False),  # the image's healthcheck, if any: not known
        ("{disable: true}", {}, False),
    ],
)
def test_a_healthcheck_that_could_never_pass_in_time_is_told(
    healthcheck: str, request_: dict[str, object], refused: bool
) -> None:
    from moorage.compose import parse_compose
    from moorage.models import DeployRequest
    from workflows.project import _health_refusal

    spec = parse_compose(f"services:\n  web:\n    image: a\n    healthcheck: {healthcheck}\n")
    why = _health_refusal(DeployRequest.model_validate(request_), spec)
    assert (why is not None) == refused, why
    probed = parse_compose(
        f"services:\n  web:\n    image: a\n    ports: ['80']\n    healthcheck: {healthcheck}\n"
        "    x-moorage: {probe: {type: tcp}}\n"
    )
    assert _health_refusal(DeployRequest.model_validate(request_), probed) is None


@pytest.mark.parametrize(("mib", "refused"), [(11, True), (9, False)])
def test_an_apply_while_a_deployment_runs_is_refused_past_the_history_cap(
    monkeypatch: pytest.MonkeyPatch, mib: int, refused: bool
) -> None:
    """The history continues as new only between deployments: applies during one (a canary
    held for days, a CI that applies every minute) grew it until Temporal ended the project's
    workflow (50 MB), its state with it."""
    from types import SimpleNamespace

    from workflows import project
    from workflows.inputs import ApplyInput, ProjectState

    info = SimpleNamespace(get_current_history_size=lambda: mib * 2**20)
    monkeypatch.setattr("workflows.project.workflow.info", lambda: info)
    flow = project.ProjectWorkflow(ProjectState(tenant_id="t", project_id="p"))
    text = "services:\n  web: {image: a}\n"
    flow._validate_apply(ApplyInput(compose=text))  # idle: it continues as new soon
    flow.state.active_id = "p.3"
    if refused:
        with pytest.raises(ApplicationError, match=r"while deployment p\.3 runs") as err:
            flow._validate_apply(ApplyInput(compose=text))
        assert err.value.type == "Conflict"
    else:
        flow._validate_apply(ApplyInput(compose=text))
