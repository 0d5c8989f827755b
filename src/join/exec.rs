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
//!
//! This file holds the plan node; the work of one output partition is in [`super::job`]
//! (preparation) and [`super::bucket`] (one bucket pair), its metrics in [`super::metrics`].

use std::fmt;
use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr, PhysicalExprRef};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchReceiverStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream, StatisticsArgs,
};

use super::job::{Job, Shared};
use super::metrics::JoinMetrics;

/// Recursion levels of re-partitioning before a bucket is joined in pieces.
pub(crate) const MAX_DEPTH: u32 = 4;

/// How a join's strategy was chosen at plan time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Strategy {
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Choice {
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
    /// DataFusion planned the join as a broadcast (`CollectLeft`): its build side is small.
    /// On a cluster, every task may then read the whole build side.
    #[serde(default)]
    pub broadcast: bool,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distribution::Broadcast => "broadcast",
            Distribution::CoPartitioned => "co-partitioned",
            Distribution::Single => "one task",
        })
    }
}

/// How a grace join's work is split over the tasks of a cluster's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Distribution {
    /// Every task reads the whole build side and joins it with its share of the probe side.
    /// Only for a small build side, and for joins whose every output row comes from a probe
    /// row: a task would emit unmatched build rows that other tasks' probe rows match.
    Broadcast,
    /// Both sides hash-partitioned by the join keys into the same partitions: each task
    /// joins its partitions of the two, which hold every row of their keys. Any join type.
    CoPartitioned,
    /// One task joins both sides whole: a small build side in a join that emits unmatched
    /// build rows.
    Single,
}

/// A hash join that spills: see the module documentation.
#[derive(Debug)]
pub(crate) struct GraceHashJoinExec {
    join: Arc<HashJoinExec>,
    choice: Choice,
    /// Runs as tasks of a cluster, which narrows each input to the task's partitions unless
    /// the join asks for it whole: how the join asks for its inputs. In each task it joins
    /// all it is given, as locally.
    distribution: Option<Distribution>,
    metrics: ExecutionPlanMetricsSet,
    props: Arc<PlanProperties>,
    shared: Arc<Shared>,
}

impl GraceHashJoinExec {
    /// Wraps `join`, which must not be null-aware, over the same inputs.
    pub(crate) fn try_new(join: &HashJoinExec, choice: Choice) -> Result<GraceHashJoinExec> {
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
            distribution: None,
            metrics: ExecutionPlanMetricsSet::new(),
            props,
            shared: Arc::default(),
        })
    }

    /// The same join, to run on a cluster as `distribution` says; its inputs must then be
    /// as it asks ([`ExecutionPlan::input_distribution_requirements`]).
    pub(crate) fn distributed(mut self, distribution: Distribution) -> GraceHashJoinExec {
        self.distribution = Some(distribution);
        self
    }

    /// The same join over `build` and `probe`, to run on a cluster as `distribution` says.
    pub(crate) fn distributed_over(
        &self,
        build: Arc<dyn ExecutionPlan>,
        probe: Arc<dyn ExecutionPlan>,
        distribution: Distribution,
    ) -> Result<GraceHashJoinExec> {
        let join = self
            .join
            .builder()
            .with_new_children(vec![build, probe])?
            .recompute_properties()
            .build()?;
        Ok(GraceHashJoinExec::try_new(&join, self.choice.clone())?.distributed(distribution))
    }

    /// How it runs on a cluster (`None`: locally).
    pub(crate) fn distribution(&self) -> Option<Distribution> {
        self.distribution
    }

    /// The hash join it runs (its inputs are the join's).
    pub(crate) fn join(&self) -> &Arc<HashJoinExec> {
        &self.join
    }

    /// The plan-time decision.
    pub(crate) fn choice(&self) -> &Choice {
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
    pub(crate) fn describe(&self) -> String {
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
        let filter = match (self.join.filter(), t) {
            (None, _) => String::new(),
            // Which input column each of the filter's columns is.
            (Some(f), DisplayFormatType::Verbose) => {
                let columns = f
                    .column_indices()
                    .iter()
                    .map(|c| format!("{:?}@{}", c.side, c.index))
                    .collect::<Vec<_>>();
                format!(", filter={} on [{}]", f.expression(), columns.join(", "))
            }
            (Some(f), _) => format!(", filter={}", f.expression()),
        };
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => {
                // Everything that decides the rows, as DataFusion's hash join shows it (equal
                // displays are taken for equal joins: rewrite/shared_subplans.rs).
                let on = match t {
                    DisplayFormatType::Verbose => self
                        .join
                        .on()
                        .iter()
                        .map(|(l, r)| format!("({l}, {r})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => self.on_text(),
                };
                let projection = match &self.join.projection {
                    Some(columns) => {
                        let schema = self.join.schema();
                        let names = columns
                            .iter()
                            .map(|&i| match schema.fields().get(i) {
                                Some(field) => format!("{}@{i}", field.name()),
                                None => format!("@{i}"),
                            })
                            .collect::<Vec<_>>();
                        format!(", projection=[{}]", names.join(", "))
                    }
                    None => String::new(),
                };
                let nulls_equal = match self.join.null_equality() {
                    datafusion::common::NullEquality::NullEqualsNull => ", NullsEqual: true",
                    datafusion::common::NullEquality::NullEqualsNothing => "",
                };
                let fetch = ExecutionPlan::fetch(self.join.as_ref())
                    .map_or_else(String::new, |n| format!(", fetch={n}"));
                write!(
                    f,
                    "GraceHashJoinExec: join_type={:?}, on=[{on}]{filter}{projection}\
                     {nulls_equal}{fetch}, strategy={}, reason=\"{}\"",
                    self.join.join_type(),
                    self.choice.strategy,
                    self.choice.reason
                )?;
                match self.distribution {
                    None => Ok(()),
                    Some(d) => write!(f, ", distribution={d}"),
                }
            }
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

    fn input_distribution_requirements(
        &self,
    ) -> datafusion::physical_plan::InputDistributionRequirements {
        use datafusion::physical_expr::Distribution as Input;
        // Locally, it reads every partition of both sides itself.
        let (build, probe) = match self.distribution {
            None => (
                Input::UnspecifiedDistribution,
                Input::UnspecifiedDistribution,
            ),
            Some(Distribution::Broadcast) => {
                (Input::SinglePartition, Input::UnspecifiedDistribution)
            }
            Some(Distribution::Single) => (Input::SinglePartition, Input::SinglePartition),
            // Both sides come hash-partitioned alike by the exchanges `Cluster::distributed`
            // puts below them. Asking for that by key would have Ballista's planner, which
            // runs DataFusion's EnforceDistribution again on each stage, add a repartition
            // to the thread count inside the stage: a task running a share of its output
            // partitions would then lose the rows hashed to the others.
            Some(Distribution::CoPartitioned) => (
                Input::UnspecifiedDistribution,
                Input::UnspecifiedDistribution,
            ),
        };
        datafusion::physical_plan::InputDistributionRequirements::new(vec![build, probe])
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
            distribution: self.distribution,
            metrics: ExecutionPlanMetricsSet::new(),
            props,
            shared: Arc::default(),
        }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    // Filters pass through as through the wrapped join: parent filters to the side whose
    // columns they name, and the join's own dynamic filter into the probe side, which
    // [`super::job`] fills once the build side is read.
    fn gather_filters_for_pushdown(
        &self,
        phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        self.join
            .gather_filters_for_pushdown(phase, parent_filters, config)
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        let inner = self
            .join
            .handle_child_pushdown_result(phase, child_pushdown_result, config)?;
        let updated_node = match inner.updated_node {
            Some(node) => match node.downcast_ref::<HashJoinExec>() {
                Some(join) => Some(Arc::new(GraceHashJoinExec {
                    join: Arc::new(join.builder().build()?),
                    choice: self.choice.clone(),
                    distribution: self.distribution,
                    metrics: ExecutionPlanMetricsSet::new(),
                    props: Arc::clone(&self.props),
                    shared: Arc::default(),
                }) as Arc<dyn ExecutionPlan>),
                None => None,
            },
            None => None,
        };
        Ok(FilterPushdownPropagation {
            filters: inner.filters,
            updated_node,
        })
    }

    fn dynamic_expressions_produced(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        self.join.dynamic_expressions_produced()
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
        if choice.total_budget.is_none()
            && let datafusion::execution::memory_pool::MemoryLimit::Finite(pool) =
                context.memory_pool().memory_limit()
        {
            // Planned without a limit (for a cluster), run under one (an executor task's
            // share of its pool): the join takes its share of that.
            choice.total_budget = Some(super::rule::join_budget(pool));
        }
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
            probe_filter: super::filter::probe_filter(
                &self.join,
                context.session_config().options(),
            ),
            ctx: context,
        };
        let mut builder = RecordBatchReceiverStream::builder(self.schema(), 2);
        let tx = builder.tx();
        builder.spawn(async move { job.run(tx).await });
        Ok(builder.build())
    }
}
