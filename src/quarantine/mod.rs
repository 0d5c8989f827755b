//! Quarantine of bad rows (`on_bad_rows = "quarantine"`): a CSV or JSON-lines source read by
//! sluice's own scan, which sends each row that does not fit the source's schema to a rejects
//! list (file, line, raw text, reason) and goes on with the good rows.
//!
//! DataFusion's CSV and JSON readers fail the whole query on the first bad row, so such a
//! source is a [`QuarantineTable`]. Its scan streams each file, cuts the bytes into chunks of
//! whole records ([`split`]: quote-aware for CSV, so a quoted newline is never a cut), decodes
//! the chunks on blocking threads in parallel and in order ([`decode`]: arrow's own decoder,
//! or a faster one giving the same rows, taking a chunk apart only when it fails), and sends the good rows on. The run writes
//! the rejects as Parquet (`src/run.rs`) and counts them. See `docs/design/quarantine.md`.
//!
//! # Layout
//! - [`split`]: byte stream → chunks that end on a record boundary, with their first line.
//! - [`decode`]: chunk → good batches + rejects.
//! - `plain_csv`: the faster decoder of a CSV chunk without quoting inside values, which
//!   [`decode`] tries first; it hands back any chunk it would not read as arrow's decoder does.
//! - this module: the table, the scan plan, and the reject sink shared by a run.

pub mod decode;
mod plain_csv;
pub mod rejects;
pub mod split;
#[cfg(test)]
mod tests;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use decode::{ChunkDecoder, Decoded, Dialect};
use split::{Piece, Splitter};

/// The longest raw text kept for one rejected row.
const MAX_RAW: usize = 64 << 10;

/// The size of the chunks a file is cut into for decoding (a few batches each).
const CHUNK_BYTES: usize = 4 << 20;

/// The longest record read; past it (most likely an unbalanced quote) the rest of the file is
/// one reject.
pub const MAX_RECORD_BYTES: usize = 128 << 20;

/// One rejected row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// The file, as the source's location shows it.
    pub file: String,
    /// The line the row starts on (1 = the file's first line).
    pub line: u64,
    /// The row as written (at most 64 KiB).
    pub raw: String,
    /// Why it was rejected.
    pub reason: String,
}

/// What scans of one source set aside and read: its rejects, each row once, and the good
/// rows of each file read to its end. Counted per file, a file read by several scans (units
/// whose periods it spans, key buckets) counts once, and the files no scan of this process
/// read to its end (those of units a resumed run kept) can be found and read again.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SourceRejects {
    /// The rejected rows, sorted by file and line.
    pub rejects: Vec<Reject>,
    /// Good rows per file read to its end, by object path.
    pub read: std::collections::BTreeMap<String, u64>,
}

impl SourceRejects {
    /// Adds what other scans of the same source found: rejects not yet here, and files read.
    pub fn merge(&mut self, other: SourceRejects) {
        let seen: HashSet<(String, u64)> = self
            .rejects
            .iter()
            .map(|r| (r.file.clone(), r.line))
            .collect();
        self.rejects.extend(
            other
                .rejects
                .into_iter()
                .filter(|r| !seen.contains(&(r.file.clone(), r.line))),
        );
        self.rejects
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        for (file, good) in other.read {
            let n = self.read.entry(file).or_default();
            *n = (*n).max(good);
        }
    }

    /// Good rows over every file read.
    pub fn good(&self) -> u64 {
        self.read.values().sum()
    }
}

/// The rejects of one source, shared by every scan of one table of it (a model may read it
/// in many units; each row is kept once).
#[derive(Debug, Default)]
pub struct RejectSink {
    inner: Mutex<Gathered>,
    /// Fail on the first bad row instead (a source that does not quarantine, read by this
    /// scan for its decompression).
    strict: bool,
}

/// The rejects, the (file, line) of each to keep each row once, and the files read.
#[derive(Debug, Default)]
struct Gathered {
    found: SourceRejects,
    seen: HashSet<(String, u64)>,
}

impl RejectSink {
    /// A sink that keeps bad rows, or (`strict`) fails on the first.
    fn new(strict: bool) -> RejectSink {
        RejectSink {
            strict,
            ..RejectSink::default()
        }
    }

    /// Sets `r` aside; for a strict sink, the error that fails the query, naming the file,
    /// the line and why.
    fn push(&self, r: Reject) -> Result<()> {
        if self.strict {
            return Err(DataFusionError::Execution(format!(
                "{}:{}: {}",
                r.file, r.line, r.reason
            )));
        }
        if let Ok(mut g) = self.inner.lock()
            && g.seen.insert((r.file.clone(), r.line))
        {
            g.found.rejects.push(r);
        }
        Ok(())
    }

    /// `file` was read to its end, with `good` good rows.
    fn file_read(&self, file: &object_store::path::Path, good: u64) {
        if let Ok(mut g) = self.inner.lock() {
            let n = g.found.read.entry(file.to_string()).or_default();
            *n = (*n).max(good);
        }
    }

    /// What was gathered so far, taken (so the next model reading the source counts its
    /// own), rejects sorted by file and line.
    pub fn take(&self) -> SourceRejects {
        let mut out = self
            .inner
            .lock()
            .map(|mut g| std::mem::take(&mut *g).found)
            .unwrap_or_default();
        out.rejects
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        out
    }
}

/// The files of a quarantined source, and how to find and show them.
pub struct SourceFiles {
    /// The store the files are in.
    pub store: Arc<dyn ObjectStore>,
    /// The source's location, which Hive partition folders are relative to.
    pub table_url: ListingTableUrl,
    /// The files, as listed.
    pub files: Vec<ObjectMeta>,
    /// Hive partition columns (`key=value` folders) and their types.
    pub partition_cols: Vec<(String, DataType)>,
    /// The source's location, as written: files are named in its form in rejects and errors.
    pub location: crate::store::Location,
    /// The CSV files whose header does not list the table's columns in the table's order,
    /// by object path: read by their header's names.
    pub layouts: HashMap<object_store::path::Path, Arc<HeaderLayout>>,
}

/// Where a CSV file's columns are, when its header does not list the table's file columns
/// in the table's order: the file is decoded in its own order and its columns taken by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderLayout {
    /// The file's header, in its order.
    pub header: Vec<String>,
    /// For each of the table's file columns, its position in the header; `None` when the
    /// file lacks it (read as NULL).
    pub positions: Vec<Option<usize>>,
}

impl HeaderLayout {
    /// The schema a file with this header is decoded into: each header column with the type
    /// of the table column it is, and text for those the table does not have (read, not
    /// kept).
    fn file_schema(&self, table: &Schema) -> SchemaRef {
        let fields: Vec<Field> = self
            .header
            .iter()
            .enumerate()
            .map(
                |(j, name)| match self.positions.iter().position(|p| *p == Some(j)) {
                    Some(i) => table.field(i).clone(),
                    None => Field::new(format!("#{} {name}", j + 1), DataType::Utf8, true),
                },
            )
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// A batch decoded in the file's order as the table's file columns.
    fn to_table(&self, batch: &RecordBatch, table: &SchemaRef) -> Result<RecordBatch> {
        let columns = self
            .positions
            .iter()
            .zip(table.fields())
            .map(|(p, f)| match p {
                Some(j) => Arc::clone(batch.column(*j)),
                None => datafusion::arrow::array::new_null_array(f.data_type(), batch.num_rows()),
            })
            .collect();
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(table),
            columns,
            &options,
        )?)
    }
}

impl SourceFiles {
    /// The partition values of `file` from its `key=value` folders, or why there are none.
    fn partition_values(&self, file: &ObjectMeta) -> std::result::Result<Vec<ScalarValue>, String> {
        crate::table::hive::partition_values(&self.table_url, &self.partition_cols, &file.location)
            .map_err(|e| format!("{e}; the file was not read"))
    }
}

/// A CSV or JSON-lines source whose bad rows are quarantined.
pub struct QuarantineTable {
    /// The files' columns, then the partition columns.
    schema: SchemaRef,
    file_schema: SchemaRef,
    source: Arc<SourceFiles>,
    dialect: Dialect,
    compression: FileCompressionType,
    /// The source's event-time column: a row without one is a bad row.
    event_time: Option<String>,
    /// Where the rejects go.
    pub sink: Arc<RejectSink>,
}

/// What a [`QuarantineTable`]'s scan does with a bad row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnBad {
    /// Sets it aside and goes on.
    SetAside,
    /// Fails the query, naming the file and line (a source that does not quarantine, read by
    /// this scan because it decodes every stream of a compressed file).
    Fail,
}

impl fmt::Debug for QuarantineTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuarantineTable({} files)", self.source.files.len())
    }
}

impl QuarantineTable {
    /// A table over `source`'s files, read in `dialect` into `file_schema` (plus the
    /// partition columns); a row whose `event_time` column is NULL or no timestamp is a bad
    /// row; bad rows are set aside or fail the query, as `on_bad` says.
    pub fn new(
        source: SourceFiles,
        file_schema: SchemaRef,
        dialect: Dialect,
        compression: FileCompressionType,
        event_time: Option<String>,
        on_bad: OnBad,
    ) -> QuarantineTable {
        let mut fields: Vec<_> = file_schema.fields().iter().cloned().collect();
        for (name, ty) in &source.partition_cols {
            fields.push(Arc::new(Field::new(name, ty.clone(), true)));
        }
        QuarantineTable {
            schema: Arc::new(Schema::new(fields)),
            file_schema,
            source: Arc::new(source),
            dialect,
            compression,
            event_time,
            sink: Arc::new(RejectSink::new(on_bad == OnBad::Fail)),
        }
    }

    /// The files it reads.
    pub fn files(&self) -> &[ObjectMeta] {
        &self.source.files
    }

    /// The decoder for `file`: `decoder` (into the table's file columns), or, for a file whose
    /// header has them in another order, the same into the file's own order.
    pub(crate) fn decoder_for(
        &self,
        file: &object_store::path::Path,
        decoder: ChunkDecoder,
    ) -> ChunkDecoder {
        match self.source.layouts.get(file) {
            Some(l) => decoder.with_schema(l.file_schema(&self.file_schema)),
            None => decoder,
        }
    }

    /// The same table over only `files` (a unit's share), with a sink of its own.
    pub fn subset(&self, files: Vec<ObjectMeta>) -> QuarantineTable {
        let source = &self.source;
        QuarantineTable {
            schema: Arc::clone(&self.schema),
            file_schema: Arc::clone(&self.file_schema),
            source: Arc::new(SourceFiles {
                store: Arc::clone(&source.store),
                table_url: source.table_url.clone(),
                files,
                partition_cols: source.partition_cols.clone(),
                location: source.location.clone(),
                layouts: source.layouts.clone(),
            }),
            dialect: self.dialect.clone(),
            compression: self.compression,
            event_time: self.event_time.clone(),
            sink: Arc::new(RejectSink::new(self.sink.strict)),
        }
    }
}

#[async_trait]
impl TableProvider for QuarantineTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let files = &self.source.files;
        let parts = state
            .config()
            .target_partitions()
            .clamp(1, files.len().max(1));
        let mut groups: Vec<Vec<ObjectMeta>> = vec![Vec::new(); parts];
        for (i, f) in files.iter().enumerate() {
            groups[i % parts].push(f.clone());
        }
        Ok(Arc::new(QuarantineScan::build(
            groups,
            projection.cloned(),
            Arc::clone(&self.schema),
            Arc::clone(&self.file_schema),
            Arc::clone(&self.source),
            self.dialect.clone(),
            self.compression,
            self.event_time.clone(),
            Arc::clone(&self.sink),
        )?))
    }
}

/// The scan of a [`QuarantineTable`]: one partition per group of files.
pub struct QuarantineScan {
    props: Arc<PlanProperties>,
    groups: Vec<Vec<ObjectMeta>>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    file_schema: SchemaRef,
    out_schema: SchemaRef,
    source: Arc<SourceFiles>,
    dialect: Dialect,
    compression: FileCompressionType,
    event_time: Option<String>,
    sink: Arc<RejectSink>,
    metrics: ExecutionPlanMetricsSet,
    /// On a cluster: placed in a stage of its own (see [`QuarantineScan::split`]).
    staged: bool,
    /// Its partitions' share of the pool for chunks in flight, in a session without one of
    /// its own (see [`ScanBudget`]).
    budget: Arc<ScanBudget>,
}

impl QuarantineScan {
    /// The scan of `groups` of `source`'s files, one partition each.
    #[allow(clippy::too_many_arguments)]
    fn build(
        groups: Vec<Vec<ObjectMeta>>,
        projection: Option<Vec<usize>>,
        schema: SchemaRef,
        file_schema: SchemaRef,
        source: Arc<SourceFiles>,
        dialect: Dialect,
        compression: FileCompressionType,
        event_time: Option<String>,
        sink: Arc<RejectSink>,
    ) -> Result<QuarantineScan> {
        let out_schema = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        Ok(QuarantineScan {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&out_schema)),
                Partitioning::UnknownPartitioning(groups.len().max(1)),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            groups,
            projection,
            schema,
            file_schema,
            out_schema,
            source,
            dialect,
            compression,
            event_time,
            sink,
            metrics: ExecutionPlanMetricsSet::new(),
            staged: false,
            budget: Arc::default(),
        })
    }

    /// The location of the source it reads.
    pub fn table_url(&self) -> &ListingTableUrl {
        &self.source.table_url
    }
}

impl fmt::Debug for QuarantineScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QuarantineScan")
    }
}

impl DisplayAs for QuarantineScan {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        let format = match self.dialect {
            Dialect::Csv { .. } => "csv",
            Dialect::Json => "json",
        };
        // (The location names the table: a cluster's metrics say which scan read what.)
        write!(
            f,
            "QuarantineScan: {files} {format} files in {}, bad rows quarantined",
            self.source.table_url
        )
    }
}

impl ExecutionPlan for QuarantineScan {
    fn name(&self) -> &str {
        "QuarantineScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    crate::physical::leaf_plan_methods!();

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let files = self.groups.get(partition).cloned().unwrap_or_default();
        let mut builder = RecordBatchReceiverStream::builder(Arc::clone(&self.out_schema), 2);
        let tx = builder.tx();
        // Decoders per partition: enough to keep every core busy when few partitions have
        // files, plus one so the next chunk decodes while this one is sent.
        let busy = self.groups.iter().filter(|g| !g.is_empty()).count().max(1);
        let workers = context.session_config().target_partitions().div_ceil(busy) + 1;
        // Only the file columns the query uses are built from the text, when a bad row fails
        // the scan: which rows come out then does not depend on the columns built (as in
        // DataFusion's own CSV read). A scan that sets bad rows aside builds every column, so
        // that its rejects are the same whatever the query reads.
        let file_columns = self.file_schema.fields().len();
        let columns: Option<Arc<[usize]>> = match &self.projection {
            Some(p) if self.sink.strict && self.event_time.is_none() => {
                let mut c: Vec<usize> = p.iter().copied().filter(|i| *i < file_columns).collect();
                c.sort_unstable();
                c.dedup();
                if c.is_empty() {
                    // (A batch needs a column to count its rows by.)
                    c.push(0);
                }
                (c.len() < file_columns).then(|| c.into())
            }
            _ => None,
        };
        let reader = FileReader {
            decoder: Arc::new(
                ChunkDecoder::new(
                    Arc::clone(&self.file_schema),
                    self.dialect.clone(),
                    context.session_config().batch_size(),
                )
                .with_event_time(self.event_time.as_deref())
                .with_columns(columns.clone()),
            ),
            columns,
            schema: Arc::clone(&self.schema),
            file_schema: Arc::clone(&self.file_schema),
            projection: self.projection.clone(),
            source: Arc::clone(&self.source),
            dialect: self.dialect.clone(),
            compression: self.compression,
            sink: Arc::clone(&self.sink),
            workers,
            baseline: BaselineMetrics::new(&self.metrics, partition),
            memory: Arc::clone(context.memory_pool()),
            partition,
            // A quarter of a bounded pool for all the scans of the session's pool (of this
            // scan's partitions only, in a session without a budget).
            budget: context
                .session_config()
                .get_extension::<ScanBudget>()
                .unwrap_or_else(|| Arc::clone(&self.budget)),
            cap: match context.memory_pool().memory_limit() {
                MemoryLimit::Finite(limit) => limit / 4,
                _ => usize::MAX,
            },
        };
        builder.spawn(async move {
            for file in files {
                if !reader.read(&file, &tx).await? {
                    break;
                }
            }
            Ok(())
        });
        Ok(builder.build())
    }
}

/// The bytes the CSV/JSON scans sharing one memory pool count for their chunks in flight,
/// together: they stay under a quarter of a bounded pool however many scans run at once (a
/// `UNION ALL` of several sources, say). One per session, as a session config extension
/// ([`crate::engine::Engine`] sets it); a scan in a session without one shares one among its
/// own partitions.
#[derive(Debug, Default)]
pub struct ScanBudget {
    counted: std::sync::atomic::AtomicUsize,
}

impl ScanBudget {
    /// Takes `n` bytes if the total stays within `cap`.
    fn take(&self, n: usize, cap: usize) -> bool {
        use std::sync::atomic::Ordering;
        self.counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                c.checked_add(n).filter(|t| *t <= cap)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken.
    fn give(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let _ = self
            .counted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                Some(c.saturating_sub(n))
            });
    }
}

/// Releases a chunk's place in [`InFlight`] when dropped.
struct Release<'a>(&'a InFlight, usize);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Closes an [`InFlight`] when dropped: the consumer has stopped, so a chunk waiting for room
/// goes on (and finds the channel closed) instead of waiting for ever.
struct Closing<'a>(&'a InFlight);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.0.freed.notify_one();
    }
}

/// Reads files of one scan partition.
struct FileReader {
    decoder: Arc<ChunkDecoder>,
    /// The table's schema (file columns, then partition columns).
    schema: SchemaRef,
    /// The table's file columns.
    file_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    source: Arc<SourceFiles>,
    dialect: Dialect,
    compression: FileCompressionType,
    sink: Arc<RejectSink>,
    /// Chunks decoded at once.
    workers: usize,
    /// Good rows sent (the scan's output rows, which the run counts as rows read).
    baseline: BaselineMetrics,
    /// The query's memory pool, where chunks in flight are counted.
    memory: Arc<dyn MemoryPool>,
    /// The scan partition read (it names the pool's consumer).
    partition: usize,
    /// The file columns its decoder builds, when not all (ascending indexes).
    columns: Option<Arc<[usize]>>,
    /// What the scans of the pool count of their chunks in flight, together.
    budget: Arc<ScanBudget>,
    /// The most the scans of the pool count for chunks in flight (see [`InFlight`]).
    cap: usize,
}

/// A chunk being decoded on a blocking thread, and the bytes counted for it in the pool.
type Decoding = (tokio::task::JoinHandle<Decoded>, usize);

/// The chunks of a file in flight (being decoded, or decoded and not yet sent on) and the
/// memory counted for them in the query's pool.
///
/// One chunk is always in flight, uncounted: a scan must read, whatever the pool (it is part
/// of the constant documented beyond the pool, about twice [`CHUNK_BYTES`] per scan
/// partition). Each further chunk, decoded beside it to keep the cores busy, is counted as
/// three times its text (the text and the rows decoded from it, held at once: the rows of a
/// 4 MiB chunk of TPC-H lineitem take 1.77 times its text) and goes only while
/// the pool has room and the scans sharing its [`ScanBudget`] hold less than `cap`;
/// otherwise it waits for a chunk of its own to be sent on (it has one in flight: no scan
/// waits on another's). So the scans never take the memory a sort or an aggregation spills
/// by.
struct InFlight {
    state: Mutex<(MemoryReservation, usize)>,
    /// What all the scans of the pool count, together.
    budget: Arc<ScanBudget>,
    /// The most they count in the pool.
    cap: usize,
    /// Told when a chunk has been sent on, or when nothing more will be.
    freed: tokio::sync::Notify,
    /// Nothing more will be sent on (the consumer stopped): no chunk waits.
    closed: std::sync::atomic::AtomicBool,
}

impl InFlight {
    fn new(reservation: MemoryReservation, budget: Arc<ScanBudget>, cap: usize) -> InFlight {
        InFlight {
            state: Mutex::new((reservation, 0)),
            budget,
            cap,
            freed: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Waits until a chunk of `len` bytes may be decoded; returns the bytes counted for it.
    async fn admit(&self, len: usize) -> usize {
        let want = 3 * len;
        loop {
            {
                let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let (reservation, chunks) = &mut *state;
                if *chunks == 0 || self.closed.load(std::sync::atomic::Ordering::Acquire) {
                    *chunks += 1;
                    return 0;
                }
                if self.budget.take(want, self.cap) {
                    if reservation.try_grow(want).is_ok() {
                        *chunks += 1;
                        return want;
                    }
                    self.budget.give(want);
                }
            }
            // (A `notify_one` before this wait is kept as a permit: no wake-up is lost.)
            self.freed.notified().await;
        }
    }

    /// A chunk counted as `counted` bytes has been sent on.
    fn release(&self, counted: usize) {
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (reservation, chunks) = &mut *state;
            let counted = counted.min(reservation.size());
            reservation.shrink(counted);
            self.budget.give(counted);
            *chunks = chunks.saturating_sub(1);
        }
        self.freed.notify_one();
    }
}

impl FileReader {
    /// Reads one file, sending good rows to `tx` and rejects to the sink. `false` when the
    /// receiver is gone.
    async fn read(
        &self,
        file: &ObjectMeta,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<bool> {
        let shown: Arc<str> = self.source.location.display_key(&file.location).into();
        let partition_values = match self.source.partition_values(file) {
            Ok(v) => v,
            Err(reason) => {
                // Nothing of the file can be read as the table's rows: the file is the reject.
                self.sink.push(Reject {
                    file: shown.to_string(),
                    line: 0,
                    raw: String::new(),
                    reason,
                })?;
                self.sink.file_read(&file.location, 0);
                return Ok(true);
            }
        };
        // A file whose header has the table's columns in another order (or lacks some, or
        // has others) is decoded in its own order, and its columns taken by name.
        let layout = self.source.layouts.get(&file.location).cloned();
        let decoder = match &layout {
            Some(l) => Arc::new(self.decoder.with_schema(l.file_schema(&self.file_schema))),
            None => Arc::clone(&self.decoder),
        };
        let bytes = object_bytes(self.source.store.as_ref(), &file.location).await?;
        let mut bytes = decompress(self.compression, bytes);
        let boundaries = self.dialect.boundaries();
        let mut splitter = Splitter::new(boundaries, CHUNK_BYTES, MAX_RECORD_BYTES);
        let consumer = MemoryConsumer::new(format!("QuarantineScan[{}]", self.partition));
        let in_flight = InFlight::new(
            consumer.register(&self.memory),
            Arc::clone(&self.budget),
            self.cap,
        );
        let in_flight = &in_flight;
        // Chunks go to the decoders in file order, and their rows come back in that order.
        let (handles, mut decoding) = tokio::sync::mpsc::channel::<Decoding>(self.workers);
        let produce = async move {
            let mut done = false;
            while !done {
                let piece = match bytes.next().await {
                    Some(Ok(b)) => splitter.push(b),
                    Some(Err(e)) => {
                        // Kept whole, so whether it is worth retrying can still be told.
                        return Err(DataFusionError::Context(
                            format!("{shown}: cannot read the file to its end"),
                            Box::new(e),
                        ));
                    }
                    None => {
                        done = true;
                        splitter.finish()
                    }
                };
                match piece {
                    Some(Piece::Chunk(chunk)) => {
                        let counted = in_flight.admit(chunk.len()).await;
                        // (The consumer has stopped, maybe while this chunk waited: nothing
                        // more is decoded.)
                        if handles.is_closed() {
                            in_flight.release(counted);
                            break;
                        }
                        let decoder = Arc::clone(&decoder);
                        let file = Arc::clone(&shown);
                        let handle =
                            tokio::task::spawn_blocking(move || decoder.decode(&file, &chunk));
                        if handles.send((handle, counted)).await.is_err() {
                            break;
                        }
                    }
                    Some(Piece::Overlong { line, head }) => {
                        // The rest of the file belongs to that record: no need to read it.
                        self.sink.push(overlong(&shown, line, &head))?;
                        done = true;
                    }
                    None => {}
                }
            }
            Ok::<(), DataFusionError>(())
        };
        // Owns the receiver, so that when it stops (an error, or the query gone) the producer's
        // next send fails and it stops too, instead of waiting on a full channel.
        let consume = async move {
            let _closing = Closing(in_flight);
            let mut good = 0u64;
            while let Some((handle, counted)) = decoding.recv().await {
                let decoded = handle
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                // Released when the chunk's rows are sent on, or on the way out.
                let _sent = Release(in_flight, counted);
                for r in decoded.rejects {
                    self.sink.push(r)?;
                }
                for batch in decoded.batches {
                    good += batch.num_rows() as u64;
                    let batch = match (&layout, &self.columns) {
                        // (A file of its own column order is decoded whole.)
                        (Some(l), Some(c)) => l.to_table(&batch, &self.file_schema)?.project(c)?,
                        (Some(l), None) => l.to_table(&batch, &self.file_schema)?,
                        (None, _) => batch,
                    };
                    let batch = self.finish(batch, &partition_values)?;
                    self.baseline.record_output(batch.num_rows());
                    if tx.send(Ok(batch)).await.is_err() {
                        return Ok((false, good));
                    }
                }
            }
            Ok::<(bool, u64), DataFusionError>((true, good))
        };
        let (produced, consumed) = tokio::join!(produce, consume);
        let (open, good) = consumed?;
        produced?;
        if open {
            self.sink.file_read(&file.location, good);
        }
        Ok(open)
    }

    /// A decoded batch with the file's partition values added, projected for the query.
    fn finish(&self, batch: RecordBatch, partition_values: &[ScalarValue]) -> Result<RecordBatch> {
        if let (Some(columns), Some(projection)) = (&self.columns, &self.projection) {
            // `batch` holds `columns` of the file's: the query's columns taken from it by
            // position, and from the partition values.
            let file_columns = self.file_schema.fields().len();
            let mut out = Vec::with_capacity(projection.len());
            for &i in projection {
                out.push(match columns.iter().position(|c| *c == i) {
                    Some(at) => Arc::clone(batch.column(at)),
                    None => {
                        let value = partition_values.get(i - file_columns).ok_or_else(|| {
                            DataFusionError::Internal(format!("column {i} is not decoded"))
                        })?;
                        value.to_array_of_size(batch.num_rows())?
                    }
                });
            }
            let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows()));
            return Ok(RecordBatch::try_new_with_options(
                Arc::new(self.schema.project(projection)?),
                out,
                &options,
            )?);
        }
        let batch = if partition_values.is_empty() {
            batch
        } else {
            let mut columns = batch.columns().to_vec();
            for v in partition_values {
                columns.push(v.to_array_of_size(batch.num_rows())?);
            }
            RecordBatch::try_new(Arc::clone(&self.schema), columns)?
        };
        Ok(match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        })
    }
}

/// How much of a local file is read at a time.
const READ_BYTES: usize = 4 << 20;

/// The bytes of a compressed file, decompressed, every stream of it: a file may hold several
/// compressed streams one after another (what `pbzip2`, `pzstd`, `pigz --independent` or
/// `cat a.zst b.zst` write), and every one of them holds rows. (DataFusion's own stream
/// decoder reads only the first bzip2, xz or zstd stream.)
pub(crate) fn decompress(
    compression: FileCompressionType,
    bytes: futures::stream::BoxStream<'static, Result<bytes::Bytes>>,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes>> {
    use async_compression::tokio::bufread::{BzDecoder, GzipDecoder, XzDecoder, ZstdDecoder};
    use datafusion::common::parsers::CompressionTypeVariant as C;
    use futures::TryStreamExt;
    use tokio_util::io::{ReaderStream, StreamReader};
    /// The decoded bytes in blocks of up to 256 KiB: large enough that the splitter keeps
    /// them as they are rather than gathering them (`split::Splitter`).
    fn decoded<R: tokio::io::AsyncRead + Send + 'static>(
        r: R,
    ) -> futures::stream::BoxStream<'static, Result<bytes::Bytes>> {
        ReaderStream::with_capacity(r, 256 << 10)
            .map_err(DataFusionError::from)
            .boxed()
    }
    let reader = |bytes: futures::stream::BoxStream<'static, Result<bytes::Bytes>>| {
        StreamReader::new(bytes.map_err(std::io::Error::other))
    };
    match compression.get_variant() {
        C::GZIP => {
            let mut d = GzipDecoder::new(reader(bytes));
            d.multiple_members(true);
            decoded(d)
        }
        C::BZIP2 => {
            let mut d = BzDecoder::new(reader(bytes));
            d.multiple_members(true);
            decoded(d)
        }
        C::XZ => {
            let mut d = XzDecoder::new(reader(bytes));
            d.multiple_members(true);
            decoded(d)
        }
        C::ZSTD => {
            let mut d = ZstdDecoder::new(reader(bytes));
            d.multiple_members(true);
            decoded(d)
        }
        // As read: a reader over the stream would copy it into blocks of 4 KiB.
        C::UNCOMPRESSED => bytes,
    }
}

/// An object's bytes as a stream. A local file is read in blocks of 4 MiB on a blocking
/// thread: object_store streams it in 8 KiB pieces, a blocking task each, which costs more
/// than decoding them.
async fn object_bytes(
    store: &dyn ObjectStore,
    location: &object_store::path::Path,
) -> Result<futures::stream::BoxStream<'static, Result<bytes::Bytes>>> {
    let external = |e: object_store::Error| DataFusionError::External(Box::new(e));
    let got = store.get(location).await.map_err(external)?;
    match got.payload {
        object_store::GetResultPayload::File(file, path) => {
            let blocks = futures::stream::try_unfold(Some(file), move |file| {
                let path = path.clone();
                async move {
                    let Some(file) = file else {
                        return Ok(None);
                    };
                    let (file, block) = tokio::task::spawn_blocking(move || {
                        use std::io::Read;
                        let mut block = Vec::with_capacity(READ_BYTES);
                        let mut reader = (&file).take(READ_BYTES as u64);
                        reader.read_to_end(&mut block).map(|_| (file, block))
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(|e| {
                        DataFusionError::Execution(format!("cannot read {}: {e}", path.display()))
                    })?;
                    if block.is_empty() {
                        return Ok(None);
                    }
                    let more = (block.len() == READ_BYTES).then_some(file);
                    Ok(Some((bytes::Bytes::from(block), more)))
                }
            });
            Ok(blocks.boxed())
        }
        object_store::GetResultPayload::Stream(stream) => {
            Ok(stream.map(move |r| r.map_err(external)).boxed())
        }
    }
}

/// The reject of a record that never ended: it and the rest of the file.
fn overlong(file: &str, line: u64, head: &[u8]) -> Reject {
    Reject {
        file: file.to_string(),
        line,
        raw: String::from_utf8_lossy(head).into_owned(),
        reason: format!(
            "a record longer than {} MiB (an unbalanced quote?); the rest of the file is part \
             of it",
            MAX_RECORD_BYTES >> 20
        ),
    }
}

/// Reads a whole file's bytes as a quarantined source would, on this thread: cut into chunks
/// of about `chunk_bytes` and decoded in order. For tests and the fuzz targets, which check
/// that the result does not depend on where the chunks are cut.
pub fn read_bytes(bytes: &[u8], file: &str, decoder: &ChunkDecoder, chunk_bytes: usize) -> Decoded {
    let mut splitter = Splitter::new(
        decoder.dialect().boundaries(),
        chunk_bytes,
        MAX_RECORD_BYTES,
    );
    let mut out = Decoded::default();
    let take = |piece: Option<Piece>, out: &mut Decoded| match piece {
        Some(Piece::Chunk(chunk)) => {
            let d = decoder.decode(file, &chunk);
            out.batches.extend(d.batches);
            out.rejects.extend(d.rejects);
        }
        Some(Piece::Overlong { line, head }) => out.rejects.push(overlong(file, line, &head)),
        None => {}
    };
    // Fed in pieces as a stream would be, of sizes the splitter gathers (small) and keeps
    // whole (large, as local files are read).
    let mut sizes = [8 << 10, 1, (64 << 10) + 3, 13].into_iter().cycle();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (piece, after) = rest.split_at(sizes.next().unwrap_or(1).min(rest.len()));
        let p = splitter.push(bytes::Bytes::copy_from_slice(piece));
        take(p, &mut out);
        rest = after;
    }
    let p = splitter.finish();
    take(p, &mut out);
    out
}

/// The first row of one file that does not fit `decoder`'s schema, found by reading the file
/// as a quarantined source reads it (so with the same lines and reasons); `Err` when the file
/// cannot be read to its end (a compressed stream cut short, say). For naming the row at
/// fault when a plain read fails.
pub async fn first_reject(
    store: &dyn ObjectStore,
    file: &object_store::path::Path,
    shown: &str,
    decoder: &ChunkDecoder,
    compression: FileCompressionType,
) -> std::result::Result<Option<Reject>, String> {
    let describe = |e: &DataFusionError| crate::describe::describe_datafusion(e);
    let bytes = object_bytes(store, file).await.map_err(|e| describe(&e))?;
    // (Every stream of a multi-stream file, as the scan reads it.)
    let mut bytes = decompress(compression, bytes);
    let mut splitter = Splitter::new(
        decoder.dialect().boundaries(),
        CHUNK_BYTES,
        MAX_RECORD_BYTES,
    );
    loop {
        let (piece, end) = match bytes.next().await {
            Some(Ok(b)) => (splitter.push(b), false),
            Some(Err(e)) => return Err(describe(&e)),
            None => (splitter.finish(), true),
        };
        match piece {
            Some(Piece::Chunk(chunk)) => {
                let decoded = decoder.decode(shown, &chunk);
                if let Some(r) = decoded.rejects.into_iter().min_by_key(|r| r.line) {
                    return Ok(Some(r));
                }
            }
            Some(Piece::Overlong { line, head }) => return Ok(Some(overlong(shown, line, &head))),
            None => {}
        }
        if end {
            return Ok(None);
        }
    }
}

/// The properties the `csv_quarantine` fuzz target checks on any input, also run on the
/// inputs it found (`fuzz/regressions/`) as tests: reading never panics; the good rows and
/// the rejects are the same wherever the file is cut into chunks; each reject's line is in
/// the file.
#[doc(hidden)]
pub fn check_csv_read(data: &[u8]) {
    use datafusion::arrow::datatypes::Field;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("amount", DataType::Decimal128(10, 2), true),
        Field::new("day", DataType::Date32, true),
    ]));
    let decoder = ChunkDecoder::new(
        Arc::clone(&schema),
        Dialect::csv(crate::config::CsvOptions::default()),
        7,
    );
    let lines = 1 + memchr::memchr_iter(b'\n', data).count() as u64;
    let read = |chunk| {
        let d = read_bytes(data, "f.csv", &decoder, chunk);
        let rows = datafusion::arrow::compute::concat_batches(&schema, &d.batches)
            .map(|b| b.num_rows())
            .unwrap_or(usize::MAX);
        let mut rejects: Vec<(u64, String)> =
            d.rejects.into_iter().map(|r| (r.line, r.reason)).collect();
        rejects.sort();
        (d.batches, rows, rejects)
    };
    let whole = read(usize::MAX);
    for r in &whole.2 {
        assert!(
            r.0 >= 1 && r.0 <= lines,
            "reject at line {} of {lines}",
            r.0
        );
    }
    for chunk in [1, 16] {
        let cut = read(chunk);
        assert_eq!(cut.1, whole.1, "rows, chunks of {chunk}");
        assert_eq!(cut.2, whole.2, "rejects, chunks of {chunk}");
        let a = datafusion::arrow::compute::concat_batches(&schema, &cut.0).ok();
        let b = datafusion::arrow::compute::concat_batches(&schema, &whole.0).ok();
        assert_eq!(a, b, "values, chunks of {chunk}");
    }
}
