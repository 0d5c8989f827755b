//! The work of one output partition of a [`super::GraceHashJoinExec`]: the shared
//! preparation (the build side read once, then the in-memory join or both sides split into
//! buckets), its share of the bucket pairs, and sending rows on.

use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{ArrayRef, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::{DataFusionError, JoinType, Result};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, SendableRecordBatchStream,
};
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use tokio::sync::mpsc::Sender;
use tokio::task::JoinSet;

use super::bucket::Side;
use super::exec::{Choice, Strategy};
use super::filter::KeyBounds;
use super::metrics::JoinMetrics;
use super::once::{OnceExec, Opener};
use super::spill::{BucketReader, BucketWriter};

/// What the output partitions share: the build side read once, and then either the
/// in-memory join or the buckets.
#[derive(Default)]
pub(super) struct Shared {
    /// The preparation, started by the first partition in a task of its own (so that a
    /// partition dropped early does not cancel it for the others), awaited by all.
    prepared: Mutex<Option<PrepareFuture>>,
    /// Output partitions done; the last one releases the hash table or leftover buckets.
    finished: std::sync::atomic::AtomicUsize,
}

type PrepareFuture = futures::future::Shared<
    BoxFuture<'static, std::result::Result<Arc<Prepared>, Arc<DataFusionError>>>,
>;

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
    }
}

/// Aborts a spawned task when dropped (when every partition awaiting it is gone).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Prepared {
    /// The build side fitted: one in-memory join, executed per output partition (until the
    /// last partition is done and lets go of it).
    InMemory(Mutex<Option<Arc<dyn ExecutionPlan>>>),
    /// Bucket pairs (build, probe files), taken by the output partitions in turn.
    Buckets(Mutex<Vec<Option<(Side, Side)>>>),
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prepared::InMemory(_) => f.write_str("InMemory"),
            Prepared::Buckets(_) => f.write_str("Buckets"),
        }
    }
}

/// Where a bucket join's rows go.
pub(super) enum Output<'a> {
    /// To the output, as they are.
    Direct(&'a Sender<Result<RecordBatch>>),
    /// Rows of a LEFT join standing in for a FULL one: given the FULL join's schema (its
    /// build columns are nullable).
    Cast(&'a SchemaRef, &'a Sender<Result<RecordBatch>>),
    /// Probe rows of a RIGHT ANTI join standing in for a FULL one: NULL build columns first.
    PadLeft(&'a SchemaRef, &'a Sender<Result<RecordBatch>>),
}

impl Output<'_> {
    pub(super) fn sender(&self) -> &Sender<Result<RecordBatch>> {
        match self {
            Output::Direct(s) | Output::Cast(_, s) | Output::PadLeft(_, s) => s,
        }
    }
}

/// Whether the output receiver is still there.
#[derive(PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Stop,
}

/// Memory an in-memory hash join takes for a build side of `bytes` and `rows`: the batches,
/// their concatenation, and the hash table (DataFusion reserves about 16–32 bytes a row).
pub(crate) fn join_memory(bytes: usize, rows: usize) -> usize {
    bytes
        .saturating_mul(2)
        .saturating_add(rows.saturating_mul(48))
}

/// The join of one output partition: runs in its own task, sends output to `tx`.
pub(super) struct Job {
    pub(super) join: Arc<HashJoinExec>,
    pub(super) choice: Choice,
    pub(super) reservation: MemoryReservation,
    pub(super) metrics: JoinMetrics,
    pub(super) partition: usize,
    pub(super) partitions: usize,
    pub(super) shared: Arc<Shared>,
    /// The filter the probe side's scan applies, to fill once the build side is read
    /// (`None`: nothing consumes one).
    pub(super) probe_filter: Option<Arc<DynamicFilterPhysicalExpr>>,
    pub(super) ctx: Arc<TaskContext>,
}

impl Job {
    pub(super) async fn run(self, tx: Sender<Result<RecordBatch>>) -> Result<()> {
        let result = self.run_partition(&Output::Direct(&tx)).await;
        // The last partition out lets go of the shared hash table or leftover bucket files
        // (a LIMIT above may have stopped early), before the plan itself is dropped.
        let done = self
            .shared
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        if done >= self.partitions {
            let prepared = self.shared.prepared.lock().ok().and_then(|mut p| p.take());
            if let Some(Ok(p)) = prepared.and_then(|f| f.peek().cloned()) {
                match p.as_ref() {
                    Prepared::InMemory(plan) => {
                        let _ = plan.lock().map(|mut p| p.take());
                    }
                    Prepared::Buckets(pairs) => {
                        let _ = pairs.lock().map(|mut p| p.clear());
                    }
                }
            }
        }
        result
    }

    /// The shared preparation: started here if no partition has started it yet.
    fn preparation(&self) -> PrepareFuture {
        let mut slot = match self.shared.prepared.lock() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(f) = slot.as_ref() {
            return f.clone();
        }
        let job = self.sibling(Arc::clone(&self.join), "GraceHashJoinBuild");
        let task = AbortOnDrop(tokio::spawn(async move { job.prepare().await }));
        let f: PrepareFuture = async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(Ok(p)) => Ok(Arc::new(p)),
                Ok(Err(e)) => Err(Arc::new(e)),
                Err(e) => Err(Arc::new(DataFusionError::External(Box::new(e)))),
            }
        }
        .boxed()
        .shared();
        *slot = Some(f.clone());
        f
    }

    async fn run_partition(&self, tx: &Output<'_>) -> Result<()> {
        let prepared = self.preparation().await;
        match prepared.as_deref() {
            Err(e) => Err(DataFusionError::Shared(Arc::clone(e))),
            Ok(Prepared::InMemory(plan)) => {
                let plan = plan.lock().ok().and_then(|p| p.clone());
                let Some(plan) = plan else {
                    return Ok(());
                };
                drop(prepared);
                let out = plan.execute(self.partition, Arc::clone(&self.ctx))?;
                self.forward(out, &plan, tx).await?;
                Ok(())
            }
            Ok(Prepared::Buckets(pairs)) => {
                // Output partition p joins buckets p, p + partitions, p + 2·partitions, ...
                let count = pairs.lock().map(|p| p.len()).unwrap_or(0);
                for i in (self.partition..count).step_by(self.partitions.max(1)) {
                    let pair = pairs.lock().ok().and_then(|mut p| p.get_mut(i)?.take());
                    if let Some((build, probe)) = pair
                        && self.join_bucket(build, probe, 1, tx).await? == Flow::Stop
                    {
                        break;
                    }
                }
                Ok(())
            }
        }
    }

    /// Reads the build side (all partitions), and either sets up the in-memory join or
    /// partitions both sides into buckets. Runs once, in whichever partition comes first.
    async fn prepare(&self) -> Result<Prepared> {
        let build = self.join.left();
        let mut tasks = JoinSet::new();
        let (btx, mut brx) = tokio::sync::mpsc::channel(4);
        for i in 0..build.output_partitioning().partition_count() {
            let mut stream = build.execute(i, Arc::clone(&self.ctx))?;
            let tx = btx.clone();
            tasks.spawn(async move {
                while let Some(batch) = stream.next().await {
                    let failed = batch.is_err();
                    if tx.send(batch).await.is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(btx);
        let mut buffered = Vec::new();
        let (mut bytes, mut rows) = (0usize, 0usize);
        let mut writer = match self.choice.strategy {
            Strategy::Partitioned(n) => Some(self.writer(true, n, 0)),
            Strategy::Adaptive => None,
        };
        // Needed only if the build side goes into buckets; gathered from the start, as
        // that is known only once the build side outgrows memory.
        let mut bounds = match self.probe_filter {
            Some(_) => Some(KeyBounds::new(&self.join)?),
            None => None,
        };
        while let Some(batch) = brx.recv().await {
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    drop(writer);
                    tasks.shutdown().await;
                    return Err(e);
                }
            };
            if batch.num_rows() == 0 {
                continue;
            }
            if let Some(b) = bounds.as_mut() {
                b.update(&batch)?;
            }
            if let Some(w) = writer.as_mut() {
                w.push(&batch)?;
                continue;
            }
            bytes += get_record_batch_memory_size(&batch);
            rows += batch.num_rows();
            buffered.push(batch);
            if !self.fits(bytes, rows, self.choice.total_budget) {
                // Twice what is read so far, as a guess at the rest.
                let n = self.bucket_count(join_memory(bytes, rows) * 2, 2 * self.partitions);
                let mut w = self.writer(true, n.max(self.choice.buckets), 0);
                for b in buffered.drain(..) {
                    w.push(&b)?;
                }
                self.reservation.free();
                writer = Some(w);
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        drop(tasks);
        match writer {
            None => self.prepare_in_memory(buffered),
            Some(writer) => {
                if let (Some(bounds), Some(filter)) = (bounds, &self.probe_filter) {
                    bounds.publish(filter)?;
                }
                self.partition_probe(writer).await
            }
        }
    }

    /// The whole build side fitted (`buffered`): one in-memory join, the probe side's
    /// partitions streaming past one shared hash table. That join fills the probe filter,
    /// as it does when DataFusion runs it alone.
    fn prepare_in_memory(&self, buffered: Vec<RecordBatch>) -> Result<Prepared> {
        self.reservation.free();
        self.metrics.in_memory.add(1);
        let mut join = self
            .join
            .builder()
            .with_new_children(vec![
                self.memory_of(buffered, true)?,
                Arc::clone(self.join.right()),
            ])?
            .with_partition_mode(PartitionMode::CollectLeft)
            .reset_state()
            .recompute_properties()
            .build()?;
        if let Some(filter) = &self.probe_filter {
            join = join.with_dynamic_filter_expr(Arc::clone(filter))?;
        }
        let plan: Arc<dyn ExecutionPlan> = Arc::new(join);
        Ok(Prepared::InMemory(Mutex::new(Some(plan))))
    }

    /// The build side went into buckets (`writer`): partitions the probe side into as many,
    /// and pairs them up.
    async fn partition_probe(&self, writer: BucketWriter) -> Result<Prepared> {
        self.metrics.partitioned.add(1);
        let builds = writer.finish()?;
        let n = builds.len();
        // The probe side, every partition in parallel, each into its own bucket files.
        let probe = self.join.right();
        let mut tasks = JoinSet::new();
        for i in 0..probe.output_partitioning().partition_count() {
            let stream = probe.execute(i, Arc::clone(&self.ctx))?;
            let mut w = self.writer(false, n, 0);
            tasks.spawn(async move {
                w.push_stream(stream).await?;
                w.finish()
            });
        }
        let mut probes: Vec<Side> = (0..n).map(|_| Vec::new()).collect();
        while let Some(done) = tasks.join_next().await {
            let buckets = match done.map_err(|e| DataFusionError::External(Box::new(e))) {
                Ok(Ok(buckets)) => buckets,
                Ok(Err(e)) | Err(e) => {
                    // Stop the other partitions and let their files go before reporting.
                    tasks.shutdown().await;
                    return Err(e);
                }
            };
            for (i, b) in buckets.into_iter().enumerate() {
                if b.rows > 0 {
                    probes[i].push(b);
                }
            }
        }
        self.metrics.buckets.add(n);
        self.metrics.depth.set_max(1);
        let pairs = builds
            .into_iter()
            .zip(probes)
            .map(|(b, p)| Some((vec![b], p)))
            .collect();
        Ok(Prepared::Buckets(Mutex::new(pairs)))
    }

    /// Buckets for a build side needing `need` bytes to join in memory: a quarter of a
    /// partition's budget each, at least `min`.
    pub(super) fn bucket_count(&self, need: usize, min: usize) -> usize {
        let per_bucket = self.choice.budget.map_or(64 << 20, |b| (b / 4).max(1));
        need.div_ceil(per_bucket)
            .max(min)
            .next_power_of_two()
            .min(512)
    }

    /// Whether a build side of `bytes` and `rows` may be joined in memory: within `budget`
    /// and granted by the pool (the reservation keeps the room until freed).
    pub(super) fn fits(&self, bytes: usize, rows: usize, budget: Option<usize>) -> bool {
        let need = join_memory(bytes, rows);
        let ok = budget.is_none_or(|b| need <= b) && self.reservation.try_resize(need).is_ok();
        if ok {
            self.metrics.peak.set_max(need);
        }
        ok
    }

    /// A writer of buckets of the build (`build`) or probe side, at level `depth`.
    pub(super) fn writer(&self, build: bool, n: usize, depth: u32) -> BucketWriter {
        let (keys, schema) = if build {
            (
                self.join.on().iter().map(|(l, _)| Arc::clone(l)).collect(),
                self.join.left().schema(),
            )
        } else {
            (
                self.join.on().iter().map(|(_, r)| Arc::clone(r)).collect(),
                self.join.right().schema(),
            )
        };
        // Gathered rows are written out at a quarter of the budget (or 16 MiB).
        let buffer = self
            .choice
            .budget
            .map_or(16 << 20, |b| (b / 4).max(256 << 10));
        let reservation = MemoryConsumer::new(format!("GraceHashJoinBuckets[{}]", self.partition))
            .register(self.ctx.memory_pool());
        BucketWriter::new(
            keys,
            n,
            depth,
            schema,
            Arc::clone(&self.ctx),
            self.metrics.spill.clone(),
            buffer,
            reservation,
        )
    }

    pub(super) fn reader(&self, build: bool) -> BucketReader {
        let schema = if build {
            self.join.left().schema()
        } else {
            self.join.right().schema()
        };
        BucketReader::new(&self.ctx, schema, self.metrics.spill.clone())
    }

    /// A one-partition source streaming `side` from its files.
    pub(super) fn streamed(&self, side: &Side, build: bool) -> Result<Arc<dyn ExecutionPlan>> {
        let reader = self.reader(build);
        let stream = reader.stream_all(side)?;
        Ok(OnceExec::plan(
            stream.schema(),
            vec![Box::new(move || Ok(stream)) as Opener],
        ))
    }

    /// The wrapped join (in memory, one shared hash table) over a build and a probe source.
    /// With `swap`, the roles are swapped: `probe` is loaded and `build` streamed.
    fn bucket_join(
        &self,
        build: Arc<dyn ExecutionPlan>,
        probe: Arc<dyn ExecutionPlan>,
        swap: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = self
            .join
            .builder()
            .with_new_children(vec![build, probe])?
            .with_partition_mode(PartitionMode::CollectLeft)
            .reset_state()
            .recompute_properties()
            .build()?;
        if swap {
            join.swap_inputs(PartitionMode::CollectLeft)
        } else {
            Ok(Arc::new(join))
        }
    }

    async fn send(&self, batch: RecordBatch, tx: &Output<'_>) -> Result<Flow> {
        if batch.num_rows() == 0 {
            return Ok(Flow::Continue);
        }
        let (batch, sender) = match tx {
            Output::Direct(sender) => (batch, sender),
            Output::Cast(schema, sender) => (
                RecordBatch::try_new(Arc::clone(schema), batch.columns().to_vec())?,
                sender,
            ),
            Output::PadLeft(schema, sender) => {
                let pad = schema.fields().len() - batch.num_columns();
                let mut columns: Vec<ArrayRef> = schema.fields()[..pad]
                    .iter()
                    .map(|f| new_null_array(f.data_type(), batch.num_rows()))
                    .collect();
                columns.extend(batch.columns().iter().cloned());
                (RecordBatch::try_new(Arc::clone(schema), columns)?, sender)
            }
        };
        self.metrics.baseline.record_output(batch.num_rows());
        Ok(match sender.send(Ok(batch)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        })
    }

    /// This job with the wrapped join's type replaced (for a FULL join done in two passes).
    pub(super) fn with_type(&self, t: JoinType) -> Result<Job> {
        let join = self
            .join
            .builder()
            .with_type(t)
            .recompute_properties()
            .build()?;
        Ok(self.sibling(Arc::new(join), "GraceHashJoin"))
    }

    /// A job of the same partition over `join`, with a memory reservation of its own named
    /// `consumer[partition]`.
    fn sibling(&self, join: Arc<HashJoinExec>, consumer: &str) -> Job {
        Job {
            join,
            choice: self.choice.clone(),
            reservation: MemoryConsumer::new(format!("{consumer}[{}]", self.partition))
                .register(self.ctx.memory_pool()),
            metrics: self.metrics.clone(),
            partition: self.partition,
            partitions: self.partitions,
            shared: Arc::clone(&self.shared),
            probe_filter: self.probe_filter.clone(),
            ctx: Arc::clone(&self.ctx),
        }
    }

    /// Sends every batch of `out` (the output of `plan`), then records the plan's peak.
    async fn forward(
        &self,
        mut out: SendableRecordBatchStream,
        plan: &Arc<dyn ExecutionPlan>,
        tx: &Output<'_>,
    ) -> Result<Flow> {
        let mut flow = Flow::Continue;
        while let Some(batch) = out.next().await {
            if self.send(batch?, tx).await? == Flow::Stop {
                flow = Flow::Stop;
                break;
            }
        }
        drop(out);
        self.metrics.peak.set_max(build_memory(plan));
        Ok(flow)
    }

    pub(super) async fn run_join(
        &self,
        build: Arc<dyn ExecutionPlan>,
        probe: Arc<dyn ExecutionPlan>,
        swap: bool,
        tx: &Output<'_>,
    ) -> Result<Flow> {
        let plan = self.bucket_join(build, probe, swap)?;
        let out = plan.execute(0, Arc::clone(&self.ctx))?;
        self.forward(out, &plan, tx).await
    }

    /// A one-partition source of build (`build`) or probe rows held in memory, read once:
    /// the join that loads them copies them into its hash table, and the originals go as
    /// they are read rather than living on beside the copy.
    pub(super) fn memory_of(
        &self,
        batches: Vec<RecordBatch>,
        build: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = if build {
            self.join.left().schema()
        } else {
            self.join.right().schema()
        };
        let stream_schema = Arc::clone(&schema);
        let open = move || -> Result<SendableRecordBatchStream> {
            Ok(Box::pin(RecordBatchStreamAdapter::new(
                stream_schema,
                futures::stream::iter(batches.into_iter().map(Ok)),
            )))
        };
        Ok(OnceExec::plan(schema, vec![Box::new(open) as Opener]))
    }
}

/// The build-side memory an inner hash join reported.
fn build_memory(plan: &Arc<dyn ExecutionPlan>) -> usize {
    let own = plan
        .metrics()
        .and_then(|m| m.sum_by_name("build_mem_used"))
        .map_or(0, |v| v.as_usize());
    own.max(
        plan.children()
            .into_iter()
            .map(build_memory)
            .max()
            .unwrap_or(0),
    )
}
