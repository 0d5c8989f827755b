//! An aggregation a query computes twice over the same input (a common table expression or
//! a view it reads twice, TPC-H q15's `revenue0`) computed once, its result kept (in memory
//! under the pool, spilled past it) and read by each place that uses it.
//!
//! DataFusion plans each reference of a CTE as a subplan of its own, so the same table is
//! scanned and aggregated once per reference. Two rules share them:
//!
//! 1. [`MarkRepeatedSubplans`], before DataFusion pushes the joins' dynamic filters into
//!    scans for the last time: each aggregation (a final one, whose output comes once its
//!    input is read whole) that appears more than once with the same input, expressions and
//!    schema is put under a [`SharedSubplanExec`] of its group. The mark takes no filter
//!    from above, so no copy is narrowed by a join around it that the other copies do not
//!    have; filters within the copies are pushed as before.
//! 2. [`ShareRepeatedSubplans`], once the plan is final: the first mark of each group keeps
//!    its subplan and computes it once for all; the others become [`SharedReadExec`]
//!    leaves that read that result.
//!
//! Copies are the same only if their inputs are the same Parquet or CSV files (same paths,
//! ranges, schema, projection, predicate and reading options) or the same in-memory batches;
//! a subplan over any other source (a JSON scan, a database table, the quarantine scan), or
//! with a volatile expression, is never shared.
//!
//! The first read of the result computes all its partitions, each in a task of its own (so
//! a reader that stops being polled holds no one up); each partition is dropped once every
//! copy is done with it, and a read after that computes the result again.
//!
//! Only operators whose display names everything that decides their rows are compared (see
//! [`PRINTED_WHOLE`]); a subplan with a limit, a scalar subquery or a window is computed
//! once per reference, and so is one that could not be computed again from a reset copy
//! (a `min`/`max` aggregation's dynamic filter keeps its bound through a reset), and any in
//! a query with a recursive CTE (which runs its parts again).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::runtime::SpawnedTask;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, Statistics, internal_err};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::{CsvSource, FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::spill_file::SpillFile;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::scalar_subquery::ScalarSubqueryExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coop::cooperative;
use datafusion::physical_plan::execution_plan::{EmissionType, SchedulingType, reset_plan_states};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet, SpillMetrics,
};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream, SpillManager,
};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};

use crate::physical::SHARED_READ;

/// Puts each repeated final aggregation under a [`SharedSubplanExec`] naming its group.
#[derive(Debug, Default)]
pub(crate) struct MarkRepeatedSubplans;

impl PhysicalOptimizerRule for MarkRepeatedSubplans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A recursive query runs its recursive term again and again from reset copies, each
        // of which would compute its own result: nothing is shared in one.
        if plan.exists(|node| Ok(node.name() == "RecursiveQueryExec"))? {
            return Ok(plan);
        }
        let mut prints = Prints::default();
        prints.of(&plan);
        let mut groups: HashMap<String, usize> = HashMap::new();
        plan.transform_down(|node| {
            let print = match prints.by_node.get(&key(&node)) {
                Some(Some(print)) if prints.seen[print] > 1 && is_final_aggregate(&node) => {
                    print.clone()
                }
                _ => return Ok(Transformed::no(node)),
            };
            let next = groups.len();
            let group = *groups.entry(print.clone()).or_insert(next);
            let mark = SharedSubplanExec::mark(node, group, prints.seen[&print]);
            // The copy's subplan is the group's: nothing under it is marked again.
            Ok(Transformed::new(
                Arc::new(mark) as _,
                true,
                TreeNodeRecursion::Jump,
            ))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_mark_repeated_subplans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Turns each group of marks into one computing [`SharedSubplanExec`] and
/// [`SharedReadExec`]s of its result; a mark left alone in its group is removed.
#[derive(Debug, Default)]
pub(crate) struct ShareRepeatedSubplans;

impl PhysicalOptimizerRule for ShareRepeatedSubplans {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut copies: HashMap<usize, usize> = HashMap::new();
        let mut unshared = std::collections::HashSet::new();
        plan.apply(|node| {
            if let Some(mark) = node.downcast_ref::<SharedSubplanExec>() {
                *copies.entry(mark.group).or_default() += 1;
                // (A result that could not be computed again is not shared.)
                if keeps_filters_across_runs(&mark.input) {
                    unshared.insert(mark.group);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        let mut results: HashMap<usize, Arc<Materialized>> = HashMap::new();
        plan.transform_down(|node| {
            let Some(mark) = node.downcast_ref::<SharedSubplanExec>() else {
                return Ok(Transformed::no(node));
            };
            let n = copies.get(&mark.group).copied().unwrap_or(0);
            if n < 2 || unshared.contains(&mark.group) {
                return Ok(Transformed::yes(Arc::clone(&mark.input)));
            }
            if let Some(result) = results.get(&mark.group) {
                let read = SharedReadExec::new(Arc::clone(result), mark.group, n);
                return Ok(Transformed::new(
                    Arc::new(read) as _,
                    true,
                    TreeNodeRecursion::Jump,
                ));
            }
            let result = Arc::new(Materialized::new(Arc::clone(&mark.input), n));
            results.insert(mark.group, Arc::clone(&result));
            let mut first = SharedSubplanExec::mark(Arc::clone(&mark.input), mark.group, n);
            first.result = Some(result);
            Ok(Transformed::yes(Arc::new(first) as _))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_share_repeated_subplans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` is an aggregation whose output comes once its input is read whole, so
/// keeping the output costs no pipelining.
fn is_final_aggregate(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<AggregateExec>().is_some_and(|a| {
        matches!(
            a.mode(),
            AggregateMode::Final
                | AggregateMode::FinalPartitioned
                | AggregateMode::Single
                | AggregateMode::SinglePartitioned
        )
    })
}

/// A node's identity within one plan.
fn key(plan: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(plan) as *const () as usize
}

/// Each subplan's print (equal prints: the same rows), or `None` for a subplan that must
/// not be shared, and how many times each print occurs.
#[derive(Default)]
struct Prints {
    by_node: HashMap<usize, Option<String>>,
    seen: HashMap<String, usize>,
}

impl Prints {
    fn of(&mut self, plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
        let children: Vec<Option<String>> =
            plan.children().into_iter().map(|c| self.of(c)).collect();
        let print = if !printable(plan) {
            None
        } else if children.is_empty() {
            leaf_print(plan)
        } else if children.iter().all(Option::is_some) && PRINTED_WHOLE.contains(&plan.name()) {
            let mut print = format!(
                "{}({}; {:?}; {:?}; {})[",
                plan.name(),
                Verbose(plan.as_ref()),
                plan.schema(),
                plan.output_partitioning(),
                expressions(plan),
            );
            for child in children.into_iter().flatten() {
                print.push_str(&child);
                print.push(',');
            }
            print.push(']');
            Some(print)
        } else {
            None
        };
        // A scalar subquery's value shows as a placeholder until it runs, the same for any
        // subquery (in a scan's predicate too).
        let print = print.filter(|p| !p.contains("scalar_subquery"));
        if let Some(print) = &print {
            *self.seen.entry(print.clone()).or_default() += 1;
        }
        self.by_node.insert(key(plan), print.clone());
        print
    }
}

/// A leaf's print: a Parquet or CSV scan's files, ranges, schema, projection, predicate and
/// reading options; an in-memory scan's batches (by address: the same batches, not equal ones); `None` for any
/// other leaf, whose display may not tell what it reads.
fn leaf_print(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let source = plan.downcast_ref::<DataSourceExec>()?.data_source();
    if let Some(files) = source.downcast_ref::<FileScanConfig>() {
        // (Formats whose source prints every option it reads with.)
        let source = files.file_source();
        let options = match (
            source.downcast_ref::<ParquetSource>(),
            source.downcast_ref::<CsvSource>(),
        ) {
            (Some(parquet), _) => format!("{parquet:?}"),
            (_, Some(csv)) => format!("{csv:?}"),
            _ => return None,
        };
        return Some(format!("{files:?}; {:?}; {options}", files.file_schema()));
    }
    let memory = source.downcast_ref::<MemorySourceConfig>()?;
    let mut print = format!("memory({}; {:?}", Verbose(plan.as_ref()), plan.schema());
    for partition in memory.partitions() {
        print.push('[');
        for batch in partition {
            for column in batch.columns() {
                print.push_str(&format!(
                    "{:p}+{}:{},",
                    Arc::as_ptr(column) as *const (),
                    column.offset(),
                    column.len()
                ));
            }
        }
        print.push(']');
    }
    Some(print)
}

/// The operators whose verbose display names everything that decides their rows (equal
/// displays over equal inputs: equal rows). A subplan with any other operator (a window, a
/// nested-loop join) is not shared.
const PRINTED_WHOLE: [&str; 14] = [
    "AggregateExec",
    "CoalesceBatchesExec",
    "CoalescePartitionsExec",
    "CompactViewsExec",
    "CooperativeExec",
    "CrossJoinExec",
    "FilterExec",
    "GraceHashJoinExec",
    "HashJoinExec",
    "ProjectionExec",
    "RepartitionExec",
    "SortExec",
    "SortPreservingMergeExec",
    "UnionExec",
];

/// Whether `plan` itself (not its inputs) can be told by its print: no limit (a top-k
/// aggregation's direction is not displayed), no volatile expression, no scalar subquery.
fn printable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.fetch().is_some()
        || plan
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| a.limit_options().is_some())
    {
        return false;
    }
    let mut ok = true;
    let _ = plan.apply_expressions(&mut |e: &Arc<dyn PhysicalExpr>| {
        ok &= !e
            .exists(
                |e| Ok(e.is_volatile_node() || e.downcast_ref::<ScalarSubqueryExpr>().is_some()),
            )
            .unwrap_or(true);
        Ok(TreeNodeRecursion::Continue)
    });
    ok
}

/// `plan`'s own expressions (with their columns' indexes, which a display by name may not
/// show) and, for a hash join, which input column each column of its filter is.
fn expressions(plan: &Arc<dyn ExecutionPlan>) -> String {
    let mut shown = String::new();
    let _ = plan.apply_expressions(&mut |e: &Arc<dyn PhysicalExpr>| {
        shown.push_str(&format!("{e}, "));
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(filter) = plan
        .downcast_ref::<HashJoinExec>()
        .and_then(|join| join.filter())
    {
        shown.push_str(&format!("{:?}", filter.column_indices()));
    }
    shown
}

/// Whether `plan` holds an operator whose dynamic filter, once updated by a run, would
/// wrongly narrow another run of a reset copy (an aggregation's min/max bound keeps its last
/// value through a reset). A hash join's filter is set once its build side is complete, and
/// is then still true of a run over the same rows.
fn keeps_filters_across_runs(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|node| {
        Ok(!node.dynamic_expressions_produced().is_empty()
            && !matches!(node.name(), "HashJoinExec" | "GraceHashJoinExec"))
    })
    .unwrap_or(true)
}

/// A plan node shown alone, in DataFusion's verbose format.
struct Verbose<'a>(&'a dyn ExecutionPlan);

impl fmt::Display for Verbose<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt_as(DisplayFormatType::Verbose, f)
    }
}

/// One copy of a repeated subplan. Marked (no `result`), it passes its input's rows on and
/// takes no filter from above. The first of its group once shared (with `result`), it
/// computes its input once for every copy.
#[derive(Debug)]
pub(crate) struct SharedSubplanExec {
    input: Arc<dyn ExecutionPlan>,
    group: usize,
    copies: usize,
    result: Option<Arc<Materialized>>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedSubplanExec {
    fn mark(input: Arc<dyn ExecutionPlan>, group: usize, copies: usize) -> Self {
        SharedSubplanExec {
            props: result_properties(&input),
            input,
            group,
            copies,
            result: None,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

/// The properties of a subplan's kept result: its rows, order and partitioning, all at once
/// when computed.
fn result_properties(input: &Arc<dyn ExecutionPlan>) -> Arc<PlanProperties> {
    Arc::new(
        PlanProperties::new(
            input.equivalence_properties().clone(),
            input.output_partitioning().clone(),
            EmissionType::Final,
            input.boundedness(),
        )
        .with_scheduling_type(SchedulingType::Cooperative),
    )
}

impl DisplayAs for SharedSubplanExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        match self.result {
            Some(_) => write!(
                f,
                "SharedSubplanExec: group={}, computed once for {} readers",
                self.group, self.copies
            ),
            None => write!(
                f,
                "SharedSubplanExec: group={}, copy of {}",
                self.group, self.copies
            ),
        }
    }
}

impl ExecutionPlan for SharedSubplanExec {
    fn name(&self) -> &str {
        "SharedSubplanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let (Some(input), true) = (children.pop(), children.is_empty()) else {
            return internal_err!("SharedSubplanExec takes one input");
        };
        if Arc::ptr_eq(&input, &self.input) {
            return Ok(self);
        }
        // A new input is computed for this copy alone: the readers keep the result of the
        // input they were made for.
        let mut copy = SharedSubplanExec::mark(input, self.group, self.copies);
        if self.result.is_some() {
            copy.result = Some(Arc::new(Materialized::new(Arc::clone(&copy.input), 1)));
        }
        Ok(Arc::new(copy))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        match &self.result {
            Some(result) => Ok(result.read(partition, context, &self.metrics)),
            None => self.input.execute(partition, context),
        }
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        match input_stats.first() {
            Some(stats) => Ok(Arc::clone(stats)),
            None => Ok(Arc::new(Statistics::new_unknown(&self.schema()))),
        }
    }
}

/// A leaf that reads the result a group's first [`SharedSubplanExec`] keeps (computing it,
/// if it is the first to ask).
#[derive(Debug)]
pub(crate) struct SharedReadExec {
    result: Arc<Materialized>,
    group: usize,
    copies: usize,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SharedReadExec {
    fn new(result: Arc<Materialized>, group: usize, copies: usize) -> Self {
        SharedReadExec {
            props: result_properties(&result.plan),
            result,
            group,
            copies,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for SharedReadExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "{SHARED_READ}: group={}, one of {} readers",
            self.group, self.copies
        )
    }
}

impl ExecutionPlan for SharedReadExec {
    fn name(&self) -> &str {
        SHARED_READ
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    crate::physical::leaf_plan_methods!();

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(self.result.read(partition, context, &self.metrics))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A subplan's result, kept per partition for the copies that read it.
///
/// The first read of any partition starts a run: every partition computed at once, each in a
/// task of its own, so a partition never waits on one no reader has asked for yet (a
/// partitioned join inside waits for all its partitions' build sides), and a reader that
/// stops being polled holds no one up. A partition is dropped once each copy's stream of it
/// is done (read whole, or dropped unread); a read after that starts a new run, on a reset
/// copy of the plan (a plan's partition cannot be executed twice).
struct Materialized {
    plan: Arc<dyn ExecutionPlan>,
    /// Reads of each partition per run: one per copy.
    reads: usize,
    runs: std::sync::Mutex<Runs>,
}

struct Runs {
    /// Runs started so far; a reader's claim names the run it read from.
    run: usize,
    /// Each partition's rows (as they will be once computed), until its last reader is done.
    parts: Vec<Option<Part>>,
    /// Readers of each partition done before any run started: fewer reads for the next run.
    skipped: Vec<usize>,
}

type Rows = Shared<BoxFuture<'static, std::result::Result<Arc<Kept>, Arc<DataFusionError>>>>;

struct Part {
    rows: Rows,
    readers_left: usize,
}

/// One partition's rows: in memory, or (once the pool refused more) all in a spill file.
struct Kept {
    batches: Vec<RecordBatch>,
    spilled: Option<Arc<dyn SpillFile>>,
    /// Holds the pool's memory for `batches` while they are kept.
    _memory: MemoryReservation,
}

impl fmt::Debug for Materialized {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Materialized")
            .field("reads", &self.reads)
            .finish()
    }
}

impl Materialized {
    fn new(plan: Arc<dyn ExecutionPlan>, reads: usize) -> Self {
        let partitions = plan.output_partitioning().partition_count();
        Materialized {
            plan,
            reads,
            runs: std::sync::Mutex::new(Runs {
                run: 0,
                parts: (0..partitions).map(|_| None).collect(),
                skipped: vec![0; partitions],
            }),
        }
    }

    fn runs(&self) -> std::sync::MutexGuard<'_, Runs> {
        // (A panic while holding the lock leaves the counts as they were: still usable.)
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stream of the rows of `partition`, which starts a run if it is not kept.
    fn read(
        self: &Arc<Self>,
        partition: usize,
        context: Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
    ) -> SendableRecordBatchStream {
        let schema = self.plan.schema();
        let mut claim = Claim {
            of: Arc::clone(self),
            partition,
            run: None,
        };
        let baseline = BaselineMetrics::new(metrics, partition);
        let metrics = metrics.clone();
        let stream = futures::stream::once(async move {
            let rows = claim
                .of
                .rows(partition, &context, &metrics, &mut claim.run)?;
            let kept = rows.await.map_err(DataFusionError::Shared)?;
            let spill = SpillMetrics::new(&metrics, partition);
            kept_rows(kept, claim, &context, spill)
        })
        .try_flatten()
        .inspect_ok(move |batch| baseline.record_output(batch.num_rows()))
        .boxed();
        Box::pin(cooperative(RecordBatchStreamAdapter::new(schema, stream)))
    }

    /// `partition`'s rows, from the current run, or from a run started for them; `run` is
    /// set to the run read from.
    fn rows(
        &self,
        partition: usize,
        context: &Arc<TaskContext>,
        metrics: &ExecutionPlanMetricsSet,
        run: &mut Option<usize>,
    ) -> Result<Rows> {
        let mut runs = self.runs();
        if runs.parts.get(partition).is_none() {
            return internal_err!("shared subplan: no partition {partition}");
        }
        if runs.parts[partition].is_none() {
            let plan = if runs.run == 0 {
                Arc::clone(&self.plan)
            } else {
                reset_plan_states(Arc::clone(&self.plan))?
            };
            runs.run += 1;
            for p in 0..runs.parts.len() {
                let task = SpawnedTask::spawn(compute(
                    Arc::clone(&plan),
                    p,
                    Arc::clone(context),
                    SpillMetrics::new(metrics, p),
                ));
                let rows = async move {
                    match task.join().await {
                        Ok(kept) => kept.map(Arc::new).map_err(Arc::new),
                        Err(e) => Err(Arc::new(DataFusionError::Execution(format!(
                            "computing a shared subplan's partition {p}: {e}"
                        )))),
                    }
                };
                let readers_left = self.reads.saturating_sub(runs.skipped[p]);
                runs.skipped[p] = 0;
                // (A partition every copy is done with is computed, for a partitioned join
                // inside waits for all, but not kept.)
                runs.parts[p] = (readers_left > 0 || p == partition).then(|| Part {
                    rows: rows.boxed().shared(),
                    readers_left: readers_left.max(1),
                });
            }
        }
        *run = Some(runs.run);
        match &runs.parts[partition] {
            Some(part) => Ok(part.rows.clone()),
            None => internal_err!("shared subplan: partition {partition} not started"),
        }
    }

    /// One copy is done with `partition` (of `run`, if it read from one).
    fn release(&self, partition: usize, run: Option<usize>) {
        let mut runs = self.runs();
        let current = runs.run;
        let Some(slot) = runs.parts.get_mut(partition) else {
            return;
        };
        match (slot.as_mut(), run) {
            (Some(part), Some(run)) if run == current => {
                part.readers_left = part.readers_left.saturating_sub(1)
            }
            // Done unread: one read fewer for the run under way, or for the next.
            (Some(part), None) => part.readers_left = part.readers_left.saturating_sub(1),
            (None, None) => {
                let skipped = &mut runs.skipped[partition];
                *skipped = (*skipped + 1).min(self.reads);
                return;
            }
            _ => return,
        }
        if slot.as_ref().is_some_and(|part| part.readers_left == 0) {
            *slot = None;
        }
    }
}

/// A copy's read of one partition, released when its stream is dropped (read or not).
struct Claim {
    of: Arc<Materialized>,
    partition: usize,
    run: Option<usize>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.of.release(self.partition, self.run);
    }
}

/// The rows of `kept` as a stream that holds them, and `claim`, until it is dropped.
fn kept_rows(
    kept: Arc<Kept>,
    claim: Claim,
    context: &TaskContext,
    spill: SpillMetrics,
) -> Result<SendableRecordBatchStream> {
    let schema = claim.of.plan.schema();
    let rows = match &kept.spilled {
        Some(file) => spill_manager(context, Arc::clone(&schema), spill)
            .read_spill_as_stream(Arc::clone(file), None)?,
        None => {
            let kept = Arc::clone(&kept);
            let batches = (0..kept.batches.len()).map(move |i| Ok(kept.batches[i].clone()));
            Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&schema),
                futures::stream::iter(batches),
            ))
        }
    };
    let held = rows.map(move |batch| {
        let _ = (&kept, &claim);
        batch
    });
    Ok(Box::pin(RecordBatchStreamAdapter::new(schema, held)))
}

/// Runs `partition` of `plan` to the end, keeping its rows in memory as long as the pool
/// grants it, then moving them all to a spill file.
async fn compute(
    plan: Arc<dyn ExecutionPlan>,
    partition: usize,
    context: Arc<TaskContext>,
    spill: SpillMetrics,
) -> Result<Kept> {
    let schema = plan.schema();
    let mut rows = plan.execute(partition, Arc::clone(&context))?;
    let memory = MemoryConsumer::new(format!("SharedSubplan[{partition}]"))
        .with_can_spill(true)
        .register(context.memory_pool());
    let manager = spill_manager(&context, schema, spill);
    let mut batches = Vec::new();
    let mut file = None;
    while let Some(batch) = rows.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        if file.is_none() && memory.try_grow(kept_size(&batch)).is_err() {
            let mut spilling = manager.create_in_progress_file("SharedSubplan")?;
            for kept in batches.drain(..) {
                spilling.append_batch(&kept)?;
            }
            memory.free();
            file = Some(spilling);
        }
        match &mut file {
            Some(spilling) => {
                spilling.append_batch(&batch)?;
            }
            None => batches.push(batch),
        }
    }
    let spilled = match &mut file {
        Some(spilling) => spilling.finish()?,
        None => None,
    };
    Ok(Kept {
        batches,
        spilled,
        _memory: memory,
    })
}

/// The bytes a kept batch holds: its own slice of each buffer (an aggregation emits slices
/// of one larger output, and counting whole buffers would count that output once a slice).
fn kept_size(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

fn spill_manager(context: &TaskContext, schema: SchemaRef, spill: SpillMetrics) -> SpillManager {
    SpillManager::new(context.runtime_env(), spill, schema)
        .with_compression_type(context.session_config().spill_compression())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::source::DataSourceExec;
    use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use rand::{Rng, SeedableRng};

    use super::{Materialized, SharedReadExec, SharedSubplanExec};

    const FACTS: usize = 120_000;
    const KEYS: i64 = 30_000;

    /// Writes `fact(k, v)` (`FACTS` rows, `k` in 0..`KEYS`, `v` in -1000..1000), `other`
    /// (the same shape, other rows) and `dim(k, w)` (each key once, `w` in 0..1000) as Parquet
    /// into `dir`, and returns `fact` and `dim`.
    fn write_tables(dir: &std::path::Path, seed: u64) -> (RecordBatch, RecordBatch) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut facts = || {
            let k = Int64Array::from_iter_values((0..FACTS).map(|_| rng.random_range(0..KEYS)));
            let v = Int64Array::from_iter_values((0..FACTS).map(|_| rng.random_range(-1000..1000)));
            RecordBatch::try_from_iter(vec![("k", Arc::new(k) as _), ("v", Arc::new(v) as _)])
                .unwrap()
        };
        let (fact, other) = (facts(), facts());
        let w = Int64Array::from_iter_values((0..KEYS).map(|_| rng.random_range(0..1000)));
        let dim = RecordBatch::try_from_iter(vec![
            ("k", Arc::new(Int64Array::from_iter_values(0..KEYS)) as _),
            ("w", Arc::new(w) as _),
        ])
        .unwrap();
        let csv = std::fs::File::create(dir.join("fact.csv")).unwrap();
        datafusion::arrow::csv::Writer::new(csv)
            .write(&fact)
            .unwrap();
        for (name, batch) in [("fact", &fact), ("other", &other), ("dim", &dim)] {
            let file = std::fs::File::create(dir.join(format!("{name}.parquet"))).unwrap();
            let props = WriterProperties::builder()
                .set_max_row_group_row_count(Some(30_000))
                .build();
            let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(props)).unwrap();
            writer.write(batch).unwrap();
            writer.close().unwrap();
        }
        (fact, dim)
    }

    /// A session over the tables in `dir` with sluice's physical rules (`sluice`) or
    /// DataFusion's alone, under a pool of `pool` bytes if given.
    async fn session(dir: &std::path::Path, sluice: bool, pool: Option<usize>) -> SessionContext {
        let pools = pool.map(|size| (size, Arc::new(FairSpillPool::new(size)) as _));
        session_over(dir, sluice, pools).await
    }

    /// As [`session`], over `pool` (its size and the pool) if given.
    async fn session_over(
        dir: &std::path::Path,
        sluice: bool,
        pool: Option<(usize, Arc<dyn MemoryPool>)>,
    ) -> SessionContext {
        let size = pool.as_ref().map(|(size, _)| *size);
        let mut state = super::super::testing::state(pool);
        if sluice {
            state = super::super::testing::with_physical_rules(state, size);
        }
        let ctx = SessionContext::new_with_state(state.build());
        let csv = dir.join("fact.csv");
        ctx.register_csv("fact_csv", csv.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        for name in ["fact", "other", "dim"] {
            let path = dir.join(format!("{name}.parquet"));
            ctx.register_parquet(name, path.to_str().unwrap(), ParquetReadOptions::default())
                .await
                .unwrap();
        }
        ctx
    }

    /// `sql`'s answer in `ctx` as a table, and the plan that gave it.
    async fn run(ctx: &SessionContext, sql: &str) -> (Arc<dyn ExecutionPlan>, String) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        (plan, pretty_format_batches(&batches).unwrap().to_string())
    }

    /// What `plan` has of the sharing: groups computed once, readers, rows its scans passed
    /// on and bytes its shared results spilled.
    #[derive(Debug, Default, PartialEq)]
    struct Shape {
        computed_once: usize,
        readers: usize,
        scanned: usize,
        spilled: usize,
    }

    fn shape(plan: &Arc<dyn ExecutionPlan>) -> Shape {
        let mut shape = Shape::default();
        let mut stack = vec![Arc::clone(plan)];
        while let Some(node) = stack.pop() {
            stack.extend(node.children().into_iter().cloned());
            let spilled = || {
                node.metrics()
                    .and_then(|m| m.spilled_bytes())
                    .unwrap_or_default()
            };
            if let Some(mark) = node.downcast_ref::<SharedSubplanExec>() {
                assert!(mark.result.is_some(), "a mark left in the final plan");
                shape.computed_once += 1;
                shape.spilled += spilled();
            } else if node.is::<SharedReadExec>() {
                shape.readers += 1;
                shape.spilled += spilled();
            } else if node.is::<DataSourceExec>() {
                shape.scanned += node.metrics().and_then(|m| m.output_rows()).unwrap_or(0);
            }
        }
        shape
    }

    /// Per key of `fact`: count and sum of `v`.
    fn groups(fact: &RecordBatch) -> BTreeMap<i64, (i64, i64)> {
        let k = fact.column(0).as_primitive::<Int64Type>().values();
        let v = fact.column(1).as_primitive::<Int64Type>().values();
        let mut groups = BTreeMap::new();
        for (k, v) in k.iter().zip(v.iter()) {
            let g: &mut (i64, i64) = groups.entry(*k).or_default();
            g.0 += 1;
            g.1 += v;
        }
        groups
    }

    /// A CTE read twice (TPC-H q15's shape, and a self-join) is computed once: the fact table
    /// is scanned once, one copy computes, the other reads. The answers are the rows' own
    /// (computed here) and DataFusion's, with and without a memory limit.
    #[tokio::test]
    async fn a_cte_read_twice_is_computed_once_and_answers_as_before() {
        for seed in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let (fact, _) = write_tables(dir.path(), seed);
            let groups = groups(&fact);
            let max = groups.values().map(|g| g.1).max().unwrap();
            let top: Vec<i64> = groups
                .iter()
                .filter(|(_, g)| g.1 == max)
                .map(|(k, _)| *k)
                .collect();
            let pairs = groups
                .iter()
                .filter(|(k, g)| g.0 > 5 && groups.contains_key(&(**k - 1)))
                .count();
            let theirs = session(dir.path(), false, None).await;
            for pool in [None, Some(4 << 20)] {
                let ours = session(dir.path(), true, pool).await;
                let case = format!("seed {seed}, pool {pool:?}");

                for table in ["fact", "fact_csv"] {
                    let q15 = format!(
                        "WITH r AS (SELECT k, sum(v) AS total FROM {table} GROUP BY k) \
                     SELECT k, total FROM r WHERE total = (SELECT max(total) FROM r) \
                     ORDER BY k"
                    );
                    let q15 = q15.as_str();
                    let (plan, got) = run(&ours, q15).await;
                    assert_eq!(got, run(&theirs, q15).await.1, "{case}\n{q15}");
                    let keys: Vec<String> = top.iter().map(|k| format!("| {k} ")).collect();
                    for k in &keys {
                        assert!(got.contains(k.as_str()), "{case}: {got} lacks {k}");
                    }
                    assert_eq!(got.lines().count(), 4 + top.len(), "{case}: {got}");
                    let s = shape(&plan);
                    assert_eq!(
                        (s.computed_once, s.readers),
                        (1, 1),
                        "{case}: {s:?}\n{}",
                        datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
                    );
                    assert_eq!(s.scanned, FACTS, "{case}: {table} read once");
                }

                let joined = "WITH r AS (SELECT k, count(*) AS n, sum(v) AS s FROM fact GROUP BY k) \
                              SELECT count(*) AS pairs, sum(a.s - b.s + b.n) AS d FROM r a \
                              JOIN r b ON a.k = b.k + 1 WHERE a.n > 5";
                let (plan, got) = run(&ours, joined).await;
                assert_eq!(got, run(&theirs, joined).await.1, "{case}\n{joined}");
                assert!(got.contains(&format!("| {pairs} ")), "{case}: {got}");
                let s = shape(&plan);
                assert_eq!((s.computed_once, s.readers), (1, 1), "{case}: {s:?}");
                assert_eq!(s.scanned, FACTS, "{case}: fact read once");
            }
        }
    }

    /// Aggregations that look alike but read other rows are not shared: two tables of one
    /// shape, a volatile expression. A shared one read under two joins with dimension filters
    /// that drop different keys gives each join its own rows (neither join's filter reaches
    /// the shared scan). Every answer is DataFusion's.
    #[tokio::test]
    async fn aggregations_that_differ_are_not_shared_and_a_shared_one_takes_no_join_filter() {
        let dir = tempfile::tempdir().unwrap();
        let (fact, dim) = write_tables(dir.path(), 7);
        let (ours, theirs) = (
            session(dir.path(), true, None).await,
            session(dir.path(), false, None).await,
        );
        let not_shared = [
            "SELECT k, sum(v) AS s FROM fact GROUP BY k \
             UNION ALL SELECT k, sum(v) AS s FROM other GROUP BY k ORDER BY k, s",
            "WITH r AS (SELECT k, sum(v) AS s FROM fact WHERE v > -900 GROUP BY k) \
             SELECT a.k, a.s FROM r a JOIN (SELECT k, sum(v) AS s FROM fact GROUP BY k) b \
             ON a.k = b.k WHERE a.s = b.s ORDER BY a.k",
        ];
        for sql in not_shared {
            let (plan, got) = run(&ours, sql).await;
            assert_eq!(got, run(&theirs, sql).await.1, "{sql}");
            assert_eq!(shape(&plan).computed_once, 0, "{sql}");
        }
        // random() differs per copy: counting the keys whose two draws agree must not see
        // one draw twice.
        let volatile = "WITH r AS (SELECT k, sum(v + floor(random() * 1000000)) AS s FROM fact \
                        GROUP BY k) SELECT count(*) AS same FROM r a JOIN r b ON a.k = b.k \
                        WHERE a.s = b.s";
        let (plan, got) = run(&ours, volatile).await;
        assert_eq!(shape(&plan).computed_once, 0, "{volatile}");
        let same: i64 = got
            .lines()
            .nth(3)
            .and_then(|l| l.trim_matches(|c| c == '|' || c == ' ').parse().ok())
            .unwrap();
        assert!(same < KEYS / 10, "{got}");

        // Each side of the union joins the shared result with other dimension rows; a
        // join's filter in the shared scan would drop the other side's keys.
        let filtered = "WITH r AS (SELECT k, sum(v) AS s FROM fact GROUP BY k) \
                        SELECT 'low' AS side, count(*) AS n, sum(r.s) AS total FROM r \
                        JOIN dim d ON r.k = d.k WHERE d.w < 3 \
                        UNION ALL \
                        SELECT 'high', count(*), sum(r.s) FROM r JOIN dim d ON r.k = d.k \
                        WHERE d.w > 995 ORDER BY side";
        let (plan, got) = run(&ours, filtered).await;
        assert_eq!(got, run(&theirs, filtered).await.1, "{filtered}");
        let s = shape(&plan);
        assert_eq!((s.computed_once, s.readers), (1, 1), "{s:?}");
        let groups = groups(&fact);
        let w = dim.column(1).as_primitive::<Int64Type>().values();
        for (side, keep) in [
            ("low", (|w| w < 3) as fn(i64) -> bool),
            ("high", |w| w > 995),
        ] {
            let (n, total) = groups
                .iter()
                .filter(|(k, _)| keep(w[**k as usize]))
                .fold((0, 0), |(n, t), (_, g)| (n + 1, t + g.1));
            let row = format!("| {side:<4} | {n} ");
            assert!(got.contains(&row), "{got} lacks {row}");
            assert!(got.contains(&format!("| {total} ")), "{got} lacks {total}");
        }
    }

    /// A kept result larger than the pool grants spills, each of its readers gets every row
    /// in order, the memory is given back once both have read it, and a third read computes
    /// it again (from a reset copy of the plan).
    #[tokio::test]
    async fn a_kept_result_over_the_pool_spills_and_is_dropped_after_its_last_reader() {
        use datafusion::datasource::memory::MemorySourceConfig;
        use datafusion::execution::TaskContext;
        use datafusion::execution::memory_pool::MemoryPool;
        use datafusion::physical_plan::common::collect as drain;
        use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;

        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let partitions: Vec<Vec<RecordBatch>> = (0..2)
            .map(|_| {
                (0..40)
                    .map(|_| {
                        let v = Int64Array::from_iter_values(
                            (0..1000).map(|_| rng.random_range(0..1_000_000)),
                        );
                        RecordBatch::try_from_iter(vec![("v", Arc::new(v) as _)]).unwrap()
                    })
                    .collect()
            })
            .collect();
        let schema = partitions[0][0].schema();
        let plan: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&partitions, schema, None).unwrap();
        for (pool, spills) in [(64 << 10, true), (64 << 20, false)] {
            let pool = Arc::new(FairSpillPool::new(pool));
            let runtime = RuntimeEnvBuilder::new()
                .with_memory_pool(Arc::clone(&pool) as _)
                .build_arc()
                .unwrap();
            let ctx = Arc::new(TaskContext::default().with_runtime(runtime));
            let kept = Arc::new(Materialized::new(Arc::clone(&plan), 2));
            let metrics = ExecutionPlanMetricsSet::new();
            let values = |batches: &[RecordBatch]| -> Vec<i64> {
                batches
                    .iter()
                    .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
                    .collect()
            };
            for read in 0..3 {
                for (p, want) in partitions.iter().enumerate() {
                    let got = drain(kept.read(p, Arc::clone(&ctx), &metrics))
                        .await
                        .unwrap();
                    assert_eq!(values(&got), values(want), "partition {p}, read {read}");
                    let gone = kept.runs().parts[p].is_none();
                    // Dropped after the second read; the third started a run for 2 more.
                    assert_eq!(gone, read == 1, "partition {p}, read {read}");
                }
            }
            assert_eq!(kept.runs().run, 2);
            // A stream dropped unread counts as read.
            for p in 0..2 {
                drop(kept.read(p, Arc::clone(&ctx), &metrics));
                assert!(kept.runs().parts[p].is_none(), "partition {p}");
            }
            // Both copies done with partition 0 before any run: a run started for partition
            // 1 does not keep 0, and a read of 0 after that still gets its rows.
            drop(kept.read(0, Arc::clone(&ctx), &metrics));
            drop(kept.read(0, Arc::clone(&ctx), &metrics));
            let got = drain(kept.read(1, Arc::clone(&ctx), &metrics))
                .await
                .unwrap();
            assert_eq!(values(&got), values(&partitions[1]));
            assert!(kept.runs().parts[0].is_none());
            for _ in 0..2 {
                let got = drain(kept.read(0, Arc::clone(&ctx), &metrics))
                    .await
                    .unwrap();
                assert_eq!(values(&got), values(&partitions[0]));
            }
            let spilled = metrics.clone_inner().spilled_bytes().unwrap_or_default();
            assert_eq!(spilled > 0, spills, "spilled {spilled} bytes");
            drop(kept);
            assert_eq!(pool.reserved(), 0);
        }
    }

    /// Around and inside copies that could be shared: scalar subqueries (shown alike until
    /// they run), top-k aggregations in both directions, joins whose filters read other
    /// columns of one name, a limit that stops reading a copy early, recursive CTEs (which run
    /// their copies again), min/max aggregations (whose filters keep their bounds through a
    /// reset), a copy never read (the probe side of a join with an empty build side). Every answer is DataFusion's, no query fails,
    /// and no kept result holds memory once the query is done.
    #[tokio::test]
    async fn limits_subqueries_and_recursion_around_repeated_aggregations_answer_as_datafusion() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path(), 3);
        let pool = Arc::new(TrackConsumersPool::new(
            FairSpillPool::new(1 << 30),
            std::num::NonZeroUsize::new(1000).unwrap(),
        ));
        let (ours, theirs) = (
            session_over(dir.path(), true, Some((1 << 30, Arc::clone(&pool) as _))).await,
            session(dir.path(), false, None).await,
        );
        // (query, whether a repeated aggregation in it is shared)
        let queries = [
            (
                "SELECT (SELECT count(*) FROM (SELECT k FROM fact \
                 WHERE v > (SELECT max(v) - 500 FROM fact) GROUP BY k)) AS a, \
                 (SELECT count(*) FROM (SELECT k FROM fact \
                 WHERE v > (SELECT min(v) + 500 FROM fact) GROUP BY k)) AS b",
                false,
            ),
            (
                "SELECT 'a' AS side, count(*) AS n FROM (SELECT k FROM fact_csv \
                 WHERE v > (SELECT max(v) - 500 FROM fact) GROUP BY k) \
                 UNION ALL SELECT 'b', count(*) FROM (SELECT k FROM fact_csv \
                 WHERE v > (SELECT min(v) + 500 FROM fact) GROUP BY k) ORDER BY side",
                false,
            ),
            (
                "SELECT k FROM ((SELECT DISTINCT k FROM fact ORDER BY k DESC LIMIT 3) \
                 UNION ALL (SELECT DISTINCT k FROM fact ORDER BY k ASC LIMIT 3)) ORDER BY k",
                false,
            ),
            (
                "WITH r AS (SELECT k, sum(v) AS s FROM fact GROUP BY k) \
                 SELECT count(*) AS n, sum(a.s) AS s, count(b.k) + count(b.s) AS c FROM r a \
                 CROSS JOIN (SELECT k, s FROM r LIMIT 1) b",
                true,
            ),
            (
                "WITH r AS (SELECT k, sum(v) AS s FROM fact GROUP BY k) \
                 SELECT (SELECT count(*) FROM r) AS n, \
                 (SELECT count(*) FROM dim d JOIN r ON d.k = r.k WHERE d.w < 0) AS none",
                true,
            ),
            (
                "SELECT 'x' AS q, count(*) AS n, sum(f.v) AS sf, sum(o.v) AS so FROM fact f \
                 JOIN other o ON f.k = o.k JOIN dim d ON d.k = f.k AND d.w < f.v \
                 UNION ALL SELECT 'y', count(*), sum(f.v), sum(o.v) FROM fact f \
                 JOIN other o ON f.k = o.k JOIN dim d ON d.k = f.k AND d.w < o.v ORDER BY q",
                false,
            ),
            (
                "SELECT q.m, (SELECT count(*) FROM (WITH RECURSIVE steps AS (SELECT 0 AS i, \
                 CAST(NULL AS BIGINT) AS m UNION ALL SELECT s.i + 1, p.m FROM steps s \
                 CROSS JOIN (SELECT max(v) AS m, min(k) AS l FROM fact WHERE k % 3 = 1) p \
                 WHERE s.i < 4) SELECT * FROM steps WHERE m IS NOT NULL)) AS c \
                 FROM (SELECT max(v) AS m, min(k) AS l FROM fact WHERE k % 3 = 1) q",
                false,
            ),
            (
                "WITH RECURSIVE steps AS (SELECT 0 AS i, 0 AS n UNION ALL \
                 SELECT s.i + 1, p.n FROM steps s CROSS JOIN (SELECT count(*) AS n \
                 FROM (SELECT k, sum(v) AS t FROM fact GROUP BY k) a \
                 JOIN (SELECT k, sum(v) AS t FROM fact GROUP BY k) b ON a.k = b.k + 1) p \
                 WHERE s.i < 3) SELECT i, n FROM steps ORDER BY i",
                false,
            ),
            (
                "SELECT a.m, a.l, b.m AS m2 FROM (SELECT max(v) AS m, min(k) AS l FROM fact \
                 WHERE k % 3 = 1) a CROSS JOIN (SELECT max(v) AS m, min(k) AS l FROM fact \
                 WHERE k % 3 = 1) b",
                false,
            ),
        ];
        for (sql, shared) in queries {
            let (plan, got) = run(&ours, sql).await;
            assert_eq!(shape(&plan).readers > 0, shared, "{sql}");
            assert_eq!(got, run(&theirs, sql).await.1, "{sql}");
            // (DataFusion's own operators may hold some while their plan is kept: an empty
            // join's build side, an aggregation a limit stopped.)
            let report = pool.report_top(1000);
            let held: Vec<&str> = report
                .lines()
                .filter(|l| l.contains("SharedSubplan") && !l.contains("consumed 0.0 B"))
                .collect();
            assert!(held.is_empty(), "{sql}: {held:?}");
            drop(plan);
        }
    }

    /// Seeded queries that read one random aggregation (grouping, aggregates, filter drawn
    /// per seed) two or three times, in the shapes a CTE is read again (a scalar bound, a
    /// self-join, a union of filtered reads, joins with dimension filters, an anti join),
    /// give DataFusion's answers; most are computed once (the fact table scanned once).
    #[tokio::test]
    async fn random_queries_reading_an_aggregation_again_answer_as_datafusion() {
        let dir = tempfile::tempdir().unwrap();
        write_tables(dir.path(), 5);
        let (ours, theirs) = (
            session(dir.path(), true, None).await,
            session(dir.path(), false, None).await,
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut shared = 0;
        for round in 0..16 {
            let groups = [7, 100, 3_000, 30_000][rng.random_range(0..4)];
            let above = rng.random_range(-1000..900);
            let aggregates = [
                "sum(v) AS a, count(*) AS b",
                "min(v) AS a, max(k) AS b",
                "avg(v) AS a, count(DISTINCT v) AS b",
                "sum(v * 2) AS a, sum(CASE WHEN v > 0 THEN 1 ELSE 0 END) AS b",
            ][rng.random_range(0..4)];
            let cte = format!(
                "WITH r AS (SELECT k % {groups} AS g, {aggregates} FROM fact \
                 WHERE v > {above} GROUP BY k % {groups})"
            );
            let w = rng.random_range(0..1000);
            let body = match rng.random_range(0..5) {
                0 => "SELECT g, a, b FROM r WHERE a = (SELECT max(a) FROM r WHERE b IS NOT NULL) \
                      ORDER BY g"
                    .to_string(),
                1 => "SELECT count(*) AS n, sum(x.b + y.b) AS s FROM r x JOIN r y \
                      ON x.g = y.g + 1 AND x.a >= y.a"
                    .to_string(),
                2 => format!(
                    "SELECT 'lo' AS side, count(*) AS n, sum(b) AS s, sum(g) AS t FROM r \
                     WHERE a < {w} UNION ALL SELECT 'hi', count(*), sum(b), sum(g) FROM r \
                     WHERE a >= {w} UNION ALL SELECT 'all', count(a), sum(b), sum(g) FROM r \
                     ORDER BY side"
                ),
                3 => format!(
                    "SELECT 'lo' AS side, count(*) AS n, sum(r.b) AS s FROM r JOIN dim d \
                     ON r.g = d.k WHERE d.w < {w} UNION ALL SELECT 'hi', count(*), sum(r.b) \
                     FROM r JOIN dim d ON r.g = d.k WHERE d.w >= {w} ORDER BY side"
                ),
                _ => "SELECT count(*) AS n, sum(x.b) AS s FROM r x WHERE NOT EXISTS \
                      (SELECT 1 FROM r y WHERE y.g = x.g + 1 AND y.a >= x.a AND y.b IS NOT NULL)"
                    .to_string(),
            };
            let sql = format!("{cte} {body}");
            let (plan, got) = run(&ours, &sql).await;
            assert_eq!(got, run(&theirs, &sql).await.1, "round {round}: {sql}");
            // Not every round is shared: a place that reads fewer of r's columns is planned
            // with fewer aggregates (`b IS NOT NULL` of a count is simplified away), another
            // subplan. One that is scans `fact` once (and `dim` at most twice: 60,000 rows).
            let s = shape(&plan);
            if s.computed_once > 0 {
                shared += 1;
                assert!(s.scanned < 2 * FACTS, "round {round}: {sql}: {s:?}");
            }
        }
        assert!(shared >= 12, "{shared} of 16 rounds shared");
    }
}
