//! The state store: the run ledger (`sluice runs`) and the lock that refuses a second run of
//! a pipeline while one is running, and takes over the lock of a run killed with -9.

use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn runs_are_recorded_in_the_ledger() {
    let dir = pipeline_copy("shop");
    sluice(dir.path(), &["run", "."]).expect(0);
    std::fs::write(
        dir.path().join("queries/daily_revenue.sql"),
        "SELECT nope FROM paid_orders",
    )
    .unwrap();
    sluice(dir.path(), &["run", "."]).expect(2);
    let out = sluice(dir.path(), &["runs", ".", "--json"]).expect(0);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{out:?}");
    // Newest first: the failed one, which never ran a model.
    assert_eq!(runs[0]["status"], "failed");
    assert!(
        runs[0]["error"].as_str().unwrap().contains("nope"),
        "{}",
        runs[0]
    );
    assert_eq!(runs[1]["status"], "success");
    let counts = read_json(&dir.path().join("expected/counts.json"));
    let orders = counts["orders"].as_i64().unwrap();
    let customers = counts["customers"].as_i64().unwrap();
    // rows_in: daily_revenue reads the orders, revenue_by_country orders and customers.
    assert_eq!(runs[1]["rows_in"].as_i64().unwrap(), 2 * orders + customers);
    let table = sluice(dir.path(), &["runs", "."]).expect(0);
    assert!(
        table.stdout.lines().count() == 3 && table.stdout.contains("success"),
        "{}",
        table.stdout
    );
}

/// A pipeline whose one model runs for a while (a large generated range), to overlap runs.
fn slow_pipeline() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("sluice.toml"), "name = \"slow\"\n").unwrap();
    // About 15 s in a debug build: long enough to be seen running, killed well before.
    std::fs::write(
        dir.path().join("queries/slow.sql"),
        "SELECT value % 7 AS k, COUNT(*) AS n, SUM(value) AS s FROM range(100000000) GROUP BY 1",
    )
    .unwrap();
    std::fs::write(dir.path().join("queries/fast.sql"), "SELECT 1 AS one").unwrap();
    dir
}

/// Waits until `sluice runs` shows a run with `status`.
fn wait_for_status(dir: &std::path::Path, status: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let out = sluice(dir, &["runs", ".", "--json"]);
        if out.code == 0
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&out.stdout)
            && let Some(run) = v
                .as_array()
                .and_then(|a| a.iter().find(|r| r["status"] == status))
        {
            return run.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no run became {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_second_run_is_refused_and_a_killed_runs_lock_is_taken_over() {
    let dir = slow_pipeline();
    let mut first = spawn_sluice(dir.path(), &["-q", "run", ".", "--select", "slow"]);
    let running = wait_for_status(dir.path(), "running");
    let run_id = running["run_id"].as_str().unwrap().to_string();

    // A report from an earlier run is at the path: the refused run replaces it whole with
    // one saying why (issue 11: it was left empty).
    let report = dir.path().join("second.json");
    std::fs::write(&report, "{\"an earlier\": \"report\"}").unwrap();
    let second = sluice(
        dir.path(),
        &["run", ".", "--select", "fast", "--report", "second.json"],
    )
    .expect(1);
    let refusal = format!(
        "pipeline 'slow' is already running: run {run_id} (pid {}",
        first.id()
    );
    assert!(second.stderr.contains(&refusal), "{}", second.stderr);
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["status"], "failed", "{written}");
    assert!(
        written["error"].as_str().unwrap().contains(&refusal),
        "{written}"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary report files left: {leftovers:?}"
    );

    // kill -9: the lock stays behind, held by a dead process.
    first.kill().unwrap();
    first.wait().unwrap();
    let third = sluice(dir.path(), &["run", ".", "--select", "fast"]).expect(0);
    assert!(
        third
            .stderr
            .contains(&format!("took over the lock of run {run_id}")),
        "{}",
        third.stderr
    );
    let out = sluice(dir.path(), &["runs", ".", "--json"]).expect(0);
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let killed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["run_id"] == run_id.as_str())
        .unwrap();
    assert_eq!(killed["status"], "interrupted");
    assert_eq!(runs[0]["status"], "success");
}

/// Two "containers" on one host sharing the pipeline folder, each with its own PID namespace:
/// the second cannot see the first's pid, and used to take its lock over as dead (and resume
/// its run id). The OS lock next to the state database decides now: the second is refused
/// until the first ends, and then takes it at once.
#[test]
fn a_run_in_another_pid_namespace_keeps_the_pipeline() {
    if !std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: cannot create a PID namespace here (needs root and unshare)");
        return;
    }
    let dir = slow_pipeline();
    let mut first = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .arg(env!("CARGO_BIN_EXE_sluice"))
        .args(["-q", "run", ".", "--select", "slow"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let running = wait_for_status(dir.path(), "running");
    let run_id = running["run_id"].as_str().unwrap().to_string();
    // Its pid as recorded is its namespace's (1 or 2), which is another process here.
    let second = sluice(dir.path(), &["run", ".", "--select", "slow"]).expect(1);
    assert!(
        second
            .stderr
            .contains(&format!("pipeline 'slow' is already running: run {run_id}")),
        "{}",
        second.stderr
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // (unshare's child dies with it: --kill-child.)
    let start = Instant::now();
    loop {
        let third = sluice(dir.path(), &["run", ".", "--select", "fast"]);
        if third.code == 0 {
            assert!(
                third
                    .stderr
                    .contains(&format!("took over the lock of run {run_id}")),
                "{}",
                third.stderr
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            third.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
