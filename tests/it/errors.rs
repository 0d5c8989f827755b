//! Bad input: each case gets its exit status, a message naming what and where, no panic, and
//! the previous output left as it was.

use std::path::Path;

use crate::support::*;

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

#[test]
fn malformed_toml_names_file_line_and_column() {
    let (dir, before) = ran_shop();
    write(
        dir.path(),
        "sluice.toml",
        "name = \"shop\"\n[settings]\nthreads = = 2\n",
    );
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(run.stderr.contains("sluice.toml:3:"), "{}", run.stderr);
    assert_eq!(before, snapshot(&dir.path().join("out")));
}

#[test]
fn unknown_key_format_and_mode_name_their_lines() {
    let dir = pipeline_copy("shop");
    let base = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    let cases = [
        (
            base.replace(
                "format = \"csv\"\npartition_cols",
                "format = \"xml\"\npartition_cols",
            ),
            "unknown variant `xml`",
        ),
        (
            base.replace(
                "partition_by = [\"order_date\"]",
                "partition_by = [\"order_date\"]\nmode = \"replace\"",
            ),
            "unknown variant `replace`",
        ),
        (
            base.replace("threads = 2", "thread = 2"),
            "unknown field `thread`",
        ),
    ];
    for (text, expected) in cases {
        write(dir.path(), "sluice.toml", &text);
        let run = sluice(dir.path(), &["plan", "."]).expect(2);
        assert!(run.stderr.contains(expected), "{}", run.stderr);
        let line = text
            .lines()
            .position(|l| l.contains("xml") || l.contains("replace") || l.starts_with("thread "))
            .unwrap()
            + 1;
        assert!(
            run.stderr.contains(&format!("sluice.toml:{line}:")),
            "line {line}: {}",
            run.stderr
        );
    }
}

#[test]
fn sql_syntax_error_names_the_file() {
    let (dir, before) = ran_shop();
    write(
        dir.path(),
        "queries/daily_revenue.sql",
        "SELECT order_date,\nFROM paid_orders GROUP BY",
    );
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr
            .contains("queries/daily_revenue.sql: SQL syntax error"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("Line: 2"), "{}", run.stderr);
    assert_eq!(before, snapshot(&dir.path().join("out")));
}

#[test]
fn unknown_table_names_model_file_and_suggestion() {
    let dir = pipeline_copy("shop");
    write(
        dir.path(),
        "queries/daily_revenue.sql",
        "SELECT * FROM paid_order",
    );
    let run = sluice(dir.path(), &["plan", "."]).expect(2);
    assert!(
        run.stderr.contains(
            "model 'daily_revenue' reads unknown table 'paid_order'; did you mean 'paid_orders'?"
        ),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("daily_revenue.sql"), "{}", run.stderr);
}

#[test]
fn unknown_column_is_an_invalid_pipeline() {
    let dir = pipeline_copy("shop");
    write(
        dir.path(),
        "queries/daily_revenue.sql",
        "SELECT order_date, SUM(amount_usd) AS revenue FROM paid_orders GROUP BY order_date",
    );
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("model 'daily_revenue'"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("amount_usd"), "{}", run.stderr);
    assert!(
        !dir.path().join("out").exists(),
        "nothing runs when a model does not plan"
    );
}

#[test]
fn dependency_cycle_is_named() {
    let dir = pipeline_copy("shop");
    write(dir.path(), "queries/a.sql", "SELECT * FROM b");
    write(dir.path(), "queries/b.sql", "SELECT * FROM a");
    let run = sluice(dir.path(), &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("dependency cycle: a -> b -> a")
            || run.stderr.contains("dependency cycle: b -> a -> b"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_source_names_source_and_location() {
    let dir = pipeline_copy("shop");
    std::fs::remove_file(dir.path().join("data/customers.jsonl")).unwrap();
    let (run, r) = run_with_report(dir.path(), &[], 1);
    assert!(run.stderr.contains("source 'customers'"), "{}", run.stderr);
    assert!(run.stderr.contains("customers.jsonl"), "{}", run.stderr);
    // The run stopped before any model ran, and its report says why.
    assert_eq!(r["status"], "failed");
    assert_eq!(r["pipeline"], "shop");
    assert!(
        r["error"].as_str().unwrap().contains("customers.jsonl"),
        "{r}"
    );
    // A file may yet appear: a retry may help.
    assert_eq!(
        (&r["exit_code"], &r["retryable"]),
        (&1.into(), &true.into())
    );
    assert!(!dir.path().join("out").exists());
    // An unwritable report path is bad usage, found before anything runs.
    let run = sluice(
        dir.path(),
        &["run", ".", "--report", "/nonexistent/dir/r.json"],
    )
    .expect(2);
    assert!(run.stderr.contains("--report"), "{}", run.stderr);
}

#[test]
fn missing_sql_file_and_pipeline_are_usage_errors() {
    let dir = shop_with(&[], "[models.ghost]\nsql = \"queries/ghost.sql\"\n");
    let run = sluice(dir.path(), &["plan", "."]).expect(2);
    assert!(run.stderr.contains("models.ghost.sql"), "{}", run.stderr);
    let empty = tempfile::tempdir().unwrap();
    let run = sluice(empty.path(), &["run", "."]).expect(2);
    assert!(run.stderr.contains("sluice.toml"), "{}", run.stderr);
}

#[test]
fn csv_row_that_does_not_parse_names_file_and_line() {
    let (dir, before) = ran_shop();
    let file = dir.path().join("data/orders/dt=2024-01-03/orders.csv");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // Line 5 of the file: a quantity that is not a number.
    let mut cols: Vec<String> = lines[4].split(',').map(String::from).collect();
    cols[3] = "seven".into();
    lines[4] = cols.join(",");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(
        run.stderr.contains(&format!("{}:5:", file.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("column quantity: \"seven\" is not Int32"),
        "{}",
        run.stderr
    );
    assert_eq!(before, snapshot(&dir.path().join("out")));
}

#[test]
fn truncated_parquet_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("{}/data/", dir.path().display());
    sluice(dir.path(), &["sql", "-e", "SELECT 1 AS a", "--out", &data]).expect(0);
    let m = read_json(&dir.path().join("data/_MANIFEST"));
    let file = dir
        .path()
        .join("data")
        .join(m["files"][0]["path"].as_str().unwrap());
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT * FROM t",
            "--table",
            &format!("t={data}"),
        ],
    )
    .expect(1);
    assert!(
        run.stderr
            .contains(file.file_name().unwrap().to_str().unwrap()),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let t = orders_arg();
    let out = format!("{}/o/", dir.path().display());
    let run = sluice(
        dir.path(),
        &["sql", "-e", "SELECT 1", "--out", &out, "--mode", "upsert"],
    )
    .expect(2);
    assert!(
        run.stderr.contains("--mode") && run.stderr.contains("upsert"),
        "{}",
        run.stderr
    );
    let run = sluice(
        dir.path(),
        &["sql", "-e", "SELECT 1", "--out", &out, "--format", "xls"],
    )
    .expect(2);
    assert!(run.stderr.contains("--format"), "{}", run.stderr);
    let run = sluice(
        dir.path(),
        &[
            "sql",
            "-e",
            "SELECT * FROM o",
            "--table",
            &t,
            "--out",
            &out,
            "--partition-by",
            "nope",
        ],
    )
    .expect(2);
    assert!(
        run.stderr.contains("partition column 'nope'"),
        "{}",
        run.stderr
    );
    let run = sluice(dir.path(), &["run", ".", "--memory-limit", "lots"]).expect(2);
    assert!(run.stderr.contains("--memory-limit"), "{}", run.stderr);
    sluice(dir.path(), &["frobnicate"]).expect(2);
}

/// A `target_file_size` that is not a size, or above 4GiB for an S3 sink (publishing copies
/// each file, and S3 copies at most 5GiB at once), is refused before anything runs, exit 2,
/// naming the setting: in `sluice.toml` (`plan`) and on `sluice sql --out`.
#[test]
fn target_file_size_refused_when_not_a_size_or_too_large_for_s3() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    write(dir.path(), "queries/a.sql", "SELECT 1 AS x");
    for (sink, expected) in [
        (
            "target_file_size = \"big\"",
            "\"big\" is not a size (examples: \"512MiB\", \"1GiB\")",
        ),
        (
            "location = \"s3://lake/out/a/\"\ntarget_file_size = \"5GiB\"",
            "5.0 GiB is too large for an S3 sink: at most 4GiB",
        ),
    ] {
        let text = format!("name = \"p\"\n[models.a.sink]\n{sink}\n");
        write(dir.path(), "sluice.toml", &text);
        let line = text
            .lines()
            .position(|l| l.starts_with("target_file_size"))
            .unwrap()
            + 1;
        let run = sluice(dir.path(), &["plan", "."]).expect(2);
        assert!(
            run.stderr.contains("models.a.sink.target_file_size") && run.stderr.contains(expected),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("sluice.toml:{line}:")),
            "names the line: {}",
            run.stderr
        );
    }
    // Local disk takes any size; 4GiB is the most an S3 sink takes.
    write(
        dir.path(),
        "sluice.toml",
        "name = \"p\"\n[models.a.sink]\ntarget_file_size = \"8GiB\"\n",
    );
    sluice(dir.path(), &["plan", "."]).expect(0);

    let sql = |out: &str, size: &str| {
        sluice(
            dir.path(),
            &[
                "sql",
                "-e",
                "SELECT 1 AS x",
                "--out",
                out,
                "--target-file-size",
                size,
            ],
        )
    };
    let run = sql("s3://lake/out/b/", "6GiB").expect(2);
    assert!(
        run.stderr
            .contains("--target-file-size 6.0 GiB is too large for an S3 sink: at most 4GiB"),
        "{}",
        run.stderr
    );
    let run = sql("out/c/", "huge").expect(2);
    assert!(
        run.stderr.contains("--target-file-size") && run.stderr.contains("is not a size"),
        "{}",
        run.stderr
    );
    sql("out/c/", "1KiB").expect(0);
    assert!(dir.path().join("out/c/_MANIFEST").exists());
}

/// The report says what the exit status says, for an orchestrator deciding on a retry: a
/// pipeline that must be fixed (exit 2) is not retryable, a run that succeeded has nothing
/// to retry.
#[test]
fn the_report_says_whether_a_retry_may_help() {
    let dir = pipeline_copy("shop");
    let (_, r) = run_with_report(dir.path(), &[], 0);
    assert_eq!(r["exit_code"], 0);
    assert!(r.get("retryable").is_none(), "{r}");
    edit_file(&dir.path().join("sluice.toml"), |t| {
        t.replacen("threads = 2\n", "threads = 0\n", 1)
    });
    let (run, r) = run_with_report(dir.path(), &[], 2);
    assert!(run.stderr.contains("threads"), "{}", run.stderr);
    assert_eq!(r["status"], "failed");
    assert_eq!(
        (&r["exit_code"], &r["retryable"]),
        (&2.into(), &false.into())
    );
}

/// `sluice run --window`: started outside its window (in its time zone), nothing runs, the
/// report is `deferred` with when the window next opens, and the exit status is 75 (try
/// again later); started inside, the run runs. A bad window or zone is bad usage.
#[test]
fn a_run_started_outside_its_window_is_deferred() {
    let dir = pipeline_copy("shop");
    // 12:00 UTC is 13:00 in Berlin in January: outside 01:00-05:00.
    let (run, r) = run_with_report(
        dir.path(),
        &[
            "--window",
            "01:00-05:00",
            "--timezone",
            "Europe/Berlin",
            "--now",
            "2026-01-10T12:00:00Z",
        ],
        75,
    );
    assert!(
        run.stderr
            .contains("outside the run window 01:00-05:00 (Europe/Berlin)")
            && run
                .stderr
                .contains("next opens at 2026-01-11T01:00:00+01:00"),
        "{}",
        run.stderr
    );
    assert_eq!(r["status"], "deferred");
    assert_eq!(r["next_window"], "2026-01-11T01:00:00+01:00");
    assert_eq!(
        (&r["exit_code"], &r["retryable"]),
        (&75.into(), &true.into())
    );
    assert!(!dir.path().join("out").exists());
    // 00:30 UTC is 01:30 in Berlin: inside.
    let (_, r) = run_with_report(
        dir.path(),
        &[
            "--window",
            "Sat 00:00-Sun 23:59",
            "--window",
            "01:00-05:00",
            "--timezone",
            "Europe/Berlin",
            "--now",
            "2026-01-14T00:30:00Z",
        ],
        0,
    );
    assert_eq!(r["status"], "success");
    assert!(dir.path().join("out").exists());
    for (args, why) in [
        (vec!["--window", "1-5"], "not a run window"),
        (
            vec!["--window", "01:00-05:00", "--timezone", "Mars/Olympus"],
            "not a time zone",
        ),
    ] {
        let mut all = vec!["run", "."];
        all.extend(args);
        let run = sluice(dir.path(), &all).expect(2);
        assert!(run.stderr.contains(why), "{}", run.stderr);
    }
}
