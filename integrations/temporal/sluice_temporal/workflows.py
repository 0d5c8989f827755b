"""`SluiceWorkflow`: runs the `sluice_run` activity under a retry policy and returns the run
report. Run a worker (worker.py) and start it, e.g. with the Temporal CLI:
`temporal workflow start --task-queue sluice --type SluiceWorkflow --input '{"pipeline": "/srv/pipelines/orders"}'`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from sluice_temporal.activities import SluiceRun, sluice_run


@dataclass
class SluiceWorkflowInput(SluiceRun):
    """A SluiceRun plus how the activity is retried and timed out."""

    maximum_attempts: int = 4  # deferrals (exit 75) count as attempts too
    retry_initial_interval_seconds: float = 30
    heartbeat_timeout_seconds: float = 3600  # longer than the longest work unit
    start_to_close_timeout_seconds: float = 6 * 3600


@workflow.defn(name="SluiceWorkflow")
class SluiceWorkflow:
    @workflow.run
    async def run(self, inp: SluiceWorkflowInput) -> dict:
        run = SluiceRun(inp.pipeline, inp.sluice_bin, inp.vars, inp.select, inp.window, inp.timezone, inp.as_of)
        return await workflow.execute_activity(
            sluice_run,
            run,
            start_to_close_timeout=timedelta(seconds=inp.start_to_close_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=inp.retry_initial_interval_seconds),
                maximum_attempts=inp.maximum_attempts,
                non_retryable_error_types=["SluiceBroken"],
            ),
        )
