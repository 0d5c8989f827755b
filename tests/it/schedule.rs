//! `sluice schedule`: runs on a cron in a time zone, units only inside run windows (a run
//! paused at a window's end resumes at the next, its output that of an uninterrupted run),
//! missed runs made up as `catch_up` says, SIGTERM drains then cancels, two schedulers never
//! run a pipeline at once, units across pipelines under `--max-concurrent-units`, and
//! `/metrics` agreeing with the reports. The scheduler's clock is simulated (`--clock-start`,
//! `--clock-speed`): a night passes in seconds, while the runs do real work.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::s3::{free_port, http_request};
use crate::support::*;

/// A pipeline `nightly` in `dir`: `days` days of 250 events each (amounts from a seeded
/// generator), a model batched by day (one unit at a time), and `schedule` as its
/// `[schedule]`. Returns, per day, the count and sum the model must output, computed here.
fn nightly(dir: &Path, days: u32, schedule: &str) -> BTreeMap<String, (u64, u64)> {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    let mut want: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut csv = String::from("id,ts,amount\n");
    let mut seed: u64 = 0x5eed;
    for i in 0..days * 250 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let day = i % days;
        let amount = (seed >> 33) % 1000;
        let date = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap()
            + chrono::Duration::days(i64::from(day));
        csv.push_str(&format!("{i},{date}T{:02}:00:00Z,{amount}\n", i % 24));
        let e = want.entry(date.to_string()).or_default();
        e.0 += 1;
        e.1 += amount;
    }
    std::fs::write(dir.join("data/events.csv"), csv).unwrap();
    std::fs::write(
        dir.join("sluice.toml"),
        format!(
            "name = \"nightly\"\n\
             [sources.events]\nlocation = \"data/events.csv\"\nevent_time = \"ts\"\n\
             [models.daily]\nsink = {{ location = \"out/daily/\", format = \"parquet\" }}\n\
             [models.daily.batches]\nsize = \"day\"\nmax_concurrent_units = 1\n\
             [schedule]\n{schedule}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("queries/daily.sql"),
        "SELECT CAST(ts AS DATE) AS day, count(*) AS n, sum(amount) AS total FROM events \
         GROUP BY 1",
    )
    .unwrap();
    want
}

/// The model's output, per day: (count, sum), read with plain DataFusion.
fn output(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let rows = tokio_block(output_rows(dir, "daily", &["day", "n", "total"]));
    let mut out = BTreeMap::new();
    for r in rows {
        let previous = out.insert(r[0].clone(), (r[1].parse().unwrap(), r[2].parse().unwrap()));
        assert!(previous.is_none(), "day {} is in the output twice", r[0]);
    }
    out
}

fn tokio_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `sluice -v schedule . ARGS` in `dir`, expecting exit 0.
#[track_caller]
fn schedule(dir: &Path, args: &[&str]) -> Run {
    let mut all = vec!["-v", "schedule", "."];
    all.extend_from_slice(args);
    sluice(dir, &all).expect(0)
}

/// The reports the scheduler wrote into `dir/reports`, oldest first.
fn reports(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(entries) = std::fs::read_dir(dir.join("reports")) else {
        return Vec::new();
    };
    // (Not the temporary file a report is written to before it is renamed.)
    let mut all: Vec<serde_json::Value> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.ends_with(".json") && !name.starts_with('.')
        })
        .map(|p| read_json(&p))
        .collect();
    all.sort_by_key(|r| r["run_id"].as_str().unwrap().to_string());
    all
}

/// `n` five-minute windows, ten minutes apart, from 01:00 (at most 138: to 23:55).
fn windows(n: u32) -> String {
    let w: Vec<String> = (0..n)
        .map(|i| {
            let from = 60 + i * 10;
            format!(
                "\"{:02}:{:02}-{:02}:{:02}\"",
                from / 60,
                from % 60,
                (from + 5) / 60,
                (from + 5) % 60
            )
        })
        .collect();
    format!("[{}]", w.join(", "))
}

#[test]
fn a_run_paused_at_its_windows_end_resumes_at_the_next_and_equals_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = nightly(
        d,
        120,
        &format!(
            "cron = \"0 1 * * *\"\ntimezone = \"Europe/Berlin\"\nwindow = {}",
            windows(138)
        ),
    );
    // 00:55 in Berlin; a virtual minute is 0.2 s, so a window lasts a second, less than the
    // 120 units take (and more than a resume needs to start one); windows go on all day.
    let (mut child, lines) = spawn_schedule(
        d,
        &[
            "--clock-start",
            "2026-01-10T23:55:00Z",
            "--clock-speed",
            "300",
            "--report-dir",
            "reports",
        ],
    );
    let start = Instant::now();
    while !reports(d).iter().any(|r| r["status"] == "success") {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no success: {:?}",
            reports(d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    sigterm(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let log: Vec<String> = lines.try_iter().collect();
    let log = log.join("\n");
    let pauses = log.matches("the run window closed").count();
    assert!(pauses >= 1, "no pause:\n{log}");
    assert!(log.contains("resuming run"), "{log}");
    let reports = reports(d);
    assert_eq!(
        reports.len(),
        1,
        "one run, resumed under its id: {reports:?}"
    );
    let report = &reports[0];
    assert_eq!(report["status"], "success", "{report}");
    let model = report_model(report, "daily");
    assert_eq!(model["units_done"], 120, "{model}");
    assert_eq!(output(d), want);
    // The same pipeline run at once, without windows, writes the same rows.
    let plain = tempfile::tempdir().unwrap();
    nightly(plain.path(), 120, "cron = \"0 1 * * *\"");
    sluice(plain.path(), &["run", "."]).expect(0);
    assert_eq!(output(plain.path()), output(d));
}

#[test]
fn missed_runs_are_made_up_as_catch_up_says() {
    for (policy, runs) in [("latest", 1), ("all", 4), ("none", 0)] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        nightly(
            d,
            2,
            &format!("cron = \"0 * * * *\"\ncatch_up = \"{policy}\""),
        );
        // Up at 01:00 for one run, then down until 05:30: 02:00 to 05:00 were missed.
        let first = [
            "--clock-start",
            "2026-01-11T00:59:00Z",
            "--clock-speed",
            "60",
            "--until",
            "2026-01-11T01:00:30Z",
            "--report-dir",
            "first",
        ];
        schedule(d, &first);
        assert_eq!(std::fs::read_dir(d.join("first")).unwrap().count(), 1);
        let second = [
            "--clock-start",
            "2026-01-11T05:30:00Z",
            "--clock-speed",
            "60",
            "--until",
            "2026-01-11T05:45:00Z",
            "--report-dir",
            "reports",
        ];
        let run = schedule(d, &second);
        let made_up = reports(d);
        assert_eq!(made_up.len(), runs, "{policy}: {made_up:?}\n{}", run.stderr);
        assert!(
            made_up.iter().all(|r| r["status"] == "success"),
            "{made_up:?}"
        );
        // `all` runs each with its scheduled time as the clock.
        let db = rusqlite::Connection::open(d.join(".sluice/state.db")).unwrap();
        let mut stmt = db
            .prepare("SELECT as_of FROM runs ORDER BY started_at")
            .unwrap();
        let clocks: Vec<Option<String>> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        if policy == "all" {
            let made_up: Vec<String> = clocks[1..]
                .iter()
                .map(|c| {
                    chrono::DateTime::parse_from_rfc3339(c.as_deref().unwrap())
                        .unwrap()
                        .format("%H:%M")
                        .to_string()
                })
                .collect();
            assert_eq!(made_up, ["02:00", "03:00", "04:00", "05:00"]);
        }
    }
}

/// Starts `sluice -v --progress json schedule . ARGS` in `dir`: the child, and its output
/// lines (progress and log) as they come.
fn spawn_schedule(
    dir: &Path,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["-v", "--progress", "json", "schedule", "."])
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Progress lines (stdout) and the log (stderr), as they come.
    let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
    let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
    for stream in [stdout, stderr] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    (child, rx)
}

/// Waits for a line containing `needle`, keeping the lines seen in `seen`.
#[track_caller]
fn wait_for(lines: &std::sync::mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return;
                }
            }
            Err(e) => panic!("no line with {needle:?} ({e}):\n{}", seen.join("\n")),
        }
    }
}

fn sigterm(child: &std::process::Child) {
    // SAFETY: kill only sends a signal to the child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
}

#[test]
fn sigterm_drains_or_cancels_the_run_and_the_next_one_resumes_it_publishing_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = nightly(d, 120, "cron = \"0 1 * * *\"");
    // Night 1: SIGTERM with no grace: running units are cancelled; exit 0.
    // Night 2: SIGTERM with a long grace: the running unit finishes, nothing more starts.
    // Night 3: the run completes.
    for (night, grace, status) in [
        ("2026-01-11", "0s", Some("interrupted")),
        ("2026-01-12", "10m", Some("paused")),
        ("2026-01-13", "0s", None),
    ] {
        let start = format!("{night}T00:59:57Z");
        let (mut child, lines) = spawn_schedule(
            d,
            &[
                "--clock-start",
                &start,
                "--grace",
                grace,
                "--report-dir",
                "reports",
            ],
        );
        let mut seen = Vec::new();
        wait_for(&lines, "running model=daily", &mut seen);
        let Some(status) = status else {
            wait_for(&lines, "next run", &mut seen);
            sigterm(&child);
            assert_eq!(child.wait().unwrap().code(), Some(0));
            break;
        };
        wait_for(&lines, "\"event\":\"unit_done\"", &mut seen);
        let signalled = Instant::now();
        sigterm(&child);
        let exit = child.wait().unwrap();
        assert_eq!(exit.code(), Some(0), "{night}: {}", seen.join("\n"));
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "{night}: not drained"
        );
        let report = reports(d).pop().unwrap();
        assert_eq!(report["status"], status, "{night}: {report}");
        let model = report_model(&report, "daily");
        let done = model["units_done"].as_u64().unwrap();
        assert!(done < 120, "{night}: the run was not stopped: {model}");
        // `sluice status` names the run the next one resumes, and when that is.
        let noon = format!("{night}T12:00:00Z");
        let st = sluice(d, &["status", ".", "--json", "--as-of", &noon]).expect(0);
        let st: serde_json::Value = serde_json::from_str(&st.stdout).unwrap();
        assert_eq!(st["unfinished_run"]["run_id"], report["run_id"], "{st}");
        assert_eq!(st["unfinished_run"]["status"], status, "{st}");
        assert_eq!(
            st["schedule"]["last_scheduled"],
            format!("{night}T01:00:00+00:00")
        );
        let tomorrow = chrono::NaiveDate::parse_from_str(night, "%Y-%m-%d")
            .unwrap()
            .succ_opt()
            .unwrap();
        assert_eq!(
            st["schedule"]["next_run"],
            format!("{tomorrow}T01:00:00+00:00")
        );
    }
    let all = reports(d);
    assert_eq!(all.len(), 1, "one run, resumed twice: {all:?}");
    assert_eq!(all[0]["status"], "success", "{}", all[0]);
    // Each day once, with its rows once: nothing was published twice.
    assert_eq!(output(d), want);
}

#[test]
fn two_schedulers_never_run_a_pipeline_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = nightly(d, 20, "cron = \"0 1 * * *\"");
    let args = |reports: &'static str| {
        vec![
            "--clock-start",
            "2026-01-11T00:59:55Z",
            "--until",
            "2026-01-11T01:00:25Z",
            "--report-dir",
            reports,
        ]
    };
    let (mut a, a_lines) = spawn_schedule(d, &args("a"));
    let (mut b, b_lines) = spawn_schedule(d, &args("b"));
    for (child, lines) in [(&mut a, a_lines), (&mut b, b_lines)] {
        let code = child.wait().unwrap().code();
        let output: Vec<String> = lines.try_iter().collect();
        assert_eq!(code, Some(0), "{}", output.join("\n"));
    }
    let mut all: Vec<serde_json::Value> = ["a", "b"]
        .iter()
        .flat_map(|r| std::fs::read_dir(d.join(r)).unwrap())
        .map(|e| read_json(&e.unwrap().path()))
        .collect();
    all.sort_by_key(|r| r["status"].as_str().unwrap().to_string());
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[0]["status"], "failed", "{all:?}");
    let refused = all[0]["error"].as_str().unwrap();
    assert!(refused.contains("is already running"), "{refused}");
    assert_eq!(all[1]["status"], "success", "{all:?}");
    assert_eq!(output(d), want);
}

#[test]
fn units_of_all_pipelines_share_max_concurrent_units() {
    let root = tempfile::tempdir().unwrap();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    for (d, name) in [(&a, "a"), (&b, "b")] {
        nightly(d, 12, "cron = \"0 1 * * *\"");
        edit_file(&d.join("sluice.toml"), |t| {
            t.replace("name = \"nightly\"", &format!("name = \"{name}\""))
                .replace("max_concurrent_units = 1", "max_concurrent_units = 4")
        });
    }
    let run = sluice(
        root.path(),
        &[
            "schedule",
            "a",
            "b",
            "--max-concurrent-units",
            "1",
            "--clock-start",
            "2026-01-11T00:59:55Z",
            "--until",
            "2026-01-11T01:00:35Z",
        ],
    )
    .expect(0);
    let mut spans = Vec::new();
    for d in [&a, &b] {
        let db = rusqlite::Connection::open(d.join(".sluice/state.db")).unwrap();
        let mut stmt = db
            .prepare("SELECT started_at, finished_at, status FROM units")
            .unwrap();
        let rows: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), 12, "{}", run.stderr);
        for (s, f, status) in rows {
            assert_eq!(status, "done");
            let t = |x: &str| chrono::DateTime::parse_from_rfc3339(x).unwrap();
            spans.push((t(&s), t(&f)));
        }
    }
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two units ran at once: {:?} and {:?}",
            w[0],
            w[1]
        );
    }
}

/// The samples of a metrics text (prometheus_client's parser): (name, labels) → value.
fn samples(dir: &Path, text: &str) -> BTreeMap<(String, String), f64> {
    let file = dir.join("scraped.prom");
    std::fs::write(&file, text).unwrap();
    crate::metrics::samples(&file)
        .into_iter()
        .map(|(n, l, v)| ((n, l), v))
        .collect()
}

#[test]
fn metrics_are_served_during_and_after_scheduled_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nightly(d, 40, "cron = \"0 * * * *\"");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Runs at 01:00 and 02:00 (a virtual hour is 18 s), then waits; stopped by SIGTERM.
    // (At 6 s an hour, runs of 5 s on a loaded machine left the 03:00 run starting before
    // the SIGTERM, and a third report.)
    let (mut child, lines) = spawn_schedule(
        d,
        &[
            "--listen",
            &listen,
            "--clock-start",
            "2026-01-11T00:50:00Z",
            "--clock-speed",
            "200",
            "--report-dir",
            "reports",
        ],
    );
    let get = |path: &str| loop {
        if let Ok(r) = http_request(port, "GET", path, Duration::from_secs(5)) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (status, health) = get("/healthz");
    assert_eq!(status, 200);
    assert!(health.ends_with("\r\n\r\nok\n"), "{health}");
    assert_eq!(get("/nothing").0, 404);
    let key = |n: &str, l: &str| (n.to_string(), l.to_string());
    let p = "pipeline=nightly";
    // During the first run.
    let mut seen = Vec::new();
    wait_for(&lines, "running model=daily", &mut seen);
    let body = |response: (u16, String)| {
        assert_eq!(response.0, 200, "{}", response.1);
        response.1.split_once("\r\n\r\n").unwrap().1.to_string()
    };
    let during = samples(d, &body(get("/metrics")));
    assert_eq!(
        during.get(&key("sluice_running", p)),
        Some(&1.0),
        "{during:?}"
    );
    assert!(
        during.contains_key(&key("sluice_next_run_timestamp_seconds", p)),
        "{during:?}"
    );
    // After the second.
    let start = Instant::now();
    let after = loop {
        let s = samples(d, &body(get("/metrics")));
        if s.get(&key("sluice_runs_total", &format!("{p},status=success"))) == Some(&2.0) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "{s:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    sigterm(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    drop(lines);
    let reports = reports(d);
    assert_eq!(reports.len(), 2, "{reports:?}");
    let latest = &reports[1];
    assert_eq!(after.get(&key("sluice_running", p)), Some(&0.0));
    assert_eq!(after.get(&key("sluice_run_seconds_count", p)), Some(&2.0));
    assert_eq!(
        after.get(&key("sluice_run_status", &format!("{p},status=success"))),
        Some(&1.0)
    );
    let model = report_model(latest, "daily");
    for (kind, field) in [("in", "rows_in"), ("out", "rows_out")] {
        assert_eq!(
            after.get(&key(
                "sluice_model_rows",
                &format!("kind={kind},model=daily,{p}")
            )),
            Some(&(model[field].as_u64().unwrap() as f64)),
            "{kind}"
        );
    }
    assert_eq!(
        after.get(&key(
            "sluice_model_units",
            &format!("model=daily,{p},state=done")
        )),
        Some(&40.0)
    );
    let finished = chrono::DateTime::parse_from_rfc3339(latest["finished_at"].as_str().unwrap())
        .unwrap()
        .timestamp_micros() as f64
        / 1e6;
    assert_eq!(
        after.get(&key("sluice_last_success_timestamp_seconds", p)),
        Some(&finished)
    );
}

#[test]
fn progress_as_json_lines_counts_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nightly(d, 12, "cron = \"0 1 * * *\"");
    let (run, report) = run_with_report(d, &["--progress", "json"], 0);
    let events: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(events[0]["event"], "model_started", "{events:?}");
    assert_eq!(events[0]["units"], 12);
    let done: Vec<u64> = events
        .iter()
        .filter(|e| e["event"] == "unit_done")
        .map(|e| e["done"].as_u64().unwrap())
        .collect();
    assert_eq!(done, (1..=12).collect::<Vec<u64>>());
    let last = events.last().unwrap();
    assert_eq!(last["event"], "model_finished");
    assert_eq!(last["status"], "success");
    assert_eq!(last["rows_out"], report_model(&report, "daily")["rows_out"]);
}

#[test]
fn a_bad_schedule_is_refused_naming_its_file_and_line() {
    for (schedule, key, message) in [
        ("cron = \"61 * * * *\"", "cron", "not a cron expression"),
        ("cron = \"0 0 30 2 *\"", "cron", "never fires"),
        (
            "cron = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"",
            "timezone",
            "unknown time zone",
        ),
        (
            "cron = \"0 2 * * *\"\nwindow = [\"01:00-05:00\", \"04:00-06:00\"]",
            "window",
            "overlap",
        ),
        (
            "cron = \"0 2 * * *\"\nwindow = \"01:00-01:00\"",
            "window",
            "empty window",
        ),
        (
            "cron = \"0 2 * * *\"\non_window_end = \"pause\"",
            "on_window_end",
            "no `window`",
        ),
        ("window = \"01:00-05:00\"", "[schedule]", "needs `cron`"),
        (
            "cron = \"0 2 * * *\"\ncatch_up = \"some\"",
            "catch_up",
            "catch_up",
        ),
        (
            "cron = \"0 2 * * *\"\nmax_run_time = \"forever\"",
            "max_run_time",
            "not a duration",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        nightly(d, 2, schedule);
        let text = std::fs::read_to_string(d.join("sluice.toml")).unwrap();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} =")) || l == key)
            .unwrap()
            + 1;
        for command in ["plan", "schedule"] {
            let run = sluice(d, &[command, "."]).expect(2);
            assert!(run.stderr.contains(message), "{schedule}: {}", run.stderr);
            assert!(run.stderr.contains("sluice.toml"), "{}", run.stderr);
            assert!(
                run.stderr.contains(&format!("sluice.toml:{line}:")),
                "{schedule}: line {line}: {}",
                run.stderr
            );
        }
    }
}

#[test]
fn run_window_is_in_the_schedules_zone_unless_timezone_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nightly(d, 2, "cron = \"0 1 * * *\"\ntimezone = \"Europe/Berlin\"");
    // 00:30 UTC is 01:30 in Berlin: inside 01:00-02:00 there, outside it in UTC.
    let at = ["--window", "01:00-02:00", "--now", "2026-01-10T00:30:00Z"];
    run_with_report(d, &at, 0);
    let mut utc = at.to_vec();
    utc.extend_from_slice(&["--timezone", "UTC"]);
    let (_, report) = run_with_report(d, &utc, 75);
    assert_eq!(report["status"], "deferred");
    assert_eq!(report["next_window"], "2026-01-10T01:00:00+00:00");
}

#[test]
fn a_run_waiting_for_its_window_is_made_up_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let want = nightly(d, 4, "cron = \"0 22 * * *\"\nwindow = \"01:00-05:00\"");
    // Up at 22:00: the run waits for 01:00; the scheduler is stopped at 22:30.
    let first = schedule(
        d,
        &[
            "--clock-start",
            "2026-01-10T21:50:00Z",
            "--clock-speed",
            "600",
            "--until",
            "2026-01-10T22:30:00Z",
            "--report-dir",
            "reports",
        ],
    );
    assert!(
        first.stderr.contains("waiting for the run window"),
        "{}",
        first.stderr
    );
    assert!(reports(d).is_empty());
    // Back at 23:00: the 22:00 run is made up, inside the window.
    schedule(
        d,
        &[
            "--clock-start",
            "2026-01-10T23:00:00Z",
            "--clock-speed",
            "3600",
            "--until",
            "2026-01-11T04:30:00Z",
            "--report-dir",
            "reports",
        ],
    );
    let all = reports(d);
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["status"], "success");
    assert_eq!(output(d), want);
}

/// A setting no run could start with stops the scheduler at once, before any run, instead of
/// failing every run it starts.
#[test]
fn a_bad_engine_setting_stops_the_scheduler_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    nightly(d, 2, "cron = \"* * * * *\"");
    let run = sluice(
        d,
        &[
            "schedule",
            ".",
            "--set",
            "datafusion.execution.no_such_option=1",
        ],
    )
    .expect(2);
    assert!(
        run.stderr.contains("datafusion.execution.no_such_option"),
        "{}",
        run.stderr
    );
    assert!(reports(d).is_empty() && !d.join("out").exists());
}
