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

/// Writes a pipeline into `dir` with the eight TPC-H tables as sources under `data` (a folder
/// or URL ending in `/`) and one model per query (`q1` ... `q22`, the bench's query texts)
/// written under `out`; `settings`: lines of its `[settings]`.
pub fn tpch_models_pipeline(dir: &Path, data: &str, out: &str, settings: &str) {
    let mut toml = format!("name = \"tpch_answers\"\n[settings]\n{settings}\n");
    for t in TPCH_TABLES {
        toml.push_str(&format!(
            "[sources.{t}]\nlocation = \"{data}{t}/\"\nformat = \"parquet\"\n"
        ));
    }
    std::fs::create_dir_all(dir.join("queries")).unwrap();
    for q in 1..=22u8 {
        toml.push_str(&format!("[models.q{q}.sink]\nlocation = \"{out}q{q}/\"\n"));
        std::fs::write(dir.join(format!("queries/q{q}.sql")), tpch_query(q)).unwrap();
    }
    std::fs::write(dir.join("sluice.toml"), toml).unwrap();
}

/// Checks the outputs of [`tpch_models_pipeline`] under `out` (read with `store` when it is
/// a URL) against the same queries run by plain DataFusion over the local copy `data`: the
/// same columns and, sorted, the same rows.
pub async fn check_tpch_models(
    data: &Path,
    out: &str,
    store: Option<(&url::Url, std::sync::Arc<dyn object_store::ObjectStore>)>,
) {
    let ctx = plain_tpch(data).await;
    let mut non_empty = 0;
    for q in 1..=22u8 {
        let (want_cols, want) = super::all_rows(&plain_query(&ctx, &tpch_query(q)).await);
        let (got_cols, got) = super::all_rows(
            &super::query_output_in(
                store.as_ref().map(|(u, s)| (*u, std::sync::Arc::clone(s))),
                &format!("{out}q{q}/"),
                "parquet",
                &[],
                "SELECT * FROM t",
            )
            .await,
        );
        assert_eq!(got.len(), want.len(), "q{q}");
        if want.is_empty() {
            continue;
        }
        non_empty += 1;
        assert_eq!(got_cols, want_cols, "q{q}");
        // (Sorted rows: rows tied on a query's ORDER BY keys may come in either order.)
        super::assert_same_rows(&got, &want, &format!("q{q}"));
    }
    assert!(non_empty >= 20, "only {non_empty} queries return rows");
}
