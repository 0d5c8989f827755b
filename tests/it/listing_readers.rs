//! What readers that list the output folder (DuckDB's `read_parquet('out/m/**/*.parquet')`,
//! pyarrow's `dataset`) see when a run is killed at each step of a publish, and after the next
//! command heals the folder: the promise docs/outputs.md states.
//!
//! A model batched by file, partitioned by day, many small files (so a publish takes long
//! enough to be caught half-way); version 1 has 6 days × 200 rows, version 2 adds a seventh
//! day. The truth is counted from the input files, not from sluice.

use std::time::{Duration, Instant};

use crate::support::readers::{duckdb, pyarrow_dataset};
use crate::support::*;

const DAYS: usize = 6;
const ROWS: usize = 200;

fn day_file(day: usize) -> (String, String) {
    let mut text = String::from("id,day\n");
    for i in 0..ROWS {
        text.push_str(&format!("{},2024-01-0{day}\n", day * 1000 + i));
    }
    (format!("2024-01-0{day}.csv"), text)
}

fn pipeline() -> tempfile::TempDir {
    let mut p = OneModel::new("events", "m")
        .source_toml("format = \"csv\"\nschema = \"id INT, day VARCHAR\"")
        .sink_toml(
            "partition_by = [\"day\"]\ntarget_rows_per_file = 10\n\
             [models.m.batches]\nby = \"file\"\n[settings]\nmax_concurrent_units = 1",
        );
    for day in 1..=DAYS {
        let (name, text) = day_file(day);
        p = p.file(&name, text);
    }
    p.build()
}

/// Rows DuckDB (`**` glob, Hive partitions) and pyarrow (`dataset`) read from `out/m`.
fn listed_counts(dir: &std::path::Path) -> (u64, u64) {
    let duck = duckdb(
        dir,
        "SELECT COUNT(*) AS n FROM read_parquet('out/m/**/*.parquet', hive_partitioning = true)",
    );
    let duck: u64 = duck.rows[0][0].as_deref().unwrap().parse().unwrap();
    let arrow = pyarrow_dataset(
        &dir.join("out/m").display().to_string(),
        "parquet",
        &["day"],
    );
    (duck, arrow.rows.len() as u64)
}

/// The next run's moment: when `reached` says so, kill -9. Returns whether it was caught
/// before the run ended.
fn kill_when(dir: &std::path::Path, reached: impl Fn() -> bool) -> bool {
    let mut child = spawn_sluice(dir, &["-q", "run", "."]);
    let start = Instant::now();
    loop {
        if reached() {
            child.kill().unwrap();
            child.wait().unwrap();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the run hung");
    }
}

fn unlisted(dir: &std::path::Path) -> bool {
    let out = dir.join("out/m");
    let manifest = std::fs::read_to_string(out.join("_MANIFEST")).unwrap_or_default();
    data_files(files_under(&out))
        .iter()
        .any(|f| !manifest.contains(f.as_str()))
}

#[test]
fn listing_readers_see_one_version_except_between_moves_and_the_next_command() {
    let dir = pipeline();
    let d = dir.path();
    sluice(d, &["run", "."]).expect(0);
    let v1 = (DAYS * ROWS) as u64;
    assert_eq!(listed_counts(d), (v1, v1), "version 1");

    // A seventh day arrives; the next run is killed at chosen steps.
    let (name, text) = day_file(7);
    std::fs::write(d.join("data").join(name), text).unwrap();
    let v2 = v1 + ROWS as u64;

    // While units stage: staging is beside the folder, not in it.
    let area = d.join("out/_sluice_staging/m");
    assert!(
        kill_when(d, || files_under(&area)
            .iter()
            .any(|f| f.ends_with(".parquet"))),
        "never caught a unit staging"
    );
    assert_eq!(listed_counts(d), (v1, v1), "killed while staging");

    // Between the first move and the manifest: listing readers see the moved files too,
    // until the next command heals the folder.
    let mut caught = false;
    for _ in 0..8 {
        if kill_when(d, || unlisted(d)) {
            caught = true;
            break;
        }
        // The run finished first: go back to version 1 and try again.
        std::fs::remove_file(d.join("data/2024-01-07.csv")).unwrap();
        sluice(d, &["run", "."]).expect(0);
        let (name, text) = day_file(7);
        std::fs::write(d.join("data").join(name), text).unwrap();
    }
    assert!(
        caught,
        "never caught a publish between moves and its manifest"
    );
    let (duck, arrow) = listed_counts(d);
    assert!(
        duck > v1 && arrow > v1,
        "moved files are visible: {duck} {arrow}"
    );
    sluice(d, &["plan", "."]).expect(0);
    assert_eq!(listed_counts(d), (v1, v1), "healed by the next command");

    // The rerun publishes version 2, and nothing else is left.
    sluice(d, &["run", "."]).expect(0);
    assert_eq!(listed_counts(d), (v2, v2), "version 2");
    assert!(!unlisted(d));
    assert!(!d.join("out/_sluice_staging").exists());
}
