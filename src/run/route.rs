//! Read once, then route: a source file holding rows of many of the units a run is about to
//! run (one big CSV or JSON file, an unsorted Parquet file) would be read again by each of
//! them, whole, to keep its period's rows (366 daily units over one 31 MB CSV read 123 M
//! rows for 337 K). Such a file is read once before the units start, its rows split by
//! period into temporary Parquet files (in the engine's spill folder), and each unit reads its
//! period's share of them in place of the file itself.
//!
//! The rows are split by the same expression that placed them in periods when the units
//! were planned ([`super::event_map::period_sql`]), and each unit still filters what it
//! reads to its range, so a unit reads exactly the rows it read before. A quarantined
//! source's file is read through its quarantine scan, whose rejects count with the model's.
//! The temporary files live as long as the [`Routes`]: a killed run leaves them to the
//! operating system's temporary folder, and a resumed run routes again what its pending
//! units need.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::NaiveDateTime;
use datafusion::arrow::array::{Array, RecordBatch, TimestampNanosecondArray, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::SpillFile;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use futures::StreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::RunCx;
use super::event_map::EventMap;
use super::unit::{UnitError, UnitRejects};
use super::unit_context::FileShare;
use crate::units::{Grid, Unit, UnitKind};

/// A file is read once and routed when it holds rows of at least this many of the units
/// to run: below it, reading it in each unit costs no more than writing and reading back.
const ROUTE_AT: usize = 3;

/// Rows held back per period before they are written (small pieces of many periods, as an
/// unsorted file gives, are written as batches of a useful size)...
const BATCH_ROWS: usize = 8192;

/// ...unless the rows held back over every period pass this many bytes.
const HELD_BYTES: usize = 64 << 20;

/// Periods routed by one read of the files (each has a file open while they are read).
const OPEN_FILES: usize = 256;

/// The name of the period column the routing query adds to a source's columns.
const PERIOD: &str = "__sluice_period";

/// The routed files of a model's sources, and their rows by period.
#[derive(Default)]
pub(super) struct Routes {
    grid: Option<Grid>,
    by_source: BTreeMap<String, SourceRoutes>,
}

/// One source's routed files.
struct SourceRoutes {
    /// The files read once: units read their rows from `periods` instead.
    files: BTreeSet<Path>,
    /// The source's schema.
    schema: SchemaRef,
    /// Per period (its first instant): the temporary Parquet file holding its rows.
    periods: BTreeMap<NaiveDateTime, Arc<dyn SpillFile>>,
    /// Rows routed.
    rows: u64,
}

/// One source's share of a period unit: the files it reads itself, and the routed rows of
/// its period, if any.
pub(super) struct Share {
    /// The source's files of the period that were not routed.
    pub(super) files: Vec<ObjectMeta>,
    /// The table over the routed rows of the period, and where it reads them.
    pub(super) routed: Option<(Arc<ListingTable>, ListingTableUrl)>,
}

impl Routes {
    /// Nothing routed.
    pub(super) fn none() -> Routes {
        Routes::default()
    }

    /// What was routed, for the report; `None` for nothing.
    pub(super) fn report(&self) -> Option<crate::report::Routed> {
        let mut out = crate::report::Routed::default();
        let mut units: BTreeSet<&NaiveDateTime> = BTreeSet::new();
        for s in self.by_source.values() {
            out.files += s.files.len() as u64;
            out.rows += s.rows;
            units.extend(s.periods.keys());
        }
        out.units = units.len() as u64;
        (out.files > 0).then_some(out)
    }

    /// The share of `source` the unit of the period holding `start` reads, of its files
    /// holding rows of that period, `files`.
    pub(super) fn share(
        &self,
        source: &str,
        start: NaiveDateTime,
        files: Vec<ObjectMeta>,
    ) -> Result<Share, UnitError> {
        let Some(routes) = self.by_source.get(source) else {
            return Ok(Share {
                files,
                routed: None,
            });
        };
        let files: Vec<ObjectMeta> = files
            .into_iter()
            .filter(|f| !routes.files.contains(&f.location))
            .collect();
        let key = self.grid.map_or(start, |g| g.truncate(start));
        let routed = match routes.periods.get(&key) {
            Some(file) => Some(routed_table(file.as_ref(), &routes.schema)?),
            None => None,
        };
        Ok(Share { files, routed })
    }
}

/// A table over one routed period's Parquet file, with the source's schema.
fn routed_table(
    file: &dyn SpillFile,
    schema: &SchemaRef,
) -> Result<(Arc<ListingTable>, ListingTableUrl), UnitError> {
    let err = |e: datafusion::error::DataFusionError| UnitError::query(&e);
    let path = file
        .path()
        .and_then(|p| p.to_str())
        .ok_or_else(|| UnitError::permanent("a routed file has no local path"))?;
    let url = ListingTableUrl::parse(path).map_err(err)?;
    // (Temporary files have no extension.) Parquet, for the statistics the planner sizes
    // joins by.
    let options = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension("");
    let config = ListingTableConfig::new(url.clone())
        .with_listing_options(options)
        .with_schema(Arc::clone(schema));
    let table = ListingTable::try_new(config).map_err(err)?;
    Ok((Arc::new(table), url))
}

/// Reads once each file of the model's event-time `sources` that holds rows of at least
/// [`ROUTE_AT`] of the period `units` about to run, and routes its rows to them. Returns
/// the routes, and what the quarantine scans of the files read set aside.
pub(super) async fn route(
    cx: &RunCx<'_>,
    events: &EventMap,
    sources: &[(String, String)],
    units: &[&Unit],
) -> Result<(Routes, UnitRejects), UnitError> {
    let mut routes = Routes {
        grid: events.grid,
        by_source: BTreeMap::new(),
    };
    let mut rejects = Vec::new();
    let Some(grid) = events.grid else {
        return Ok((routes, rejects));
    };
    // The periods the units run now take rows of.
    let wanted: BTreeSet<NaiveDateTime> = units
        .iter()
        .filter_map(|u| match u.kind {
            UnitKind::Period { start, .. } => Some(events.key(start)),
            _ => None,
        })
        .collect();
    for (source, column) in sources {
        let Some(files) = events.files.get(source) else {
            continue;
        };
        let many: Vec<ObjectMeta> = files
            .iter()
            .filter(|(_, periods)| {
                periods.keys().filter(|p| wanted.contains(p)).count() >= ROUTE_AT
            })
            .map(|(meta, _)| meta.clone())
            .collect();
        if many.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        // One file open per period: past [`OPEN_FILES`] periods, the files are read once per
        // so many (an hourly grid over a year), still far fewer reads than units.
        let periods: Vec<NaiveDateTime> = wanted.iter().copied().collect();
        let mut routed: Option<SourceRoutes> = None;
        let mut quarantined = None;
        for chunk in periods.chunks(OPEN_FILES) {
            let chunk: BTreeSet<NaiveDateTime> = chunk.iter().copied().collect();
            let (part, rejected) = route_source(cx, source, column, grid, &many, &chunk).await?;
            // (Each read sets the same bad rows aside: the first read's are kept.)
            quarantined = quarantined.or(rejected);
            match &mut routed {
                Some(all) => {
                    all.rows += part.rows;
                    all.periods.extend(part.periods);
                }
                None => routed = Some(part),
            }
        }
        let Some(routed) = routed else {
            continue;
        };
        tracing::info!(
            source = %source,
            files = many.len(),
            periods = routed.periods.len(),
            "read {} file(s) holding rows of many units once, routed to {} units in {:?}",
            many.len(),
            routed.periods.len(),
            started.elapsed()
        );
        if let Some(q) = quarantined {
            rejects.push((source.clone(), q));
        }
        routes.by_source.insert(source.clone(), routed);
    }
    Ok((routes, rejects))
}

/// Reads `files` of `source` once (through the source's own table), and writes their rows
/// of the `wanted` periods to one temporary file per period.
async fn route_source(
    cx: &RunCx<'_>,
    source: &str,
    column: &str,
    grid: Grid,
    files: &[ObjectMeta],
    wanted: &BTreeSet<NaiveDateTime>,
) -> Result<(SourceRoutes, Option<crate::quarantine::SourceRejects>), UnitError> {
    let main = cx.engine.ctx();
    let share = FileShare::new(main, cx.engine.stores(), cx.pipeline, source, files).await?;
    let schema = main
        .table_provider(source)
        .await
        .map_err(|e| UnitError::query(&e))?
        .schema();
    let sql = format!(
        "SELECT s.*, {} AS \"{PERIOD}\" FROM \"{source}\" s",
        super::event_map::period_sql(grid, &format!("TRY_CAST(s.\"{column}\" AS TIMESTAMP)"))
    );
    let explain = |e: datafusion::error::DataFusionError| async move {
        let sources = BTreeSet::from([source.to_string()]);
        let message = crate::diagnose::explain(cx.engine, cx.pipeline, &sources, &e).await;
        UnitError::caused_by(&e, format!("source '{source}': {message}"))
    };
    let stream = match share.ctx.sql(&sql).await {
        Ok(df) => df.execute_stream().await,
        Err(e) => Err(e),
    };
    let mut stream = match stream {
        Ok(s) => s,
        Err(e) => return Err(explain(e).await),
    };
    let disk = Arc::clone(&main.runtime_env().disk_manager);
    let mut out = Splitter {
        grid,
        wanted,
        disk: &disk,
        held: BTreeMap::new(),
        held_bytes: 0,
        writers: BTreeMap::new(),
        rows: 0,
    };
    while let Some(batch) = stream.next().await {
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return Err(explain(e).await),
        };
        out.push(batch)?;
    }
    let rows = out.rows;
    let periods = out.finish()?;
    let routes = SourceRoutes {
        files: files.iter().map(|f| f.location.clone()).collect(),
        schema,
        periods,
        rows,
    };
    Ok((routes, share.rejects(source).await))
}

/// The writer of one period's temporary Parquet file.
type PeriodWriter = ArrowWriter<Box<dyn datafusion::execution::SpillWriter>>;

/// Splits batches (the source's columns, then the period) by period into one Parquet file per
/// period, holding small pieces back until they make a batch of a useful size.
struct Splitter<'a> {
    grid: Grid,
    wanted: &'a BTreeSet<NaiveDateTime>,
    disk: &'a Arc<datafusion::execution::disk_manager::DiskManager>,
    /// Per period: rows held back, and their count.
    held: BTreeMap<NaiveDateTime, (Vec<RecordBatch>, usize)>,
    /// Bytes held back over every period.
    held_bytes: usize,
    /// Per period: its file, and the writer open on it.
    writers: BTreeMap<NaiveDateTime, (Arc<dyn SpillFile>, PeriodWriter)>,
    /// Rows taken in.
    rows: u64,
}

impl Splitter<'_> {
    /// Takes in one batch: its rows of wanted periods are held back under their period.
    fn push(&mut self, batch: RecordBatch) -> Result<(), UnitError> {
        let last = batch.num_columns().saturating_sub(1);
        let Some(period) = batch
            .column(last)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
        else {
            return Err(UnitError::permanent(
                "routing: the period column is not a nanosecond timestamp",
            ));
        };
        // Rows by period (the values are truncated already: few distinct ones per batch).
        let mut rows: BTreeMap<NaiveDateTime, Vec<u32>> = BTreeMap::new();
        let mut seen: Option<(i64, NaiveDateTime)> = None;
        for i in 0..period.len() {
            if period.is_null(i) {
                continue;
            }
            let ns = period.value(i);
            let key = match seen {
                Some((v, key)) if v == ns => key,
                _ => {
                    let key = super::event_map::period_key(self.grid, ns);
                    seen = Some((ns, key));
                    key
                }
            };
            if self.wanted.contains(&key) {
                rows.entry(key).or_default().push(i as u32);
            }
        }
        let columns: Vec<usize> = (0..last).collect();
        let batch = batch.project(&columns).map_err(arrow_err)?;
        for (key, indices) in rows {
            let piece = if indices.len() == batch.num_rows() {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(indices)).map_err(arrow_err)?
            };
            self.held_bytes += piece.get_array_memory_size();
            self.rows += piece.num_rows() as u64;
            let (pieces, n) = self.held.entry(key).or_default();
            *n += piece.num_rows();
            pieces.push(piece);
            if *n >= BATCH_ROWS {
                self.write(key)?;
            }
        }
        if self.held_bytes > HELD_BYTES {
            let keys: Vec<NaiveDateTime> = self.held.keys().copied().collect();
            for key in keys {
                self.write(key)?;
            }
        }
        Ok(())
    }

    /// Writes what is held back of period `key` to its file.
    fn write(&mut self, key: NaiveDateTime) -> Result<(), UnitError> {
        let Some((pieces, _)) = self.held.remove(&key) else {
            return Ok(());
        };
        let Some(first) = pieces.first() else {
            return Ok(());
        };
        let schema = first.schema();
        self.held_bytes = self.held_bytes.saturating_sub(
            pieces
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum::<usize>(),
        );
        let batch = concat_batches(&schema, &pieces).map_err(arrow_err)?;
        let (_, writer) = match self.writers.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let file = self
                    .disk
                    .create_tmp_file("routing a source's rows to units")
                    .map_err(|e| UnitError::query(&e))?;
                let sink = file.open_writer().map_err(|e| UnitError::query(&e))?;
                // Uncompressed: written once, read once, from local disk. No column
                // statistics: the planner needs only the row counts, and min/max of text
                // event times (which sort unlike the instants they name, with UTC offsets)
                // break DataFusion 55's interval analysis of the unit's filter.
                let props = WriterProperties::builder()
                    .set_compression(Compression::UNCOMPRESSED)
                    .set_statistics_enabled(EnabledStatistics::None)
                    .build();
                let writer = ArrowWriter::try_new(sink, Arc::clone(&schema), Some(props))
                    .map_err(parquet_err)?;
                e.insert((file, writer))
            }
        };
        // One row group per batch written: a writer holds nothing back between them.
        writer.write(&batch).map_err(parquet_err)?;
        writer.flush().map_err(parquet_err)
    }

    /// Writes what is held back, closes every file, and returns them by period.
    fn finish(mut self) -> Result<BTreeMap<NaiveDateTime, Arc<dyn SpillFile>>, UnitError> {
        let keys: Vec<NaiveDateTime> = self.held.keys().copied().collect();
        for key in keys {
            self.write(key)?;
        }
        let mut out = BTreeMap::new();
        for (key, (file, writer)) in self.writers {
            let mut sink = writer.into_inner().map_err(parquet_err)?;
            sink.finish().map_err(|e| UnitError::query(&e))?;
            out.insert(key, file);
        }
        Ok(out)
    }
}

fn parquet_err(e: datafusion::parquet::errors::ParquetError) -> UnitError {
    UnitError::caused_by(&e, format!("routing rows to units: {e}"))
}

fn arrow_err(e: datafusion::arrow::error::ArrowError) -> UnitError {
    UnitError::caused_by(&e, format!("routing rows to units: {e}"))
}
