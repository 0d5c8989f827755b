//! Quarantine of bad rows (`on_bad_rows = "quarantine"`): a CSV source read by sluice's own
//! scan, which sends each row that does not fit the source's schema to a rejects list (file,
//! line, raw text, reason) and goes on with the good rows.
//!
//! DataFusion's CSV reader fails the whole query on the first bad row, so such a source is a
//! [`QuarantineTable`]: records are split by `csv_core` (quotes, escapes, CRLF) over the
//! object's byte stream, checked for their field count and UTF-8, gathered as text columns,
//! and cast to the schema's types a batch at a time; a row whose non-NULL text became NULL in
//! the cast is rejected with the column and the value. The run writes the rejects as Parquet
//! (`src/run.rs`) and counts them. See `docs/design/quarantine.md`.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, StringBuilder};
use datafusion::arrow::compute::{CastOptions, cast_with_options, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableProvider;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};

use crate::config::CsvOptions;

/// The longest raw text kept for one rejected row.
const MAX_RAW: usize = 64 << 10;

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

/// The rejects of one source, shared by every scan of it in a run (a model may read it in
/// many units; each row is kept once).
#[derive(Debug, Default)]
pub struct RejectSink {
    inner: Mutex<Gathered>,
    /// Good rows read since the last `take`.
    good: std::sync::atomic::AtomicU64,
}

/// The rejects, and the (file, line) of each, to keep each row once.
type Gathered = (Vec<Reject>, HashSet<(String, u64)>);

impl RejectSink {
    fn push(&self, r: Reject) {
        if let Ok(mut g) = self.inner.lock() {
            let (list, seen) = &mut *g;
            if seen.insert((r.file.clone(), r.line)) {
                list.push(r);
            }
        }
    }

    /// The rejects gathered so far, taken (sorted by file and line), with the number of good
    /// rows read meanwhile.
    pub fn take(&self) -> (Vec<Reject>, u64) {
        let good = self.good.swap(0, std::sync::atomic::Ordering::Relaxed);
        (self.take_rejects(), good)
    }

    fn take_rejects(&self) -> Vec<Reject> {
        // Taken with its memory of seen rows: the next model reading the source counts its
        // own rejects.
        let mut out = self
            .inner
            .lock()
            .map(|mut g| {
                g.1.clear();
                std::mem::take(&mut g.0)
            })
            .unwrap_or_default();
        out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        out
    }
}

/// A CSV source whose bad rows are quarantined.
pub struct QuarantineTable {
    schema: SchemaRef,
    files: Vec<ObjectMeta>,
    store: Arc<dyn ObjectStore>,
    /// How a file's key is shown in rejects (the source location's prefix form).
    display: Arc<dyn Fn(&ObjectMeta) -> String + Send + Sync>,
    csv: CsvOptions,
    compression: FileCompressionType,
    /// Where the rejects go.
    pub sink: Arc<RejectSink>,
}

impl fmt::Debug for QuarantineTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuarantineTable({} files)", self.files.len())
    }
}

impl QuarantineTable {
    /// A table over `files` of `store`, read with `csv` options into `schema`.
    pub fn new(
        schema: SchemaRef,
        files: Vec<ObjectMeta>,
        store: Arc<dyn ObjectStore>,
        display: Arc<dyn Fn(&ObjectMeta) -> String + Send + Sync>,
        csv: CsvOptions,
        compression: FileCompressionType,
    ) -> QuarantineTable {
        QuarantineTable {
            schema,
            files,
            store,
            display,
            csv,
            compression,
            sink: Arc::default(),
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
        let parts = state
            .config()
            .target_partitions()
            .clamp(1, self.files.len().max(1));
        let mut groups: Vec<Vec<ObjectMeta>> = vec![Vec::new(); parts];
        for (i, f) in self.files.iter().enumerate() {
            groups[i % parts].push(f.clone());
        }
        let out_schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        Ok(Arc::new(QuarantineScan {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&out_schema)),
                Partitioning::UnknownPartitioning(parts),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            groups,
            projection: projection.cloned(),
            schema: Arc::clone(&self.schema),
            out_schema,
            store: Arc::clone(&self.store),
            display: Arc::clone(&self.display),
            csv: self.csv.clone(),
            compression: self.compression,
            sink: Arc::clone(&self.sink),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// The scan of a [`QuarantineTable`]: one partition per group of files.
struct QuarantineScan {
    props: Arc<PlanProperties>,
    groups: Vec<Vec<ObjectMeta>>,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    out_schema: SchemaRef,
    store: Arc<dyn ObjectStore>,
    display: Arc<dyn Fn(&ObjectMeta) -> String + Send + Sync>,
    csv: CsvOptions,
    compression: FileCompressionType,
    sink: Arc<RejectSink>,
    metrics: ExecutionPlanMetricsSet,
}

impl fmt::Debug for QuarantineScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QuarantineScan")
    }
}

impl DisplayAs for QuarantineScan {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let files: usize = self.groups.iter().map(Vec::len).sum();
        write!(f, "QuarantineScan: {files} csv files, bad rows quarantined")
    }
}

impl ExecutionPlan for QuarantineScan {
    fn name(&self) -> &str {
        "QuarantineScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

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
        let reader = FileReader {
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            store: Arc::clone(&self.store),
            display: Arc::clone(&self.display),
            csv: self.csv.clone(),
            compression: self.compression,
            sink: Arc::clone(&self.sink),
            batch_size: context.session_config().batch_size().max(1),
            baseline: BaselineMetrics::new(&self.metrics, partition),
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

/// Reads files of one scan partition.
struct FileReader {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    store: Arc<dyn ObjectStore>,
    display: Arc<dyn Fn(&ObjectMeta) -> String + Send + Sync>,
    csv: CsvOptions,
    compression: FileCompressionType,
    sink: Arc<RejectSink>,
    batch_size: usize,
    /// Good rows sent (the scan's output rows, which the run counts as rows read).
    baseline: BaselineMetrics,
}

/// Rows gathered as text, waiting to be cast.
struct Pending {
    columns: Vec<StringBuilder>,
    lines: Vec<u64>,
    /// Every row's raw bytes, one after the other (`raw_ends[r]` ends row `r`): kept in case
    /// a row is rejected, without an allocation per row.
    raw: Vec<u8>,
    raw_ends: Vec<usize>,
}

impl Pending {
    /// Row `r` as written.
    fn raw_text(&self, r: usize) -> String {
        let start = if r == 0 { 0 } else { self.raw_ends[r - 1] };
        String::from_utf8_lossy(&self.raw[start..self.raw_ends[r]])
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }
}

impl Pending {
    fn new(n: usize) -> Pending {
        Pending {
            columns: (0..n).map(|_| StringBuilder::new()).collect(),
            lines: Vec::new(),
            raw: Vec::new(),
            raw_ends: Vec::new(),
        }
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
        let shown = (self.display)(file);
        let err = |e: object_store::Error| DataFusionError::External(Box::new(e));
        let bytes = self
            .store
            .get(&file.location)
            .await
            .map_err(err)?
            .into_stream()
            .map(|r| r.map_err(|e| DataFusionError::External(Box::new(e))))
            .boxed();
        let mut bytes = self.compression.convert_stream(bytes)?;
        let ncols = self.schema.fields().len();
        let mut reader = csv_core::ReaderBuilder::new()
            .delimiter(self.csv.delimiter)
            .quote(self.csv.quote)
            .escape(self.csv.escape)
            .build();
        let mut out = vec![0u8; 64 << 10];
        let mut ends = vec![0usize; ncols.max(1) + 8];
        let (mut outlen, mut endlen) = (0usize, 0usize);
        let mut raw: Vec<u8> = Vec::new();
        let mut newlines: u64 = 0;
        let mut start_line: u64 = 1;
        let mut header = self.csv.has_header;
        let mut pending = Pending::new(ncols);
        let mut in_flight = None;
        let mut eof = false;
        let mut chunk = bytes::Bytes::new();
        loop {
            if chunk.is_empty() && !eof {
                match bytes.next().await {
                    Some(c) => chunk = c?,
                    None => eof = true,
                }
            }
            let input: &[u8] = &chunk;
            if raw.is_empty() {
                start_line = newlines + 1;
            }
            let (res, nin, nout, nend) =
                reader.read_record(input, &mut out[outlen..], &mut ends[endlen..]);
            let used = &input[..nin];
            if raw.len() < MAX_RAW {
                raw.extend_from_slice(&used[..used.len().min(MAX_RAW - raw.len())]);
            }
            newlines += used.iter().filter(|b| **b == b'\n').count() as u64;
            chunk = chunk.slice(nin..);
            outlen += nout;
            endlen += nend;
            match res {
                csv_core::ReadRecordResult::InputEmpty => {
                    if eof {
                        // csv_core wants an empty input to finish the last record.
                        continue;
                    }
                }
                csv_core::ReadRecordResult::OutputFull => {
                    let n = out.len();
                    out.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    let n = ends.len();
                    ends.resize(n * 2, 0);
                }
                csv_core::ReadRecordResult::Record => {
                    if header {
                        header = false;
                    } else {
                        self.record(
                            &shown,
                            start_line,
                            &raw,
                            &out[..outlen],
                            &ends[..endlen],
                            &mut pending,
                        );
                        if pending.lines.len() >= self.batch_size
                            && !self.flush(&shown, &mut pending, &mut in_flight, tx).await?
                        {
                            return Ok(false);
                        }
                    }
                    outlen = 0;
                    endlen = 0;
                    raw.clear();
                }
                csv_core::ReadRecordResult::End => break,
            }
        }
        if !self.flush(&shown, &mut pending, &mut in_flight, tx).await? {
            return Ok(false);
        }
        self.send_in_flight(&mut in_flight, tx).await
    }

    /// Checks one record's shape and text; a good one joins `pending`.
    fn record(
        &self,
        file: &str,
        line: u64,
        raw: &[u8],
        out: &[u8],
        ends: &[usize],
        pending: &mut Pending,
    ) {
        let text = |raw: &[u8]| {
            String::from_utf8_lossy(raw)
                .trim_end_matches(['\r', '\n'])
                .to_string()
        };
        // A blank line is no row.
        if ends.len() <= 1 && out.is_empty() {
            return;
        }
        let ncols = self.schema.fields().len();
        if ends.len() != ncols {
            self.sink.push(Reject {
                file: file.to_string(),
                line,
                raw: text(raw),
                reason: format!("expected {ncols} fields, found {}", ends.len()),
            });
            return;
        }
        let mut fields = Vec::with_capacity(ncols);
        let mut start = 0;
        for (i, end) in ends.iter().enumerate() {
            match std::str::from_utf8(&out[start..*end]) {
                Ok(s) => fields.push(s),
                Err(_) => {
                    self.sink.push(Reject {
                        file: file.to_string(),
                        line,
                        raw: text(raw),
                        reason: format!("invalid UTF-8 in column {}", self.schema.field(i).name()),
                    });
                    return;
                }
            }
            start = *end;
        }
        for (i, value) in fields.into_iter().enumerate() {
            let is_text = matches!(
                self.schema.field(i).data_type(),
                DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
            );
            let null =
                (value.is_empty() && !is_text) || self.csv.null_value.as_deref() == Some(value);
            if null {
                pending.columns[i].append_null();
            } else {
                pending.columns[i].append_value(value);
            }
        }
        pending.lines.push(line);
        pending.raw.extend_from_slice(raw);
        pending.raw_ends.push(pending.raw.len());
    }

    /// Hands the pending rows to the cast stage (on a blocking thread, so that it runs beside
    /// the tokenizing of the next rows), after sending what the previous hand-off produced.
    /// `false` when the receiver is gone.
    async fn flush(
        &self,
        file: &str,
        pending: &mut Pending,
        in_flight: &mut Option<tokio::task::JoinHandle<Result<Option<RecordBatch>>>>,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<bool> {
        if !self.send_in_flight(in_flight, tx).await? {
            return Ok(false);
        }
        if pending.lines.is_empty() {
            return Ok(true);
        }
        let ncols = self.schema.fields().len();
        let rows = std::mem::replace(pending, Pending::new(ncols));
        let stage = CastStage {
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            sink: Arc::clone(&self.sink),
            file: file.to_string(),
        };
        *in_flight = Some(tokio::task::spawn_blocking(move || stage.run(rows)));
        Ok(true)
    }

    /// Waits for the rows handed off last and sends them. `false` when the receiver is gone.
    async fn send_in_flight(
        &self,
        in_flight: &mut Option<tokio::task::JoinHandle<Result<Option<RecordBatch>>>>,
        tx: &tokio::sync::mpsc::Sender<Result<RecordBatch>>,
    ) -> Result<bool> {
        let Some(handle) = in_flight.take() else {
            return Ok(true);
        };
        let batch = handle
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))??;
        match batch {
            Some(batch) => {
                self.baseline.record_output(batch.num_rows());
                self.sink.good.fetch_add(
                    batch.num_rows() as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                Ok(tx.send(Ok(batch)).await.is_ok())
            }
            None => Ok(true),
        }
    }
}

/// Casts gathered rows to the schema and sets aside those whose values do not fit.
struct CastStage {
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    sink: Arc<RejectSink>,
    file: String,
}

impl CastStage {
    /// The good rows of `pending`, cast and projected (`None` if none is left).
    fn run(self, mut pending: Pending) -> Result<Option<RecordBatch>> {
        let rows = pending.lines.len();
        let texts: Vec<ArrayRef> = pending
            .columns
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        let options = CastOptions {
            safe: true,
            ..Default::default()
        };
        let mut bad: Vec<Option<String>> = vec![None; rows];
        let mut columns = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            let field = self.schema.field(i);
            let cast = cast_with_options(text, field.data_type(), &options)?;
            // Only rows where the cast made a NULL out of a value need a look.
            if cast.null_count() > text.null_count() {
                for (r, reason) in bad.iter_mut().enumerate() {
                    if reason.is_none() && text.is_valid(r) && cast.is_null(r) {
                        let value =
                            datafusion::arrow::util::display::array_value_to_string(text, r)
                                .unwrap_or_default();
                        *reason = Some(format!(
                            "column {}: {value:?} is not {}",
                            field.name(),
                            field.data_type()
                        ));
                    }
                }
            }
            columns.push(cast);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        let mut any_bad = false;
        for (r, reason) in bad.iter().enumerate() {
            if let Some(reason) = reason {
                any_bad = true;
                self.sink.push(Reject {
                    file: self.file.clone(),
                    line: pending.lines[r],
                    raw: pending.raw_text(r),
                    reason: reason.clone(),
                });
            }
        }
        let batch = if any_bad {
            let keep: BooleanArray = bad.iter().map(|b| Some(b.is_none())).collect();
            filter_record_batch(&batch, &keep)?
        } else {
            batch
        };
        let batch = match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        Ok((batch.num_rows() > 0).then_some(batch))
    }
}
