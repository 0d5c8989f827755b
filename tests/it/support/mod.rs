//! Shared helpers for the end-to-end tests: run the real binary, lay out pipelines, and read
//! outputs back with DataFusion directly (not through sluice's own catalog), so checks are
//! independent of the code under test. Test modules import only from here, never from each
//! other.
//!
//! * this file: running the binary, files and folders, reading outputs and reports;
//! * [`pipeline`]: a pipeline folder with one source and one model;
//! * [`shop`]: the `testdata/shop` pipeline and raw counts of its input files;
//! * [`target`]: an output folder on local disk, S3 or Azure, for the storage conformance suite;
//! * [`tpch`]: TPC-H data and the plain-DataFusion answer over it;
//! * [`s3`], [`faults`]: a real S3-compatible server, and a proxy that injects faults;
//! * [`azure`], [`emulator`]: an Azure Blob emulator (Azurite), run like the S3 server;
//! * [`databases`]: throwaway PostgreSQL and MariaDB servers;
//! * [`cluster`]: a Ballista cluster of `sluice cluster` processes;
//! * [`readers`]: DuckDB and pyarrow, to read outputs as other engines do.

#![allow(dead_code)]

pub mod azure;
pub mod cluster;
pub mod databases;
pub mod emulator;
pub mod faults;
pub mod gcs;
pub mod pipeline;
pub mod readers;
pub mod s3;
pub mod shop;
pub mod target;
pub mod tpch;

pub use pipeline::OneModel;
pub use shop::*;
pub use target::Target;
pub(crate) use target::on_every_backend;
pub use tpch::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

/// The repository's `testdata/NAME`.
pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// A result of running the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the exit status, showing the output when it differs.
    #[track_caller]
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "a panic reached the user:\n{}",
            self.stderr
        );
        self
    }
}

/// Runs `sluice ARGS` in `dir` with extra environment variables.
pub fn sluice_env(dir: &Path, args: &[&str], env: &[(String, String)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the sluice binary runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts `sluice ARGS` in `dir` in the background, its output discarded (to kill it, or to
/// overlap runs).
pub fn spawn_sluice(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the sluice binary starts")
}

/// Runs `sluice ARGS` in `dir`.
pub fn sluice(dir: &Path, args: &[&str]) -> Run {
    sluice_env(dir, args, &[])
}

/// Runs `sluice run . EXTRA... --report <dir>/r.json` in `dir` expecting exit `code`: the run
/// and the report it wrote.
#[track_caller]
pub fn run_with_report(dir: &Path, extra: &[&str], code: i32) -> (Run, serde_json::Value) {
    run_with_report_env(dir, extra, &[], code)
}

/// [`run_with_report`] with extra environment variables.
#[track_caller]
pub fn run_with_report_env(
    dir: &Path,
    extra: &[&str],
    env: &[(String, String)],
    code: i32,
) -> (Run, serde_json::Value) {
    let report = dir.join("r.json");
    let mut args = vec!["run", "."];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--report", report.to_str().unwrap()]);
    let run = sluice_env(dir, &args, env).expect(code);
    let json = read_json(&report);
    (run, json)
}

/// Copies a folder recursively (skipping `out/` and `.sluice/`).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "out" || name == ".sluice" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A temporary copy of `testdata/NAME`.
pub fn pipeline_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&testdata(name), dir.path());
    dir
}

/// Every file and every folder under `dir` (relative paths, sorted).
fn walk(dir: &Path) -> (Vec<String>, Vec<String>) {
    fn go(base: &Path, dir: &Path, files: &mut Vec<String>, dirs: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                dirs.push(rel);
                go(base, &p, files, dirs);
            } else {
                files.push(rel);
            }
        }
    }
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    go(dir, dir, &mut files, &mut dirs);
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// Every file under `dir`, relative, sorted.
pub fn files_under(dir: &Path) -> Vec<String> {
    walk(dir).0
}

/// Every folder under `dir` (relative, sorted): to check that no staging folder is left.
pub fn dirs_under(dir: &Path) -> Vec<String> {
    walk(dir).1
}

/// The model names of a run report, in order.
pub fn model_names(report: &serde_json::Value) -> Vec<String> {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

/// The model `name` of a run report (its entry in `models`).
#[track_caller]
pub fn report_model<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no model {name} in the report: {report}"))
}

/// A file's bytes and every file of a folder, to compare a folder before and after.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files_under(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

/// The data files among the relative paths of an output folder (the keys of a [`snapshot`],
/// [`files_under`] it, or a [`Target::snapshot`]): every path but the manifest, the
/// `_SUCCESS` marker and staging, i.e. whose first part does not start with `_`.
pub fn data_files<S: AsRef<str>>(paths: impl IntoIterator<Item = S>) -> Vec<String> {
    paths
        .into_iter()
        .map(|p| p.as_ref().to_string())
        .filter(|p| !p.starts_with('_'))
        .collect()
}

/// What an output folder's [`snapshot`] shows readers: everything but staging (the data
/// files, the manifest and the marker, with their bytes).
pub fn published(snap: &BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    snap.iter()
        .filter(|(k, _)| !k.starts_with("_staging") && !k.starts_with("_sluice_staging"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Rewrites a text file through `edit` (a `sluice.toml`, a query).
pub fn edit_file(path: &Path, edit: impl FnOnce(String) -> String) {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    std::fs::write(path, edit(text)).unwrap();
}

/// Appends `extra` to a pipeline's `sluice.toml`, after a blank line.
pub fn append_toml(dir: &Path, extra: &str) {
    edit_file(&dir.join("sluice.toml"), |toml| format!("{toml}\n{extra}"));
}

/// Formats batches as sorted rows of strings (columns in `cols` order).
pub fn rows(batches: &[RecordBatch], cols: &[&str]) -> Vec<Vec<String>> {
    let mut out = rows_in_order(batches, cols);
    out.sort();
    out
}

/// Formats batches as rows of strings (columns in `cols` order), in the batches' row order.
pub fn rows_in_order(batches: &[RecordBatch], cols: &[&str]) -> Vec<Vec<String>> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for b in batches {
        let arrays: Vec<_> = cols
            .iter()
            .map(|c| {
                b.column(
                    b.schema()
                        .index_of(c)
                        .unwrap_or_else(|_| panic!("no column {c} in {:?}", b.schema())),
                )
                .clone()
            })
            .collect();
        let fmts: Vec<_> = arrays
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &opts).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(fmts.iter().map(|f| f.value(i).to_string()).collect());
        }
    }
    out
}

/// Asserts that `got` and `want` are the same rows in the same order; on a difference, says
/// `what`, both lengths and the first row that differs (not the whole of both).
#[track_caller]
pub fn assert_same_rows(got: &[Vec<String>], want: &[Vec<String>], what: &str) {
    if let Some(i) = (0..got.len().max(want.len())).find(|&i| got.get(i) != want.get(i)) {
        panic!(
            "{what}: {} rows, {} expected; row {i} is {:?}, expected {:?}",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

/// Every column of `batches`, in schema order, as sorted rows of strings; and the column
/// names.
pub fn all_rows(batches: &[RecordBatch]) -> (Vec<String>, Vec<Vec<String>>) {
    let Some(first) = batches.first() else {
        return (Vec::new(), Vec::new());
    };
    let names: Vec<String> = first
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let cols: Vec<&str> = names.iter().map(String::as_str).collect();
    let rows = rows(batches, &cols);
    (names, rows)
}

/// Reads an output folder with plain DataFusion: `format` files under `dir`, with Hive
/// partition columns `partitions` (as strings), and runs `sql` over it as table `t`.
pub async fn query_output(
    dir: &str,
    format: &str,
    partitions: &[&str],
    sql: &str,
) -> Vec<RecordBatch> {
    query_output_in(None, dir, format, partitions, sql).await
}

/// The number of rows of an output folder (as [`query_output`] reads it).
pub async fn count_output(dir: &str, format: &str, partitions: &[&str]) -> u64 {
    let b = query_output(
        dir,
        format,
        partitions,
        "SELECT CAST(COUNT(*) AS VARCHAR) AS n FROM t",
    )
    .await;
    rows(&b, &["n"])[0][0].parse().unwrap()
}

/// [`query_output`] with an object store registered for `dir`'s URL (for S3 outputs).
pub async fn query_output_in(
    store: Option<(&url::Url, std::sync::Arc<dyn object_store::ObjectStore>)>,
    dir: &str,
    format: &str,
    partitions: &[&str],
    sql: &str,
) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    if let Some((url, store)) = store {
        ctx.register_object_store(url, store);
    }
    let parts: Vec<(String, datafusion::arrow::datatypes::DataType)> = partitions
        .iter()
        .map(|p| (p.to_string(), datafusion::arrow::datatypes::DataType::Utf8))
        .collect();
    match format {
        "parquet" => ctx
            .register_parquet(
                "t",
                dir,
                ParquetReadOptions::default().table_partition_cols(parts),
            )
            .await
            .unwrap(),
        "csv" => ctx
            .register_csv("t", dir, CsvReadOptions::new().table_partition_cols(parts))
            .await
            .unwrap(),
        "json" => ctx
            .register_json(
                "t",
                dir,
                JsonReadOptions::default().table_partition_cols(parts),
            )
            .await
            .unwrap(),
        other => panic!("unknown format {other}"),
    }
    ctx.sql(sql).await.unwrap().collect().await.unwrap()
}

/// The rows of model `model`'s Parquet output `<dir>/out/<model>/`, read with plain
/// DataFusion, each of `cols` cast to text; sorted.
pub async fn output_rows(dir: &Path, model: &str, cols: &[&str]) -> Vec<Vec<String>> {
    let select: Vec<String> = cols
        .iter()
        .map(|c| format!("CAST({c} AS VARCHAR) AS {c}"))
        .collect();
    let b = query_output(
        &format!("{}/", dir.join("out").join(model).display()),
        "parquet",
        &[],
        &format!("SELECT {} FROM t", select.join(", ")),
    )
    .await;
    rows(&b, cols)
}

/// The rows of one Parquet file, in the file's order, read with the plain Parquet reader.
pub fn parquet_batches(path: &Path) -> Vec<RecordBatch> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

/// Reads a CSV file of expected rows (header first) as sorted rows.
pub fn expected_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines.next().unwrap().split(',').map(String::from).collect();
    let mut rows: Vec<Vec<String>> = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(String::from).collect())
        .collect();
    rows.sort();
    (header, rows)
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Total rows of the Parquet files listed in a `_MANIFEST`, read from each file's footer, and
/// the manifest's own counts, for comparison.
pub fn manifest_rows(out_dir: &Path) -> (u64, Vec<(String, u64)>) {
    let m = read_json(&out_dir.join("_MANIFEST"));
    let files: Vec<(String, u64)> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    (m["rows"].as_u64().unwrap(), files)
}

/// The file paths a manifest lists, in its order.
pub fn manifest_files(manifest: &serde_json::Value) -> Vec<String> {
    manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect()
}

/// The file paths the `_MANIFEST` of `out_dir` lists, sorted (to compare with
/// [`data_files`] of the folder).
pub fn manifest_files_sorted(out_dir: &Path) -> Vec<String> {
    let mut files = manifest_files(&read_json(&out_dir.join("_MANIFEST")));
    files.sort();
    files
}

/// Rows in a Parquet file, from its footer.
pub fn parquet_rows(path: &Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    reader.metadata().file_metadata().num_rows() as u64
}
