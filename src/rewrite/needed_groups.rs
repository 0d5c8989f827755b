//! An aggregation joined on one of its keys computes only the groups the join can match:
//! its input is first narrowed to the keys of a relation on the other side of the join
//! (a semi-join reduction, as DuckDB's delim join and "magic sets" do).
//!
//! DataFusion decorrelates `WHERE x = (SELECT min(y) FROM t WHERE t.k = o.k)` into a join
//! of the outer query with `SELECT k, min(y) FROM t GROUP BY k`: every group of `t` is
//! computed, and the join keeps the few the outer query's rows name (TPC-H q2 aggregates
//! 7.8 M rows of `partsupp` into 1.2 M groups at scale 10, for 4.7 K outer rows). The hash
//! join's dynamic filter narrows the aggregation's scan only when the join's keys are all
//! the aggregation's keys; q2 also joins on `ps_supplycost = min(ps_supplycost)`, so its
//! filter cannot pass the aggregation.
//!
//! The rewrite, run where the relations' statistics can be read (the engine's planner,
//! before join ordering): for a join with an equality `o.a = g.k` between a column of the
//! outer side and a key `k` of an aggregation on the other side (through projections,
//! aliases and filters),
//!
//! 1. the *keys*: a relation of the outer side that `a` comes from ([`origins`]), or one
//!    joined to it on `a`, whose values hold every value `a` takes in the outer side's
//!    rows: a scan with its filters (read again: [`super::Reread::Tables`]);
//! 2. the *place*: the relation of the aggregation's input that `k` comes from, through
//!    joins that keep or drop its rows one by one ([`place`]), else the input itself;
//! 3. the place becomes a semi join of it with the keys, which drops exactly the input
//!    rows of groups the join could not match; the groups kept are computed from the same
//!    rows as before.
//!
//! It is valid for the joins that keep no unmatched group (inner, semi either way, anti,
//! mark, and outer joins that preserve the outer side), not for a join that keeps the
//! aggregation's unmatched groups, a null-aware anti join (`NOT IN`, which a NULL group
//! changes), grouping sets, a join that takes NULL keys as equal, or an aggregate whose
//! value follows its rows' order (`first_value`, `array_agg` without `ORDER BY`). It is made only
//! when it pays, by the relations' estimates: the keys' relation is filtered to at most
//! [`KEEPS_AT_MOST`] of its rows, its rows are at most that share of the place's distinct
//! keys, and reading it costs no more than reading the place (rows before filters).

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, NullEquality, Result};
use datafusion::logical_expr::{
    Expr, Join, JoinConstraint, LogicalPlan, Projection, SubqueryAlias,
};

use super::join_order::Estimates;
use super::{Reread, rereadable, unaliased};

/// The largest share of the place's distinct keys the keys' relation's rows may number, and
/// of its own rows its filters may keep, for the rewrite to be made: a semi join that keeps
/// most rows costs its probes and saves little, and a relation read whole may hold every key.
const KEEPS_AT_MOST: f64 = 0.25;

/// The prefix of the alias the keys are read under, so that their columns never clash with
/// the place's (the keys may be read from the same table).
const KEYS_ALIAS: &str = "__sluice_keys";

/// `plan` with each aggregation joined on a key narrowed to the keys the join can match,
/// where the estimates (made once per query, in `estimates`) say it pays.
pub(crate) async fn narrow(
    plan: &LogicalPlan,
    state: &dyn Session,
    estimates: &mut Estimates,
) -> Result<LogicalPlan> {
    let mut relations = Vec::new();
    plan.apply(|node| {
        for site in Site::all(node) {
            relations.push(site.place.clone());
            relations.extend(site.keys.iter().map(|(r, _)| r.clone()));
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if relations.is_empty() {
        return Ok(plan.clone());
    }
    estimates.add(relations, state).await;
    let mut made = 0;
    let narrowed = plan.clone().transform_down(|node| {
        let sites = Site::all(&node);
        let best = sites
            .iter()
            .filter_map(|site| site.choice(estimates))
            .min_by(|a, b| a.0.total_cmp(&b.0));
        let Some((share, site, keys)) = best else {
            return Ok(Transformed::no(node));
        };
        match site.rewritten(&node, keys, made) {
            Ok(plan) => {
                made += 1;
                tracing::debug!(
                    "needed groups: {} narrowed to {} ({:.4} of its keys)",
                    site.place_key,
                    keys.1,
                    share
                );
                Ok(Transformed::yes(plan))
            }
            Err(e) => {
                tracing::debug!("needed groups: left as written: {e}");
                Ok(Transformed::no(node))
            }
        }
    })?;
    Ok(narrowed.data)
}

/// One equality of a join between an outer column and an aggregation's key, with what the
/// rewrite needs of it.
struct Site {
    /// The join's child the aggregation is under: 0 left, 1 right.
    side: usize,
    /// The path from that child to the place (child indexes).
    path: Vec<usize>,
    /// The relation the semi join goes above, and the key's column in it.
    place: LogicalPlan,
    place_key: Column,
    /// Relations of the outer side holding every value of the outer column, each with the
    /// column holding them.
    keys: Vec<(LogicalPlan, Column)>,
}

impl Site {
    /// The sites of `node`, if it is a join the rewrite is valid for.
    fn all(node: &LogicalPlan) -> Vec<Site> {
        let LogicalPlan::Join(join) = node else {
            return Vec::new();
        };
        if join.null_equality != NullEquality::NullEqualsNothing || join.null_aware {
            return Vec::new();
        }
        // The sides an aggregation's unmatched groups may be dropped from: those the join
        // keeps no unmatched row of.
        let (left, right) = match join.join_type {
            JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => (true, true),
            JoinType::Left | JoinType::LeftAnti | JoinType::LeftMark => (false, true),
            JoinType::Right | JoinType::RightAnti | JoinType::RightMark => (true, false),
            JoinType::Full => (false, false),
        };
        let mut sites = Vec::new();
        for (l, r) in &join.on {
            let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
                continue;
            };
            for (side, outer, outer_key, inner, inner_key) in [
                (0, &join.right, r, &join.left, l),
                (1, &join.left, l, &join.right, r),
            ] {
                if (side == 0 && !left) || (side == 1 && !right) {
                    continue;
                }
                let Some((mut path, input_key)) = group_key(inner, inner_key) else {
                    continue;
                };
                let agg_input = descend(inner, &path);
                let (below, place_key) = place(agg_input, &input_key);
                path.extend(&below);
                let mut keys = Vec::new();
                origins(outer, outer_key, &mut keys);
                if keys.is_empty() {
                    continue;
                }
                sites.push(Site {
                    side,
                    place: descend(inner, &path).clone(),
                    path,
                    place_key,
                    keys,
                });
            }
        }
        sites
    }

    /// The keys' relation this site would be narrowed by, with the share of the place's
    /// keys it holds, if it pays.
    fn choice<'a>(
        &'a self,
        estimates: &Estimates,
    ) -> Option<(f64, &'a Site, &'a (LogicalPlan, Column))> {
        let place = estimates.of(&self.place)?;
        let index = self.place.schema().maybe_index_of_column(&self.place_key)?;
        let groups = place
            .ndv
            .get(index)
            .copied()
            .flatten()
            .unwrap_or(place.rows);
        self.keys
            .iter()
            .filter_map(|k| {
                let keys = estimates.of(&k.0)?;
                let share = keys.rows / groups.max(1.0);
                // A relation read whole may hold every key (a dimension's primary key):
                // its filters are what narrow.
                let filtered = keys.rows <= KEEPS_AT_MOST * keys.unfiltered;
                (share <= KEEPS_AT_MOST && filtered && keys.unfiltered <= place.unfiltered)
                    .then_some((share, self, k))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }

    /// The join `node` with the place under its aggregation narrowed to `keys`, read under
    /// the alias numbered `n`.
    fn rewritten(
        &self,
        node: &LogicalPlan,
        (relation, column): &(LogicalPlan, Column),
        n: usize,
    ) -> Result<LogicalPlan> {
        let alias = format!("{KEYS_ALIAS}_{n}");
        let projected = Projection::try_new(
            vec![Expr::Column(column.clone())],
            Arc::new(relation.clone()),
        )?;
        let keys = SubqueryAlias::try_new(Arc::new(LogicalPlan::Projection(projected)), alias)?;
        let key = Column::from(keys.schema.qualified_field(0));
        let narrowed = Join::try_new(
            Arc::new(self.place.clone()),
            Arc::new(LogicalPlan::SubqueryAlias(keys)),
            vec![(Expr::Column(self.place_key.clone()), Expr::Column(key))],
            None,
            JoinType::LeftSemi,
            JoinConstraint::On,
            NullEquality::NullEqualsNothing,
            false,
        )?;
        // The nodes above keep their schemas: the semi join's must be the place's, metadata
        // included (a join merges its sides' metadata).
        if narrowed.schema.as_arrow() != self.place.schema().as_arrow() {
            return datafusion::common::plan_err!("the keys' metadata would change the schema");
        }
        let mut path = vec![self.side];
        path.extend(&self.path);
        replace_at(node, &path, LogicalPlan::Join(narrowed))
    }
}

/// The node `path` leads to from `plan`.
fn descend<'a>(plan: &'a LogicalPlan, path: &[usize]) -> &'a LogicalPlan {
    path.iter().fold(plan, |node, &i| node.inputs()[i])
}

/// `plan` with the node `path` leads to replaced by `new`, of the same schema.
fn replace_at(plan: &LogicalPlan, path: &[usize], new: LogicalPlan) -> Result<LogicalPlan> {
    let Some((&first, rest)) = path.split_first() else {
        return Ok(new);
    };
    let mut new = Some(new);
    let mut i = 0;
    let replaced = plan.clone().map_children(|child| {
        let child = match new.take_if(|_| i == first) {
            Some(new) => replace_at(&child, rest, new)?,
            None => child,
        };
        i += 1;
        Ok(Transformed::yes(child))
    })?;
    Ok(replaced.data)
}

/// The column of `plan`'s child `0` that `column` of `plan`'s output passes on unchanged,
/// through a projection, an alias or a filter.
fn passed_on(plan: &LogicalPlan, column: &Column) -> Option<Column> {
    match plan {
        LogicalPlan::Projection(p) => {
            let i = p.schema.maybe_index_of_column(column)?;
            match unaliased(&p.expr[i]) {
                Expr::Column(c) => Some(c.clone()),
                _ => None,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            let i = a.schema.maybe_index_of_column(column)?;
            Some(Column::from(a.input.schema().qualified_field(i)))
        }
        LogicalPlan::Filter(_) => Some(column.clone()),
        _ => None,
    }
}

/// The join's child (0 left, 1 right) that `column` of its output comes from.
fn join_side(join: &Join, column: &Column) -> Option<usize> {
    let i = join.schema.maybe_index_of_column(column)?;
    let left = join.left.schema().fields().len();
    Some(match join.join_type {
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark if i < left => 0,
        JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark
            if i < join.right.schema().fields().len() =>
        {
            1
        }
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full if i < left => 0,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => 1,
        _ => return None,
    })
}

/// The path from `plan` to the aggregation whose grouping key `column` of `plan`'s output
/// is (through projections, aliases and filters), with the key's column in the
/// aggregation's input: a plain column, in a grouping without grouping sets.
fn group_key(plan: &LogicalPlan, column: &Column) -> Option<(Vec<usize>, Column)> {
    let mut path = Vec::new();
    let mut node = plan;
    let mut column = column.clone();
    loop {
        if let LogicalPlan::Aggregate(agg) = node {
            if agg
                .group_expr
                .iter()
                .any(|e| matches!(e, Expr::GroupingSet(_)))
                || agg.aggr_expr.iter().any(follows_row_order)
            {
                return None;
            }
            let i = agg.schema.maybe_index_of_column(&column)?;
            return match agg.group_expr.get(i).map(unaliased) {
                Some(Expr::Column(c)) => {
                    path.push(0);
                    Some((path, c.clone()))
                }
                _ => None,
            };
        }
        column = passed_on(node, &column)?;
        path.push(0);
        node = node.inputs()[0];
    }
}

/// Whether `e` is an aggregate whose value follows the order its rows come in (the first
/// or last value, values gathered in a list or a text, without an order of their own): a
/// semi join below it may hand it its rows in another order.
fn follows_row_order(e: &Expr) -> bool {
    const ORDERED: [&str; 5] = [
        "first_value",
        "last_value",
        "nth_value",
        "array_agg",
        "string_agg",
    ];
    matches!(unaliased(e), Expr::AggregateFunction(f)
        if ORDERED.contains(&f.func.name()) && f.params.order_by.is_empty())
}

/// Where below `plan` (an aggregation's input) rows may be dropped by the value of
/// `column` exactly as dropping them from `plan`'s output would: the path to the relation
/// the column comes from, through projections, aliases, filters and the sides of joins
/// whose rows the join keeps or drops one by one (never a side an outer join pads with
/// NULLs), and the column there. The empty path (`plan` itself) if none is deeper.
fn place(plan: &LogicalPlan, column: &Column) -> (Vec<usize>, Column) {
    let mut path = Vec::new();
    let mut node = plan;
    let mut column = column.clone();
    loop {
        let next = match node {
            LogicalPlan::Join(join) => join_side(join, &column)
                .filter(|&side| match join.join_type {
                    JoinType::Inner => true,
                    JoinType::Left
                    | JoinType::LeftSemi
                    | JoinType::LeftAnti
                    | JoinType::LeftMark => side == 0,
                    JoinType::Right
                    | JoinType::RightSemi
                    | JoinType::RightAnti
                    | JoinType::RightMark => side == 1,
                    JoinType::Full => false,
                })
                .map(|side| (side, column.clone())),
            // A relation: the semi join goes above it whole.
            _ if rereadable(node, Reread::Tables) => None,
            other => passed_on(other, &column).map(|c| (0, c)),
        };
        let Some((i, c)) = next else {
            return (path, column);
        };
        path.push(i);
        node = node.inputs()[i];
        column = c;
    }
}

/// Collects into `out` the relations below `plan` (scans with their filters, projections
/// and aliases) whose `column`'s values hold every value `column` of `plan`'s output takes,
/// other than NULL: the one it comes from, and those joined to it on it by a join that
/// keeps only rows with a match.
fn origins(plan: &LogicalPlan, column: &Column, out: &mut Vec<(LogicalPlan, Column)>) {
    if rereadable(plan, Reread::Tables) {
        if plan.schema().has_column(column) {
            out.push((plan.clone(), column.clone()));
        }
        return;
    }
    match plan {
        LogicalPlan::Join(join) => {
            let Some(side) = join_side(join, column) else {
                return;
            };
            let child = if side == 0 { &join.left } else { &join.right };
            origins(child, column, out);
            // The other side's key holds this side's values where the join keeps only rows
            // with a match on this side.
            let matched = match join.join_type {
                JoinType::Inner => true,
                JoinType::LeftSemi | JoinType::Right => side == 0,
                JoinType::RightSemi | JoinType::Left => side == 1,
                _ => false,
            };
            if !matched {
                return;
            }
            for (l, r) in &join.on {
                let (Expr::Column(l), Expr::Column(r)) = (l, r) else {
                    continue;
                };
                match side {
                    0 if l == column => origins(&join.right, r, out),
                    1 if r == column => origins(&join.left, l, out),
                    _ => {}
                }
            }
        }
        other => {
            if let Some(c) = passed_on(other, column) {
                origins(other.inputs()[0], &c, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int32Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use rand::{Rng, SeedableRng};

    fn session(narrow: bool) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(SessionConfig::new().with_target_partitions(2))
            .with_default_features()
            .with_query_planner(Arc::new(crate::rewrite::testing::Planner {
                narrow,
                reorder: false,
            }))
            .build();
        SessionContext::new_with_state(state)
    }

    /// Registers `rows` as table `name` of Int32 columns `names`, in two partitions.
    fn table(ctx: &SessionContext, name: &str, names: &[&str], rows: &[Vec<Option<i32>>]) {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|n| Field::new(*n, DataType::Int32, true))
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<ArrayRef> = (0..names.len())
            .map(|c| Arc::new(rows.iter().map(|r| r[c]).collect::<Int32Array>()) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
        let n = rows.len();
        let halves = vec![
            vec![batch.slice(0, n / 2)],
            vec![batch.slice(n / 2, n - n / 2)],
        ];
        let table = MemTable::try_new(schema, halves).unwrap();
        ctx.register_table(name, Arc::new(table)).unwrap();
    }

    /// Registers, drawn with `seed`: the aggregated table `t(k, v)`; the outer table
    /// `o(k, x, flag)`, a twentieth of whose rows have `flag = 1`; and `p(pk, flag)`, joined
    /// to `o` on `k`. A key is NULL one time in ten.
    fn tables(ctx: &SessionContext, seed: u64, rows: usize) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keys = (rows / 4).max(1) as i32;
        let mut draw = |c: usize, small: bool| -> Option<i32> {
            match c {
                0 if rng.random_bool(0.1) => None,
                0 => Some(rng.random_range(0..keys)),
                2 if small => Some(i32::from(rng.random_bool(0.05))),
                _ => Some(rng.random_range(-20..20)),
            }
        };
        let t: Vec<_> = (0..rows * 2)
            .map(|_| vec![draw(0, false), draw(1, false)])
            .collect();
        let o: Vec<_> = (0..rows / 4)
            .map(|_| vec![draw(0, true), draw(1, true), draw(2, true)])
            .collect();
        let p: Vec<_> = (0..rows / 4)
            .map(|_| vec![draw(0, true), draw(2, true)])
            .collect();
        table(ctx, "t", &["k", "v"], &t);
        table(ctx, "o", &["k", "x", "flag"], &o);
        table(ctx, "p", &["pk", "flag"], &p);
    }

    /// The plan the rewrite makes of `sql` (logical, narrowed) and its sorted answer.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let optimized = df.clone().into_optimized_plan().unwrap();
        let narrowed = super::narrow(&optimized, &ctx.state(), &mut Default::default())
            .await
            .unwrap();
        let shown = narrowed.display_indent().to_string();
        let mut rows: Vec<String> = pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string()
            .lines()
            .map(String::from)
            .collect();
        rows.sort();
        (shown, rows.join("\n"))
    }

    /// Over seeded tables with NULL keys, each query gives the answer DataFusion gives
    /// without the rewrite, and its plan holds the semi join exactly when the rewrite is
    /// valid for it: joins that keep only matched groups, not those that keep an
    /// aggregation's unmatched groups, `NOT IN`, grouping sets, or `IS NOT DISTINCT FROM`.
    #[tokio::test]
    async fn narrowed_aggregations_give_the_same_answers_where_valid() {
        // (query, whether the rewrite applies)
        let queries: &[(&str, bool)] = &[
            // TPC-H q2's shape: a key and a non-key compared.
            (
                "SELECT o.k, o.x FROM o WHERE o.flag = 1 \
                 AND o.x = (SELECT min(t.v) FROM t WHERE t.k = o.k)",
                true,
            ),
            // q17's: a join filter.
            (
                "SELECT sum(o.x), count(*) FROM o WHERE o.flag = 1 \
                 AND o.x < (SELECT avg(t.v) FROM t WHERE t.k = o.k)",
                true,
            ),
            (
                "SELECT o.k, g.c, g.s FROM o JOIN \
                 (SELECT k, count(*) AS c, sum(v) AS s FROM t GROUP BY k) g ON o.k = g.k \
                 WHERE o.flag = 1",
                true,
            ),
            // The keys taken from a relation the outer side is joined to on the key.
            (
                "SELECT o.x, g.s FROM o JOIN p ON o.k = p.pk JOIN \
                 (SELECT k, sum(v) AS s, max(v) AS m FROM t GROUP BY k) g ON o.k = g.k \
                 WHERE p.flag = 1",
                true,
            ),
            (
                "SELECT o.k, g.s FROM o LEFT JOIN \
                 (SELECT k, sum(v) AS s FROM t GROUP BY k) g ON o.k = g.k WHERE o.flag = 1",
                true,
            ),
            (
                "SELECT o.k, o.x FROM o WHERE o.flag = 1 AND NOT EXISTS \
                 (SELECT 1 FROM (SELECT k, sum(v) AS s FROM t GROUP BY k) g \
                  WHERE g.k = o.k AND g.s > 10)",
                true,
            ),
            (
                "SELECT o.k, o.x FROM o WHERE o.flag = 1 AND (o.k IN \
                 (SELECT k FROM t GROUP BY k HAVING sum(v) > 10) OR o.x > 15)",
                true,
            ),
            // The aggregation on the semi join's kept side.
            (
                "SELECT g.k, g.s FROM (SELECT k, sum(v) AS s FROM t GROUP BY k) g \
                 WHERE g.k IN (SELECT k FROM o WHERE flag = 1)",
                true,
            ),
            // The aggregation on the side a right join pads.
            (
                "SELECT g.k, g.s, o.x FROM (SELECT k, sum(v) AS s FROM t GROUP BY k) g \
                 RIGHT JOIN (SELECT * FROM o WHERE flag = 1) o ON o.k = g.k",
                true,
            ),
            // The semi join placed below a join within the aggregation's input.
            (
                "SELECT o.x, g.s FROM o JOIN \
                 (SELECT t.k, sum(t.v) AS s, count(p.pk) AS c FROM t JOIN p ON t.v = p.flag \
                  GROUP BY t.k) g ON o.k = g.k WHERE o.flag = 1",
                true,
            ),
            // An aggregate that follows its rows' order.
            (
                "SELECT o.k, g.a FROM o JOIN \
                 (SELECT k, array_agg(v) AS a FROM t GROUP BY k) g ON o.k = g.k \
                 WHERE o.flag = 1",
                false,
            ),
            // The aggregation's groups kept unmatched.
            (
                "SELECT g.k, g.s, o.x FROM (SELECT k, sum(v) AS s FROM t GROUP BY k) g \
                 LEFT JOIN (SELECT * FROM o WHERE flag = 1) o ON o.k = g.k",
                false,
            ),
            (
                "SELECT g.k, g.s, o.x FROM (SELECT * FROM o WHERE flag = 1) o \
                 FULL JOIN (SELECT k, sum(v) AS s FROM t GROUP BY k) g ON o.k = g.k",
                false,
            ),
            // NOT IN: one NULL group empties the answer.
            (
                "SELECT o.k FROM o WHERE o.flag = 1 AND o.k NOT IN \
                 (SELECT k FROM t GROUP BY k HAVING count(*) > 1)",
                false,
            ),
            (
                "SELECT o.k, g.s FROM o JOIN \
                 (SELECT k, sum(v) AS s FROM t GROUP BY ROLLUP (k)) g ON o.k = g.k \
                 WHERE o.flag = 1",
                false,
            ),
            (
                "SELECT o.k, g.s FROM o JOIN \
                 (SELECT k, sum(v) AS s FROM t GROUP BY k) g ON o.k IS NOT DISTINCT FROM g.k \
                 WHERE o.flag = 1",
                false,
            ),
            // Every outer key kept: nothing to narrow.
            (
                "SELECT o.k, g.s FROM o JOIN \
                 (SELECT k, sum(v) AS s FROM t GROUP BY k) g ON o.k = g.k",
                false,
            ),
        ];
        for seed in 0..6u64 {
            let rows = [0, 8, 400, 4000, 12_000, 4000][seed as usize];
            let (ours, theirs) = (session(true), session(false));
            tables(&ours, seed, rows);
            tables(&theirs, seed, rows);
            for &(sql, rewritten) in queries {
                let (plan, got) = run(&ours, sql).await;
                let (_, want) = run(&theirs, sql).await;
                assert_eq!(got, want, "seed {seed}, {rows} rows: {sql}\n{plan}");
                // (Too few rows leave nothing worth narrowing.)
                if rows >= 4000 {
                    assert_eq!(
                        plan.contains(super::KEYS_ALIAS),
                        rewritten,
                        "seed {seed}: {sql}\n{plan}"
                    );
                }
            }
        }
    }
}
