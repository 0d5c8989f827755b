//! [`GraceHashJoinExec`]: a hash join that finishes under a memory limit.
//!
//! It replaces one of DataFusion's hash joins and reads its inputs as they are, without the
//! hash repartitioning a partitioned join needs (it partitions by hash itself):
//! 1. All partitions of the build side are read, once, into memory while the memory pool
//!    grants room. If the whole build side fits, the ordinary in-memory hash join runs with
//!    one shared hash table, the probe side streaming past it in every partition.
//! 2. Otherwise both sides are hash-partitioned on the join keys into bucket files in the
//!    spill folder (the probe side by all its partitions in parallel), and the output
//!    partitions share out the buckets, each bucket pair joined by the same hash join in
//!    memory.
//! 3. A bucket still too large is re-partitioned with a new hash seed, up to [`MAX_DEPTH`]
//!    levels.
//! 4. A bucket that cannot be split (one hot key) is joined in pieces: the side that fits is
//!    loaded, or the side whose rows may be joined piecewise is split, and the other side is
//!    streamed past each piece.
//!
//! Every bucket holds all the rows of its keys on both sides, so joining buckets separately
//! gives exactly the rows of the whole join, for every join type; see
//! `docs/design/grace-join.md`.
//!
//! Reading the inputs directly also keeps the join clear of DataFusion's repartitioning
//! under memory pressure, which can stop forever when it spills (apache/datafusion#24883,
//! fixed after 55.2).

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use datafusion::arrow::array::{ArrayRef, new_null_array};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, JoinType, Result, Statistics};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalExprRef};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, MetricsSet, SpillMetrics,
};
use datafusion::physical_plan::spill::get_record_batch_memory_size;
use datafusion::physical_plan::stream::{RecordBatchReceiverStream, RecordBatchStreamAdapter};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream, StatisticsArgs,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinSet;

use super::spill::{Bucket, BucketReader, BucketWriter};

/// Recursion levels of re-partitioning before a bucket is joined in pieces.
pub const MAX_DEPTH: u32 = 4;

/// How a join's strategy was chosen at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Strategy {
    /// Try the in-memory hash join; partition only if the build side outgrows its memory.
    Adaptive,
    /// Partition into this many buckets from the start: the estimate is over the budget.
    Partitioned(usize),
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::Adaptive => write!(f, "adaptive"),
            Strategy::Partitioned(n) => write!(f, "grace({n})"),
        }
    }
}

/// The plan-time decision for one join: strategy, the reason shown by EXPLAIN, and sizes.
#[derive(Debug, Clone)]
pub struct Choice {
    /// What to do first.
    pub strategy: Strategy,
    /// Why, in words (shown by EXPLAIN and `sluice plan`).
    pub reason: String,
    /// Memory one output partition's bucket join may hold, in bytes (`None`: the pool
    /// decides alone).
    pub budget: Option<usize>,
    /// Memory the whole build side may take to be joined in memory, in bytes.
    pub total_budget: Option<usize>,
    /// Buckets to partition into when partitioning (the estimate's, or a default).
    pub buckets: usize,
}

/// A hash join that spills: see the module documentation.
#[derive(Debug)]
pub struct GraceHashJoinExec {
    join: Arc<HashJoinExec>,
    choice: Choice,
    metrics: ExecutionPlanMetricsSet,
    props: Arc<PlanProperties>,
    shared: Arc<Shared>,
}

/// What the output partitions share: the build side read once, and then either the
/// in-memory join or the buckets.
#[derive(Default)]
struct Shared {
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

/// One side of one bucket: its files (one per writer that had rows for it).
type Side = Vec<Bucket>;

fn side_rows(side: &Side) -> usize {
    side.iter().map(|b| b.rows).sum()
}

fn side_bytes(side: &Side) -> usize {
    side.iter().map(|b| b.bytes).sum()
}

impl GraceHashJoinExec {
    /// Wraps `join`, which must not be null-aware, over the same inputs.
    pub fn try_new(join: &HashJoinExec, choice: Choice) -> Result<GraceHashJoinExec> {
        if join.null_aware {
            return Err(DataFusionError::Plan(
                "a null-aware anti join (NOT IN) cannot be partitioned".into(),
            ));
        }
        let join = join
            .builder()
            .with_partition_mode(PartitionMode::CollectLeft)
            .reset_state()
            .recompute_properties()
            .build()?;
        let props = Arc::new(Self::compute_properties(&join));
        Ok(GraceHashJoinExec {
            join: Arc::new(join),
            choice,
            metrics: ExecutionPlanMetricsSet::new(),
            props,
            shared: Arc::default(),
        })
    }

    /// The wrapped join.
    pub fn join(&self) -> &HashJoinExec {
        &self.join
    }

    /// The plan-time decision.
    pub fn choice(&self) -> &Choice {
        &self.choice
    }

    /// The join's properties, except that no output order is promised (buckets reorder
    /// rows), output partitions are the probe side's (no key partitioning is promised), and
    /// output comes only after the build side is read.
    fn compute_properties(join: &HashJoinExec) -> PlanProperties {
        let mut props = (**join.properties()).clone();
        let mut eq: EquivalenceProperties = props.eq_properties.clone();
        eq.clear_orderings();
        props.set_eq_properties(eq);
        props.partitioning =
            Partitioning::UnknownPartitioning(join.right().output_partitioning().partition_count());
        props.emission_type = EmissionType::Final;
        props.boundedness = Boundedness::Bounded;
        props
    }

    /// `on=[(a@0, b@1)]` as DataFusion prints it.
    fn on_text(&self) -> String {
        self.join
            .on()
            .iter()
            .map(|(l, r)| format!("({l}, {r})"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// One line describing the join for reports: type and keys.
    pub fn describe(&self) -> String {
        let on = self
            .join
            .on()
            .iter()
            .map(|(l, r)| format!("{} = {}", strip_index(l), strip_index(r)))
            .collect::<Vec<_>>()
            .join(" AND ");
        format!("{:?} join on {on}", self.join.join_type())
    }
}

/// `o_orderkey@0` → `o_orderkey`.
fn strip_index(e: &PhysicalExprRef) -> String {
    let s = e.to_string();
    match s.rsplit_once('@') {
        Some((name, idx)) if idx.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => s,
    }
}

impl DisplayAs for GraceHashJoinExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let filter = self
            .join
            .filter()
            .map_or_else(String::new, |f| format!(", filter={}", f.expression()));
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "GraceHashJoinExec: join_type={:?}, on=[{}]{filter}, strategy={}, reason=\"{}\"",
                self.join.join_type(),
                self.on_text(),
                self.choice.strategy,
                self.choice.reason
            ),
            DisplayFormatType::TreeRender => {
                writeln!(f, "join_type={:?}", self.join.join_type())?;
                writeln!(f, "on={}", self.on_text())?;
                write!(f, "strategy={}", self.choice.strategy)
            }
        }
    }
}

impl ExecutionPlan for GraceHashJoinExec {
    fn name(&self) -> &str {
        "GraceHashJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![self.join.left(), self.join.right()]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.join.apply_expressions(f)
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        // The join partitions by hash itself; a round-robin repartition below would only
        // add a buffer that can fill under memory pressure.
        vec![false, false]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, false]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = self
            .join
            .builder()
            .with_new_children(children)?
            .recompute_properties()
            .build()?;
        let props = Arc::new(Self::compute_properties(&join));
        Ok(Arc::new(GraceHashJoinExec {
            join: Arc::new(join),
            choice: self.choice.clone(),
            metrics: ExecutionPlanMetricsSet::new(),
            props,
            shared: Arc::default(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(
        &self,
        _partition: Option<usize>,
    ) -> Vec<datafusion::physical_plan::ChildStats> {
        // The join's statistics come from its inputs' overall ones (the default skips them).
        vec![datafusion::physical_plan::ChildStats::At(None); 2]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        self.join.statistics_from_inputs(input_stats, args)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        // The bucket joins that run at once are the output partitions: split the budget
        // by their real number.
        let partitions = self.props.partitioning.partition_count().max(1);
        let mut choice = self.choice.clone();
        if let Some(total) = choice.total_budget {
            choice.budget = Some((total / partitions).max(1));
        }
        let job = Job {
            join: Arc::clone(&self.join),
            choice,
            // Not a spilling consumer: FairSpillPool would cap it at an equal share with
            // every spilling operator of the query, used or idle. It asks for what the pool
            // really has left, holds it only while deciding, and the budget caps it.
            reservation: MemoryConsumer::new(format!("GraceHashJoin[{partition}]"))
                .register(context.memory_pool()),
            metrics: JoinMetrics::new(&self.metrics, partition),
            partition,
            partitions,
            shared: Arc::clone(&self.shared),
            ctx: context,
        };
        let mut builder = RecordBatchReceiverStream::builder(self.schema(), 2);
        let tx = builder.tx();
        builder.spawn(async move { job.run(tx).await });
        Ok(builder.build())
    }
}

/// Per-partition metrics; summed over partitions in the plan's metrics.
#[derive(Clone)]
struct JoinMetrics {
    baseline: BaselineMetrics,
    spill: SpillMetrics,
    /// 1 when the build side fitted in memory.
    in_memory: Count,
    /// 1 when the inputs were split into buckets.
    partitioned: Count,
    /// Buckets created, at every level.
    buckets: Count,
    /// Deepest re-partitioning level reached (1: the first split).
    depth: Gauge,
    /// Buckets joined in chunks because one key's rows did not fit.
    skewed: Count,
    /// Peak memory of the join: its buffer, or the in-memory join's build side.
    peak: Gauge,
}

impl JoinMetrics {
    fn new(m: &ExecutionPlanMetricsSet, p: usize) -> JoinMetrics {
        JoinMetrics {
            baseline: BaselineMetrics::new(m, p),
            spill: SpillMetrics::new(m, p),
            in_memory: MetricBuilder::new(m).counter("ran_in_memory", p),
            partitioned: MetricBuilder::new(m).counter("ran_partitioned", p),
            buckets: MetricBuilder::new(m).counter("buckets", p),
            depth: MetricBuilder::new(m).gauge("max_depth", p),
            skewed: MetricBuilder::new(m).counter("skewed_buckets", p),
            peak: MetricBuilder::new(m).gauge("peak_mem_used", p),
        }
    }
}

/// Where a bucket join's rows go.
enum Output<'a> {
    /// To the output, as they are.
    Direct(&'a Sender<Result<RecordBatch>>),
    /// Rows of a LEFT join standing in for a FULL one: given the FULL join's schema (its
    /// build columns are nullable).
    Cast(&'a SchemaRef, &'a Sender<Result<RecordBatch>>),
    /// Probe rows of a RIGHT ANTI join standing in for a FULL one: NULL build columns first.
    PadLeft(&'a SchemaRef, &'a Sender<Result<RecordBatch>>),
}

impl Output<'_> {
    fn sender(&self) -> &Sender<Result<RecordBatch>> {
        match self {
            Output::Direct(s) | Output::Cast(_, s) | Output::PadLeft(_, s) => s,
        }
    }
}

/// Whether the output receiver is still there.
#[derive(PartialEq, Eq)]
enum Flow {
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

/// Join types whose build rows may be joined piecewise against the whole probe side: each
/// build row meets every probe row exactly once, and no probe row's output depends on
/// other build rows.
fn build_splittable(t: JoinType) -> bool {
    matches!(
        t,
        JoinType::Inner
            | JoinType::Left
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
    )
}

/// The join of one output partition: runs in its own task, sends output to `tx`.
struct Job {
    join: Arc<HashJoinExec>,
    choice: Choice,
    reservation: MemoryReservation,
    metrics: JoinMetrics,
    partition: usize,
    partitions: usize,
    shared: Arc<Shared>,
    ctx: Arc<TaskContext>,
}

impl Job {
    async fn run(self, tx: Sender<Result<RecordBatch>>) -> Result<()> {
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
        let job = Job {
            join: Arc::clone(&self.join),
            choice: self.choice.clone(),
            reservation: MemoryConsumer::new(format!("GraceHashJoinBuild[{}]", self.partition))
                .register(self.ctx.memory_pool()),
            metrics: self.metrics.clone(),
            partition: self.partition,
            partitions: self.partitions,
            shared: Arc::clone(&self.shared),
            ctx: Arc::clone(&self.ctx),
        };
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
        let Some(writer) = writer else {
            self.reservation.free();
            self.metrics.in_memory.add(1);
            let probe = self.join.right();
            let openers = (0..probe.output_partitioning().partition_count())
                .map(|i| {
                    let (probe, ctx) = (Arc::clone(probe), Arc::clone(&self.ctx));
                    Box::new(move || probe.execute(i, ctx)) as Opener
                })
                .collect();
            let plan = self.bucket_join(
                self.memory_of(buffered, true)?,
                OnceExec::plan(probe.schema(), openers),
                false,
            )?;
            return Ok(Prepared::InMemory(Mutex::new(Some(plan))));
        };
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
    fn bucket_count(&self, need: usize, min: usize) -> usize {
        let per_bucket = self.choice.budget.map_or(64 << 20, |b| (b / 4).max(1));
        need.div_ceil(per_bucket)
            .max(min)
            .next_power_of_two()
            .min(512)
    }

    /// Whether a build side of `bytes` and `rows` may be joined in memory: within `budget`
    /// and granted by the pool (the reservation keeps the room until freed).
    fn fits(&self, bytes: usize, rows: usize, budget: Option<usize>) -> bool {
        let need = join_memory(bytes, rows);
        let ok = budget.is_none_or(|b| need <= b) && self.reservation.try_resize(need).is_ok();
        if ok {
            self.metrics.peak.set_max(need);
        }
        ok
    }

    /// Whether one bucket's side fits this partition's share.
    fn side_fits(&self, side: &Side) -> bool {
        self.fits(side_bytes(side), side_rows(side), self.choice.budget)
    }

    /// A writer of buckets of the build (`build`) or probe side, at level `depth`.
    fn writer(&self, build: bool, n: usize, depth: u32) -> BucketWriter {
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

    fn reader(&self, build: bool) -> BucketReader {
        let schema = if build {
            self.join.left().schema()
        } else {
            self.join.right().schema()
        };
        BucketReader::new(&self.ctx, schema, self.metrics.spill.clone())
    }

    /// A one-partition source streaming `side` from its files.
    fn streamed(&self, side: &Side, build: bool) -> Result<Arc<dyn ExecutionPlan>> {
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
    fn with_type(&self, t: JoinType) -> Result<Job> {
        let join = self
            .join
            .builder()
            .with_type(t)
            .recompute_properties()
            .build()?;
        Ok(Job {
            join: Arc::new(join),
            choice: self.choice.clone(),
            reservation: MemoryConsumer::new(format!("GraceHashJoin[{}]", self.partition))
                .register(self.ctx.memory_pool()),
            metrics: self.metrics.clone(),
            partition: self.partition,
            partitions: self.partitions,
            shared: Arc::clone(&self.shared),
            ctx: Arc::clone(&self.ctx),
        })
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

    async fn run_join(
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

    /// Joins one bucket pair at recursion level `depth`.
    fn join_bucket<'a>(
        &'a self,
        build: Side,
        probe: Side,
        depth: u32,
        tx: &'a Output<'a>,
    ) -> BoxFuture<'a, Result<Flow>> {
        Box::pin(async move {
            let t = *self.join.join_type();
            // Skip pairs that cannot produce a row.
            let no_build_output = matches!(
                t,
                JoinType::Inner
                    | JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark
                    | JoinType::RightSemi
            );
            let no_probe_output = matches!(
                t,
                JoinType::Inner
                    | JoinType::Right
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::RightMark
                    | JoinType::LeftSemi
            );
            let (build_rows, probe_rows) = (side_rows(&build), side_rows(&probe));
            if (build_rows == 0 && (probe_rows == 0 || no_build_output))
                || (probe_rows == 0 && no_probe_output)
            {
                return Ok(Flow::Continue);
            }
            if self.side_fits(&build) {
                self.reservation.free();
                let batches = self.reader(true).load(&build).await?;
                drop(build);
                return self
                    .run_join(
                        self.memory_of(batches, true)?,
                        self.streamed(&probe, false)?,
                        false,
                        tx,
                    )
                    .await;
            }
            self.reservation.free();
            if depth >= MAX_DEPTH || build_rows <= 1 {
                return self.join_pieces(build, probe, tx).await;
            }
            // Too large: split it again with the next level's seed.
            let n = self
                .bucket_count(join_memory(side_bytes(&build), build_rows), 4)
                .min(64);
            let mut writer = self.writer(true, n, depth);
            writer
                .push_stream(self.reader(true).stream_all(&build)?)
                .await?;
            drop(build);
            let builds = writer.finish()?;
            let mut writer = self.writer(false, n, depth);
            writer
                .push_stream(self.reader(false).stream_all(&probe)?)
                .await?;
            drop(probe);
            let probes = writer.finish()?;
            self.metrics.buckets.add(n);
            self.metrics.depth.set_max(depth as usize + 1);
            for (b, p) in builds.into_iter().zip(probes) {
                // All rows in one sub-bucket: they share one hash, so one key; splitting
                // again cannot help.
                let flow = if b.rows == build_rows {
                    self.join_pieces(vec![b], vec![p], tx).await?
                } else {
                    self.join_bucket(vec![b], vec![p], depth + 1, tx).await?
                };
                if flow == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            Ok(Flow::Continue)
        })
    }

    /// Joins a bucket whose build side does not fit and cannot be split by hash.
    async fn join_pieces(&self, build: Side, probe: Side, tx: &Output<'_>) -> Result<Flow> {
        self.metrics.skewed.add(1);
        let t = *self.join.join_type();
        // The probe side fits: swap the roles.
        if self.side_fits(&probe) {
            self.reservation.free();
            let batches = self.reader(false).load(&probe).await?;
            return self
                .run_join(
                    self.streamed(&build, true)?,
                    self.memory_of(batches, false)?,
                    true,
                    tx,
                )
                .await;
        }
        self.reservation.free();
        // Load one side piece by piece and stream the other past each piece: the build side
        // for join types where build rows are independent, the probe side (swapped roles)
        // for the mirrored types.
        let build_pieces = if build_splittable(t) {
            true
        } else if build_splittable(t.swap()) {
            false
        } else if t == JoinType::Full && !self.join.contains_projection() {
            return Box::pin(self.full_join_pieces(build, probe, tx)).await;
        } else {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "grace hash join: the rows of one join key do not fit in memory on either side \
                 of a {t:?} join (build side {} rows, {} bytes; probe side {} rows, {} bytes); \
                 raise the memory limit",
                side_rows(&build),
                side_bytes(&build),
                side_rows(&probe),
                side_bytes(&probe)
            )));
        };
        let (pieces, other) = if build_pieces {
            (&build, &probe)
        } else {
            (&probe, &build)
        };
        let mut stream = self.reader(build_pieces).stream_all(pieces)?;
        let mut chunk: Vec<RecordBatch> = Vec::new();
        let (mut bytes, mut rows) = (0usize, 0usize);
        while let Some(batch) = stream.next().await.transpose()? {
            let size = get_record_batch_memory_size(&batch);
            if !chunk.is_empty()
                && !self.fits(bytes + size, rows + batch.num_rows(), self.choice.budget)
            {
                let piece = std::mem::take(&mut chunk);
                if self.join_piece(piece, build_pieces, other, tx).await? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
                (bytes, rows) = (0, 0);
            }
            bytes += size;
            rows += batch.num_rows();
            chunk.push(batch);
        }
        if !chunk.is_empty() {
            return self.join_piece(chunk, build_pieces, other, tx).await;
        }
        Ok(Flow::Continue)
    }

    /// A FULL join of a bucket neither side of which fits, in two passes of pieces: the
    /// build side LEFT JOIN the probe side (every build row, matched or not, and every
    /// match), then the probe rows that match no build row (a RIGHT ANTI join, the probe
    /// side in pieces), with NULLs for the build side's columns.
    async fn full_join_pieces(&self, build: Side, probe: Side, tx: &Output<'_>) -> Result<Flow> {
        let schema = self.join.schema();
        let left = self.with_type(JoinType::Left)?;
        if left
            .join_pieces(
                build.clone(),
                probe.clone(),
                &Output::Cast(&schema, tx.sender()),
            )
            .await?
            == Flow::Stop
        {
            return Ok(Flow::Stop);
        }
        let anti = self.with_type(JoinType::RightAnti)?;
        anti.join_pieces(build, probe, &Output::PadLeft(&schema, tx.sender()))
            .await
    }

    /// Joins a piece of one side, loaded, against all of `other`, streamed.
    async fn join_piece(
        &self,
        piece: Vec<RecordBatch>,
        build_pieces: bool,
        other: &Side,
        tx: &Output<'_>,
    ) -> Result<Flow> {
        self.reservation.free();
        let piece = self.memory_of(piece, build_pieces)?;
        let streamed = self.streamed(other, !build_pieces)?;
        if build_pieces {
            self.run_join(piece, streamed, false, tx).await
        } else {
            self.run_join(streamed, piece, true, tx).await
        }
    }

    /// A one-partition source of build (`build`) or probe rows held in memory, read once:
    /// the join that loads them copies them into its hash table, and the originals go as
    /// they are read rather than living on beside the copy.
    fn memory_of(&self, batches: Vec<RecordBatch>, build: bool) -> Result<Arc<dyn ExecutionPlan>> {
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

/// Opens one partition's stream, when it is first polled.
type Opener = Box<dyn FnOnce() -> Result<SendableRecordBatchStream> + Send>;

/// A leaf plan whose partitions are streams opened on first poll, each once: the probe
/// side of the in-memory join (the child's partitions), or a bucket's rows.
struct OnceExec {
    openers: Vec<Mutex<Option<Opener>>>,
    props: Arc<PlanProperties>,
    schema: SchemaRef,
}

impl OnceExec {
    fn plan(schema: SchemaRef, openers: Vec<Opener>) -> Arc<dyn ExecutionPlan> {
        Arc::new(OnceExec {
            props: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&schema)),
                Partitioning::UnknownPartitioning(openers.len()),
                EmissionType::Incremental,
                Boundedness::Bounded,
            )),
            openers: openers.into_iter().map(|o| Mutex::new(Some(o))).collect(),
            schema,
        })
    }
}

impl fmt::Debug for OnceExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GraceJoinInput")
    }
}

impl DisplayAs for OnceExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "GraceJoinInput")
    }
}

impl ExecutionPlan for OnceExec {
    fn name(&self) -> &str {
        "GraceJoinInput"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    crate::physical::leaf_plan_methods!();

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let opener = self
            .openers
            .get(partition)
            .and_then(|o| o.lock().ok().and_then(|mut o| o.take()))
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "grace join: input partition {partition} opened twice"
                ))
            })?;
        Ok(Box::pin(LazyStream {
            opener: Some(opener),
            inner: None,
            schema: Arc::clone(&self.schema),
        }))
    }
}

/// Opens its stream on first poll.
struct LazyStream {
    opener: Option<Opener>,
    inner: Option<SendableRecordBatchStream>,
    schema: SchemaRef,
}

impl Stream for LazyStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(open) = self.opener.take() {
            match open() {
                Ok(s) => self.inner = Some(s),
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
        }
        match self.inner.as_mut() {
            Some(s) => s.poll_next_unpin(cx),
            None => Poll::Ready(None),
        }
    }
}

impl RecordBatchStream for LazyStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
