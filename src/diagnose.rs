//! Diagnosis of a failed model: turns an engine error into a message that names the file and
//! line at fault where the engine does not.
//!
//! DataFusion reads CSV and JSON in parallel byte ranges, so a parse error carries neither the
//! file nor a line number counted from the file's start, and a compressed stream cut short or
//! a corrupt Parquet file is reported without its name. On that error path only, sluice
//! re-reads the model's sources one file at a time: text files as a quarantined source reads
//! them (`quarantine::first_reject`: the same lines and reasons), Parquet files by their
//! footer, and reports the first file (and row) at fault.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::error::DataFusionError;
use futures::TryStreamExt;

use crate::config::{Format, Pipeline, SourceConfig};
use crate::describe::describe_datafusion;
use crate::engine::Engine;
use crate::quarantine::decode::{ChunkDecoder, Dialect};
use crate::store::Location;

/// What kind of trouble an engine error points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trouble {
    /// A record that does not parse, or a text file that cannot be read to its end.
    Text,
    /// A Parquet file that cannot be read.
    Parquet,
}

fn trouble(message: &str) -> Option<Trouble> {
    let m = message.to_ascii_lowercase();
    let text = [
        "parser error",
        "error while parsing",
        "csv error",
        "json error",
        "incorrect number of fields",
        "encountered unexpected",
        "invalid utf",
        // Sources with a null value are cast from text after reading (see catalog).
        "cannot cast string",
        // Compressed streams cut short or corrupt.
        "deflate",
        "gzip",
        "zstd",
        "bzip",
        "lzma",
        "xz",
        "unexpected end of file",
    ];
    if m.contains("parquet") {
        Some(Trouble::Parquet)
    } else if text.iter().any(|t| m.contains(t)) {
        Some(Trouble::Text)
    } else {
        None
    }
}

/// Explains why a model reading `sources` failed with `err`.
pub(crate) async fn explain(
    engine: &Engine,
    pipeline: &Pipeline,
    sources: &BTreeSet<String>,
    err: &DataFusionError,
) -> String {
    let message = describe_datafusion(err);
    if disk_full(err) {
        // The query's own writes are its spill files (sorts, aggregations, joins, files read
        // once for many units): an output's are reported by the sink, naming the file.
        return format!(
            "{message}: the disk of the spill folder {} (spill_dir) is full; free space there, \
             set spill_dir to a folder on a larger disk, or raise memory_limit so that less spills",
            engine.spill_folder().display()
        );
    }
    let Some(trouble) = trouble(&message) else {
        return message;
    };
    for name in sources {
        let Some(source) = pipeline.sources.get(name) else {
            continue;
        };
        let parquet = source.format == Format::Parquet;
        if parquet != (trouble == Trouble::Parquet) {
            continue;
        }
        if let Some(found) = locate_bad_file(engine, source).await {
            return format!("source '{name}': {found}");
        }
    }
    message
}

/// Whether `err` is, or was caused by, a disk that is full (ENOSPC).
fn disk_full(err: &DataFusionError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::StorageFull
        {
            return true;
        }
        if let Some(DataFusionError::Shared(inner)) = e.downcast_ref::<DataFusionError>()
            && disk_full(inner)
        {
            return true;
        }
        cause = e.source();
    }
    // (Errors that carry the operating system's words only.)
    err.to_string().contains("No space left on device")
}

/// The first file of a source at fault, as `file:line: reason` (a row that does not parse)
/// or `file: reason` (a file that cannot be read).
async fn locate_bad_file(engine: &Engine, source: &SourceConfig) -> Option<String> {
    let table = engine
        .ctx()
        .table_provider(source.name.as_str())
        .await
        .ok()?;
    let full = table.schema();
    // Partition columns (declared or discovered from `key=value` folders) are not in the
    // files; which ones a file has is read off its path below.
    let declared: BTreeSet<String> = source
        .partition_cols
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let loc = Location::parse(&source.location).ok()?;
    let store = engine.stores().store_for(&loc).ok()?;
    let url = datafusion::datasource::listing::ListingTableUrl::parse(&source.location).ok()?;
    let state = engine.ctx().state();
    let ext = crate::catalog::file_extension(source);
    let mut files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), &ext)
        .await
        .ok()?
        .try_collect()
        .await
        .ok()?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    for file in files {
        let shown = loc.display_key(&file.location);
        let dialect = match source.format {
            Format::Csv => Dialect::csv(source.csv.clone()),
            Format::Json => Dialect::Json,
            Format::Parquet => {
                let format = datafusion::datasource::file_format::parquet::ParquetFormat::new();
                let read = datafusion::datasource::file_format::FileFormat::infer_schema(
                    &format,
                    &state,
                    &store,
                    std::slice::from_ref(&file),
                )
                .await;
                if let Err(e) = read {
                    return Some(format!("{shown}: {}", describe_datafusion(&e)));
                }
                continue;
            }
        };
        let mut partition = declared.clone();
        partition.extend(
            file.location
                .parts()
                .filter_map(|p| p.as_ref().split_once('=').map(|(k, _)| k.to_string())),
        );
        let schema: SchemaRef = Arc::new(Schema::new(
            full.fields()
                .iter()
                .filter(|f| !partition.contains(f.name()))
                .cloned()
                .collect::<Vec<_>>(),
        ));
        let decoder = ChunkDecoder::new(schema, dialect, 8192);
        // A CSV file whose header orders the columns otherwise is read by name, as the scan
        // that failed read it.
        let decoder = match table.downcast_ref::<crate::quarantine::QuarantineTable>() {
            Some(q) => q.decoder_for(&file.location, decoder),
            None => decoder,
        };
        let compression = crate::catalog::compression_type(source.compression);
        match crate::quarantine::first_reject(
            store.as_ref(),
            &file.location,
            &shown,
            &decoder,
            compression,
        )
        .await
        {
            Ok(Some(r)) => return Some(format!("{shown}:{}: {}", r.line, r.reason)),
            Ok(None) => {}
            Err(e) => return Some(format!("{shown}: cannot read the file to its end: {e}")),
        }
    }
    None
}
