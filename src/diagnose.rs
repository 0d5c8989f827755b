//! Diagnosis of a failed model: turns an engine error into a message that names the file and
//! line at fault where the engine does not.
//!
//! DataFusion reads CSV and JSON in parallel byte ranges, so a parse error carries neither the
//! file nor a line number counted from the file's start. On that error path only, sluice
//! re-reads the model's text sources one file at a time, record by record, with the same
//! schema and options, and reports the first record that does not parse.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::sync::Arc;

use datafusion::arrow::csv::ReaderBuilder as CsvReaderBuilder;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder as JsonReaderBuilder;
use datafusion::error::DataFusionError;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::config::{Compression, Format, Pipeline, SourceConfig};
use crate::engine::Engine;
use crate::error::describe_datafusion;
use crate::store::Location;

/// Whether an error looks like a record that failed to parse.
fn is_parse_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("parser error")
        || m.contains("error while parsing")
        || m.contains("csv error")
        || m.contains("json error")
        || m.contains("incorrect number of fields")
        || m.contains("encountered unexpected")
        || m.contains("invalid utf")
        // Sources with a null value are cast from text after reading (see catalog).
        || m.contains("cannot cast string")
}

/// Explains why a model reading `sources` failed with `err`.
pub async fn explain(
    engine: &Engine,
    pipeline: &Pipeline,
    sources: &BTreeSet<String>,
    err: &DataFusionError,
) -> String {
    let message = describe_datafusion(err);
    if !is_parse_error(&message) {
        return message;
    }
    for name in sources {
        let Some(source) = pipeline.sources.get(name) else {
            continue;
        };
        if source.format == Format::Parquet || source.compression != Compression::None {
            continue;
        }
        if let Some(found) = locate_bad_record(engine, source).await {
            return format!("source '{name}': {found}");
        }
    }
    message
}

/// The first record of a text source that does not parse, as `file:line: reason`.
async fn locate_bad_record(engine: &Engine, source: &SourceConfig) -> Option<String> {
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
    let ext = if source.location.ends_with('/') {
        format!(".{}", source.format.extension())
    } else {
        String::new()
    };
    let mut files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), &ext)
        .await
        .ok()?
        .try_collect()
        .await
        .ok()?;
    files.sort_by(|a, b| a.location.cmp(&b.location));
    for file in files {
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
        let bytes = store.get(&file.location).await.ok()?.bytes().await.ok()?;
        let shown = loc.display_key(&file.location);
        let found = match source.format {
            Format::Csv => first_bad_csv(&bytes, &schema, source),
            Format::Json => first_bad_json(&bytes, &schema),
            Format::Parquet => None,
        };
        if let Some((line, reason)) = found {
            return Some(format!("{shown}:{line}: {reason}"));
        }
    }
    None
}

/// Reads CSV one record at a time; returns the 1-based line of the first bad record.
fn first_bad_csv(
    bytes: &[u8],
    schema: &SchemaRef,
    source: &SourceConfig,
) -> Option<(usize, String)> {
    let csv = &source.csv;
    let mut builder = CsvReaderBuilder::new(Arc::clone(schema))
        .with_header(csv.has_header)
        .with_delimiter(csv.delimiter)
        .with_quote(csv.quote)
        .with_batch_size(1);
    if let Some(e) = csv.escape {
        builder = builder.with_escape(e);
    }
    if let Some(null) = &csv.null_value
        && let Ok(re) = regex::Regex::new(&format!("^{}$", crate::catalog::regex_escape(null)))
    {
        builder = builder.with_null_regex(re);
    }
    let reader = builder.build(std::io::Cursor::new(bytes)).ok()?;
    // Line numbers: records are counted, so a record spanning lines (quoted newlines) makes
    // the number approximate; the reason still quotes the record.
    let mut line = usize::from(csv.has_header);
    for batch in reader {
        line += 1;
        if let Err(e) = batch {
            return Some((
                line,
                name_csv_column(&clean_arrow_message(&e.to_string()), schema),
            ));
        }
    }
    None
}

/// Reads JSON lines one at a time; returns the 1-based line of the first bad one.
fn first_bad_json(bytes: &[u8], schema: &SchemaRef) -> Option<(usize, String)> {
    for (i, line) in std::io::Cursor::new(bytes).lines().enumerate() {
        let Ok(line) = line else {
            return Some((i + 1, "invalid UTF-8".to_string()));
        };
        if line.trim().is_empty() {
            continue;
        }
        let reader =
            JsonReaderBuilder::new(Arc::clone(schema)).build(std::io::Cursor::new(line.as_bytes()));
        let result = reader.and_then(|r| r.collect::<Result<Vec<_>, _>>());
        if let Err(e) = result {
            return Some((i + 1, clean_arrow_message(&e.to_string())));
        }
    }
    None
}

/// Strips arrow's prefixes and its line number, which counts from the start of the range it
/// was reading, not of the file (sluice gives the file's own line instead).
fn clean_arrow_message(m: &str) -> String {
    let m = m
        .trim_start_matches("Parser error: ")
        .trim_start_matches("Csv error: ")
        .trim_start_matches("Json error: ");
    match regex::Regex::new(r" (at|for) line \d+") {
        Ok(re) => re.replace_all(m, "").into_owned(),
        Err(_) => m.to_string(),
    }
}

/// Replaces arrow's 0-based "for column N" by the column's name.
fn name_csv_column(m: &str, schema: &SchemaRef) -> String {
    let Ok(re) = regex::Regex::new(r"for column (\d+)") else {
        return m.to_string();
    };
    re.replace(m, |caps: &regex::Captures<'_>| {
        caps[1]
            .parse::<usize>()
            .ok()
            .and_then(|i| schema.fields().get(i))
            .map(|f| format!("for column '{}'", f.name()))
            .unwrap_or_else(|| caps[0].to_string())
    })
    .into_owned()
}
