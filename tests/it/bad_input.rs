//! The corpus of bad inputs under `testdata/bad/`: each file (or folder) run as a source,
//! with the exit status and the message it must give. Bad rows are in `quarantine.rs`,
//! columns that differ between files in `drift.rs`, storage failures in `storage_errors.rs`.

use std::path::Path;

use crate::support::*;

/// A pipeline reading `data/` (the given corpus files, copied there) as source `src`, with
/// one model `m` = `query` written to `out/m/`.
fn case(files: &[(&str, &str)], source_extra: &str, query: &str) -> tempfile::TempDir {
    let mut pipeline = OneModel::new("src", "m")
        .source_toml(source_extra)
        .query(query);
    for (from, to) in files {
        pipeline = pipeline.copy(testdata("bad").join(from), to);
    }
    pipeline.build()
}

/// Runs the pipeline expecting failure: exit 1, each of `says` in the message, nothing
/// published.
fn fails(dir: &Path, says: &[&str]) {
    let run = sluice(dir, &["run", "."]).expect(1);
    for s in says {
        assert!(run.stderr.contains(s), "{s:?} not in: {}", run.stderr);
    }
    assert!(!dir.join("out/m/_MANIFEST").exists());
}

/// Runs the pipeline expecting success; the rows of `m` as text, sorted.
async fn succeeds(dir: &Path, cols: &[&str]) -> Vec<Vec<String>> {
    sluice(dir, &["run", "."]).expect(0);
    // No rows: no data files, only the manifest.
    if manifest_rows(&dir.join("out/m")).0 == 0 {
        return Vec::new();
    }
    output_rows(dir, "m", cols).await
}

#[tokio::test]
async fn an_empty_csv_among_others_adds_no_rows_and_no_columns() {
    let dir = case(
        &[("empty/a.csv", "a.csv"), ("empty/b.csv", "b.csv")],
        "format = \"csv\"",
        "SELECT * FROM src",
    );
    assert_eq!(succeeds(dir.path(), &["id", "name"]).await, [["1", "x"]]);
}

#[tokio::test]
async fn an_empty_csv_alone_needs_a_declared_schema() {
    let dir = case(
        &[("empty/a.csv", "a.csv")],
        "format = \"csv\"",
        "SELECT * FROM src",
    );
    fails(
        dir.path(),
        &[
            "a.csv",
            "the file is empty (0 bytes)",
            "declare the source's schema",
        ],
    );
    // With the columns declared, it is a source with no rows.
    let dir = case(
        &[("empty/a.csv", "a.csv")],
        "format = \"csv\"\nschema = \"id BIGINT, name VARCHAR\"",
        "SELECT * FROM src",
    );
    assert!(succeeds(dir.path(), &["id", "name"]).await.is_empty());
}

#[tokio::test]
async fn a_csv_with_only_a_header_has_its_columns_and_no_rows() {
    let dir = case(
        &[("header-only/a.csv", "a.csv")],
        "format = \"csv\"",
        "SELECT * FROM src",
    );
    assert!(succeeds(dir.path(), &["id", "name"]).await.is_empty());
}

#[test]
fn a_zero_byte_parquet_file_is_named() {
    let dir = case(
        &[("zero-parquet/a.parquet", "a.parquet")],
        "format = \"parquet\"",
        "SELECT * FROM src",
    );
    fails(dir.path(), &["a.parquet", "0 bytes: not a Parquet file"]);
}

#[test]
fn a_truncated_parquet_file_is_named_whether_inferred_or_declared() {
    for extra in ["", "\nschema = \"id BIGINT, name VARCHAR\""] {
        let dir = case(
            &[("truncated-parquet/a.parquet", "a.parquet")],
            &format!("format = \"parquet\"{extra}"),
            "SELECT * FROM src",
        );
        fails(dir.path(), &["source 'src'", "a.parquet", "Parquet error"]);
    }
}

#[test]
fn a_gzip_file_cut_short_is_named_in_both_modes() {
    for mode in ["fail", "quarantine"] {
        let dir = case(
            &[("cut-gzip/a.csv.gz", "a.csv.gz")],
            &format!(
                "format = \"csv\"\ncompression = \"gzip\"\nschema = \"id BIGINT, name VARCHAR\"\n\
                 on_bad_rows = \"{mode}\""
            ),
            "SELECT * FROM src",
        );
        fails(
            dir.path(),
            &[
                "a.csv.gz",
                "cannot read the file to its end",
                "unexpected end of file",
            ],
        );
    }
}

#[tokio::test]
async fn a_ten_megabyte_line_is_read_whole_in_both_modes() {
    for mode in ["fail", "quarantine"] {
        let dir = case(
            &[],
            // (Declared: DataFusion's schema inference stops at a quoted newline.)
            &format!("format = \"csv\"\nschema = \"id INT, t VARCHAR\"\non_bad_rows = \"{mode}\""),
            "SELECT id, length(t) AS n FROM src",
        );
        // Plain and quoted, 10 MB each, between short lines. The quarantine reader also takes
        // a newline inside quotes (DataFusion's plain reader splits files at newlines).
        let big = "x".repeat(10_000_000);
        let newline = if mode == "quarantine" { "\n" } else { "" };
        std::fs::write(
            dir.path().join("data/a.csv"),
            format!("id,t\n1,short\n2,{big}\n3,\"q{newline}{big}\"\n4,end\n"),
        )
        .unwrap();
        let quoted = (10_000_001 + newline.len()).to_string();
        assert_eq!(
            succeeds(dir.path(), &["id", "n"]).await,
            [
                ["1", "5"],
                ["2", "10000000"],
                ["3", quoted.as_str()],
                ["4", "3"]
            ],
            "on_bad_rows = {mode}"
        );
    }
}

#[test]
fn a_partition_folder_whose_value_is_not_its_type_is_named() {
    let dir = case(
        &[
            ("hive-types/dt=2024-01-01/a.csv", "dt=2024-01-01/a.csv"),
            ("hive-types/dt=someday/b.csv", "dt=someday/b.csv"),
        ],
        "format = \"csv\"\npartition_cols = [\"dt:date\"]",
        "SELECT * FROM src",
    );
    fails(
        dir.path(),
        &[
            "dt=someday/b.csv",
            "partition value dt=\"someday\" is not Date32",
        ],
    );
}
