//! Bucket files for the grace hash join: rows split by a hash of their join key into `n`
//! buckets, each written as an Arrow IPC stream to a file in the engine's spill folder, and
//! read back as a stream.
//!
//! A bucket file lives exactly as long as its [`Bucket`]: the file is a DataFusion temporary
//! file that deletes itself when its last handle is dropped, so an error, a cancelled query or
//! a finished bucket leaves nothing behind.

use std::io::BufWriter;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, UInt32Array};
use datafusion::arrow::compute::{concat_batches, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use datafusion::arrow::ipc::{CompressionType, MetadataVersion};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::spill_file::{SpillFile, SpillWriter};
use datafusion::physical_expr::PhysicalExprRef;
use datafusion::physical_plan::SpillManager;
use datafusion::physical_plan::metrics::SpillMetrics;
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{SendableRecordBatchStream, common::collect};

/// The seed of the bucket hash at recursion level `depth`. It differs from the seeds
/// DataFusion's repartitioning (0) and hash table use, so that the rows of one repartitioned
/// partition spread over all buckets, and it differs per level, so that re-partitioning an
/// overfull bucket splits it.
pub(crate) fn bucket_seed(depth: u32) -> u64 {
    0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(u64::from(depth) + 1) ^ 0x5_1ce
}

/// One bucket of one side of a join: a spill file (none when the bucket is empty) and what
/// went into it.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub file: Option<Arc<dyn SpillFile>>,
    /// Rows written.
    pub rows: usize,
    /// The rows' size in memory (not on disk): what loading the bucket will take.
    pub bytes: usize,
}

/// Assigns each row of a batch to a bucket by the hash of its join key columns.
pub(crate) struct Partitioner {
    keys: Vec<PhysicalExprRef>,
    state: RandomState,
    n: usize,
    hashes: Vec<u64>,
}

impl Partitioner {
    /// A partitioner into `n` buckets by `keys`, hashed with the seed of level `depth`.
    pub(super) fn new(keys: Vec<PhysicalExprRef>, n: usize, depth: u32) -> Partitioner {
        Partitioner {
            keys,
            state: RandomState::with_seed(bucket_seed(depth)),
            n: n.max(1),
            hashes: Vec::new(),
        }
    }

    /// Splits `batch` into one batch per non-empty bucket.
    pub(super) fn split(&mut self, batch: &RecordBatch) -> Result<Vec<(usize, RecordBatch)>> {
        let rows = batch.num_rows();
        let arrays = self
            .keys
            .iter()
            .map(|k| k.evaluate(batch)?.into_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        self.hashes.clear();
        self.hashes.resize(rows, 0);
        create_hashes(&arrays, &self.state, &mut self.hashes)?;
        let mut indices: Vec<Vec<u32>> = vec![Vec::new(); self.n];
        for (row, hash) in self.hashes.iter().enumerate() {
            // The high bits: the hash table inside each bucket's join uses the low ones.
            let bucket = ((hash >> 32) % self.n as u64) as usize;
            indices[bucket].push(row as u32);
        }
        let mut out = Vec::new();
        for (bucket, idx) in indices.into_iter().enumerate() {
            if idx.is_empty() {
                continue;
            }
            if idx.len() == rows {
                out.push((bucket, batch.clone()));
                continue;
            }
            let idx = UInt32Array::from(idx);
            out.push((bucket, take_record_batch(batch, &idx)?));
        }
        Ok(out)
    }
}

/// The write buffer of one bucket file.
const FILE_BUFFER: usize = 32 << 10;

/// Writes the rows of one side of a join into `n` bucket files.
///
/// Rows are gathered per bucket up to `batch_rows` before they are written, so the files
/// hold full-sized batches; the gathered rows are counted in `reservation`, and all buckets
/// are written out whenever they exceed `buffer_bytes` together. Each open bucket file's
/// write buffer ([`FILE_BUFFER`]) is counted there too, until the files are closed.
pub(crate) struct BucketWriter {
    partitioner: Partitioner,
    schema: SchemaRef,
    ctx: Arc<TaskContext>,
    metrics: SpillMetrics,
    compression: Option<CompressionType>,
    batch_rows: usize,
    buffer_bytes: usize,
    reservation: MemoryReservation,
    buckets: Vec<PendingBucket>,
    pending_bytes: usize,
}

#[derive(Default)]
struct PendingBucket {
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    /// What the pending parts were charged (their shares of their batches).
    pending_charged: usize,
    writer: Option<StreamWriter<BufWriter<Box<dyn SpillWriter>>>>,
    file: Option<Arc<dyn SpillFile>>,
    rows: usize,
    bytes: usize,
}

impl BucketWriter {
    /// A writer of `n` buckets of rows of `schema`, split by `keys` at level `depth`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        keys: Vec<PhysicalExprRef>,
        n: usize,
        depth: u32,
        schema: SchemaRef,
        ctx: Arc<TaskContext>,
        metrics: SpillMetrics,
        buffer_bytes: usize,
        reservation: MemoryReservation,
    ) -> BucketWriter {
        let compression = Option::<CompressionType>::from(ctx.session_config().spill_compression());
        let batch_rows = ctx.session_config().batch_size().max(1);
        BucketWriter {
            partitioner: Partitioner::new(keys, n, depth),
            schema,
            ctx,
            metrics,
            compression,
            batch_rows,
            buffer_bytes,
            reservation,
            buckets: (0..n.max(1)).map(|_| PendingBucket::default()).collect(),
            pending_bytes: 0,
        }
    }

    /// Adds the rows of `batch` to their buckets.
    pub(super) fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        // A part's size is its share of the batch's: `take` leaves string views pointing
        // into the batch's buffers, which a size of the part alone would count whole.
        let batch_size = get_record_batch_memory_size(batch);
        let rows = batch.num_rows();
        for (i, part) in self.partitioner.split(batch)? {
            let size = batch_size * part.num_rows() / rows;
            self.reservation.grow(size);
            self.pending_bytes += size;
            let bucket = &mut self.buckets[i];
            bucket.pending_rows += part.num_rows();
            bucket.pending_charged += size;
            bucket.pending.push(part);
            if bucket.pending_rows >= self.batch_rows {
                self.flush(i)?;
            }
        }
        if self.pending_bytes > self.buffer_bytes {
            for i in 0..self.buckets.len() {
                self.flush(i)?;
            }
        }
        Ok(())
    }

    /// Adds every batch of `stream`.
    pub(super) async fn push_stream(
        &mut self,
        mut stream: SendableRecordBatchStream,
    ) -> Result<()> {
        use futures::StreamExt;
        while let Some(batch) = stream.next().await {
            self.push(&batch?)?;
        }
        Ok(())
    }

    /// Writes bucket `i`'s gathered rows to its file as one batch.
    fn flush(&mut self, i: usize) -> Result<()> {
        let bucket = &mut self.buckets[i];
        if bucket.pending.is_empty() {
            return Ok(());
        }
        let batch = compact_views(concat_batches(&self.schema, &bucket.pending)?)?;
        let freed = bucket.pending_charged;
        bucket.pending_charged = 0;
        bucket.pending.clear();
        bucket.pending_rows = 0;
        self.pending_bytes -= freed;
        self.reservation.shrink(freed);
        if bucket.writer.is_none() {
            let file = self
                .ctx
                .runtime_env()
                .disk_manager
                .create_tmp_file("grace hash join bucket")?;
            let options = IpcWriteOptions::try_new(16, false, MetadataVersion::V5)?
                .try_with_compression(self.compression)?;
            self.reservation.grow(FILE_BUFFER);
            let writer = StreamWriter::try_new_with_options(
                BufWriter::with_capacity(FILE_BUFFER, file.open_writer()?),
                &self.schema,
                options,
            )?;
            bucket.writer = Some(writer);
            bucket.file = Some(file);
            self.metrics.spill_file_count.add(1);
        }
        if let Some(writer) = bucket.writer.as_mut() {
            writer.write(&batch)?;
        }
        bucket.rows += batch.num_rows();
        bucket.bytes += get_record_batch_memory_size(&batch);
        self.metrics.spilled_rows.add(batch.num_rows());
        Ok(())
    }

    /// Writes out what is gathered, closes the files and returns the buckets.
    pub(super) fn finish(mut self) -> Result<Vec<Bucket>> {
        for i in 0..self.buckets.len() {
            self.flush(i)?;
        }
        let mut out = Vec::with_capacity(self.buckets.len());
        for bucket in std::mem::take(&mut self.buckets) {
            if let Some(mut writer) = bucket.writer {
                writer.finish()?;
                let mut inner = writer
                    .into_inner()?
                    .into_inner()
                    .map_err(|e| DataFusionError::IoError(e.into_error()))?;
                inner.finish()?;
            }
            if let Some(file) = &bucket.file {
                self.metrics
                    .spilled_bytes
                    .add(file.size().unwrap_or(0) as usize);
            }
            out.push(Bucket {
                file: bucket.file,
                rows: bucket.rows,
                bytes: bucket.bytes,
            });
        }
        self.reservation.free();
        Ok(out)
    }
}

/// `batch` with its string and binary view columns copied into buffers of their own: after
/// `take` and `concat` they still point into the buffers of the batches they came from, and
/// would be written (and counted) whole.
fn compact_views(batch: RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::DataType;
    let mut changed = false;
    let columns = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => {
                changed = true;
                Arc::new(c.as_string_view().gc()) as ArrayRef
            }
            DataType::BinaryView => {
                changed = true;
                Arc::new(c.as_binary_view().gc()) as ArrayRef
            }
            _ => Arc::clone(c),
        })
        .collect::<Vec<_>>();
    if !changed {
        return Ok(batch);
    }
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Reads bucket files back as streams of batches.
pub(crate) struct BucketReader {
    manager: SpillManager,
    schema: SchemaRef,
}

impl BucketReader {
    /// A reader of buckets holding rows of `schema`.
    pub(super) fn new(ctx: &TaskContext, schema: SchemaRef, metrics: SpillMetrics) -> BucketReader {
        BucketReader {
            manager: SpillManager::new(ctx.runtime_env(), metrics, Arc::clone(&schema))
                .with_compression_type(ctx.session_config().spill_compression()),
            schema,
        }
    }

    /// The rows of `bucket` as a stream (empty for an empty bucket).
    pub(super) fn stream(&self, bucket: &Bucket) -> Result<SendableRecordBatchStream> {
        match &bucket.file {
            Some(file) => self.manager.read_spill_as_stream(Arc::clone(file), None),
            None => Ok(Box::pin(
                datafusion::physical_plan::EmptyRecordBatchStream::new(Arc::clone(&self.schema)),
            )),
        }
    }

    /// The rows of several buckets (one bucket's files from several writers), one after
    /// the other.
    pub(super) fn stream_all(&self, buckets: &[Bucket]) -> Result<SendableRecordBatchStream> {
        if buckets.len() == 1 {
            return self.stream(&buckets[0]);
        }
        let streams = buckets
            .iter()
            .filter(|b| b.rows > 0)
            .map(|b| self.stream(b))
            .collect::<Result<Vec<_>>>()?;
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            futures::StreamExt::flatten(futures::stream::iter(streams)),
        )))
    }

    /// The rows of several buckets, in memory.
    pub(super) async fn load(&self, buckets: &[Bucket]) -> Result<Vec<RecordBatch>> {
        collect(self.stream_all(buckets)?).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::memory_pool::MemoryConsumer;
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use datafusion::prelude::SessionContext;
    use std::collections::HashMap;

    fn batch(keys: Vec<Option<i64>>, names: Vec<Option<&str>>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(keys)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    fn keys(cols: &[(&str, usize)]) -> Vec<PhysicalExprRef> {
        cols.iter()
            .map(|(n, i)| Arc::new(Column::new(n, *i)) as PhysicalExprRef)
            .collect()
    }

    #[test]
    fn equal_keys_go_to_one_bucket_and_seeds_differ_per_level() {
        let b = batch(
            (0..1000)
                .map(|i| Some(i % 37))
                .chain([None, None])
                .collect(),
            (0..1002)
                .map(|i| Some(if i % 2 == 0 { "a" } else { "b" }))
                .collect(),
        );
        for cols in [vec![("k", 0)], vec![("k", 0), ("name", 1)]] {
            let mut p = Partitioner::new(keys(&cols), 8, 0);
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut total = 0;
            for (bucket, part) in p.split(&b).unwrap() {
                total += part.num_rows();
                for row in 0..part.num_rows() {
                    let key: Vec<String> = cols
                        .iter()
                        .map(|(_, i)| {
                            datafusion::arrow::util::display::array_value_to_string(
                                part.column(*i),
                                row,
                            )
                            .unwrap()
                        })
                        .collect();
                    let prev = seen.insert(key.join("|"), bucket);
                    assert!(prev.is_none() || prev == Some(bucket));
                }
            }
            assert_eq!(total, 1002);
            assert!(
                seen.values()
                    .collect::<std::collections::HashSet<_>>()
                    .len()
                    > 4
            );
        }
        // The same key, split at two levels: a different seed puts keys in other buckets.
        let at = |depth| {
            let mut p = Partitioner::new(keys(&[("k", 0)]), 8, depth);
            let mut m = HashMap::new();
            for (bucket, part) in p.split(&b).unwrap() {
                let ks = part
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap();
                for k in ks.iter().flatten() {
                    m.insert(k, bucket);
                }
            }
            m
        };
        assert_ne!(at(0), at(1));
    }

    #[tokio::test]
    async fn buckets_round_trip_and_files_are_deleted_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_disk_manager_builder(
                datafusion::execution::disk_manager::DiskManagerBuilder::default().with_mode(
                    datafusion::execution::disk_manager::DiskManagerMode::Directories(vec![
                        dir.path().to_path_buf(),
                    ]),
                ),
            )
            .build_arc()
            .unwrap();
        let ctx = SessionContext::new_with_config_rt(Default::default(), runtime).task_ctx();
        let b = batch(
            (0..20_000).map(Some).collect(),
            (0..20_000).map(|_| Some("xyz")).collect(),
        );
        let metrics = ExecutionPlanMetricsSet::new();
        let spill = SpillMetrics::new(&metrics, 0);
        let reservation = MemoryConsumer::new("test").register(&ctx.runtime_env().memory_pool);
        let mut w = BucketWriter::new(
            keys(&[("k", 0)]),
            4,
            0,
            b.schema(),
            Arc::clone(&ctx),
            spill.clone(),
            1 << 20,
            reservation,
        );
        w.push(&b).unwrap();
        w.push(&b.slice(0, 10)).unwrap();
        // A bucket's file, once open, holds its write buffer: counted in the pool.
        let pool = Arc::clone(&ctx.runtime_env().memory_pool);
        let gathered = pool.reserved();
        w.flush(0).unwrap();
        assert!(
            pool.reserved() >= FILE_BUFFER,
            "{} bytes counted",
            pool.reserved()
        );
        assert!(pool.reserved() < gathered + FILE_BUFFER);
        let buckets = w.finish().unwrap();
        assert_eq!(pool.reserved(), 0);
        assert_eq!(buckets.iter().map(|b| b.rows).sum::<usize>(), 20_010);
        let reader = BucketReader::new(&ctx, b.schema(), spill.clone());
        let mut total = 0;
        for bucket in &buckets {
            let rows: usize = reader
                .load(std::slice::from_ref(bucket))
                .await
                .unwrap()
                .iter()
                .map(|b| b.num_rows())
                .sum();
            assert_eq!(rows, bucket.rows);
            total += rows;
        }
        assert_eq!(total, 20_010);
        assert!(spill.spilled_bytes.value() > 0);
        let files = |d: &std::path::Path| walkdir_count(d);
        assert!(files(dir.path()) >= 4);
        drop(buckets);
        assert_eq!(files(dir.path()), 0);
    }

    fn walkdir_count(d: &std::path::Path) -> usize {
        let mut n = 0;
        for e in std::fs::read_dir(d).unwrap().flatten() {
            if e.path().is_dir() {
                n += walkdir_count(&e.path());
            } else {
                n += 1;
            }
        }
        n
    }
}
