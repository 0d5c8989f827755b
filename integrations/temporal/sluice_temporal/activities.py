"""The `sluice_run` activity: one `sluice run ... --progress json`, heartbeating once per
finished work unit (the heartbeat's details are the progress event).

Exit status of `sluice run` -> Temporal:
  0   the activity returns the run report (parsed JSON)
  1   ApplicationError type SluiceFailed: retried by the retry policy (a rerun resumes what
      was committed)
  2   ApplicationError type SluiceBroken, non_retryable: the activity runs once
  75  ApplicationError type SluiceDeferred with next_retry_delay = until the report's
      next_window: the next attempt starts when the window opens (each deferral is one
      attempt of the retry policy's maximum_attempts)
  other (128+signal, a crash): SluiceFailed, retried
A cancelled activity (seen on a heartbeat) sends SIGTERM to sluice, which stops cleanly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from temporalio import activity
from temporalio.exceptions import ApplicationError

EXIT_OK, EXIT_USAGE, EXIT_DEFERRED = 0, 2, 75


@dataclass
class SluiceRun:
    """What to run: `sluice run PIPELINE` with these options."""

    pipeline: str
    sluice_bin: str = "sluice"
    vars: dict[str, str] = field(default_factory=dict)
    select: str | None = None
    window: list[str] = field(default_factory=list)
    timezone: str | None = None
    as_of: str | None = None

    def command(self, report: str) -> list[str]:
        cmd = [self.sluice_bin, "run", self.pipeline, "--report", report, "--progress", "json", "-q"]
        for k, v in self.vars.items():
            cmd += ["--var", f"{k}={v}"]
        if self.as_of:
            cmd += ["--as-of", self.as_of]
        if self.select:
            cmd += ["--select", self.select]
        for w in self.window:
            cmd += ["--window", w]
        if self.timezone and self.window:
            cmd += ["--timezone", self.timezone]
        return cmd


def progress_event(line: bytes) -> dict | None:
    """A progress line's event, or None for anything that is not a JSON object."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


@activity.defn(name="sluice_run")
async def sluice_run(run: SluiceRun) -> dict:
    with tempfile.TemporaryDirectory(prefix="sluice-temporal-") as tmp:
        path = os.path.join(tmp, "report.json")
        cmd = run.command(path)
        activity.logger.info("Running %s", " ".join(cmd))
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        stderr = asyncio.create_task(proc.stderr.read())
        try:
            async for line in proc.stdout:
                event = progress_event(line)
                if event and event.get("event") == "unit_done":
                    activity.heartbeat(event)
            code = await proc.wait()
        except asyncio.CancelledError:
            proc.send_signal(signal.SIGTERM)  # sluice cancels its units and records the run
            await proc.wait()
            raise
        errors = (await stderr).decode(errors="replace").strip()
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            report = None
    if code == EXIT_OK and report:
        return report
    message = f"sluice exited {code}: {errors or 'no message'}"
    if code == EXIT_USAGE:
        raise ApplicationError(message, report, type="SluiceBroken", non_retryable=True)
    if code == EXIT_DEFERRED and report and report.get("next_window"):
        delay = datetime.fromisoformat(report["next_window"]) - datetime.now(timezone.utc)
        raise ApplicationError(message, report, type="SluiceDeferred", next_retry_delay=max(delay, timedelta(0)))
    raise ApplicationError(message, report, type="SluiceFailed")
