"""Airflow test driver: `python run_test.py SLUICE_BIN SCRATCH_DIR` with the orch-airflow
venv's python (scripts/ensure-orchestrator-venvs). Prints one JSON line {"ok", "checks", "info"}
and exits 0 when every check passed.

1. `airflow db migrate`, then `airflow dags test sluice_example` (the example DAG) on a real
   pipeline: the task succeeds, its XCom is the run report (status success, rows_out = the
   days the driver counts in the generated rows), the output Parquet holds the driver's
   per-day counts and the data interval's end passed as a --var, and Airflow's OpenLineage
   integration wrote the task's COMPLETE event with the output folder and its row count.
2. `airflow dags test sluice_failures` (tests/dags/): a run started outside its window (exit
   75) is rescheduled to the report's next_window and succeeds then, in the same try; a broken
   pipeline (exit 2) fails after one try despite retries=2; a failing run (exit 1) is tried 3
   times.
   Tries are counted by Airflow (try_number) and by a wrapper of the sluice binary.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "testing"))
import sluice_fixture as fx  # noqa: E402

real_sluice, scratch = os.path.abspath(sys.argv[1]), Path(sys.argv[2]).resolve()
checks = fx.Checks()
scratch.mkdir(parents=True, exist_ok=True)
sluice, calls_log = fx.counting_sluice(real_sluice, scratch)
pipelines = fx.make_pipelines(scratch / "pipelines")
home = scratch / "airflow"
(home / "dags").mkdir(parents=True)
shutil.copy(HERE.parent / "example_dags" / "sluice_example.py", home / "dags")
shutil.copy(HERE / "dags" / "sluice_failures.py", home / "dags")
lineage = scratch / "lineage.jsonl"
bindir = str(Path(sys.executable).parent)
env = dict(
    os.environ,
    PATH=bindir + os.pathsep + os.environ.get("PATH", ""),
    AIRFLOW_HOME=str(home),
    AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__OPENLINEAGE__TRANSPORT=json.dumps({"type": "file", "log_file_path": str(lineage), "append": True}),
    AIRFLOW__OPENLINEAGE__NAMESPACE="sluice-test",
    SLUICE_BIN=sluice,
    SLUICE_EXAMPLE_PIPELINE=str(pipelines["good"]),
    SLUICE_TEST_PIPELINES=str(scratch / "pipelines"),
)


def airflow(*args, **extra):
    t = time.monotonic()
    p = subprocess.run([f"{bindir}/airflow", *args], env={**env, **extra}, capture_output=True, text=True)
    (scratch / f"airflow-{args[0]}-{args[-1]}.log").write_text(p.stdout + p.stderr)
    checks.info[f"seconds: airflow {' '.join(args)}"] = round(time.monotonic() - t, 1)
    return p.returncode


def db(sql, *params):
    with sqlite3.connect(home / "airflow.db") as c:
        return c.execute(sql, params).fetchall()


def task(dag, task_id):
    (state, tries, ti_id), = db("SELECT state, try_number, id FROM task_instance WHERE dag_id=? AND task_id=?", dag, task_id)
    return state, tries, ti_id


checks.equal("airflow db migrate exits 0", airflow("db", "migrate"), 0)

# 1. The example DAG.
checks.equal("dags test sluice_example exits 0", airflow("dags", "test", "sluice_example", "2024-01-13"), 0)
state, tries, _ = task("sluice_example", "orders_daily")
checks.equal("example task succeeded on its first try", (state, tries), ("success", 1))
xcom = db("SELECT value FROM xcom WHERE dag_id='sluice_example' AND task_id='orders_daily' AND key='return_value'")
report = json.loads(xcom[0][0]) if xcom else {}
report = json.loads(report) if isinstance(report, str) else report
want = fx.expected()
model = (report.get("models") or [{}])[0]
checks.equal("XCom report: status", report.get("status"), "success")
checks.equal("XCom report: rows_out = days the driver counts", model.get("rows_out"), len(want))
checks.equal("XCom report: rows_in = generated rows", model.get("rows_in"), fx.ROWS)
out = fx.read_output(pipelines["good"])
checks.equal("output Parquet: orders per day", {d: r["orders"] for d, r in out.items()}, want)
(interval_end,), = db("SELECT data_interval_end FROM dag_run WHERE dag_id='sluice_example'")
interval_end = datetime.fromisoformat(interval_end).replace(tzinfo=timezone.utc)
checks.equal("output Parquet: data_interval_end var", {r["interval_end"] for r in out.values()},
             {interval_end.isoformat()})
events = [json.loads(line) for line in lineage.read_text().splitlines()] if lineage.exists() else []
complete = [e for e in events if e.get("eventType") == "COMPLETE" and e["job"]["name"].endswith("orders_daily")]
outputs = complete[0].get("outputs", []) if complete else []
checks.equal("OpenLineage COMPLETE: output dataset",
             [(o["namespace"], o["name"]) for o in outputs], [("file", str(pipelines["good"] / "out" / "daily"))])
checks.equal("OpenLineage COMPLETE: output rowCount",
             [o.get("outputFacets", {}).get("outputStatistics", {}).get("rowCount") for o in outputs], [len(want)])
checks.equal("OpenLineage COMPLETE: input dataset",
             [(i["namespace"], i["name"]) for i in (complete[0].get("inputs", []) if complete else [])],
             [("file", str(pipelines["good"] / "data"))])

# 2. A deferral and failures. The window opens at a whole minute at least 50 s from now:
# after Airflow has started and tried the late task once (about 10 s on an idle machine).
window, opens = fx.window_opening_in(50)
checks.info["late window"] = window
code = airflow("dags", "test", "sluice_failures", "2024-01-13", SLUICE_TEST_WINDOW=window)
checks.equal("dags test sluice_failures exits 1 (two tasks fail)", code, 1)
state, tries, _ = task("sluice_failures", "broken")
checks.equal("broken (exit 2): failed after one try despite retries=2", (state, tries), ("failed", 1))
checks.equal("broken: sluice ran once", len(fx.calls(calls_log, pipelines["broken"])), 1)
state, tries, _ = task("sluice_failures", "flaky")
checks.equal("flaky (exit 1): failed after 1 + 2 retries", (state, tries), ("failed", 3))
checks.equal("flaky: sluice ran 3 times", len(fx.calls(calls_log, pipelines["flaky"])), 3)
state, tries, ti_id = task("sluice_failures", "late")
checks.equal("late (exit 75): succeeded once its window opened, as one try", (state, tries), ("success", 1))
rescheduled = [datetime.fromisoformat(r[0]).replace(tzinfo=timezone.utc)
               for r in db("SELECT reschedule_date FROM task_reschedule WHERE ti_id=?", ti_id)]
checks.equal("late: rescheduled once, to the window's opening", rescheduled, [opens])
started = fx.calls(calls_log, pipelines["late"])
checks.check("late: sluice ran twice, before the window opened and once it had",
             len(started) == 2 and started[0] < opens <= started[1],
             {"calls": [t.isoformat() for t in started], "opens": opens.isoformat()})
checks.equal("late: output Parquet: orders per day", {d: r["orders"] for d, r in fx.read_output(pipelines["late"]).items()}, want)
checks.finish()
