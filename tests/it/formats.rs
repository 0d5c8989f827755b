//! Source options on `testdata/formats`: a `;`-delimited CSV with `'` quotes and a `NA` null
//! value, a gzip CSV, a glob over JSON lines. Expected values are worked out by hand from the
//! files (see the comments).

use crate::support::*;

#[tokio::test]
async fn csv_options_compression_and_globs() {
    let dir = pipeline_copy("formats");
    sluice(dir.path(), &["run", "."]).expect(0);
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    // people.csv: Berlin has ids 1 (10) and 4 (3); Paris has id 3 whose score is NA; id 2's
    // city is NA. 'Smith; John' keeps its quoted delimiter, 'O''Brien' its doubled quote.
    assert_eq!(
        output_rows(
            dir.path(),
            "by_city",
            &["city", "people", "score", "scored", "last_name"]
        )
        .await,
        vec![
            s(&["Berlin", "2", "13", "2", "Zoe"]),
            s(&["NULL", "1", "7", "1", "Ann"]),
            s(&["Paris", "1", "NULL", "0", "O'Brien"]),
        ]
    );
    let names = query_output(
        &format!("{}/", dir.path().join("out/by_city").display()),
        "parquet",
        &[],
        "SELECT last_name FROM t",
    )
    .await;
    assert_eq!(rows(&names, &["last_name"]).len(), 3);
    // events.csv.gz: n = 1..30, kind 'view' when n % 3 == 0 (10 rows, sum 165), else 'click'
    // (20 rows, sum 465 - 165 = 300).
    assert_eq!(
        output_rows(dir.path(), "event_kinds", &["kind", "n", "total"]).await,
        vec![s(&["click", "20", "300"]), s(&["view", "10", "165"])]
    );
    // logs/*.jsonl: a.jsonl + b.jsonl (readme.txt is not matched by the glob).
    assert_eq!(
        output_rows(dir.path(), "log_levels", &["level", "n", "ms"]).await,
        vec![
            s(&["error", "2", "120"]),
            s(&["info", "2", "12"]),
            s(&["warn", "1", "9"])
        ]
    );
}

#[test]
fn bad_values_name_file_and_line_with_a_null_value_too() {
    let dir = pipeline_copy("formats");
    let people = dir.path().join("data/people.csv");
    edit_file(&people, |text| {
        text.replace("4;Zoe;Berlin;3", "4;Zoe;Berlin;three")
    });
    // With a declared schema the bad value is found while reading, not while inferring.
    edit_file(&dir.path().join("sluice.toml"), |toml| {
        toml.replace(
            "null_value = \"NA\"",
            "null_value = \"NA\"\nschema = \"id BIGINT, name VARCHAR, city VARCHAR, score INT\"",
        )
    });
    let run = sluice(dir.path(), &["run", ".", "--select", "by_city"]).expect(1);
    assert!(
        run.stderr.contains(&format!("{}:5:", people.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("column score: \"three\" is not Int32"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_json_line_names_file_and_line() {
    let dir = pipeline_copy("formats");
    let b = dir.path().join("data/logs/b.jsonl");
    std::fs::write(
        &b,
        "{\"level\":\"info\",\"ms\":7}\n{\"level\":\"warn\",\"ms\":9\n",
    )
    .unwrap();
    let run = sluice(dir.path(), &["run", ".", "--select", "log_levels"]).expect(1);
    assert!(
        run.stderr.contains(&format!("{}:2:", b.display())),
        "{}",
        run.stderr
    );
}
