//! A write that adds to an output (`append`, `overwrite_partitions`) must have the output's
//! columns: the same names, in the same order, with the same types. Otherwise it is refused
//! (exit 2) before anything runs or is written, naming the model, the output and each
//! column that changed; the output is left as it was and still reads back.

use crate::support::*;

/// Model `people` over source `src` (`data/p.csv`), written as `format` in `mode`.
fn pipeline(format: &str, mode: &str, query: &str, extra_sink: &str) -> tempfile::TempDir {
    OneModel::new("src", "people")
        .source_toml("format = \"csv\"")
        .file("p.csv", "id,name,city\n1,Ann,Lyon\n2,Bob,Paris\n")
        .query(query)
        .sink_toml(&format!(
            "format = \"{format}\"\nmode = \"{mode}\"\n{extra_sink}"
        ))
        .build()
}

fn set_query(dir: &std::path::Path, sql: &str) {
    std::fs::write(dir.join("queries/people.sql"), sql).unwrap();
}

#[tokio::test]
async fn a_csv_append_with_reordered_columns_is_refused_and_the_output_kept() {
    let dir = pipeline("csv", "append", "SELECT id, name, city FROM src", "");
    let d = dir.path();
    sluice(d, &["run", "."]).expect(0);
    let before = snapshot(&d.join("out/people"));

    set_query(d, "SELECT id, city, name FROM src");
    for command in ["plan", "run"] {
        let run = sluice(d, &[command, "."]).expect(2);
        let e = &run.stderr;
        assert!(e.contains("people"), "{command}: {e}");
        assert!(e.contains("out/people/"), "{command}: {e}");
        assert!(e.contains("column city was 3rd, now 2nd"), "{command}: {e}");
        assert!(e.contains("column name was 2nd, now 3rd"), "{command}: {e}");
        assert!(e.contains("mode = \"overwrite\""), "{command}: {e}");
    }
    assert_eq!(snapshot(&d.join("out/people")), before, "nothing written");
    let got = query_output(
        &format!("{}/out/people/", d.display()),
        "csv",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, name, city FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        rows(&got, &["id", "name", "city"]),
        vec![
            vec!["1".to_string(), "Ann".into(), "Lyon".into()],
            vec!["2".to_string(), "Bob".into(), "Paris".into()],
        ]
    );

    // The same columns in the same order append as before.
    set_query(d, "SELECT id + 10 AS id, name, city FROM src");
    sluice(d, &["run", "."]).expect(0);
    let got = query_output(
        &format!("{}/out/people/", d.display()),
        "csv",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, name, city FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        rows(&got, &["id", "name", "city"])
            .into_iter()
            .map(|r| r.join(","))
            .collect::<Vec<_>>(),
        vec!["1,Ann,Lyon", "11,Ann,Lyon", "12,Bob,Paris", "2,Bob,Paris"]
    );
}

#[tokio::test]
async fn a_parquet_append_with_a_changed_type_is_refused_and_the_output_still_reads() {
    let dir = pipeline("parquet", "append", "SELECT id, name FROM src", "");
    let d = dir.path();
    sluice(d, &["run", "."]).expect(0);
    let before = snapshot(&d.join("out/people"));

    set_query(d, "SELECT CAST(id AS VARCHAR) || 'x' AS id, name FROM src");
    let run = sluice(d, &["run", "."]).expect(2);
    assert!(
        run.stderr.contains("column id was Int64, now Utf8"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("model 'people'"), "{}", run.stderr);
    assert_eq!(snapshot(&d.join("out/people")), before, "nothing written");
    assert_eq!(
        output_rows(d, "people", &["id", "name"]).await,
        vec![
            vec!["1".to_string(), "Ann".into()],
            vec!["2".to_string(), "Bob".into()],
        ]
    );
    // A reader through sluice still reads it.
    let read = sluice(
        d,
        &[
            "sql",
            "-e",
            "SELECT COUNT(*) AS n FROM p",
            "--table",
            "p=out/people/",
        ],
    )
    .expect(0);
    assert!(read.stdout.contains("| 2 "), "{}", read.stdout);
}

#[tokio::test]
async fn overwrite_partitions_with_a_new_or_a_missing_column_is_refused() {
    let dir = pipeline(
        "parquet",
        "overwrite_partitions",
        "SELECT id, name, city FROM src",
        "partition_by = [\"city\"]\n",
    );
    let d = dir.path();
    sluice(d, &["run", "."]).expect(0);
    let before = snapshot(&d.join("out/people"));
    for (query, change) in [
        (
            "SELECT id, name, city, 1 AS score FROM src",
            "column score is new",
        ),
        ("SELECT id, city FROM src", "column name is missing"),
    ] {
        set_query(d, query);
        let run = sluice(d, &["run", "."]).expect(2);
        assert!(run.stderr.contains(change), "{query}: {}", run.stderr);
        assert_eq!(snapshot(&d.join("out/people")), before, "{query}");
    }
    // overwrite replaces the output, new columns and all.
    edit_file(&d.join("sluice.toml"), |t| {
        t.replace("mode = \"overwrite_partitions\"", "mode = \"overwrite\"")
    });
    sluice(d, &["run", "."]).expect(0);
    let got = query_output(
        &format!("{}/out/people/", d.display()),
        "parquet",
        &["city"],
        "SELECT CAST(id AS VARCHAR) AS id, city FROM t",
    )
    .await;
    assert_eq!(
        rows(&got, &["id", "city"]),
        vec![
            vec!["1".to_string(), "Lyon".into()],
            vec!["2".to_string(), "Paris".into()],
        ]
    );
}

#[tokio::test]
async fn sql_out_append_with_changed_columns_is_refused_and_the_output_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let append = |sql: &str| {
        sluice(
            d,
            &[
                "sql", "-q", "-e", sql, "--out", "out/t/", "--format", "csv", "--mode", "append",
            ],
        )
    };
    append("SELECT 1 AS id, 'Ann' AS name, 'Lyon' AS city").expect(0);
    let before = snapshot(&d.join("out/t"));
    let run = append("SELECT 2 AS id, 'Paris' AS city, 'Bob' AS name").expect(2);
    assert!(run.stderr.contains("out/t/"), "{}", run.stderr);
    assert!(
        run.stderr.contains("column city was 3rd, now 2nd"),
        "{}",
        run.stderr
    );
    let run = append("SELECT 'two' AS id, 'Bob' AS name, 'Paris' AS city").expect(2);
    assert!(
        run.stderr.contains("column id was Int64, now Utf8"),
        "{}",
        run.stderr
    );
    assert_eq!(snapshot(&d.join("out/t")), before, "nothing written");
    append("SELECT 2 AS id, 'Bob' AS name, 'Paris' AS city").expect(0);
    let got = query_output(
        &format!("{}/out/t/", d.display()),
        "csv",
        &[],
        "SELECT CAST(id AS VARCHAR) AS id, name, city FROM t ORDER BY id",
    )
    .await;
    assert_eq!(
        rows(&got, &["id", "name", "city"]),
        vec![
            vec!["1".to_string(), "Ann".into(), "Lyon".into()],
            vec!["2".to_string(), "Bob".into(), "Paris".into()],
        ]
    );
}
