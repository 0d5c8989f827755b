//! [`DistinctsApart`]: an aggregation with distinct aggregates of several different
//! arguments computed as one aggregation per argument, joined on the grouping keys.
//!
//! DataFusion computes `COUNT(DISTINCT a), COUNT(DISTINCT b)` with a set of values per group
//! and argument, which cannot spill: under a memory limit a large one fails (at 64 MiB,
//! `SELECT l_returnflag, COUNT(DISTINCT l_partkey), COUNT(DISTINCT l_orderkey) FROM lineitem
//! GROUP BY 1` over TPC-H SF 1, where DuckDB finishes). Its own `SingleDistinctToGroupBy`
//! splits an aggregation with one distinct argument into two ordinary groupings, which
//! spill. So each distinct argument gets its own aggregation (the other aggregates go with
//! the first), each of which that rule then splits, and the results are joined on the keys,
//! a NULL key matching a NULL key:
//!
//! ```sql
//! SELECT k, a.n_a, b.n_b
//! FROM (SELECT k, COUNT(DISTINCT a) AS n_a FROM t GROUP BY k) a
//! JOIN (SELECT k, COUNT(DISTINCT b) AS n_b FROM t GROUP BY k) b ON a.k IS NOT DISTINCT FROM b.k
//! ```
//!
//! A distinct aggregate of floats is left as it is: DataFusion's set takes -0.0 and +0.0 to
//! be two values, the grouping it would be split into one.
//!
//! The input is read once per argument, so this is done only when it is a table read (see
//! [`super::rereadable`]); under a memory limit, also when it is a join, a union, a sort or
//! an order-free aggregation ([`super::Reread::Joins`]): computing a join twice costs time,
//! a set of values per group that does not fit fails the query (at 256 MiB, two distinct
//! counts over `orders JOIN lineitem` at SF 1, where DuckDB finishes under 128 MB).

use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, NullEquality, Result};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Join, JoinConstraint, JoinType, LogicalPlan, Projection, SubqueryAlias,
};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The rule; see the module documentation.
#[derive(Debug)]
pub(super) struct DistinctsApart {
    /// What the input may be: table reads, or joins too under a memory limit.
    pub(super) reread: super::Reread,
}

/// The aggregates of `aggr_expr` by distinct argument list: the other (non-distinct)
/// aggregates go in the first group. `None` when there are not two distinct argument lists
/// or an aggregate has a filter or an order.
fn groups_by_argument(aggr_expr: &[Expr]) -> Option<Vec<Vec<usize>>> {
    let mut args: Vec<&Vec<Expr>> = Vec::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut plain = Vec::new();
    for (i, e) in aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { params, .. }) = e else {
            return None;
        };
        if params.filter.is_some() || !params.order_by.is_empty() {
            return None;
        }
        if !params.distinct {
            plain.push(i);
            continue;
        }
        match args.iter().position(|a| **a == params.args) {
            Some(g) => groups[g].push(i),
            None => {
                args.push(&params.args);
                groups.push(vec![i]);
            }
        }
    }
    if groups.len() < 2 {
        return None;
    }
    groups[0].extend(plain);
    Some(groups)
}

impl OptimizerRule for DistinctsApart {
    fn name(&self) -> &str {
        "sluice_distincts_apart"
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
        let LogicalPlan::Aggregate(agg) = plan else {
            return Ok(Transformed::no(plan));
        };
        // A distinct aggregate of floats stays in DataFusion's set, which takes -0.0 and
        // +0.0 to be two values: apart, DataFusion would compute it by a grouping, which
        // takes them to be one.
        let floats = agg.aggr_expr.iter().any(|e| {
            let zero = |a: &Expr| super::may_be_negative_zero(a, agg.input.schema());
            matches!(e, Expr::AggregateFunction(f)
                if f.params.distinct && f.params.args.iter().any(zero))
        });
        let groups = match groups_by_argument(&agg.aggr_expr) {
            Some(g)
                if !floats
                    && !matches!(agg.group_expr.first(), Some(Expr::GroupingSet(_)))
                    && super::rereadable(&agg.input, self.reread) =>
            {
                g
            }
            _ => return Ok(Transformed::no(LogicalPlan::Aggregate(agg))),
        };
        let keys = agg.group_expr.len();
        // One aggregation per argument, each under an alias of its own, so that the keys of
        // the joined results have different qualifiers (the projection gives the originals
        // back).
        let mut joined: Option<LogicalPlan> = None;
        // Where each aggregate of the original ends up: (alias, its column name).
        let mut found: Vec<Option<Column>> = vec![None; agg.aggr_expr.len()];
        for (g, members) in groups.iter().enumerate() {
            let aggr = members.iter().map(|&i| agg.aggr_expr[i].clone()).collect();
            let part = LogicalPlan::Aggregate(Aggregate::try_new(
                Arc::clone(&agg.input),
                agg.group_expr.clone(),
                aggr,
            )?);
            let alias = format!("__sluice_distinct_{g}");
            let part = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(part), &alias)?);
            for (j, &i) in members.iter().enumerate() {
                let (q, f) = part.schema().qualified_field(keys + j);
                found[i] = Some(Column::new(q.cloned(), f.name()));
            }
            joined = Some(match joined {
                None => part,
                Some(left) => {
                    let on = (0..keys)
                        .map(|k| {
                            let (lq, lf) = left.schema().qualified_field(k);
                            let (rq, rf) = part.schema().qualified_field(k);
                            (
                                Expr::Column(Column::new(lq.cloned(), lf.name())),
                                Expr::Column(Column::new(rq.cloned(), rf.name())),
                            )
                        })
                        .collect();
                    LogicalPlan::Join(Join::try_new(
                        Arc::new(left),
                        Arc::new(part),
                        on,
                        None,
                        JoinType::Inner,
                        JoinConstraint::On,
                        NullEquality::NullEqualsNull,
                        false,
                    )?)
                }
            });
        }
        let Some(joined) = joined else {
            return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
        };
        // The original's columns, by name and qualifier: the keys from the first
        // aggregation, each aggregate from its own.
        let schema = Arc::clone(&agg.schema);
        let mut exprs = Vec::with_capacity(schema.fields().len());
        for (i, (q, f)) in schema.iter().enumerate() {
            let source = if i < keys {
                let (sq, sf) = joined.schema().qualified_field(i);
                Column::new(sq.cloned(), sf.name())
            } else {
                match found.get(i - keys).cloned().flatten() {
                    Some(c) => c,
                    None => return Ok(Transformed::no(LogicalPlan::Aggregate(agg))),
                }
            };
            exprs.push(Expr::Column(source).alias_qualified(q.cloned(), f.name()));
        }
        let projection = Projection::try_new(exprs, Arc::new(joined))?;
        Ok(Transformed::yes(LogicalPlan::Projection(projection)))
    }
}
