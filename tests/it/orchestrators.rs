//! The orchestrator integrations (`integrations/`): each test makes its orchestrator's venv
//! with `scripts/ensure-orchestrator-venvs` and runs that orchestrator's test driver
//! (`integrations/<name>/tests/run_test.py`) with the sluice binary under test. The driver runs
//! a generated pipeline through the orchestrator (a success, a broken pipeline, a failing run, a
//! run outside its window) and prints its checks as one JSON line; every check must pass, and
//! the checks each test names must be among them (a driver cannot pass by checking less).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The venv of `name`, made (once per machine) by `scripts/ensure-orchestrator-venvs`.
fn venv(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/ensure-orchestrator-venvs");
    let out = Command::new("bash")
        .arg(&script)
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = format!("{name}=");
    match stdout.lines().find_map(|l| l.strip_prefix(&prefix)) {
        Some(path) if out.status.success() => PathBuf::from(path.trim()),
        _ => panic!(
            "bash {} {name} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs the driver of `name` and returns its checks, after asserting they all passed and
/// include `required` (names, or their beginnings).
fn drive(name: &str, required: &[&str]) -> serde_json::Value {
    let python = venv(name).join("bin/python");
    let driver = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("integrations")
        .join(name)
        .join("tests/run_test.py");
    let scratch = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let out = Command::new(&python)
        .arg(&driver)
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .arg(scratch.path())
        .current_dir(scratch.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let Some(result) = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    else {
        let kept = scratch.keep();
        panic!(
            "the {name} driver printed no result ({}; its files are kept in {}):\n{stdout}\n--- stderr\n{stderr}",
            out.status,
            kept.display()
        )
    };
    let checks = result["checks"].as_object().cloned().unwrap_or_default();
    let failed: Vec<String> = checks
        .iter()
        .filter(|(_, c)| c["ok"] != true)
        .map(|(n, c)| format!("{n}: {}", c["detail"]))
        .collect();
    let missing: Vec<&&str> = required
        .iter()
        .filter(|r| !checks.keys().any(|k| k.starts_with(**r)))
        .collect();
    if !failed.is_empty() || !missing.is_empty() || result["ok"] != true || !out.status.success() {
        let kept = scratch.keep();
        let tail: String = stderr
            .chars()
            .rev()
            .take(6000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        panic!(
            "the {name} driver failed ({}; its files are kept in {}):\nfailed checks: {failed:#?}\n\
             missing checks: {missing:?}\n--- stderr (end)\n{tail}",
            out.status,
            kept.display()
        );
    }
    eprintln!(
        "{name}: {} checks passed in {:.0?}; {}",
        checks.len(),
        start.elapsed(),
        result["info"]
    );
    result
}

/// SluiceOperator under `airflow dags test`: the report in XCom, the data interval as a
/// variable, OpenLineage through Airflow's integration, exit 2 not retried, exit 1 retried,
/// exit 75 rescheduled to the window's opening and run then.
#[test]
fn airflow_runs_a_pipeline_with_sluice_operator() {
    drive(
        "airflow",
        &[
            "XCom report: rows_out",
            "output Parquet: orders per day",
            "output Parquet: data_interval_end var",
            "OpenLineage COMPLETE: output rowCount",
            "broken (exit 2)",
            "flaky (exit 1)",
            "late: rescheduled once",
            "late: sluice ran twice",
        ],
    );
}

/// The Prefect flow against a local server: the report returned, exit 2 not retried, exit 1
/// retried; served as a deployment, exit 75 schedules a new run at the window's opening.
#[test]
fn prefect_runs_a_pipeline_as_a_flow() {
    drive(
        "prefect",
        &[
            "good: returned report: rows_out",
            "good: output Parquet: orders per day",
            "broken: its task failed after 1 run",
            "flaky: its task failed after 3 run",
            "late: the flow run ends Completed, named Deferred",
            "late: one more flow run of the deployment, Scheduled at the window's opening",
        ],
    );
}

/// The Temporal workflow on the time-skipping test server: the report returned, a heartbeat
/// per work unit, exit 2 non-retryable, exit 1 retried, exit 75 retried when the window opens.
#[test]
fn temporal_runs_a_pipeline_as_a_workflow() {
    drive(
        "temporal",
        &[
            "good: returned report: rows_out",
            "good: output Parquet: orders per day",
            "good: one heartbeat per unit",
            "broken: 1 attempt(s) in the history",
            "flaky: 3 attempt(s) in the history",
            "late: attempt 2 started next_retry_delay after the first",
        ],
    );
}
