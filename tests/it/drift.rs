//! Schema drift: files of one source with different columns are refused by default, naming
//! two files and the columns; `schema_evolution = "union"` merges them by name (missing
//! columns read as NULL) and refuses a column with two types.

use crate::support::*;

/// A pipeline folder whose source `events` (folder `data/`) holds one file per query.
fn drifting(format: &str, files: &[(&str, &str)], evolution: Option<&str>) -> tempfile::TempDir {
    let evolution = evolution.map_or(String::new(), |e| format!("schema_evolution = \"{e}\"\n"));
    let dir = OneModel::new("events", "all_events")
        .source_toml(&format!("format = \"{format}\"\n{evolution}"))
        .build();
    let d = dir.path();
    for (name, sql) in files {
        std::fs::copy(
            made(d, name, sql, format),
            d.join("data").join(format!("{name}.{format}")),
        )
        .unwrap();
    }
    dir
}

/// The file of `format` that `sluice sql` writes for `sql`, made in `d/made/<name>/`.
pub(crate) fn made(d: &std::path::Path, name: &str, sql: &str, format: &str) -> std::path::PathBuf {
    let out = format!("made/{name}/");
    sluice(
        d,
        &["sql", "-q", "-e", sql, "--out", &out, "--format", format],
    )
    .expect(0);
    let made = files_under(&d.join("made").join(name));
    let file = made.iter().find(|f| f.ends_with(format)).unwrap();
    d.join("made").join(name).join(file)
}

/// The schemas of a source's files are kept in the state store between runs, by file
/// version: a file rewritten in place with other columns (here of the same size: its
/// modification time tells it apart) is read again, and the drift found as without the
/// cache, naming both files.
#[test]
fn a_file_rewritten_with_other_columns_is_read_again_not_taken_from_the_cache() {
    for format in ["parquet", "csv", "json"] {
        let dir = drifting(
            format,
            &[
                ("a", "SELECT 1 AS id, 'x' AS name"),
                ("b", "SELECT 2 AS id, 'y' AS name"),
            ],
            None,
        );
        let d = dir.path();
        sluice(d, &["run", "."]).expect(0);
        // Again, the schemas from the cache.
        sluice(d, &["run", "."]).expect(0);
        let b = d.join("data").join(format!("b.{format}"));
        let other = made(d, "b2", "SELECT 2 AS id, 'y' AS nope", format);
        assert_eq!(
            std::fs::metadata(&b).unwrap().len(),
            std::fs::metadata(&other).unwrap().len(),
            "{format}"
        );
        std::fs::copy(&other, &b).unwrap();
        let run = sluice(d, &["run", "."]).expect(1);
        let e = &run.stderr;
        assert!(
            e.contains(&format!("a.{format} and ")) && e.contains(&format!("b.{format}: ")),
            "{format}: {e}"
        );
        assert!(
            e.contains("name only in the first, nope only in the other"),
            "{format}: {e}"
        );
        // And back: the old columns again, the files read again, no drift.
        std::fs::copy(made(d, "b3", "SELECT 2 AS id, 'y' AS name", format), &b).unwrap();
        sluice(d, &["run", "."]).expect(0);
    }
}

#[test]
fn files_with_different_columns_are_refused_naming_both_and_the_columns() {
    for format in ["parquet", "csv", "json"] {
        let dir = drifting(
            format,
            &[
                ("a", "SELECT 1 AS id, 'x' AS name"),
                ("b", "SELECT 2 AS id, 3.5 AS price"),
            ],
            None,
        );
        let run = sluice(dir.path(), &["run", "."]).expect(1);
        let e = &run.stderr;
        assert!(e.contains("source 'events'"), "{format}: {e}");
        assert!(
            e.contains(&format!("a.{format}")) && e.contains(&format!("b.{format}")),
            "{format}: {e}"
        );
        assert!(e.contains("name only in the first"), "{format}: {e}");
        assert!(e.contains("price only in the other"), "{format}: {e}");
        assert!(e.contains("schema_evolution = \"union\""), "{format}: {e}");
        assert!(!dir.path().join("out/all_events/_MANIFEST").exists());
    }
}

#[tokio::test]
async fn union_merges_columns_by_name_with_nulls_for_the_missing() {
    for format in ["parquet", "csv", "json"] {
        let dir = drifting(
            format,
            &[
                ("a", "SELECT 1 AS id, 'x' AS name"),
                ("b", "SELECT 2 AS id, 3.5 AS price"),
            ],
            Some("union"),
        );
        sluice(dir.path(), &["run", "."]).expect(0);
        let out = query_output(
            &format!("{}/out/all_events/", dir.path().display()),
            "parquet",
            &[],
            "SELECT CAST(id AS VARCHAR) AS id, COALESCE(name, 'NULL') AS name, \
         COALESCE(CAST(price AS VARCHAR), 'NULL') AS price FROM t ORDER BY id",
        )
        .await;
        assert_eq!(
            rows(&out, &["id", "name", "price"]),
            vec![
                vec!["1".to_string(), "x".to_string(), "NULL".to_string()],
                vec!["2".to_string(), "NULL".to_string(), "3.5".to_string()],
            ],
            "{format}"
        );
    }
}

#[test]
fn union_refuses_a_column_with_two_types() {
    let dir = drifting(
        "parquet",
        &[
            ("a", "SELECT 1 AS id, 'x' AS name"),
            ("b", "SELECT 'two' AS id, 'y' AS name"),
        ],
        Some("union"),
    );
    let run = sluice(dir.path(), &["run", "."]).expect(1);
    assert!(
        run.stderr.contains("id is Int64 in the first, Utf8") && run.stderr.contains("b.parquet"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cannot have two types"),
        "{}",
        run.stderr
    );
}

/// CSV files whose inferred types differ only in width (a timestamp with and without a
/// fraction of a second, an integer and a decimal) are read as one table, each column in the
/// type every file's values parse as (before: DataFusion's "Fail to merge schema field 'ts'
/// because the from data_type = Timestamp(ms) does not equal Timestamp(s)").
#[tokio::test]
async fn text_files_whose_inferred_types_differ_in_width_are_widened() {
    let dir = crate::support::OneModel::new("events", "m")
        .source_toml("format = \"csv\"")
        .file("a.csv", "id,ts,v\n1,2024-01-01T00:00:00,1\n")
        .file("b.csv", "id,ts,v\n2,2024-01-01T00:00:00.123,1.5\n")
        .build();
    crate::support::sluice(dir.path(), &["run", "."]).expect(0);
    let mut rows = crate::support::output_rows(dir.path(), "m", &["id", "ts", "v"]).await;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            vec!["1".to_string(), "2024-01-01T00:00:00".into(), "1.0".into()],
            vec![
                "2".to_string(),
                "2024-01-01T00:00:00.123".into(),
                "1.5".into()
            ],
        ]
    );
}
