//! `x NOT IN (SELECT y ...)` joined as a plain anti join, which DataFusion may build either
//! side of, partition, and sluice's grace join may wrap under a memory limit.
//!
//! DataFusion plans `NOT IN` as a null-aware anti join whenever a key's column is nullable
//! in the schema: a NULL among the subquery's values keeps no row, and a NULL `x` is kept
//! only when the subquery is empty. Such a join must build its outer side, whole, in one
//! hash table (`CollectLeft`), and its rows leave that table from one partition: in TPC-H
//! q16 at SF 10, 1.2 M rows of `partsupp` ⋈ `part` are built to be probed by the 50
//! suppliers with complaints, and the grouping after it runs on one thread (0.71 s against
//! 0.49 s for the same query written with `NOT EXISTS`); under a memory limit the table
//! cannot spill, so a `NOT IN` over a large outer side fails where DuckDB finishes.
//! Columns of Parquet files are nullable in the schema even where no file holds a NULL.
//!
//! [`NotInAsAntiJoin`] runs before `JoinSelection` and replaces each null-aware anti join:
//! - when both keys are shown never NULL (by the schema, or by a filter that rejects NULL,
//!   a comparison or `IS NOT NULL`, followed through projections, filters, inner joins and
//!   groupings), by the same join without null awareness: without NULLs, `NOT IN` and the
//!   anti join keep the same rows;
//! - otherwise by that plain anti join crossed with one row of the subquery's counts,
//!   `n = COUNT(*)` and `n_y = COUNT(y)`, and filtered by `n = 0 OR (n = n_y AND x IS NOT
//!   NULL)`: the rows of `x` that match no `y` (the anti join's), less those SQL's rules
//!   for NULL drop: all of them once the subquery holds a NULL (`n_y < n`), and those whose
//!   `x` is NULL unless the subquery is empty. The subquery is computed twice, once for
//!   the join and once for its counts, so a subquery that is not deterministic
//!   (`random()`) keeps DataFusion's join, as does a `NOT IN` with a condition beside its
//!   key (correlated), whose NULL rule holds per outer row.
//!
//! Files' statistics are no proof of no NULLs: DataFusion 55 reads a Parquet column chunk
//! whose statistics omit the (optional) null count as holding no NULL, an exact 0, so a
//! file with NULLs written that way would turn `NOT IN` into a wrong answer.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::logical_expr::{JoinType, Operator};
use datafusion::physical_expr::aggregate::AggregateExprBuilder;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, IsNotNullExpr, is_not_null, lit};
use datafusion::physical_expr::{add_offset_to_expr, split_conjunction};
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;

/// Replaces each null-aware anti join (`x NOT IN (subquery)`) by a plain anti join, and
/// where a key may be NULL, SQL's rule for NULLs applied to its output by the subquery's
/// counts.
#[derive(Debug, Default)]
pub(crate) struct NotInAsAntiJoin;

impl PhysicalOptimizerRule for NotInAsAntiJoin {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            if !join.null_aware {
                return Ok(Transformed::no(node));
            }
            // The mode DataFusion's planner gives a join that is not null-aware, for
            // JoinSelection to settle by the inputs' sizes.
            let mode =
                if config.execution.target_partitions > 1 && config.optimizer.repartition_joins {
                    PartitionMode::Auto
                } else {
                    PartitionMode::CollectLeft
                };
            let never_null = |plan: &Arc<dyn ExecutionPlan>, key: &Arc<dyn PhysicalExpr>| {
                key.downcast_ref::<Column>()
                    .is_some_and(|c| never_null(plan, c.index()))
            };
            if join
                .on()
                .iter()
                .all(|(l, r)| never_null(join.left(), l) && never_null(join.right(), r))
            {
                let plain = join
                    .builder()
                    .with_null_aware(false)
                    .with_partition_mode(mode)
                    .build()?;
                return Ok(Transformed::yes(Arc::new(plain) as Arc<dyn ExecutionPlan>));
            }
            match counted(join, mode)? {
                Some(plan) => Ok(Transformed::yes(plan)),
                None => Ok(Transformed::no(node)),
            }
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_not_in_as_anti_join"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `join`, a null-aware anti join keeping the rows of `x` (its left key) not in the values
/// of `y` (its right), as a plain anti join in `mode` crossed with the right side's counts
/// and filtered by SQL's rule for NULL in `NOT IN`; `None` for a join with a condition
/// beside its key, or a right side that is not deterministic (it is computed twice).
fn counted(join: &HashJoinExec, mode: PartitionMode) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let ([(x, y)], None) = (join.on(), join.filter()) else {
        return Ok(None);
    };
    if !deterministic(join.right())? {
        return Ok(None);
    }
    let plain: Arc<dyn ExecutionPlan> = Arc::new(
        join.builder()
            .with_null_aware(false)
            .with_partition_mode(mode)
            .with_projection(None)
            .build()?,
    );
    // One row, (n, n_y), over a copy of the right side: a plan's operators may hold the
    // state of one execution (a repartition's channels, a join's table).
    let right = reset_plan_states(Arc::clone(join.right()))?;
    let schema = right.schema();
    let count = |arg: Arc<dyn PhysicalExpr>, name: &str| {
        AggregateExprBuilder::new(count_udaf(), vec![arg])
            .schema(Arc::clone(&schema))
            .alias(name)
            .build()
            .map(Arc::new)
    };
    let counts = vec![count(lit(1i64), "n")?, count(Arc::clone(y), "n_y")?];
    let partial = Arc::new(AggregateExec::try_new(
        AggregateMode::Partial,
        PhysicalGroupBy::default(),
        counts.clone(),
        vec![None, None],
        right,
        Arc::clone(&schema),
    )?);
    let counts = Arc::new(AggregateExec::try_new(
        AggregateMode::Final,
        PhysicalGroupBy::default(),
        counts,
        vec![None, None],
        Arc::new(CoalescePartitionsExec::new(partial)),
        schema,
    )?);
    // (n, n_y, the left side's columns...): the one row is the side held in memory.
    let crossed = Arc::new(CrossJoinExec::new(counts, plain));
    let (n, n_y) = (
        Arc::new(Column::new("n", 0)) as Arc<dyn PhysicalExpr>,
        Arc::new(Column::new("n_y", 1)) as Arc<dyn PhysicalExpr>,
    );
    let binary = |l, op, r| Arc::new(BinaryExpr::new(l, op, r)) as Arc<dyn PhysicalExpr>;
    let kept = binary(
        binary(Arc::clone(&n), Operator::Eq, lit(0i64)),
        Operator::Or,
        binary(
            binary(n, Operator::Eq, n_y),
            Operator::And,
            is_not_null(add_offset_to_expr(Arc::clone(x), 2)?)?,
        ),
    );
    let filtered = Arc::new(FilterExec::try_new(kept, crossed)?);
    // Back to the join's own columns, by its own names.
    let left = join.left().schema();
    let columns: Vec<usize> = match &join.projection {
        Some(projection) => projection.to_vec(),
        None => (0..left.fields().len()).collect(),
    };
    let exprs = columns.into_iter().map(|i| {
        let name = left.field(i).name().clone();
        (
            Arc::new(Column::new(&name, i + 2)) as Arc<dyn PhysicalExpr>,
            name,
        )
    });
    Ok(Some(Arc::new(ProjectionExec::try_new(exprs, filtered)?)))
}

/// Whether `plan` gives the same rows each time it runs: none of its expressions is
/// volatile (`random()`, `uuid()`).
fn deterministic(plan: &Arc<dyn ExecutionPlan>) -> Result<bool> {
    let mut volatile = false;
    plan.apply(|node| {
        node.apply_expressions(&mut |e| {
            volatile |= is_volatile(e);
            Ok(if volatile {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })
    })?;
    Ok(!volatile)
}

/// Whether column `index` of `plan`'s output is never NULL, as far as can be shown without
/// running it.
fn never_null(plan: &Arc<dyn ExecutionPlan>, index: usize) -> bool {
    let schema = plan.schema();
    let Some(field) = schema.fields().get(index) else {
        return false;
    };
    if !field.is_nullable() {
        return true;
    }
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        let index = match filter.projection() {
            Some(projection) => match projection.get(index) {
                Some(&i) => i,
                None => return false,
            },
            None => index,
        };
        return split_conjunction(filter.predicate())
            .into_iter()
            .any(|c| rejects_null(c, index))
            || never_null(filter.input(), index);
    }
    if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        return projection.expr().get(index).is_some_and(|e| {
            e.expr
                .downcast_ref::<Column>()
                .is_some_and(|c| never_null(projection.input(), c.index()))
        });
    }
    if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
        let index = match &join.projection {
            Some(projection) => match projection.get(index) {
                Some(&i) => i,
                None => return false,
            },
            None => index,
        };
        let left = join.left().schema().fields().len();
        // Which side the column comes from, and whether the join pads that side with NULL.
        let (side, index, padded) = match join.join_type() {
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full => {
                if index < left {
                    let padded = matches!(join.join_type(), JoinType::Right | JoinType::Full);
                    (join.left(), index, padded)
                } else {
                    let padded = matches!(join.join_type(), JoinType::Left | JoinType::Full);
                    (join.right(), index - left, padded)
                }
            }
            JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                (join.left(), index, false)
            }
            JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                (join.right(), index, false)
            }
        };
        return !padded && never_null(side, index);
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        // The grouping columns come first; a grouping set fills the keys it omits with NULL.
        let group = aggregate.group_expr();
        return group.is_single()
            && group.expr().get(index).is_some_and(|(e, _)| {
                e.downcast_ref::<Column>()
                    .is_some_and(|c| never_null(aggregate.input(), c.index()))
            });
    }
    // Operators that pass their input's rows on unchanged.
    let passes_rows_on = plan.is::<RepartitionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<SortExec>();
    if passes_rows_on && let [input] = plan.children()[..] {
        return never_null(input, index);
    }
    false
}

/// Whether `conjunct` of a filter keeps no row where column `index` of its input is NULL:
/// `x IS NOT NULL`, or a comparison of `x` (NULL compared is NULL, which a filter drops).
fn rejects_null(conjunct: &Arc<dyn PhysicalExpr>, index: usize) -> bool {
    let is_column = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Column>()
            .is_some_and(|c| c.index() == index)
    };
    if let Some(not_null) = conjunct.downcast_ref::<IsNotNullExpr>() {
        return is_column(not_null.arg());
    }
    conjunct.downcast_ref::<BinaryExpr>().is_some_and(|b| {
        matches!(
            b.op(),
            Operator::Eq
                | Operator::NotEq
                | Operator::Lt
                | Operator::LtEq
                | Operator::Gt
                | Operator::GtEq
        ) && (is_column(b.left()) || is_column(b.right()))
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{ParquetReadOptions, SessionContext};
    use rand::{Rng, SeedableRng};

    /// Writes `columns` (each named, and nullable in the schema or not) as `files` Parquet
    /// files of about equal rows under `dir`.
    fn write(dir: &std::path::Path, columns: &[(&str, Vec<Option<i64>>, bool)], files: usize) {
        std::fs::create_dir_all(dir).unwrap();
        let schema = Arc::new(Schema::new(
            columns
                .iter()
                .map(|(name, _, nullable)| Field::new(*name, DataType::Int64, *nullable))
                .collect::<Vec<_>>(),
        ));
        let rows = columns[0].1.len();
        for f in 0..files {
            let range = rows * f / files..rows * (f + 1) / files;
            let arrays = columns
                .iter()
                .map(|(_, values, _)| {
                    Arc::new(Int64Array::from(values[range.clone()].to_vec())) as Arc<dyn Array>
                })
                .collect();
            let batch = RecordBatch::try_new(Arc::clone(&schema), arrays).unwrap();
            let file = std::fs::File::create(dir.join(format!("{f}.parquet"))).unwrap();
            let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), None).unwrap();
            writer.write(&batch).unwrap();
            writer.close().unwrap();
        }
    }

    /// `n` values drawn from `0..keys`, and NULL in one place in ten if `nulls`.
    fn values(rng: &mut rand::rngs::StdRng, n: usize, keys: i64, nulls: bool) -> Vec<Option<i64>> {
        (0..n)
            .map(|_| (!(nulls && rng.random_bool(0.1))).then(|| rng.random_range(0..keys)))
            .collect()
    }

    /// A session reading `o` and `s` from `dir`, with sluice's physical rules or without.
    async fn session(dir: &std::path::Path, sluice: bool) -> SessionContext {
        let ctx = super::super::testing::physical_session(sluice);
        for table in ["o", "s"] {
            let path = format!("{}/", dir.join(table).display());
            ctx.register_parquet(table, &path, ParquetReadOptions::default())
                .await
                .unwrap();
        }
        ctx
    }

    /// The physical plan of `sql` in `ctx`, and its answer as a table.
    async fn run(ctx: &SessionContext, sql: &str) -> (String, String) {
        let df = ctx.sql(sql).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        let plan = displayable(plan.as_ref()).indent(false).to_string();
        let answer = pretty_format_batches(&df.collect().await.unwrap())
            .unwrap()
            .to_string();
        (plan, answer)
    }

    /// The shapes of `NOT IN` the test below runs, each with the set of values its subquery
    /// gives from `s`'s rows `(k, c)` when SQL's rules are applied here (`None` when the
    /// answer is not checked here), and whether the outer key is shown never NULL by the
    /// query itself.
    type Shape = (
        &'static str,
        Option<fn(Option<i64>, Option<i64>) -> Option<Option<i64>>>,
        bool,
    );

    const SHAPES: [Shape; 7] = [
        (
            "SELECT COUNT(*) AS n, SUM(v) AS v FROM o \
             WHERE k NOT IN (SELECT k FROM s WHERE c < 5)",
            Some(|k, c| c.is_some_and(|c| c < 5).then_some(k)),
            false,
        ),
        (
            "SELECT g, COUNT(*) AS n FROM o WHERE k > 3 AND k NOT IN (SELECT k FROM s) \
             GROUP BY g ORDER BY g",
            None,
            true,
        ),
        (
            "SELECT COUNT(*) AS n FROM o \
             WHERE k NOT IN (SELECT k FROM s GROUP BY k HAVING COUNT(*) > 1)",
            None,
            false,
        ),
        (
            "SELECT COUNT(*) AS n, SUM(o.v) AS v FROM o JOIN s AS t ON o.g = t.c \
             WHERE o.k NOT IN (SELECT k FROM s)",
            None,
            false,
        ),
        // An empty subquery keeps every row, those whose key is NULL too.
        (
            "SELECT COUNT(*) AS n, SUM(v) AS v FROM o \
             WHERE k NOT IN (SELECT k FROM s WHERE c > 9)",
            Some(|k, c| c.is_some_and(|c| c > 9).then_some(k)),
            false,
        ),
        // A subquery whose NULLs come from an expression, not from a file.
        (
            "SELECT COUNT(*) AS n, SUM(v) AS v FROM o \
             WHERE k NOT IN (SELECT CASE WHEN c = 3 AND k > 200 THEN NULL ELSE k END FROM s)",
            Some(|k, c| {
                Some(if c == Some(3) && k.is_some_and(|k| k > 200) {
                    None
                } else {
                    k
                })
            }),
            false,
        ),
        // Not deterministic: computed once, by DataFusion's null-aware join.
        (
            "SELECT COUNT(*) AS n, SUM(v) AS v FROM o \
             WHERE k NOT IN (SELECT k FROM s WHERE random() < 2.0)",
            Some(|k, _| Some(k)),
            false,
        ),
    ];

    /// Over seeded Parquet tables whose keys hold NULL or not, each `NOT IN` shape gives
    /// DataFusion's answer (its null-aware join's) and, where [`SHAPES`] has the subquery's
    /// set, the count and sum computed here by SQL's rules for `NOT IN`. The plan holds no
    /// null-aware join but for a subquery that is not deterministic, and applies the rule
    /// for NULLs by counts exactly when a key may be NULL (nullable in the schema, and no
    /// filter of the query rejects NULL: a key without NULLs but nullable in the schema may
    /// be read from files whose statistics do not count NULLs).
    #[tokio::test]
    async fn not_in_is_an_anti_join_and_counts_exactly_when_a_key_can_be_null() {
        let mut seen = [[0; 2]; 2];
        for seed in 0..16u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (outer_nulls, inner_nulls) = (seed % 2 == 1, seed / 2 % 2 == 1);
            // Keys without NULLs are written non-nullable on half the seeds.
            let declared = seed / 8 % 2 == 1;
            let (outer_nullable, inner_nullable) =
                (outer_nulls || !declared, inner_nulls || !declared);
            let dir = tempfile::tempdir().unwrap();
            let (k, g, v) = (
                values(&mut rng, 3_000, 400, outer_nulls),
                values(&mut rng, 3_000, 10, false),
                values(&mut rng, 3_000, 1_000, false),
            );
            write(
                &dir.path().join("o"),
                &[
                    ("k", k.clone(), outer_nullable),
                    ("g", g, true),
                    ("v", v.clone(), true),
                ],
                3,
            );
            // With few inner rows the NULLs may all fall where `c < 5` drops them.
            let inner = [40, 400][seed as usize / 4 % 2];
            let (sk, sc) = (
                values(&mut rng, inner, 400, inner_nulls),
                values(&mut rng, inner, 10, false),
            );
            write(
                &dir.path().join("s"),
                &[("k", sk.clone(), inner_nullable), ("c", sc.clone(), true)],
                2,
            );
            let (ours, theirs) = (
                session(dir.path(), true).await,
                session(dir.path(), false).await,
            );
            for (i, (sql, set, outer_shown)) in SHAPES.iter().enumerate() {
                let (plan, got) = run(&ours, sql).await;
                let (_, want) = run(&theirs, sql).await;
                assert_eq!(got, want, "seed {seed}: {sql}\n{plan}");
                // The subquery's key of the CASE shape is an expression, nullable whatever
                // the files hold.
                let inner_nullable = inner_nullable || sql.contains("CASE");
                let plain = (!outer_nullable || *outer_shown) && !inner_nullable;
                let volatile = sql.contains("random()");
                assert_eq!(
                    plan.contains("null_aware"),
                    volatile && !plain,
                    "seed {seed}: {sql}\n{plan}"
                );
                assert_eq!(
                    plan.contains("CrossJoinExec"),
                    !volatile && !plain,
                    "seed {seed}: {sql}\n{plan}"
                );
                let set: Option<Vec<Option<i64>>> = set.map(|set| {
                    sk.iter()
                        .zip(&sc)
                        .filter_map(|(k, c)| set(*k, *c))
                        .collect()
                });
                if let Some(set) = &set {
                    // SQL's NOT IN: a row is kept when its key differs from every value of
                    // the set; a NULL in the set, or a NULL key beside a non-empty set,
                    // keeps nothing.
                    let kept = k.iter().zip(&v).filter(|(k, _)| {
                        set.is_empty()
                            || (!set.contains(&None) && k.is_some_and(|k| !set.contains(&Some(k))))
                    });
                    let (n, sum) = kept.fold((0, 0), |(n, s), (_, v)| (n + 1, s + v.unwrap()));
                    let sum = if n == 0 {
                        "".to_string()
                    } else {
                        sum.to_string()
                    };
                    assert!(
                        got.contains(&format!("| {n} | {sum}")),
                        "seed {seed}: {sql}: {n}, {sum}\n{got}"
                    );
                }
                if i == 0 {
                    let null_in_set = set.is_some_and(|set| set.contains(&None));
                    seen[usize::from(plain)][usize::from(null_in_set)] += 1;
                    if !volatile {
                        // DataFusion builds the smaller side: the subquery's.
                        assert!(plan.contains("RightAnti"), "seed {seed}\n{plan}");
                    }
                }
            }
        }
        // Both routes ran, the counted one with and without a NULL in the first set.
        assert!(
            seen[1][0] > 0 && seen[0][0] > 0 && seen[0][1] > 0,
            "{seen:?}"
        );
    }
}
