"""Prefect test driver: `python run_test.py SLUICE_BIN SCRATCH_DIR` with the orch-prefect
venv's python (scripts/ensure-orchestrator-venvs). Prints one JSON line {"ok", "checks", "info"}
and exits 0 when every check passed.

Runs `sluice_flow` (../sluice_prefect.py) locally, against Prefect's temporary local server:
- a real pipeline: the flow completes and returns the run report (status success, rows_out =
  the days the driver counts in the generated rows), the output Parquet holds the driver's
  per-day counts;
- a broken pipeline (exit 2): the flow fails, its task ran once despite retries=2;
- a failing run (exit 1): the task runs 1 + 2 retries, then the flow fails;
- a run started outside its window (exit 75): the flow run ends Scheduled at the window's
  opening, as the API has it.
Attempts are counted by Prefect (the task run's run_count) and by a wrapper of the sluice binary.
"""

import asyncio
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
real_sluice, scratch = os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve()
scratch.mkdir(parents=True, exist_ok=True)
os.environ.update(
    PREFECT_HOME=str(scratch / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
)
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "testing")]
import sluice_fixture as fx  # noqa: E402
from prefect import get_client  # noqa: E402

import sluice_prefect as sp  # noqa: E402

checks = fx.Checks()
sluice, calls_log = fx.counting_sluice(real_sluice, scratch)
pipelines = fx.make_pipelines(scratch / "pipelines")
# The flow's task, with a short retry delay for the test (the flow looks it up when it runs).
sp.sluice_run = sp.sluice_run.with_options(retry_delay_seconds=1)


def run(name, pipeline, **kw):
    t = time.monotonic()
    state = sp.sluice_flow(str(pipeline), sluice, vars={"min_amount": fx.MIN_AMOUNT}, return_state=True, **kw)
    checks.info[f"seconds: flow {name}"] = round(time.monotonic() - t, 1)
    return state


async def task_runs(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return flow_run, [(r.state.type.value, r.run_count) for r in runs]


# A real pipeline.
state = run("good", pipelines["good"])
checks.equal("good: flow run completed", state.type.value, "COMPLETED")
report = state.result() if state.is_completed() else {}
want = fx.expected()
model = (report.get("models") or [{}])[0]
checks.equal("good: returned report: status", report.get("status"), "success")
checks.equal("good: returned report: rows_out = days the driver counts", model.get("rows_out"), len(want))
checks.equal("good: returned report: rows_in = generated rows", model.get("rows_in"), fx.ROWS)
checks.equal("good: output Parquet: orders per day",
             {d: r["orders"] for d, r in fx.read_output(pipelines["good"]).items()}, want)

# Broken (exit 2) and failing (exit 1).
for name, runs in [("broken", 1), ("flaky", 3)]:
    state = run(name, pipelines[name])
    _, tasks = asyncio.run(task_runs(state.state_details.flow_run_id))
    checks.equal(f"{name}: flow run failed", state.type.value, "FAILED")
    checks.equal(f"{name}: its task failed after {runs} run(s)", tasks, [("FAILED", runs)])
    checks.equal(f"{name}: sluice ran {runs} time(s)", len(fx.calls(calls_log, pipelines[name])), runs)

# Started outside its window (exit 75).
window, opens = fx.window_opening_in(3600)
checks.info["late window"] = window
state = run("late", pipelines["late"], window=window, timezone="UTC")
flow_run, tasks = asyncio.run(task_runs(state.state_details.flow_run_id))
checks.equal("late: flow run ends Scheduled", (state.type.value, flow_run.state.type.value), ("SCHEDULED", "SCHEDULED"))
checks.equal("late: scheduled at the window's opening",
             [state.state_details.scheduled_time, flow_run.next_scheduled_start_time], [opens, opens])
checks.equal("late: its task completed once (returning the deferred report)", tasks, [("COMPLETED", 1)])
checks.equal("late: sluice ran once", len(fx.calls(calls_log, pipelines["late"])), 1)
checks.equal("late: nothing written", (pipelines["late"] / "out").exists(), False)
checks.finish()
