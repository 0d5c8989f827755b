//! Shared helpers for the end-to-end tests: run the real binary, lay out pipelines, and read
//! outputs back with DataFusion directly (not through sluice's own catalog), so checks are
//! independent of the code under test.

#![allow(dead_code)]

pub mod faults;
pub mod s3;

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

/// Runs `sluice ARGS` in `dir`.
pub fn sluice(dir: &Path, args: &[&str]) -> Run {
    sluice_env(dir, args, &[])
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

/// A temporary pipeline folder with TPC-H SF 0.01 in `data/` (one folder a table) and an
/// empty `queries/`.
pub fn tpch_pipeline_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("{}/data", dir.path().display());
    sluice(
        dir.path(),
        &["gen", "tpch", "--scale", "0.01", "--out", &data],
    )
    .expect(0);
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
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

/// One row of the shop's raw `orders` CSVs, parsed by hand (independently of any engine).
#[derive(Debug, Clone)]
pub struct RawOrder {
    pub dt: String,
    pub customer_id: i64,
    pub product: String,
    pub quantity: i64,
    pub status: String,
}

/// Every raw order under `<pipeline>/data/orders/dt=*/orders.csv`.
pub fn raw_orders(pipeline: &Path) -> Vec<RawOrder> {
    let base = pipeline.join("data/orders");
    let mut out = Vec::new();
    for f in files_under(&base) {
        let dt = f
            .split('/')
            .next()
            .unwrap()
            .trim_start_matches("dt=")
            .to_string();
        let text = std::fs::read_to_string(base.join(&f)).unwrap();
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split(',').collect();
            out.push(RawOrder {
                dt: dt.clone(),
                customer_id: c[1].parse().unwrap(),
                product: c[2].to_string(),
                quantity: c[3].parse().unwrap(),
                status: c[5].to_string(),
            });
        }
    }
    out
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

/// Formats batches as sorted rows of strings (columns in `cols` order).
pub fn rows(batches: &[RecordBatch], cols: &[&str]) -> Vec<Vec<String>> {
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
    out.sort();
    out
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

/// Rows in a Parquet file, from its footer.
pub fn parquet_rows(path: &Path) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    let reader = datafusion::parquet::file::reader::SerializedFileReader::new(file).unwrap();
    use datafusion::parquet::file::reader::FileReader;
    reader.metadata().file_metadata().num_rows() as u64
}

/// The shop pipeline (a copy of `testdata/shop`) with its sources read from
/// `s3://lake/raw/` and its outputs written to `s3://lake/out/`. The data is not uploaded.
pub fn shop_pipeline_on_s3() -> tempfile::TempDir {
    let dir = pipeline_copy("shop");
    let toml = std::fs::read_to_string(dir.path().join("sluice.toml"))
        .unwrap()
        .replace(
            "location = \"data/orders/\"",
            "location = \"s3://lake/raw/orders/\"",
        )
        .replace(
            "location = \"data/customers.jsonl\"",
            "location = \"s3://lake/raw/customers.jsonl\"",
        )
        .replace("location = \"out/", "location = \"s3://lake/out/");
    std::fs::write(dir.path().join("sluice.toml"), toml).unwrap();
    dir
}
