//! Text on a join's build side copied into buffers of its own, so the join's output does not
//! carry a handle to every buffer its build side was read into.
//!
//! Parquet text is read as string views: 16 bytes per value pointing into shared buffers.
//! Taking rows from such an array (a join's output, a repartition) keeps every buffer of the
//! source, and DataFusion's hash join concatenates its build side's batches keeping the
//! buffers of each. When the build side is itself a join's output, that is batches × buffers:
//! in TPC-H q18 at scale 10 the build side of the join with `lineitem` held hundreds of
//! thousands of handles, each output batch cloned and dropped them all, and half the query's
//! time went to it (apache/datafusion#16206, open). [`CompactViews`] puts a
//! [`CompactViewsExec`] under each build side holding views; it copies a batch's text into
//! one buffer when it points into several (or into one mostly unused), so the build side
//! holds one buffer per batch.
//!
//! (Views nested in structs or lists are left as they are.)

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, GenericByteViewArray, RecordBatch};
use datafusion::arrow::datatypes::{BinaryViewType, ByteViewType, DataType, StringViewType};
use datafusion::common::Statistics;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterDescription, FilterPushdownPhase, FilterPushdownPropagation,
};
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::statistics::{ChildStats, StatisticsArgs};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    SendableRecordBatchStream,
};
use futures::StreamExt;

/// Views up to this many bytes hold their text inline and point into no buffer.
const INLINE: u32 = 12;

/// Puts a [`CompactViewsExec`] under the build side of every hash, nested-loop and cross
/// join whose build side has a string or binary view column. (Not on a Ballista cluster:
/// executors cannot decode the operator, and text is not read as views there.)
#[derive(Debug, Default)]
pub(crate) struct CompactViews;

impl PhysicalOptimizerRule for CompactViews {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let builds_left = node.is::<HashJoinExec>()
                || node.is::<NestedLoopJoinExec>()
                || node.is::<CrossJoinExec>();
            let Some(build) = node.children().first().map(|c| Arc::clone(c)) else {
                return Ok(Transformed::no(node));
            };
            if !builds_left || !has_views(&build) || build.is::<CompactViewsExec>() {
                return Ok(Transformed::no(node));
            }
            // Under a merge of partitions, each partition is compacted on its own thread.
            let build = match build.downcast_ref::<CoalescePartitionsExec>() {
                Some(merge) if !merge.input().is::<CompactViewsExec>() => {
                    let input = Arc::new(CompactViewsExec::new(Arc::clone(merge.input())));
                    replace_children_if_necessary(Arc::clone(&build), vec![input])?
                }
                Some(_) => build,
                None => Arc::new(CompactViewsExec::new(build)),
            };
            let mut children: Vec<_> = node.children().into_iter().cloned().collect();
            children[0] = build;
            // (The join keeps its dynamic filters: it is rebuilt from itself.)
            Ok(Transformed::yes(replace_children_if_necessary(
                node, children,
            )?))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_compact_views"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether `plan` outputs a string or binary view column.
fn has_views(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.schema()
        .fields()
        .iter()
        .any(|f| matches!(f.data_type(), DataType::Utf8View | DataType::BinaryView))
}

/// Its input's batches, each view column that points into several buffers (or into one
/// mostly unused) copied into one buffer of its own; everything else passed as it is.
#[derive(Debug)]
pub(crate) struct CompactViewsExec {
    input: Arc<dyn ExecutionPlan>,
    props: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl CompactViewsExec {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>) -> Self {
        // Its input's rows, order and partitioning (not its scheduling: a stream of its own).
        let props = Arc::new(PlanProperties::new(
            input.equivalence_properties().clone(),
            input.output_partitioning().clone(),
            input.pipeline_behavior(),
            input.boundedness(),
        ));
        CompactViewsExec {
            input,
            props,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl DisplayAs for CompactViewsExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("CompactViewsExec")
    }
}

impl ExecutionPlan for CompactViewsExec {
    fn name(&self) -> &str {
        "CompactViewsExec"
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
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(CompactViewsExec::new(input))),
            _ => datafusion::common::internal_err!("CompactViewsExec takes one input"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let metrics = BaselineMetrics::new(&self.metrics, partition);
        let batches = self.input.execute(partition, context)?.map(move |batch| {
            let _timer = metrics.elapsed_compute().timer();
            let batch = compact(batch?)?;
            metrics.record_output(batch.num_rows());
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            batches,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    // Its input's statistics: the same rows, and byte sizes as estimated for the input.
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

    // Filters pass through to the input, as through a coalescing of batches.
    fn gather_filters_for_pushdown(
        &self,
        _phase: FilterPushdownPhase,
        parent_filters: Vec<Arc<dyn PhysicalExpr>>,
        _config: &ConfigOptions,
    ) -> Result<FilterDescription> {
        FilterDescription::from_children(parent_filters, &self.children())
    }

    fn handle_child_pushdown_result(
        &self,
        _phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        _config: &ConfigOptions,
    ) -> Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        Ok(FilterPushdownPropagation::if_all(child_pushdown_result))
    }
}

/// `batch` with each view column that needs it compacted (see [`compacted`]).
fn compact(batch: RecordBatch) -> Result<RecordBatch> {
    let mut columns: Option<Vec<ArrayRef>> = None;
    for (i, column) in batch.columns().iter().enumerate() {
        let new = match column.data_type() {
            DataType::Utf8View => compacted::<StringViewType>(column.as_string_view()),
            DataType::BinaryView => compacted::<BinaryViewType>(column.as_binary_view()),
            _ => None,
        };
        if let Some(new) = new {
            columns.get_or_insert_with(|| batch.columns().to_vec())[i] = new;
        }
    }
    match columns {
        Some(columns) => Ok(RecordBatch::try_new(batch.schema(), columns)?),
        None => Ok(batch),
    }
}

/// `array` copied into one buffer of its own, if it points into more than one, or into one
/// of which it uses less than half; `None` if it is compact already.
fn compacted<T: ByteViewType + ?Sized>(array: &GenericByteViewArray<T>) -> Option<ArrayRef> {
    let held: usize = match array.data_buffers() {
        [] => return None,
        [one] => one.len(),
        _ => return Some(Arc::new(array.gc())),
    };
    let used: usize = array
        .views()
        .iter()
        .map(|v| *v as u32)
        .filter(|&len| len > INLINE)
        .map(|len| len as usize)
        .sum();
    (used * 2 < held).then(|| Arc::new(array.gc()) as ArrayRef)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, AsArray, Int64Array, StringViewArray, UInt32Array};
    use datafusion::arrow::compute::{concat, take};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::physical_plan::joins::HashJoinExec;
    use datafusion::physical_plan::{ExecutionPlan, collect};
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::{Rng, SeedableRng};

    use super::{CompactViews, CompactViewsExec, compact};

    /// `n` texts of 0 to 40 characters (NULL one time in ten), drawn with `rng`.
    fn texts(rng: &mut impl Rng, n: usize) -> Vec<Option<String>> {
        (0..n)
            .map(|_| {
                let len = rng.random_range(0..=40);
                (!rng.random_bool(0.1)).then(|| {
                    (0..len)
                        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                        .collect()
                })
            })
            .collect()
    }

    /// Arrays taken from a concatenation of many small ones point into all their buffers;
    /// compacted, they hold the same values in at most one buffer, and only long values
    /// count towards it.
    #[test]
    fn compacting_keeps_every_value_in_one_buffer() {
        for seed in 0..16u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let parts: Vec<StringViewArray> = (0..rng.random_range(1..40))
                .map(|_| {
                    let n = rng.random_range(0..60);
                    StringViewArray::from_iter(texts(&mut rng, n))
                })
                .collect();
            let refs: Vec<&dyn Array> = parts.iter().map(|p| p as &dyn Array).collect();
            let whole = concat(&refs).unwrap();
            if whole.is_empty() {
                continue;
            }
            let picks: UInt32Array = (0..rng.random_range(1..200))
                .map(|_| rng.random_range(0..whole.len() as u32))
                .collect();
            let taken = take(&whole, &picks, None).unwrap();
            let schema = Arc::new(Schema::new(vec![
                Field::new("s", DataType::Utf8View, true),
                Field::new("i", DataType::Int64, false),
            ]));
            let ids = Int64Array::from_iter_values(0..taken.len() as i64);
            let batch =
                RecordBatch::try_new(schema, vec![Arc::clone(&taken), Arc::new(ids)]).unwrap();
            let out = compact(batch.clone()).unwrap();
            let (before, after) = (taken.as_string_view(), out.column(0).as_string_view());
            assert_eq!(
                before.iter().collect::<Vec<_>>(),
                after.iter().collect::<Vec<_>>(),
                "seed {seed}"
            );
            assert!(after.data_buffers().len() <= 1, "seed {seed}");
            assert_eq!(out.column(1), batch.column(1));
            let long: usize = after
                .iter()
                .flatten()
                .map(str::len)
                .filter(|&l| l > 12)
                .sum();
            let held: usize = after.data_buffers().iter().map(|b| b.len()).sum();
            assert!(
                held <= long.max(1) * 2,
                "seed {seed}: {held} bytes for {long}"
            );
        }
    }

    /// A session with DataFusion's physical rules and, if `compact`, this one.
    fn session(compact: bool) -> SessionContext {
        let config = SessionConfig::new()
            .with_target_partitions(2)
            .with_batch_size(64);
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features();
        if compact {
            state = state.with_physical_optimizer_rule(Arc::new(CompactViews));
        }
        SessionContext::new_with_state(state.build())
    }

    /// Registers `customer(c_key, c_name)` and `orders(o_key, o_cust)`, names as views, and
    /// `item(i_order, i_qty)`, drawn with `seed`, each in several small batches.
    fn tables(ctx: &SessionContext, seed: u64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let customers = 300;
        let names = StringViewArray::from_iter(texts(&mut rng, customers));
        let customer = RecordBatch::try_from_iter(vec![
            (
                "c_key",
                Arc::new(Int64Array::from_iter_values(0..customers as i64)) as _,
            ),
            ("c_name", Arc::new(names) as _),
        ])
        .unwrap();
        let orders = 2_000;
        let order = RecordBatch::try_from_iter(vec![
            (
                "o_key",
                Arc::new(Int64Array::from_iter_values(0..orders)) as _,
            ),
            (
                "o_cust",
                Arc::new(Int64Array::from_iter(
                    (0..orders).map(|_| rng.random_range(0..customers as i64 + 20)),
                )) as _,
            ),
        ])
        .unwrap();
        let items = 6_000;
        let item = RecordBatch::try_from_iter(vec![
            (
                "i_order",
                Arc::new(Int64Array::from_iter(
                    (0..items).map(|_| rng.random_range(0..orders + 50)),
                )) as _,
            ),
            (
                "i_qty",
                Arc::new(Int64Array::from_iter(
                    (0..items).map(|_| rng.random_range(1..50)),
                )) as _,
            ),
        ])
        .unwrap();
        for (name, batch) in [("customer", customer), ("orders", order), ("item", item)] {
            // Batches of 50 rows, in two partitions.
            let slices: Vec<_> = (0..batch.num_rows())
                .step_by(50)
                .map(|at| batch.slice(at, 50.min(batch.num_rows() - at)))
                .collect();
            let (a, b) = slices.split_at(slices.len() / 2);
            let table = MemTable::try_new(batch.schema(), vec![a.to_vec(), b.to_vec()]).unwrap();
            ctx.register_table(name, Arc::new(table)).unwrap();
        }
    }

    /// The physical plan of `sql` in `ctx`.
    async fn physical_plan(ctx: &SessionContext, sql: &str) -> Arc<dyn ExecutionPlan> {
        ctx.sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    /// The join of `item` with the join of customers and orders, as in TPC-H q18.
    const JOIN: &str = "SELECT c_name, o_key, i_qty FROM customer JOIN orders ON c_key = o_cust \
        JOIN item ON o_key = i_order";

    /// The most data buffers an output batch's view column of the plan's topmost hash join
    /// points into, with the join's output rows.
    async fn top_join_buffers(ctx: &SessionContext, sql: &str) -> (usize, usize) {
        let plan = physical_plan(ctx, sql).await;
        let mut join = None;
        let mut stack = vec![plan];
        while let Some(p) = stack.pop() {
            if p.is::<HashJoinExec>() {
                join = Some(p);
                break;
            }
            stack.extend(p.children().into_iter().cloned());
        }
        let join = join.expect("a hash join");
        let batches = collect(join, ctx.task_ctx()).await.unwrap();
        let most = batches
            .iter()
            .flat_map(|b| b.columns().iter())
            .filter(|c| c.data_type() == &DataType::Utf8View)
            .map(|c| c.as_string_view().data_buffers().len())
            .max()
            .unwrap_or(0);
        (most, batches.iter().map(|b| b.num_rows()).sum())
    }

    /// Joins whose build side carries text give DataFusion's answers, with the build side
    /// compacted: the top join's output points into at most one buffer per build-side batch,
    /// where DataFusion's alone points into the buffers of every batch of every join below.
    #[tokio::test]
    async fn joins_with_text_on_the_build_side_compact_it() {
        let queries = [
            JOIN,
            "SELECT c_name, count(*), sum(i_qty) FROM customer JOIN orders ON c_key = o_cust \
             JOIN item ON o_key = i_order GROUP BY c_name ORDER BY c_name",
            "SELECT c_name, o_key FROM customer LEFT JOIN orders ON c_key = o_cust \
             AND o_key < 500 ORDER BY o_key, c_name",
            "SELECT c_name, o_key FROM customer, orders WHERE o_key < 3 AND c_key < 40",
            "SELECT c_name, o_key FROM customer JOIN orders ON c_key > o_cust + 290",
        ];
        for seed in 0..6u64 {
            let (ours, theirs) = (session(true), session(false));
            tables(&ours, seed);
            tables(&theirs, seed);
            for sql in queries {
                let plan = physical_plan(&ours, sql).await;
                let shown = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string();
                assert!(shown.contains("CompactViewsExec"), "{sql}\n{shown}");
                let sorted = |batches: Vec<RecordBatch>| {
                    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string();
                    let mut lines: Vec<String> = text.lines().map(String::from).collect();
                    lines.sort();
                    lines
                };
                let got = sorted(ours.sql(sql).await.unwrap().collect().await.unwrap());
                let want = sorted(theirs.sql(sql).await.unwrap().collect().await.unwrap());
                assert_eq!(got, want, "seed {seed}: {sql}");
            }
            // 2,000 orders of which each join partition builds about half, in batches of
            // 64 rows at most (and coalesced batches of fewer): a buffer per batch is
            // at most 2,000 / 2 / 16.
            let (ours_most, rows) = top_join_buffers(&ours, JOIN).await;
            let (theirs_most, their_rows) = top_join_buffers(&theirs, JOIN).await;
            assert_eq!(rows, their_rows);
            assert!(rows > 0);
            assert!(ours_most <= 2_000 / 2 / 16 + 8, "{ours_most} buffers");
            assert!(
                theirs_most > ours_most,
                "DataFusion alone: {theirs_most}, compacted: {ours_most}"
            );
        }
    }

    /// A build side without views is left as it is.
    #[tokio::test]
    async fn a_build_side_without_text_is_left_alone() {
        let ctx = session(true);
        tables(&ctx, 1);
        let plan = physical_plan(
            &ctx,
            "SELECT o_key, i_qty FROM orders JOIN item ON o_key = i_order",
        )
        .await;
        let mut stack = vec![plan];
        while let Some(p) = stack.pop() {
            assert!(!p.is::<CompactViewsExec>(), "{}", p.name());
            stack.extend(p.children().into_iter().cloned());
        }
    }
}
