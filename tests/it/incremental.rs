//! Incremental models and late data, on the real binary: the day-1 / day-2 timeline of the
//! issue with exact numbers, `--no-reconcile` then `reconcile`, `--full-refresh`, backfills,
//! rewritten and deleted files, a changing dimension, `on_late_beyond_window = "fail"`, a
//! kill during a reconcile, and the bad input refused with exit 2.
//!
//! The oracle is independent of sluice: the test generates every row itself, so it knows each
//! day's count and sum, and which files each period should have been computed from.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::*;

/// One generated events file: `(id, amount, ts)` rows.
struct Events(Vec<(u64, u64, String)>);

impl Events {
    /// `n` rows on 2024-01-`day`, ids from `first`, amount = id % 97.
    fn day(day: u32, n: u64, first: u64) -> Events {
        Events(
            (0..n)
                .map(|i| {
                    let id = first + i;
                    let ts = format!("2024-01-{day:02} {:02}:{:02}:00", (i / 60) % 24, i % 60);
                    (id, id % 97, ts)
                })
                .collect(),
        )
    }

    fn write(&self, path: &Path) {
        let mut text = String::from("id,amount,ts\n");
        for (id, amount, ts) in &self.0 {
            text.push_str(&format!("{id},{amount},{ts}\n"));
        }
        std::fs::write(path, text).unwrap();
    }
}

/// The expected output for these files: per day (`2024-01-DD`), `[day, count, sum]`.
fn expected<'a>(files: impl IntoIterator<Item = &'a Events>) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for f in files {
        for (_, amount, ts) in &f.0 {
            let e = out.entry(ts[..10].to_string()).or_default();
            e.0 += 1;
            e.1 += amount;
        }
    }
    out
}

/// The published output, read back by sluice's own reader: per day, (count, sum).
fn published_days(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let run = sluice(
        dir,
        &[
            "sql",
            "-e",
            "SELECT CAST(day AS VARCHAR) AS day, n, amount FROM t ORDER BY day",
            "--table",
            "t=out/daily/",
            "--format",
            "csv",
        ],
    )
    .expect(0);
    run.stdout
        .lines()
        .filter(|l| l.starts_with("| 2024"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (
                cells[1].to_string(),
                (cells[2].parse().unwrap(), cells[3].parse().unwrap()),
            )
        })
        .collect()
}

const TOML: &str = r#"name = "events"
[sources.events]
location = "data/"
format = "csv"
event_time = "ts"

[models.daily]
materialized = "incremental"

[models.daily.batches]
size = "day"
start = "2024-01-01"
late_window = "48h"
"#;

const DAILY: &str =
    "SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount) AS amount FROM events GROUP BY 1";

/// A pipeline with `files` in `data/`, the model `daily` and `toml`.
fn pipeline(toml: &str, files: &[(&str, &Events)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    std::fs::write(dir.path().join("queries/daily.sql"), DAILY).unwrap();
    for (name, events) in files {
        events.write(&dir.path().join("data").join(name));
    }
    dir
}

/// Days 1–10, 100 rows each.
fn day_one() -> Vec<(String, Events)> {
    (1..=10)
        .map(|d| {
            (
                format!("events-{d:02}.csv"),
                Events::day(d, 100, u64::from(d) * 1000),
            )
        })
        .collect()
}

/// What arrives by day 13: days 11 and 12, 7 late rows for day 10 (inside the window), 5 for
/// day 2 (beyond it).
fn day_two() -> Vec<(String, Events)> {
    vec![
        ("events-11.csv".into(), Events::day(11, 100, 11_000)),
        ("events-12.csv".into(), Events::day(12, 100, 12_000)),
        ("late-10.csv".into(), Events::day(10, 7, 90_000)),
        ("late-02.csv".into(), Events::day(2, 5, 80_000)),
    ]
}

fn write_all(dir: &Path, files: &[(String, Events)]) {
    for (name, e) in files {
        e.write(&dir.join("data").join(name));
    }
}

/// The units a report says the model ran, by name.
fn units_of(report: &serde_json::Value) -> Vec<String> {
    report_model(report, "daily")["units"]
        .as_array()
        .map(|u| {
            u.iter()
                .map(|u| u["unit"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Each data file of the output with the period the manifest records for it.
fn file_periods(dir: &Path) -> BTreeMap<String, String> {
    let m = read_json(&dir.join("out/daily/_MANIFEST"));
    m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["period"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn late(report: &serde_json::Value) -> &serde_json::Value {
    &report_model(report, "daily")["late"]
}

#[test]
fn the_day_one_day_two_timeline_then_a_backfill() {
    let first = day_one();
    let dir = pipeline(TOML, &[]);
    let d = dir.path();
    write_all(d, &first);

    // Day 1: every period up to the clock, on time; the output is a full recompute.
    let (_, r1) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let want1 = expected(first.iter().map(|(_, e)| e));
    assert_eq!(units_of(&r1).len(), 10);
    assert_eq!(published_days(d), want1);
    assert_eq!(late(&r1)["rows_on_time"], 1000);
    assert_eq!(late(&r1)["rate"], 0.0);
    let periods = file_periods(d);
    assert_eq!(periods.len(), 10);
    assert!(
        periods.values().all(|p| p.starts_with("2024-01-")),
        "{periods:?}"
    );
    let manifest = read_json(&d.join("out/daily/_MANIFEST"));
    assert_eq!(
        manifest["periods"]["entries"].as_object().unwrap().len(),
        10
    );
    let before = snapshot(&d.join("out/daily"));

    // Day 2.
    let second = day_two();
    write_all(d, &second);
    let status = sluice(d, &["status", ".", "--as-of", "2024-01-13T00:00:00Z"]).expect(0);
    assert!(
        status
            .stdout
            .contains("2024-01-10 (late), 2024-01-11 (new), 2024-01-12 (new)"),
        "{}",
        status.stdout
    );
    let (run, r2) = run_with_report(d, &["--as-of", "2024-01-13T00:00:00Z", "-v"], 0);
    // The state store knows the periods of every file (`status` read the 4 new ones): none
    // is read again to plan.
    assert!(
        run.stderr
            .contains("mapping event times: 14 files known, 0 to read"),
        "{}",
        run.stderr
    );
    // Exactly days 10, 11, 12: day 10 ends on day 11 00:00, +48 h is the clock (inclusive).
    assert_eq!(
        units_of(&r2),
        vec!["2024-01-10", "2024-01-11", "2024-01-12"]
    );
    let l = late(&r2);
    assert_eq!(l["rows_on_time"], 200);
    assert_eq!(l["rows_late_in_window"], 7);
    assert_eq!(l["rows_late_beyond_window"], 5);
    assert!(
        (l["rate"].as_f64().unwrap() - 12.0 / 212.0).abs() < 1e-9,
        "{l}"
    );
    let backlog = l["periods_needing_backfill"].as_array().unwrap();
    assert_eq!(backlog.len(), 1);
    assert_eq!(backlog[0]["period"], "2024-01-02");
    assert_eq!(backlog[0]["rows_late"], 5);
    assert_eq!(backlog[0]["files"][0], "data/late-02.csv");
    assert!(
        run.stderr.contains("needs backfill: 2024-01-02 (5 rows)"),
        "{}",
        run.stderr
    );
    let runs = sluice(d, &["runs", ".", "--json"]).expect(0);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs[0]["run_id"], r2["run_id"]);
    assert_eq!(
        (&runs[0]["late_in_window"], &runs[0]["late_beyond_window"]),
        (&7.into(), &5.into())
    );
    let runs = sluice(d, &["runs", "."]).expect(0);
    assert!(
        runs.stdout.contains("late in/beyond") && runs.stdout.contains(" 7/5\n"),
        "{}",
        runs.stdout
    );
    // Days 1–9 are untouched, byte for byte, and still listed as computed by day 1's run.
    let after = snapshot(&d.join("out/daily"));
    let periods2 = file_periods(d);
    for (path, period) in &periods {
        if period.as_str() < "2024-01-10" {
            assert_eq!(before.get(path), after.get(path), "{path} changed");
            assert_eq!(periods2.get(path), Some(period));
        }
    }
    assert!(!periods2.contains_key(periods.iter().find(|(_, p)| *p == "2024-01-10").unwrap().0));
    // Day 10 holds its late rows; day 2 does not (beyond the window).
    let mut want2 = expected(first.iter().chain(&second).map(|(_, e)| e));
    let day2_with_late = want2["2024-01-02"];
    want2.insert("2024-01-02".into(), want1["2024-01-02"]);
    assert_eq!(published_days(d), want2);
    assert_eq!(want2["2024-01-10"].0, 107);

    // The same clock again: nothing to do, nothing published, nothing counted twice; the
    // backlog is still listed.
    let manifest2 = std::fs::read(d.join("out/daily/_MANIFEST")).unwrap();
    let (_, r3) = run_with_report(d, &["--as-of", "2024-01-13T00:00:00Z"], 0);
    assert!(units_of(&r3).is_empty());
    assert_eq!(
        std::fs::read(d.join("out/daily/_MANIFEST")).unwrap(),
        manifest2
    );
    assert_eq!(late(&r3)["rows_late_beyond_window"], 0);
    assert_eq!(
        late(&r3)["periods_needing_backfill"][0]["period"],
        "2024-01-02"
    );
    let status = sluice(d, &["status", ".", "--as-of", "2024-01-13T00:00:00Z"]).expect(0);
    assert!(
        status
            .stdout
            .contains("needs backfill:  2024-01-02: 5 late rows"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("5.66%"), "{}", status.stdout);

    // A backfill of day 2 computes exactly it; the output is then a full recompute.
    let backfill = sluice(
        d,
        &[
            "backfill",
            ".",
            "--from",
            "2024-01-02",
            "--to",
            "2024-01-03",
            "--report",
            "b.json",
        ],
    )
    .expect(0);
    let rb = read_json(&d.join("b.json"));
    assert_eq!(units_of(&rb), vec!["2024-01-02"], "{}", backfill.stderr);
    let full = expected(first.iter().chain(&second).map(|(_, e)| e));
    assert_eq!(full["2024-01-02"], day2_with_late);
    assert_eq!(published_days(d), full);
    let status = sluice(d, &["status", ".", "--as-of", "2024-01-13T00:00:00Z"]).expect(0);
    assert!(
        status.stdout.contains("needs backfill:  -"),
        "{}",
        status.stdout
    );
}

#[test]
fn no_reconcile_then_reconcile_and_a_full_refresh() {
    let first = day_one();
    let second = day_two();
    let dir = pipeline(TOML, &[]);
    let d = dir.path();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    write_all(d, &second);
    let (run, main) = run_with_report(d, &["--as-of", "2024-01-13", "--no-reconcile", "-v"], 0);
    // The state store knows the periods of day 1's files: only the 4 new ones are read.
    assert!(
        run.stderr
            .contains("mapping event times: 10 files known, 4 to read"),
        "{}",
        run.stderr
    );
    assert_eq!(units_of(&main), vec!["2024-01-11", "2024-01-12"]);
    assert_eq!(late(&main)["periods_to_reconcile"][0], "2024-01-10");
    assert_eq!(published_days(d)["2024-01-10"].0, 100);
    sluice(
        d,
        &[
            "reconcile",
            ".",
            "--as-of",
            "2024-01-13",
            "--report",
            "rec.json",
        ],
    )
    .expect(0);
    let rec = read_json(&d.join("rec.json"));
    assert_eq!(units_of(&rec), vec!["2024-01-10"]);
    assert_eq!(late(&rec)["rows_late_in_window"], 7);
    let mut want = expected(first.iter().chain(&second).map(|(_, e)| e));
    want.insert(
        "2024-01-02".into(),
        (100, expected([&first[1].1])["2024-01-02"].1),
    );
    assert_eq!(published_days(d), want);

    // A full refresh computes every period: day 2's late rows too.
    let (_, full) = run_with_report(d, &["--as-of", "2024-01-13", "--full-refresh"], 0);
    assert_eq!(units_of(&full).len(), 12);
    assert_eq!(
        published_days(d),
        expected(first.iter().chain(&second).map(|(_, e)| e))
    );
}

#[test]
fn rewritten_and_deleted_files_and_a_changing_dimension() {
    let toml = format!("{TOML}\n[sources.regions]\nlocation = \"regions.csv\"\nformat = \"csv\"\n");
    let first = day_one();
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    std::fs::write(d.join("regions.csv"), "k,factor\n1,1\n").unwrap();
    std::fs::write(
        d.join("queries/daily.sql"),
        "SELECT CAST(ts AS DATE) AS day, COUNT(*) AS n, SUM(amount * factor) AS amount \
         FROM events JOIN regions ON k = 1 GROUP BY 1",
    )
    .unwrap();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);

    // events-09 rewritten with 3 more rows, events-10 deleted: both inside the window.
    let rewritten = Events::day(9, 103, 9000);
    rewritten.write(&d.join("data/events-09.csv"));
    std::fs::remove_file(d.join("data/events-10.csv")).unwrap();
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let processed: Vec<(String, String)> = late(&r)["periods_processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["period"].as_str().unwrap().into(),
                p["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        processed,
        vec![
            ("2024-01-09".to_string(), "changed".to_string()),
            ("2024-01-10".to_string(), "deleted".to_string()),
        ]
    );
    assert_eq!(late(&r)["rows_deleted"], 200);
    assert_eq!(late(&r)["rows_late_in_window"], 103);
    let mut want = expected(first[..8].iter().map(|(_, e)| e).chain([&rewritten]));
    assert_eq!(published_days(d), want);
    assert!(!file_periods(d).values().any(|p| p == "2024-01-10"));

    // The dimension doubles every amount: the periods inside the window are redone (day 8
    // ends on day 9, +48 h = day 11 00:00, the clock; day 10 holds no rows now).
    std::fs::write(d.join("regions.csv"), "k,factor\n1,2\n").unwrap();
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    assert_eq!(late(&r)["dimensions_changed"], true);
    assert_eq!(units_of(&r), vec!["2024-01-08", "2024-01-09", "2024-01-10"]);
    for day in ["2024-01-08", "2024-01-09"] {
        let e = want.get_mut(day).unwrap();
        e.1 *= 2;
    }
    assert_eq!(published_days(d), want);
}

#[test]
fn rows_later_than_the_window_fail_the_run_when_asked_after_publishing() {
    let toml = TOML.replace(
        "late_window = \"48h\"",
        "late_window = \"48h\"\non_late_beyond_window = \"fail\"",
    );
    let first = day_one();
    let second = day_two();
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    write_all(d, &second);
    let (run, r) = run_with_report(d, &["--as-of", "2024-01-13"], 1);
    assert_eq!(r["status"], "failed");
    assert_eq!(report_model(&r, "daily")["status"], "success");
    assert!(
        run.stderr
            .contains("5 rows arrived later than the late window (periods 2024-01-02)")
            && run.stderr.contains("sluice backfill")
            && run.stderr.contains("--from 2024-01-02 --to 2024-01-03"),
        "{}",
        run.stderr
    );
    // Everything else was published.
    assert_eq!(published_days(d)["2024-01-12"].0, 100);
    assert_eq!(published_days(d)["2024-01-10"].0, 107);
    // Counted once: the next run (an orchestrator's retry) does not fail again for the same
    // rows. The failed run did all its work, so the retry is a new run, not a resume.
    let (_, retry) = run_with_report(d, &["--as-of", "2024-01-13"], 0);
    assert_ne!(retry["run_id"], r["run_id"]);
    assert_eq!(late(&retry)["rows_late_beyond_window"], 0);
    assert_eq!(
        late(&retry)["periods_needing_backfill"][0]["period"],
        "2024-01-02"
    );
}

#[test]
fn a_reconcile_killed_midway_then_rerun_gives_the_uninterrupted_output() {
    let first = day_one();
    let dir = pipeline(
        &TOML.replace(
            "late_window = \"48h\"",
            "late_window = \"10d\"\nmax_concurrent_units = 1",
        ),
        &[],
    );
    let d = dir.path();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    // Late rows for every day: the reconcile has ten units.
    let late_files: Vec<(String, Events)> = (1..=10)
        .map(|day| {
            (
                format!("late-{day:02}.csv"),
                Events::day(day, 3, 50_000 + u64::from(day) * 10),
            )
        })
        .collect();
    write_all(d, &late_files);
    let mut child = spawn_sluice(d, &["reconcile", ".", "--as-of", "2024-01-11"]);
    // (Killed mid-run, not after it: the test would prove nothing.)
    // Kill it once a unit has staged its files and before the publish.
    let staging = d.join("out/_sluice_staging/daily");
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(60) {
        let staged = files_under(&staging)
            .iter()
            .filter(|f| f.ends_with(".parquet"))
            .count();
        if staged >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the reconcile finished before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        read_json(&d.join("out/daily/_MANIFEST"))["periods"]["entries"]["2024-01-05"]["inputs"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "published before the kill"
    );
    let rec = sluice(
        d,
        &[
            "reconcile",
            ".",
            "--as-of",
            "2024-01-11",
            "--report",
            "r.json",
        ],
    )
    .expect(0);
    let r = read_json(&d.join("r.json"));
    assert_eq!(units_of(&r).len(), 10, "{}", rec.stderr);
    assert_eq!(
        published_days(d),
        expected(first.iter().chain(&late_files).map(|(_, e)| e))
    );
    // And nothing is left to do.
    let (_, again) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    assert!(units_of(&again).is_empty());
}

#[test]
fn bad_incremental_settings_are_refused_naming_file_and_line() {
    let cases: Vec<(String, &[&str], &str)> = vec![
        (
            TOML.replace("materialized = \"incremental\"", "materialized = \"table\""),
            &["run", "."],
            "sluice.toml:13: models.daily.batches.late_window: applies to incremental models",
        ),
        (
            format!("{TOML}\n[models.daily.sink]\nmode = \"append\"\n"),
            &["run", "."],
            "models.daily.sink.mode: \"append\": an incremental model's output is written period by period",
        ),
        (
            TOML.replace("event_time = \"ts\"\n", ""),
            &["run", "."],
            "sluice.toml:7: models.daily.materialized: an incremental model needs an input with event time",
        ),
        (
            TOML.to_string(),
            &[
                "backfill",
                ".",
                "--from",
                "2023-12-01",
                "--to",
                "2024-01-03",
            ],
            "sluice.toml:12: models.daily.batches.start: backfill --from 2023-12-01 00:00:00 is before",
        ),
        (
            TOML.replace("late_window = \"48h\"", "late_window = \"two days\""),
            &["plan", "."],
            "models.daily.batches.late_window: \"two days\" is not a duration",
        ),
        (
            TOML.to_string(),
            &["run", ".", "--as-of", "tomorrow"],
            "is not a time",
        ),
    ];
    for (toml, args, says) in cases {
        let dir = pipeline(&toml, &[("events-01.csv", &Events::day(1, 3, 1))]);
        let run = sluice(dir.path(), args).expect(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert!(!dir.path().join("out/daily/_MANIFEST").exists());
    }
}

/// Two incremental models over one source each count the late rows they find (once each);
/// a lost state file recomputes nothing; a `start` inside a month rounds to the month.
#[test]
fn two_models_count_late_rows_each_a_lost_state_file_recomputes_nothing() {
    let toml = format!(
        "{TOML}\n[models.monthly]\nmaterialized = \"incremental\"\n\
         [models.monthly.batches]\nsize = \"month\"\nstart = \"2024-01-15\"\n"
    );
    let first = day_one();
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    std::fs::write(
        d.join("queries/monthly.sql"),
        "SELECT date_trunc('month', CAST(ts AS TIMESTAMP)) AS month, COUNT(*) AS n FROM events GROUP BY 1",
    )
    .unwrap();
    write_all(d, &first);
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-01"], 0);
    // January is computed whole, though start is the 15th.
    assert_eq!(report_model(&r, "monthly")["late"]["rows_on_time"], 1000);
    assert_eq!(report_model(&r, "monthly")["rows_out"], 1);
    let month = sluice(
        d,
        &["sql", "-e", "SELECT n FROM t", "--table", "t=out/monthly/"],
    )
    .expect(0);
    assert!(month.stdout.contains("| 1000 |"), "{}", month.stdout);

    // 5 late rows for day 2, beyond daily's window, inside monthly's (January ended on
    // February 1; the window is 0 h, so it closed then: beyond for both).
    Events::day(2, 5, 80_000).write(&d.join("data/late-02.csv"));
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-03", "--select", "daily"], 0);
    assert_eq!(
        report_model(&r, "daily")["late"]["rows_late_beyond_window"],
        5
    );
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-03", "--select", "monthly"], 0);
    assert_eq!(
        report_model(&r, "monthly")["late"]["rows_late_beyond_window"],
        5
    );
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-03"], 0);
    for m in ["daily", "monthly"] {
        assert_eq!(
            report_model(&r, m)["late"]["rows_late_beyond_window"],
            0,
            "{m}"
        );
    }

    // The state file lost: nothing is recomputed (the manifests say what each period was
    // computed from); the backlog is still listed.
    std::fs::remove_dir_all(d.join(".sluice")).unwrap();
    let before = snapshot(&d.join("out"));
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-03"], 0);
    for m in ["daily", "monthly"] {
        assert_eq!(report_model(&r, m)["units_total"], 0, "{m}");
        assert_eq!(
            report_model(&r, m)["late"]["periods_needing_backfill"][0]["rows_late"],
            5,
            "{m}"
        );
    }
    assert_eq!(published(&snapshot(&d.join("out"))), published(&before));
}

/// A run killed after publishing an incremental model, while the next model runs: the rerun
/// resumes it, plans nothing for the published model, and reports what that model counted.
#[test]
fn a_run_killed_after_publishing_reports_its_late_rows_on_resume() {
    let toml = format!(
        "{TOML}\n[models.hourly.batches]\nsize = \"hour\"\nstart = \"2024-01-01\"\n\
         max_concurrent_units = 1\n"
    );
    let first = day_one();
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    // Runs after daily, one unit an hour: long enough to be killed in.
    std::fs::write(
        d.join("queries/hourly.sql"),
        "SELECT d.day, e.id FROM events e JOIN daily d ON CAST(e.ts AS DATE) = d.day",
    )
    .unwrap();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    write_all(d, &day_two());
    let manifest = || read_json(&d.join("out/daily/_MANIFEST"))["run_id"].clone();
    let day_one_version = manifest();
    let mut child = spawn_sluice(d, &["run", ".", "--as-of", "2024-01-13"]);
    let t = std::time::Instant::now();
    while manifest() == day_one_version && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run ended before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-13"], 0);
    let l = late(&r);
    assert_eq!(
        units_of(&r),
        Vec::<String>::new(),
        "daily was published before the kill"
    );
    assert_eq!(
        (
            &l["rows_on_time"],
            &l["rows_late_in_window"],
            &l["rows_late_beyond_window"]
        ),
        (&200.into(), &7.into(), &5.into())
    );
    assert_eq!(report_model(&r, "hourly")["status"], "success");
}

/// A `late_rate` check gates the publish like any error check; as a warning it reports and
/// publishes; `sluice check` evaluates it on the last run.
#[test]
fn a_late_rate_check_over_its_maximum_publishes_nothing() {
    let toml = format!("{TOML}\n[[models.daily.checks]]\nlate_rate = {{ max = 0.01 }}\n");
    let first = day_one();
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    write_all(d, &first);
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let before = published(&snapshot(&d.join("out/daily")));
    write_all(d, &day_two());
    let (run, r) = run_with_report(d, &["--as-of", "2024-01-13"], 1);
    let check = &report_model(&r, "daily")["checks"][0];
    assert_eq!(check["check"], "late_rate(max 0.01)");
    assert_eq!(check["status"], "fail");
    assert_eq!(check["failing_rows"], 12);
    assert!(
        run.stderr
            .contains("late-arrival rate 5.66% (12 of 212 rows) is over the maximum 1.00%"),
        "{}",
        run.stderr
    );
    assert_eq!(published(&snapshot(&d.join("out/daily"))), before);

    // As a warning: reported, published.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace(
            "late_rate = { max = 0.01 }",
            "late_rate = { max = 0.01 }\nseverity = \"warn\"",
        )
    });
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-13"], 0);
    assert_eq!(report_model(&r, "daily")["checks"][0]["status"], "warn");
    assert_eq!(published_days(d)["2024-01-10"].0, 107);
    let check = sluice(d, &["check", "."]).expect(0);
    assert!(
        check.stdout.contains("late_rate(max 0.01)"),
        "{}",
        check.stdout
    );

    // Only an incremental model has a late-arrival rate; a rate is between 0 and 1.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace("max = 0.01", "max = 5")
    });
    let bad = sluice(d, &["plan", "."]).expect(2);
    assert!(
        bad.stderr
            .contains("models.daily.checks[0].late_rate.max: 5 is not a rate between 0 and 1"),
        "{}",
        bad.stderr
    );
}

/// The timeline on the S3 server (moto): sources and output in a bucket, file versions told
/// apart by etag — a file rewritten with the same size is a new version.
#[test]
fn the_timeline_on_s3_with_etags() {
    use object_store::{ObjectStoreExt, PutPayload};
    let server = crate::support::s3::S3Server::start();
    server.create_bucket("lake");
    let store = server.store("lake");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put = |name: &str, e: &Events| {
        let mut text = String::from("id,amount,ts\n");
        for (id, amount, ts) in &e.0 {
            text.push_str(&format!("{id},{amount},{ts}\n"));
        }
        rt.block_on(store.put(
            &object_store::path::Path::from(format!("events/{name}")),
            PutPayload::from(text.into_bytes()),
        ))
        .unwrap();
    };
    let toml = TOML.replace("location = \"data/\"", "location = \"s3://lake/events/\"")
        + "\n[models.daily.sink]\nlocation = \"s3://lake/out/daily/\"\n";
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    let env = server.env();
    let run = |args: &[&str], code: i32| {
        let mut all = vec!["run", ".", "--report", "r.json"];
        all.extend_from_slice(args);
        let out = sluice_env(d, &all, &env).expect(code);
        (out, read_json(&d.join("r.json")))
    };
    let first = day_one();
    for (name, e) in &first {
        put(name, e);
    }
    run(&["--as-of", "2024-01-11"], 0);
    let second = day_two();
    for (name, e) in &second {
        put(name, e);
    }
    let (_, r) = run(&["--as-of", "2024-01-13"], 0);
    assert_eq!(units_of(&r), vec!["2024-01-10", "2024-01-11", "2024-01-12"]);
    assert_eq!(late(&r)["rows_late_in_window"], 7);
    assert_eq!(late(&r)["rows_late_beyond_window"], 5);
    assert_eq!(
        late(&r)["periods_needing_backfill"][0]["files"][0],
        "s3://lake/events/late-02.csv"
    );
    // events-12 rewritten with the same size: amounts 1 higher on ids ending in 0..8, so
    // each line keeps its length (ids ending in 9 keep theirs).
    let mut rewritten = Events::day(12, 100, 12_000);
    for row in &mut rewritten.0 {
        if row.1 % 10 != 9 {
            row.1 += 1;
        }
    }
    let key = object_store::path::Path::from("events/events-12.csv");
    let old = rt.block_on(store.head(&key)).unwrap();
    put("events-12.csv", &rewritten);
    let new = rt.block_on(store.head(&key)).unwrap();
    assert_eq!(old.size, new.size);
    assert_ne!(old.e_tag, new.e_tag);
    let (_, r) = run(&["--as-of", "2024-01-13"], 0);
    assert_eq!(units_of(&r), vec!["2024-01-12"]);
    assert_eq!(late(&r)["periods_processed"][0]["reason"], "changed");
    let read = sluice_env(
        d,
        &[
            "sql",
            "-e",
            "SELECT n, amount FROM t WHERE day = DATE '2024-01-12'",
            "--table",
            "t=s3://lake/out/daily/",
        ],
        &env,
    )
    .expect(0);
    let want = expected([&rewritten])["2024-01-12"];
    assert!(
        read.stdout.contains(&format!("| {} | {} ", want.0, want.1)),
        "{want:?}: {}",
        read.stdout
    );
}

/// `batches.timezone`: flights whose time is in UTC, grouped by their New York date (the
/// nycflights13 shape). Batched by UTC day, each New York day straddles two units; batched by
/// New York day, every group is whole, and the output equals the unbatched model's — across
/// the DST change of 2024-03-10 (a 23-hour day). An incremental model records the zone in its
/// grid; a DATE event time is refused with a zone.
#[test]
fn periods_in_a_time_zone_keep_local_days_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    // Every 20 minutes from 2024-03-08 00:00 UTC to 2024-03-12 00:00 UTC, alternating origins;
    // `day` is the New York date (UTC-5 before 2024-03-10 07:00 UTC, UTC-4 after).
    let mut csv = String::from("id,origin,time_hour,day\n");
    let start = chrono::NaiveDate::from_ymd_opt(2024, 3, 8)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let switch = chrono::NaiveDate::from_ymd_opt(2024, 3, 10)
        .unwrap()
        .and_hms_opt(7, 0, 0)
        .unwrap();
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut utc_days: BTreeMap<(String, String), std::collections::BTreeSet<String>> =
        BTreeMap::new();
    for i in 0..(4 * 72) {
        let t = start + chrono::Duration::minutes(20 * i);
        let offset = if t < switch { 5 } else { 4 };
        let local = (t - chrono::Duration::hours(offset)).date().to_string();
        let origin = ["EWR", "JFK", "LGA"][i as usize % 3];
        csv.push_str(&format!(
            "{i},{origin},{},{local}\n",
            t.format("%Y-%m-%d %H:%M:%S")
        ));
        utc_days
            .entry((local.clone(), origin.to_string()))
            .or_default()
            .insert(t.date().to_string());
        *want.entry((local, origin.to_string())).or_default() += 1;
    }
    std::fs::write(d.join("data/flights.csv"), csv).unwrap();
    let sql = "SELECT day, origin, COUNT(*) AS n FROM flights GROUP BY day, origin";
    for m in ["utc_days", "ny_days", "whole", "ny_incremental"] {
        std::fs::write(d.join(format!("queries/{m}.sql")), sql).unwrap();
    }
    std::fs::write(
        d.join("sluice.toml"),
        "[sources.flights]\nlocation = \"data/\"\nformat = \"csv\"\nevent_time = \"time_hour\"\n\
         [models.utc_days.batches]\nsize = \"day\"\n\
         [models.ny_days.batches]\nsize = \"day\"\ntimezone = \"America/New_York\"\n\
         [models.ny_incremental]\nmaterialized = \"incremental\"\n\
         [models.ny_incremental.batches]\nsize = \"day\"\ntimezone = \"America/New_York\"\n",
    )
    .unwrap();
    let (_, r) = run_with_report(d, &["--as-of", "2024-03-13"], 1);
    let rows = |m: &str| -> BTreeMap<(String, String), Vec<u64>> {
        let out = sluice(
            d,
            &[
                "sql",
                "-e",
                "SELECT CAST(day AS VARCHAR) AS day, origin, n FROM t",
                "--table",
                &format!("t=out/{m}/"),
                "--max-rows",
                "1000",
            ],
        )
        .expect(0);
        let mut got: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for l in out.stdout.lines().filter(|l| l.starts_with("| 2024")) {
            let c: Vec<&str> = l.split('|').map(str::trim).collect();
            got.entry((c[1].to_string(), c[2].to_string()))
                .or_default()
                .push(c[3].parse().unwrap());
        }
        got
    };
    let whole: BTreeMap<_, _> = want.iter().map(|(k, n)| (k.clone(), vec![*n])).collect();
    assert_eq!(rows("whole"), whole);
    assert_eq!(rows("ny_days"), whole);
    assert_eq!(rows("ny_incremental"), whole);
    // In UTC days, groups of the evening are split over two units: planning said so, and the
    // publish is refused (each key must come out once).
    // (Rows sharing a key: one per UTC day of each group that spans two.)
    let shared: usize = utc_days
        .values()
        .filter(|d| d.len() > 1)
        .map(|d| d.len())
        .sum();
    assert!(shared > 0);
    let utc = report_model(&r, "utc_days");
    assert_eq!(utc["status"], "failed");
    assert!(
        utc["error"].as_str().unwrap_or_default().contains(&format!(
            "one row per group (unique(day, origin)): {shared} rows share a key: groups were \
             split over two work units"
        )),
        "{utc}"
    );
    assert!(!d.join("out/utc_days/_MANIFEST").exists());
    let warning = report_model(&r, "utc_days")["warnings"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        warning.contains("groups by (flights.day, flights.origin), and no key places a group in one day of time_hour (UTC)"),
        "{r}"
    );
    assert!(report_model(&r, "ny_days").get("warnings").is_none());
    let plan = sluice(d, &["plan", ".", "--select", "utc_days"]).expect(0);
    assert!(
        plan.stdout
            .contains("warning: model 'utc_days' is batched by day: it groups by"),
        "{}",
        plan.stdout
    );
    // New York days as units: March 10 lasts 23 hours (69 flights, 3 an hour).
    let units: Vec<(String, u64)> = report_model(&r, "ny_days")["units"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["unit"].as_str().unwrap().to_string(),
                u["rows_in"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(units.contains(&("2024-03-10".to_string(), 69)), "{units:?}");
    let manifest = read_json(&d.join("out/ny_incremental/_MANIFEST"));
    assert_eq!(manifest["periods"]["grid"], "day@America/New_York");

    // A DATE event time has no time of day to place in a zone.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace("event_time = \"time_hour\"", "event_time = \"day\"")
    });
    let bad = sluice(d, &["run", ".", "--select", "ny_days"]).expect(1);
    assert!(
        bad.stderr
            .contains("event_time 'day' is a DATE, which has no time of day"),
        "{}",
        bad.stderr
    );
    // An unknown zone is refused with its line.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replacen("America/New_York", "America/Gotham", 1)
    });
    let bad = sluice(d, &["plan", "."]).expect(2);
    assert!(
        bad.stderr.contains(
            "sluice.toml:9: models.ny_days.batches.timezone: \"America/Gotham\" is not a time zone"
        ),
        "{}",
        bad.stderr
    );
}

/// An incremental model downstream of another (months over days): the periods the upstream
/// model recomputes touch the downstream periods that hold them, through its manifest; a
/// backfill of `daily+` recomputes the month of the backfilled day too.
#[test]
fn an_incremental_model_downstream_recomputes_the_periods_upstream_recomputed() {
    let toml = format!(
        "{TOML}\n[models.monthly]\nmaterialized = \"incremental\"\n\
         [models.monthly.batches]\nsize = \"month\"\nstart = \"2024-01-01\"\nlate_window = \"48h\"\n"
    );
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    std::fs::write(
        d.join("queries/monthly.sql"),
        "SELECT date_trunc('month', CAST(day AS TIMESTAMP)) AS month, SUM(n) AS n, SUM(amount) AS amount \
         FROM daily GROUP BY 1",
    )
    .unwrap();
    let mut files = day_one();
    files.push(("events-31.csv".into(), Events::day(31, 50, 31_000)));
    files.push((
        "events-feb01.csv".into(),
        Events(
            Events::day(1, 20, 40_000)
                .0
                .into_iter()
                .map(|(i, a, ts)| (i, a, ts.replacen("2024-01-", "2024-02-", 1)))
                .collect(),
        ),
    ));
    write_all(d, &files);
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-02"], 0);
    assert_eq!(report_model(&r, "monthly")["units"][0]["unit"], "2024-01");
    let month = |d: &Path| -> (u64, u64) {
        let out = sluice(
            d,
            &[
                "sql",
                "-e",
                "SELECT n, amount FROM t",
                "--table",
                "t=out/monthly/",
            ],
        )
        .expect(0);
        let l = out
            .stdout
            .lines()
            .find(|l| l.starts_with("| ") && !l.contains("n "))
            .unwrap();
        let c: Vec<&str> = l.split('|').map(str::trim).collect();
        (c[1].parse().unwrap(), c[2].parse().unwrap())
    };
    let january = |files: &[(String, Events)]| {
        expected(files.iter().map(|(_, e)| e))
            .iter()
            .filter(|(day, _)| day.starts_with("2024-01"))
            .fold((0, 0), |(n, a), (_, (dn, da))| (n + dn, a + da))
    };
    assert_eq!(month(d), january(&files));

    // 5 late rows for January 31, inside daily's window: daily recomputes the 31st, and so
    // monthly recomputes January (its window is open too).
    let late = ("late-31.csv".to_string(), Events::day(31, 5, 95_000));
    late.1.write(&d.join("data").join(&late.0));
    files.push(late);
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-02T12:00:00Z"], 0);
    assert_eq!(
        (
            units_of(&r),
            report_model(&r, "monthly")["units"][0]["unit"].clone()
        ),
        (vec!["2024-01-31".to_string()], "2024-01".into())
    );
    assert_eq!(
        report_model(&r, "monthly")["late"]["periods_processed"][0]["reason"],
        "changed"
    );
    assert_eq!(month(d), january(&files));
    let (_, r) = run_with_report(d, &["--as-of", "2024-02-02T12:00:00Z"], 0);
    assert_eq!(report_model(&r, "monthly")["units_total"], 0);

    // A backfill of daily+ recomputes the day and its month.
    let bf = sluice(
        d,
        &[
            "backfill",
            ".",
            "--from",
            "2024-01-05",
            "--to",
            "2024-01-06",
            "--select",
            "daily+",
            "--as-of",
            "2024-02-02T12:00:00Z",
            "--report",
            "b.json",
        ],
    )
    .expect(0);
    let r = read_json(&d.join("b.json"));
    assert_eq!(units_of(&r), vec!["2024-01-05"], "{}", bf.stderr);
    assert_eq!(report_model(&r, "monthly")["units"][0]["unit"], "2024-01");

    // Finer downstream than upstream is refused.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace("size = \"month\"", "size = \"hour\"")
    });
    let bad = sluice(d, &["plan", "."]).expect(2);
    assert!(
        bad.stderr.contains("models.monthly.batches.size: 'monthly' reads the incremental model 'daily', whose periods are by day"),
        "{}",
        bad.stderr
    );
}

/// Found by the fault test (tests/it/torture, incremental histories): a run killed while
/// committing to a local output, between writing the new manifest to its temporary file
/// `._MANIFEST.<run id>.tmp` and renaming it over `_MANIFEST`, left that file in the output
/// folder for good: no later command removed it. Healing (any command) now removes it, under
/// the folder's lock (no commit is under way then).
#[test]
fn the_temporary_manifest_of_a_commit_killed_half_way_is_removed() {
    let dir = pipeline(TOML, &[]);
    let d = dir.path();
    write_all(d, &day_one());
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let manifest = std::fs::read(d.join("out/daily/_MANIFEST")).unwrap();
    // What the kill leaves: the next version written in full, not renamed.
    let tmp = d.join("out/daily/._MANIFEST.20240111T000000Z-abcdef.tmp");
    std::fs::write(&tmp, &manifest).unwrap();
    sluice(d, &["plan", ".", "--as-of", "2024-01-11"]).expect(0);
    assert!(!tmp.exists(), "plan heals the output");
    std::fs::write(&tmp, &manifest).unwrap();
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    assert!(units_of(&r).is_empty());
    assert!(!tmp.exists(), "a run heals the output");
    assert_eq!(
        std::fs::read(d.join("out/daily/_MANIFEST")).unwrap(),
        manifest
    );
}

// Bugs the incremental fault test found (tests/it/torture/incremental.rs), fixed in
// src/run/model.rs (`ModelRun::publish_nothing`, and the late rows recorded on the path of a
// publish found done); each test reproduces one.

/// The daily job run before the first day has ended: nothing to compute, nothing published
/// yet. It should exit 0 ("a run with nothing to compute publishes nothing"); it fails with
/// a message that does not apply ("it is not selected and has no output ... yet"): the
/// branch for an empty plan (src/run/model.rs, `ModelRun::run`) registers the output,
/// which src/run/prepare.rs `register_output` refuses when there is none.
#[test]
fn bug_nothing_to_compute_before_the_first_publish_is_no_failure() {
    let dir = pipeline(TOML, &[("events-01.csv", &Events::day(1, 3, 1))]);
    let d = dir.path();
    let (run, r) = run_with_report(d, &["--as-of", "2024-01-01T12:00:00Z"], 0);
    assert_eq!(
        report_model(&r, "daily")["units_total"],
        0,
        "{}",
        run.stderr
    );
    assert!(!d.join("out/daily/_MANIFEST").exists());
}

/// A run with nothing to compute takes the output's staging lease and returns before its
/// publish without releasing it: `out/_sluice_staging/daily/<run id>/_LEASE` stays until the
/// next run heals it (src/run/model.rs: the empty plan's early return; `run_table_model`
/// releases the output only on an error).
#[test]
fn bug_a_run_with_nothing_to_compute_leaves_no_staging() {
    let dir = pipeline(TOML, &[]);
    let d = dir.path();
    write_all(d, &day_one());
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    assert!(units_of(&r).is_empty());
    assert_eq!(
        files_under(&d.join("out/_sluice_staging")),
        Vec::<String>::new()
    );
}

/// A backfill killed after its publish, resumed after a late file beyond the window
/// arrived: the resumed run finds its units published from unchanged inputs and returns
/// before recording the late rows its own plan counted (src/run/model.rs, `ModelRun::run`:
/// `Published::Done` returns before `record_late`), though it reports them (and, with
/// `on_late_beyond_window = "fail"`, fails for them). The next run counts them again and
/// fails again: they should be counted once, and a retry should not fail for them.
#[test]
fn bug_a_resumed_run_that_finds_its_publish_records_what_it_counted() {
    let toml = TOML.replace(
        "late_window = \"48h\"",
        "late_window = \"0h\"\non_late_beyond_window = \"fail\"",
    );
    let dir = pipeline(&toml, &[]);
    let d = dir.path();
    write_all(d, &day_one());
    run_with_report(d, &["--as-of", "2024-01-11"], 0);
    let run_id = || read_json(&d.join("out/daily/_MANIFEST"))["run_id"].clone();
    let before = run_id();
    let backfill = [
        "backfill",
        ".",
        "--from",
        "2024-01-05",
        "--to",
        "2024-01-06",
        "--as-of",
        "2024-01-11",
    ];
    let mut child = spawn_sluice(d, &backfill);
    let t = std::time::Instant::now();
    while run_id() == before && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the backfill ended before the kill"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // 5 rows for day 2, beyond the window.
    Events::day(2, 5, 80_000).write(&d.join("data/late-02.csv"));
    let mut args = backfill.to_vec();
    args.extend(["--report", "b.json"]);
    let resumed = sluice(d, &args).expect(1);
    let b = read_json(&d.join("b.json"));
    assert_eq!(b["run_id"], run_id(), "{}", resumed.stderr);
    assert_eq!(late(&b)["rows_late_beyond_window"], 5);
    // Counted once: the next run does not count them, nor fail for them.
    let (_, r) = run_with_report(d, &["--as-of", "2024-01-11"], 0);
    assert_eq!(late(&r)["rows_late_beyond_window"], 0);
}

/// A run killed during its publish (its files moved into the output folder, the manifest not
/// yet written), resumed after its input was deleted: the resumed run has nothing left to
/// compute and returns (src/run/model.rs, the empty plan's early return) leaving the files
/// its killed attempt moved in the output folder, unlisted (readers that list the folder
/// see their rows), until the next run heals them (healing never takes a running run's own
/// files for leftovers: src/table/heal.rs).
#[test]
fn bug_a_resumed_run_with_nothing_to_compute_leaves_no_moved_files() {
    let listed = |d: &Path| -> Vec<String> {
        let m = read_json(&d.join("out/daily/_MANIFEST"));
        m["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap().to_string())
            .collect()
    };
    let unlisted = |d: &Path| -> Vec<String> {
        let listed = listed(d);
        files_under(&d.join("out/daily"))
            .into_iter()
            .filter(|f| f.ends_with(".parquet") && !listed.contains(f))
            .collect()
    };
    // The moment is brief: a few tries.
    for _ in 0..10 {
        let dir = pipeline(TOML, &[]);
        let d = dir.path();
        write_all(d, &day_one());
        run_with_report(d, &["--as-of", "2024-01-11"], 0);
        Events::day(11, 100, 11_000).write(&d.join("data/events-11.csv"));
        let manifest = std::fs::read(d.join("out/daily/_MANIFEST")).unwrap();
        let mut child = spawn_sluice(d, &["run", ".", "--as-of", "2024-01-12"]);
        let t = std::time::Instant::now();
        while unlisted(d).is_empty()
            && child.try_wait().unwrap().is_none()
            && t.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let caught = std::fs::read(d.join("out/daily/_MANIFEST")).unwrap() == manifest
            && !unlisted(d).is_empty();
        if !caught {
            continue;
        }
        std::fs::remove_file(d.join("data/events-11.csv")).unwrap();
        let (run, r) = run_with_report(d, &["--as-of", "2024-01-12"], 0);
        assert!(run.stderr.contains("resuming run"), "{}", run.stderr);
        assert!(units_of(&r).is_empty());
        assert_eq!(unlisted(d), Vec::<String>::new());
        return;
    }
    panic!("no run was killed between moving its files and its commit");
}
