//! [`WholePartitionByJoin`]: an aggregate over a whole window partition (`avg(x) OVER
//! (PARTITION BY k)`, no `ORDER BY`) computed as a grouping joined back to the rows, instead
//! of by buffering each partition whole.
//!
//! DataFusion computes such a window by holding every row of a partition until its last has
//! arrived, in buffers the memory pool does not count: under 64 MiB,
//! `SELECT l_quantity - avg(l_quantity) OVER (PARTITION BY l_returnflag) FROM lineitem` over
//! TPC-H SF 1 peaked at 454 MB of RSS. Under a memory limit sluice computes the aggregates
//! by grouping (which spills) and joins each row to its group's values (a join whose build
//! side is the groups), a NULL key matching a NULL key:
//!
//! ```sql
//! SELECT t.*, g.a
//! FROM (SELECT k, avg(x) AS a FROM t GROUP BY k) g
//! JOIN t ON g.k IS NOT DISTINCT FROM t.k
//! ```
//!
//! The input is read twice, so this is done only under a memory limit, and when reading it
//! again gives the same rows: table reads, joins of them, and aggregations of counts, sums,
//! minimums and maximums of no floats (see [`super::rereadable`]). Only a window node whose
//! every function is an aggregate over the whole partition (no `ORDER BY`, the default frame
//! or `UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING`) is rewritten. A float key comes with
//! one more, whether it is -0.0 ([`super::negative_zero`]): the window takes -0.0 and +0.0
//! to be two partitions, DataFusion's grouping one group. A key of a list or struct of
//! floats is left alone (see [`super::holds_floats`]). The values are the grouping's: for
//! exact types DataFusion's window's to the bit; a float sum or variance may differ in its
//! last bits, as DataFusion's own do between two partitionings of the input.

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::expr::{AggregateFunction, WindowFunction, WindowFunctionParams};
use datafusion::logical_expr::{
    Expr, ExprSchemable, Join, JoinConstraint, JoinType, LogicalPlan, LogicalPlanBuilder,
    Projection, Window, WindowFrameBound, WindowFunctionDefinition, col,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The rule; see the module documentation.
#[derive(Debug)]
pub(super) struct WholePartitionByJoin;

/// The alias of the groups' side of the join.
const GROUPS: &str = "__sluice_window";

/// `e` as an aggregate over its whole partition of `input`, with its partition keys; `None`
/// when it is another kind of window function, or one whose grouped form answers otherwise:
/// `min` and `max` of floats, which DataFusion's window takes NaN to be the largest of and its
/// grouping passes over (`max` of 1 and NaN is NaN in one and 1 in the other).
fn whole_partition_aggregate<'a>(e: &'a Expr, input: &LogicalPlan) -> Option<(Expr, &'a [Expr])> {
    let e = super::unaliased(e);
    let Expr::WindowFunction(w) = e else {
        return None;
    };
    let WindowFunction {
        fun: WindowFunctionDefinition::AggregateUDF(udf),
        params:
            WindowFunctionParams {
                args,
                partition_by,
                order_by,
                window_frame,
                filter,
                null_treatment,
                distinct,
            },
    } = w.as_ref()
    else {
        return None;
    };
    let unbounded = |b: &WindowFrameBound| match b {
        WindowFrameBound::Preceding(v) | WindowFrameBound::Following(v) => v.is_null(),
        WindowFrameBound::CurrentRow => false,
    };
    let whole = order_by.is_empty()
        && matches!(window_frame.start_bound, WindowFrameBound::Preceding(_))
        && matches!(window_frame.end_bound, WindowFrameBound::Following(_))
        && unbounded(&window_frame.start_bound)
        && unbounded(&window_frame.end_bound);
    let nan_unlike = matches!(udf.name(), "min" | "max")
        && args
            .iter()
            .any(|a| a.get_type(input.schema()).map_or(true, |t| t.is_floating()));
    if !whole || nan_unlike || e.is_volatile() {
        return None;
    }
    let aggregate = Expr::AggregateFunction(AggregateFunction::new_udf(
        Arc::clone(udf),
        args.clone(),
        *distinct,
        filter.clone(),
        vec![],
        *null_treatment,
    ));
    Some((aggregate, partition_by))
}

/// `window` as a grouping joined to its input: `None` when it is not all aggregates over
/// whole partitions of the same keys.
fn rewrite(window: &Window) -> Result<Option<LogicalPlan>> {
    let mut aggregates = Vec::with_capacity(window.window_expr.len());
    let mut keys: Option<&[Expr]> = None;
    for e in &window.window_expr {
        let Some((aggregate, partition_by)) = whole_partition_aggregate(e, &window.input) else {
            return Ok(None);
        };
        if keys.is_some_and(|k| k != partition_by) {
            return Ok(None);
        }
        keys = Some(partition_by);
        aggregates.push(aggregate);
    }
    let Some(keys) = keys else {
        return Ok(None);
    };
    // A key of floats inside a list or a struct: the window takes -0.0 and +0.0 to be two
    // partitions, a grouping one. (A plain float key is parted by [`super::negative_zero`].)
    let schema = window.input.schema();
    let nested_floats = |k: &Expr| {
        k.get_type(schema)
            .map_or(true, |t| !t.is_floating() && super::holds_floats(&t))
    };
    if keys.iter().any(|k| k.is_volatile() || nested_floats(k))
        || !super::rereadable(&window.input, super::Reread::Joins)
    {
        return Ok(None);
    }
    // `PARTITION BY a, a` is a grouping by `a`.
    let mut unique: Vec<Expr> = Vec::with_capacity(keys.len());
    for k in keys {
        let k = k.clone().unalias();
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    // A float key is grouped folded (-0.0 into +0.0, as the grouping folds it anyway) and
    // beside it whether it is -0.0, so that its groups are the window's partitions. Not the
    // bare column beside the flag: DataFusion would compute the flag from the group's
    // folded value (`eliminate_group_by_constant` takes a function of a grouped column to
    // be one value per group).
    let mut keys = Vec::with_capacity(unique.len());
    let mut signs = Vec::new();
    for k in unique {
        let t = k.get_type(schema)?;
        if t.is_floating() {
            signs.push(super::negative_zero(k.clone(), &t)?);
            keys.push(super::zero_folded(k, &t)?);
        } else {
            keys.push(k);
        }
    }
    keys.append(&mut signs);
    let groups = LogicalPlanBuilder::from(Arc::clone(&window.input))
        .aggregate(
            keys.iter().cloned(),
            aggregates
                .into_iter()
                .enumerate()
                .map(|(i, a)| a.alias(format!("__sluice_a{i}"))),
        )?
        .build()?;
    // The keys under names of sluice's, so that they clash with none of the input's.
    let named: Vec<Expr> = groups
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let c = Expr::Column(Column::new(q.cloned(), f.name()));
            if i < keys.len() {
                c.alias(format!("__sluice_k{i}"))
            } else {
                c
            }
        })
        .collect();
    let groups = LogicalPlanBuilder::from(groups)
        .project(named)?
        .alias(GROUPS)?
        .build()?;
    let on = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            (
                Expr::Column(Column::new(Some(GROUPS), format!("__sluice_k{i}"))),
                k.clone(),
            )
        })
        .collect();
    // The groups on the left, the side a hash join builds: there are fewer of them than rows.
    let joined = LogicalPlan::Join(Join::try_new(
        Arc::new(groups),
        Arc::clone(&window.input),
        on,
        None,
        JoinType::Inner,
        JoinConstraint::On,
        NullEquality::NullEqualsNull,
        false,
    )?);
    let columns = window.input.schema().fields().len();
    let exprs = window
        .schema
        .iter()
        .enumerate()
        .map(|(i, (q, f))| {
            let source = if i < columns {
                Expr::Column(Column::new(q.cloned(), f.name()))
            } else {
                col(Column::new(
                    Some(GROUPS),
                    format!("__sluice_a{}", i - columns),
                ))
            };
            source.alias_qualified(q.cloned(), f.name())
        })
        .collect();
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(joined),
    )?)))
}

impl OptimizerRule for WholePartitionByJoin {
    fn name(&self) -> &str {
        "sluice_whole_partition_by_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Window(window) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let built = rewrite(window);
        Ok(super::rewritten_or_as_is(self.name(), plan, built))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::displayable;

    use super::super::testing::{assert_datafusions_answers, session};

    /// Aggregates over whole partitions, as groupings joined back, give DataFusion's answers
    /// (row for row, in a total order) over seeded tables of every size from none to a few
    /// thousand rows: one key with NULLs, an expression as key, no key, several aggregates,
    /// a `DISTINCT` one, the explicit whole frame, a filter, a join as input, a key given
    /// twice, an aggregation of integers as input. Left alone: an `ORDER BY` in the window,
    /// another window function beside, an aggregation of floats as input, a key of a list of
    /// floats. (Float sums are left out: their last bits depend on the order of addition,
    /// in DataFusion's window too.)
    #[tokio::test]
    async fn whole_partition_aggregates_by_join_give_datafusions_answers() {
        let queries = [
            (
                "SELECT k, x, f, x - avg(x) OVER (PARTITION BY k) AS dx, \
                 count(*) OVER (PARTITION BY k) AS n, max(d) OVER (PARTITION BY k) AS hi, \
                 sum(d) OVER (PARTITION BY k) AS sd, avg(d) OVER (PARTITION BY k) AS ad, \
                 count(f) OVER (PARTITION BY k) AS nf \
                 FROM t ORDER BY k, x, f, d",
                true,
            ),
            (
                "SELECT k, x, d, count(DISTINCT x) OVER (PARTITION BY k, x % 3) AS n, \
                 min(d) OVER (PARTITION BY k, x % 3) AS lo FROM t WHERE f > 0 \
                 ORDER BY k, x, d, f",
                true,
            ),
            (
                "SELECT x, d, sum(x) OVER () AS s, count(x) OVER () AS n FROM t \
                 ORDER BY x, d, f, k",
                true,
            ),
            (
                "SELECT k, x, sum(x) OVER (PARTITION BY k ROWS BETWEEN UNBOUNDED PRECEDING \
                 AND UNBOUNDED FOLLOWING) AS s FROM t ORDER BY k, x, f, d",
                true,
            ),
            // A key repeated.
            (
                "SELECT k, x, sum(x) OVER (PARTITION BY k % 2, k % 2) AS s FROM t \
                 ORDER BY k, x, f, d",
                true,
            ),
            // -0.0 and +0.0 are two partitions to a window, one group to a grouping unless
            // parted by one more key; NaN and -NaN are two of both.
            (
                "SELECT f, x, count(*) OVER (PARTITION BY round(f / 1e7)) AS n FROM t \
                 ORDER BY f, x, k, d",
                true,
            ),
            (
                "SELECT f, k, x, count(*) OVER (PARTITION BY k, f) AS n, \
                 sum(x) OVER (PARTITION BY k, f) AS s FROM t ORDER BY f, k, x, d",
                true,
            ),
            (
                "SELECT f, x, count(x) OVER (PARTITION BY CAST(f AS REAL)) AS n FROM t \
                 WHERE f = 0 OR isnan(f) OR f IS NULL ORDER BY f, x, k, d",
                true,
            ),
            (
                "SELECT f, x, count(*) OVER (PARTITION BY [f]) AS n FROM t \
                 ORDER BY f, x, k, d",
                false,
            ),
            // NaN is the largest float to DataFusion's window, not to its grouping.
            (
                "SELECT k, f, max(f) OVER (PARTITION BY k) AS hi FROM t ORDER BY k, f, x, d",
                false,
            ),
            (
                "SELECT a.k, a.x, b.d, count(*) OVER (PARTITION BY a.k) AS n, \
                 sum(b.d) OVER (PARTITION BY a.k) AS s FROM t a JOIN t b ON a.x = b.x \
                 ORDER BY a.k, a.x, b.d, n, s",
                true,
            ),
            (
                "SELECT k, x, sum(x) OVER (PARTITION BY k ORDER BY x) AS s FROM t \
                 ORDER BY k, x, s, f",
                false,
            ),
            (
                "SELECT k, x, f, d, sum(x) OVER (PARTITION BY k) AS s, \
                 rank() OVER (PARTITION BY k) AS r FROM t ORDER BY k, x, f, d",
                false,
            ),
            // Over an aggregation of counts and integer sums, whose rows come out the same
            // each time it is read; not over a float sum.
            (
                "SELECT k, n, sum(n) OVER (PARTITION BY k % 2) AS s, \
                 max(sx) OVER (PARTITION BY k % 2) AS hi \
                 FROM (SELECT k, count(*) AS n, sum(x) AS sx FROM t GROUP BY k) ORDER BY k",
                true,
            ),
            (
                "SELECT k, n, sum(n) OVER (PARTITION BY k % 2) AS s \
                 FROM (SELECT k, count(*) AS n, sum(f) AS sf FROM t GROUP BY k) \
                 WHERE sf IS NOT NULL OR sf IS NULL ORDER BY k",
                false,
            ),
        ];
        assert_datafusions_answers(&queries, "__sluice_window").await;
    }

    /// Under a limit no window operator buffers the partitions: the executed plan of
    /// `avg(x) OVER (PARTITION BY k)` over 1,000,000 rows (in 3 partitions of which one
    /// holds most rows) has none, and each row gets its partition's mean, computed here.
    #[tokio::test]
    async fn a_whole_partition_aggregate_runs_without_a_window_buffer() {
        use datafusion::arrow::array::{Float64Array, Int64Array};

        let ctx = session(true, Some(16 << 20));
        let sql = "SELECT v, k, avg(v) OVER (PARTITION BY k) AS a FROM \
                   (SELECT value AS v, CASE WHEN value % 10 = 0 THEN value % 3 ELSE 0 END AS k \
                   FROM generate_series(1, 1000000))";
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert!(!shown.contains("WindowAggExec"), "{shown}");
        let mut sums = [0f64; 3];
        let mut counts = [0f64; 3];
        for v in 1..=1_000_000i64 {
            let k = if v % 10 == 0 { (v % 3) as usize } else { 0 };
            sums[k] += v as f64;
            counts[k] += 1.0;
        }
        let mut rows = 0;
        for batch in df.collect().await.unwrap() {
            let k = batch
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            let a = batch
                .column(2)
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap();
            for i in 0..batch.num_rows() {
                let k = k.value(i) as usize;
                assert!((a.value(i) - sums[k] / counts[k]).abs() < 1e-6, "k = {k}");
                rows += 1;
            }
        }
        assert_eq!(rows, 1_000_000);
    }
}
