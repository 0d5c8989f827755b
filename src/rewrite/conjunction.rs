//! A filter's conjuncts evaluated in turn, each on the rows all before it kept.
//!
//! DataFusion evaluates `a AND b AND c` as the tree `(a AND b) AND c`: when the left side of an
//! `AND` keeps at most a fifth of a batch's rows, it evaluates the right side on those rows
//! alone, and then writes the answer back to the batch's length one run of kept rows at a time
//! (each run a slice of an array, each value appended alone). Each `AND` above starts again
//! from the whole batch: `c` is evaluated on the rows `a AND b` kept, copied out of the whole
//! batch again. In TPC-H q6 (five comparisons on `lineitem`) that writing back was 15 % of the
//! query's CPU time. A [`Conjunction`] narrows the batch once its rows kept so far are at most
//! [`NARROW_AT`] of it, evaluates each further conjunct on the narrowed batch, and sets the
//! bits of the rows kept at the end. It keeps the same rows: a row is kept when every
//! conjunct is true for it, and NULL keeps no row (it answers false where `AND` may answer
//! NULL, which a filter drops alike). A conjunct is evaluated on a subset of the rows it is
//! evaluated on by `AND`, so it fails (a division by zero) on no row where `AND` would not.
//!
//! [`ConjunctsInTurn`] puts one in each filter of two or more conjuncts, once the plan is
//! final (the filter's equivalences are read from its predicate: a filter whose properties
//! would change is left as it is).

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::BooleanBufferBuilder;
use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, internal_datafusion_err};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::{PhysicalExpr, conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};

/// The share of a batch's rows at or under which the rows kept so far are copied out, so
/// that the conjuncts after are evaluated on them alone. (Above it, copying costs more than
/// evaluating a comparison on every row. At least DataFusion's `AND`'s own threshold, a
/// fifth.)
const NARROW_AT: f64 = 0.25;

/// Puts a [`Conjunction`] in each filter whose predicate has two or more conjuncts. (Not on
/// a Ballista cluster: its executors could not decode it.)
#[derive(Debug, Default)]
pub(crate) struct ConjunctsInTurn;

impl PhysicalOptimizerRule for ConjunctsInTurn {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let conjuncts: Vec<Arc<dyn PhysicalExpr>> = split_conjunction(filter.predicate())
                .into_iter()
                .cloned()
                .collect();
            if conjuncts.len() < 2 {
                return Ok(Transformed::no(node));
            }
            let exec = FilterExecBuilder::from(filter)
                .with_predicate(Arc::new(Conjunction { conjuncts }))
                .build()?;
            if !super::same_properties(exec.properties(), filter.properties()) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "sluice_conjuncts_in_turn"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with each filter's [`Conjunction`] put back as DataFusion's `AND` of its conjuncts:
/// for the plans whose estimates are read (DataFusion's range analysis of a filter, and
/// [`super::selectivity`]'s, read the `AND`; a [`Conjunction`] would be estimated at
/// DataFusion's default share, and sampled).
pub(crate) fn as_and(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(filter) = node.downcast_ref::<FilterExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(ours) = filter.predicate().downcast_ref::<Conjunction>() else {
            return Ok(Transformed::no(node));
        };
        let and = ours.as_and();
        let exec = FilterExecBuilder::from(filter)
            .with_predicate(and)
            .build()?;
        Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// Boolean conjuncts, a row kept (true) when each is true for it, evaluated in their order,
/// each on the rows all before it kept (see the module's comment). Never NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Conjunction {
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
}

/// Shown as DataFusion shows the `AND` of its conjuncts, so EXPLAIN reads as without sluice.
impl fmt::Display for Conjunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_and())
    }
}

impl Conjunction {
    /// DataFusion's `AND` of the conjuncts.
    fn as_and(&self) -> Arc<dyn PhysicalExpr> {
        conjunction(self.conjuncts.iter().cloned())
    }
}

impl PhysicalExpr for Conjunction {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> Result<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let len = batch.num_rows();
        // The rows the conjuncts are evaluated on: `batch`, or those of its rows at `rows`.
        let mut narrowed: Option<(RecordBatch, Vec<u32>)> = None;
        // Which of those rows every conjunct so far kept.
        let mut kept: Option<BooleanBuffer> = None;
        for (i, conjunct) in self.conjuncts.iter().enumerate() {
            let on = narrowed.as_ref().map_or(batch, |(b, _)| b);
            let answer = conjunct.evaluate(on)?.into_array(on.num_rows())?;
            let answer = answer.as_boolean_opt().ok_or_else(|| {
                internal_datafusion_err!("a filter's conjunct {conjunct} is not boolean")
            })?;
            // (NULL keeps no row.)
            let mut now = match answer.nulls() {
                Some(nulls) => answer.values() & nulls.inner(),
                None => answer.values().clone(),
            };
            if let Some(before) = &kept {
                now = &now & before;
            }
            let count = now.count_set_bits();
            if count == 0 {
                return Ok(kept_rows(BooleanBuffer::new_unset(len)));
            }
            let last = i + 1 == self.conjuncts.len();
            // (Narrowed whenever DataFusion's `AND` would evaluate the next conjunct on the
            // rows kept alone, at a fifth of the batch: so no conjunct is evaluated on a row
            // that `AND` would not evaluate it on.)
            if !last && count < on.num_rows() && count as f64 <= NARROW_AT * len as f64 {
                let rows = match &narrowed {
                    Some((_, rows)) => now.set_indices().map(|r| rows[r]).collect(),
                    None => now.set_indices_u32().collect(),
                };
                let batch = filter_record_batch(on, &BooleanArray::new(now, None))?;
                narrowed = Some((batch, rows));
                kept = None;
            } else {
                kept = Some(now);
            }
        }
        let kept = kept.unwrap_or_else(|| BooleanBuffer::new_set(len));
        let Some((_, rows)) = narrowed else {
            return Ok(kept_rows(kept));
        };
        let mut all = BooleanBufferBuilder::new(len);
        all.append_n(len, false);
        for r in kept.set_indices() {
            all.set_bit(rows[r] as usize, true);
        }
        Ok(kept_rows(all.finish()))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Conjunction {
            conjuncts: children,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_and().fmt_sql(f)
    }
}

/// `kept` as a filter's answer.
fn kept_rows(kept: BooleanBuffer) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(BooleanArray::new(kept, None)))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::BinaryExpr;
    use datafusion::physical_expr::expressions::{Column, IsNotNullExpr, Literal};
    use datafusion::physical_expr_common::physical_expr::fmt_sql;
    use datafusion::physical_plan::displayable;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A random boolean expression over columns `a`, `b`, `c` of `schema`: a column compared
    /// with a value or with another column, a remainder compared, or `IS NOT NULL`.
    fn conjunct(rng: &mut StdRng, schema: &Schema) -> Arc<dyn PhysicalExpr> {
        let column = |rng: &mut StdRng| -> Arc<dyn PhysicalExpr> {
            let i = rng.random_range(0..3);
            Arc::new(Column::new(schema.field(i).name(), i))
        };
        let value = |v: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(Literal::new(ScalarValue::Int64(Some(v))))
        };
        let op = [
            Operator::Eq,
            Operator::NotEq,
            Operator::Lt,
            Operator::LtEq,
            Operator::Gt,
            Operator::GtEq,
        ][rng.random_range(0..6)];
        match rng.random_range(0..5) {
            0 => Arc::new(BinaryExpr::new(
                column(rng),
                op,
                value(rng.random_range(-10..110)),
            )),
            1 => Arc::new(BinaryExpr::new(column(rng), op, column(rng))),
            2 => {
                let rem = Arc::new(BinaryExpr::new(column(rng), Operator::Modulo, value(7)));
                Arc::new(BinaryExpr::new(rem, op, value(rng.random_range(-3..7))))
            }
            3 => Arc::new(IsNotNullExpr::new(column(rng))),
            // (Fails on a row whose column is 0.)
            _ => {
                let quotient =
                    Arc::new(BinaryExpr::new(value(1000), Operator::Divide, column(rng)));
                Arc::new(BinaryExpr::new(
                    quotient,
                    op,
                    value(rng.random_range(5..50)),
                ))
            }
        }
    }

    /// On random batches and conjuncts, a [`Conjunction`] keeps the rows DataFusion's `AND`
    /// of the same conjuncts keeps (a filter keeps a row whose answer is true), answers no
    /// NULL, and fails (a division by zero) only where the `AND` fails.
    #[test]
    fn a_conjunction_keeps_the_rows_and_keeps() {
        let schema = Arc::new(Schema::new(
            ["a", "b", "c"]
                .map(|n| Field::new(n, DataType::Int64, true))
                .to_vec(),
        ));
        let mut rng = StdRng::seed_from_u64(17);
        let (mut narrowed, mut failed) = (0, 0);
        for round in 0..600 {
            let rows = [0, 1, 7, 100, 4096][round % 5];
            let columns: Vec<ArrayRef> = (0..3)
                .map(|_| {
                    let nulls = rng.random_range(0.0..0.3);
                    Arc::new(
                        (0..rows)
                            .map(|_| (!rng.random_bool(nulls)).then(|| rng.random_range(0..100)))
                            .collect::<Int64Array>(),
                    ) as ArrayRef
                })
                .collect();
            let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
            let conjuncts: Vec<_> = (0..rng.random_range(2..7))
                .map(|_| conjunct(&mut rng, &schema))
                .collect();
            let and = conjuncts
                .iter()
                .cloned()
                .reduce(|l, r| Arc::new(BinaryExpr::new(l, Operator::And, r)))
                .unwrap();
            let ours = Conjunction {
                conjuncts: conjuncts.clone(),
            };
            // A conjunct fails on no row `AND` does not evaluate it on.
            let want = match and.evaluate(&batch) {
                Ok(want) => want.into_array(rows).unwrap(),
                Err(_) => {
                    failed += 1;
                    continue;
                }
            };
            let got = match ours.evaluate(&batch) {
                Ok(got) => got.into_array(rows).unwrap(),
                Err(e) => panic!("round {round}: {ours} failed where AND did not: {e}"),
            };
            assert_eq!(got.null_count(), 0);
            // Shown as the `AND` is, by EXPLAIN and by EXPLAIN FORMAT TREE.
            assert_eq!(ours.to_string(), and.to_string());
            assert_eq!(
                fmt_sql(&ours).to_string(),
                fmt_sql(and.as_ref()).to_string()
            );
            let kept = |a: &ArrayRef| -> Vec<usize> {
                let a = a.as_boolean();
                (0..a.len())
                    .filter(|&i| a.is_valid(i) && a.value(i))
                    .collect()
            };
            assert_eq!(kept(&got), kept(&want), "round {round}: {ours}");
            // Whether the batch was narrowed before the last conjunct: the rows the first
            // ones kept were few enough.
            let first = conjuncts[..conjuncts.len() - 1]
                .iter()
                .cloned()
                .reduce(|l, r| Arc::new(BinaryExpr::new(l, Operator::And, r)))
                .unwrap();
            let before = first.evaluate(&batch).unwrap().into_array(rows).unwrap();
            if rows > 0 && (kept(&before).len() as f64) <= NARROW_AT * rows as f64 {
                narrowed += 1;
            }
        }
        assert!(narrowed > 40, "{narrowed} of 600 rounds narrowed");
        assert!(failed > 10 && failed < 300, "{failed} of 600 rounds failed");
    }

    /// With the rule a filter of several conjuncts holds a [`Conjunction`], shown as
    /// DataFusion shows the `AND`, and the answers are DataFusion's; a filter whose
    /// equalities order its output keeps DataFusion's predicate.
    #[tokio::test]
    async fn filters_get_a_conjunction_and_the_same_answers() {
        let queries = [
            "SELECT COUNT(*) AS n, SUM(x) AS s FROM t \
             WHERE k > 1 AND x < 100 AND d IS NOT NULL AND (f > 0 OR k = 2)",
            "SELECT k, x FROM t WHERE k = 3 AND x > 0 ORDER BY k, x",
            "SELECT k, COUNT(*) AS n FROM t WHERE x % 5 = 1 AND x > -400 GROUP BY k ORDER BY k",
        ];
        for seed in 0..8u64 {
            let rows = [0, 1, 40, 3000][seed as usize % 4];
            let ours = super::super::testing::physical_session(true);
            let theirs = super::super::testing::session(false, None);
            for ctx in [&ours, &theirs] {
                super::super::testing::random_table(ctx, seed, rows);
            }
            for sql in queries {
                let df = ours.sql(sql).await.unwrap();
                let plan = df.clone().create_physical_plan().await.unwrap();
                let mut conjunctions = 0;
                plan.apply(|node| {
                    if let Some(filter) = node.downcast_ref::<FilterExec>()
                        && filter.predicate().downcast_ref::<Conjunction>().is_some()
                    {
                        conjunctions += 1;
                    }
                    Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
                })
                .unwrap();
                let shown = displayable(plan.as_ref()).indent(false).to_string();
                let got = super::super::testing::answer(&ours, sql).await.1;
                let want = super::super::testing::answer(&theirs, sql).await.1;
                assert_eq!(got, want, "seed {seed}: {sql}\n{shown}");
                if sql.contains("d IS NOT NULL") {
                    assert_eq!(conjunctions, 1, "{shown}");
                    assert!(
                        shown.contains(
                            "k@0 > 1 AND x@1 < 100 AND d@3 IS NOT NULL AND (f@2 > 0 OR k@0 = 2)"
                        ),
                        "{shown}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod estimates {
    use std::sync::Arc;

    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::prelude::ParquetReadOptions;

    /// The join order's estimate of a relation filtered by a range (two conjuncts DataFusion
    /// judges by the column's bounds) is DataFusion's, with sluice's rules as without them:
    /// not the estimate of an opaque [`super::Conjunction`], which would be sampled.
    #[tokio::test]
    async fn a_filters_estimate_reads_its_conjuncts() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(Int64Array::from_iter_values(
                (0..10_000).map(|i| i * 7919 % 1000),
            ))],
        )
        .unwrap();
        let file = std::fs::File::create(dir.path().join("t.parquet")).unwrap();
        let mut writer = ArrowWriter::try_new(file, schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let mut seen = Vec::new();
        for sluice in [true, false] {
            let ctx = super::super::testing::physical_session(sluice);
            let path = format!("{}/", dir.path().display());
            ctx.register_parquet("t", &path, ParquetReadOptions::default())
                .await
                .unwrap();
            let plan = ctx
                .sql("SELECT x FROM t WHERE x > 100 AND x < 300")
                .await
                .unwrap()
                .into_optimized_plan()
                .unwrap();
            let estimate = super::super::join_order::estimate_relation(&plan, &ctx.state())
                .await
                .unwrap();
            seen.push((estimate.rows, estimate.filter_share));
        }
        assert_eq!(seen[0], seen[1], "{seen:?}");
        assert_eq!(seen[0].1, None, "{seen:?}");
    }
}
