//! TPC-H data written by `sluice gen tpch`, at any scale factor, and the independent answer
//! over it: plain DataFusion (no sluice, no memory limit) reading the raw table files.

use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use super::sluice;

/// The eight TPC-H tables.
pub const TPCH_TABLES: [&str; 8] = [
    "region", "nation", "supplier", "customer", "part", "partsupp", "orders", "lineitem",
];

/// Writes TPC-H at scale factor `scale` in `format` (`parquet` or `csv`) into
/// `<dir>/<folder>/`, one folder a table, with `sluice gen tpch`; returns that folder.
pub fn gen_tpch(dir: &Path, folder: &str, scale: f64, format: &str) -> PathBuf {
    let out = dir.join(folder);
    sluice(
        dir,
        &[
            "gen",
            "tpch",
            "--scale",
            &scale.to_string(),
            "--format",
            format,
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .expect(0);
    out
}

/// A temporary pipeline folder with TPC-H at scale factor `scale` in `data/` (Parquet, one
/// folder a table) and an empty `queries/`; no `sluice.toml` yet.
pub fn tpch_pipeline_dir(scale: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    gen_tpch(dir.path(), "data", scale, "parquet");
    std::fs::create_dir_all(dir.path().join("queries")).unwrap();
    dir
}

/// Plain DataFusion with every TPC-H table found under `data` (Parquet, as [`gen_tpch`]
/// writes it) registered under its name: the independent answer.
pub async fn plain_tpch(data: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for t in TPCH_TABLES {
        let path = data.join(t);
        if path.is_dir() {
            ctx.register_parquet(t, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap();
        }
    }
    ctx
}

/// Runs `sql` with `ctx` and collects the result.
pub async fn plain_query(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("planning {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("running {sql}: {e}"))
}

/// The text of TPC-H query `n` (1 to 22) as the bench runs it: `queries/tpch/q<n>.sql`.
pub fn tpch_query(n: u8) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("queries/tpch/q{n}.sql"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
