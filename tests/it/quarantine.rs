//! Quarantine of bad rows: every kind of bad CSV row in `testdata/bad/quarantine/items.csv`
//! goes to the rejects output with its file, line, raw text and reason; every good row goes
//! on; a source past `max_bad_rows` fails its model with nothing published.

use crate::support::*;

const TOML: &str = r#"
[sources.items]
location = "data/"
format = "csv"
schema = "id BIGINT, name VARCHAR, amount DECIMAL(10,2), day DATE"
on_bad_rows = "quarantine"

[models.clean.sink]
location = "out/clean/"
"#;

fn pipeline(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("data")).unwrap();
    std::fs::create_dir_all(d.join("queries")).unwrap();
    std::fs::copy(
        testdata("bad").join("quarantine/items.csv"),
        d.join("data/items.csv"),
    )
    .unwrap();
    std::fs::write(
        d.join("sluice.toml"),
        TOML.replace("on_bad_rows", &format!("{extra}on_bad_rows")),
    )
    .unwrap();
    std::fs::write(d.join("queries/clean.sql"), "SELECT * FROM items").unwrap();
    dir
}

#[tokio::test]
async fn bad_rows_go_to_rejects_with_file_line_and_reason_and_good_rows_go_on() {
    let dir = pipeline("");
    let report = dir.path().join("r.json");
    sluice(
        dir.path(),
        &["run", ".", "--report", report.to_str().unwrap()],
    )
    .expect(0);
    let m = &read_json(&report)["models"][0];
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
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    let e = &run.stderr;
    assert!(
        e.contains("source 'items': 6 bad rows (max_bad_rows = 5), nothing published"),
        "{e}"
    );
    assert!(e.contains("items.csv:3: column amount"), "{e}");
    assert!(!dir.path().join("out/clean/_MANIFEST").exists());
    // Within the limit, it runs.
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace("max_bad_rows = 5", "max_bad_rows = 6"),
    )
    .unwrap();
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
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml")).unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        toml.replace("on_bad_rows = \"quarantine\"\n", ""),
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(run.stderr.contains("items.csv:"), "{}", run.stderr);
}
