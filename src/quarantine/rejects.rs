//! What becomes of the rows a quarantine scan set aside: written as Parquet (file, line, raw,
//! reason) to the source's rejects folder, one file per run, and held against the source's
//! limits (`max_bad_rows`, `max_bad_ratio`).

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use object_store::{ObjectStore, ObjectStoreExt};

use super::Reject;
use crate::config::{SourceConfig, resolve_location};
use crate::store::Location;

/// Why a source's rejects stop its model.
#[derive(Debug, thiserror::Error)]
pub enum RejectError {
    /// The rejects file could not be encoded or written.
    #[error("cannot write the rejects of source '{source_name}' to {folder}: {message}")]
    Write {
        /// The source.
        source_name: String,
        /// The rejects folder.
        folder: String,
        /// What failed.
        message: String,
    },
    /// More bad rows than the source allows.
    #[error(
        "source '{source_name}': {count} bad rows ({limit}), nothing published; first: {first}; all of them in {folder}"
    )]
    OverLimit {
        /// The source.
        source_name: String,
        /// Its bad rows in this run.
        count: u64,
        /// The limit passed, e.g. `max_bad_rows = 1`.
        limit: String,
        /// The first three, `file:line: reason`.
        first: String,
        /// The rejects folder.
        folder: String,
    },
}

/// The rejects folder of `source`: its `rejects` setting, or `.sluice/rejects/<source>/` in
/// the pipeline folder.
pub fn folder(source: &SourceConfig, pipeline_root: &Path) -> String {
    source.rejects.clone().unwrap_or_else(|| {
        resolve_location(&format!(".sluice/rejects/{}/", source.name), pipeline_root)
    })
}

/// Where the rejects of `run_id` that `model` read are kept in the rejects folder: by run and
/// by model (two models reading one source each count and write its rejects).
fn key(folder: &Location, run_id: &str, model: &str) -> object_store::path::Path {
    folder.child(&format!("run={run_id}/model={model}/rejects.parquet"))
}

/// Writes `rejects` to `<folder>/run=<run_id>/model=<model>/rejects.parquet` in `store`.
pub async fn write(
    store: &dyn ObjectStore,
    folder: &Location,
    run_id: &str,
    model: &str,
    rejects: &[Reject],
) -> Result<(), String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("line", DataType::UInt64, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|r| &r.file),
            )),
            Arc::new(UInt64Array::from_iter_values(
                rejects.iter().map(|r| r.line),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|r| &r.raw),
            )),
            Arc::new(StringArray::from_iter_values(
                rejects.iter().map(|r| &r.reason),
            )),
        ],
    )
    .map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, schema, None).map_err(|e| e.to_string())?;
    w.write(&batch).map_err(|e| e.to_string())?;
    w.close().map_err(|e| e.to_string())?;
    store
        .put(&key(folder, run_id, model), bytes.into())
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Removes the rejects of `run_id` and `model` from `folder`, if it wrote any.
pub async fn clear(
    store: &dyn ObjectStore,
    folder: &Location,
    run_id: &str,
    model: &str,
) -> Result<(), String> {
    match store.delete(&key(folder, run_id, model)).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// The limit of `source` that `count` bad rows beside `good` good ones pass, in words
/// (`max_bad_rows = 1`), or `None` within the limits.
pub fn over_limit(source: &SourceConfig, count: u64, good: u64) -> Option<String> {
    let ratio = count as f64 / (count + good).max(1) as f64;
    match (source.max_bad_rows, source.max_bad_ratio) {
        (Some(max), _) if count > max => Some(format!("max_bad_rows = {max}")),
        (_, Some(max)) if ratio > max => Some(format!(
            "{:.2} % of {} rows, max_bad_ratio = {max}",
            ratio * 100.0,
            count + good
        )),
        _ => None,
    }
}

/// The first three rejects, as `file:line: reason`, for a message.
pub fn first_reasons(rejects: &[Reject]) -> String {
    rejects
        .iter()
        .take(3)
        .map(|r| format!("{}:{}: {}", r.file, r.line, r.reason))
        .collect::<Vec<_>>()
        .join("; ")
}
