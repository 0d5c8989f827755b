//! Rewrites of the plan that sluice adds to DataFusion's optimizers, each a rule of its own
//! module, so that a query DataFusion would plan badly, or run out of memory on, is planned
//! as a better equivalent one.
//!
//! - [`distinct`]: `COUNT(DISTINCT x)` beside `COUNT(*)` split into two groupings, which
//!   both spill, instead of one per-group set of values, which cannot.
//! - [`split_distinct`]: distinct aggregates of several arguments computed by one
//!   aggregation per argument (which the rule above and DataFusion's then split), joined on
//!   the keys; over a join too under a memory limit.
//! - [`median`] (under a memory limit): `median(x)` from a numbering of each group's
//!   sorted values, which spills, instead of from all of a group's values in memory.
//! - [`whole_partition`] (under a memory limit): `agg(x) OVER (PARTITION BY k)` as a
//!   grouping joined back to the rows, instead of each partition buffered whole.
//! - [`join_order`]: inner joins reordered by estimated size (run from the engine's query
//!   planner, where the relations' statistics can be read).
//!   Filters that statistics cannot judge are measured on a sample ([`selectivity`]), and
//!   DataFusion's plan estimates them from it ([`filter_estimates`]).
//! - [`needed_groups`]: an aggregation joined on a key computes only the groups the other
//!   side can match, its input narrowed by a semi join (run from the engine's query
//!   planner, before join order, where the relations' statistics can be read).
//! - [`build_side`] (physical): a hash join builds its smaller input by rows ×
//!   width, where DataFusion's byte estimates of joins' outputs mislead it.
//! - [`not_in`] (physical): `x NOT IN (subquery)` joined as a plain anti join, which
//!   DataFusion may build either side of and the grace join may wrap, with SQL's rule for
//!   NULLs applied after it by the subquery's counts where a key may be NULL.
//! - [`compact_views`] (physical): text on a join's build side copied into a buffer per
//!   batch, so the join's output does not hold a handle to every buffer it was read into.
//! - [`decode_filters`] (physical): a join's dynamic filter applied while a Parquet scan
//!   decodes, for as long as it drops most rows.
//! - [`shared_subplans`] (physical): an aggregation a query computes more than once over
//!   the same input (a CTE read twice) computed once, its result kept for each reader.
//! - [`conjunction`] (physical): a filter's conjuncts evaluated in turn, each on the rows
//!   those before it kept, instead of DataFusion's `AND` tree that writes each one back.
//! - [`decimal_arith`] (physical): decimal `+`, `-` and `*` computed with 64-bit operands
//!   where a batch's values fit in them, instead of checked 128-bit arithmetic.
//! - [`topk`] (physical): `ORDER BY … LIMIT k` with a `k` too large for the memory limit
//!   sorted in full, which spills, instead of in a top-k heap, which cannot.

mod build_side;
mod compact_views;
mod conjunction;
mod decimal_arith;
mod decode_filters;
mod distinct;
pub(crate) mod filter_estimates;
pub(crate) mod join_order;
mod median;
pub(crate) mod needed_groups;
mod not_in;
mod selectivity;
mod shared_subplans;
mod split_distinct;
mod topk;
mod whole_partition;

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::Result;
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, LogicalPlan, when};
use datafusion::optimizer::OptimizerRule;
use datafusion::optimizer::optimizer::Optimizer;
use datafusion::physical_optimizer::PhysicalOptimizerRule;

/// sluice's rewrites by the names that turn them off (`sluice.NAME = false`, as `--set` or
/// in `[settings.options]`; the names of their modules), each with the names of the rules
/// it is made of. (Join order and the grace join have settings of their own: `join_order`,
/// `join_strategy`.)
const SWITCHES: &[(&str, &[&str])] = &[
    ("distinct", &["sluice_counts_beside_distinct"]),
    ("split_distinct", &["sluice_distincts_apart"]),
    ("median", &["sluice_median_by_sort"]),
    ("whole_partition", &["sluice_whole_partition_by_join"]),
    ("build_side", &["sluice_build_smaller_side"]),
    ("not_in", &["sluice_not_in_as_anti_join"]),
    ("compact_views", &["sluice_compact_views"]),
    ("decode_filters", &["sluice_dynamic_filters_while_decoding"]),
    (
        "shared_subplans",
        &[
            "sluice_mark_repeated_subplans",
            "sluice_share_repeated_subplans",
        ],
    ),
    ("decimal_arith", &["sluice_faster_decimal_arithmetic"]),
    ("conjunction", &["sluice_conjuncts_in_turn"]),
    ("topk", &["sluice_spilling_top_k"]),
    ("needed_groups", &[NEEDED_GROUPS]),
];

/// The name the engine's query planner knows [`needed_groups`] by, among the rules.
pub(crate) const NEEDED_GROUPS: &str = "sluice_needed_groups";

/// The rewrites a session runs without: all are on unless turned off, so that one binary
/// measures a rewrite's effect, and an operator can work around one that misplans a query.
#[derive(Debug, Clone, Default)]
pub(crate) struct Switches {
    /// The names of the rules turned off.
    off: std::collections::BTreeSet<&'static str>,
}

impl Switches {
    /// Turns the rewrite `name` (of [`SWITCHES`]) on or off; an unknown name is an error
    /// that lists the known ones.
    pub(crate) fn set(&mut self, name: &str, on: bool) -> Result<(), String> {
        let Some((_, rules)) = SWITCHES.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = SWITCHES.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "no rewrite named {name:?} (known: {})",
                known.join(", ")
            ));
        };
        for rule in *rules {
            if on {
                self.off.remove(rule);
            } else {
                self.off.insert(rule);
            }
        }
        Ok(())
    }

    /// Whether the rule named `rule` (a rule's `name()`) runs: every rule but those of a
    /// rewrite turned off, DataFusion's included.
    pub(crate) fn keeps(&self, rule: &str) -> bool {
        !self.off.contains(rule)
    }
}

/// DataFusion's logical optimizer rules, with sluice's inserted where they must run, for a
/// session whose pool is `memory_limit`.
pub(crate) fn logical_rules(
    memory_limit: Option<usize>,
) -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = Optimizer::new().rules;
    // Before DataFusion's own split of single-distinct aggregates, which it prepares for.
    let at = rules
        .iter()
        .position(|r| r.name() == "single_distinct_aggregation_to_group_by")
        .unwrap_or(rules.len());
    rules.insert(at, Arc::new(distinct::CountsBesideDistinct));
    // Under a limit, distinct aggregates of several arguments over a join too: computing
    // the join once per argument beats sets of values that do not fit.
    let reread = match memory_limit {
        Some(_) => Reread::Joins,
        None => Reread::Tables,
    };
    rules.insert(at, Arc::new(split_distinct::DistinctsApart { reread }));
    // Under a limit only: they read their input more than once, to spill what would not.
    if memory_limit.is_some() {
        rules.insert(at, Arc::new(median::MedianBySort));
        rules.insert(at, Arc::new(whole_partition::WholePartitionByJoin));
    }
    rules
}

/// Whether `plan` scans a database table.
pub(super) fn reads_a_database(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::TableScan(scan) => {
                datafusion::datasource::source_as_provider(&scan.source).is_ok_and(|p| {
                    p.downcast_ref::<crate::database::scan::DatabaseTable>()
                        .is_some()
                })
            }
            _ => false,
        })
    })
    .unwrap_or(true)
}

/// Whether values of type `t` hold floats, alone or nested. DataFusion's grouping takes
/// -0.0 and +0.0 to be one value where its sorts, windows and distinct sets take them to be
/// two (its joins take them to be one, as IEEE's `=` does): a rewrite that swaps one for
/// the other must not see them.
pub(super) fn holds_floats(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            holds_floats(f.data_type())
        }
        DataType::Struct(fields) => fields.iter().any(|f| holds_floats(f.data_type())),
        DataType::Map(f, _) => holds_floats(f.data_type()),
        DataType::Dictionary(_, v) => holds_floats(v),
        t => t.is_floating(),
    }
}

/// `e`, of type `t`, with -0.0 made +0.0 when `t` is a float, as DataFusion's grouping
/// stores the group of both zeros: a sort or a window's partitions then take a float key
/// as the grouping does. Every other value, a NaN's payload included, is kept bit
/// for bit (`e + 0.0` alone would quiet a signalling NaN). (`e + 0.0 = 0.0` holds for
/// both zeros whether `=` follows IEEE's equality or its total order: -0.0 + 0.0 is +0.0.)
pub(super) fn zero_folded(e: Expr, t: &DataType) -> Result<Expr> {
    if !t.is_floating() {
        return Ok(e);
    }
    let zero = || ScalarValue::new_zero(t).map(|z| Expr::Literal(z, None));
    when((e.clone() + zero()?).eq(zero()?), zero()?).otherwise(e)
}

/// Whether `e`, of a float type `t`, is -0.0 (NULL when `e` is): beside the key itself, a
/// grouping key that parts the groups as a window's partitions or a sort part them, where
/// DataFusion's grouping takes -0.0 and +0.0 to be one group. (1 / -0.0 is -inf.)
pub(super) fn negative_zero(e: Expr, t: &DataType) -> Result<Expr> {
    let zero = || ScalarValue::new_zero(t).map(|z| Expr::Literal(z, None));
    let one = Expr::Literal(ScalarValue::new_one(t)?, None);
    Ok((e.clone() + zero()?).eq(zero()?).and((one / e).lt(zero()?)))
}

/// Whether `e` may be -0.0 somewhere (a float, alone or nested), which DataFusion's grouping
/// takes to be +0.0 and its sets, sorts and windows not. A float cast from an integer or a
/// decimal is never -0.0.
pub(super) fn may_be_negative_zero(e: &Expr, schema: &datafusion::common::DFSchema) -> bool {
    use datafusion::logical_expr::ExprSchemable;
    let of_floats = |e: &Expr| e.get_type(schema).map_or(true, |t| holds_floats(&t));
    match unaliased(e) {
        Expr::Cast(c) => of_floats(&c.expr),
        Expr::TryCast(c) => of_floats(&c.expr),
        e => of_floats(e),
    }
}

/// `e` without the alias around it, if any: an aggregation's or a window's expressions may
/// come named.
pub(super) fn unaliased(e: &Expr) -> &Expr {
    match e {
        Expr::Alias(a) => &a.expr,
        e => e,
    }
}

/// The outcome of a rule that rewrites `plan` only under a memory limit: `built`, or
/// `plan` as it was when there is nothing to rewrite or the rewrite cannot be built.
pub(super) fn rewritten_or_as_is(
    rule: &str,
    plan: LogicalPlan,
    built: Result<Option<LogicalPlan>>,
) -> Transformed<LogicalPlan> {
    match built {
        Ok(Some(rewritten)) => Transformed::yes(rewritten),
        Ok(None) => Transformed::no(plan),
        Err(e) => {
            tracing::debug!("{rule}: left as written: {e}");
            Transformed::no(plan)
        }
    }
}

/// How much of a plan a rewrite may read twice.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Reread {
    /// Table reads only: scans, filters, projections, aliases. Reading one again costs
    /// about what it did the first time.
    Tables,
    /// Also joins, unions and sorts of table reads, and aggregations whose results do not
    /// depend on the order of their rows ([`order_free`]): reading one again may cost a
    /// join or an aggregation, which is worth it only to a rewrite that keeps a query within
    /// its memory limit. (A query reading the same aggregation twice computes it once:
    /// [`shared_subplans`].)
    Joins,
}

/// Whether `agg` gives the same rows however its input's rows are ordered: counts, sums,
/// minimums and maximums, none of floats, grouped by no list or struct of floats. (A float
/// sum comes out with other last bits when its rows are added in another order; `array_agg`,
/// `string_agg` and `first_value` without an order follow the rows' order. A plain float
/// key is fine: DataFusion's grouping names the group of -0.0 and +0.0 +0.0 whichever
/// comes first.)
fn order_free(agg: &datafusion::logical_expr::Aggregate) -> bool {
    let plain = agg.aggr_expr.iter().all(|e| {
        matches!(unaliased(e), Expr::AggregateFunction(f)
            if ["count", "sum", "min", "max"].contains(&f.func.name()))
    });
    // The keys' columns come first (with a grouping set, each column of its sets and an id).
    let keys = agg.schema.fields().len() - agg.aggr_expr.len();
    plain
        && agg.schema.fields().iter().enumerate().all(|(i, f)| {
            let t = f.data_type();
            !holds_floats(t) || (i < keys && t.is_floating())
        })
}

/// Whether `plan` gives the same rows each time it is read, within what `reread` allows,
/// with nothing volatile in it and no database table in it.
pub(super) fn rereadable(plan: &LogicalPlan, reread: Reread) -> bool {
    let mut ok = true;
    let _ = plan.apply(|node| {
        let kind_ok = match node {
            // A database table is imported again at each read, perhaps in another state.
            LogicalPlan::TableScan(_) => !reads_a_database(node),
            LogicalPlan::Filter(_) | LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {
                true
            }
            LogicalPlan::Join(_) | LogicalPlan::Union(_) => reread == Reread::Joins,
            LogicalPlan::Sort(s) => reread == Reread::Joins && s.fetch.is_none(),
            LogicalPlan::Aggregate(a) => reread == Reread::Joins && order_free(a),
            _ => false,
        };
        // A scan that stops after `fetch` rows may stop at other rows when read again (its
        // files are read in parallel).
        let volatile = node.expressions().iter().any(Expr::is_volatile)
            || matches!(node, LogicalPlan::TableScan(s)
                if s.fetch.is_some() || s.filters.iter().any(Expr::is_volatile));
        ok &= kind_ok && !volatile;
        Ok(if ok {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    ok
}

/// Bytes guessed for a value whose width is not fixed (text, binary, lists): a string view
/// (16 bytes) plus a short text.
const VARIABLE_WIDTH: usize = 48;

/// A row's bytes in memory: fixed widths exactly, the rest guessed.
fn row_width(schema: &datafusion::arrow::datatypes::Schema) -> usize {
    fn width(data_type: &DataType) -> usize {
        match data_type {
            DataType::Boolean => 1,
            DataType::Dictionary(key, _) => width(key),
            DataType::Struct(fields) => fields.iter().map(|f| width(f.data_type())).sum(),
            other => other.primitive_width().unwrap_or(VARIABLE_WIDTH),
        }
    }
    schema.fields().iter().map(|f| width(f.data_type())).sum()
}

/// Whether two plans have the same orderings, partitioning, equalities and constants, as
/// displayed (DataFusion never takes an unknown partitioning to equal another).
pub(crate) fn same_properties(
    a: &datafusion::physical_plan::PlanProperties,
    b: &datafusion::physical_plan::PlanProperties,
) -> bool {
    let shown = |p: &datafusion::physical_plan::PlanProperties| {
        (
            p.output_partitioning().to_string(),
            p.output_ordering().map(|o| o.to_string()),
            p.equivalence_properties().to_string(),
        )
    };
    shown(a) == shown(b)
}

/// `rules` (DataFusion's physical optimizer rules, as the join layer arranged them) with
/// sluice's physical rewrites for a session whose pool is `memory_limit`, planning for a
/// Ballista cluster if `cluster`.
pub(crate) fn physical_rules(
    mut rules: Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>>,
    memory_limit: Option<usize>,
    cluster: bool,
) -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    // Right after DataFusion has chosen build sides, before the grace join wraps joins and
    // inputs are partitioned for them.
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .map_or(0, |at| at + 1);
    rules.insert(at, Arc::new(build_side::BuildSmallerSide));
    // Before DataFusion chooses build sides, which it may not swap in a null-aware join.
    let at = rules
        .iter()
        .position(|r| r.name() == "join_selection")
        .unwrap_or(0);
    rules.insert(at, Arc::new(not_in::NotInAsAntiJoin));
    // Once joins have their build sides and inputs (EnsureRequirements), before filters are
    // pushed into scans for the last time, so the build sides' filters go through it.
    let at = rules
        .iter()
        .position(|r| r.name() == "EnsureCooperative")
        .unwrap_or(rules.len());
    // (Not for a cluster: its executors could not decode the operator it adds.)
    if !cluster {
        rules.insert(at, Arc::new(compact_views::CompactViews));
    }
    // (Not for a cluster: its executors could not decode the expressions these rules make.)
    if !cluster {
        let at = rules
            .iter()
            .position(|r| r.name() == "SanityCheckPlan")
            .unwrap_or(rules.len());
        // Once the plan is final, but before repeated subplans are shared (a subplan changed
        // after that is computed again for itself): it changes how expressions are
        // computed, nothing else.
        rules.insert(at, Arc::new(decimal_arith::FasterDecimalArithmetic));
        // Once the plan is final, as the rule above (a filter's equivalences are read from
        // its predicate, by the rules before).
        rules.insert(at + 1, Arc::new(conjunction::ConjunctsInTurn));
        // Once DataFusion has pushed the joins' dynamic filters into scans for the last time.
        rules.insert(
            at + 2,
            Arc::new(decode_filters::DynamicFiltersWhileDecoding),
        );
        // Repeated subplans are marked before DataFusion pushes filters for the last time,
        // so no copy takes a filter from around it that the others lack, and shared once
        // the plan is final (after the rule above, which rewrites scans inside them).
        // (Not for a cluster: its executors could not decode the operators.)
        let at = rules
            .iter()
            .position(|r| r.name() == "FilterPushdown(Post)")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(shared_subplans::MarkRepeatedSubplans));
        let at = rules
            .iter()
            .position(|r| r.name() == "SanityCheckPlan")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(shared_subplans::ShareRepeatedSubplans));
    }
    if let Some(limit) = memory_limit {
        // After DataFusion has pushed every limit into its sort (LimitPushdown), and before
        // filters are pushed into scans for the last time, so no scan is handed the top-k
        // heap's threshold filter.
        let at = rules
            .iter()
            .position(|r| r.name() == "EnsureCooperative")
            .unwrap_or(rules.len());
        rules.insert(at, Arc::new(topk::SpillingTopK::new(limit)));
    }
    rules
}

/// What the rules' tests share: sessions with and without them, and answers with plans.
/// `plan` (optimized) planned by DataFusion after the rewrites that read the relations'
/// estimates, which only planning each relation gives: [`needed_groups`] when `narrow`,
/// [`join_order`] when `reorder`, and the filters the estimates sampled estimated from
/// their samples ([`filter_estimates`]). Each relation is planned and sampled once.
pub(crate) async fn plan_with_estimates(
    plan: &datafusion::logical_expr::LogicalPlan,
    state: &dyn datafusion::catalog::Session,
    narrow: bool,
    reorder: bool,
) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
    use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
    let mut plan = plan.clone();
    let mut estimates = join_order::Estimates::default();
    if narrow {
        plan = needed_groups::narrow(&plan, state, &mut estimates).await?;
    }
    if reorder {
        plan = join_order::reorder(&plan, state, &mut estimates).await?;
    }
    let plan = filter_estimates::mark(plan, &estimates)?;
    let extensions: Vec<Arc<dyn ExtensionPlanner + Send + Sync>> =
        vec![Arc::new(filter_estimates::SampledPlanner)];
    DefaultPhysicalPlanner::with_extension_planners(extensions)
        .create_physical_plan(&plan, state)
        .await
}

#[cfg(test)]
mod testing {
    use std::sync::Arc;

    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// The engine's query planner, as far as the rewrites it runs go: [`super::needed_groups`]
    /// when `narrow`, [`super::join_order`] when `reorder`. (The rewrites' tests may not use
    /// the engine's: it is a layer above.)
    #[derive(Debug)]
    pub(super) struct Planner {
        pub(super) narrow: bool,
        pub(super) reorder: bool,
    }

    #[async_trait::async_trait]
    impl datafusion::execution::context::QueryPlanner for Planner {
        async fn create_physical_plan(
            &self,
            plan: &datafusion::logical_expr::LogicalPlan,
            state: &dyn datafusion::catalog::Session,
        ) -> datafusion::common::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
            super::plan_with_estimates(plan, state, self.narrow, self.reorder).await
        }
    }

    /// A session with sluice's rules or DataFusion's alone, under a memory pool of `pool`.
    pub(super) fn session(sluice: bool, pool: Option<usize>) -> SessionContext {
        let mut state = state(pool.map(|size| (size, Arc::new(FairSpillPool::new(size)) as _)));
        if sluice {
            state = state.with_optimizer_rules(super::logical_rules(pool));
        }
        SessionContext::new_with_state(state.build())
    }

    /// A session with sluice's physical rules (those without a memory limit) or DataFusion's
    /// alone, and two partitions: for the physical rewrites' tests.
    pub(super) fn physical_session(sluice: bool) -> SessionContext {
        let mut state = state(None);
        if sluice {
            state = with_physical_rules(state, None);
        }
        SessionContext::new_with_state(state.build())
    }

    /// `state` with sluice's physical rules, those for a pool of `pool` bytes if given.
    pub(super) fn with_physical_rules(
        state: SessionStateBuilder,
        pool: Option<usize>,
    ) -> SessionStateBuilder {
        state.with_physical_optimizer_rules(super::physical_rules(
            datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules,
            pool,
            false,
        ))
    }

    /// A session's state with DataFusion's defaults and two partitions, over `pool` (its size
    /// and the pool) if given, with the sort reservation sluice's engine sets for a small pool.
    pub(super) fn state(pool: Option<(usize, Arc<dyn MemoryPool>)>) -> SessionStateBuilder {
        let mut runtime = RuntimeEnvBuilder::new();
        let mut config = SessionConfig::new().with_target_partitions(2);
        if let Some((size, pool)) = pool {
            runtime = runtime.with_memory_pool(pool);
            config.options_mut().execution.sort_spill_reservation_bytes = size / 8;
        }
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime.build_arc().unwrap())
            .with_default_features()
    }

    /// The optimized plan of `sql` in `ctx`, and its answer as a table.
    pub(super) async fn answer(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = format!(
            "{}",
            df.clone().into_optimized_plan().unwrap().display_indent()
        );
        let batches = df.collect().await.unwrap();
        (plan, pretty_format_batches(&batches).unwrap().to_string())
    }

    /// Asserts that each of `queries` gives DataFusion's answer with sluice's rules under a
    /// pool over seeded tables `t` of 0 to 3,000 rows, and that its plan names `marker`
    /// exactly when the query's flag says the rule rewrites it; without a memory limit, the
    /// first query is not rewritten.
    pub(super) async fn assert_datafusions_answers(queries: &[(&str, bool)], marker: &str) {
        for seed in 0..24u64 {
            let rows = [0, 1, 2, 3, 5, 40, 777, 3000][seed as usize % 8];
            let (ours, theirs) = (session(true, Some(1 << 30)), session(false, None));
            for ctx in [&ours, &theirs] {
                random_table(ctx, seed, rows);
            }
            for &(sql, rewritten) in queries {
                let (plan, got) = answer(&ours, sql).await;
                let (_, want) = answer(&theirs, sql).await;
                assert_eq!(got, want, "seed {seed}, {rows} rows: {sql}\n{plan}");
                assert_eq!(plan.contains(marker), rewritten, "{sql}\n{plan}");
            }
        }
        let unlimited = session(true, None);
        random_table(&unlimited, 1, 10);
        let (plan, _) = answer(&unlimited, queries[0].0).await;
        assert!(!plan.contains(marker), "{plan}");
    }

    /// Registers `t` in `ctx`: `rows` rows drawn with `seed`, in three partitions: a key `k`
    /// of a few values (NULL among them; every `x` of `k = 6` is NULL), an integer `x` with
    /// NULLs and repeats, a float `f` with NULL, NaN of both signs, infinities and both
    /// zeros, and a decimal `d` with NULLs.
    pub(super) fn random_table(ctx: &SessionContext, seed: u64, rows: usize) {
        use datafusion::arrow::array::{Decimal128Array, Float64Array, Int32Array, Int64Array};
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::record_batch::RecordBatch;
        use datafusion::datasource::MemTable;
        use rand::{Rng, SeedableRng};

        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int32, true),
            Field::new("x", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("d", DataType::Decimal128(12, 2), true),
        ]));
        let mut partitions = vec![Vec::new(); 3];
        let mut left = rows;
        for (p, part) in partitions.iter_mut().enumerate() {
            let n = if p == 2 {
                left
            } else {
                rng.random_range(0..=left)
            };
            left -= n;
            let k: Int32Array = (0..n)
                .map(|_| (!rng.random_bool(0.05)).then(|| rng.random_range(0..7)))
                .collect();
            let x: Int64Array = (0..n)
                .map(|i| {
                    let none = k.iter().nth(i).flatten() == Some(6) || rng.random_bool(0.1);
                    (!none).then(|| rng.random_range(-500..500))
                })
                .collect();
            let f: Float64Array = (0..n)
                .map(|_| match rng.random_range(0..40) {
                    0 => None,
                    1 => Some(if rng.random_bool(0.5) {
                        f64::NAN
                    } else {
                        -f64::NAN
                    }),
                    2 => Some(f64::INFINITY),
                    3 => Some(f64::NEG_INFINITY),
                    4 => Some(-0.0),
                    5 => Some(0.0),
                    _ => Some(rng.random_range(-1e6..1e6)),
                })
                .collect();
            let d = (0..n)
                .map(|_| (!rng.random_bool(0.1)).then(|| rng.random_range(-10_000_000..10_000_000)))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(12, 2)
                .unwrap();
            part.push(
                RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(k), Arc::new(x), Arc::new(f), Arc::new(d)],
                )
                .unwrap(),
            );
        }
        let table = MemTable::try_new(schema, partitions).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::{SWITCHES, Switches};

    /// Every rule a switch names is one the session runs (under a memory limit, where all
    /// are): a renamed rule would leave its switch turning nothing off.
    #[test]
    fn every_switch_names_rules_the_session_runs() {
        let limit = Some(1 << 30);
        let mut names: Vec<String> = super::logical_rules(limit)
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        names.extend(
            super::physical_rules(
                datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules,
                limit,
                false,
            )
            .iter()
            .map(|r| r.name().to_string()),
        );
        // (The engine's query planner runs this one by its name.)
        names.push(super::NEEDED_GROUPS.to_string());
        for (switch, rules) in SWITCHES {
            for rule in *rules {
                assert!(
                    names.iter().any(|n| n == rule),
                    "{switch}: {rule} in {names:?}"
                );
            }
        }
        let mut switches = Switches::default();
        switches.set("shared_subplans", false).unwrap();
        assert!(!switches.keeps("sluice_mark_repeated_subplans"));
        assert!(!switches.keeps("sluice_share_repeated_subplans"));
        assert!(switches.keeps("sluice_faster_decimal_arithmetic"));
        switches.set("shared_subplans", true).unwrap();
        assert!(switches.keeps("sluice_mark_repeated_subplans"));
        let unknown = switches.set("decimal", false).unwrap_err();
        assert!(
            unknown.contains("\"decimal\"") && unknown.contains("decimal_arith"),
            "{unknown}"
        );
    }
}
