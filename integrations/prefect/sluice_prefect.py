"""Run a sluice pipeline from Prefect (3.x): a task and a flow.

Exit status of `sluice run` -> Prefect:
  0   the task returns the run report (parsed JSON); the flow returns it too
  1   SluiceFailed: the task's `retries` apply (a rerun resumes what was committed)
  2   SluiceBroken: `retry_condition_fn` refuses a retry; the task and the flow fail at once
  75  started outside its --window: the task returns the `deferred` report; then a flow run
      of a deployment creates a run of that deployment with the same parameters, scheduled
      at the report's `next_window`, and ends Completed, named Deferred (its worker or
      `serve` starts the new run then); a flow called directly (no deployment) sleeps until
      `next_window` and runs the task again
  other (128+signal: interrupted, or a crash): SluiceFailed, retried

Run it once: `python sluice_prefect.py PIPELINE [--sluice BIN] [--var K=V]... [--window W]`;
serve it as a deployment: `python sluice_prefect.py --serve NAME` (deployment `sluice/NAME`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime

from prefect import flow, get_run_logger, runtime, task
from prefect.deployments import run_deployment
from prefect.states import Completed

EXIT_OK, EXIT_USAGE, EXIT_DEFERRED = 0, 2, 75


class SluiceFailed(Exception):
    """`sluice run` failed; a retry may help."""

    def __init__(self, message: str, report: dict | None):
        super().__init__(message)
        self.report = report


class SluiceBroken(SluiceFailed):
    """`sluice run` exited 2: the pipeline, its config or the command must be fixed first."""


def retry_unless_broken(task, task_run, state) -> bool:
    """`retry_condition_fn`: retry any failure but a broken pipeline."""
    try:
        state.result()
    except SluiceBroken:
        return False
    except Exception:
        return True
    return True


def command(pipeline, report, sluice_bin="sluice", vars=None, select=None, window=None,
            timezone=None, as_of=None) -> list[str]:
    cmd = [sluice_bin, "run", str(pipeline), "--report", report, "-q"]
    for k, v in (vars or {}).items():
        cmd += ["--var", f"{k}={v}"]
    if as_of:
        cmd += ["--as-of", as_of]
    if select:
        cmd += ["--select", select]
    for w in [window] if isinstance(window, str) else (window or []):
        cmd += ["--window", w]
    if timezone and window:
        cmd += ["--timezone", timezone]
    return cmd


@task(name="sluice run", retries=2, retry_delay_seconds=10, retry_condition_fn=retry_unless_broken)
def sluice_run(pipeline: str, sluice_bin: str = "sluice", vars: dict | None = None,
               select: str | None = None, window: str | list[str] | None = None,
               timezone: str | None = None, as_of: str | None = None) -> dict:
    """Runs `sluice run` once; returns its report (also when deferred), raises on failure."""
    log = get_run_logger()
    with tempfile.TemporaryDirectory(prefix="sluice-prefect-") as tmp:
        path = os.path.join(tmp, "report.json")
        cmd = command(pipeline, path, sluice_bin, vars, select, window, timezone, as_of)
        log.info("Running %s", " ".join(cmd))
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                log.info("%s", line.rstrip())
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            report = None
    if proc.returncode in (EXIT_OK, EXIT_DEFERRED) and report:
        return report
    message = f"sluice exited {proc.returncode}: {(report or {}).get('error') or _errors(report)}"
    raise (SluiceBroken if proc.returncode == EXIT_USAGE else SluiceFailed)(message, report)


@flow(name="sluice")
def sluice_flow(pipeline: str, sluice_bin: str = "sluice", vars: dict | None = None,
                select: str | None = None, window: str | list[str] | None = None,
                timezone: str | None = None, as_of: str | None = None):
    """Runs the pipeline and returns the run report. Started outside its window: a flow run
    of a deployment schedules a new run of it at the window's opening and ends Completed,
    named Deferred; a flow called directly waits for the window and runs again."""
    log = get_run_logger()
    while True:
        report = sluice_run(pipeline, sluice_bin, vars, select, window, timezone, as_of)
        if report.get("status") != "deferred":
            return report
        if not report.get("next_window"):
            raise SluiceFailed(f"sluice deferred the run, but: {report.get('error')}", report)
        when = datetime.fromisoformat(report["next_window"])
        if runtime.deployment.id:
            later = run_deployment(runtime.deployment.id, parameters=runtime.flow_run.parameters,
                                   scheduled_time=when, timeout=0, as_subflow=False)
            log.info("Outside the run window: flow run %s scheduled at %s", later.name, when.isoformat())
            return Completed(name="Deferred", data=report,
                             message=f"sluice deferred: flow run {later.name} ({later.id}) at {when.isoformat()}")
        log.info("Outside the run window: waiting until %s", when.isoformat())
        time.sleep(max(0.0, (when - datetime.now(when.tzinfo)).total_seconds()))


def _errors(report: dict | None) -> str:
    if not report:
        return "no run report written"
    return "; ".join(f"model '{m['name']}': {m['error']}" for m in report.get("models", []) if m.get("error"))


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Run a sluice pipeline as a Prefect flow")
    p.add_argument("pipeline", nargs="?")
    p.add_argument("--serve", metavar="NAME", help="serve the flow as deployment NAME instead (runs its flow runs)")
    p.add_argument("--sluice", default="sluice")
    p.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--window", action="append")
    p.add_argument("--timezone")
    a = p.parse_args()
    if a.serve:
        sluice_flow.serve(name=a.serve)
        sys.exit(0)
    if not a.pipeline:
        p.error("PIPELINE is required")
    state = sluice_flow(a.pipeline, a.sluice, dict(v.split("=", 1) for v in a.var), None, a.window,
                        a.timezone, return_state=True)
    print(state.type.value, file=sys.stderr)
    sys.exit(0 if state.is_completed() else 1)
