"""SluiceOperator: one `sluice run` as an Airflow task.

Exit status of `sluice run` -> Airflow:
  0   success; the run report (parsed JSON) is the task's return value (XCom)
  1   a failure a retry may fix: an ordinary exception, so the task's `retries` apply
  2   a broken pipeline, config or command: AirflowFailException, no retry
  75  started outside its --window: AirflowRescheduleException until the report's
      `next_window` (the task is up_for_reschedule and runs again then)
  other (128+signal: interrupted, or a crash): an ordinary exception (retried; a rerun resumes)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import datetime
from typing import Any, Sequence
from urllib.parse import urlsplit

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowRescheduleException

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DEFERRED = 0, 1, 2, 75


class SluiceError(AirflowException):
    """`sluice run` failed; `report` is its run report (or None if it wrote none)."""

    def __init__(self, message: str, report: dict | None):
        super().__init__(message)
        self.report = report


class SluiceOperator(BaseOperator):
    """Runs `sluice run PIPELINE` and returns its run report.

    :param pipeline: the pipeline folder (or its sluice.toml)
    :param sluice_bin: the sluice executable
    :param vars: `--var KEY=VALUE` for `{{ KEY }}` in the SQL (templated)
    :param select: `--select` (templated)
    :param window: `--window`, a string or a list of them ("01:00-05:00")
    :param timezone: `--timezone` of the window
    :param data_interval: pass the run's data interval: `--as-of data_interval_end` and
        `--var data_interval_start=... --var data_interval_end=...` (RFC 3339). sluice accepts
        variables the SQL does not use.
    :param extra_args: more arguments for `sluice run` (e.g. ["--memory-limit", "2GiB"])
    :param env: environment for sluice (default: the worker's)
    """

    template_fields: Sequence[str] = ("pipeline", "vars", "select", "window", "timezone", "extra_args")
    ui_color = "#b3d4fc"

    def __init__(
        self,
        *,
        pipeline: str,
        sluice_bin: str = "sluice",
        vars: dict[str, Any] | None = None,
        select: str | None = None,
        window: str | list[str] | None = None,
        timezone: str | None = None,
        data_interval: bool = True,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.pipeline = pipeline
        self.sluice_bin = sluice_bin
        self.vars = dict(vars or {})
        self.select = select
        self.window = window
        self.timezone = timezone
        self.data_interval = data_interval
        self.extra_args = list(extra_args)
        self.env = env
        self.report: dict | None = None
        self._proc: subprocess.Popen | None = None

    def command(self, context, report_path: str) -> list[str]:
        cmd = [self.sluice_bin, "run", str(self.pipeline), "--report", report_path, "-q"]
        variables = {k: str(v) for k, v in self.vars.items()}
        if self.data_interval:
            start, end = context.get("data_interval_start"), context.get("data_interval_end")
            if end is not None:
                cmd += ["--as-of", _rfc3339(end)]
                variables.setdefault("data_interval_end", _rfc3339(end))
            if start is not None:
                variables.setdefault("data_interval_start", _rfc3339(start))
        for k, v in variables.items():
            cmd += ["--var", f"{k}={v}"]
        if self.select:
            cmd += ["--select", self.select]
        windows = [self.window] if isinstance(self.window, str) else list(self.window or [])
        for w in windows:
            cmd += ["--window", w]
        if self.timezone and windows:
            cmd += ["--timezone", self.timezone]
        return cmd + [str(a) for a in self.extra_args]

    def execute(self, context):
        with tempfile.TemporaryDirectory(prefix="sluice-airflow-") as tmp:
            report_path = os.path.join(tmp, "report.json")
            cmd = self.command(context, report_path)
            self.log.info("Running %s", " ".join(cmd))
            with subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                self._proc = proc
                for line in proc.stdout:
                    self.log.info("%s", line.rstrip())
            self.report = _read_json(report_path)
        return self.handle(proc.returncode, self.report)

    def on_kill(self):
        """SIGTERM to sluice: it stops its units, records the run interrupted; a rerun resumes."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def handle(self, code: int, report: dict | None):
        summary = _summary(report)
        if code == EXIT_OK:
            self.log.info("sluice: %s", summary)
            return report
        if code == EXIT_USAGE:
            raise AirflowFailException(f"sluice exited 2 (fix the pipeline; not retried): {summary}")
        if code == EXIT_DEFERRED and report and report.get("next_window"):
            when = datetime.fromisoformat(report["next_window"])
            self.log.info("sluice: outside its run window; rescheduled to %s", when.isoformat())
            raise AirflowRescheduleException(reschedule_date=when)
        raise SluiceError(f"sluice exited {code}: {summary}", report)

    def get_openlineage_facets_on_complete(self, task_instance):
        """Output datasets (each model's output folder, with its row and file counts) from the
        run report; input datasets from the `location` of the sources the models read, as
        written in sluice.toml (sources with variables in their location, databases and
        upstream models are left out)."""
        from airflow.providers.common.compat.openlineage.facet import (
            InputDataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage

        report = self.report or {}
        root = _pipeline_dir(self.pipeline)
        sources = _source_locations(root)
        inputs, outputs = {}, []
        for model in report.get("models", []):
            for name in model.get("rows_in_by_source", {}):
                if name in sources:
                    inputs[name] = InputDataset(*_dataset(root, sources[name]))
            files = model.get("outputs") or []
            if model.get("status") == "success" and files:
                namespace, name = _dataset(root, _output_folder(files[0]))
                stats = OutputStatisticsOutputDatasetFacet(rowCount=model.get("rows_out"), fileCount=len(files))
                outputs.append(OutputDataset(namespace, name, outputFacets={"outputStatistics": stats}))
        return OperatorLineage(inputs=list(inputs.values()), outputs=outputs)


def _rfc3339(t) -> str:
    return t.isoformat() if hasattr(t, "isoformat") else str(t)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _summary(report: dict | None) -> str:
    if not report:
        return "no run report written"
    models = report.get("models", [])
    ok = sum(m.get("status") == "success" for m in models)
    text = f"run {report.get('run_id')} {report.get('status')}: {ok} of {len(models)} models ok"
    errors = [report.get("error")] + [f"model '{m['name']}': {m.get('error')}" for m in models if m.get("error")]
    errors = [e for e in errors if e]
    return text + ("; " + "; ".join(errors) if errors else "")


def _pipeline_dir(pipeline: str) -> str:
    path = os.path.abspath(pipeline)
    return os.path.dirname(path) if path.endswith(".toml") else path


def _source_locations(root: str) -> dict[str, str]:
    import tomllib

    try:
        with open(os.path.join(root, "sluice.toml"), "rb") as f:
            sources = tomllib.load(f).get("sources", {})
    except (OSError, ValueError):
        return {}
    return {
        name: s["location"]
        for name, s in sources.items()
        if isinstance(s.get("location"), str) and "${" not in s["location"]
    }


def _output_folder(file: str) -> str:
    """The model's output folder: the file's folder less its Hive partition folders (k=v)."""
    parts = file.rstrip("/").split("/")[:-1]
    while parts and "=" in parts[-1]:
        parts.pop()
    return "/".join(parts) + "/"


def _dataset(root: str, location: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) of a location: `file` and an absolute path for local
    ones, `scheme://authority` and the path for URLs (s3://bucket, gs://bucket, ...)."""
    url = urlsplit(location)
    if url.scheme and url.scheme != "file" and len(url.scheme) > 1:
        return f"{url.scheme}://{url.netloc}", url.path.lstrip("/").rstrip("/")
    path = url.path if url.scheme == "file" else location
    return "file", os.path.normpath(os.path.join(root, path))
