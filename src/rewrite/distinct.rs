//! [`CountsBesideDistinct`]: lets DataFusion split a `COUNT(DISTINCT x)` that has `COUNT`s
//! beside it into two groupings.
//!
//! DataFusion computes `COUNT(DISTINCT x)` with a set of the values of `x` per group, held
//! in memory: its partial aggregation cannot spill, and under a memory limit a large one
//! fails ("Failed to allocate ... for PartialHashAggregateStream"). DataFusion's own rule
//! `SingleDistinctToGroupBy` rewrites such a query into two ordinary groupings, which spill
//! like any aggregate:
//!
//! ```sql
//! SELECT k, COUNT(x), SUM(s) FROM (SELECT k, x, SUM(v) AS s FROM t GROUP BY k, x) GROUP BY k
//! ```
//!
//! but only when the other aggregates are `SUM`, `MIN` or `MAX`, which can be computed in two
//! steps as they are. `COUNT` can too, as a sum of counts; this rule writes each `COUNT(a)`
//! beside a distinct aggregate as `SUM(CASE WHEN a IS NOT NULL THEN 1 ELSE 0 END)`, under a
//! projection that gives back the `COUNT`'s name and its 0 for no rows
//! (`COALESCE(SUM(...), 0)`), so that DataFusion's rule applies. It changes nothing where
//! DataFusion's rule would then not apply.
//!
//! DataFusion's rule sums the groups' sums, and the sum of a `DECIMAL(p, s)` is a
//! `DECIMAL(p + 10, s)`: a decimal `SUM` beside a distinct aggregate came out 10 digits wider
//! than the plan above it expects (DataFusion 55: `HAVING SUM(price) < 5000` then failed with
//! "Invalid comparison operation: Decimal128(35, 2) < Decimal128(25, 2)"). The same
//! projection casts such a sum back to its type.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, DFSchema, HashSet, Result};
use datafusion::functions::core::expr_fn::coalesce;
use datafusion::functions_aggregate::sum::sum_udaf;
use datafusion::logical_expr::expr::{AggregateFunction, AggregateFunctionParams};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, cast, lit, when};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The rule; see the module documentation.
#[derive(Debug)]
pub(super) struct CountsBesideDistinct;

/// Whether DataFusion's single-distinct rewrite applies to `aggr_expr` once their `COUNT`s
/// are sums, and this rule has something to prepare: a `COUNT` to write as a sum, or a
/// decimal `SUM` (of the aggregation's `schema`) whose type the split would widen.
fn to_rewrite(aggr_expr: &[Expr], schema: &DFSchema, input: &DFSchema, groups: usize) -> bool {
    let mut distinct_args = HashSet::new();
    let mut counts = 0;
    let mut decimal_sums = 0;
    for (i, e) in aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = e else {
            return false;
        };
        if params.filter.is_some() || !params.order_by.is_empty() {
            return false;
        }
        let name = func.name().to_lowercase();
        if params.distinct {
            distinct_args.extend(params.args.iter());
        } else if name == "count" {
            counts += 1;
        } else if name == "sum" {
            decimal_sums += usize::from(is_decimal(schema.field(groups + i).data_type()));
        } else if !matches!(name.as_str(), "min" | "max") {
            return false;
        }
    }
    // A distinct count of floats beside a `COUNT` stays DataFusion's set, which takes -0.0
    // and +0.0 to be two values where a grouping takes them to be one.
    let floats = distinct_args
        .iter()
        .any(|a| super::may_be_negative_zero(a, input));
    counts + decimal_sums > 0 && distinct_args.len() == 1 && !(counts > 0 && floats)
}

/// Whether values of `t` are decimals, whose `SUM` is 10 digits wider than its argument.
fn is_decimal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

/// `COUNT(a, b)` as `SUM(CASE WHEN a IS NOT NULL AND b IS NOT NULL THEN 1 ELSE 0 END)`.
fn count_as_sum(params: AggregateFunctionParams) -> Result<Expr> {
    let not_null = params
        .args
        .into_iter()
        .filter(|a| !matches!(a, Expr::Literal(v, _) if !v.is_null()))
        .map(|a| a.is_not_null())
        .reduce(Expr::and);
    let one = match not_null {
        Some(cond) => when(cond, lit(1i64)).otherwise(lit(0i64))?,
        None => lit(1i64),
    };
    Ok(Expr::AggregateFunction(AggregateFunction::new_udf(
        sum_udaf(),
        vec![one],
        false,
        None,
        vec![],
        None,
    )))
}

impl OptimizerRule for CountsBesideDistinct {
    fn name(&self) -> &str {
        "sluice_counts_beside_distinct"
    }

    // After its inputs: a rewritten aggregate is not visited again in the same pass, where
    // (top down) the optimizer would go on into the new projection's input, find a decimal
    // sum beside the distinct count again and wrap it again, without end.
    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        if matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_)))
            || !to_rewrite(
                &agg.aggr_expr,
                &agg.schema,
                agg.input.schema(),
                agg.group_expr.len(),
            )
        {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let mut counts = Vec::with_capacity(agg.aggr_expr.len());
        let aggr_expr = agg
            .aggr_expr
            .iter()
            .map(|e| match e {
                Expr::AggregateFunction(AggregateFunction { func, params })
                    if !params.distinct && func.name().eq_ignore_ascii_case("count") =>
                {
                    counts.push(true);
                    count_as_sum(params.clone())
                }
                e => {
                    counts.push(false);
                    Ok(e.clone())
                }
            })
            .collect::<Result<Vec<_>>>()?;
        // Two counts may become the same sum (`COUNT(*)` and `COUNT(2)`), or a sum already
        // there: the aggregate would then have one name twice. It is left as it is.
        let mut names = HashSet::new();
        if !aggr_expr
            .iter()
            .all(|e| names.insert(e.schema_name().to_string()))
        {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        }
        let Aggregate {
            input,
            group_expr,
            schema,
            ..
        } = agg;
        let groups = group_expr.len();
        let rewritten = Aggregate::try_new(input, group_expr, aggr_expr)?;
        // The original columns, by name and qualifier, from the rewritten aggregate's.
        let projection = (0..rewritten.schema.fields().len())
            .map(|i| {
                let (qualifier, field) = rewritten.schema.qualified_field(i);
                let value = Expr::Column(Column::new(qualifier.cloned(), field.name()));
                let (qualifier, field) = schema.qualified_field(i);
                let value = match i.checked_sub(groups) {
                    Some(a) if counts[a] => coalesce(vec![value, lit(0i64)]),
                    // (A no-op until DataFusion's split sums the sums, one type wider.)
                    Some(_) if is_decimal(field.data_type()) => {
                        cast(value, field.data_type().clone())
                    }
                    _ => value,
                };
                value.alias_qualified(qualifier.cloned(), field.name())
            })
            .collect::<Vec<_>>();
        let plan = datafusion::logical_expr::builder::project(
            LogicalPlan::Aggregate(rewritten),
            projection,
        )?;
        Ok(Transformed::yes(plan))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::DataType;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    use super::super::testing::{answer, session};

    /// `t`: 20 000 seeded rows, 7 groups `k` (and NULL), values `x` with NULLs and repeats,
    /// `v` with NULLs, a float `f` with both zeros.
    const T: &str = "CREATE VIEW t AS SELECT \
        CASE WHEN value % 11 = 0 THEN NULL ELSE (value * 7919) % 7 END AS k, \
        CASE WHEN value % 13 = 0 THEN NULL ELSE (value * 104729) % 3001 END AS x, \
        CASE WHEN value % 5 = 0 THEN NULL ELSE value % 1000 END AS v, \
        CASE WHEN value % 17 = 0 THEN CAST('-0.0' AS DOUBLE) \
        ELSE CAST(value % 9 AS DOUBLE) / 4 END AS f \
        FROM generate_series(1, 20000)";

    #[tokio::test]
    async fn counts_beside_a_distinct_count_give_datafusions_answers_in_two_groupings() {
        let (ours, theirs) = (session(true, None), session(false, None));
        for ctx in [&ours, &theirs] {
            ctx.sql(T).await.unwrap();
        }
        for (sql, split) in [
            (
                "SELECT k, COUNT(*) AS n, COUNT(v) AS nv, SUM(v) AS s, MIN(v) AS lo, \
                 COUNT(DISTINCT x) AS dx FROM t GROUP BY k ORDER BY k",
                true,
            ),
            // Floats: DataFusion's set counts -0.0 and +0.0 apart, a grouping as one.
            (
                "SELECT k, COUNT(*) AS n, COUNT(DISTINCT f) AS df FROM t GROUP BY k ORDER BY k",
                false,
            ),
            (
                "SELECT COUNT(*) AS n, COUNT(v) AS nv, COUNT(DISTINCT x) AS dx FROM t",
                true,
            ),
            // No rows: the counts are 0, not NULL.
            (
                "SELECT COUNT(*) AS n, COUNT(v) AS nv, COUNT(DISTINCT x) AS dx FROM t \
                 WHERE v > 5000",
                true,
            ),
            (
                "SELECT k, COUNT(*) AS n, SUM(DISTINCT x) AS sx FROM t WHERE k > 2 \
                 GROUP BY k ORDER BY k",
                true,
            ),
            // Not rewritten: two counts that would be the same sum.
            (
                "SELECT COUNT(*) AS n, COUNT(2) AS two, SUM(1) AS one, COUNT(DISTINCT x) AS dx \
                 FROM t",
                false,
            ),
            // Not rewritten: an aggregate that cannot be computed in two steps as it is, or
            // distinct aggregates of two columns.
            (
                "SELECT k, COUNT(*) AS n, AVG(v) AS a, COUNT(DISTINCT x) AS dx FROM t \
                 GROUP BY k ORDER BY k",
                false,
            ),
        ] {
            let (plan, got) = answer(&ours, sql).await;
            let (_, want) = answer(&theirs, sql).await;
            assert_eq!(got, want, "{sql}\n{plan}");
            assert_eq!(plan.contains("alias1"), split, "{sql}\n{plan}");
        }
    }

    /// A decimal `SUM` beside a distinct count keeps its type through DataFusion's split, so
    /// a `HAVING` on it runs (DataFusion 55 alone fails: "Invalid comparison operation:
    /// Decimal128(35, 2) < Decimal128(25, 2)"), grouped and not, with and without a `COUNT`
    /// beside; the groups, sums and distinct counts are computed here from `t`'s formulas.
    #[tokio::test]
    async fn a_decimal_sum_beside_a_distinct_count_keeps_its_type() {
        use std::collections::{BTreeMap, BTreeSet};
        // Per group `k` (None: NULL): the sum of `v` in cents, and the distinct `x`.
        let mut groups: BTreeMap<Option<i64>, (i64, BTreeSet<i64>)> = BTreeMap::new();
        let mut all: (i64, BTreeSet<i64>) = Default::default();
        for value in 1..=20000i64 {
            let k = (value % 11 != 0).then(|| (value * 7919) % 7);
            let x = (value % 13 != 0).then(|| (value * 104729) % 3001);
            let v = (value % 5 != 0).then_some(value % 1000);
            for g in [groups.entry(k).or_default(), &mut all] {
                g.0 += v.unwrap_or(0) * 100;
                g.1.extend(x);
            }
        }
        let mut sums: Vec<i64> = groups.values().map(|g| g.0).collect();
        sums.sort_unstable();
        let bound = sums[sums.len() / 2];
        let cents = |c: i64| format!("{}.{:02}", c / 100, c % 100);
        let want: Vec<String> = groups
            .iter()
            .filter(|(_, g)| g.0 < bound)
            .map(|(k, g)| {
                let k = k.map_or(String::new(), |k| k.to_string());
                format!("{k}|{}|{}", cents(g.0), g.1.len())
            })
            .collect();
        assert!(!want.is_empty() && want.len() < groups.len(), "{want:?}");
        let ours = session(true, None);
        ours.sql(T).await.unwrap();
        let d = "CAST(v AS DECIMAL(15, 2))";
        let rows = |batches: &[datafusion::arrow::record_batch::RecordBatch]| -> Vec<String> {
            pretty_format_batches(batches)
                .unwrap()
                .to_string()
                .lines()
                .skip(3)
                .filter(|l| l.starts_with('|'))
                .map(|l| {
                    let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
                    cells.join("|")
                })
                .collect()
        };
        for count in ["", ", COUNT(*) AS n"] {
            let sql = format!(
                "SELECT k, SUM({d}) AS s, COUNT(DISTINCT x) AS dx{count} FROM t GROUP BY k \
                 HAVING SUM({d}) < {} ORDER BY k NULLS FIRST",
                cents(bound)
            );
            let got = ours.sql(&sql).await.unwrap().collect().await;
            let got = got.unwrap_or_else(|e| panic!("{sql}: {e}"));
            // The sum comes out as SQL types it: DECIMAL(15 + 10, 2).
            for batch in &got {
                let sum_type = batch.schema().field(1).data_type().clone();
                assert_eq!(sum_type, DataType::Decimal128(25, 2), "{sql}");
            }
            let got: Vec<String> = rows(&got)
                .iter()
                .map(|r| r.splitn(4, '|').take(3).collect::<Vec<_>>().join("|"))
                .collect();
            assert_eq!(got, want, "{sql}");
            let whole = format!(
                "SELECT SUM({d}) AS s, COUNT(DISTINCT x) AS dx{count} FROM t HAVING SUM({d}) > 0"
            );
            let got = ours.sql(&whole).await.unwrap().collect().await;
            let got = got.unwrap_or_else(|e| panic!("{whole}: {e}"));
            let got: Vec<String> = rows(&got)
                .iter()
                .map(|r| r.splitn(3, '|').take(2).collect::<Vec<_>>().join("|"))
                .collect();
            assert_eq!(
                got,
                vec![format!("{}|{}", cents(all.0), all.1.len())],
                "{whole}"
            );
        }
    }

    /// `sql` (5 groups `k` = 0..4, two counts of 400 000 each) gives its answer under a
    /// 16 MiB pool with sluice's rules, and fails there with DataFusion's alone (what the
    /// rules are for).
    async fn finishes_in_a_small_pool_where_datafusion_fails(sql: &str) {
        let (ours, theirs) = (
            session(true, Some(16 << 20)),
            session(false, Some(16 << 20)),
        );
        let got = ours.sql(sql).await.unwrap().collect().await.unwrap();
        let text = pretty_format_batches(&got).unwrap().to_string();
        for k in 0..5 {
            assert!(
                text.contains(&format!("| {k} | 400000 | 400000 |")),
                "{text}"
            );
        }
        let theirs = theirs.sql(sql).await.unwrap().collect().await;
        assert!(
            theirs
                .as_ref()
                .is_err_and(|e| e.to_string().contains("allocat")),
            "{theirs:?}"
        );
    }

    #[tokio::test]
    async fn a_distinct_count_of_many_values_beside_a_count_runs_in_a_small_pool() {
        // 5 groups of 400 000 distinct values each (in no order): per-group sets of several
        // MiB a group and partition, under a 16 MiB pool.
        let sql = "SELECT value % 5 AS k, COUNT(*) AS n, \
                   COUNT(DISTINCT (value * 7919) % 2000003) AS d \
                   FROM generate_series(1, 2000000) GROUP BY 1 ORDER BY 1";
        finishes_in_a_small_pool_where_datafusion_fails(sql).await;
    }

    /// Distinct aggregates of several arguments: one aggregation per argument, joined on the
    /// keys (NULL keys included), with DataFusion's answers: one key, two keys, none, other
    /// aggregates beside, two distinct aggregates of one argument, an expression as key, a
    /// filter, no rows; over a join only under a memory limit. Left alone: an input that may
    /// give other rows when read again (a `LIMIT`).
    #[tokio::test]
    async fn distinct_aggregates_of_several_arguments_are_computed_apart_with_datafusions_answers()
    {
        let (ours, limited, theirs) = (
            session(true, None),
            session(true, Some(1 << 30)),
            session(false, None),
        );
        for ctx in [&ours, &limited, &theirs] {
            ctx.sql(T).await.unwrap();
        }
        for (sql, apart, apart_limited) in [
            (
                "SELECT k, COUNT(DISTINCT x) AS dx, COUNT(DISTINCT v) AS dv FROM t \
                 GROUP BY k ORDER BY k",
                true,
                true,
            ),
            (
                "SELECT k, v % 3 AS m, COUNT(DISTINCT x) AS dx, SUM(DISTINCT v) AS sv, \
                 COUNT(*) AS n, MAX(x) AS hi FROM t GROUP BY k, v % 3 ORDER BY k, m",
                true,
                true,
            ),
            (
                "SELECT COUNT(DISTINCT x) AS dx, COUNT(DISTINCT v) AS dv, COUNT(*) AS n, \
                 AVG(v) AS a FROM t",
                true,
                true,
            ),
            (
                "SELECT k, COUNT(DISTINCT x) AS dx, SUM(DISTINCT x) AS sx, \
                 COUNT(DISTINCT v) AS dv FROM t WHERE x > 100 GROUP BY k ORDER BY k",
                true,
                true,
            ),
            (
                "SELECT k, COUNT(DISTINCT x) AS dx, COUNT(DISTINCT v) AS dv FROM t \
                 WHERE v > 5000 GROUP BY k ORDER BY k",
                true,
                true,
            ),
            (
                "SELECT COUNT(DISTINCT x) AS dx, COUNT(DISTINCT v) AS dv FROM t WHERE v > 5000",
                true,
                true,
            ),
            (
                "SELECT a.k, COUNT(DISTINCT a.x) AS dx, COUNT(DISTINCT b.v) AS dv \
                 FROM t a JOIN t b ON a.x = b.v GROUP BY a.k ORDER BY a.k",
                false,
                true,
            ),
            (
                "SELECT k, COUNT(DISTINCT f) AS df, COUNT(DISTINCT x) AS dx FROM t \
                 GROUP BY k ORDER BY k",
                false,
                false,
            ),
            // A limit: another read may stop at other rows.
            (
                "SELECT COUNT(DISTINCT x) AS dx, COUNT(DISTINCT v) AS dv \
                 FROM (SELECT * FROM t LIMIT 100)",
                false,
                false,
            ),
        ] {
            let (_, want) = answer(&theirs, sql).await;
            for (ctx, apart) in [(&ours, apart), (&limited, apart_limited)] {
                let (plan, got) = answer(ctx, sql).await;
                assert_eq!(got, want, "{sql}\n{plan}");
                assert_eq!(plan.contains("__sluice_distinct_1"), apart, "{sql}\n{plan}");
            }
        }
    }

    /// Two distinct counts over a join (of a small table with a large one), under a 16 MiB
    /// pool: each computed by its own aggregation over the join, read twice.
    #[tokio::test]
    async fn two_distinct_counts_over_a_join_run_in_a_small_pool() {
        let sql = "SELECT d.value AS k, COUNT(DISTINCT (s.value * 7919) % 2000003) AS da, \
                   COUNT(DISTINCT (s.value * 104729) % 2000003) AS db \
                   FROM generate_series(0, 4) d JOIN generate_series(1, 2000000) s \
                   ON s.value % 5 = d.value GROUP BY 1 ORDER BY 1";
        finishes_in_a_small_pool_where_datafusion_fails(sql).await;
    }

    #[tokio::test]
    async fn two_distinct_counts_of_many_values_run_in_a_small_pool() {
        // 5 groups of 400 000 distinct values of each argument, under a 16 MiB pool.
        let sql = "SELECT k, COUNT(DISTINCT a) AS da, COUNT(DISTINCT b) AS db FROM \
                   (SELECT value % 5 AS k, (value * 7919) % 2000003 AS a, \
                   (value * 104729) % 2000003 AS b FROM generate_series(1, 2000000)) \
                   GROUP BY 1 ORDER BY 1";
        finishes_in_a_small_pool_where_datafusion_fails(sql).await;
    }
}
