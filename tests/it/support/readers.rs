//! Independent readers of sluice's outputs, DuckDB and pyarrow, as users run them: each call
//! runs the test venv's Python (`scripts/ensure-test-venv`, the one [`super::s3`] takes moto
//! from) once and returns what the reader returned, every value as text.
//!
//! * [`duckdb`]: rows of a DuckDB query, run in a given folder (`read_parquet('out/**/*.parquet',
//!   hive_partitioning = true)` and the like);
//! * [`pyarrow_dataset`]: the rows of `pyarrow.dataset.dataset(folder, partitioning='hive')`,
//!   on a local folder or (with [`pyarrow_dataset_on`]) an `s3://` URL of a test server;
//! * [`python`]: any script, for what the two above do not cover.
//!
//! A value is `None` for a null, else the reader's own value as Python's `str()` gives it,
//! except floats, written `nan`, `inf`, `-inf` or Python's `repr` (`1.5`), and bytes, as
//! `0x` and hex. DuckDB's extensions are not available (no network in CI): to read an S3
//! output with DuckDB, read a local copy of its keys ([`super::Target::mirror`]).

use std::path::{Path, PathBuf};
use std::process::Command;

/// One row: each value as text, `None` for null.
pub type Row = Vec<Option<String>>;

/// What a reader returned: its column names and its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
}

impl Table {
    /// The values of column `name`, in row order.
    #[track_caller]
    pub fn column(&self, name: &str) -> Vec<Option<String>> {
        let i = self
            .columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.columns));
        self.rows.iter().map(|r| r[i].clone()).collect()
    }
}

/// The test venv's Python (beside its `moto_server`).
pub fn venv_python() -> PathBuf {
    let moto = super::s3::moto_server();
    moto.with_file_name("python")
}

/// Runs `script` with the test venv's Python in folder `dir`, with `args` as `sys.argv[1:]`
/// and extra environment `env`; returns its stdout, panicking with its stderr if it fails.
pub fn python(dir: &Path, script: &str, args: &[&str], env: &[(String, String)]) -> String {
    let python = venv_python();
    let out = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
    assert!(
        out.status.success(),
        "the reader script failed ({} must have duckdb and pyarrow: run scripts/test, or \
         bash scripts/ensure-test-venv and set SLUICE_MOTO_SERVER to what it prints):\n\
         {script}\n--- stderr\n{}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Python that defines `emit(columns, rows)`: prints a [`Table`] as JSON.
const PRELUDE: &str = r#"
import json, math, sys
def text(v):
    if v is None:
        return None
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, (bytes, bytearray)):
        return "0x" + bytes(v).hex()
    return str(v)
def emit(columns, rows):
    json.dump({"columns": list(columns),
               "rows": [[text(v) for v in r] for r in rows]}, sys.stdout)
"#;

fn parse_table(json: &str) -> Table {
    let v: serde_json::Value = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("the reader printed no table ({e}): {json}"));
    let columns = v["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let rows = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .collect();
    Table { columns, rows }
}

/// Runs `sql` in an in-memory DuckDB whose working folder is `dir`; the rows in DuckDB's
/// order (say `ORDER BY` to fix it). Example:
/// `duckdb(dir, "SELECT p FROM read_parquet('out/**/*.parquet', hive_partitioning = true)")`.
pub fn duckdb(dir: &Path, sql: &str) -> Table {
    let script = format!(
        "{PRELUDE}\nimport duckdb\ncon = duckdb.connect()\ncur = con.execute(sys.argv[1])\n\
         emit([d[0] for d in cur.description], cur.fetchall())\n"
    );
    parse_table(&python(dir, &script, &[sql], &[]))
}

/// The rows of `pyarrow.dataset.dataset(folder, format=format, partitioning=...)` on local
/// disk, sorted. `format` is `parquet`, `csv` or `json`, or a Python expression for a file
/// format (`ds.CsvFileFormat(convert_options=csv.ConvertOptions(strings_can_be_null=True))`,
/// with `ds` = `pyarrow.dataset` and `csv` = `pyarrow.csv`). Hive partitioning: the columns
/// `partitions` read as strings; with none, `partitioning='hive'` (types inferred).
pub fn pyarrow_dataset(folder: &str, format: &str, partitions: &[&str]) -> Table {
    pyarrow_dataset_on(&[], folder, format, partitions)
}

/// [`pyarrow_dataset`] with the environment `env` of a test S3 server or Azurite
/// ([`super::s3::S3Server::env`], [`super::azure::AzureServer::env`], [`super::Target::env`]),
/// so `folder` may be an `s3://` URL (read with `pyarrow.fs.S3FileSystem` at that endpoint)
/// or an `az://` one (`pyarrow.fs.AzureFileSystem`).
pub fn pyarrow_dataset_on(
    env: &[(String, String)],
    folder: &str,
    format: &str,
    partitions: &[&str],
) -> Table {
    let script = format!(
        r#"{PRELUDE}
import os
import pyarrow as pa, pyarrow.dataset as ds, pyarrow.csv as csv, pyarrow.fs as fs
folder, fmt, parts = sys.argv[1], sys.argv[2], [p for p in sys.argv[3].split(",") if p]
if "(" in fmt:
    fmt = eval(fmt)
filesystem = None
if folder.startswith("s3://"):
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    filesystem = fs.S3FileSystem(
        access_key=os.environ["AWS_ACCESS_KEY_ID"],
        secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        region=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_override=endpoint.split("://", 1)[1],
        scheme=endpoint.split("://", 1)[0])
    folder = folder[len("s3://"):]
elif folder.startswith("az://"):
    endpoint = os.environ["AZURE_STORAGE_ENDPOINT"]
    scheme, rest = endpoint.split("://", 1)
    filesystem = fs.AzureFileSystem(
        account_name=os.environ["AZURE_STORAGE_ACCOUNT_NAME"],
        account_key=os.environ["AZURE_STORAGE_ACCOUNT_KEY"],
        blob_storage_authority=rest.split("/", 1)[0],
        blob_storage_scheme=scheme,
        dfs_storage_authority=rest.split("/", 1)[0],
        dfs_storage_scheme=scheme)
    folder = folder[len("az://"):]
if parts:
    partitioning = ds.partitioning(pa.schema([(p, pa.string()) for p in parts]), flavor="hive")
else:
    partitioning = "hive"
t = ds.dataset(folder, format=fmt, partitioning=partitioning, filesystem=filesystem).to_table()
rows = [tuple(r[c] for c in t.column_names) for r in t.to_pylist()]
emit(t.column_names, rows)
"#
    );
    let dir = std::env::temp_dir();
    let mut table = parse_table(&python(
        &dir,
        &script,
        &[folder, format, &partitions.join(",")],
        env,
    ));
    table.rows.sort();
    table
}
