//! Quarantine of bad rows: every kind of bad CSV row in `testdata/bad/quarantine/items.csv`
//! goes to the rejects output with its file, line, raw text and reason; every good row goes
//! on; a source past `max_bad_rows` fails its model with nothing published.

use crate::support::*;

/// Source `items` = `testdata/bad/quarantine/items.csv` with a declared schema, `extra` lines
/// and `on_bad_rows = "quarantine"`; model `clean` = every row of it.
fn pipeline(extra: &str) -> tempfile::TempDir {
    OneModel::new("items", "clean")
        .source_toml(
            "format = \"csv\"\nschema = \"id BIGINT, name VARCHAR, amount DECIMAL(10,2), day DATE\"",
        )
        .source_toml(extra)
        .source_toml("on_bad_rows = \"quarantine\"")
        .copy(testdata("bad").join("quarantine/items.csv"), "items.csv")
        .build()
}

#[tokio::test]
async fn bad_rows_go_to_rejects_with_file_line_and_reason_and_good_rows_go_on() {
    let dir = pipeline("");
    let (_, r) = run_with_report(dir.path(), &[], 0);
    let m = &r["models"][0];
    // Rows read = rows written + rows rejected (the query keeps every row).
    assert_eq!(m["rows_rejected"], 6, "{m}");
    assert_eq!(m["rows_out"], 4, "{m}");
    assert_eq!(m["rows_in"], 10, "{m}");

    let good = query_output(
        &format!("{}/out/clean/", dir.path().display()),
        "parquet",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, name, CAST(amount AS VARCHAR) AS amount, \
         CAST(day AS VARCHAR) AS day FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        rows(&good, &["id", "name", "amount", "day"]),
        vec![
            vec!["1", "apple", "1.50", "2024-01-01"],
            vec!["4", "kiwi, green", "3.25", "2024-01-04"],
            vec!["8", "multi\nline", "7.00", "2024-01-08"],
            vec!["9", "date", "8.00", "2024-01-09"],
        ]
        .into_iter()
        .map(|r| r.into_iter().map(String::from).collect::<Vec<_>>())
        .collect::<Vec<_>>()
    );

    // The rejects: one Parquet file per run, readable as a table.
    let rejects = files_under(&dir.path().join(".sluice/rejects/items"));
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    assert!(rejects[0].starts_with("run="), "{rejects:?}");
    let got = query_output(
        &format!("{}/.sluice/rejects/items/", dir.path().display()),
        "parquet",
        &[],
        "SELECT file, CAST(line AS VARCHAR) AS l, raw, reason FROM t ORDER BY line",
    )
    .await;
    let got = rows(&got, &["file", "l", "raw", "reason"]);
    let expected = [
        (
            "3",
            "2,pear,abc,2024-01-02",
            "column amount: \"abc\" is not Decimal128(10, 2)",
        ),
        ("4", "3,fig,2.00", "expected 4 fields, found 3"),
        (
            "6",
            "5,lime,4.00,2024-13-45",
            "column day: \"2024-13-45\" is not Date32",
        ),
        (
            "7",
            "6,plum,5.00,2024-01-06,extra",
            "expected 4 fields, found 5",
        ),
        (
            "8",
            "7,caf\u{fffd},6.00,2024-01-07",
            "invalid UTF-8 in column name",
        ),
        (
            "12",
            "10,\"unclosed,9.00,2024-01-10\n11,never,1.00,2024-01-11",
            "expected 4 fields, found 2",
        ),
    ];
    // (`rows` sorts rows as text, so line 12 comes before 3.)
    let mut expected: Vec<Vec<String>> = expected
        .iter()
        .map(|(line, raw, reason)| {
            vec![
                got[0][0].clone(),
                line.to_string(),
                raw.to_string(),
                reason.to_string(),
            ]
        })
        .collect();
    expected.sort();
    assert!(got[0][0].ends_with("data/items.csv"), "{got:?}");
    assert_eq!(got, expected);
}

#[test]
fn past_max_bad_rows_the_model_fails_and_nothing_is_published() {
    let dir = pipeline("max_bad_rows = 5\n");
    let (run, report) = run_with_report(dir.path(), &[], 1);
    // The refused model still reports the rows it set aside (issue 11: it said 0).
    let model = &report["models"][0];
    assert_eq!(model["rows_rejected"], 6, "{model}");
    let e = &run.stderr;
    assert!(
        e.contains("source 'items': 6 bad rows (max_bad_rows = 5), nothing published"),
        "{e}"
    );
    assert!(e.contains("items.csv:3: column amount"), "{e}");
    assert!(!dir.path().join("out/clean/_MANIFEST").exists());
    // Within the limit, it runs.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("max_bad_rows = 5", "max_bad_rows = 6")
    });
    sluice(dir.path(), &["run", "."]).expect(0);
    assert!(dir.path().join("out/clean/_MANIFEST").exists());

    // A share: 6 of 10 rows is over 0.5.
    let dir = pipeline("max_bad_ratio = 0.5\n");
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(
        run.stderr
            .contains("6 bad rows (60.00 % of 10 rows, max_bad_ratio = 0.5), nothing published"),
        "{}",
        run.stderr
    );
}

#[test]
fn without_quarantine_the_first_bad_row_fails_naming_file_and_line() {
    let dir = pipeline("");
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace("on_bad_rows = \"quarantine\"\n", "")
    });
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(run.stderr.contains("items.csv:"), "{}", run.stderr);
}

/// The rejects of a pipeline's source as (file name, line, reason) rows, sorted by line.
pub async fn rejects_of(dir: &std::path::Path, source: &str) -> Vec<(String, u64, String)> {
    let got = query_output(
        &format!("{}/.sluice/rejects/{source}/", dir.display()),
        "parquet",
        &[],
        "SELECT file, CAST(line AS VARCHAR) AS l, reason FROM t",
    )
    .await;
    let mut out: Vec<(String, u64, String)> = rows(&got, &["file", "l", "reason"])
        .into_iter()
        .map(|r| {
            let name = r[0].rsplit('/').next().unwrap_or_default().to_string();
            (name, r[1].parse().unwrap(), r[2].clone())
        })
        .collect();
    out.sort_by_key(|r| (r.0.clone(), r.1));
    out
}

#[tokio::test]
async fn json_lines_that_do_not_fit_are_quarantined_by_line() {
    let dir = OneModel::new("items", "clean")
        .source_toml(
            "format = \"json\"\nschema = \"id BIGINT, name VARCHAR, day DATE\"\non_bad_rows = \"quarantine\"",
        )
        .copy(
            testdata("bad").join("quarantine/items.jsonl"),
            "items.json",
        )
        .build();
    let d = dir.path();
    let (_, r) = run_with_report(d, &[], 0);
    let m = &r["models"][0];
    assert_eq!(
        (m["rows_out"].as_u64(), m["rows_rejected"].as_u64()),
        (Some(3), Some(5)),
        "{m}"
    );
    let good = query_output(
        &format!("{}/out/clean/", d.display()),
        "parquet",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, name, CAST(day AS VARCHAR) AS day FROM t",
    )
    .await;
    assert_eq!(
        rows(&good, &["id", "name", "day"]),
        [
            ["1", "apple", "2024-01-01"],
            ["6", "plum", "2024-01-06"],
            ["8", "date", "2024-01-08"]
        ]
        .map(|r| r.map(String::from).to_vec())
        .to_vec()
    );
    let rejects = rejects_of(d, "items").await;
    let lines: Vec<u64> = rejects.iter().map(|r| r.1).collect();
    assert_eq!(lines, vec![2, 3, 5, 6, 8], "{rejects:?}");
    // A value of the wrong type names its column.
    assert!(rejects[0].2.starts_with("column id:"), "{rejects:?}");
    assert!(rejects[2].2.starts_with("column day:"), "{rejects:?}");
    // A line that is not JSON says so, and blames no column.
    assert!(rejects[1].2.contains("whilst parsing"), "{rejects:?}");
    assert!(!rejects[1].2.starts_with("column"), "{rejects:?}");
}

#[tokio::test]
async fn hive_partitioned_csv_gets_its_partition_values_and_a_bad_folder_is_one_reject() {
    let dir = OneModel::new("items", "clean")
        .source_toml(
            "format = \"csv\"\npartition_cols = [\"dt:date\"]\n\
             schema = \"id BIGINT, qty INT\"\non_bad_rows = \"quarantine\"",
        )
        .file("dt=2024-01-01/a.csv", "id,qty\n1,10\n2,oops\n3,30\n")
        .file("dt=2024-01-02/b.csv", "id,qty\n4,40\n5,50,extra\n")
        // A folder whose value is not a DATE: none of its rows can carry a partition value.
        .file("dt=someday/c.csv", "id,qty\n6,60\n")
        .build();
    let d = dir.path();
    run_with_report(d, &[], 0);
    let good = query_output(
        &format!("{}/out/clean/", d.display()),
        "parquet",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, CAST(qty AS VARCHAR) AS qty, \
         CAST(dt AS VARCHAR) AS dt, arrow_typeof(dt) AS ty FROM t",
    )
    .await;
    assert_eq!(
        rows(&good, &["id", "qty", "dt", "ty"]),
        [
            ["1", "10", "2024-01-01", "Date32"],
            ["3", "30", "2024-01-01", "Date32"],
            ["4", "40", "2024-01-02", "Date32"]
        ]
        .map(|r| r.map(String::from).to_vec())
        .to_vec()
    );
    let rejects = rejects_of(d, "items").await;
    assert_eq!(
        rejects,
        vec![
            (
                "a.csv".to_string(),
                3,
                "column qty: \"oops\" is not Int32".to_string()
            ),
            (
                "b.csv".to_string(),
                3,
                "expected 2 fields, found 3".to_string()
            ),
            (
                "c.csv".to_string(),
                0,
                "partition value dt=\"someday\" is not Date32; the file was not read".to_string()
            ),
        ]
    );
}

#[tokio::test]
async fn a_gzip_source_is_quarantined_like_the_plain_file() {
    let dir = pipeline("compression = \"gzip\"\n");
    let d = dir.path();
    let plain = std::fs::read(d.join("data/items.csv")).unwrap();
    std::fs::remove_file(d.join("data/items.csv")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &plain).unwrap();
    std::fs::write(d.join("data/items.csv.gz"), gz.finish().unwrap()).unwrap();
    let (_, r) = run_with_report(d, &[], 0);
    let m = &r["models"][0];
    assert_eq!(
        (m["rows_out"].as_u64(), m["rows_rejected"].as_u64()),
        (Some(4), Some(6)),
        "{m}"
    );
    let lines: Vec<u64> = rejects_of(d, "items").await.iter().map(|r| r.1).collect();
    assert_eq!(lines, vec![3, 4, 6, 7, 8, 12]);
}

#[test]
fn a_filter_over_a_quarantined_source_balances_in_out_filtered_and_rejected() {
    let dir = pipeline("");
    let d = dir.path();
    // Of the 4 good rows (amounts 1.50, 3.25, 7.00, 8.00) the filter keeps 3.
    std::fs::write(
        d.join("queries/clean.sql"),
        "SELECT id, name FROM items WHERE amount > 2",
    )
    .unwrap();
    let (run, r) = run_with_report(d, &[], 0);
    let m = &r["models"][0];
    assert_eq!(m["rows_in_by_source"], serde_json::json!({ "items": 10 }));
    assert_eq!(
        (
            &m["rows_in"],
            &m["rows_out"],
            &m["rows_filtered"],
            &m["rows_rejected"]
        ),
        (
            &serde_json::json!(10),
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(6)
        )
    );
    assert_eq!(m["row_balance"], "10 in = 3 out + 1 filtered + 6 rejected");
    assert!(
        run.stderr
            .contains("rows: 10 in = 3 out + 1 filtered + 6 rejected")
            || run
                .stdout
                .contains("rows: 10 in = 3 out + 1 filtered + 6 rejected"),
        "{}{}",
        run.stdout,
        run.stderr
    );
}

/// Two models reading one quarantined source each write the rejects they counted, side by
/// side (before, both wrote `run=<id>/rejects.parquet`, the second over the first).
#[tokio::test]
async fn two_models_over_one_quarantined_source_each_keep_their_rejects() {
    let dir = pipeline("");
    let d = dir.path();
    std::fs::write(d.join("queries/again.sql"), "SELECT * FROM items").unwrap();
    append_toml(d, "[models.again.sink]\nlocation = \"out/again/\"");
    let (_, report) = run_with_report(d, &[], 0);
    let counted = report_model(&report, "clean")["rows_rejected"]
        .as_u64()
        .unwrap();
    assert_eq!(report_model(&report, "again")["rows_rejected"], counted);
    let rejects = files_under(&d.join(".sluice/rejects/items"));
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    let models: Vec<&str> = rejects
        .iter()
        .map(|f| f.split("model=").nth(1).unwrap().split('/').next().unwrap())
        .collect();
    let mut sorted = models.clone();
    sorted.sort();
    assert_eq!(sorted.len(), 2);
    assert_ne!(sorted[0], sorted[1], "{rejects:?}");
    // Each holds every bad row its model counted.
    for f in &rejects {
        let path = d.join(".sluice/rejects/items").join(f);
        assert_eq!(parquet_rows(&path), counted, "{f}");
    }
    assert!(counted > 0);
}
