//! [`MedianBySort`]: `median(x)` computed from a sort of each group's values, which spills,
//! instead of from every value of a group held in memory, which cannot.
//!
//! DataFusion's `median` keeps all the values of a group (of the whole input, without
//! `GROUP BY`) and the final aggregation receives each group's values as one list: under a
//! memory limit a large group fails (at 64 MiB, `SELECT median(l_extendedprice) FROM lineitem`
//! over TPC-H SF 1, where DuckDB finishes). Under a limit sluice numbers each group's
//! non-NULL values in order (a window over a sort, which spills), counts them (an ordinary
//! grouping, which spills), keeps the one or two middle values and takes their median with
//! DataFusion's own `median`, so the answer is DataFusion's to the bit (the mean of the two
//! middle values in the argument's type). The other aggregates are computed as written and
//! the results joined on the grouping keys, a NULL key matching a NULL key:
//!
//! ```sql
//! SELECT a.k, a.s, m.m
//! FROM (SELECT k, SUM(y) AS s FROM t GROUP BY k) a
//! LEFT JOIN (
//!   SELECT r.k, median(r.x) AS m
//!   FROM (SELECT k, COUNT(x) AS c FROM t WHERE x IS NOT NULL GROUP BY k) n
//!   JOIN (SELECT k, x, row_number() OVER (PARTITION BY k ORDER BY x) AS rn
//!         FROM t WHERE x IS NOT NULL) r ON n.k IS NOT DISTINCT FROM r.k
//!   WHERE r.rn BETWEEN (n.c + 1) / 2 AND (n.c + 2) / 2
//!   GROUP BY r.k) m ON a.k IS NOT DISTINCT FROM m.k
//! ```
//!
//! The input is read three times (twice more per further argument of `median`), so this is
//! done only under a memory limit, and when reading it again gives the same rows: table
//! reads, joins of them, and aggregations of counts, sums, minimums and maximums of no
//! floats (see [`super::rereadable`]). A float key is folded as DataFusion's grouping folds
//! it, -0.0 into +0.0 ([`super::zero_folded`]), so that the numbering sees its groups. A
//! `median(DISTINCT x)` is rewritten as DataFusion plans it, a `median(x)` over a grouping
//! by the keys and `x`; one with a `FILTER (WHERE c)` numbers the rows where `c` holds. An
//! aggregation grouped by a list or struct of floats is left as it is (see
//! [`super::holds_floats`]).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, AggregateUDF, Cast, Expr, ExprFunctionExt, ExprSchemable, Join, JoinConstraint,
    JoinType, LogicalPlan, LogicalPlanBuilder, Projection, col, lit, when,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The rule; see the module documentation.
#[derive(Debug)]
pub(super) struct MedianBySort;

/// The alias of the groups with the aggregates other than medians.
const MAIN: &str = "__sluice_median";

/// A `median` of the aggregation, by argument.
struct Median {
    /// Its argument (with DataFusion's cast to its type, if any).
    arg: Expr,
    /// Its `FILTER (WHERE …)`, if any: the rows whose values it takes.
    filter: Option<Expr>,
    /// The `median` function itself, used again on the middle values.
    func: Arc<AggregateUDF>,
    /// The positions in the aggregation's `aggr_expr` of the medians of `arg`.
    at: Vec<usize>,
}

/// The medians of `aggr_expr` by argument, and the positions of the other aggregates.
/// `None` when there is no plain `median`.
fn medians(aggr_expr: &[Expr]) -> Option<(Vec<Median>, Vec<usize>)> {
    let mut medians: Vec<Median> = Vec::new();
    let mut others = Vec::new();
    for (i, e) in aggr_expr.iter().enumerate() {
        let inner = super::unaliased(e);
        let median = match inner {
            Expr::AggregateFunction(AggregateFunction { func, params })
                if func.name() == "median" && !params.distinct && params.args.len() == 1 =>
            {
                Some((func, &params.args[0], params.filter.as_deref()))
            }
            _ => None,
        };
        match median {
            Some((func, arg, filter)) => match medians
                .iter_mut()
                .find(|m| m.arg == *arg && m.filter.as_ref() == filter)
            {
                Some(m) => m.at.push(i),
                None => medians.push(Median {
                    arg: arg.clone(),
                    filter: filter.cloned(),
                    func: Arc::clone(func),
                    at: vec![i],
                }),
            },
            None => others.push(i),
        }
    }
    (!medians.is_empty()).then_some((medians, others))
}

/// The name of the `j`th grouping key in the plans the rule builds.
fn key(j: usize) -> String {
    format!("__sluice_k{j}")
}

/// A join of `left` and `right` on their columns `key(0..keys)` under the aliases `l` and
/// `r`, a NULL key matching a NULL key; with no keys, every row of one with every row of the
/// other.
fn join_on_keys(
    (left, l): (LogicalPlan, &str),
    (right, r): (LogicalPlan, &str),
    keys: usize,
    join_type: JoinType,
) -> Result<LogicalPlan> {
    let on = (0..keys)
        .map(|j| {
            (
                Expr::Column(Column::new(Some(l), key(j))),
                Expr::Column(Column::new(Some(r), key(j))),
            )
        })
        .collect();
    Ok(LogicalPlan::Join(Join::try_new(
        Arc::new(left),
        Arc::new(right),
        on,
        None,
        join_type,
        JoinConstraint::On,
        NullEquality::NullEqualsNull,
        false,
    )?))
}

/// The median of `median.arg` per group of `keys` over `input` (the rows its filter takes),
/// as the columns `key(j)` and `__sluice_m` under the alias `alias`: one row per group, its
/// median NULL when it has no non-NULL value.
fn middle_values(
    input: &Arc<LogicalPlan>,
    keys: &[Expr],
    median: &Median,
    alias: &str,
) -> Result<LogicalPlan> {
    // A float key is folded as the grouping folds it, so that the numbering's window sees
    // one group of -0.0 and +0.0 where the grouping does.
    let mut exprs = Vec::with_capacity(keys.len() + 1);
    for (j, k) in keys.iter().enumerate() {
        let t = k.get_type(input.schema())?;
        exprs.push(super::zero_folded(k.clone().unalias(), &t)?.alias(key(j)));
    }
    // A `FILTER (WHERE c)` as `CASE WHEN c THEN x END`: `c` is evaluated on the rows the
    // aggregate sees, as DataFusion evaluates it. (A filter node would be pushed below the
    // query's `WHERE` and joins, and `c` evaluated on rows they drop: `10 / y` on `y = 0`.)
    // NULL values are not filtered out, for the same reason: numbered after the others
    // (`NULLS LAST`), they are never between the middle positions of the non-NULL count.
    let value = match &median.filter {
        Some(c) => when(c.clone(), median.arg.clone()).end()?,
        None => median.arg.clone(),
    };
    exprs.push(value.alias("__sluice_v"));
    let values = LogicalPlanBuilder::from(Arc::clone(input))
        .project(exprs)?
        .build()?;
    let key_columns: Vec<Expr> = (0..keys.len()).map(|j| col(key(j))).collect();
    let (counted, rows) = (format!("{alias}_counts"), format!("{alias}_rows"));
    let counts = LogicalPlanBuilder::from(values.clone())
        .aggregate(
            key_columns.clone(),
            [count(col("__sluice_v")).alias("__sluice_c")],
        )?
        .alias(counted.as_str())?
        .build()?;
    let numbered = LogicalPlanBuilder::from(values)
        .window([row_number()
            .partition_by(key_columns)
            .order_by(vec![col("__sluice_v").sort(true, false)])
            .build()?
            .alias("__sluice_rn")])?
        .alias(rows.as_str())?
        .build()?;
    let n = Expr::Cast(Cast::new(
        Box::new(Expr::Column(Column::new(
            Some(rows.as_str()),
            "__sluice_rn",
        ))),
        DataType::Int64,
    ));
    let c = || Expr::Column(Column::new(Some(counted.as_str()), "__sluice_c"));
    let middle = n
        .clone()
        .gt_eq((c() + lit(1i64)) / lit(2i64))
        .and(n.lt_eq((c() + lit(2i64)) / lit(2i64)));
    let v = Expr::Column(Column::new(Some(rows.as_str()), "__sluice_v"));
    let m = Expr::AggregateFunction(AggregateFunction::new_udf(
        Arc::clone(&median.func),
        vec![v],
        false,
        None,
        vec![],
        None,
    ));
    LogicalPlanBuilder::from(join_on_keys(
        (counts, &counted),
        (numbered, &rows),
        keys.len(),
        JoinType::Inner,
    )?)
    .filter(middle)?
    .aggregate(
        (0..keys.len()).map(|j| Expr::Column(Column::new(Some(rows.as_str()), key(j)))),
        [m.alias("__sluice_m")],
    )?
    .alias(alias)?
    .build()
}

/// `agg` with its medians computed by [`middle_values`]: `None` when it has none that can be.
fn rewrite(agg: &Aggregate) -> Result<Option<LogicalPlan>> {
    let Some((medians, others)) = medians(&agg.aggr_expr) else {
        return Ok(None);
    };
    let schema = agg.input.schema();
    let typed = |e: &Expr| e.get_type(schema).is_ok_and(|t| t != DataType::Null);
    let floats = |e: &Expr| e.get_type(schema).map_or(true, |t| super::holds_floats(&t));
    // A key of floats inside a list or a struct: the grouping takes -0.0 and +0.0 as one
    // group, the numbering's window as two, and they cannot be folded as a plain float key
    // is ([`super::zero_folded`]). A distinct aggregate of floats left alone beside the
    // medians would be split by DataFusion into a grouping, which takes them as one value
    // where its set takes two.
    let nested_floats = |e: &Expr| {
        e.get_type(schema)
            .map_or(true, |t| !t.is_floating() && super::holds_floats(&t))
    };
    let distinct_of_floats = others.iter().any(|&i| {
        let e = super::unaliased(&agg.aggr_expr[i]);
        let zero = |a: &Expr| super::may_be_negative_zero(a, schema);
        matches!(e, Expr::AggregateFunction(f)
            if f.params.distinct && f.params.args.iter().any(zero))
    });
    // DataFusion computes a key that is a function of a float key column from the group's
    // value (+0.0 for -0.0: `eliminate_group_by_constant`), where the numbering would
    // compute it from each row (`1 / f`: inf for the group, -inf for a row of -0.0). Left
    // for that rule, which runs after this one, to take out of the grouping first.
    let float_columns: Vec<&Column> = agg
        .group_expr
        .iter()
        .filter_map(|k| match k {
            Expr::Column(c) if floats(k) => Some(c),
            _ => None,
        })
        .collect();
    let of_a_float_key = agg.group_expr.iter().any(|k| {
        !matches!(k, Expr::Column(_)) && k.column_refs().iter().any(|c| float_columns.contains(c))
    });
    if matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_)))
        || of_a_float_key
        || agg
            .group_expr
            .iter()
            .any(|k| k.is_volatile() || nested_floats(k))
        || distinct_of_floats
        || medians.iter().any(|m| {
            m.arg.is_volatile()
                || !typed(&m.arg)
                || m.filter.as_ref().is_some_and(Expr::is_volatile)
        })
        || !super::rereadable(&agg.input, super::Reread::Joins)
    {
        return Ok(None);
    }
    let keys = agg.group_expr.len();
    // The groups and the other aggregates, as written. Without keys and other aggregates
    // there is nothing to compute: each median part is one row.
    let main = if keys > 0 || !others.is_empty() {
        let exprs: Vec<Expr> = others.iter().map(|&i| agg.aggr_expr[i].clone()).collect();
        let groups = LogicalPlan::Aggregate(Aggregate::try_new(
            Arc::clone(&agg.input),
            agg.group_expr.clone(),
            exprs,
        )?);
        let named: Vec<Expr> = groups
            .schema()
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                let c = Expr::Column(Column::new(q.cloned(), f.name()));
                if i < keys { c.alias(key(i)) } else { c }
            })
            .collect();
        Some(
            LogicalPlanBuilder::from(groups)
                .project(named)?
                .alias(MAIN)?
                .build()?,
        )
    } else {
        None
    };
    // Where each aggregate of the original ends up.
    let mut found: Vec<Option<Column>> = vec![None; agg.aggr_expr.len()];
    if let Some(main) = &main {
        for (j, &i) in others.iter().enumerate() {
            let (q, f) = main.schema().qualified_field(keys + j);
            found[i] = Some(Column::new(q.cloned(), f.name()));
        }
    }
    // The plan so far, and the alias of the part whose keys are the groups'.
    let mut joined: Option<(LogicalPlan, String)> = main.map(|m| (m, MAIN.to_string()));
    // Groups with no non-NULL value have no middle row: their median is NULL.
    let join_type = if keys > 0 {
        JoinType::Left
    } else {
        JoinType::Inner
    };
    for (n, median) in medians.iter().enumerate() {
        let alias = format!("__sluice_median_{n}");
        let part = middle_values(&agg.input, &agg.group_expr, median, &alias)?;
        for &i in &median.at {
            found[i] = Some(Column::new(Some(alias.as_str()), "__sluice_m"));
        }
        joined = Some(match joined {
            None => (part, alias),
            Some((left, first)) => (
                join_on_keys((left, &first), (part, &alias), keys, join_type)?,
                first,
            ),
        });
    }
    let Some((joined, first)) = joined else {
        return Ok(None);
    };
    let mut exprs = Vec::with_capacity(agg.schema.fields().len());
    for (i, (q, f)) in agg.schema.iter().enumerate() {
        let source = if i < keys {
            Column::new(Some(first.as_str()), key(i))
        } else {
            match found.get(i - keys).cloned().flatten() {
                Some(c) => c,
                None => return Ok(None),
            }
        };
        exprs.push(Expr::Column(source).alias_qualified(q.cloned(), f.name()));
    }
    Ok(Some(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(joined),
    )?)))
}

impl OptimizerRule for MedianBySort {
    fn name(&self) -> &str {
        "sluice_median_by_sort"
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
        let LogicalPlan::Aggregate(agg) = &plan else {
            return Ok(Transformed::no(plan));
        };
        let built = rewrite(agg);
        Ok(super::rewritten_or_as_is(self.name(), plan, built))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::Float64Array;

    use super::super::testing::{assert_datafusions_answers, session};

    /// Medians by sort give DataFusion's answers over seeded tables of every size from none
    /// to a few thousand rows: grouped and not, integers (as floats), floats with NaN of
    /// both signs and infinities, decimals, NULL keys, float keys with both zeros, a group
    /// whose values are all NULL, several arguments, an argument used twice, other
    /// aggregates beside, an expression as key and as argument, no rows, an aggregation as
    /// input, `median(DISTINCT x)` (over DataFusion's grouping), `FILTER`s. Left alone: a
    /// key of a list of floats, an input whose rows may come out otherwise when read again
    /// (a float sum, `array_agg`).
    #[tokio::test]
    async fn medians_by_sort_give_datafusions_answers() {
        let queries = [
            (
                "SELECT k, median(x) AS m FROM t GROUP BY k ORDER BY k",
                true,
            ),
            (
                "SELECT median(x) AS mx, median(f) AS mf, median(d) AS md FROM t",
                true,
            ),
            (
                "SELECT k, COUNT(*) AS n, SUM(x) AS s, median(f) AS mf, median(x) AS mx, \
                 AVG(d) AS a, median(f) AS again, COUNT(DISTINCT x) AS dx FROM t \
                 GROUP BY k ORDER BY k",
                true,
            ),
            (
                "SELECT k, x % 3 AS g, median(d) AS md, median(x * 2 + 1) AS mx FROM t \
                 GROUP BY k, x % 3 ORDER BY k, g",
                true,
            ),
            (
                "SELECT COUNT(*) AS n, median(f) AS mf FROM t WHERE f > 0",
                true,
            ),
            ("SELECT median(x) AS m FROM t WHERE x > 1000", true),
            (
                "SELECT k, median(x) AS m FROM t WHERE x > 1000 GROUP BY k ORDER BY k",
                true,
            ),
            // DataFusion plans `median(DISTINCT x)` as a median over a grouping by
            // `k, CAST(x AS DOUBLE)`: its input can be read again, so it is rewritten.
            (
                "SELECT k, median(DISTINCT x) AS m FROM t GROUP BY k ORDER BY k",
                true,
            ),
            (
                "SELECT k, median(DISTINCT x) AS m, COUNT(*) AS n FROM t GROUP BY k ORDER BY k",
                true,
            ),
            // -0.0 and +0.0 are one group to a grouping, two to a window's numbering unless
            // folded; NaN and -NaN are two groups to both. A distinct count of floats split
            // off into a grouping would count them once.
            (
                "SELECT round(f / 1e7) AS r, median(x) AS m FROM t GROUP BY round(f / 1e7) \
                 ORDER BY r",
                true,
            ),
            (
                "SELECT f, k, COUNT(*) AS n, median(x) AS m, median(f) AS mf FROM t \
                 GROUP BY f, k ORDER BY f, k",
                true,
            ),
            (
                "SELECT CAST(f AS REAL) AS r, median(d) AS m FROM t \
                 WHERE f = 0 OR f = -0.0 OR isnan(f) OR f IS NULL \
                 GROUP BY CAST(f AS REAL) ORDER BY r",
                true,
            ),
            (
                "SELECT [f] AS l, median(x) AS m FROM t GROUP BY [f] ORDER BY l",
                false,
            ),
            (
                "SELECT k, count(DISTINCT f) AS n, median(x) AS m FROM t GROUP BY k ORDER BY k",
                false,
            ),
            (
                "SELECT k, median(x) FILTER (WHERE f > 0) AS m, median(x) AS all_x, \
                 median(x) FILTER (WHERE d < 0) AS neg, COUNT(*) FILTER (WHERE f > 0) AS n \
                 FROM t GROUP BY k ORDER BY k",
                true,
            ),
            (
                "SELECT median(d) FILTER (WHERE x IS NULL OR x > 100) AS m FROM t",
                true,
            ),
            // The filter and the argument are evaluated on the rows the aggregate sees, not
            // below the `WHERE` (where `x = 0` would divide by zero).
            (
                "SELECT k, median(x) FILTER (WHERE 100 / x > 1) AS m, median(1000 / x) AS q \
                 FROM t WHERE x <> 0 GROUP BY k ORDER BY k",
                true,
            ),
            // A key computed from a float key is computed from the group's +0.0 by
            // DataFusion, from each row by a numbering: left as written until DataFusion
            // takes it out of the grouping (in the optimizer's next pass).
            (
                "SELECT f, 1 / f AS r, median(x) AS m FROM t GROUP BY f, 1 / f ORDER BY f",
                true,
            ),
            (
                "SELECT a.k, median(b.x) AS m, median(a.f) AS mf FROM t a JOIN t b ON a.x = b.x \
                 GROUP BY a.k ORDER BY a.k",
                true,
            ),
            // Over an aggregation of counts and integer sums, whose rows come out the same
            // each time it is read, grouped by a float too; not over a float sum.
            (
                "SELECT n % 3 AS g, median(s) AS m, median(hi) AS mh FROM \
                 (SELECT k, COUNT(*) AS n, SUM(x) AS s, MAX(d) AS hi FROM t GROUP BY k) \
                 GROUP BY 1 ORDER BY 1",
                true,
            ),
            (
                "SELECT n % 3 AS g, median(s) AS m FROM \
                 (SELECT k, COUNT(*) AS n, SUM(f) AS s FROM t GROUP BY k) GROUP BY 1 ORDER BY 1",
                false,
            ),
            (
                "SELECT median(n) AS m FROM (SELECT f, COUNT(*) AS n FROM t GROUP BY f)",
                true,
            ),
            (
                "SELECT f, median(n) AS m FROM (SELECT f, k, COUNT(*) AS n FROM t GROUP BY f, k) \
                 GROUP BY f ORDER BY f",
                true,
            ),
            (
                "SELECT median(cardinality(xs)) AS m FROM \
                 (SELECT k, array_agg(x) AS xs FROM t GROUP BY k)",
                false,
            ),
        ];
        assert_datafusions_answers(&queries, "__sluice_median_0").await;
    }

    /// The median of `values` as DataFusion gives it for integers: as floats, the mean of
    /// the two middle values of an even count.
    fn median_of(mut values: Vec<i64>) -> f64 {
        values.sort_unstable();
        let n = values.len();
        if n % 2 == 1 {
            values[n / 2] as f64
        } else {
            (values[n / 2 - 1] as f64 + values[n / 2] as f64) / 2.0
        }
    }

    /// 2,000,000 values under a 16 MiB pool: DataFusion's median fails to allocate; the
    /// sorted one finishes, with the medians computed here, grouped and not.
    #[tokio::test]
    async fn medians_of_many_values_run_in_a_small_pool() {
        let pool = 16 << 20;
        let value = |i: i64| (i * 7919) % 2_000_003;
        let input = "(SELECT value % 3 AS k, (value * 7919) % 2000003 AS v \
                     FROM generate_series(1, 2000000))";
        let grouped = format!("SELECT k, median(v) AS m FROM {input} GROUP BY k ORDER BY k");
        let whole = format!("SELECT median(v) AS m, COUNT(*) AS n FROM {input}");
        let ours = session(true, Some(pool));
        let batches = ours.sql(&grouped).await.unwrap().collect().await.unwrap();
        let got: Vec<f64> = batches
            .iter()
            .flat_map(|b| {
                let m = b.column(1).as_any().downcast_ref::<Float64Array>().unwrap();
                m.values().to_vec()
            })
            .collect();
        let want: Vec<f64> = (0..3)
            .map(|k| median_of((1..=2_000_000).filter(|i| i % 3 == k).map(value).collect()))
            .collect();
        assert_eq!(got, want);
        let batches = ours.sql(&whole).await.unwrap().collect().await.unwrap();
        let m = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0);
        assert_eq!(m, median_of((1..=2_000_000).map(value).collect()));

        let theirs = session(false, Some(pool));
        for sql in [&grouped, &whole] {
            let failed = theirs.sql(sql).await.unwrap().collect().await;
            assert!(
                failed
                    .as_ref()
                    .is_err_and(|e| e.to_string().contains("allocat")),
                "{sql}: {failed:?}"
            );
        }
    }
}
