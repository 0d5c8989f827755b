//! Sinks: write a stream of record batches to an output folder, partitioned, in files of a
//! sensible size, and publish it atomically (see [`commit`] for the protocol).
//!
//! Rows are split by partition (Hive `key=value/` folders) and handed to writer *lanes*:
//! tasks that each encode one file at a time and roll to a new file at
//! `target_rows_per_file` rows or `target_file_size` bytes, whichever comes first. A partition gets one lane, and more while it is large and the
//! machine has idle threads, so files stay big (no file per thread per partition) and
//! encoding still runs in parallel.

pub(crate) mod compact;
pub(crate) mod exec;
pub(crate) mod partition;
pub(crate) mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use object_store::ObjectStore;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{Format, ParquetCompression, WriteMode};
use crate::store::Location;
use crate::table::{CommitError, CommitFailure, Ended, ManifestFile, Output, StagedFile};
use partition::Partitioner;
use writer::{FileWriter, WriteError};

/// Rows a partition's lane takes before the partition may open another lane.
const LANE_ROWS: u64 = 256 * 1024;

/// Errors writing or publishing an output.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// `error_if_exists` and output is already there.
    #[error("output {location} already exists (mode = \"error_if_exists\")")]
    Exists {
        /// The output folder.
        location: String,
    },
    /// The output cannot be written as asked (a root location, a bad partition column, a
    /// format or partitioning that differs from the existing output's).
    #[error("output {location}: {message}")]
    Invalid {
        /// The output folder.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A `partition_by` column is not in the result.
    #[error(
        "output {location}: partition column '{column}' is not in the result (columns: {available})"
    )]
    PartitionColumn {
        /// The output folder.
        location: String,
        /// The missing column.
        column: String,
        /// The result's columns.
        available: String,
    },
    /// The query feeding the sink failed.
    #[error("{}", crate::describe::describe_datafusion(.0))]
    Input(DataFusionError),
    /// Encoding or uploading a file failed.
    #[error("cannot write {key}: {message}")]
    Write {
        /// The object key.
        key: String,
        /// The cause.
        message: String,
        /// Whether another attempt could succeed (a dropped connection, throttling).
        transient: bool,
    },
    /// A step of the commit protocol failed, or the folder cannot be written safely; the
    /// message says what it left.
    #[error("cannot publish {key}: {message}")]
    Commit {
        /// The object key.
        key: String,
        /// The cause, and what it left.
        message: String,
        /// The kind of failure.
        kind: CommitFailure,
    },
}

impl SinkError {
    /// Whether another attempt could succeed: decided from the failed query's error, or
    /// from the storage error of a failed write, by their types.
    pub fn is_transient(&self) -> bool {
        match self {
            SinkError::Input(e) => crate::describe::is_transient(e),
            SinkError::Write { transient, .. } => *transient,
            _ => false,
        }
    }

    /// Whether the error is a usage error (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            SinkError::PartitionColumn { .. }
                | SinkError::Invalid { .. }
                | SinkError::Commit {
                    kind: CommitFailure::NotEmpty
                        | CommitFailure::ManifestLost
                        | CommitFailure::Unsupported,
                    ..
                }
        )
    }
}

impl From<CommitError> for SinkError {
    fn from(e: CommitError) -> Self {
        SinkError::Commit {
            key: e.key,
            message: e.message,
            kind: e.kind,
        }
    }
}

/// Where and how to write an output.
#[derive(Debug, Clone)]
pub(crate) struct SinkSpec {
    /// The output folder.
    pub location: Location,
    /// In append mode, the identity of what this write appends, recorded in the manifest so
    /// that the same append is never applied twice.
    pub append_id: Option<String>,
    /// File format.
    pub format: Format,
    /// Hive partition columns.
    pub partition_by: Vec<String>,
    /// What happens to existing output.
    pub mode: WriteMode,
    /// Rows per file before a new file is started.
    pub target_rows_per_file: usize,
    /// Bytes per file before a new file is started (see [`writer::FileWriter::write_within`]).
    pub target_file_size: u64,
    /// How Parquet files are compressed.
    pub compression: ParquetCompression,
    /// Most writer lanes to run at once (usually the thread count).
    pub parallelism: usize,
    /// Memory the writers may buffer in total before they flush row groups early.
    pub buffer_budget: usize,
    /// The memory pool the writers' buffers are reserved in (the query's): when it is full,
    /// a writer flushes its row group in progress.
    pub memory: Arc<dyn MemoryPool>,
    /// Keep the input's row order within each partition (the query sorts): one writer lane
    /// per partition, so files hold consecutive rows.
    pub preserve_order: bool,
    /// Without a manifest, take the data files in the folder as the output's current version
    /// instead of refusing to write there.
    pub adopt: bool,
    /// Where to stage files (`[settings] staging`), instead of beside the output.
    pub staging: Option<Location>,
}

/// A published output: what the run report shows.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    /// The files this write added, as full paths or URLs.
    pub new_files: Vec<String>,
    /// Rows this write added.
    pub rows: u64,
}

/// Which unit, and which attempt of it, is staging: file names carry both. The unit is named
/// by its key ([`crate::units::Unit::key`]), never its position, so a unit of a resumed run
/// whose plan shifted cannot write where a kept unit's files are; the attempt by a random
/// token, so no two attempts — of this process or any other — write the same name, and a
/// cancelled attempt whose writers are still closing never overwrites another's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnitSlot {
    /// The unit's key: its staging folder, and the first part of its file names.
    pub unit: String,
    /// This attempt's token.
    pub attempt: String,
}

impl UnitSlot {
    /// A new attempt of the unit with key `unit`.
    pub(crate) fn attempt(unit: &str) -> UnitSlot {
        UnitSlot {
            unit: unit.to_string(),
            attempt: format!("{:08x}", rand::random::<u32>()),
        }
    }
}

/// Marks a staging as aborted if its future is dropped before it finishes (a unit timeout
/// cancels it): the writer lanes then abandon their open files instead of completing them.
struct AbortOnDrop {
    shared: Arc<LaneShared>,
    armed: bool,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.shared.aborted.store(true, Ordering::SeqCst);
        }
    }
}

/// What one unit staged.
#[derive(Debug, Clone)]
pub(crate) struct UnitOutput {
    /// Its files.
    pub files: Vec<StagedFile>,
    /// The result's schema.
    pub schema: SchemaRef,
}

impl UnitOutput {
    /// Rows staged.
    pub(crate) fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.file.rows).sum()
    }
}

/// Checks the output folder before any work: heals what crashed writers left, refuses a
/// folder it cannot write safely, checks `error_if_exists`. `ended`: writers known to have
/// ended.
pub(crate) async fn prepare(
    store: Arc<dyn ObjectStore>,
    spec: &SinkSpec,
    run_id: &str,
    ended: &Ended,
) -> Result<(Output, crate::table::Existing), SinkError> {
    let invalid = |message: String| SinkError::Invalid {
        location: spec.location.to_string(),
        message,
    };
    if spec.location.is_root() {
        return Err(invalid(
            "refusing to write an output at the root of a store: name a folder".into(),
        ));
    }
    // The commit replaces `_MANIFEST` only if it is unchanged (a conditional write); an HTTP
    // (WebDAV) server cannot be asked that, so two writers could overwrite each other.
    if matches!(spec.location.url().scheme(), "http" | "https") {
        return Err(invalid(
            "an http(s) location cannot be a sink: its server cannot write an object only if it \
             is unchanged (a conditional write), which the commit needs so that two writers never \
             overwrite each other; write to local disk, S3, GCS or Azure"
                .into(),
        ));
    }
    for col in &spec.partition_by {
        if col.is_empty() {
            return Err(invalid("a partition column name is empty".into()));
        }
        // Hive escapes these in folder names, and readers (DataFusion among them) match
        // partition column names as they stand in the folder name, unescaped.
        if let Some(c) = crate::table::hive::escaped_char(col) {
            return Err(invalid(format!(
                "partition column {col:?} cannot be a folder name: Hive escapes {c:?} in folder names \
                 (no control characters nor any of \"#%'*/:=?\\{{[]^)"
            )));
        }
    }
    let mut output = Output::new(store, spec.location.clone());
    if let Some(root) = &spec.staging {
        output = output.with_staging_root(root)?;
    }
    let existing = output
        .inspect(run_id, ended, spec.adopt, spec.format.extension())
        .await?;
    // A resumed run's own output (its manifest, files moved by its interrupted publish) is
    // not "existing" output.
    let foreign = existing
        .manifest
        .as_ref()
        .is_some_and(|m| m.run_id != run_id)
        || existing.data_files.iter().any(|(p, _)| !p.contains(run_id));
    if spec.mode == WriteMode::ErrorIfExists && foreign {
        return Err(SinkError::Exists {
            location: spec.location.to_string(),
        });
    }
    // Adding to an output only makes sense in its own format and partitioning: otherwise old
    // files would be hidden from readers or never replaced.
    if let (WriteMode::Append | WriteMode::OverwritePartitions, Some(m)) =
        (spec.mode, &existing.manifest)
    {
        if m.format != spec.format.name() {
            return Err(invalid(format!(
                "the existing output is {}, this write is {}: use mode = \"overwrite\" to change the format",
                m.format,
                spec.format.name()
            )));
        }
        if m.partition_by != spec.partition_by {
            return Err(invalid(format!(
                "the existing output is partitioned by [{}], this write by [{}]: use mode = \"overwrite\" to change it",
                m.partition_by.join(", "),
                spec.partition_by.join(", ")
            )));
        }
    }
    Ok((output, existing))
}

/// Writes `input`, the result of work unit `unit`, to the unit's staging folder in the run's
/// staging. On any failure the unit's staged files are removed; nothing else is touched.
/// `on_rows` is called with the rows of each batch written, for progress.
pub(crate) async fn stage_unit(
    output: &Output,
    spec: &SinkSpec,
    input: SendableRecordBatchStream,
    run_id: &str,
    slot: UnitSlot,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<UnitOutput, SinkError> {
    let unit = slot.unit.clone();
    let staging = output
        .staging()
        .cloned()
        .ok_or_else(|| SinkError::Invalid {
            location: spec.location.to_string(),
            message: "refusing to write an output at the root of a store: name a folder".into(),
        })?;
    let staged = stage_into(output.store(), staging, spec, input, run_id, slot, on_rows).await;
    if staged.is_err()
        && let Err(e) = output.discard_staging(run_id, Some(&unit)).await
    {
        tracing::warn!("could not remove staging {}: {}", e.key, e.message);
    }
    staged
}

/// Writes `input` into `staging` as `slot`'s files, by writer lanes, and returns them. On an
/// error it abandons its open files but leaves the files it finished: the caller removes
/// the unit's staging (a task on a cluster cannot: other tasks stage there too).
pub(crate) async fn stage_into(
    store: Arc<dyn ObjectStore>,
    staging: crate::table::staging::StagingArea,
    spec: &SinkSpec,
    mut input: SendableRecordBatchStream,
    run_id: &str,
    slot: UnitSlot,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<UnitOutput, SinkError> {
    let unit = slot.unit.clone();
    let schema = input.schema();
    let (partitioner, file_schema) = partitioner(spec, &schema)?;
    let max_lanes_per_partition = if spec.preserve_order {
        1
    } else {
        spec.parallelism.max(1)
    };
    let shared = Arc::new(LaneShared {
        store,
        output_location: spec.location.clone(),
        staging,
        unit: unit.clone(),
        attempt: slot.attempt.clone(),
        run_id: run_id.to_string(),
        format: spec.format,
        compression: spec.compression,
        schema: file_schema,
        target_rows: spec.target_rows_per_file as u64,
        target_bytes: spec.target_file_size,
        budget: spec.buffer_budget.max(1 << 20),
        memory: Arc::clone(&spec.memory),
        seq: AtomicUsize::new(0),
        open_lanes: AtomicUsize::new(0),
        aborted: AtomicBool::new(false),
    });

    let mut guard = AbortOnDrop {
        shared: Arc::clone(&shared),
        armed: true,
    };
    let mut parts: HashMap<String, PartitionLanes> = HashMap::new();
    let mut total_lanes = 0usize;
    let result: Result<(), SinkError> = async {
        while let Some(batch) = input.next().await {
            let batch = batch.map_err(SinkError::Input)?;
            if batch.num_rows() == 0 {
                continue;
            }
            let rows = batch.num_rows() as u64;
            let slices = partitioner
                .split(&batch)
                .map_err(|e| SinkError::Input(e.into()))?;
            for slice in slices {
                let lanes = parts
                    .entry(slice.path.clone())
                    .or_insert_with(|| PartitionLanes {
                        path: slice.path.clone(),
                        lanes: Vec::new(),
                        rows: 0,
                        next: 0,
                    });
                let want_more = lanes.lanes.is_empty()
                    || (lanes.rows >= LANE_ROWS * lanes.lanes.len() as u64
                        && total_lanes < spec.parallelism
                        && lanes.lanes.len() < max_lanes_per_partition);
                if want_more {
                    lanes
                        .lanes
                        .push(Lane::spawn(Arc::clone(&shared), lanes.path.clone()));
                    total_lanes += 1;
                }
                lanes.rows += slice.batch.num_rows() as u64;
                let i = lanes.next % lanes.lanes.len();
                lanes.next += 1;
                if lanes.lanes[i].tx.send(slice.batch).await.is_err() {
                    // The lane stopped early: it failed; its error is collected below.
                    return Err(SinkError::Write {
                        key: spec.location.to_string(),
                        message: "a writer stopped".into(),
                        transient: false,
                    });
                }
            }
            on_rows(rows);
        }
        Ok(())
    }
    .await;

    if result.is_err() {
        shared.aborted.store(true, Ordering::SeqCst);
    }
    // Close every lane at once (they finish their last files in parallel), then collect
    // their files or their errors.
    let handles: Vec<_> = parts
        .into_values()
        .flat_map(|p| p.lanes)
        .map(|lane| {
            drop(lane.tx);
            lane.handle
        })
        .collect();
    let mut files = Vec::new();
    let mut lane_error: Option<SinkError> = None;
    for joined in futures::future::join_all(handles).await {
        match joined {
            Ok(Ok(mut f)) => files.append(&mut f),
            Ok(Err(e)) => {
                lane_error.get_or_insert(e);
            }
            Err(join) => {
                lane_error.get_or_insert(SinkError::Write {
                    key: spec.location.to_string(),
                    message: format!("writer task failed: {join}"),
                    transient: false,
                });
            }
        }
    }
    let failure = match (result, lane_error) {
        (Err(SinkError::Write { .. }), Some(lane)) => Some(lane),
        (Err(e), _) => Some(e),
        (Ok(()), Some(lane)) => Some(lane),
        (Ok(()), None) => None,
    };
    if let Some(err) = failure {
        shared.aborted.store(true, Ordering::SeqCst);
        return Err(err);
    }
    guard.armed = false;
    files.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    Ok(UnitOutput { files, schema })
}

/// How rows of `schema` are split into `spec`'s partitions, and the columns of its files
/// (the others).
fn partitioner(spec: &SinkSpec, schema: &SchemaRef) -> Result<(Partitioner, SchemaRef), SinkError> {
    let partitioner = Partitioner::new(schema, &spec.partition_by).map_err(|column| {
        SinkError::PartitionColumn {
            location: spec.location.to_string(),
            column,
            available: schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
    })?;
    let file_schema = partitioner.file_schema(schema);
    if file_schema.fields().is_empty() {
        return Err(SinkError::Invalid {
            location: spec.location.to_string(),
            message: "every column is a partition column: the files would have no columns".into(),
        });
    }
    Ok((partitioner, file_schema))
}

/// Stages the file a version with no rows lists: no rows, the columns of `schema` (a CSV
/// file's header line; JSON lines have no header, so its file is empty). Without it the
/// folder would hold no data file, and its readers would find neither rows nor columns:
/// DuckDB's `read_parquet('out/*.parquet')` fails ("No files found"), pyarrow's dataset has
/// no columns. In a partitioned output it is in the NULL partition's folder
/// (`p=__HIVE_DEFAULT_PARTITION__/`), as every file there is in a partition's folder: readers
/// then find the partition columns too (with no row in that partition). The manifest marks it
/// [`ManifestFile::schema_only`].
async fn stage_schema_file(
    output: &Output,
    spec: &SinkSpec,
    schema: &SchemaRef,
    run_id: &str,
) -> Result<StagedFile, SinkError> {
    let (_, file_schema) = partitioner(spec, schema)?;
    let staging = output.staging().ok_or_else(|| SinkError::Invalid {
        location: spec.location.to_string(),
        message: "refusing to write an output at the root of a store: name a folder".into(),
    })?;
    let name = format!("part-00000-{run_id}.{}", spec.format.extension());
    let rel = if spec.partition_by.is_empty() {
        name
    } else {
        let nulls = vec![None; spec.partition_by.len()];
        let folder = crate::table::hive::partition_path(&spec.partition_by, &nulls);
        format!("{folder}/{name}")
    };
    let staged = staged_path(SCHEMA_UNIT, &rel);
    let key = staging.key(run_id, &staged);
    let written = async {
        let w = FileWriter::create(
            output.store(),
            key.clone(),
            spec.format,
            spec.compression,
            file_schema,
            None,
        )?;
        w.finish().await
    };
    let bytes = written.await.map_err(|e| SinkError::Write {
        key: spec.location.display_key(&key),
        message: e.message,
        transient: e.transient,
    })?;
    let mut file = staged_file(SCHEMA_UNIT, rel, 0, bytes);
    file.file.schema_only = true;
    Ok(file)
}

/// The staging folder of the file [`stage_schema_file`] writes (no unit's name: those are
/// hexadecimal keys or periods).
const SCHEMA_UNIT: &str = "_schema";

/// Publishes the files staged by a run's units as the new version of the output (the commit
/// point is the manifest write).
pub(crate) async fn publish(
    output: &Output,
    existing: &crate::table::Existing,
    spec: &SinkSpec,
    run_id: &str,
    schema: &SchemaRef,
    mut files: Vec<StagedFile>,
    periods: Option<&crate::table::PeriodWrite>,
) -> Result<Committed, SinkError> {
    // A write of no rows stages the file of its columns whatever the output holds now: the
    // version it commits over may be another writer's of no rows, without files of its own
    // (the commit lists the file only in a version with no other file).
    if files.is_empty() {
        files.push(stage_schema_file(output, spec, schema, run_id).await?);
    }
    files.sort_by(|a, b| a.file.path.cmp(&b.file.path));
    let staged: std::collections::HashSet<String> =
        files.iter().map(|f| f.file.path.clone()).collect();
    let manifest = output
        .publish(
            existing,
            crate::table::NewVersion {
                run_id,
                mode: spec.mode,
                format: spec.format.name(),
                partition_by: &spec.partition_by,
                columns: crate::table::manifest_columns(schema),
                files,
                append_id: spec.append_id.as_deref(),
                periods,
            },
        )
        .await?;
    // What the version lists of this write's files (not a file of the schema alone that it
    // dropped for another writer's rows).
    let listed: Vec<&ManifestFile> = manifest
        .files
        .iter()
        .filter(|f| staged.contains(&f.path))
        .collect();
    Ok(Committed {
        new_files: listed
            .iter()
            .map(|f| output.location().display_key(&output.key(&f.path)))
            .collect(),
        rows: listed.iter().map(|f| f.rows).sum(),
    })
}

/// Prepares, stages (as one unit) and publishes in one call: the whole write of one output.
pub(crate) async fn write(
    store: Arc<dyn ObjectStore>,
    spec: &SinkSpec,
    input: SendableRecordBatchStream,
    run_id: &str,
    on_rows: &(dyn Fn(u64) + Sync),
) -> Result<Committed, SinkError> {
    let (output, existing) = prepare(store, spec, run_id, &Ended::default()).await?;
    let slot = UnitSlot::attempt(crate::units::WHOLE_KEY);
    let staged = match stage_unit(&output, spec, input, run_id, slot, on_rows).await {
        Ok(staged) => staged,
        Err(e) => {
            output.release(run_id).await;
            return Err(e);
        }
    };
    publish(
        &output,
        &existing,
        spec,
        run_id,
        &staged.schema,
        staged.files,
        None,
    )
    .await
}

/// A row group in progress is flushed for want of room in the pool only past this size, so
/// that a full pool does not cut files into row groups of a batch each.
const ROW_GROUP_FLOOR: usize = 4 << 20;

struct LaneShared {
    store: Arc<dyn ObjectStore>,
    output_location: Location,
    staging: crate::table::staging::StagingArea,
    unit: String,
    attempt: String,
    run_id: String,
    format: Format,
    compression: ParquetCompression,
    schema: SchemaRef,
    target_rows: u64,
    target_bytes: u64,
    budget: usize,
    memory: Arc<dyn MemoryPool>,
    seq: AtomicUsize,
    open_lanes: AtomicUsize,
    aborted: AtomicBool,
}

struct PartitionLanes {
    path: String,
    lanes: Vec<Lane>,
    rows: u64,
    next: usize,
}

struct Lane {
    tx: mpsc::Sender<RecordBatch>,
    handle: JoinHandle<Result<Vec<StagedFile>, SinkError>>,
}

impl Lane {
    fn spawn(shared: Arc<LaneShared>, partition: String) -> Lane {
        let (tx, rx) = mpsc::channel(2);
        let handle = tokio::spawn(run_lane(shared, partition, rx));
        Lane { tx, handle }
    }
}

/// A lane: writes the batches it receives into files of one partition, rolling at the
/// target row count or byte size (cutting a batch where the byte size is reached), flushing row groups early when writers together buffer too much.
async fn run_lane(
    shared: Arc<LaneShared>,
    partition: String,
    mut rx: mpsc::Receiver<RecordBatch>,
) -> Result<Vec<StagedFile>, SinkError> {
    shared.open_lanes.fetch_add(1, Ordering::SeqCst);
    // What the lane's open file holds, in the query's pool as far as it has room: it cannot
    // spill, but it flushes its row group when the pool is full.
    let reservation = MemoryConsumer::new(format!("Writer[{partition}]")).register(&shared.memory);
    let mut files = Vec::new();
    let mut current: Option<(FileWriter, String, object_store::path::Path)> = None;
    let result: Result<(), SinkError> = async {
        'batches: while let Some(batch) = rx.recv().await {
            let mut rest = batch;
            while rest.num_rows() > 0 {
                if current.is_none() {
                    current = Some(open_file(&shared, &partition, &rest)?);
                }
                let Some((w, _, key)) = current.as_mut() else {
                    break 'batches;
                };
                let taken = w
                    .write_within(&rest, shared.target_bytes)
                    .await
                    .map_err(|e| write_err(&shared, key, e))?;
                rest = rest.slice(taken, rest.num_rows() - taken);
                let lanes = shared.open_lanes.load(Ordering::Relaxed).max(1);
                let counted = reservation.try_resize(w.held_bytes()).is_ok();
                if w.buffered_bytes() > shared.budget / lanes
                    || (!counted && w.buffered_bytes() > ROW_GROUP_FLOOR)
                {
                    w.flush().await.map_err(|e| write_err(&shared, key, e))?;
                    // What is left (the upload's buffer) is counted if the pool has room (a
                    // shrink always succeeds): a writer never takes what a merge, which
                    // cannot spill, needs.
                    let _ = reservation.try_resize(w.held_bytes());
                }
                if shared.aborted.load(Ordering::SeqCst) {
                    // Cancelled (a unit timeout): stop without completing any more files.
                    break 'batches;
                }
                // Roll at the row target, or when the file is full: it reached the byte
                // target, or the rows left do not fit.
                let full = w.rows() >= shared.target_rows
                    || w.is_full(shared.target_bytes)
                        .await
                        .map_err(|e| write_err(&shared, key, e))?;
                if full && let Some((w, rel, key)) = current.take() {
                    let rows = w.rows();
                    let bytes = w.finish().await.map_err(|e| write_err(&shared, &key, e))?;
                    reservation.free();
                    check_copyable(&shared, &key, bytes)?;
                    files.push(staged_file(&shared.unit, rel, rows, bytes));
                }
            }
        }
        Ok(())
    }
    .await;
    let result = match (result, current.take()) {
        (Ok(()), Some((w, rel, key))) if !shared.aborted.load(Ordering::SeqCst) => {
            let rows = w.rows();
            match w.finish().await {
                Ok(bytes) => check_copyable(&shared, &key, bytes).map(|()| {
                    files.push(staged_file(&shared.unit, rel, rows, bytes));
                }),
                Err(e) => Err(write_err(&shared, &key, e)),
            }
        }
        (r, Some((w, _, _))) => {
            w.abort().await;
            r
        }
        (r, None) => r,
    };
    shared.open_lanes.fetch_sub(1, Ordering::SeqCst);
    result.map(|()| files)
}

/// Starts the lane's next file in `partition`, whose first rows are `first`: its writer, its
/// path relative to the output folder, and its staging key.
fn open_file(
    shared: &LaneShared,
    partition: &str,
    first: &RecordBatch,
) -> Result<(FileWriter, String, object_store::path::Path), SinkError> {
    let n = shared.seq.fetch_add(1, Ordering::SeqCst);
    let name = format!(
        "part-{}-{}-{n:05}-{}.{}",
        shared.unit,
        shared.attempt,
        shared.run_id,
        shared.format.extension()
    );
    let rel = if partition.is_empty() {
        name
    } else {
        format!("{partition}/{name}")
    };
    let key = shared
        .staging
        .key(&shared.run_id, &staged_path(&shared.unit, &rel));
    let w = FileWriter::create(
        Arc::clone(&shared.store),
        key.clone(),
        shared.format,
        shared.compression,
        Arc::clone(&shared.schema),
        Some(first),
    )
    .map_err(|e| write_err(shared, &key, e))?;
    Ok((w, rel, key))
}

/// Fails the unit as soon as it finished a file its store cannot publish (larger than one
/// copy may be: see [`crate::store::Location::max_copy_bytes`]), rather than at the publish.
fn check_copyable(
    shared: &LaneShared,
    key: &object_store::path::Path,
    bytes: u64,
) -> Result<(), SinkError> {
    match shared.output_location.max_copy_bytes() {
        Some(max) if bytes > max => Err(SinkError::Write {
            key: shared.output_location.display_key(key),
            message: crate::config::too_large_to_copy(bytes, max),
            transient: false,
        }),
        _ => Ok(()),
    }
}

/// Where a unit's file `rel` is staged, relative to the run's staging folder.
fn staged_path(unit: &str, rel: &str) -> String {
    format!("{unit}/{rel}")
}

fn staged_file(unit: &str, rel: String, rows: u64, bytes: u64) -> StagedFile {
    StagedFile {
        staged: staged_path(unit, &rel),
        file: ManifestFile {
            path: rel,
            rows,
            bytes,
            period: None,
            merged: Vec::new(),
            schema_only: false,
        },
    }
}

fn write_err(shared: &LaneShared, key: &object_store::path::Path, e: WriteError) -> SinkError {
    SinkError::Write {
        key: shared.output_location.display_key(key),
        message: e.message,
        transient: e.transient,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::memory::InMemory;
    use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

    use super::*;
    use crate::table::NewVersion;

    /// Writers hold their buffers in the query's pool: with room, what they hold is counted
    /// (the writer's peak is at least [`ROW_GROUP_FLOOR`]) and the file keeps one row group;
    /// with the pool nearly full (another consumer holds all but 1 MiB) a writer takes no
    /// more than is free and flushes its row group once it passes the floor, not at every
    /// batch. Every row is written, and nothing stays reserved.
    #[tokio::test]
    async fn writers_hold_their_buffers_in_the_pool_and_flush_when_it_is_full() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::execution::memory_pool::{GreedyMemoryPool, TrackConsumersPool};
        use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
        use std::sync::atomic::{AtomicUsize, Ordering};

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]));
        let rows = 120_000i64;
        let batches: Vec<RecordBatch> = (0..rows)
            .step_by(8192)
            .map(|start| {
                let ids: Vec<i64> = (start..(start + 8192).min(rows)).collect();
                let text: Vec<String> = ids.iter().map(|i| format!("{i:0>80}")).collect();
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![
                        Arc::new(Int64Array::from(ids)),
                        Arc::new(StringArray::from(text)),
                    ],
                )
                .unwrap()
            })
            .collect();
        for (full, want_groups) in [(false, 1..=1), (true, 2..=6)] {
            let pool = Arc::new(TrackConsumersPool::new(
                GreedyMemoryPool::new(64 << 20),
                std::num::NonZeroUsize::new(8).unwrap(),
            ));
            let memory: Arc<dyn MemoryPool> = pool.clone();
            let other = MemoryConsumer::new("other").register(&memory);
            if full {
                other.grow((64 << 20) - (1 << 20));
            }
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let spec = SinkSpec {
                location: Location::parse("s3://lake/out/").unwrap(),
                append_id: None,
                format: Format::Parquet,
                partition_by: Vec::new(),
                mode: WriteMode::Overwrite,
                target_rows_per_file: 1 << 30,
                target_file_size: 1 << 40,
                compression: ParquetCompression::None,
                parallelism: 1,
                buffer_budget: 1 << 30,
                memory,
                preserve_order: true,
                adopt: false,
                staging: None,
            };
            let input = RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::iter(batches.clone().into_iter().map(Ok)),
            );
            // The writer's share of the pool, seen as batches are handed to it.
            let peak = AtomicUsize::new(0);
            let committed = write(
                Arc::clone(&store),
                &spec,
                Box::pin(input),
                "20260101T000000Z-abcdef",
                &|_| {
                    peak.fetch_max(pool.reserved() - other.size(), Ordering::SeqCst);
                },
            )
            .await
            .unwrap();
            assert_eq!(committed.rows, rows as u64);
            assert_eq!(committed.new_files.len(), 1);
            let key = committed.new_files[0].trim_start_matches("s3://lake/");
            let bytes = store.get(&key.into()).await.unwrap().bytes().await.unwrap();
            let meta = SerializedFileReader::new(bytes).unwrap().metadata().clone();
            let groups: Vec<i64> = meta.row_groups().iter().map(|g| g.num_rows()).collect();
            assert_eq!(groups.iter().sum::<i64>(), rows);
            assert!(
                want_groups.contains(&groups.len()),
                "full {full}: {groups:?}"
            );
            // Row groups of several batches, not one each.
            assert!(
                groups[..groups.len() - 1].iter().all(|&n| n > 3 * 8192),
                "full {full}: {groups:?}"
            );
            let peak = peak.load(Ordering::SeqCst);
            if full {
                assert!(peak <= 1 << 20, "full {full}: peak {peak}");
            } else {
                assert!(peak >= ROW_GROUP_FLOOR, "full {full}: peak {peak}");
            }
            assert_eq!(pool.reserved(), other.size());
        }
    }

    /// A version with no rows lists one file of the schema alone; a version with rows none.
    /// Two writers append to an empty output at once, one of them no rows: in either commit
    /// order the output ends with the other's rows and no file of the schema alone (the
    /// writer of no rows, rebasing onto rows, drops its own and deletes it).
    #[tokio::test]
    async fn a_file_of_the_schema_alone_stands_only_for_a_version_of_no_rows() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("p", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("x"), None, Some("y")])),
            ],
        )
        .unwrap();
        let stream = |batches: Vec<RecordBatch>| {
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::iter(batches.into_iter().map(Ok)),
            )) as SendableRecordBatchStream
        };
        let spec = |mode| SinkSpec {
            location: Location::parse("s3://lake/out/").unwrap(),
            append_id: None,
            format: Format::Parquet,
            partition_by: vec!["p".to_string()],
            mode,
            target_rows_per_file: 1 << 30,
            target_file_size: 1 << 40,
            compression: ParquetCompression::None,
            parallelism: 1,
            buffer_budget: 1 << 30,
            memory: Arc::new(GreedyMemoryPool::new(64 << 20)),
            preserve_order: true,
            adopt: false,
            staging: None,
        };
        let objects = |store: Arc<dyn ObjectStore>| async move {
            let listed: Vec<_> = store
                .list(None)
                .map(|m| m.unwrap().location)
                .collect()
                .await;
            listed.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        };
        for empty_first in [true, false] {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let append = spec(WriteMode::Append);
            let (runs, inputs) = (
                ["20260101T000000Z-aaaaaa", "20260101T000000Z-bbbbbb"],
                [vec![], vec![batch.clone()]],
            );
            let mut writers = Vec::new();
            for (run, input) in runs.iter().zip(inputs) {
                let (output, existing) =
                    prepare(Arc::clone(&store), &append, run, &Ended::default())
                        .await
                        .unwrap();
                let slot = UnitSlot::attempt("u");
                let staged = stage_unit(&output, &append, stream(input), run, slot, &|_| {})
                    .await
                    .unwrap();
                writers.push((output, existing, run, staged));
            }
            if !empty_first {
                writers.reverse();
            }
            for (output, existing, run, staged) in &writers {
                publish(
                    output,
                    existing,
                    &append,
                    run,
                    &schema,
                    staged.files.clone(),
                    None,
                )
                .await
                .unwrap();
            }
            let manifest = writers[0].0.read_manifest().await.unwrap().unwrap();
            assert_eq!(manifest.rows, 3, "empty first: {empty_first}");
            assert!(manifest.files.iter().all(|f| !f.schema_only && f.rows > 0));
            let listed = objects(Arc::clone(&store)).await;
            assert!(
                !listed.iter().any(|k| k.contains("/part-00000-")),
                "empty first: {empty_first}: {listed:?}"
            );

            // Overwritten with no rows: one file of the schema alone, in the NULL partition.
            let overwrite = spec(WriteMode::Overwrite);
            let run = "20260101T000001Z-cccccc";
            let (output, existing) =
                prepare(Arc::clone(&store), &overwrite, run, &Ended::default())
                    .await
                    .unwrap();
            let staged = stage_unit(
                &output,
                &overwrite,
                stream(vec![]),
                run,
                UnitSlot::attempt("u"),
                &|_| {},
            )
            .await
            .unwrap();
            assert!(staged.files.is_empty());
            publish(
                &output,
                &existing,
                &overwrite,
                run,
                &schema,
                staged.files,
                None,
            )
            .await
            .unwrap();
            let manifest = output.read_manifest().await.unwrap().unwrap();
            let want = format!("p=__HIVE_DEFAULT_PARTITION__/part-00000-{run}.parquet");
            assert_eq!(manifest.rows, 0);
            assert_eq!(manifest.files.len(), 1);
            assert!(manifest.files[0].schema_only && manifest.files[0].path == want);
            assert_eq!(manifest.data_files().count(), 0);
            let listed = objects(Arc::clone(&store)).await;
            let data: Vec<_> = listed.iter().filter(|k| k.contains("/part-")).collect();
            assert_eq!(data, vec![&format!("out/{want}")]);
        }

        // Writers of no rows racing: an append of no rows prepared over rows commits after
        // an overwrite of no rows; the version it commits over has no file but its file of
        // the schema alone, which it keeps. An overwrite of partitions with no rows over that
        // rebases past another writer's append (it rewrites no partition), and an overwrite
        // of partitions with no rows over rows in the NULL partition keeps them.
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let run = |n: u8| format!("20260101T00000{n}Z-aaaaa{n}");
        let write = |mode, n: u8, rows: Vec<RecordBatch>| {
            let store = Arc::clone(&store);
            let spec = spec(mode);
            let stream = stream(rows);
            async move {
                let run = run(n);
                let (output, existing) = prepare(store, &spec, &run, &Ended::default())
                    .await
                    .unwrap();
                let slot = UnitSlot::attempt("u");
                let staged = stage_unit(&output, &spec, stream, &run, slot, &|_| {})
                    .await
                    .unwrap();
                (output, existing, spec, run, staged)
            }
        };
        let publish_it =
            |(output, existing, spec, run, staged): (Output, _, SinkSpec, String, UnitOutput)| {
                let schema = Arc::clone(&schema);
                async move {
                    let c =
                        publish(&output, &existing, &spec, &run, &schema, staged.files, None).await;
                    (output, c)
                }
            };
        publish_it(write(WriteMode::Overwrite, 1, vec![batch.clone()]).await)
            .await
            .1
            .unwrap();
        let append = write(WriteMode::Append, 2, vec![]).await;
        publish_it(write(WriteMode::Overwrite, 3, vec![]).await)
            .await
            .1
            .unwrap();
        let (output, committed) = publish_it(append).await;
        assert_eq!(committed.unwrap().rows, 0);
        let manifest = output.read_manifest().await.unwrap().unwrap();
        assert_eq!(manifest.files.len(), 1, "{manifest:?}");
        assert!(manifest.files[0].schema_only);
        assert!(
            store
                .head(&output.key(&manifest.files[0].path))
                .await
                .is_ok()
        );

        let partitions = write(WriteMode::OverwritePartitions, 4, vec![]).await;
        publish_it(write(WriteMode::Append, 5, vec![batch.clone()]).await)
            .await
            .1
            .unwrap();
        let (output, committed) = publish_it(partitions).await;
        // Its file of the schema alone, dropped for the append's rows, is not reported.
        assert_eq!(committed.unwrap().new_files, Vec::<String>::new());
        let manifest = output.read_manifest().await.unwrap().unwrap();
        assert_eq!(manifest.rows, 3);
        assert!(manifest.files.iter().all(|f| !f.schema_only));

        // The append's row with a NULL `p` stays.
        publish_it(write(WriteMode::OverwritePartitions, 6, vec![]).await)
            .await
            .1
            .unwrap();
        let manifest = output.read_manifest().await.unwrap().unwrap();
        assert_eq!(manifest.rows, 3);
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.path.starts_with("p=__HIVE_DEFAULT_PARTITION__/") && f.rows == 1),
            "{manifest:?}"
        );
    }

    /// On S3, where a publish moves each file with one CopyObject (at most 5 GiB), a staged
    /// file larger than that fails the publish before anything moves: the message names the
    /// file and the limit, the file is still staged, and no manifest is written. (The store is
    /// in memory; the staged file only claims its size, as the writer lanes record it.)
    #[tokio::test]
    async fn a_file_s3_cannot_copy_fails_the_publish_before_anything_moves() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let location = Location::parse("s3://lake/out/").unwrap();
        assert_eq!(location.max_copy_bytes(), Some(5 << 30));
        let output = Output::new(Arc::clone(&store), location);
        let run_id = "20260101T000000Z-abcdef";
        let existing = output
            .inspect(run_id, &Ended::default(), false, "parquet")
            .await
            .unwrap();
        let staged = |name: &str, bytes: u64| StagedFile {
            staged: format!("u/{name}"),
            file: ManifestFile {
                path: name.to_string(),
                rows: 1,
                bytes,
                period: None,
                merged: Vec::new(),
                schema_only: false,
            },
        };
        let files = vec![
            staged(&format!("part-u-00000000-00000-{run_id}.parquet"), 1 << 20),
            staged(
                &format!("part-u-00000000-00001-{run_id}.parquet"),
                (5 << 30) + 1,
            ),
        ];
        let staging = output.staging().cloned().unwrap();
        for f in &files {
            store
                .put(
                    &staging.key(run_id, &f.staged),
                    PutPayload::from_static(b"x"),
                )
                .await
                .unwrap();
        }
        let err = output
            .publish(
                &existing,
                NewVersion {
                    run_id,
                    mode: WriteMode::Overwrite,
                    format: "parquet",
                    partition_by: &[],
                    columns: Vec::new(),
                    files: files.clone(),
                    append_id: None,
                    periods: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(
            err.key,
            format!("s3://lake/out/part-u-00000000-00001-{run_id}.parquet")
        );
        assert!(
            err.message.contains("the file is 5.0 GiB (5368709121 bytes), over the 5.0 GiB an S3 copy takes (5368709120 bytes)")
                && err.message.contains("nothing was published"),
            "{}",
            err.message
        );
        for f in &files {
            assert!(store.head(&staging.key(run_id, &f.staged)).await.is_ok());
            assert!(store.head(&output.key(&f.file.path)).await.is_err());
        }
        assert!(store.head(&output.key("_MANIFEST")).await.is_err());

        // An S3 sink's target_file_size is at most 4 GiB; elsewhere, any size.
        use crate::config::refuse_target_file_size;
        assert!(refuse_target_file_size("s3://lake/out/", 4 << 30).is_none());
        assert!(refuse_target_file_size("S3A://lake/out/", (4 << 30) + 1).is_some());
        assert!(refuse_target_file_size("/tmp/out/", 1 << 40).is_none());
        assert!(refuse_target_file_size("gs://lake/out/", 1 << 40).is_none());
        let local = Location::parse("/tmp/out/").unwrap();
        assert_eq!(local.max_copy_bytes(), None);
        assert_eq!(
            Location::parse("s3a://lake/out/").unwrap().max_copy_bytes(),
            Some(5 << 30)
        );
        assert_eq!(
            Location::parse("gs://lake/out/").unwrap().max_copy_bytes(),
            None
        );
    }
}
