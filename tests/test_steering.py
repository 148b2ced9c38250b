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
