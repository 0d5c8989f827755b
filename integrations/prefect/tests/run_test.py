"""Prefect test driver: `python run_test.py SLUICE_BIN SCRATCH_DIR` with the orch-prefect
venv's python (scripts/ensure-orchestrator-venvs). Prints one JSON line {"ok", "checks", "info"}
and exits 0 when every check passed.

Starts a local Prefect server (`prefect server start`), then runs `sluice_flow`
(../sluice_prefect.py):
- called directly, on a real pipeline: the flow completes and returns the run report (status
  success, rows_out = the days the driver counts in the generated rows), the output Parquet
  holds the driver's per-day counts;
- called directly, on a broken pipeline (exit 2): the flow fails, its task ran once despite
  retries=2;
- called directly, on a failing run (exit 1): the task runs 1 + 2 retries, then the flow fails;
- as a deployment served by `python sluice_prefect.py --serve test`, started outside its
  window (exit 75): the flow run ends Completed, named Deferred, and a new flow run of the
  deployment, with the same parameters, is Scheduled at the window's opening.
Attempts are counted by Prefect (the task run's run_count) and by a wrapper of the sluice binary.
"""

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
real_sluice, scratch = os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve()
scratch.mkdir(parents=True, exist_ok=True)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(
    PREFECT_HOME=str(scratch / "prefect"),
    PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_RUNNER_POLL_FREQUENCY="1",
)
sys.path[:0] = [str(HERE.parent), str(HERE.parents[1] / "testing")]
import sluice_fixture as fx  # noqa: E402
from prefect import get_client  # noqa: E402
from prefect.client.schemas.filters import (  # noqa: E402
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.deployments import run_deployment  # noqa: E402
from prefect.exceptions import ObjectNotFound  # noqa: E402

import sluice_prefect as sp  # noqa: E402

checks = fx.Checks()
sluice, calls_log = fx.counting_sluice(real_sluice, scratch)
pipelines = fx.make_pipelines(scratch / "pipelines")
# The flow's task, with a short retry delay for the test (the flow looks it up when it runs).
sp.sluice_run = sp.sluice_run.with_options(retry_delay_seconds=1)
bindir = Path(sys.executable).parent


def start(name, *args):
    log = open(scratch / f"{name}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop(proc):
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(name, pipeline, **kw):
    t = time.monotonic()
    state = sp.sluice_flow(str(pipeline), sluice, vars={"min_amount": fx.MIN_AMOUNT}, return_state=True, **kw)
    checks.info[f"seconds: flow {name}"] = round(time.monotonic() - t, 1)
    return state


async def task_runs(flow_run_id):
    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return [(r.state.type.value, r.run_count) for r in runs]


async def wait_for_deployment(name, seconds=90):
    async with get_client() as client:
        for _ in range(int(seconds * 2)):
            try:
                return await client.read_deployment_by_name(name)
            except ObjectNotFound:
                await asyncio.sleep(0.5)
    raise TimeoutError(f"no deployment {name} after {seconds} s: see serve.log")


async def deployment_runs(deployment_id):
    async with get_client() as client:
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


t = time.monotonic()
server = start("server", str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port))
try:
    for _ in range(180):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    checks.info["seconds: server up"] = round(time.monotonic() - t, 1)

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
        tasks = asyncio.run(task_runs(state.state_details.flow_run_id))
        checks.equal(f"{name}: flow run failed", state.type.value, "FAILED")
        checks.equal(f"{name}: its task failed after {runs} run(s)", tasks, [("FAILED", runs)])
        checks.equal(f"{name}: sluice ran {runs} time(s)", len(fx.calls(calls_log, pipelines[name])), runs)

    # A deployment's flow run started outside its window (exit 75).
    window, opens = fx.window_opening_in(3600)
    checks.info["late window"] = window
    served = start("serve", sys.executable, str(HERE.parent / "sluice_prefect.py"), "--serve", "test")
    try:
        t = time.monotonic()
        asyncio.run(wait_for_deployment("sluice/test"))
        params = {"pipeline": str(pipelines["late"]), "sluice_bin": sluice, "vars": {"min_amount": fx.MIN_AMOUNT},
                  "window": window, "timezone": "UTC"}
        first = run_deployment("sluice/test", parameters=params, timeout=120, poll_interval=1)
        checks.info["seconds: deployment run late"] = round(time.monotonic() - t, 1)
    finally:
        stop(served)
    checks.equal("late: the flow run ends Completed, named Deferred", (first.state.type.value, first.state.name),
                 ("COMPLETED", "Deferred"))
    later = [r for r in asyncio.run(deployment_runs(first.deployment_id)) if r.id != first.id]
    checks.check("late: its message names the new flow run", later and str(later[0].id) in (first.state.message or ""),
                 first.state.message)
    checks.equal("late: one more flow run of the deployment, Scheduled at the window's opening",
                 [(r.state.type.value, r.next_scheduled_start_time) for r in later], [("SCHEDULED", opens)])
    checks.equal("late: with the same parameters",
                 [{k: v for k, v in r.parameters.items() if v is not None} for r in later], [params])
    checks.equal("late: sluice ran once", len(fx.calls(calls_log, pipelines["late"])), 1)
    checks.equal("late: nothing written", (pipelines["late"] / "out").exists(), False)
finally:
    stop(server)
checks.finish()
